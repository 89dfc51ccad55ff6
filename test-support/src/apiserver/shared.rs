//! The one API server every test of a file shares (startup costs seconds), with the manifests of
//! manifests/ applied once, as `kubectl apply -k manifests/` would, and RBAC and the admission
//! policy in effect before any test runs; a server of its own for a test that installs them
//! elsewhere; and the runtimes the tests drive them from.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::cluster::{Identity, create_node};
use super::objects::{
    Overlay, apply, is_namespaced, manifest_files, object_ref, render, render_overlay,
};
use super::{Harness, POLICY, SETTLE, poll};
use crate::fixtures::{NodeFixture, gate};

/// The shared server and how applying the manifests went.
pub struct Env {
    pub harness: Harness,
    /// `kind/namespace/name` → result of the strict server-side apply of the kustomize build.
    pub applied: Vec<(String, Result<(), String>)>,
    /// `file: kind/namespace/name` → result of the strict server-side apply of each raw
    /// manifest file (as `kubectl apply -f FILE` would send it).
    pub raw: Vec<(String, Result<(), String>)>,
    /// Raw-file objects of a namespaced kind, with the namespace they state (if any).
    pub raw_namespaces: Vec<(String, Option<String>)>,
}

static ENV: OnceLock<Result<Env, String>> = OnceLock::new();

/// The shared server with the manifests applied, started by the first test that asks; `None`
/// when the harness is not built (outside CI, see `prereq`).
pub fn env(test: &str) -> Option<&'static Env> {
    let binary = super::binary_or_skip(test)?;
    match ENV.get_or_init(|| setup(&binary)) {
        Ok(env) => Some(env),
        Err(e) => panic!("{test}: the shared API server could not be set up: {e}"),
    }
}

/// A server for one test alone, nothing applied: for a test that installs the manifests in
/// another way (their cluster-scoped objects would replace the shared server's). `None` when
/// the harness is not built (outside CI, see `prereq`). Stops when dropped.
pub fn server_of_its_own(test: &str) -> Option<Harness> {
    let binary = super::binary_or_skip(test)?;
    Some(Harness::start(&binary).unwrap_or_else(|e| panic!("{test}: {e}")))
}

/// Runs `f` on a fresh current-thread runtime (each test has its own).
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn setup(binary: &Path) -> Result<Env, String> {
    let started = Instant::now();
    let harness = Harness::start(binary)?;
    eprintln!(
        "apiserver harness {} ready in {:.2?} at {}",
        binary.display(),
        harness.startup,
        harness.server_url
    );
    let prepared = std::panic::catch_unwind(AssertUnwindSafe(|| block_on(prepare(&harness))));
    match prepared {
        Ok((applied, raw, raw_namespaces)) => {
            eprintln!(
                "apiserver setup (start, apply manifests, RBAC and policy active) took {:.2?}",
                started.elapsed()
            );
            Ok(Env {
                harness,
                applied,
                raw,
                raw_namespaces,
            })
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!(
                "{msg}\nharness log ends with:\n{}",
                harness.log_tail(40)
            ))
        }
    }
}

type Results = Vec<(String, Result<(), String>)>;

async fn prepare(h: &Harness) -> (Results, Results, Vec<(String, Option<String>)>) {
    let admin = super::client(&h.kubeconfig).await;
    let manifests = super::repo_root().join("manifests");

    // What `kubectl apply -k manifests/` sends.
    let applied = apply_all(&admin, &render(h, &manifests)).await;

    // Every raw manifest file on its own, as `kubectl apply -f FILE` (same field manager: the
    // objects the kustomize build created are updated in place, if at all).
    let mut raw = Vec::new();
    let mut raw_namespaces = Vec::new();
    for file in manifest_files(&manifests) {
        let rel = file
            .strip_prefix(super::repo_root())
            .unwrap_or(&file)
            .display()
            .to_string();
        for obj in render(h, &file) {
            if is_namespaced(&admin, &obj).await {
                raw_namespaces.push((
                    format!("{rel}: {}", object_ref(&obj)),
                    obj["metadata"]["namespace"].as_str().map(String::from),
                ));
            }
            let r = apply(&admin, &obj).await.map(|_| ());
            raw.push((format!("{rel}: {}", object_ref(&obj)), r));
        }
    }

    // RBAC and admission policies take effect through informers, a moment after the write.
    // Wait (bounded) until they confine the loader: then every test sees the final state.
    if applied.iter().all(|(_, r)| r.is_ok()) {
        let probe = "probe-a";
        create_node(&admin, Node::test(probe).with_taints([gate()])).await;
        create_node(&admin, Node::test("probe-b").with_taints([gate()])).await;
        let id = Identity::new(h, &admin, probe).await;
        wait_until_confined(&id, probe, "probe-b").await;
    }
    (applied, raw, raw_namespaces)
}

/// Strict server-side apply of `objects` in order: `kind/namespace/name` → result.
pub async fn apply_all(admin: &kube::Client, objects: &[Value]) -> Results {
    let mut applied = Vec::new();
    for obj in objects {
        let r = apply(admin, obj).await.map(|_| ());
        applied.push((object_ref(obj), r));
    }
    applied
}

/// The manifests rendered into namespace `ns` by an overlay (`namespace: <ns>`), applied to
/// `h` as `kubectl apply -k <overlay>` would, the namespace created first; panics naming what
/// the server refused.
pub async fn install_in_namespace(h: &Harness, admin: &kube::Client, ns: &str) {
    install_overlay(h, admin, &Overlay::in_namespace(ns)).await
}

/// [`install_in_namespace`] for any [`Overlay`] (components, a name prefix and suffix).
pub async fn install_overlay(h: &Harness, admin: &kube::Client, overlay: &Overlay<'_>) {
    let ns = overlay.namespace;
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
    match Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {} // kube-system, e.g.
        Err(e) => panic!("create namespace {ns}: {e}"),
    }
    let failed: Vec<String> = apply_all(admin, &render_overlay(h, overlay))
        .await
        .into_iter()
        .filter_map(|(what, r)| r.err().map(|e| format!("{what}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "the manifests rendered by {overlay:?}: server-side apply (fieldValidation=Strict) rejected:\n{}",
        failed.join("\n")
    );
}

/// Waits (bounded by [`SETTLE`]) until the loader `id`, whose pod is on node `own`, carries the
/// node-name claim, RBAC lets it read nodes, and the admission policy denies it a change on node
/// `other`. RBAC and policies take effect through informers, a moment after their write; a
/// policy that never confines this loader fails here, naming what the server did instead.
pub async fn wait_until_confined(id: &Identity, own: &str, other: &str) {
    let review = Api::<SelfSubjectReview>::all(id.client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview with the pod-bound token");
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    let claimed = user
        .extra
        .as_ref()
        .and_then(|e| e.get("authentication.kubernetes.io/node-name"))
        .cloned();
    assert_eq!(
        claimed.as_deref(),
        Some(&[own.to_string()][..]),
        "the pod-bound token must carry the node-name claim (ServiceAccountTokenPodNodeInfo); user: {user:?}"
    );
    let nodes: Api<Node> = Api::all(id.client.clone());
    poll("RBAC lets the loader get nodes", SETTLE, || async {
        nodes.get(own).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    let what = format!(
        "the admission policy denies {} a change on node {other}",
        user.username.unwrap_or_default()
    );
    let change = Patch::Merge(json!({"metadata": {"labels": {"probe": "x"}}}));
    until_refused(&what, &nodes, other, &change, 403, POLICY).await;
}

/// Polls (bounded by [`SETTLE`]) until the API server refuses the dry-run `patch` of `node`
/// through `nodes` with status `code` and a message holding `want`: policies, bindings and
/// their params take effect through informers, a moment after their write. Fails naming what
/// the server answered last.
pub async fn until_refused(
    what: &str,
    nodes: &Api<Node>,
    node: &str,
    patch: &Patch<Value>,
    code: u16,
    want: &str,
) {
    poll(what, SETTLE, || async {
        match nodes.patch(node, &dry_run(), patch).await {
            Err(kube::Error::Api(s)) if s.code == code && s.message.contains(want) => Ok(()),
            Ok(_) => Err("the change was allowed".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

/// Polls (bounded by [`SETTLE`]) until the API server would accept the dry-run `patch` of
/// `node` through `nodes`; fails naming its last refusal.
pub async fn until_allowed(what: &str, nodes: &Api<Node>, node: &str, patch: &Patch<Value>) {
    poll(what, SETTLE, || async {
        nodes
            .patch(node, &dry_run(), patch)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
}

fn dry_run() -> PatchParams {
    PatchParams {
        dry_run: true,
        ..Default::default()
    }
}

/// Like [`block_on`], on a `LocalSet`: for futures that are not `Send` (`proxied_client`'s hook).
pub fn run_local<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}
