//! `untaint` and gate-key near misses, against a scripted mock API server: a taint whose key is
//! a gate key but whose value or effect differs still gates the node, so it is removed too and
//! never reported as "nothing to do". Also: a refused re-read reports the status the server
//! actually sent.
//!
//! The mock is a script of expected requests and canned answers (time paused, no wall time).

use std::time::Duration;

use apparmor_profile_loader::taint::{AUTOSCALER_GATE_TAINT, GATE_TAINT, Taint};
use apparmor_profile_loader::untaint::{self, UntaintError, UntaintOutcome};
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint as ApiTaint};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

const NODE: &str = "aks-user-1";
const GATE: &str = "WaitingForAppArmorProfiles";
const AUTOSCALER_GATE: &str =
    "startup-taint.cluster-autoscaler.kubernetes.io/WaitingForAppArmorProfiles";

/// A node at `resource_version` carrying `taints` as (key, value, effect).
fn node(resource_version: &str, taints: &[(&str, Option<&str>, &str)]) -> Node {
    Node {
        metadata: kube::api::ObjectMeta {
            name: Some(NODE.into()),
            resource_version: Some(resource_version.into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(
                taints
                    .iter()
                    .map(|(key, value, effect)| ApiTaint {
                        key: (*key).into(),
                        value: value.map(String::from),
                        effect: (*effect).into(),
                        time_added: None,
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One exchange: what the client must send, and what the server answers.
enum Step {
    /// `GET /api/v1/nodes/NODE`, answered with this node.
    Get(Box<Node>),
    /// A JSON Patch with exactly these operations, answered 200 or with a bare `Status`.
    Patch(Value, u16),
}

fn answer(code: u16, body: Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string().into_bytes()));
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap();
    response
}

/// Plays `script` as the API server while `untaint::run` removes the default gate taints.
async fn run_script(script: Vec<Step>) -> Result<UntaintOutcome, UntaintError> {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        for step in script {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.uri().path(), format!("/api/v1/nodes/{NODE}"));
            match step {
                Step::Get(node) => {
                    assert_eq!(request.method(), Method::GET);
                    send.send_response(answer(200, serde_json::to_value(node).unwrap()));
                }
                Step::Patch(ops, code) => {
                    assert_eq!(request.method(), Method::PATCH);
                    let body = request.into_body().collect_bytes().await.unwrap();
                    let sent: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(sent, ops);
                    let reply = if code == 200 {
                        serde_json::to_value(node("9", &[])).unwrap()
                    } else {
                        let reason = if code == 409 { "Conflict" } else { "Invalid" };
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": "refused", "reason": reason, "code": code})
                    };
                    send.send_response(answer(code, reply));
                }
            }
        }
    });
    let taints: Vec<Taint> = [GATE_TAINT, AUTOSCALER_GATE_TAINT]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let client = Client::new(service, "kube-system");
    let result = untaint::run(client, NODE, &taints, Duration::from_secs(300)).await;
    server.await.expect("script assertions");
    result
}

/// `test` the taint exactly as read at `index`, then `remove` it.
fn test_and_remove(index: usize, taint: Value) -> [Value; 2] {
    let path = format!("/spec/taints/{index}");
    [
        json!({"op": "test", "path": path, "value": taint}),
        json!({"op": "remove", "path": path}),
    ]
}

#[tokio::test(start_paused = true)]
async fn gate_key_without_a_value_is_removed_not_reported_as_nothing_to_do() {
    let tainted = node("1", &[(GATE, None, "NoSchedule")]);
    let ops = json!(test_and_remove(
        0,
        json!({"key": GATE, "effect": "NoSchedule"})
    ));
    let outcome = run_script(vec![Step::Get(Box::new(tainted)), Step::Patch(ops, 200)])
        .await
        .unwrap();
    assert_eq!(outcome.removed, [format!("{GATE}:NoSchedule")]);
    assert_eq!(outcome.near_misses, outcome.removed);
}

#[tokio::test(start_paused = true)]
async fn every_value_and_effect_of_a_gate_key_goes_and_other_taints_stay() {
    let tainted = node(
        "1",
        &[
            ("dedicated", Some("gpu"), "NoSchedule"),
            (GATE, Some("True"), "NoSchedule"),
            (GATE, Some("true"), "NoExecute"),
            ("other", Some("x"), "NoExecute"),
            (AUTOSCALER_GATE, Some("false"), "PreferNoSchedule"),
            (GATE, Some("true"), "NoSchedule"),
        ],
    );
    let mut ops = Vec::new();
    for (index, value, effect) in [
        (5, "true", "NoSchedule"),
        (4, "false", "PreferNoSchedule"),
        (2, "true", "NoExecute"),
        (1, "True", "NoSchedule"),
    ] {
        let key = if index == 4 { AUTOSCALER_GATE } else { GATE };
        ops.extend(test_and_remove(
            index,
            json!({"key": key, "value": value, "effect": effect}),
        ));
    }
    let outcome = run_script(vec![
        Step::Get(Box::new(tainted)),
        Step::Patch(Value::Array(ops), 200),
    ])
    .await
    .unwrap();
    assert_eq!(
        outcome.removed,
        [
            format!("{GATE}=True:NoSchedule"),
            format!("{GATE}=true:NoExecute"),
            format!("{AUTOSCALER_GATE}=false:PreferNoSchedule"),
            format!("{GATE}=true:NoSchedule"),
        ]
    );
    assert_eq!(outcome.near_misses, outcome.removed[..3]);
}

#[tokio::test(start_paused = true)]
async fn a_node_without_any_gate_key_is_still_nothing_to_do() {
    let clean = node(
        "1",
        &[("waitingforapparmorprofiles", Some("true"), "NoSchedule")],
    );
    let outcome = run_script(vec![Step::Get(Box::new(clean))]).await.unwrap();
    assert!(outcome.removed.is_empty() && outcome.near_misses.is_empty());
    assert_eq!(outcome.api_requests, 1);
}

#[tokio::test(start_paused = true)]
async fn conflict_on_an_unchanged_node_reports_409_not_422() {
    let tainted = node("7", &[(GATE, Some("true"), "NoSchedule")]);
    let ops = json!(test_and_remove(
        0,
        json!({"key": GATE, "value": "true", "effect": "NoSchedule"})
    ));
    let err = run_script(vec![
        Step::Get(Box::new(tainted.clone())),
        Step::Patch(ops, 409),
        Step::Get(Box::new(tainted)),
    ])
    .await
    .unwrap_err();
    assert!(
        matches!(err, UntaintError::Rejected { code: 409, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("(409)"), "{err}");
}
