//! Nodes, loader pods and their pod-bound tokens on the real server.

use std::path::PathBuf;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;

use super::{Harness, NS, SA};

/// Creates `node` (e.g. `Node::test(name).with_taints([gate()])`) as the cloud provider would:
/// with a providerID, and no resourceVersion (the server assigns it).
pub async fn create_node(admin: &kube::Client, mut node: Node) -> Node {
    let name = node.metadata.name.clone().expect("node name");
    node.metadata.resource_version = None;
    node.spec.get_or_insert_with(Default::default).provider_id =
        Some(format!("aapl-test://{name}"));
    Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"))
}

/// The node as the server has it now.
pub async fn get_node(admin: &kube::Client, name: &str) -> Node {
    Api::<Node>::all(admin.clone())
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get node {name}: {e}"))
}

/// The node's resourceVersion (equal before and after: nothing wrote it).
pub fn rv(node: &Node) -> String {
    node.metadata.resource_version.clone().unwrap_or_default()
}

/// A loader pod bound to a node, its pod-bound service-account token and a kubeconfig with it.
pub struct Identity {
    pub pod: Pod,
    pub token: String,
    pub kubeconfig: PathBuf,
    pub client: kube::Client,
    _dir: tempfile::TempDir,
}

impl Identity {
    /// The loader of the repository's manifests (namespace [`NS`]) on `node`.
    pub async fn new(h: &Harness, admin: &kube::Client, node: &str) -> Identity {
        Identity::in_namespace(h, admin, NS, node).await
    }

    /// The loader of an installation in namespace `ns` (its ServiceAccount [`SA`] there) on
    /// `node`.
    pub async fn in_namespace(h: &Harness, admin: &kube::Client, ns: &str, node: &str) -> Identity {
        Identity::of_account(h, admin, ns, SA, node).await
    }

    /// The loader whose ServiceAccount is `ns`/`sa` (e.g. as an overlay renamed it) on `node`.
    pub async fn of_account(
        h: &Harness,
        admin: &kube::Client,
        ns: &str,
        sa: &str,
        node: &str,
    ) -> Identity {
        let name = format!("apparmor-loader-{node}");
        let pod = create_loader_pod_in(admin, ns, sa, node, &name).await;
        let token = pod_token(admin, &pod).await;
        Identity::with_token(h, pod, token).await
    }

    pub async fn with_token(h: &Harness, pod: Pod, token: String) -> Identity {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        h.write_token_kubeconfig(&token, &kubeconfig);
        let client = super::client(&kubeconfig).await;
        Identity {
            pod,
            token,
            kubeconfig,
            client,
            _dir: dir,
        }
    }
}

/// A Pod object like the DaemonSet's, bound to `node` (no kubelet runs it).
pub async fn create_loader_pod(admin: &kube::Client, node: &str, name: &str) -> Pod {
    create_loader_pod_in(admin, NS, SA, node, name).await
}

/// [`create_loader_pod`] in namespace `ns`, with the ServiceAccount `sa` of that namespace.
pub async fn create_loader_pod_in(
    admin: &kube::Client,
    ns: &str,
    sa: &str,
    node: &str,
    name: &str,
) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app.kubernetes.io/name": "apparmor-profile-loader"}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "automountServiceAccountToken": false,
            "containers": [{"name": "pause", "image": "example.invalid/apparmor-loader:test"}],
        },
    }))
    .expect("pod");
    Api::<Pod>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {ns}/{name}: {e}"))
}

/// TokenRequest for `pod`'s service account in its namespace, bound to `pod` (as the kubelet
/// requests it for a projected token volume).
pub async fn pod_token(admin: &kube::Client, pod: &Pod) -> String {
    let ns = pod.metadata.namespace.as_deref().unwrap_or(NS);
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or(SA);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let resp: TokenRequest = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .expect("TokenRequest");
    resp.status.expect("token status").token
}

/// The status code and message of an API error (anything else fails the test).
pub fn api_error<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message.clone()),
        other => panic!("{what}: expected an API error, got {other:?}"),
    }
}
