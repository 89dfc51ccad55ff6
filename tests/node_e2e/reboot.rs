//! Scenario 11: the node reboots from its disk.

use super::*;

// === scenario 11: the node reboots ===============================================================

/// What scenario 11 compares after the reboot.
pub(crate) struct BeforeReboot {
    pub(crate) node: String,
    pub(crate) labels: Value,
    pub(crate) workload: String,
    pub(crate) workload_container: String,
    pub(crate) load_started: Value,
    /// When the node went down (taken just before the guest is stopped).
    pub(crate) down_since: Instant,
}

pub(crate) fn before_reboot(
    cp: &ControlPlane,
    pods: &Watch,
    node: &str,
) -> Result<BeforeReboot, String> {
    let labels = ours(&cp.get_json(&["node", node])?);
    let (_, _, wl) = pods
        .wait(0, *WAIT, |p| {
            p["metadata"]["namespace"] == LABELLED_NS && on_node(p, node) && running(p)
        })
        .ok_or("no running labelled workload on the node before the reboot")?;
    let (_, _, loader) = pods
        .wait(0, *WAIT, |p| is_loader(p) && on_node(p, node) && running(p))
        .ok_or("no running loader pod on the node before the reboot")?;
    Ok(BeforeReboot {
        node: node.to_string(),
        labels,
        workload: name(&wl).to_string(),
        workload_container: container_id(&wl, "containerStatuses", "app").unwrap_or_default(),
        load_started: init_status(&loader, "load")["state"]["terminated"]["startedAt"].clone(),
        down_since: Instant::now(),
    })
}

/// The node's labels under our prefix.
pub(crate) fn ours(node: &Value) -> Value {
    let labels = node["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    Value::Object(
        labels
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{LABEL_PREFIX}/")))
            .collect(),
    )
}

pub(crate) fn init_status(pod: &Value, container: &str) -> Value {
    pod["status"]["initContainerStatuses"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == container))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Scenario 11: the node VM restarts from its disk. Its own boot loads the top-level files of
/// `/etc/apparmor.d` with the node's parser before the kubelet starts (as Ubuntu's
/// apparmor.service does); the workload's container starts again, confined, before the loader pod
/// has re-run; the loader re-runs, loads nothing, and the node keeps its labels.
///
/// "Before the loader has re-run" is made certain, not left to the race between two pods: until
/// the workload has been seen confined, the node's `/etc/apparmor/parser.conf` is a dangling
/// link, which `copy` refuses (exit 1, naming it), so no `load` can run in this boot before then.
/// The file is put back afterwards and the loader's next retry goes through.
pub(crate) fn scenario_11(
    c: &Cluster,
    f: &mut Findings,
    before: &BeforeReboot,
) -> Result<(), String> {
    f.begin("11");
    let node = before.node.as_str();
    let events = c.guest.events();
    let boot_load = events
        .iter()
        .find(|e| e.starts_with("boot load:"))
        .cloned()
        .unwrap_or_default();
    f.check(
        "11",
        boot_load.contains("exit 0")
            && ["k8s-deny-write (enforce)", "k8s-nginx (enforce)", "k8s-audit-only (complain)"]
                .iter()
                .all(|p| boot_load.contains(p)),
        format!("the node's boot loaded the top-level files of /etc/apparmor.d before the kubelet started: {boot_load:?}"),
    );
    let pods_before = c.pods.len();
    let (rc, out) = c.guest.sh(
        "mv /etc/apparmor/parser.conf /etc/apparmor/parser.conf.held && \
         ln -s /nonexistent/held-by-scenario-11 /etc/apparmor/parser.conf",
        Duration::from_secs(60),
    )?;
    if rc != 0 {
        return Err(format!("hold the loader back (parser.conf): {out}"));
    }
    eprintln!(
        "scenario 11: node {node} down for {:.0?} before node_up (pods tolerate 300 s unless told otherwise)",
        before.down_since.elapsed()
    );
    let (rc, out) = c
        .guest
        .sh(&format!("node_up {node} ''"), Duration::from_secs(60))?;
    if rc != 0 {
        return Err(format!("node_up {node}: {out}"));
    }
    let back = c.pods.wait(pods_before, *WAIT, |p| {
        name(p) == before.workload
            && running(p)
            && container_id(p, "containerStatuses", "app")
                .is_some_and(|id| id != before.workload_container)
    });
    let Some((_, _, wl)) = back else {
        let now: Vec<String> =
            c.cp.get_json(&["pods", "-n", LABELLED_NS])
                .ok()
                .and_then(|l| l["items"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    format!(
                        "{} on {} phase {} deleting {}",
                        name(p),
                        p["spec"]["nodeName"],
                        p["status"]["phase"],
                        p["metadata"]["deletionTimestamp"]
                    )
                })
                .collect();
        return Err(format!(
            "the workload {} never ran again on {node} after the reboot (down {:.0?} before \
             node_up); pods in {LABELLED_NS} now: {now:?}",
            before.workload,
            before.down_since.elapsed()
        ));
    };
    let id = container_id(&wl, "containerStatuses", "app").unwrap_or_default();
    f.check(
        "11",
        profile_state(c, &id) == format!("{PROFILE} (enforce)"),
        format!("the workload's new container runs confined by {PROFILE}"),
    );
    f.check(
        "11",
        !workload_may_write(c, &id, "after-reboot")?,
        "and its profile denies the write to /data (the rules of the repository's profile)",
    );
    // Meanwhile no load of this boot has run: the loader's copy refused the held parser.conf.
    let loaders: Vec<Value> = c
        .pods
        .between(pods_before, c.pods.len())
        .into_iter()
        .filter(|p| is_loader(p) && on_node(p, node))
        .collect();
    let loaded_this_boot = loaders.iter().any(|p| {
        let load = init_status(p, "load");
        !load["state"]["terminated"].is_null()
            && load["state"]["terminated"]["startedAt"] != before.load_started
    });
    f.check(
        "11",
        !loaded_this_boot,
        format!(
            "no load of this boot had run when the workload was seen confined (copy held back): {:?}",
            loaders.last().map(init_summary)
        ),
    );
    let (rc, out) = c.guest.sh(
        "rm /etc/apparmor/parser.conf && mv /etc/apparmor/parser.conf.held /etc/apparmor/parser.conf",
        Duration::from_secs(60),
    )?;
    if rc != 0 {
        return Err(format!("release the loader (parser.conf): {out}"));
    }
    let rerun = c.pods.wait(pods_before, *WAIT, |p| {
        is_loader(p) && on_node(p, node) && running(p) && {
            let load = init_status(p, "load");
            load["state"]["terminated"]["exitCode"] == 0
                && load["state"]["terminated"]["startedAt"] != before.load_started
        }
    });
    let Some((_, _, lp)) = rerun else {
        return Err(format!(
            "the loader pod never re-ran on {node} after the reboot; {}",
            loader_pod_summary(c, node)
        ));
    };
    let wl_started = wl["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let load_finished = init_status(&lp, "load")["state"]["terminated"]["finishedAt"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    f.check(
        "11",
        !wl_started.is_empty() && !load_finished.is_empty() && wl_started <= load_finished,
        format!("the workload's container started ({wl_started}) without waiting for the loader's load ({load_finished})"),
    );
    let logs = c.guest.out(&format!(
        "cat /var/log/pods/kube-system_{}_*/load/*.log",
        name(&lp)
    ));
    f.check(
        "11",
        logs.contains("load complete: loaded 0, unchanged 3, retired 0, neutralised 0"),
        format!(
            "the loader re-ran and changed nothing: {:?}",
            logs.lines().last()
        ),
    );
    let labels = ours(&c.cp.get_json(&["node", node])?);
    f.check(
        "11",
        labels == before.labels,
        format!("the node keeps its labels: {labels}"),
    );
    Ok(())
}
