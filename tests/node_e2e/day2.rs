//! Day 2 on node A: a profile that leaves the ConfigMap never unconfines its workload (scenario 7); a changed profile rolls out by itself, a broken one halts (scenarios 9 and 10).

use super::*;

// === scenarios 9 and 10: day 2, a profile change rolls out by itself, a broken one halts ===========

pub(crate) const LABEL_PREFIX: &str = "apparmor-profile-loader";

/// What a rollout of an edited kustomize input did on `node`.
pub(crate) struct Rollout {
    /// When `kubectl apply` of the new objects returned.
    pub(crate) applied: Instant,
    /// The DaemonSet's loader pod before (name, controller-revision-hash) and the one that
    /// replaced it.
    pub(crate) old_pod: Option<(String, String)>,
    pub(crate) new_pod: Option<Value>,
    /// Whether the new pod ran copy -> load -> untaint and is Running.
    pub(crate) running: bool,
    /// The node's labels when the new pod was Running or had failed (see `rollout`).
    pub(crate) labels: Value,
    /// Index and arrival of the first node event after `applied`, for the caller's waits.
    pub(crate) nodes_from: usize,
}

/// Copies `manifests/` and `profiles/` of the repository, lets `edit` change the profiles
/// directory, renders the kustomization as an operator's `kubectl apply -k` would, applies it, and
/// waits for the DaemonSet's own rolling update to replace the loader pod on `node` (no pod is
/// deleted by hand) until the new pod is Running, or its copy failed twice.
pub(crate) fn rollout(
    c: &Cluster,
    node: &str,
    edit: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<Rollout, String> {
    let dir = tempfile_dir(c, "rollout")?;
    for d in ["manifests", "profiles"] {
        copy_tree(&aapl_test_support::repo().join(d), &dir.join(d))?;
    }
    edit(&dir.join("profiles"))?;
    let rendered = c.cp.render(&dir.join("manifests"))?;
    let old_pod = c
        .pods
        .between(0, c.pods.len())
        .iter()
        .rev()
        .find(|p| is_loader(p) && on_node(p, node))
        .map(|p| (name(p).to_string(), revision(p)));
    let pods_before = c.pods.len();
    let nodes_from = c.nodes.len();
    c.cp.apply(rendered.as_array().map(Vec::as_slice).unwrap_or(&[]))?;
    let applied = Instant::now();
    let settled = c.pods.wait(pods_before, *WAIT, |p| {
        is_loader(p)
            && on_node(p, node)
            && old_pod.as_ref().is_none_or(|(old, _)| name(p) != old)
            && (running(p) || copy_failures(p) >= 2)
    });
    let new_pod = settled.map(|(_, _, p)| p);
    let running = new_pod
        .as_ref()
        .is_some_and(|p| running(p) && init_summary(p).iter().all(|(_, code, _)| *code == Some(0)));
    let labels = c.cp.get_json(&["node", node])?["metadata"]["labels"].clone();
    Ok(Rollout {
        applied,
        old_pod,
        new_pod,
        running,
        labels,
        nodes_from,
    })
}

pub(crate) fn tempfile_dir(c: &Cluster, label: &str) -> Result<PathBuf, String> {
    let n = std::fs::read_dir(&c.cp.dir).map(|d| d.count()).unwrap_or(0);
    let dir = c.cp.dir.join(format!("{label}-{n}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let out = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| e.to_string())?;
    out.status
        .success()
        .then_some(())
        .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

pub(crate) fn revision(pod: &Value) -> String {
    pod["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The workload's container writes /data/NAME: Ok(true) when allowed, Ok(false) when AppArmor
/// refused it (EACCES).
pub(crate) fn workload_may_write(c: &Cluster, id: &str, probe: &str) -> Result<bool, String> {
    let (rc, out) = c.guest.sh(
        &format!("ctr -n k8s.io tasks exec --exec-id {probe} {id} /bin/touch /data/{probe}"),
        Duration::from_secs(60),
    )?;
    match rc {
        0 => Ok(true),
        _ if out.contains("Permission denied") => Ok(false),
        _ => Err(format!("touch /data/{probe}: exit {rc}, {out:?}")),
    }
}

pub(crate) fn profile_state(c: &Cluster, id: &str) -> String {
    c.guest
        .out(&format!(
            "pid=$(task_pid {id}); cat /proc/$pid/attr/apparmor/current 2>/dev/null || cat /proc/$pid/attr/current"
        ))
        .trim()
        .to_string()
}

/// Scenario 9: the operator changes a profile in the kustomize input and applies it. The
/// profiles ConfigMap gets a new name, so the DaemonSet a new revision; its rolling update
/// replaces the node's loader pod with nobody deleting a pod, the running workload is enforced
/// under the new rules at once (a write the old profile denied is now allowed), and the node's
/// label shows the new digest (`METRIC rollout_node_ms`: apply -> label).
pub(crate) fn scenario_9(
    c: &Cluster,
    f: &mut Findings,
    node: &str,
    wl_pod: &Value,
    first: Option<&str>,
) -> Result<(), String> {
    f.begin("9");
    let Some(id) = container_id(wl_pod, "containerStatuses", "app") else {
        f.check("9", false, "the workload pod has no container ID");
        return Ok(());
    };
    f.check(
        "9",
        !workload_may_write(c, &id, "before-rollout")?,
        "before the change, the profile denies the workload's write to /data",
    );
    let r = rollout(c, node, |profiles| {
        let file = profiles.join(PROFILE);
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        let changed = text.replace("  /tmp/** rw,\n", "  /tmp/** rw,\n  /data/** rw,\n");
        if changed == text {
            return Err(format!("{PROFILE} has no `/tmp/** rw,` line to extend"));
        }
        std::fs::write(&file, changed).map_err(|e| e.to_string())
    })?;
    let new_pod = r.new_pod.as_ref();
    let old_rev = r.old_pod.as_ref().map(|(_, rev)| rev.as_str());
    f.check(
        "9",
        r.running && new_pod.is_some_and(|p| old_rev.is_some_and(|old| revision(p) != old)),
        format!(
            "the DaemonSet replaced {:?} by itself with a pod of a new revision, which ran copy -> load -> untaint: {:?}",
            r.old_pod,
            new_pod.map(init_summary)
        ),
    );
    let key = format!("{LABEL_PREFIX}/{PROFILE}");
    let labelled = c.nodes.wait(r.nodes_from, *WAIT, |n| {
        name(n) == node
            && n["metadata"]["labels"][&key]
                .as_str()
                .is_some_and(|d| Some(d) != first)
    });
    match &labelled {
        Some((_, at, n)) => {
            f.metric("rollout_node_ms", ms(*at - r.applied));
            f.check(
                "9",
                true,
                format!(
                    "the label {key} changed from {first:?} to {}",
                    n["metadata"]["labels"][&key]
                ),
            );
        }
        None => {
            f.check(
                "9",
                false,
                format!("the label {key} never changed from {first:?}"),
            );
        }
    }
    if let Ok(out) = c.cp.kubectl(&["get", "nodes", "-L", &key], None) {
        eprintln!("kubectl get nodes -L {key}\n{out}");
    }
    f.check(
        "9",
        profile_state(c, &id) == format!("{PROFILE} (enforce)"),
        "the workload kept running under the same profile name, enforced",
    );
    f.check(
        "9",
        workload_may_write(c, &id, "after-rollout")?,
        "the running workload is under the new rules: the write to /data is allowed now",
    );
    Ok(())
}

/// Scenario 10: a broken profile is applied the same way. The rollout halts at the node: the
/// new pod fails in copy (`Init:Error`), `kubectl describe pod` names the file and the reason, the
/// DaemonSet counts the node unavailable, and the node keeps its policy and its labels: the
/// workload keeps running, under the rules of scenario 9.
pub(crate) fn scenario_10(
    c: &Cluster,
    f: &mut Findings,
    node: &str,
    wl_pod: &Value,
) -> Result<(), String> {
    f.begin("10");
    let Some(id) = container_id(wl_pod, "containerStatuses", "app") else {
        f.check("10", false, "the workload pod has no container ID");
        return Ok(());
    };
    let before = c.cp.get_json(&["node", node])?["metadata"]["labels"].clone();
    let r = rollout(c, node, |profiles| {
        std::fs::write(
            profiles.join("k8s-nginx"),
            "abi <abi/3.0>,\nprofile k8s-nginx {\n  this is not a rule,\n}\n",
        )
        .map_err(|e| e.to_string())
    })?;
    let Some(p) = r.new_pod.as_ref().filter(|_| !r.running) else {
        f.check(
            "10",
            false,
            format!(
                "the broken revision's pod did not fail in copy: {:?}",
                r.new_pod.as_ref().map(init_summary)
            ),
        );
        return Ok(());
    };
    let describe =
        c.cp.kubectl(&["describe", "pod", "-n", "kube-system", name(p)], None)
            .unwrap_or_default();
    f.check(
        "10",
        copy_failures(p) >= 2
            && copy_message(p).contains("k8s-nginx")
            && describe.contains("k8s-nginx"),
        format!(
            "the new pod fails in copy again and again, and `kubectl describe pod` names the file: {:?}",
            copy_message(p)
        ),
    );
    let ds =
        c.cp.get_json(&["daemonset", "-n", "kube-system", "apparmor-profile-loader"])?;
    f.check(
        "10",
        ds["status"]["numberUnavailable"] == 1,
        format!(
            "the DaemonSet counts the node unavailable, so its rolling update goes no further: {}",
            ds["status"]
        ),
    );
    let after = c.cp.get_json(&["node", node])?["metadata"]["labels"].clone();
    f.check(
        "10",
        after == before,
        format!("the node keeps its labels: {after}"),
    );
    let wl = c.cp.get_json(&["pod", "-n", WORKLOAD_NS, name(wl_pod)])?;
    f.check(
        "10",
        running(&wl) && profile_state(c, &id) == format!("{PROFILE} (enforce)"),
        "the workload keeps running, enforced",
    );
    f.check(
        "10",
        workload_may_write(c, &id, "after-broken")?,
        "under the rules of the last good revision (the write scenario 9 allowed is still allowed)",
    );
    let nginx = c
        .guest
        .out("grep '^k8s-nginx ' /sys/kernel/security/apparmor/profiles");
    f.check(
        "10",
        nginx.trim() == "k8s-nginx (enforce)",
        format!("k8s-nginx stays loaded as it was: {nginx:?}"),
    );
    Ok(())
}

// === scenario 7: a profile that leaves the ConfigMap never unconfines its workload ===============

/// The key the workload's profile comes from leaves the ConfigMap and the DaemonSet pod runs again
/// (as `kubectl rollout restart` or a new revision would): the running workload stays confined,
/// still denied what the profile denied; load says it retired the profile. The ConfigMap is then
/// restored for the nodes that follow.
pub(crate) fn scenario_7(
    c: &Cluster,
    f: &mut Findings,
    node: &str,
    wl_pod: &Value,
) -> Result<(), String> {
    f.begin("7");
    let Some(id) = container_id(wl_pod, "containerStatuses", "app") else {
        f.check("7", false, "the workload pod has no container ID");
        return Ok(());
    };
    let good = configmap(c)?;
    let mut without = good.clone();
    let removed = without["data"]
        .as_object_mut()
        .and_then(|d| d.remove(PROFILE));
    f.check(
        "7",
        removed.is_some(),
        format!("the ConfigMap has the key {PROFILE} to remove"),
    );
    strip_meta(&mut without);
    c.cp.kubectl(&["replace", "-f", "-"], Some(&without.to_string()))?;
    let old = c
        .pods
        .between(0, c.pods.len())
        .iter()
        .rev()
        .find(|p| is_loader(p) && on_node(p, node))
        .map(|p| name(p).to_string());
    let pods_before = c.pods.len();
    if let Some(old) = &old {
        c.cp.kubectl(
            &["delete", "pod", "-n", "kube-system", old, "--wait=false"],
            None,
        )?;
    }
    let rerun = c.pods.wait(pods_before, *WAIT, |p| {
        is_loader(p) && on_node(p, node) && Some(name(p)) != old.as_deref() && running(p)
    });
    match &rerun {
        Some((_, _, p)) => {
            let inits = init_summary(p);
            f.check(
                "7",
                inits.len() == 3 && inits.iter().all(|(_, code, _)| *code == Some(0)),
                format!(
                    "the DaemonSet pod ran copy -> load -> untaint again, each exit 0: {inits:?}"
                ),
            );
            // The API server cannot reach this kubelet's log endpoint: read the container's
            // log where the kubelet keeps it.
            let logs = c.guest.out(&format!(
                "cat /var/log/pods/kube-system_{}_*/load/*.log",
                name(p)
            ));
            f.check(
                "7",
                logs.contains(&format!("retired \"{PROFILE}\"")) && logs.contains("retired 1"),
                format!(
                    "load logs the retired profile and counts it: {:?}",
                    logs.lines().last()
                ),
            );
        }
        None => {
            f.check("7", false, "the DaemonSet pod never ran again");
        }
    }
    let labels = c.cp.get_json(&["node", node])?["metadata"]["labels"].clone();
    f.check(
        "7",
        labels[format!("apparmor-profile-loader/{PROFILE}")].is_null()
            && labels["apparmor-profile-loader/k8s-nginx"].is_string(),
        format!("the node no longer advertises {PROFILE}; the others stay: {labels}"),
    );
    let attr = profile_state(c, &id);
    f.check(
        "7",
        attr == format!("{PROFILE} (enforce)"),
        format!("the running workload is still confined by {PROFILE}, not unconfined: {attr:?}"),
    );
    match c.guest.sh(
        &format!("ctr -n k8s.io tasks exec --exec-id probe7 {id} /bin/touch /data/denied-after"),
        Duration::from_secs(60),
    ) {
        Ok((rc, out)) => f.check(
            "7",
            rc != 0 && out.contains("Permission denied"),
            format!("the write its profile denied is still denied (EACCES): exit {rc}, {out:?}"),
        ),
        Err(e) => f.check("7", false, e),
    };
    let mut restored = good;
    strip_meta(&mut restored);
    c.cp.kubectl(&["replace", "-f", "-"], Some(&restored.to_string()))?;
    Ok(())
}
