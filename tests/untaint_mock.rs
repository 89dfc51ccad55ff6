//! `untaint` against a mocked API server (tower-test), for the faults a real server will not
//! produce on demand: 409s, 500s, a server that never recovers. The real kube-apiserver tests
//! are in `apiserver_e2e.rs`.
//!
//! Time is paused (tokio test-util), so backoff pauses cost no wall time.

use std::time::Duration;

use apparmor_profile_loader::taint::{AUTOSCALER_GATE_TAINT, GATE_TAINT, Taint};
use apparmor_profile_loader::untaint::{self, UntaintError};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint as ApiTaint};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

// === Fixtures ===

trait NodeFixture {
    fn test(name: &str) -> Self;
    fn with_taint(self, key: &str, value: &str, effect: &str) -> Self;
}

impl NodeFixture for Node {
    fn test(name: &str) -> Self {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.metadata.resource_version = Some("1".into());
        node.spec = Some(NodeSpec::default());
        node
    }

    fn with_taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.taints.get_or_insert_with(Vec::new).push(ApiTaint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            time_added: None,
        });
        self
    }
}

fn gate_taints() -> Vec<Taint> {
    [GATE_TAINT, AUTOSCALER_GATE_TAINT]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect()
}

const NODE: &str = "aks-user-0";
const GATE: &str = "WaitingForAppArmorProfiles";

/// The mocked API server, one method per exchange, each asserting what we sent.
struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    async fn next(
        &mut self,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        self.0.next_request().await.expect("client sent no request")
    }

    /// Expects `GET /api/v1/nodes/<name>` and answers with `node`.
    async fn handle_get(&mut self, node: &Node) {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), format!("/api/v1/nodes/{NODE}"));
        send.send_response(json_response(
            StatusCode::OK,
            &serde_json::to_value(node).unwrap(),
        ));
    }

    /// Expects a JSON Patch with exactly `ops`; answers with `status` (and a node on 200).
    async fn handle_patch(&mut self, ops: Value, status: StatusCode, message: &str) {
        self.handle_patch_with(ops, status_response(status, message), status)
            .await;
    }

    /// Expects a JSON Patch with exactly `ops`; answers with `response` (a node on 200).
    async fn handle_patch_with(
        &mut self,
        ops: Value,
        response: Response<Body>,
        status: StatusCode,
    ) {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), format!("/api/v1/nodes/{NODE}"));
        assert_eq!(
            request.headers()["content-type"],
            "application/json-patch+json"
        );
        let body = request.into_body().collect_bytes().await.unwrap();
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(sent, ops);
        if status == StatusCode::OK {
            let node = Node::test(NODE);
            send.send_response(json_response(status, &serde_json::to_value(node).unwrap()));
        } else {
            send.send_response(response);
        }
    }

    /// Answers the next request, whatever it is, with an error status.
    async fn handle_error(&mut self, status: StatusCode, message: &str) {
        let (_request, send) = self.next().await;
        send.send_response(status_response(status, message));
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status_response(status: StatusCode, message: &str) -> Response<Body> {
    status_response_with(status, message, json!({}))
}

/// A `Status` body as kube-apiserver sends it: its reason for the code, and `details`.
fn status_response_with(status: StatusCode, message: &str, details: Value) -> Response<Body> {
    let reason = match status.as_u16() {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    json_response(
        status,
        &json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": status.as_u16(),
        }),
    )
}

/// What kube-apiserver answers when a JSON Patch `test` fails (seen against v1.37.2): a bare
/// 422 Invalid without causes; the patch library's own message is not passed through.
const PATCH_TEST_FAILED: &str = "the server rejected our request due to an error in our request";

fn remove_at(index: usize, key: &str) -> Value {
    json!([
        {"op": "test", "path": format!("/spec/taints/{index}"),
         "value": {"key": key, "value": "true", "effect": "NoSchedule"}},
        {"op": "remove", "path": format!("/spec/taints/{index}")},
    ])
}

/// Runs `untaint::run` against the mock while `scenario` plays the server.
async fn against_mock<F, Fut>(
    timeout: Duration,
    scenario: F,
) -> Result<untaint::UntaintOutcome, UntaintError>
where
    F: FnOnce(ApiServerVerifier) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "kube-system");
    let server = tokio::spawn(scenario(ApiServerVerifier(handle)));
    let result = untaint::run(client, NODE, &gate_taints(), timeout).await;
    server.await.expect("scenario assertions");
    result
}

const TIMEOUT: Duration = Duration::from_secs(300);

// === Scenarios ===

#[tokio::test(start_paused = true)]
async fn present_taint_is_removed_and_other_taints_are_not_in_the_patch() {
    let node = Node::test(NODE)
        .with_taint("dedicated", "gpu", "NoSchedule")
        .with_taint(GATE, "true", "NoSchedule")
        .with_taint("other", "x", "NoExecute");
    let outcome = against_mock(TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(remove_at(1, GATE), StatusCode::OK, "")
            .await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.removed, [format!("{GATE}=true:NoSchedule")]);
    assert_eq!(outcome.api_requests, 2);
}

#[tokio::test(start_paused = true)]
async fn both_gate_forms_are_removed_highest_index_first() {
    let autoscaler = "startup-taint.cluster-autoscaler.kubernetes.io/WaitingForAppArmorProfiles";
    let node = Node::test(NODE)
        .with_taint(autoscaler, "true", "NoSchedule")
        .with_taint("keep", "me", "NoSchedule")
        .with_taint(GATE, "true", "NoSchedule");
    let mut ops = remove_at(2, GATE).as_array().unwrap().clone();
    ops.extend(remove_at(0, autoscaler).as_array().unwrap().clone());
    let outcome = against_mock(TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(Value::Array(ops), StatusCode::OK, "")
            .await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.removed.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn absent_taint_is_success_without_a_write() {
    let node = Node::test(NODE).with_taint("other", "x", "NoSchedule");
    let outcome = against_mock(TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
    })
    .await
    .unwrap();
    assert!(outcome.removed.is_empty());
    assert_eq!(outcome.api_requests, 1);
}

#[tokio::test(start_paused = true)]
async fn same_key_with_another_value_is_removed_as_a_near_miss() {
    // A gate key gates the node whatever its value (see tests/untaint_gate_keys.rs).
    let node = Node::test(NODE).with_taint(GATE, "false", "NoSchedule");
    let ops = json!([
        {"op": "test", "path": "/spec/taints/0",
         "value": {"key": GATE, "value": "false", "effect": "NoSchedule"}},
        {"op": "remove", "path": "/spec/taints/0"},
    ]);
    let outcome = against_mock(TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(ops, StatusCode::OK, "").await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.near_misses, [format!("{GATE}=false:NoSchedule")]);
}

#[tokio::test(start_paused = true)]
async fn conflict_rereads_the_node_and_patches_the_new_index() {
    let before = Node::test(NODE).with_taint(GATE, "true", "NoSchedule");
    let mut after = Node::test(NODE)
        .with_taint("added-meanwhile", "x", "NoSchedule")
        .with_taint(GATE, "true", "NoSchedule");
    after.metadata.resource_version = Some("2".into());
    let outcome = against_mock(TIMEOUT, |mut api| async move {
        api.handle_get(&before).await;
        api.handle_patch(
            remove_at(0, GATE),
            StatusCode::CONFLICT,
            "the object has been modified",
        )
        .await;
        api.handle_get(&after).await;
        api.handle_patch(remove_at(1, GATE), StatusCode::OK, "")
            .await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.api_requests, 4);
}

#[tokio::test(start_paused = true)]
async fn failed_patch_test_rereads_the_node() {
    let node = Node::test(NODE)
        .with_taint("x", "y", "NoSchedule")
        .with_taint(GATE, "true", "NoSchedule");
    let mut moved = Node::test(NODE).with_taint(GATE, "true", "NoSchedule");
    moved.metadata.resource_version = Some("2".into());
    let outcome = against_mock(TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(
            remove_at(1, GATE),
            StatusCode::UNPROCESSABLE_ENTITY,
            PATCH_TEST_FAILED,
        )
        .await;
        api.handle_get(&moved).await;
        api.handle_patch(remove_at(0, GATE), StatusCode::OK, "")
            .await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.removed.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_with_backoff_then_succeed() {
    let node = Node::test(NODE).with_taint(GATE, "true", "NoSchedule");
    let started = tokio::time::Instant::now();
    let outcome = against_mock(TIMEOUT, |mut api| async move {
        api.handle_error(StatusCode::INTERNAL_SERVER_ERROR, "etcd leader changed")
            .await;
        api.handle_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "apiserver is shutting down",
        )
        .await;
        api.handle_error(StatusCode::TOO_MANY_REQUESTS, "slow down")
            .await;
        api.handle_get(&node).await;
        api.handle_patch(remove_at(0, GATE), StatusCode::OK, "")
            .await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.api_requests, 5);
    // Three pauses: at least half of 250 ms + 500 ms + 1 s of (virtual) time went by.
    assert!(
        started.elapsed() >= Duration::from_millis(875),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn server_that_never_recovers_times_out_with_the_last_error() {
    let err = against_mock(Duration::from_secs(30), |mut api| async move {
        // Answer every request with 503 until the client gives up and drops its end.
        while let Some((_req, send)) = api.0.next_request().await {
            send.send_response(status_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
            ));
        }
    })
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, UntaintError::TimedOut { .. }), "{msg}");
    assert!(
        msg.contains("after 30s") && msg.contains("overloaded"),
        "{msg}"
    );
}

#[tokio::test(start_paused = true)]
async fn missing_node_fails_at_once_and_says_what_to_fix() {
    let err = against_mock(TIMEOUT, |mut api| async move {
        api.handle_error(StatusCode::NOT_FOUND, "nodes \"aks-user-0\" not found")
            .await;
    })
    .await
    .unwrap_err();
    assert!(matches!(err, UntaintError::NodeNotFound(_)));
    assert!(err.to_string().contains("spec.nodeName"));
}

#[tokio::test(start_paused = true)]
async fn forbidden_fails_at_once_and_names_the_rbac_to_check() {
    let node = Node::test(NODE).with_taint(GATE, "true", "NoSchedule");
    let err = against_mock(TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(
            remove_at(0, GATE),
            StatusCode::FORBIDDEN,
            "nodes \"aks-user-0\" is forbidden: User cannot patch resource",
        )
        .await;
    })
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            UntaintError::Forbidden {
                action: "patch",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("ClusterRole apparmor-profile-loader"), "{msg}");
}

#[tokio::test(start_paused = true)]
async fn validation_denial_as_422_with_causes_is_final_not_retried() {
    let node = Node::test(NODE).with_taint(GATE, "true", "NoSchedule");
    let err = against_mock(TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        let denial = status_response_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Node \"aks-user-0\" is invalid: spec.taints[0].effect: Unsupported value",
            json!({"name": NODE, "kind": "Node", "causes": [
                {"reason": "FieldValueNotSupported", "field": "spec.taints[0].effect"}]}),
        );
        api.handle_patch_with(remove_at(0, GATE), denial, StatusCode::UNPROCESSABLE_ENTITY)
            .await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, UntaintError::Rejected { code: 422, .. }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_patch_test_on_an_unchanged_node_gives_up_instead_of_spinning() {
    let node = Node::test(NODE).with_taint(GATE, "true", "NoSchedule");
    let again = node.clone();
    let err = against_mock(TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(
            remove_at(0, GATE),
            StatusCode::UNPROCESSABLE_ENTITY,
            PATCH_TEST_FAILED,
        )
        .await;
        api.handle_get(&again).await;
    })
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, UntaintError::Rejected { code: 422, .. }),
        "{msg}"
    );
    assert!(msg.contains("not a concurrent update"), "{msg}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_the_server_is_honoured() {
    let node = Node::test(NODE).with_taint(GATE, "true", "NoSchedule");
    let started = tokio::time::Instant::now();
    against_mock(TIMEOUT, |mut api| async move {
        let (_req, send) = api.next().await;
        send.send_response(status_response_with(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
            json!({"retryAfterSeconds": 7}),
        ));
        api.handle_get(&node).await;
        api.handle_patch(remove_at(0, GATE), StatusCode::OK, "")
            .await;
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn unauthorized_fails_at_once() {
    let err = against_mock(TIMEOUT, |mut api| async move {
        api.handle_error(StatusCode::UNAUTHORIZED, "Unauthorized")
            .await;
    })
    .await
    .unwrap_err();
    assert!(matches!(err, UntaintError::Unauthorized(_)));
    assert!(err.to_string().contains("projected token"));
}
