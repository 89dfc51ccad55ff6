//! `untaint` and gate-key near misses, against a scripted mock API server: a taint whose key is
//! a gate key but whose value or effect differs still gates the node, so it is removed too and
//! never reported as "nothing to do". Also: a refused re-read reports the status the server
//! actually sent.
//!
//! Against the shared mocked API server (`api_mock.rs`; time paused, no wall time).

use std::time::Duration;

use apparmor_profile_loader::node_update::UntaintError;
use http::StatusCode;
use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint as ApiTaint};
use serde_json::{Value, json};

use crate::api_mock::{against_mock, status_response};

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

const TIMEOUT: Duration = Duration::from_secs(300);

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
    let outcome = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&tainted).await;
        api.handle_patch(ops).await;
    })
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
    let outcome = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&tainted).await;
        api.handle_patch(Value::Array(ops)).await;
    })
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
    let outcome = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&clean).await;
    })
    .await
    .unwrap();
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
    let err = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&tainted).await;
        api.handle_patch_refused(ops, status_response(StatusCode::CONFLICT, "refused"))
            .await;
        api.handle_get(&tainted).await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, UntaintError::Rejected { code: 409, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("(409)"), "{err}");
}
