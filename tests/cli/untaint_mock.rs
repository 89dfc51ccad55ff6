//! `untaint` against the mocked API server (`api_mock.rs`), for the faults a real server will not
//! produce on demand: 409s, 500s, a server that never recovers. The real kube-apiserver tests
//! are in `apiserver_e2e.rs`.
//!
//! Time is paused (tokio test-util), so backoff pauses cost no wall time.

use std::time::Duration;

use aapl_test_support::fixtures::{NodeFixture, autoscaler_gate, gate, taint};
use apparmor_profile_loader::node_labels::{DEFAULT_PREFIX, Desired, NodeReport};
use apparmor_profile_loader::node_update::UntaintError;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

use crate::api_mock::{
    ApiServerVerifier, PATCH_TEST_FAILED, against_mock, against_mock_requiring_the_policy,
    against_mock_with, json_response, status_response, status_response_with,
};

const NODE: &str = "aks-user-0";
const GATE: &str = "WaitingForAppArmorProfiles";

/// The JSON Patch `untaint` sends for one gate taint at `index`: `test` it is there, `remove` it.
fn remove_at(index: usize, key: &str) -> Value {
    json!([
        {"op": "test", "path": format!("/spec/taints/{index}"),
         "value": {"key": key, "value": "true", "effect": "NoSchedule"}},
        {"op": "remove", "path": format!("/spec/taints/{index}")},
    ])
}

const TIMEOUT: Duration = Duration::from_secs(300);

fn desired(profiles: &[(&str, &str)]) -> Desired {
    let report = NodeReport {
        loader: "0.1.0".into(),
        profiles: profiles
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect(),
        ..Default::default()
    };
    Desired::from_report(DEFAULT_PREFIX.parse().unwrap(), &report)
}

// === Scenarios ===

/// One write: the gate taint goes and the node's labels and annotation come, in one JSON Patch;
/// a re-run on the node as it then is sends nothing.
#[tokio::test(start_paused = true)]
async fn labels_and_annotation_come_in_the_same_patch_that_removes_the_taint() {
    let node = Node::test(NODE).with_taints([gate()]);
    let want = desired(&[("k8s-nginx", "sha256:0123456789abcdef")]);
    let annotation = want.annotation.clone();
    let mut ops = remove_at(0, GATE).as_array().unwrap().clone();
    ops.extend([
        json!({"op": "add", "path": "/metadata/labels", "value": {}}),
        json!({"op": "add", "path": "/metadata/labels/apparmor-profile-loader~1k8s-nginx",
               "value": "0123456789ab"}),
        json!({"op": "add", "path": "/metadata/annotations", "value": {}}),
        json!({"op": "add", "path": "/metadata/annotations/apparmor-profile-loader~1profiles",
               "value": annotation}),
    ]);
    let stored = std::sync::Arc::new(std::sync::Mutex::new(None));
    let keep = stored.clone();
    let outcome = against_mock_with(NODE, TIMEOUT, Some(want.clone()), |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(Value::Array(ops)).await;
        *keep.lock().unwrap() = api.stored.clone();
    })
    .await
    .unwrap();
    assert_eq!(outcome.api_requests, 2);
    assert_eq!(outcome.label_ops, 4);
    let labelled = stored.lock().unwrap().clone().expect("the patched node");
    assert_eq!(
        labelled.metadata.labels.as_ref().unwrap()["apparmor-profile-loader/k8s-nginx"],
        "0123456789ab"
    );
    let outcome = against_mock_with(NODE, TIMEOUT, Some(want), |mut api| async move {
        api.handle_get(&labelled).await;
    })
    .await
    .unwrap();
    assert_eq!((outcome.api_requests, outcome.label_ops), (1, 0));
}

/// On an untainted node a profile change still reaches the labels: the stale one goes, the
/// changed digest changes, nothing else is touched.
#[tokio::test(start_paused = true)]
async fn without_a_taint_only_the_labels_under_the_prefix_change() {
    let want = desired(&[("k8s-a", "sha256:aaaaaaaaaaaaaaaa")]);
    let mut node = Node::test(NODE).with_taints([taint("other=x:NoSchedule")]);
    node.metadata.labels = Some(
        [
            ("apparmor-profile-loader/k8s-a", "000000000000"),
            ("apparmor-profile-loader/k8s-gone", "111111111111"),
            ("kubernetes.io/hostname", NODE),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    // What the earlier untaint wrote: both profiles.
    let before = desired(&[("k8s-a", "sha256:0000"), ("k8s-gone", "sha256:1111")]);
    node.metadata.annotations = Some(
        [(
            "apparmor-profile-loader/profiles".to_string(),
            before.annotation.clone(),
        )]
        .into_iter()
        .collect(),
    );
    let ops = json!([
        {"op": "add", "path": "/metadata/labels/apparmor-profile-loader~1k8s-a", "value": "aaaaaaaaaaaa"},
        {"op": "remove", "path": "/metadata/labels/apparmor-profile-loader~1k8s-gone"},
        {"op": "add", "path": "/metadata/annotations/apparmor-profile-loader~1profiles", "value": want.annotation},
    ]);
    let outcome = against_mock_with(NODE, TIMEOUT, Some(want), |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(ops).await;
    })
    .await
    .unwrap();
    assert!(outcome.removed.is_empty());
    assert_eq!(outcome.label_ops, 3);
}

#[tokio::test(start_paused = true)]
async fn present_taint_is_removed_and_other_taints_are_not_in_the_patch() {
    let node = Node::test(NODE).with_taints([
        taint("dedicated=gpu:NoSchedule"),
        gate(),
        taint("other=x:NoExecute"),
    ]);
    let outcome = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(remove_at(1, GATE)).await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.removed, [format!("{GATE}=true:NoSchedule")]);
    assert_eq!(outcome.api_requests, 2);
}

#[tokio::test(start_paused = true)]
async fn both_gate_forms_are_removed_highest_index_first() {
    let autoscaler = autoscaler_gate().key;
    let node =
        Node::test(NODE).with_taints([autoscaler_gate(), taint("keep=me:NoSchedule"), gate()]);
    let mut ops = remove_at(2, GATE).as_array().unwrap().clone();
    ops.extend(remove_at(0, &autoscaler).as_array().unwrap().clone());
    let outcome = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(Value::Array(ops)).await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.removed.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn absent_taint_is_success_without_a_write() {
    let node = Node::test(NODE).with_taints([taint("other=x:NoSchedule")]);
    let outcome = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
    })
    .await
    .unwrap();
    assert!(outcome.removed.is_empty());
    assert_eq!(outcome.api_requests, 1);
}

#[tokio::test(start_paused = true)]
async fn same_key_with_another_value_is_removed_as_a_near_miss() {
    // A gate key gates the node whatever its value (see untaint_gate_keys.rs).
    let node = Node::test(NODE).with_taints([taint(&format!("{GATE}=false:NoSchedule"))]);
    let ops = json!([
        {"op": "test", "path": "/spec/taints/0",
         "value": {"key": GATE, "value": "false", "effect": "NoSchedule"}},
        {"op": "remove", "path": "/spec/taints/0"},
    ]);
    let outcome = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch(ops).await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.near_misses, [format!("{GATE}=false:NoSchedule")]);
}

#[tokio::test(start_paused = true)]
async fn refused_patch_rereads_the_node_and_patches_the_index_it_finds() {
    // 409: another writer got in first and moved the gate. 503: transient, but the node may
    // have changed meanwhile too. Either way: read the node again, then patch what is there.
    let before = Node::test(NODE).with_taints([gate()]);
    let moved = Node::test(NODE)
        .with_taints([taint("added-meanwhile=x:NoSchedule"), gate()])
        .with_resource_version("2");
    for (status, message, reread, index) in [
        (
            StatusCode::CONFLICT,
            "the object has been modified",
            &moved,
            1,
        ),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "etcd leader changed",
            &before,
            0,
        ),
    ] {
        let (first, reread) = (before.clone(), reread.clone());
        let outcome = against_mock(NODE, TIMEOUT, |mut api| async move {
            api.handle_get(&first).await;
            let refusal = status_response(status, message);
            api.handle_patch_refused(remove_at(0, GATE), refusal).await;
            api.handle_get(&reread).await;
            api.handle_patch(remove_at(index, GATE)).await;
        })
        .await
        .unwrap_or_else(|e| panic!("after {status}: {e}"));
        assert_eq!(outcome.api_requests, 4, "after {status}");
        assert_eq!(outcome.removed, [format!("{GATE}=true:NoSchedule")]);
    }
}

#[tokio::test(start_paused = true)]
async fn failed_patch_test_rereads_the_node() {
    let node = Node::test(NODE).with_taints([taint("x=y:NoSchedule"), gate()]);
    // Between our GET and our PATCH another client removes taint x: the gate moves to index 0,
    // so our `test` of index 1 fails on the server.
    let moved = Node::test(NODE)
        .with_taints([gate()])
        .with_resource_version("2");
    let outcome = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.concurrent_write(moved.clone());
        api.handle_patch(remove_at(1, GATE)).await;
        api.handle_get(&moved).await;
        api.handle_patch(remove_at(0, GATE)).await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.removed.len(), 1);
    assert_eq!(outcome.api_requests, 4);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_changes_on_every_read_is_re_read_with_backoff_not_in_a_tight_loop() {
    let node = Node::test(NODE).with_taints([gate()]);
    let gets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = gets.clone();
    let err = against_mock(NODE, Duration::from_secs(3), |mut api| async move {
        *seen.lock().unwrap() = api.handle_busy_node_until_dropped(&node, 40).await;
    })
    .await
    .unwrap_err();
    assert!(matches!(err, UntaintError::TimedOut { .. }), "{err}");
    let gets = gets.lock().unwrap();
    // The first re-read is at once (the usual race: someone else wrote between our GET and
    // PATCH); each later one waits longer, at least half the doubling backoff.
    assert!(gets.len() >= 3, "{gets:?}");
    assert_eq!(gets[1], gets[0], "the first re-read is immediate: {gets:?}");
    for (i, pair) in gets.windows(2).enumerate().skip(1) {
        let min = Duration::from_millis(125) * 2u32.pow(i as u32 - 1);
        assert!(pair[1] - pair[0] >= min, "re-read {i}: {gets:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_with_backoff_then_succeed() {
    let node = Node::test(NODE).with_taints([gate()]);
    let started = tokio::time::Instant::now();
    let outcome = against_mock(NODE, TIMEOUT, |mut api| async move {
        for (status, message) in [
            (StatusCode::INTERNAL_SERVER_ERROR, "etcd leader changed"),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "apiserver is shutting down",
            ),
            (StatusCode::TOO_MANY_REQUESTS, "slow down"),
        ] {
            // The failed GET is what is retried.
            api.handle_fault(Method::GET, status_response(status, message))
                .await;
        }
        api.handle_get(&node).await;
        api.handle_patch(remove_at(0, GATE)).await;
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
    let err = against_mock(NODE, Duration::from_secs(30), |mut api| async move {
        // Answer every request with 503 until the client gives up and drops its end; every
        // retry is the same GET.
        api.handle_faults_until_dropped(Method::GET, || {
            status_response(StatusCode::SERVICE_UNAVAILABLE, "overloaded")
        })
        .await;
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
async fn missing_node_and_rejected_token_fail_at_once_and_say_what_to_fix() {
    let not_found = "nodes \"aks-user-0\" not found";
    type IsKind = fn(&UntaintError) -> bool;
    let cases: [(StatusCode, &str, IsKind, &str); 2] = [
        (
            StatusCode::NOT_FOUND,
            not_found,
            |e| matches!(e, UntaintError::NodeNotFound(_)),
            "spec.nodeName",
        ),
        (
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            |e| matches!(e, UntaintError::Unauthorized(_)),
            "projected token",
        ),
    ];
    for (status, message, is_kind, advice) in cases {
        // One GET, answered with the fault; no retry (a second request would fail the scenario).
        let err = against_mock(NODE, TIMEOUT, |mut api| async move {
            api.handle_fault(Method::GET, status_response(status, message))
                .await;
        })
        .await
        .unwrap_err();
        assert!(is_kind(&err), "{status}: {err:?}");
        assert!(err.to_string().contains(advice), "{status}: {err}");
    }
}

#[tokio::test(start_paused = true)]
async fn forbidden_fails_at_once_and_names_the_rbac_to_check() {
    let node = Node::test(NODE).with_taints([gate()]);
    let err = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_patch_refused(
            remove_at(0, GATE),
            status_response(
                StatusCode::FORBIDDEN,
                "nodes \"aks-user-0\" is forbidden: User cannot patch resource",
            ),
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
    let node = Node::test(NODE).with_taints([gate()]);
    let err = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        let denial = status_response_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Node \"aks-user-0\" is invalid: spec.taints[0].effect: Unsupported value",
            json!({"name": NODE, "kind": "Node", "causes": [
                {"reason": "FieldValueNotSupported", "field": "spec.taints[0].effect"}]}),
        );
        api.handle_patch_refused(remove_at(0, GATE), denial).await;
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
    let node = Node::test(NODE).with_taints([gate()]);
    let again = node.clone();
    let err = against_mock(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        // A `test` failure the stored node does not explain (a server-side quirk): retrying
        // against the same resourceVersion would fail the same way forever.
        api.handle_patch_refused(
            remove_at(0, GATE),
            status_response(StatusCode::UNPROCESSABLE_ENTITY, PATCH_TEST_FAILED),
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
    let node = Node::test(NODE).with_taints([gate()]);
    let started = tokio::time::Instant::now();
    against_mock(NODE, TIMEOUT, |mut api| async move {
        let slow_down = status_response_with(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
            json!({"retryAfterSeconds": 7}),
        );
        api.handle_fault(Method::GET, slow_down).await;
        api.handle_get(&node).await;
        api.handle_patch(remove_at(0, GATE)).await;
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
async fn the_fake_server_applies_a_patch_or_fails_its_test_like_kube_apiserver() {
    // The verifier itself: a gate at index 1 is removed and the version bumps; a `test` of a
    // stale index fails with the bare 422 kube-apiserver sends and changes nothing.
    let node = Node::test(NODE).with_taints([taint("x=y:NoSchedule"), gate()]);
    let kept = vec![taint("x=y:NoSchedule")];
    for (ops, want, want_taints) in [
        (remove_at(1, GATE), Ok("2"), kept),
        (
            remove_at(0, GATE),
            Err(422),
            aapl_test_support::fixtures::taints_of(&node),
        ),
    ] {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut api = ApiServerVerifier::new(handle, NODE, Some(node.clone()));
        let nodes: Api<Node> = Api::all(Client::new(service, "default"));
        let patch = Patch::Json::<()>(serde_json::from_value(ops.clone()).unwrap());
        let params = PatchParams::default();
        let (answer, ()) = tokio::join!(nodes.patch(NODE, &params, &patch), api.handle_patch(ops));
        let got = match answer {
            Ok(patched) => Ok(patched.metadata.resource_version.unwrap()),
            Err(kube::Error::Api(status)) => Err(status.code),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(got.as_deref().map_err(|c| *c), want);
        let stored = api.stored.unwrap();
        assert_eq!(aapl_test_support::fixtures::taints_of(&stored), want_taints);
    }
}

// --- --require-admission-policy: the probe's answers a real server gives only in states a test
// cannot set up on demand (apiserver_e2e proves the policy's refusal and its absence).

/// The API server's denial of the probe by this installation's policy.
const REFUSED_BY_OUR_POLICY: &str = "nodes \"aks-user-0\" is forbidden: ValidatingAdmissionPolicy \
    'apparmor-profile-loader-untaint' with binding 'apparmor-profile-loader-untaint' denied \
    request: apparmor-profile-loader may not change labels or annotations of a node outside \
    apparmor-profile-loader/ (labels) and apparmor-profile-loader/profiles (annotation)";

#[tokio::test(start_paused = true)]
async fn a_probe_the_server_would_accept_stops_untaint_before_any_write() {
    let node = Node::test(NODE).with_taints([gate()]);
    let err = against_mock_requiring_the_policy(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        // Accepted (a dry run: nothing stored). The taint's PATCH must not follow: the mock
        // ends here, and a further request would fail the run with another error.
        api.handle_probe(json_response(
            StatusCode::OK,
            &serde_json::to_value(&node).unwrap(),
        ))
        .await;
    })
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, UntaintError::NotConfined { .. }), "{msg}");
    assert!(
        msg.contains("the admission policy does not confine this loader")
            && msg.contains("the taint stays"),
        "{msg}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_the_server_could_not_answer_is_retried_then_refused_and_the_taint_goes() {
    let node = Node::test(NODE).with_taints([gate()]);
    let outcome = against_mock_requiring_the_policy(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
        api.handle_probe(status_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "apiserver is shutting down",
        ))
        .await;
        api.handle_get(&node).await;
        api.handle_probe(status_response(
            StatusCode::FORBIDDEN,
            REFUSED_BY_OUR_POLICY,
        ))
        .await;
        api.handle_patch(remove_at(0, GATE)).await;
    })
    .await
    .unwrap();
    assert_eq!(
        outcome.api_requests, 5,
        "GET, probe (503), GET, probe, PATCH"
    );
    assert_eq!(outcome.confined_by.as_deref(), Some(REFUSED_BY_OUR_POLICY));
    assert_eq!(
        outcome.removed,
        ["WaitingForAppArmorProfiles=true:NoSchedule"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_refused_by_rbac_or_another_policy_proves_nothing() {
    for message in [
        "nodes \"aks-user-0\" is forbidden: User \"system:serviceaccount:kube-system:\
         apparmor-profile-loader\" cannot patch resource \"nodes\"",
        "nodes \"aks-user-0\" is forbidden: ValidatingAdmissionPolicy 'no-new-labels' with \
         binding 'no-new-labels' denied request: labels are managed by the platform team",
    ] {
        let node = Node::test(NODE).with_taints([gate()]);
        let err = against_mock_requiring_the_policy(NODE, TIMEOUT, |mut api| async move {
            api.handle_get(&node).await;
            api.handle_probe(status_response(StatusCode::FORBIDDEN, message))
                .await;
        })
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, UntaintError::Forbidden { .. }) && msg.contains(message),
            "{msg}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn with_nothing_to_write_no_probe_is_sent() {
    let node = Node::test(NODE).with_taints([taint("example.com/keep=1:NoSchedule")]);
    let outcome = against_mock_requiring_the_policy(NODE, TIMEOUT, |mut api| async move {
        api.handle_get(&node).await;
    })
    .await
    .unwrap();
    assert_eq!(outcome.api_requests, 1);
    assert_eq!(outcome.confined_by, None);
}
