//! The one mocked API server of the `untaint` tests (tower-test), for the faults a real server will
//! not produce on demand: a named verifier with one method per exchange, each asserting the exact
//! request and answering what kube-apiserver would, applying each JSON Patch to the node it served
//! (or failing its `test` op). Used by `untaint_mock.rs` and `untaint_gate_keys.rs`; the real
//! kube-apiserver tests are in `apiserver_e2e.rs`.

use std::time::Duration;

use aapl_test_support::fixtures::gate_taints;
use apparmor_profile_loader::admission_probe;
use apparmor_profile_loader::node_labels::Desired;
use apparmor_profile_loader::node_update::{self, UntaintError};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

/// The mocked API server, one method per exchange, each asserting the exact request we sent
/// and answering what kube-apiserver would. It keeps the node it last served, so a PATCH is
/// applied to that node (or fails its `test` op) as on the real server.
pub struct ApiServerVerifier {
    handle: Handle<Request<Body>, Response<Body>>,
    /// `/api/v1/nodes/<name>`: the one URL `untaint` may use.
    path: String,
    pub stored: Option<Node>,
}

impl ApiServerVerifier {
    /// The server side of a mocked client for node `node`, with `stored` as the node it holds.
    pub fn new(
        handle: Handle<Request<Body>, Response<Body>>,
        node: &str,
        stored: Option<Node>,
    ) -> Self {
        ApiServerVerifier {
            handle,
            path: format!("/api/v1/nodes/{node}"),
            stored,
        }
    }

    /// The next request, which must be `method` on our node's URL.
    async fn expect(&mut self, method: Method) -> (Request<Body>, SendResponse<Response<Body>>) {
        let (request, send) =
            self.handle.next_request().await.unwrap_or_else(|| {
                panic!("client sent no request; expected {method} {}", self.path)
            });
        assert_eq!(
            (request.method(), request.uri().path()),
            (&method, self.path.as_str()),
            "unexpected request"
        );
        (request, send)
    }

    /// Expects `GET /api/v1/nodes/<name>` and answers with `node`, which is then the node as
    /// stored (what the next PATCH applies to).
    pub async fn handle_get(&mut self, node: &Node) {
        let (_, send) = self.expect(Method::GET).await;
        self.stored = Some(node.clone());
        send.send_response(json_response(
            StatusCode::OK,
            &serde_json::to_value(node).unwrap(),
        ));
    }

    /// Another client writes the node between our GET and our PATCH.
    pub fn concurrent_write(&mut self, node: Node) {
        self.stored = Some(node);
    }

    /// Expects a JSON Patch of exactly `ops` and answers as kube-apiserver does: the ops applied
    /// to the stored node (200, the patched node, its resourceVersion bumped), or a bare
    /// 422 Invalid when a `test` op fails.
    pub async fn handle_patch(&mut self, ops: Value) {
        let send = self.expect_patch(&ops).await;
        let stored = self.stored.take().expect("a PATCH before any GET");
        let mut doc = serde_json::to_value(&stored).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(ops).expect("a JSON Patch");
        match json_patch::patch(&mut doc, &patch) {
            Ok(()) => {
                let version: u64 = stored.metadata.resource_version.unwrap().parse().unwrap();
                doc["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                self.stored = Some(serde_json::from_value(doc.clone()).unwrap());
                send.send_response(json_response(StatusCode::OK, &doc));
            }
            Err(_) => {
                self.stored = Some(stored);
                send.send_response(status_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    PATCH_TEST_FAILED,
                ));
            }
        }
    }

    /// Expects a JSON Patch of exactly `ops` and refuses it with `response`: the faults a
    /// real server gives only in states a test cannot set up (a conflict, RBAC, admission).
    pub async fn handle_patch_refused(&mut self, ops: Value, response: Response<Body>) {
        let send = self.expect_patch(&ops).await;
        send.send_response(response);
    }

    async fn expect_patch(&mut self, ops: &Value) -> SendResponse<Response<Body>> {
        let (request, send) = self.expect(Method::PATCH).await;
        assert_eq!(
            request.headers()["content-type"],
            "application/json-patch+json"
        );
        let body = request.into_body().collect_bytes().await.unwrap();
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(&sent, ops, "the JSON Patch we sent");
        send
    }

    /// Answers every request, each `method` on our node's URL, with `answer()` until the client
    /// gives up and drops its end (a server that never recovers).
    pub async fn handle_faults_until_dropped(
        &mut self,
        method: Method,
        answer: impl Fn() -> Response<Body>,
    ) {
        while let Some((request, send)) = self.handle.next_request().await {
            assert_eq!(
                (request.method(), request.uri().path()),
                (&method, self.path.as_str()),
                "unexpected request"
            );
            send.send_response(answer());
        }
    }

    /// A node some other client writes all the time (its resourceVersion moves on every read)
    /// while every PATCH's `test` fails, until the client gives up and drops its end. Returns
    /// the virtual time of each GET, since the first; panics past `max_gets`, so a client that
    /// re-reads without pausing fails here instead of spinning forever in paused time.
    pub async fn handle_busy_node_until_dropped(
        &mut self,
        node: &Node,
        max_gets: usize,
    ) -> Vec<Duration> {
        let started = tokio::time::Instant::now();
        let mut gets = Vec::new();
        while let Some((request, send)) = self.handle.next_request().await {
            assert_eq!(
                request.uri().path(),
                self.path.as_str(),
                "unexpected request"
            );
            if request.method() == Method::GET {
                gets.push(started.elapsed());
                assert!(
                    gets.len() <= max_gets,
                    "{} reads of the node in {:?}: re-reads after a failed patch test \
                     do not back off",
                    gets.len(),
                    started.elapsed()
                );
                let mut changed = node.clone();
                changed.metadata.resource_version = Some(gets.len().to_string());
                send.send_response(json_response(
                    StatusCode::OK,
                    &serde_json::to_value(&changed).unwrap(),
                ));
            } else {
                send.send_response(status_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    PATCH_TEST_FAILED,
                ));
            }
        }
        gets
    }

    /// Expects the admission probe (`kube::admission_probe`): a dry-run merge patch of our node
    /// adding the probe label, and answers with `response` (what the admission chain decided).
    pub async fn handle_probe(&mut self, response: Response<Body>) {
        let (request, send) = self.expect(Method::PATCH).await;
        assert_eq!(
            request.headers()["content-type"],
            "application/merge-patch+json"
        );
        assert!(
            request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "dryRun=All")),
            "the probe is a dry run: {}",
            request.uri()
        );
        let body = request.into_body().collect_bytes().await.unwrap();
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            sent,
            json!({"metadata": {"labels": {admission_probe::PROBE_LABEL: "must-be-refused"}}})
        );
        send.send_response(response);
    }

    /// Expects `method` on our node's URL (the first request, or the one being retried) and
    /// answers with a fault.
    pub async fn handle_fault(&mut self, method: Method, response: Response<Body>) {
        let (_, send) = self.expect(method).await;
        send.send_response(response);
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

pub fn status_response(status: StatusCode, message: &str) -> Response<Body> {
    status_response_with(status, message, json!({}))
}

/// A `Status` body as kube-apiserver sends it: its reason for the code, and `details`.
pub fn status_response_with(status: StatusCode, message: &str, details: Value) -> Response<Body> {
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
pub const PATCH_TEST_FAILED: &str =
    "the server rejected our request due to an error in our request";

/// Runs `node_update::run` on node `node` (the default gate taints) against the mock while `scenario`
/// plays the server.
pub async fn against_mock<F, Fut>(
    node: &str,
    timeout: Duration,
    scenario: F,
) -> Result<node_update::UntaintOutcome, UntaintError>
where
    F: FnOnce(ApiServerVerifier) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    against_mock_with(node, timeout, None, scenario).await
}

/// Runs `node_update::run_with` requiring the admission policy (`--require-admission-policy`)
/// against the mock while `scenario` plays the server.
pub async fn against_mock_requiring_the_policy<F, Fut>(
    node: &str,
    timeout: Duration,
    scenario: F,
) -> Result<node_update::UntaintOutcome, UntaintError>
where
    F: FnOnce(ApiServerVerifier) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    against_mock_wanting(node, timeout, None, true, scenario).await
}

/// Runs `node_update::run_labelled` (labels in line with `desired`, if given) against the mock
/// while `scenario` plays the server.
pub async fn against_mock_with<F, Fut>(
    node: &str,
    timeout: Duration,
    desired: Option<Desired>,
    scenario: F,
) -> Result<node_update::UntaintOutcome, UntaintError>
where
    F: FnOnce(ApiServerVerifier) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    against_mock_wanting(node, timeout, desired, false, scenario).await
}

/// `node_update::run_with` for the default gate taints, `desired` labels and the admission
/// probe when `require_admission_policy`, against the mock while `scenario` plays the server.
async fn against_mock_wanting<F, Fut>(
    node: &str,
    timeout: Duration,
    desired: Option<Desired>,
    require_admission_policy: bool,
    scenario: F,
) -> Result<node_update::UntaintOutcome, UntaintError>
where
    F: FnOnce(ApiServerVerifier) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "kube-system");
    let server = tokio::spawn(scenario(ApiServerVerifier::new(handle, node, None)));
    let taints = gate_taints();
    let wanted = node_update::Wanted {
        taints: &taints,
        labels: desired.as_ref(),
        condition: None,
        require_admission_policy,
    };
    let result = node_update::run_with(client, node, &wanted, timeout).await;
    server.await.expect("scenario assertions");
    result
}
