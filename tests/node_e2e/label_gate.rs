//! Node D: no gate taint; the label is the gate (scenario 8), and the price of the gate.

use super::*;

// === node D: no gate =============================================================================

/// Node `d` registered with no taint and the label-requiring workload applied: the workload's time to
/// Running without the gate (`workload_running_nogate_ms`, `gate_overhead_ms`). Returns the nodes' and
/// pods' watch positions before it, for scenario 8.
pub(crate) fn ungated_node_runs_the_workload(
    c: &Cluster,
    f: &mut Findings,
    d: &str,
) -> Result<(usize, usize), String> {
    // scenario 8 as an operator with the node-readiness-controller deploys it: the repository's
    // manifests with the component node-condition, through an overlay
    let overlay = node_condition_overlay(c)?;
    apply_retrying(c.cp, overlay.as_array().map(Vec::as_slice).unwrap_or(&[]))?;
    let pods_before = c.pods.len();
    // scenario 8: a workload that requires its profile's node label, and no taint on the node
    let labelled =
        c.cp.render(&aapl_test_support::repo().join("tests/node/workload-labelled.yaml"))?;
    apply_retrying(c.cp, labelled.as_array().map(Vec::as_slice).unwrap_or(&[]))?;
    let (ni, reg) = register(c, d, "")?;
    let wl = c.pods.wait(pods_before, *WAIT, |p| {
        is_workload(p) && on_node(p, d) && running(p)
    });
    if let Some((_, at, _)) = wl {
        let nogate = at - reg;
        f.metric("workload_running_nogate_ms", ms(nogate));
        f.metric("gate_overhead_ms", ms(gate_total(f)) - ms(nogate));
    } else {
        return Err(format!("the workload never ran on the ungated node {d}"));
    }
    Ok((ni, pods_before))
}

/// The repository's manifests (and profiles) rendered through an overlay that adds the component
/// `manifests/node-condition`, as `kubectl apply -k <overlay>` would.
pub(crate) fn node_condition_overlay(c: &Cluster) -> Result<Value, String> {
    let dir = tempfile_dir(c, "node-condition")?;
    for d in ["manifests", "profiles"] {
        copy_tree(&aapl_test_support::repo().join(d), &dir.join(d))?;
    }
    std::fs::create_dir_all(dir.join("overlay")).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("overlay/kustomization.yaml"),
        "resources: [../manifests]\ncomponents: [../manifests/node-condition]\n",
    )
    .map_err(|e| e.to_string())?;
    c.cp.render(&dir.join("overlay"))
}

// === scenario 8: the gate without a taint ========================================================

pub(crate) const LABELLED_NS: &str = "aapl-labelled";

/// On a node registered with no gate taint, a workload that requires the label
/// `apparmor-profile-loader/k8s-deny-write` is bound only once the loader has proven the
/// profile loaded and labelled the node, and then runs confined by it.
pub(crate) fn scenario_8(c: &Cluster, f: &mut Findings, node: &str, ni: usize, pods_before: usize) {
    let label = format!("apparmor-profile-loader/{PROFILE}");
    let labelled = c.nodes.wait(ni, *WAIT, |n| {
        name(n) == node && n["metadata"]["labels"][label.as_str()].is_string()
    });
    let Some((_, labelled_at, _)) = labelled else {
        f.check("8", false, format!("{node} never got the label {label}"));
        return;
    };
    let wl = c.pods.wait(pods_before, *WAIT, |p| {
        p["metadata"]["namespace"] == LABELLED_NS && on_node(p, node) && running(p)
    });
    let Some((_, _, pod)) = wl else {
        f.check(
            "8",
            false,
            format!("the workload requiring {label} never ran on {node}"),
        );
        return;
    };
    let early: Vec<String> = c
        .pods
        .between(pods_before, c.pods.len())
        .iter()
        .zip(pods_before..)
        .filter(|(p, _)| {
            p["metadata"]["namespace"] == LABELLED_NS && !p["spec"]["nodeName"].is_null()
        })
        .filter(|(_, i)| c.pods_event_time(*i) < labelled_at)
        .map(|(p, _)| name(p).to_string())
        .collect();
    f.check(
        "8",
        early.is_empty(),
        format!("with no taint on {node}, no pod requiring {label} was bound before the label came (bound early: {early:?})"),
    );
    // What the pod said while it waited: unschedulable, as the scheduler set it (its events may
    // only say "no nodes available" when the label came before it tried again).
    let waited: Vec<String> = c
        .pods
        .between(pods_before, c.pods.len())
        .iter()
        .zip(pods_before..)
        .filter(|(p, i)| {
            p["metadata"]["namespace"] == LABELLED_NS && c.pods_event_time(*i) < labelled_at
        })
        .flat_map(|(p, _)| {
            p["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|cond| cond["type"] == "PodScheduled" && cond["status"] == "False")
        .filter_map(|cond| cond["reason"].as_str().map(String::from))
        .collect();
    f.check(
        "8",
        waited.iter().any(|r| r == "Unschedulable"),
        format!(
            "until then the pod was Pending, unschedulable ({waited:?}; the scheduler's events: {:?})",
            scheduler_reasons_in(c, LABELLED_NS)
        ),
    );
    let Some(id) = container_id(&pod, "containerStatuses", "app") else {
        f.check("8", false, "the labelled workload has no container ID");
        return;
    };
    let attr = profile_state(c, &id);
    f.check(
        "8",
        attr == format!("{PROFILE} (enforce)"),
        format!("it runs confined by {PROFILE}: {attr:?}"),
    );
    // Deployed with manifests/node-condition: untaint set the condition through nodes/status (RBAC
    // and the admission policy let it), and the kubelet's own conditions are still there.
    let conditions =
        c.cp.get_json(&["node", node])
            .map(|n| n["status"]["conditions"].clone())
            .unwrap_or_default();
    let ours = conditions
        .as_array()
        .and_then(|l| l.iter().find(|c| c["type"] == "AppArmorProfilesLoaded"))
        .cloned()
        .unwrap_or_default();
    let message = ours["message"].as_str().unwrap_or_default();
    f.check(
        "8",
        ours["status"] == "True"
            && ours["reason"] == "ProfilesLoaded"
            && message.starts_with("3 AppArmor profiles loaded and proven in the kernel")
            && message.contains("set sha256:"),
        format!("deployed with the component node-condition, the node has AppArmorProfilesLoaded=True with the set's digest: {ours}"),
    );
    let ready = conditions
        .as_array()
        .and_then(|l| l.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].clone());
    f.check(
        "8",
        ready == Some(Value::from("True")),
        format!("and the kubelet's Ready condition is still True beside it: {ready:?}"),
    );
}

/// workload_running_ms recorded for node A.
pub(crate) fn gate_total(f: &Findings) -> Duration {
    f.metrics
        .iter()
        .find(|(n, _)| n == "workload_running_ms")
        .map(|(_, v)| Duration::from_secs_f64(v / 1000.0))
        .unwrap_or_default()
}

impl Cluster<'_> {
    pub(crate) fn pods_event_time(&self, i: usize) -> Instant {
        self.pods.events.0.lock().unwrap()[i].0
    }

    pub(crate) fn nodes_event_time(&self, i: usize) -> Instant {
        self.nodes.events.0.lock().unwrap()[i].0
    }
}

pub(crate) fn scheduler_reasons(c: &Cluster) -> Vec<String> {
    scheduler_reasons_in(c, WORKLOAD_NS)
}

pub(crate) fn scheduler_reasons_in(c: &Cluster, ns: &str) -> Vec<String> {
    c.cp.get_json(&["events", "-n", ns])
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|e| e["reason"] == "FailedScheduling")
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

/// (name, exit code, message) of each init container's last termination.
pub(crate) fn init_summary(pod: &Value) -> Vec<(String, Option<i64>, String)> {
    pod["status"]["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let t = &s["state"]["terminated"];
            (
                s["name"].as_str().unwrap_or("").to_string(),
                t["exitCode"].as_i64(),
                t["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

pub(crate) fn copy_status(pod: &Value) -> Value {
    pod["status"]["initContainerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "copy").cloned())
        .unwrap_or(Value::Null)
}

pub(crate) fn copy_failures(pod: &Value) -> i64 {
    let s = copy_status(pod);
    let failed_now = s["state"]["terminated"]["exitCode"]
        .as_i64()
        .is_some_and(|c| c != 0) as i64;
    s["restartCount"].as_i64().unwrap_or(0) + failed_now
}

pub(crate) fn copy_message(pod: &Value) -> String {
    let s = copy_status(pod);
    for t in [&s["state"]["terminated"], &s["lastState"]["terminated"]] {
        if let Some(m) = t["message"].as_str() {
            return m.to_string();
        }
    }
    String::new()
}

pub(crate) fn loader_pod_summary(c: &Cluster, node: &str) -> String {
    let pods =
        c.cp.get_json(&["pods", "-n", "kube-system"])
            .unwrap_or_default();
    let mut s = String::new();
    for p in pods["items"].as_array().cloned().unwrap_or_default() {
        if p["spec"]["nodeName"] == node {
            s.push_str(&format!("{}: {}\n", name(&p), p["status"]));
        }
    }
    s.push_str(&c.guest.out(&format!(
        "tail -n 30 /var/log/kubelet-{node}.log; tail -n 10 /var/log/containerd.log"
    )));
    s
}

/// The profiles ConfigMap the DaemonSet mounts (kustomize names it after its content).
pub(crate) fn configmap(c: &Cluster) -> Result<Value, String> {
    let ds =
        c.cp.get_json(&["daemonset", "-n", "kube-system", "apparmor-profile-loader"])?;
    let name = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "profiles"))
        .and_then(|v| v["configMap"]["name"].as_str())
        .ok_or("the DaemonSet mounts no profiles ConfigMap")?
        .to_string();
    c.cp.get_json(&["configmap", "-n", "kube-system", &name])
}

pub(crate) fn strip_meta(o: &mut Value) {
    if let Some(m) = o["metadata"].as_object_mut() {
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
            "annotations",
        ] {
            m.remove(k);
        }
    }
}
