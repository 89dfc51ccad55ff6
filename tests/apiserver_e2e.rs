//! `untaint`, RBAC and the admission policy against a real Kubernetes API: the kube-apiserver of
//! the release pinned in tests/apiserver/build.sh with an embedded etcd, authorization Node,RBAC,
//! the default admission chain (ValidatingAdmissionPolicy on) + NodeRestriction, and pod-bound
//! service-account tokens carrying the node-name claim. No kubelet runs: Nodes and Pods are plain
//! API objects, which is all `untaint`, RBAC and the policy look at.
//!
//! One server is shared by every test in this file (startup costs seconds); each test creates its
//! own nodes and pods, named after the test. The manifests of manifests/ are applied once, as
//! `kubectl apply -k manifests/` would, before any test runs (test 1 asserts how that went).
//! The tests of section 8 install the manifests into another namespace, each on a server of its
//! own.
//!
//! Prerequisite: `tests/apiserver/build.sh` (builds the harness once per machine). Without it the
//! tests print how to build it and pass, unless env `CI` is set: then they fail.
//!
//! The helpers (the shared server, objects, nodes, tokens, running the loader) are in
//! test-support/src/apiserver/; nodes and taints come from the fixtures shared with tests/cli/untaint_mock.rs.

use std::time::{Duration, Instant};

use aapl_test_support::apiserver::cluster::{
    Identity, api_error, create_loader_pod, create_node, get_node, pod_token, rv,
};
use aapl_test_support::apiserver::loader::{proxied_client, run_untaint, run_untaint_with};
use aapl_test_support::apiserver::objects::{Overlay, json_patch, render};
use aapl_test_support::apiserver::shared::{
    apply_all, block_on, env, install_in_namespace, install_overlay, run_local, server_of_its_own,
    until_allowed, until_refused, wait_until_confined,
};
use aapl_test_support::apiserver::{Harness, NS, POLICY, SA, SETTLE, client, poll, repo_root};
use aapl_test_support::fixtures::{
    NodeFixture, autoscaler_gate, gate, gate_taints, is_gate, taint, taints_of,
};
use apparmor_profile_loader::condition::{CONDITION_TYPE, LoadedCondition};
use apparmor_profile_loader::exit_code;
use apparmor_profile_loader::node_update::{self, UntaintError};
use apparmor_profile_loader::taint::GATE_TAINT;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Taint as ApiTaint};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const GATE_KEY: &str = "WaitingForAppArmorProfiles";
/// `untaint`'s exit code for a Kubernetes API error.
const KUBERNETES_API: i32 = exit_code::KUBERNETES_API as i32;

// ---------------------------------------------------------------------------------------------
// 1. manifests

#[test]
fn manifests_apply_strictly_and_the_policy_type_checks_clean() {
    let Some(env) = env("manifests_apply_strictly_and_the_policy_type_checks_clean") else {
        return;
    };
    for (what, r) in env.applied.iter().chain(&env.raw) {
        eprintln!(
            "applied {what}: {}",
            if r.is_ok() { "ok" } else { "FAILED" }
        );
    }
    let failed: Vec<_> = env
        .applied
        .iter()
        .chain(&env.raw)
        .filter_map(|(what, r)| r.as_ref().err().map(|e| format!("{what}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "server-side apply (fieldValidation=Strict) rejected:\n{}",
        failed.join("\n")
    );
    let kinds: Vec<&str> = env.applied.iter().map(|(w, _)| w.as_str()).collect();
    // (kind, name); namespaced ones must land in kube-system. kustomize's built-in schema does
    // not know ValidatingAdmissionPolicy[Binding] as cluster-scoped, so its namespace
    // transformer stamps them with kube-system too; the API server drops that (checked below).
    for (kind, name, namespaced) in [
        ("ServiceAccount", "apparmor-profile-loader", true),
        ("ClusterRole", "apparmor-profile-loader", false),
        ("ClusterRoleBinding", "apparmor-profile-loader", false),
        ("DaemonSet", "apparmor-profile-loader", true),
        // kustomize names it after its content (apparmor-profiles-<hash>).
        ("ConfigMap", "apparmor-profiles-", true),
        ("ConfigMap", "apparmor-profile-loader-config", true),
        ("ValidatingAdmissionPolicy", POLICY, false),
        ("ValidatingAdmissionPolicyBinding", POLICY, false),
    ] {
        let found = kinds.iter().any(|k| {
            let parts: Vec<&str> = k.split('/').collect();
            parts.first() == Some(&kind)
                && parts.last().is_some_and(|last| {
                    *last == name || (name.ends_with('-') && last.starts_with(name))
                })
                && (!namespaced || parts.get(1) == Some(&NS))
        });
        assert!(
            found,
            "kustomize build of manifests/ has no {kind} {name}{}: {kinds:?}",
            if namespaced { " in kube-system" } else { "" }
        );
    }
    for (what, ns) in &env.raw_namespaces {
        assert!(
            ns.is_some(),
            "{what}: namespaced object without an explicit metadata.namespace"
        );
    }

    block_on(async {
        let admin = client(&env.harness.kubeconfig).await;
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(admin);
        let policy = poll(
            "ValidatingAdmissionPolicy status.observedGeneration",
            SETTLE,
            || async {
                let p = policies.get(POLICY).await.map_err(|e| e.to_string())?;
                let observed = p.status.as_ref().and_then(|s| s.observed_generation);
                if observed.is_some() && observed == p.metadata.generation {
                    Ok(p)
                } else {
                    Err(format!(
                        "generation {:?}, status {:?}",
                        p.metadata.generation, p.status
                    ))
                }
            },
        )
        .await;
        assert_eq!(
            policy.metadata.namespace, None,
            "the live policy is cluster-scoped"
        );
        let status = policy.status.expect("status");
        eprintln!("policy status: {status:?}");
        let type_checking = status
            .type_checking
            .expect("status.typeChecking is filled by the type checker");
        assert!(
            type_checking
                .expression_warnings
                .unwrap_or_default()
                .is_empty(),
            "the policy's CEL expressions have type warnings: {:?}",
            status.conditions
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 2. untaint removes the gate taints and nothing else

#[test]
fn untaint_removes_only_the_gate_taint_with_a_pod_bound_token() {
    let Some(env) = env("untaint_removes_only_the_gate_taint_with_a_pod_bound_token") else {
        return;
    };
    block_on(async {
        let admin = client(&env.harness.kubeconfig).await;
        let cases = [
            (
                "t2-plain",
                vec![
                    taint("example.com/dedicated=gpu:NoSchedule"),
                    gate(),
                    taint("example.com/maintenance:NoExecute"),
                    taint("example.com/soft=yes:PreferNoSchedule"),
                ],
            ),
            (
                "t2-autoscaler",
                vec![
                    autoscaler_gate(),
                    taint("example.com/dedicated=batch:NoSchedule"),
                ],
            ),
            (
                "t2-both",
                vec![
                    gate(),
                    taint("example.com/x=1:NoSchedule"),
                    autoscaler_gate(),
                    // Same key, another value or effect: a near miss, which gates the node
                    // just the same, so it goes too (and the admission policy allows it).
                    taint(&format!("{GATE_KEY}=false:PreferNoSchedule")),
                    taint(&format!("{GATE_KEY}:NoExecute")),
                ],
            ),
        ];
        for (name, taints) in cases {
            let node = Node::test(name)
                .with_taints(taints)
                .with_labels(&[
                    ("kubernetes.io/hostname", name),
                    ("kubernetes.azure.com/agentpool", "user1"),
                    ("example.com/tier", "gold"),
                ])
                .with_annotations(&[
                    ("example.com/note", "keep me"),
                    ("node.alpha.kubernetes.io/ttl", "0"),
                ]);
            create_node(&admin, node).await;
            let before = get_node(&admin, name).await;
            let id = Identity::new(&env.harness, &admin, name).await;

            let run = run_untaint(&id.kubeconfig, name);
            eprintln!(
                "untaint {name}: api_requests={} (expect 2: one GET, one PATCH)",
                run.field("api_requests")
            );
            assert_eq!(run.code, Some(0), "{name}: untaint failed:\n{}", run.stderr);

            let after = get_node(&admin, name).await;
            let want: Vec<ApiTaint> = taints_of(&before)
                .into_iter()
                .filter(|t| !is_gate(t))
                .collect();
            assert!(
                taints_of(&before).iter().any(is_gate),
                "{name}: test setup has no gate taint"
            );
            assert_eq!(
                taints_of(&after),
                want,
                "{name}: gate taints must be gone and every other taint kept, in order"
            );
            assert_eq!(
                after.metadata.labels, before.metadata.labels,
                "{name}: labels"
            );
            assert_eq!(
                after.metadata.annotations, before.metadata.annotations,
                "{name}: annotations"
            );
            let (b, a) = (before.spec.clone().unwrap(), after.spec.clone().unwrap());
            assert_eq!(
                (a.provider_id, a.unschedulable, a.pod_cidr),
                (b.provider_id, b.unschedulable, b.pod_cidr),
                "{name}: the rest of the spec"
            );
            let removed = run.field("removed").to_string();
            assert!(
                removed.contains("WaitingForAppArmorProfiles"),
                "{name}: final log line names the removed taint: {}",
                run.last_json()
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 3. idempotent

#[test]
fn untaint_again_is_a_single_get_and_no_write() {
    let Some(env) = env("untaint_again_is_a_single_get_and_no_write") else {
        return;
    };
    block_on(async {
        let admin = client(&env.harness.kubeconfig).await;
        let name = "t3-again";
        let node = Node::test(name)
            .with_taints([gate(), taint("example.com/keep=1:NoSchedule")])
            .with_labels(&[("example.com/tier", "silver")]);
        create_node(&admin, node).await;
        let id = Identity::new(&env.harness, &admin, name).await;
        let first = run_untaint(&id.kubeconfig, name);
        assert_eq!(first.code, Some(0), "first run:\n{}", first.stderr);
        let before = get_node(&admin, name).await;
        assert!(!taints_of(&before).iter().any(is_gate));

        let second = run_untaint(&id.kubeconfig, name);
        assert_eq!(second.code, Some(0), "second run:\n{}", second.stderr);
        let after = get_node(&admin, name).await;
        assert_eq!(rv(&after), rv(&before), "the second run must not write");
        assert_eq!(second.field("api_requests"), json!(1), "{}", second.stderr);
        let message = second.field("message").to_string();
        assert!(
            message.contains("no gate taint") && message.contains("nothing to do"),
            "the final line says the taint is absent: {message}"
        );
    });
}

/// The node learns what it enforces in the same write that lifts its gate: one label per profile
/// under the prefix, the annotation, allowed by the admission policy on its own node only; other
/// labels stay; a re-run writes nothing; a profile that left loses its label.
#[test]
fn untaint_labels_its_own_node_with_what_load_reported() {
    let Some(env) = env("untaint_labels_its_own_node_with_what_load_reported") else {
        return;
    };
    block_on(async {
        let admin = client(&env.harness.kubeconfig).await;
        let name = "t3-labels";
        let node = Node::test(name)
            .with_taints([gate()])
            .with_labels(&[("example.com/tier", "silver")]);
        create_node(&admin, node).await;
        let id = Identity::new(&env.harness, &admin, name).await;
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("loaded-profiles.json");
        let write_report = |profiles: serde_json::Value| {
            std::fs::write(
                &report,
                json!({"loader": "test", "profiles": profiles, "retired": ["k8s-old"]}).to_string(),
            )
            .unwrap();
        };
        write_report(
            json!({"k8s-nginx": "sha256:0123456789abcdef", "k8s-deny-write": "sha256:fedcba9876543210"}),
        );
        let args = ["--node-report", report.to_str().unwrap()];
        let first = run_untaint_with(&id.kubeconfig, name, &args);
        assert_eq!(first.code, Some(0), "first run:\n{}", first.stderr);
        let after = get_node(&admin, name).await;
        assert!(!taints_of(&after).iter().any(is_gate));
        let labels = after.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["apparmor-profile-loader/k8s-nginx"], "0123456789ab");
        assert_eq!(
            labels["apparmor-profile-loader/k8s-deny-write"],
            "fedcba987654"
        );
        assert_eq!(labels["example.com/tier"], "silver");
        let annotation: serde_json::Value = serde_json::from_str(
            &after.metadata.annotations.clone().unwrap_or_default()["apparmor-profile-loader/profiles"],
        )
        .unwrap();
        assert_eq!(annotation["retired"], json!(["k8s-old"]));
        assert_eq!(first.field("api_requests"), json!(2), "one GET, one PATCH");

        let again = run_untaint_with(&id.kubeconfig, name, &args);
        assert_eq!(again.code, Some(0), "second run:\n{}", again.stderr);
        assert_eq!(
            rv(&get_node(&admin, name).await),
            rv(&after),
            "nothing to write"
        );

        write_report(json!({"k8s-nginx": "sha256:1111111111111111"}));
        let changed = run_untaint_with(&id.kubeconfig, name, &args);
        assert_eq!(changed.code, Some(0), "third run:\n{}", changed.stderr);
        let labels = get_node(&admin, name)
            .await
            .metadata
            .labels
            .unwrap_or_default();
        assert_eq!(labels["apparmor-profile-loader/k8s-nginx"], "111111111111");
        assert!(!labels.contains_key("apparmor-profile-loader/k8s-deny-write"));
        assert_eq!(labels["example.com/tier"], "silver");
    });
}

/// The annotation budget against the API server's own limit: a report whose annotation takes
/// exactly `ANNOTATION_BUDGET` bytes (counted with the longest prefix) is written by `untaint` on a
/// node that already carries an AKS node's annotations, while the server refuses a node whose
/// annotations together exceed 256 KiB: the limit `validate`/`copy`/`load` keep sets under is real.
#[test]
fn a_report_at_the_annotation_budget_is_written_and_the_servers_limit_is_real() {
    use apparmor_profile_loader::node_labels::{ANNOTATION_BUDGET, NodeReport};
    let Some(env) =
        env("a_report_at_the_annotation_budget_is_written_and_the_servers_limit_is_real")
    else {
        return;
    };
    block_on(async {
        let admin = client(&env.harness.kubeconfig).await;
        let name = "t3-budget";
        let mut node = Node::test(name).with_taints([gate()]);
        node.metadata.annotations = Some(
            [
                ("node.alpha.kubernetes.io/ttl", "0".to_string()),
                (
                    "volumes.kubernetes.io/controller-managed-attach-detach",
                    "true".into(),
                ),
                (
                    "csi.volume.kubernetes.io/nodeid",
                    json!({"disk.csi.azure.com": name, "file.csi.azure.com": name}).to_string(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        );
        create_node(&admin, node).await;
        let id = Identity::new(&env.harness, &admin, name).await;

        // Grow a report until its annotation is exactly the budget.
        let entry = |i: usize, len: usize| {
            let stem = format!("/opt/app/{i:05}/");
            (
                format!("{stem}{}", "b".repeat(len - stem.len())),
                format!("sha256:{}", "a".repeat(64)),
            )
        };
        let report = |n: usize, last: usize| NodeReport {
            loader: "test".into(),
            profiles: (0..n)
                .map(|i| entry(i, if i + 1 == n { last } else { 200 }))
                .collect(),
            ..Default::default()
        };
        let mut n = 1;
        while report(n + 1, 100).annotation_bytes() <= ANNOTATION_BUDGET {
            n += 1;
        }
        let exact = report(
            n,
            100 + ANNOTATION_BUDGET - report(n, 100).annotation_bytes(),
        );
        assert_eq!(exact.annotation_bytes(), ANNOTATION_BUDGET);
        exact.fits().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loaded-profiles.json");
        std::fs::write(&path, serde_json::to_vec(&exact).unwrap()).unwrap();
        let run = run_untaint_with(
            &id.kubeconfig,
            name,
            &["--node-report", path.to_str().unwrap()],
        );
        assert_eq!(run.code, Some(0), "untaint at the budget:\n{}", run.stderr);
        let after = get_node(&admin, name).await;
        assert!(!taints_of(&after).iter().any(is_gate));
        let written = &after.metadata.annotations.clone().unwrap_or_default()["apparmor-profile-loader/profiles"];
        let written: NodeReport = serde_json::from_str(written).unwrap();
        assert_eq!(written.profiles, exact.profiles);

        // One annotation more than the server allows all of them together: refused.
        let nodes: Api<Node> = Api::all(admin.clone());
        let too_big =
            json!({"metadata": {"annotations": {"example.com/big": "x".repeat(256 * 1024)}}});
        let err = nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&too_big))
            .await
            .expect_err("the API server limits a node's annotations to 256 KiB together");
        assert!(
            format!("{err:?}").contains("262144"),
            "the server names its limit: {err:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 4. concurrent changes to other taints are kept
//
// The binary is a black box with no hook between its GET and its PATCH, so this test drives the
// library (`node_update::run`) with a client whose transport is a tower-test mock serviced by the
// test: each request is forwarded to the real API server (with the pod-bound token), and right
// after the first GET's response arrives, before the library sees it, the admin client changes
// the node's taints. The race is thereby forced, deterministically, on every run.

#[test]
fn concurrent_taint_changes_between_get_and_patch_are_not_lost() {
    let Some(env) = env("concurrent_taint_changes_between_get_and_patch_are_not_lost") else {
        return;
    };
    run_local(async {
        let admin = client(&env.harness.kubeconfig).await;
        let name = "t4-race";
        let node = Node::test(name).with_taints([
            taint("example.com/a=1:NoSchedule"),
            gate(),
            taint("example.com/b=old:PreferNoSchedule"),
        ]);
        create_node(&admin, node).await;
        let id = Identity::new(&env.harness, &admin, name).await;

        // Between the library's GET and its PATCH, another client (admin) inserts a taint at
        // the front (shifting the gate's index) and changes another taint's value.
        let other = admin.clone();
        let interfere = move || async move {
            let nodes: Api<Node> = Api::all(other);
            let node = nodes.get(name).await.expect("get");
            let b = taints_of(&node)
                .iter()
                .position(|t| t.key == "example.com/b")
                .expect("taint b");
            let patch: Patch<()> = json_patch(json!([
                {"op": "add", "path": "/spec/taints/0",
                 "value": {"key": "example.com/concurrent", "value": "added", "effect": "NoSchedule"}},
                {"op": "replace", "path": format!("/spec/taints/{}/value", b + 1), "value": "new"},
            ]));
            nodes
                .patch(name, &PatchParams::default(), &patch)
                .await
                .expect("concurrent admin patch");
        };
        let (client, log) = proxied_client(id.client.clone(), interfere);
        let started = Instant::now();
        let result = node_update::run(client, name, &gate_taints(), Duration::from_secs(60)).await;
        let exchanges = log.lock().unwrap().clone();
        eprintln!(
            "node_update::run with a concurrent writer: {:.1?}, {result:?}, requests {exchanges:#?}",
            started.elapsed()
        );
        let outcome = result.unwrap_or_else(|e| {
            panic!(
                "node_update::run must re-read the node when its JSON Patch test fails (422) and then \
                 succeed; it failed: {e}\nrequests: {exchanges:#?}"
            )
        });

        let after = get_node(&admin, name).await;
        let keys: Vec<(String, String)> = taints_of(&after)
            .iter()
            .map(|t| (t.key.clone(), t.value.clone().unwrap_or_default()))
            .collect();
        assert!(
            !taints_of(&after).iter().any(is_gate),
            "gate taint removed: {keys:?}"
        );
        for (k, v) in [
            ("example.com/concurrent", "added"),
            ("example.com/a", "1"),
            ("example.com/b", "new"),
        ] {
            assert!(
                keys.contains(&(k.to_string(), v.to_string())),
                "{k}={v} (written concurrently or before) must survive: {keys:?}"
            );
        }
        // The optimistic-concurrency path really ran: the first PATCH's test op failed (422)
        // and the library re-read the node.
        let shape: Vec<(String, u16)> = exchanges
            .iter()
            .map(|(m, _, s, _)| (m.clone(), *s))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("GET".into(), 200),
                ("PATCH".into(), 422),
                ("GET".into(), 200),
                ("PATCH".into(), 200)
            ],
            "GET, PATCH (test failed), GET, PATCH"
        );
        assert_eq!(outcome.api_requests, 4);
        assert_eq!(outcome.removed, vec![GATE_TAINT.to_string()]);
    });
}

// ---------------------------------------------------------------------------------------------
// 5. least privilege

#[test]
fn the_pod_bound_token_can_do_nothing_but_remove_its_own_gate_taint() {
    let Some(env) = env("the_pod_bound_token_can_do_nothing_but_remove_its_own_gate_taint") else {
        return;
    };
    block_on(async {
        let admin = client(&env.harness.kubeconfig).await;
        let own = "t5-own";
        let other = "t5-other";
        let node = Node::test(own)
            .with_taints([gate(), taint("example.com/keep=1:NoSchedule")])
            .with_labels(&[("example.com/tier", "gold")])
            .with_annotations(&[("example.com/note", "n")]);
        create_node(&admin, node).await;
        create_node(&admin, Node::test(other).with_taints([gate()])).await;
        let own_before = get_node(&admin, own).await;
        let other_before = get_node(&admin, other).await;
        let id = Identity::new(&env.harness, &admin, own).await;
        let nodes: Api<Node> = Api::all(id.client.clone());

        // Allowed by RBAC: get.
        nodes.get(own).await.expect("get own node");
        nodes
            .get(other)
            .await
            .expect("get another node (RBAC allows get)");

        let idx = |n: &Node, key: &str| {
            taints_of(n)
                .iter()
                .position(|t| t.key == key)
                .expect("taint")
        };
        let pp = PatchParams::default();
        let gate_at = idx(&own_before, GATE_KEY);
        let remove_gate_and = |extra: Value| -> Patch<Value> {
            json_patch(json!([
                {"op": "test", "path": format!("/spec/taints/{gate_at}"), "value": gate()},
                {"op": "remove", "path": format!("/spec/taints/{gate_at}")},
                extra,
            ]))
        };
        let policy_denials: Vec<(&str, &str, Patch<Value>, &str)> = vec![
            (
                "remove the gate taint of another node",
                other,
                json_patch(json!([
                    {"op": "test", "path": format!("/spec/taints/{}", idx(&other_before, GATE_KEY)), "value": gate()},
                    {"op": "remove", "path": format!("/spec/taints/{}", idx(&other_before, GATE_KEY))},
                ])),
                "may not modify node t5-other",
            ),
            (
                "remove another taint of its own node",
                own,
                json_patch(json!([
                    {"op": "remove", "path": format!("/spec/taints/{}", idx(&own_before, "example.com/keep"))},
                ])),
                "may only remove the WaitingForAppArmorProfiles gate",
            ),
            (
                "add a taint to its own node",
                own,
                json_patch(json!([
                    {"op": "add", "path": "/spec/taints/-",
                     "value": {"key": "example.com/new", "value": "x", "effect": "NoSchedule"}},
                ])),
                "may only remove the WaitingForAppArmorProfiles gate",
            ),
            (
                "replace the gate taint by another",
                own,
                json_patch(json!([
                    {"op": "replace", "path": format!("/spec/taints/{}", idx(&own_before, GATE_KEY)),
                     "value": {"key": "example.com/new", "value": "x", "effect": "NoSchedule"}},
                ])),
                "may only remove the WaitingForAppArmorProfiles gate",
            ),
            (
                "change a label of its own node",
                own,
                Patch::Merge(json!({"metadata": {"labels": {"example.com/tier": "platinum"}}})),
                "may not change labels or annotations of a node outside",
            ),
            (
                "change an annotation of its own node",
                own,
                Patch::Merge(json!({"metadata": {"annotations": {"example.com/note": "changed"}}})),
                "may not change labels or annotations of a node outside",
            ),
            (
                "remove its gate taint and add a label in one patch",
                own,
                remove_gate_and(
                    json!({"op": "add", "path": "/metadata/labels/example.com~1extra", "value": "1"}),
                ),
                "may not change labels or annotations of a node outside",
            ),
            (
                "remove its gate taint and change an annotation in one patch",
                own,
                remove_gate_and(
                    json!({"op": "replace", "path": "/metadata/annotations/example.com~1note", "value": "changed"}),
                ),
                "may not change labels or annotations of a node outside",
            ),
            (
                "label another node under its prefix",
                other,
                json_patch(json!([
                    {"op": "add", "path": "/metadata/labels", "value": {"apparmor-profile-loader/k8s-x": "0123456789ab"}},
                ])),
                "may not modify node t5-other",
            ),
            (
                "label its own node under a look-alike prefix",
                own,
                json_patch(json!([
                    {"op": "add", "path": "/metadata/labels/apparmor-profile-loader-evil~1x", "value": "1"},
                ])),
                "may not change labels or annotations of a node outside",
            ),
            (
                "remove a label outside its prefix",
                own,
                json_patch(json!([
                    {"op": "remove", "path": "/metadata/labels/example.com~1tier"},
                ])),
                "may not change labels or annotations of a node outside",
            ),
            (
                "set another annotation under its prefix",
                own,
                json_patch(json!([
                    {"op": "add", "path": "/metadata/annotations/apparmor-profile-loader~1other", "value": "x"},
                ])),
                "may not change labels or annotations of a node outside",
            ),
            (
                "remove its gate taint and cordon the node in one patch",
                own,
                remove_gate_and(json!({"op": "add", "path": "/spec/unschedulable", "value": true})),
                "may not change a node's spec",
            ),
        ];
        for (what, node, patch, want) in &policy_denials {
            assert_denied_by_policy(what, nodes.patch(node, &pp, patch).await, want);
        }

        // Outside get/patch nodes: RBAC says no (403 Forbidden, before admission).
        let secrets_all: Api<Secret> = Api::all(id.client.clone());
        let secrets_ns: Api<Secret> = Api::namespaced(id.client.clone(), NS);
        let pods: Api<Pod> = Api::namespaced(id.client.clone(), NS);
        let new_node: Node =
            serde_json::from_value(json!({"metadata": {"name": "t5-new"}})).unwrap();
        let status_pp = PatchParams::default();
        let status_patch = Patch::Merge(json!({"status": {"phase": "Running"}}));
        let rbac: Vec<(&str, Result<(), kube::Error>, &str)> = vec![
            (
                "list secrets",
                secrets_all.list(&ListParams::default()).await.map(|_| ()),
                "cannot list resource \"secrets\"",
            ),
            (
                "get a secret in kube-system",
                secrets_ns.get("anything").await.map(|_| ()),
                "cannot get resource \"secrets\"",
            ),
            (
                "delete its own node",
                nodes
                    .delete(own, &DeleteParams::default())
                    .await
                    .map(|_| ()),
                "cannot delete resource \"nodes\"",
            ),
            (
                "list nodes",
                nodes.list(&ListParams::default()).await.map(|_| ()),
                "cannot list resource \"nodes\"",
            ),
            (
                "list nodes by field selector",
                nodes
                    .list(&ListParams::default().fields(&format!("metadata.name={own}")))
                    .await
                    .map(|_| ()),
                "cannot list resource \"nodes\"",
            ),
            (
                "create a node",
                nodes
                    .create(&PostParams::default(), &new_node)
                    .await
                    .map(|_| ()),
                "cannot create resource \"nodes\"",
            ),
            (
                "update (PUT) its own node",
                nodes
                    .replace(own, &PostParams::default(), &own_before)
                    .await
                    .map(|_| ()),
                "cannot update resource \"nodes\"",
            ),
            (
                "patch its own node's status",
                nodes
                    .patch_status(own, &status_pp, &status_patch)
                    .await
                    .map(|_| ()),
                "cannot patch resource \"nodes/status\"",
            ),
            (
                "list pods in kube-system",
                pods.list(&ListParams::default()).await.map(|_| ()),
                "cannot list resource \"pods\"",
            ),
        ];
        for (what, result, want) in rbac {
            let (code, message) = api_error(what, result);
            eprintln!("{what}: {code} {message}");
            assert_eq!(code, 403, "{what}: {message}");
            assert!(
                message.contains(want)
                    && message
                        .contains("system:serviceaccount:kube-system:apparmor-profile-loader")
                    && !message.contains("ValidatingAdmissionPolicy"),
                "{what}: forbidden by RBAC with {want:?}; got: {message}"
            );
        }

        // Nothing changed on either node.
        assert_eq!(rv(&get_node(&admin, own).await), rv(&own_before));
        assert_eq!(rv(&get_node(&admin, other).await), rv(&other_before));
    });
}

// ---------------------------------------------------------------------------------------------
// 6. another node's gate stays

#[test]
fn a_token_from_node_a_cannot_untaint_node_b() {
    let Some(env) = env("a_token_from_node_a_cannot_untaint_node_b") else {
        return;
    };
    block_on(async {
        let admin = client(&env.harness.kubeconfig).await;
        let (a, b) = ("t6-a", "t6-b");
        create_node(&admin, Node::test(a).with_taints([gate()])).await;
        create_node(
            &admin,
            Node::test(b).with_taints([gate(), autoscaler_gate()]),
        )
        .await;
        let a_before = get_node(&admin, a).await;
        let b_before = get_node(&admin, b).await;
        let id = Identity::new(&env.harness, &admin, a).await;

        let run = run_untaint(&id.kubeconfig, b);
        assert_eq!(
            run.code,
            Some(KUBERNETES_API),
            "exit 6 (Kubernetes API error):\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("forbidden (403)")
                && run.stderr.contains(POLICY)
                && run
                    .stderr
                    .contains(&format!("running on node {a} may not modify node {b}")),
            "the message names the policy and both nodes:\n{}",
            run.stderr
        );
        let b_after = get_node(&admin, b).await;
        assert_eq!(rv(&b_after), rv(&b_before), "node B unchanged");
        assert_eq!(taints_of(&b_after).iter().filter(|t| is_gate(t)).count(), 2);
        assert_eq!(
            rv(&get_node(&admin, a).await),
            rv(&a_before),
            "node A untouched"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 7. 401 and 404: clear, not retried

#[test]
fn bad_tokens_and_missing_nodes_fail_at_once_with_a_clear_message() {
    let Some(env) = env("bad_tokens_and_missing_nodes_fail_at_once_with_a_clear_message") else {
        return;
    };
    run_local(async {
        let h = &env.harness;
        let admin = client(&h.kubeconfig).await;
        let node = "t7-node";
        create_node(&admin, Node::test(node).with_taints([gate()])).await;
        let node_before = get_node(&admin, node).await;
        let valid = Identity::new(h, &admin, node).await;

        // A token whose only fault is its age: the real token, exp an hour ago, re-signed with
        // the server's service-account key. Control: the same re-signing with exp in an hour
        // must authenticate, so the 401 below is the expiry and nothing else.
        let resign = |offset: &str| {
            h.tool(
                &[
                    "expire-token",
                    "--dir",
                    &h.dir.to_string_lossy(),
                    "--offset",
                    offset,
                ],
                &valid.token,
            )
            .expect("expire-token")
            .trim()
            .to_string()
        };
        let expired = resign("-1h");
        let control = Identity::with_token(h, valid.pod.clone(), resign("1h")).await;
        Api::<Node>::all(control.client.clone())
            .get(node)
            .await
            .expect("a re-signed token that has not expired authenticates");

        // A token bound to a pod that no longer exists (revoked by deleting the pod); it works
        // while the pod exists.
        let gone_pod = create_loader_pod(&admin, node, "apparmor-loader-t7-deleted").await;
        let revoked = pod_token(&admin, &gone_pod).await;
        let before_delete = Identity::with_token(h, gone_pod.clone(), revoked.clone()).await;
        Api::<Node>::all(before_delete.client.clone())
            .get(node)
            .await
            .expect("the token works while its pod exists");
        Api::<Pod>::namespaced(admin.clone(), NS)
            .delete(
                "apparmor-loader-t7-deleted",
                &DeleteParams::default().grace_period(0),
            )
            .await
            .expect("delete pod");
        poll("the bound pod is gone", SETTLE, || async {
            match Api::<Pod>::namespaced(admin.clone(), NS)
                .get_opt("apparmor-loader-t7-deleted")
                .await
            {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        // kube-apiserver caches successful token authentications (10 s) and looks pods up
        // through an informer: wait until the revocation is in effect, so the loader below
        // meets the revoked token deterministically (this wait is most of this test's time).
        let nodes_with_revoked: Api<Node> = Api::all(before_delete.client.clone());
        poll("the revoked token is rejected", SETTLE, || async {
            match nodes_with_revoked.get(node).await {
                Err(kube::Error::Api(s)) if s.code == 401 => Ok(()),
                other => Err(format!("{:?}", other.map(|n| n.metadata.name))),
            }
        })
        .await;

        let cases: Vec<(&str, String)> = vec![
            ("garbage token", "not-a-token".to_string()),
            ("expired token", expired),
            ("token of a deleted pod", revoked),
        ];
        for (what, token) in cases {
            let id = Identity::with_token(h, valid.pod.clone(), token).await;
            let run = run_untaint(&id.kubeconfig, node);
            eprintln!("{what}: {}", run.stderr.lines().last().unwrap_or_default());
            assert_eq!(
                run.code,
                Some(KUBERNETES_API),
                "{what}: exit 6:\n{}",
                run.stderr
            );
            assert!(
                run.stderr.contains("(401)") && run.stderr.contains("token"),
                "{what}: the message says the credentials were rejected and to check the token:\n{}",
                run.stderr
            );
            assert!(
                !run.stderr.contains("transient error")
                    && !run.stderr.contains("reading the node again"),
                "{what}: a 401 is not retried:\n{}",
                run.stderr
            );
            // Same through the library: exactly one request, then the error.
            let (client, log) = proxied_client(id.client.clone(), || async {});
            let err = node_update::run(client, node, &gate_taints(), Duration::from_secs(60))
                .await
                .expect_err(what);
            assert!(
                matches!(err, UntaintError::Unauthorized(_)),
                "{what}: {err}"
            );
            assert_eq!(
                log.lock().unwrap().len(),
                1,
                "{what}: one request, no retry"
            );
        }

        // A node that does not exist: 404, said clearly, not retried.
        let missing = "t7-no-such-node";
        let run = run_untaint(&valid.kubeconfig, missing);
        assert_eq!(
            run.code,
            Some(KUBERNETES_API),
            "404: exit 6:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("(404)")
                && run.stderr.contains(missing)
                && run.stderr.contains("NODE_NAME"),
            "404: the message names the node and says NODE_NAME must be the pod's node:\n{}",
            run.stderr
        );
        let (client, log) = proxied_client(valid.client.clone(), || async {});
        let err = node_update::run(client, missing, &gate_taints(), Duration::from_secs(60))
            .await
            .expect_err("missing node");
        assert!(matches!(err, UntaintError::NodeNotFound(_)), "{err}");
        assert_eq!(log.lock().unwrap().len(), 1, "404: one request, no retry");

        assert_eq!(
            rv(&get_node(&admin, node).await),
            rv(&node_before),
            "node untouched"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 8. the manifests in another namespace, or renamed (an operator's overlay with `namespace:`,
//    `namePrefix:`, `nameSuffix:`)
//
// Each test here has a server of its own: the installation's cluster-scoped objects (the
// ClusterRoleBinding, the policy and its binding) have the names of the shared server's and
// would replace them.

/// Where the operator's overlay puts the installation.
const ELSEWHERE: &str = "aapl-elsewhere";

/// Asserts that the admission policy refused `result` (403, the policy named) with a message
/// holding `want`.
fn assert_denied_by_policy<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, kube::Error>,
    want: &str,
) {
    let (code, message) = api_error(what, result);
    eprintln!("{what}: {code} {message}");
    assert!(
        code == 403
            && message.contains(&format!("ValidatingAdmissionPolicy '{POLICY}'"))
            && message.contains(want),
        "{what}: denied by the policy with {want:?}; got {code}: {message}"
    );
}

/// The JSON Patch `untaint` sends to remove the gate taint (`test` + `remove`) from `node`.
fn remove_gate(node: &Node) -> Patch<Value> {
    let at = taints_of(node)
        .iter()
        .position(|t| t.key == GATE_KEY)
        .expect("a gate taint");
    json_patch(json!([
        {"op": "test", "path": format!("/spec/taints/{at}"), "value": gate()},
        {"op": "remove", "path": format!("/spec/taints/{at}")},
    ]))
}

const DRY_RUN: PatchParams = PatchParams {
    dry_run: true,
    force: false,
    field_manager: None,
    field_validation: None,
};

/// Rendered into another namespace, the policy confines the loader there exactly as in
/// kube-system: its own gate taint goes, node B and every other field of its node stay. An
/// earlier installation's ConfigMap and ServiceAccount left in kube-system (with their RBAC)
/// neither steer the policy nor get past it.
#[test]
fn rendered_into_another_namespace_the_policy_still_confines_the_loader() {
    let test = "rendered_into_another_namespace_the_policy_still_confines_the_loader";
    let Some(h) = server_of_its_own(test) else {
        return;
    };
    block_on(async {
        let admin = client(&h.kubeconfig).await;
        // What an earlier install in kube-system left behind.
        let repo = repo_root();
        let mut earlier = render(&h, &repo.join("manifests/serviceaccount.yaml"));
        earlier.extend(render(&h, &repo.join("manifests/config.yaml")));
        earlier.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "apparmor-profile-loader-earlier"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "apparmor-profile-loader"},
            "subjects": [{"kind": "ServiceAccount", "name": "apparmor-profile-loader",
                          "namespace": NS}],
        }));
        for (what, r) in apply_all(&admin, &earlier).await {
            r.unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        install_in_namespace(&h, &admin, ELSEWHERE).await;

        let (a, b) = ("t8-a", "t8-b");
        let node_a = Node::test(a)
            .with_taints([gate(), taint("example.com/keep=1:NoSchedule")])
            .with_labels(&[("example.com/tier", "gold")]);
        create_node(&admin, node_a).await;
        create_node(&admin, Node::test(b).with_taints([gate()])).await;
        let a_before = get_node(&admin, a).await;
        let b_before = get_node(&admin, b).await;
        let id = Identity::in_namespace(&h, &admin, ELSEWHERE, a).await;
        // Fails on a policy that does not judge this loader (today's main: it judged
        // kube-system's only, so the change on node B went through).
        wait_until_confined(&id, a, b).await;

        // Node B: untaint from node A's pod is refused by the policy, B unchanged.
        let run = run_untaint(&id.kubeconfig, b);
        assert_eq!(run.code, Some(KUBERNETES_API), "exit 6:\n{}", run.stderr);
        assert!(
            run.stderr.contains(POLICY)
                && run
                    .stderr
                    .contains(&format!("running on node {a} may not modify node {b}")),
            "the message names the policy and both nodes:\n{}",
            run.stderr
        );
        assert_eq!(
            rv(&get_node(&admin, b).await),
            rv(&b_before),
            "node B unchanged"
        );

        // Node A, anything but its gate taint: refused by the policy.
        let nodes: Api<Node> = Api::all(id.client.clone());
        let keep = taints_of(&a_before)
            .iter()
            .position(|t| t.key == "example.com/keep")
            .expect("taint keep");
        let denials: Vec<(&str, Patch<Value>, &str)> = vec![
            (
                "change a label outside its prefix",
                Patch::Merge(json!({"metadata": {"labels": {"example.com/tier": "platinum"}}})),
                "may not change labels or annotations of a node outside",
            ),
            (
                "cordon its node",
                Patch::Merge(json!({"spec": {"unschedulable": true}})),
                "may not change a node's spec",
            ),
            (
                "remove another taint",
                json_patch(json!([{"op": "remove", "path": format!("/spec/taints/{keep}")}])),
                "may only remove the WaitingForAppArmorProfiles gate",
            ),
        ];
        for (what, patch, want) in &denials {
            assert_denied_by_policy(what, nodes.patch(a, &DRY_RUN, patch).await, want);
        }

        // The earlier installation's loader, same name in kube-system, granted by RBAC: refused
        // by the policy, which knows its own loader by its param's namespace.
        let earlier_id = Identity::in_namespace(&h, &admin, NS, a).await;
        wait_until_confined(&earlier_id, a, b).await;
        let run = run_untaint(&earlier_id.kubeconfig, a);
        assert_eq!(run.code, Some(KUBERNETES_API), "exit 6:\n{}", run.stderr);
        assert!(
            run.stderr.contains(POLICY)
                && run.stderr.contains(&format!(
                    "system:serviceaccount:{NS}:apparmor-profile-loader is not the \
                     apparmor-profile-loader of this policy \
                     (system:serviceaccount:{ELSEWHERE}:apparmor-profile-loader"
                )),
            "the message names the policy and both accounts:\n{}",
            run.stderr
        );
        assert_eq!(
            rv(&get_node(&admin, a).await),
            rv(&a_before),
            "node A unchanged"
        );

        // Its own gate taint: removed, nothing else touched.
        let run = run_untaint(&id.kubeconfig, a);
        assert_eq!(
            run.code,
            Some(0),
            "untaint on its own node:\n{}",
            run.stderr
        );
        let a_after = get_node(&admin, a).await;
        let others: Vec<ApiTaint> = taints_of(&a_before)
            .into_iter()
            .filter(|t| !is_gate(t))
            .collect();
        assert_eq!(taints_of(&a_after), others, "only the gate taint is gone");
        assert_eq!(a_after.metadata.labels, a_before.metadata.labels);
    });
}

/// Without its param (the ConfigMap apparmor-profile-loader-config of the loader's namespace)
/// the policy lets nothing through: the loader's untaint is refused and its node stays gated,
/// until the ConfigMap is back. The API server resolves a binding's param before it evaluates
/// the policy's matchConditions, so meanwhile every write to a node is refused, by anyone.
#[test]
fn without_its_param_the_policy_denies_the_loader_and_every_node_write() {
    let test = "without_its_param_the_policy_denies_the_loader_and_every_node_write";
    let Some(h) = server_of_its_own(test) else {
        return;
    };
    block_on(async {
        let admin = client(&h.kubeconfig).await;
        let (a, b) = ("t8-param-a", "t8-param-b");
        let id = installed_elsewhere_with_two_gated_nodes(&h, &admin, a, b).await;
        let a_before = get_node(&admin, a).await;
        let nodes: Api<Node> = Api::all(id.client.clone());
        nodes
            .patch(a, &DRY_RUN, &remove_gate(&a_before))
            .await
            .expect("with its param, the policy lets the loader remove its own gate taint");

        let configs: Api<ConfigMap> = Api::namespaced(admin.clone(), ELSEWHERE);
        let config = configs
            .get("apparmor-profile-loader-config")
            .await
            .expect("the param");
        configs
            .delete("apparmor-profile-loader-config", &DeleteParams::default())
            .await
            .expect("delete the param");
        // A binding the API server cannot configure is answered 422 Invalid (not 403), with
        // this message.
        const NO_PARAM: &str =
            "no params found for policy binding with `Deny` parameterNotFoundAction";
        let remove = remove_gate(&a_before);
        until_refused(
            "the policy misses its param",
            &nodes,
            a,
            &remove,
            422,
            NO_PARAM,
        )
        .await;

        let run = run_untaint(&id.kubeconfig, a);
        assert_eq!(run.code, Some(KUBERNETES_API), "exit 6:\n{}", run.stderr);
        assert!(
            run.stderr.contains(POLICY) && run.stderr.contains(NO_PARAM),
            "the message names the policy and the missing param:\n{}",
            run.stderr
        );
        assert_eq!(
            rv(&get_node(&admin, a).await),
            rv(&a_before),
            "node A stays gated"
        );
        // Meanwhile every node write is refused, by anyone.
        let admin_nodes: Api<Node> = Api::all(admin.clone());
        let change = Patch::Merge(json!({"metadata": {"labels": {"example.com/tier": "gold"}}}));
        let create = PostParams {
            dry_run: true,
            field_manager: None,
        };
        let writes = [
            (
                "an administrator labels a node",
                admin_nodes.patch(b, &DRY_RUN, &change).await.map(|_| ()),
            ),
            (
                "a node registers",
                admin_nodes
                    .create(&create, &Node::test("t8-param-new"))
                    .await
                    .map(|_| ()),
            ),
        ];
        for (what, result) in writes {
            let (code, message) = api_error(what, result);
            assert!(
                code == 422 && message.contains(POLICY) && message.contains(NO_PARAM),
                "{what}: refused for the missing param; got {code}: {message}"
            );
        }

        // The ConfigMap back: the loader's gate lifts.
        recreate(&configs, config).await;
        until_allowed("the policy has its param again", &nodes, a, &remove).await;
        let run = run_untaint(&id.kubeconfig, a);
        assert_eq!(
            run.code,
            Some(0),
            "untaint with the param back:\n{}",
            run.stderr
        );
        assert!(!taints_of(&get_node(&admin, a).await).iter().any(is_gate));
    });
}

/// An overlay that renames the installation (`namePrefix`, `nameSuffix`) as well as moving it:
/// the binding still finds its param, so everyone else still writes nodes, and the policy knows
/// the renamed loader by the name its param gives, so it is confined just the same. Before,
/// the binding named a ConfigMap the rename had left behind and the API server refused every
/// node write in the cluster; with that mended alone, the renamed account would not have
/// matched the policy at all.
#[test]
fn renamed_by_an_overlay_the_policy_finds_its_param_and_confines_the_renamed_loader() {
    let test = "renamed_by_an_overlay_the_policy_finds_its_param_and_confines_the_renamed_loader";
    let Some(h) = server_of_its_own(test) else {
        return;
    };
    let overlay = Overlay {
        name_prefix: "prod-",
        name_suffix: "-blue",
        ..Overlay::in_namespace(ELSEWHERE)
    };
    block_on(async {
        let admin = client(&h.kubeconfig).await;
        install_overlay(&h, &admin, &overlay).await;
        let (a, b) = ("t8-renamed-a", "t8-renamed-b");
        create_node(
            &admin,
            Node::test(a).with_taints([gate(), taint("example.com/keep=1:NoSchedule")]),
        )
        .await;
        create_node(&admin, Node::test(b).with_taints([gate()])).await;
        let a_before = get_node(&admin, a).await;
        let sa = overlay.service_account();
        let id = Identity::of_account(&h, &admin, ELSEWHERE, &sa, a).await;
        wait_until_confined(&id, a, b).await;

        // Everyone else writes nodes as before: the binding has its param.
        let admin_nodes: Api<Node> = Api::all(admin.clone());
        let change = Patch::Merge(json!({"metadata": {"labels": {"example.com/tier": "gold"}}}));
        admin_nodes
            .patch(b, &DRY_RUN, &change)
            .await
            .expect("an administrator labels a node: the renamed binding finds its param");

        // The renamed loader: another node, or anything but its gate taint, refused by the
        // renamed policy; denials name the loader as its param names it.
        let run = run_untaint(&id.kubeconfig, b);
        assert_eq!(run.code, Some(KUBERNETES_API), "exit 6:\n{}", run.stderr);
        assert!(
            run.stderr.contains(&overlay.policy())
                && run
                    .stderr
                    .contains(&format!("running on node {a} may not modify node {b}")),
            "the message names the renamed policy and both nodes:\n{}",
            run.stderr
        );
        let nodes: Api<Node> = Api::all(id.client.clone());
        let cordon = Patch::Merge(json!({"spec": {"unschedulable": true}}));
        let (code, message) = api_error("cordon its node", nodes.patch(a, &DRY_RUN, &cordon).await);
        assert!(
            code == 403
                && message.contains(&format!("ValidatingAdmissionPolicy '{}'", overlay.policy()))
                && message.contains("may not change a node's spec"),
            "cordon its node: denied by the renamed policy; got {code}: {message}"
        );

        // A look-alike beside it, with the installation's default name and the same RBAC: not
        // the loader the param names, refused.
        look_alike_account(
            &admin,
            ELSEWHERE,
            SA,
            &overlay.name("apparmor-profile-loader"),
        )
        .await;
        let other = Identity::of_account(&h, &admin, ELSEWHERE, SA, b).await;
        let (code, message) = api_error(
            "the look-alike removes its node's gate taint",
            Api::<Node>::all(other.client.clone())
                .patch(b, &DRY_RUN, &remove_gate(&get_node(&admin, b).await))
                .await,
        );
        let want = format!(
            "system:serviceaccount:{ELSEWHERE}:{SA} is not the apparmor-profile-loader of this \
             policy (system:serviceaccount:{ELSEWHERE}:{sa}, named by its param ConfigMap \
             {ELSEWHERE}/{})",
            overlay.name("apparmor-profile-loader-config")
        );
        assert!(
            code == 403 && message.contains(&want),
            "the look-alike: denied with {want:?}; got {code}: {message}"
        );

        // Its own gate taint: removed, nothing else touched.
        let run = run_untaint(&id.kubeconfig, a);
        assert_eq!(
            run.code,
            Some(0),
            "untaint on its own node:\n{}",
            run.stderr
        );
        let others: Vec<ApiTaint> = taints_of(&a_before)
            .into_iter()
            .filter(|t| !is_gate(t))
            .collect();
        assert_eq!(taints_of(&get_node(&admin, a).await), others);

        // A second installation beside it, the default one in kube-system: its policy refuses the
        // renamed loader (one installation per cluster; the README says so).
        install_overlay(&h, &admin, &Overlay::in_namespace(NS)).await;
        let gated = "t8-renamed-c";
        create_node(&admin, Node::test(gated).with_taints([gate()])).await;
        let c = Identity::of_account(&h, &admin, ELSEWHERE, &sa, gated).await;
        let nodes: Api<Node> = Api::all(c.client.clone());
        let want = format!(
            "system:serviceaccount:{ELSEWHERE}:{sa} is not the apparmor-profile-loader of this \
             policy (system:serviceaccount:{NS}:{SA}"
        );
        let remove = remove_gate(&get_node(&admin, gated).await);
        until_refused(
            "the second installation's policy refuses the renamed loader",
            &nodes,
            gated,
            &remove,
            403,
            &want,
        )
        .await;
    });
}

/// `untaint --require-admission-policy` (set by manifests/daemonset.yaml) writes nothing until
/// the API server has refused it a dry-run label outside its prefix: with the policy's binding
/// gone, RBAC alone would let it change any node, so it stops, exit 6, the node unchanged and
/// still gated, the message saying what to check. With the binding back, the probe is refused
/// and the taint goes: one GET, the probe, one PATCH. A re-run with nothing to write sends no
/// probe.
#[test]
fn without_its_binding_the_policy_is_proven_absent_and_the_taint_stays() {
    let test = "without_its_binding_the_policy_is_proven_absent_and_the_taint_stays";
    let Some(h) = server_of_its_own(test) else {
        return;
    };
    block_on(async {
        let admin = client(&h.kubeconfig).await;
        let (a, b) = ("t8-probe-a", "t8-probe-b");
        let id = installed_elsewhere_with_two_gated_nodes(&h, &admin, a, b).await;
        let require = ["--require-admission-policy"];

        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(admin.clone());
        let binding = bindings.get(POLICY).await.expect("the binding");
        bindings
            .delete(POLICY, &DeleteParams::default())
            .await
            .expect("delete the binding");
        let nodes: Api<Node> = Api::all(id.client.clone());
        let change = Patch::Merge(json!({"metadata": {"labels": {"probe": "x"}}}));
        until_allowed(
            "without its binding the policy lets the loader change node B",
            &nodes,
            b,
            &change,
        )
        .await;
        let a_before = get_node(&admin, a).await;
        let run = run_untaint_with(&id.kubeconfig, a, &require);
        assert_eq!(run.code, Some(KUBERNETES_API), "exit 6:\n{}", run.stderr);
        assert!(
            run.stderr
                .contains("the admission policy does not confine this loader")
                && run.stderr.contains("the taint stays")
                && run.stderr.contains("its binding exist"),
            "the message says the policy is not in force and what to check:\n{}",
            run.stderr
        );
        assert_eq!(
            rv(&get_node(&admin, a).await),
            rv(&a_before),
            "node A unchanged, still gated"
        );

        // The binding back: the probe is refused, the taint goes.
        recreate(&bindings, binding).await;
        wait_until_confined(&id, a, b).await;
        let run = run_untaint_with(&id.kubeconfig, a, &require);
        assert_eq!(run.code, Some(0), "untaint, confined:\n{}", run.stderr);
        assert!(
            run.stderr.contains("confined by the admission policy"),
            "the summary says the policy was proven in force:\n{}",
            run.stderr
        );
        assert_eq!(run.field("api_requests"), json!(3), "GET, probe, PATCH");
        assert!(!taints_of(&get_node(&admin, a).await).iter().any(is_gate));
        let again = run_untaint_with(&id.kubeconfig, a, &require);
        assert_eq!(again.code, Some(0), "{}", again.stderr);
        assert_eq!(
            again.field("api_requests"),
            json!(1),
            "nothing to write: no probe"
        );
    });
}

/// The manifests installed in [`ELSEWHERE`], gated nodes `a` and `b`, and the loader of node
/// `a`, once the policy confines it.
async fn installed_elsewhere_with_two_gated_nodes(
    h: &Harness,
    admin: &kube::Client,
    a: &str,
    b: &str,
) -> Identity {
    install_in_namespace(h, admin, ELSEWHERE).await;
    create_node(admin, Node::test(a).with_taints([gate()])).await;
    create_node(admin, Node::test(b).with_taints([gate()])).await;
    let id = Identity::in_namespace(h, admin, ELSEWHERE, a).await;
    wait_until_confined(&id, a, b).await;
    id
}

/// Creates `object` again as it was read before its deletion, without the fields the server
/// sets.
async fn recreate<K>(api: &Api<K>, mut object: K)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let meta = object.meta_mut();
    meta.resource_version = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.managed_fields = None;
    let name = meta.name.clone().unwrap_or_default();
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("recreate {name}: {e}"));
}

/// A ServiceAccount `name` in `ns` bound to the loader's ClusterRole `role` (so that RBAC lets
/// it get and patch nodes and only the admission policy can refuse it).
async fn look_alike_account(admin: &kube::Client, ns: &str, name: &str, role: &str) {
    let objects = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": ns}}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("look-alike-{ns}-{name}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
        }),
    ];
    for (what, r) in apply_all(admin, &objects).await {
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// 9. the node condition (manifests/node-condition, untaint --node-condition)

/// Where the node-condition overlay puts the installation.
const NRC_NS: &str = "aapl-nrc";

/// The status a kubelet would have written: conditions and capacity the loader must not touch.
fn kubelet_status() -> Value {
    json!({"status": {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
             "lastHeartbeatTime": "2026-12-06T10:00:00Z", "lastTransitionTime": "2026-12-06T10:00:00Z"},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "lastHeartbeatTime": "2026-12-06T10:00:00Z", "lastTransitionTime": "2026-12-06T10:00:00Z"},
        ],
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "1900m", "memory": "7Gi", "pods": "110"},
    }})
}

fn conditions(node: &Node) -> Vec<k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
}

/// With manifests/node-condition in an overlay, `untaint --node-condition` sets
/// AppArmorProfilesLoaded=True (the set's digest in its message) on its own node through
/// nodes/status, with the gate taint removed and every other condition and status field as the
/// kubelet left them; a second run writes nothing. The admission policy denies the loader every
/// other status write: the condition on another node, another condition type (changed, added,
/// removed), its own condition False or removed, a capacity change, a label outside its prefix
/// through the status subresource.
#[test]
fn with_the_node_condition_component_untaint_sets_only_its_condition_on_its_own_node() {
    let test = "with_the_node_condition_component_untaint_sets_only_its_condition_on_its_own_node";
    let Some(h) = server_of_its_own(test) else {
        return;
    };
    block_on(async {
        let admin = client(&h.kubeconfig).await;
        install_overlay(
            &h,
            &admin,
            &Overlay {
                components: &["node-condition"],
                ..Overlay::in_namespace(NRC_NS)
            },
        )
        .await;
        let (a, b) = ("t9-a", "t9-b");
        for name in [a, b] {
            create_node(&admin, Node::test(name).with_taints([gate()])).await;
            Api::<Node>::all(admin.clone())
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(kubelet_status()),
                )
                .await
                .unwrap_or_else(|e| panic!("kubelet status of {name}: {e}"));
        }
        let a_before = get_node(&admin, a).await;
        let b_before = get_node(&admin, b).await;
        let id = Identity::in_namespace(&h, &admin, NRC_NS, a).await;
        wait_until_confined(&id, a, b).await;

        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("loaded-profiles.json");
        let loaded = apparmor_profile_loader::node_labels::NodeReport {
            loader: "0.1.0-test".into(),
            profiles: [(
                "k8s-nginx".to_string(),
                "sha256:0123456789abcdef".to_string(),
            )]
            .into(),
            ..Default::default()
        };
        loaded.save(&report).unwrap();
        let want = LoadedCondition::from_report(&loaded);
        let args = [
            "--node-report",
            report.to_str().unwrap(),
            "--node-condition",
        ];
        let run = run_untaint_with(&id.kubeconfig, a, &args);
        assert_eq!(
            run.code,
            Some(0),
            "untaint --node-condition:\n{}",
            run.stderr
        );
        assert_eq!(
            run.field("api_requests"),
            json!(3),
            "one GET, the status PATCH, the node PATCH"
        );
        let a_after = get_node(&admin, a).await;
        let ours: Vec<_> = conditions(&a_after)
            .into_iter()
            .filter(|c| c.type_ == CONDITION_TYPE)
            .collect();
        assert_eq!(ours.len(), 1, "{:?}", conditions(&a_after));
        assert_eq!(
            (
                ours[0].status.as_str(),
                ours[0].reason.as_deref(),
                ours[0].message.as_deref()
            ),
            ("True", Some("ProfilesLoaded"), Some(want.message.as_str()))
        );
        assert!(want.message.contains("set sha256:"), "{}", want.message);
        let others = |n: &Node| -> Vec<_> {
            conditions(n)
                .into_iter()
                .filter(|c| c.type_ != CONDITION_TYPE)
                .collect()
        };
        assert_eq!(
            others(&a_after),
            others(&a_before),
            "the kubelet's conditions as they were"
        );
        let status = |n: &Node| n.status.clone().map(|s| (s.capacity, s.allocatable));
        assert_eq!(status(&a_after), status(&a_before));
        assert!(
            !taints_of(&a_after).iter().any(is_gate),
            "the gate taint is gone"
        );
        assert_eq!(
            rv(&get_node(&admin, b).await),
            rv(&b_before),
            "node B unchanged"
        );

        let again = run_untaint_with(&id.kubeconfig, a, &args);
        assert_eq!(again.code, Some(0), "second run:\n{}", again.stderr);
        assert_eq!(again.field("api_requests"), json!(1), "a single GET");
        assert_eq!(
            rv(&get_node(&admin, a).await),
            rv(&a_after),
            "nothing written"
        );

        let nodes: Api<Node> = Api::all(id.client.clone());
        let ours_at = |n: &Node| {
            conditions(n)
                .iter()
                .position(|c| c.type_ == CONDITION_TYPE)
                .expect("our condition")
        };
        let ready_at = conditions(&a_after)
            .iter()
            .position(|c| c.type_ == "Ready")
            .expect("Ready");
        let ours_now = ours_at(&a_after);
        let condition = |t: &str, s: &str| {
            json!({"type": t, "status": s, "reason": "Test",
            "lastHeartbeatTime": "2026-12-06T11:00:00Z", "lastTransitionTime": "2026-12-06T11:00:00Z"})
        };
        let smp = |c: Value| Patch::Strategic(json!({"status": {"conditions": [c]}}));
        let only_ours = "may only set the node condition AppArmorProfilesLoaded to True";
        let other_node = format!("running on node {a} may not modify node {b}");
        let denials: Vec<(&str, &str, Patch<Value>, &str)> = vec![
            (
                "set its condition on another node",
                b,
                smp(condition(CONDITION_TYPE, "True")),
                &other_node,
            ),
            (
                "set Ready to False",
                a,
                smp(condition("Ready", "False")),
                only_ours,
            ),
            (
                "add another condition type",
                a,
                smp(condition("ExampleReady", "True")),
                only_ours,
            ),
            (
                "set its own condition to False",
                a,
                smp(condition(CONDITION_TYPE, "False")),
                only_ours,
            ),
            (
                "remove its own condition",
                a,
                json_patch(
                    json!([{"op": "remove", "path": format!("/status/conditions/{ours_now}")}]),
                ),
                only_ours,
            ),
            (
                "remove the Ready condition",
                a,
                json_patch(
                    json!([{"op": "remove", "path": format!("/status/conditions/{ready_at}")}]),
                ),
                only_ours,
            ),
            (
                "change its capacity",
                a,
                Patch::Merge(json!({"status": {"capacity": {"cpu": "64"}}})),
                only_ours,
            ),
            (
                "change its addresses",
                a,
                Patch::Merge(
                    json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]}}),
                ),
                only_ours,
            ),
            (
                "change a label outside its prefix through nodes/status",
                a,
                Patch::Merge(json!({"metadata": {"labels": {"example.com/tier": "gold"}}})),
                "may not change labels or annotations of a node outside",
            ),
        ];
        for (what, node, patch, want) in &denials {
            assert_denied_by_policy(what, nodes.patch_status(node, &DRY_RUN, patch).await, want);
        }
        // The control: the same write the loader makes is allowed (dry run).
        nodes
            .patch_status(a, &DRY_RUN, &smp(condition(CONDITION_TYPE, "True")))
            .await
            .expect("its own condition, True, on its own node");
    });
}

/// Without the component (the default build: no patch on nodes/status), `--node-condition` is
/// refused by RBAC before anything is written: exit 6 naming the component, and the node keeps
/// its gate taint (the condition is written first).
#[test]
fn without_the_component_node_condition_is_forbidden_and_the_taint_stays() {
    let Some(env) = env("without_the_component_node_condition_is_forbidden_and_the_taint_stays")
    else {
        return;
    };
    block_on(async {
        let admin = client(&env.harness.kubeconfig).await;
        let name = "t9-no-rbac";
        create_node(&admin, Node::test(name).with_taints([gate()])).await;
        let before = get_node(&admin, name).await;
        let id = Identity::new(&env.harness, &admin, name).await;
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("loaded-profiles.json");
        std::fs::write(
            &report,
            json!({"loader": "test", "profiles": {}}).to_string(),
        )
        .unwrap();
        let args = [
            "--node-report",
            report.to_str().unwrap(),
            "--node-condition",
        ];
        let run = run_untaint_with(&id.kubeconfig, name, &args);
        assert_eq!(run.code, Some(KUBERNETES_API), "exit 6:\n{}", run.stderr);
        assert!(
            run.stderr.contains("cannot patch resource")
                && run.stderr.contains("nodes/status")
                && run.stderr.contains("manifests/node-condition"),
            "RBAC's refusal and the component to add:\n{}",
            run.stderr
        );
        assert_eq!(
            rv(&get_node(&admin, name).await),
            rv(&before),
            "nothing written"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 10. a profile set at the API's size limit, deployed the README's way

/// A profile set whose ConfigMap holds exactly what the API server allows (1 MiB of data: the
/// values' bytes, keys not counted), deployed as the README says: `kubectl apply --server-side
/// -k manifests/` with the operator's profiles in `profiles/`. Client-side `kubectl apply` fails
/// at that size (it copies the whole object into the annotation
/// `kubectl.kubernetes.io/last-applied-configuration`, and annotations hold 256 KiB), which is
/// why the README says `--server-side`. One byte more is refused by the server, with the limit
/// `validate` checks (`CONFIGMAP_DATA_LIMIT`).
#[test]
fn a_profile_set_at_the_configmap_limit_is_deployed_the_readmes_way() {
    use apparmor_profile_loader::CONFIGMAP_DATA_LIMIT;
    let test = "a_profile_set_at_the_configmap_limit_is_deployed_the_readmes_way";
    let Some(h) = server_of_its_own(test) else {
        return;
    };
    let tree = tempfile::tempdir().expect("temp dir");
    let manifests = tree.path().join("manifests");
    copy_dir(&repo_root().join("manifests"), &manifests);
    let profiles = tree.path().join("profiles");
    std::fs::create_dir(&profiles).expect("profiles/");
    let keys = ["p0", "p1", "p2", "p3"];
    std::fs::write(
        profiles.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: kube-system\nconfigMapGenerator:\n  - name: apparmor-profiles\n    \
             files: [{}]\n",
            keys.join(", ")
        ),
    )
    .expect("profiles/kustomization.yaml");
    // Each a profile padded with comment lines; together exactly the limit, plus `extra`.
    let write_set = |extra: usize| {
        let quarter = CONFIGMAP_DATA_LIMIT as usize / keys.len();
        for (i, key) in keys.iter().enumerate() {
            let mut text = format!("profile {key} {{\n}}\n");
            let size = quarter + if i == 0 { extra } else { 0 };
            while text.len() < size {
                let line = (size - text.len()).min(4096);
                text.push_str(&"#".repeat(line - 1));
                text.push('\n');
            }
            std::fs::write(profiles.join(key), text).expect("a profile");
        }
    };
    let kubectl = |args: &[&str]| -> std::process::Output {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&h.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl (CI installs it)")
    };
    let dir = manifests.to_string_lossy().to_string();

    write_set(0);
    let server_side = kubectl(&["apply", "--server-side", "-k", &dir]);
    assert!(
        server_side.status.success(),
        "the README's `kubectl apply --server-side -k manifests/`:\n{}",
        String::from_utf8_lossy(&server_side.stderr)
    );
    block_on(async {
        let admin = client(&h.kubeconfig).await;
        let configs: Api<ConfigMap> = Api::namespaced(admin, NS);
        let set = configs
            .list(&ListParams::default())
            .await
            .expect("list ConfigMaps")
            .items
            .into_iter()
            .find(|c| {
                c.metadata
                    .name
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("apparmor-profiles-")
            })
            .expect("the profiles ConfigMap");
        let data = set.data.unwrap_or_default();
        let bytes: usize = data.values().map(String::len).sum();
        assert_eq!(
            (data.len(), bytes as u64),
            (keys.len(), CONFIGMAP_DATA_LIMIT),
            "the server holds the whole set"
        );
    });

    write_set(1);
    let over = kubectl(&["apply", "--server-side", "-k", &dir]);
    let stderr = String::from_utf8_lossy(&over.stderr);
    assert!(
        !over.status.success()
            && stderr.contains(&format!(
                "Too long: may not be more than {CONFIGMAP_DATA_LIMIT} bytes"
            )),
        "one byte over the limit is refused by the server:\n{stderr}"
    );

    // Client-side apply of the same set: refused for its last-applied annotation.
    write_set(0);
    let client_side = kubectl(&["apply", "-k", &dir]);
    let stderr = String::from_utf8_lossy(&client_side.stderr);
    assert!(
        !client_side.status.success()
            && stderr.contains("metadata.annotations: Too long")
            && stderr.contains("262144"),
        "client-side apply of a 1 MiB ConfigMap is refused for its last-applied annotation:\n{stderr}"
    );

    // An installation first applied client-side (with a small set, which fits the annotation):
    // server-side apply meets the fields client-side apply owns, and `--force-conflicts` once
    // takes them over, as the README says.
    let deleted = kubectl(&["delete", "-k", &dir, "--wait"]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    for key in keys {
        std::fs::write(profiles.join(key), format!("profile {key} {{\n}}\n")).expect("a profile");
    }
    let client_side = kubectl(&["apply", "-k", &dir]);
    assert!(
        client_side.status.success(),
        "client-side apply of a small set:\n{}",
        String::from_utf8_lossy(&client_side.stderr)
    );
    let server_side = kubectl(&["apply", "--server-side", "-k", &dir]);
    let stderr = String::from_utf8_lossy(&server_side.stderr);
    assert!(
        !server_side.status.success() && stderr.contains("conflict"),
        "server-side apply over a client-side installation meets its fields:\n{stderr}"
    );
    let forced = kubectl(&["apply", "--server-side", "--force-conflicts", "-k", &dir]);
    assert!(
        forced.status.success(),
        "`--force-conflicts` once takes them over:\n{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let after = kubectl(&["apply", "--server-side", "-k", &dir]);
    assert!(
        after.status.success(),
        "then plain `--server-side` again:\n{}",
        String::from_utf8_lossy(&after.stderr)
    );
}

/// Copies the directory `from` to `to`, recursively.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
