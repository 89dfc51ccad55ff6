//! Node A: the gate taint lifts once the profiles are proven loaded (scenarios 1, 2, 4, 5).

use super::*;

// === node A: the gate ============================================================================

/// Node A registered with the gate taint and the workload applied, up to the taint's removal.
pub(crate) struct GateLifted {
    pub(crate) pods_before: usize,
    pub(crate) ni: usize,
    pub(crate) registered: Instant,
    pub(crate) released_at: Instant,
}

/// Registers `a` with the gate taint, applies the workload and waits for the loader to lift the gate
/// (scenario 1's first check; `node_gate_ms`).
pub(crate) fn gate_lifts(c: &Cluster, f: &mut Findings, a: &str) -> Result<GateLifted, String> {
    let pods_before = c.pods.len();
    let (ni, registered) = register(c, a, &format!("{GATE}=true:NoSchedule"))?;
    // the workload arrives once the node is there (and tainted): the scheduler then says why it waits (it
    // would not retry a pod that was pending before, since the new node's taint does not help it)
    let workload =
        c.cp.render(&aapl_test_support::repo().join("tests/node/workload.yaml"))?;
    apply_retrying(c.cp, workload.as_array().map(Vec::as_slice).unwrap_or(&[]))?;
    let released = registered_with_then_released(c, f, "1", ni, a, GATE);
    let Some((_, released_at, _)) = released else {
        return Err(format!(
            "the gate taint was never removed from {a}; loader pod: {}",
            loader_pod_summary(c, a)
        ));
    };
    let gate = released_at - registered;
    f.metric("node_gate_ms", ms(gate));
    Ok(GateLifted {
        pods_before,
        ni,
        registered,
        released_at,
    })
}

/// Scenario 5 on node A, once its `untaint` container has exited 0.
pub(crate) fn scenario_5_untaint_went_through_the_service(
    c: &Cluster,
    f: &mut Findings,
    a: &str,
    pods_before: usize,
) {
    let untainted = c.pods.wait(pods_before, *WAIT, |p| {
        is_loader(p)
            && on_node(p, a)
            && init_summary(p)
                .iter()
                .any(|(n, code, _)| n == "untaint" && *code == Some(0))
    });
    match &untainted {
        Some((_, _, p)) => scenario_5(c, f, p),
        None => {
            f.check("5", false, "the untaint container never exited 0");
        }
    }
}

/// What the scenarios after 1 need from node A.
pub(crate) struct NodeA {
    /// The workload pod, Running.
    pub(crate) workload: Value,
    /// The DaemonSet pod, Running.
    pub(crate) loader: Option<Value>,
    /// The node's first digest label of [`PROFILE`].
    pub(crate) digest: Option<String>,
}

/// Scenario 1: the workload was not bound while the taint was there and runs once it went; the node
/// carries a digest label per loaded profile (`workload_running_ms`).
pub(crate) fn scenario_1(
    c: &Cluster,
    f: &mut Findings,
    a: &str,
    gate: &GateLifted,
) -> Result<NodeA, String> {
    let GateLifted {
        pods_before,
        ni,
        registered,
        released_at,
    } = *gate;
    let wl = c.pods.wait(pods_before, *WAIT, |p| {
        is_workload(p) && on_node(p, a) && running(p)
    });
    let Some((_, wl_at, wl_pod)) = wl else {
        return Err(format!("the workload never ran on {a}"));
    };
    f.metric("workload_running_ms", ms(wl_at - registered));
    let early: Vec<String> = c
        .pods
        .between(pods_before, c.pods.len())
        .iter()
        .zip(pods_before..)
        .filter(|(p, _)| is_workload(p) && !p["spec"]["nodeName"].is_null())
        .filter(|(_, i)| c.pods_event_time(*i) < released_at)
        .map(|(p, _)| format!("{} on {}", name(p), p["spec"]["nodeName"]))
        .collect();
    f.check(
        "1",
        early.is_empty(),
        format!("no workload pod was bound while the taint was there (bound early: {early:?})"),
    );
    // The scheduler's message counts untolerated taints without naming them; the node's taints while it
    // waited name the one that held it: after the kubelet's not-ready taint went, only the gate was left.
    let reasons = scheduler_reasons(c);
    f.check(
        "1",
        reasons.iter().any(|r| r.contains("untolerated taint")),
        format!("the scheduler said why the workload waited: {reasons:?}"),
    );
    let held: Vec<Vec<String>> = c
        .nodes
        .between(ni, c.nodes.len())
        .iter()
        .zip(ni..)
        .filter(|(n, i)| name(n) == a && c.nodes_event_time(*i) < released_at)
        .map(|(n, _)| taint_keys(n))
        .collect();
    f.check(
        "1",
        held.last().is_some_and(|t| t == &[GATE.to_string()]),
        format!("just before the gate lifted, the gate was the node's only taint (taints seen: {held:?})"),
    );
    let loader = c
        .pods
        .wait(pods_before, *WAIT, |p| {
            is_loader(p) && on_node(p, a) && running(p)
        })
        .map(|(_, _, p)| p);
    match &loader {
        Some(p) => {
            let inits = init_summary(p);
            f.check(
                "1",
                inits.len() == 3 && inits.iter().all(|(_, code, _)| *code == Some(0)),
                format!("the DaemonSet pod ran copy -> load -> untaint, each exit 0: {inits:?}"),
            );
        }
        None => {
            f.check("1", false, "no Running loader pod on the node".to_string());
        }
    }
    f.check(
        "1",
        running(&wl_pod),
        format!(
            "the workload pod {} became Running on {a} after the gate lifted",
            name(&wl_pod)
        ),
    );

    // The node says what it enforces: one label per loaded profile, written with the untaint.
    let labelled = c.cp.get_json(&["node", a])?;
    let labels = &labelled["metadata"]["labels"];
    let ours: Vec<String> = labels
        .as_object()
        .map(|m| {
            m.keys()
                .filter(|k| k.starts_with("apparmor-profile-loader/"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    f.check(
        "1",
        ["k8s-audit-only", "k8s-deny-write", "k8s-nginx"]
            .iter()
            .all(|p| {
                labels[format!("apparmor-profile-loader/{p}")]
                    .as_str()
                    .is_some_and(|d| d.len() == 12)
            }),
        format!("{a} carries a 12-digit digest label per loaded profile: {ours:?}"),
    );
    f.check(
        "1",
        labelled["metadata"]["annotations"]["apparmor-profile-loader/profiles"]
            .as_str()
            .is_some_and(|s| s.contains("k8s-nginx")),
        "and the annotation apparmor-profile-loader/profiles lists them",
    );
    if let Ok(out) = c.cp.kubectl(
        &["get", "nodes", "-L", "apparmor-profile-loader/k8s-nginx"],
        None,
    ) {
        eprintln!("kubectl get nodes -L apparmor-profile-loader/k8s-nginx\n{out}");
    }

    Ok(NodeA {
        workload: wl_pod,
        loader,
        digest: digest(labels),
    })
}

/// The profile's digest label among a node's labels.
pub(crate) fn digest(labels: &Value) -> Option<String> {
    labels[format!("{LABEL_PREFIX}/{PROFILE}")]
        .as_str()
        .map(String::from)
}

/// Scenario 10's last check: the repository's kustomization applied again rolls node A back to its
/// first digest, for the nodes that follow.
pub(crate) fn scenario_10_rollback(
    c: &Cluster,
    f: &mut Findings,
    a: &str,
    first: Option<&str>,
) -> Result<(), String> {
    // back to the repository's profiles, for the nodes that follow
    let rolled_back = rollout(c, a, |_| Ok(()))?;
    f.check(
        "10",
        rolled_back.running && digest(&rolled_back.labels).as_deref() == first,
        format!(
            "applying the repository's kustomization again rolls the node back to its first digest {first:?}"
        ),
    );

    Ok(())
}

// === scenario 2: the workload is confined =========================================================

pub(crate) fn scenario_2(c: &Cluster, f: &mut Findings, pod: &Value) {
    let Some(id) = container_id(pod, "containerStatuses", "app") else {
        f.check("2", false, "the workload pod has no container ID");
        return;
    };
    let attr = profile_state(c, &id);
    f.check(
        "2",
        attr == format!("{PROFILE} (enforce)"),
        format!("the kernel says the workload process runs under {PROFILE} (enforce): {attr:?}"),
    );
    let exec = |n: u32, path: &str| {
        c.guest.sh(
            &format!("ctr -n k8s.io tasks exec --exec-id probe{n} {id} /bin/touch {path}"),
            Duration::from_secs(60),
        )
    };
    match exec(1, "/data/denied") {
        Ok((rc, out)) => f.check(
            "2",
            rc != 0 && out.contains("Permission denied"),
            format!("a write the profile denies (/data, a writable emptyDir) fails with EACCES: exit {rc}, {out:?}"),
        ),
        Err(e) => f.check("2", false, e),
    };
    match exec(2, "/tmp/allowed") {
        Ok((rc, out)) => f.check(
            "2",
            rc == 0,
            format!("control: a write the profile allows (/tmp) succeeds: exit {rc} {out:?}"),
        ),
        Err(e) => f.check("2", false, e),
    };
}

// === scenario 4: after the gate, only pause runs, with nothing =====================================

pub(crate) fn scenario_4(c: &Cluster, f: &mut Findings, pod: &Value) {
    let running: Vec<String> = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|s| !s["state"]["running"].is_null())
        .filter_map(|s| s["name"].as_str().map(String::from))
        .collect();
    f.check(
        "4",
        running == ["pause"],
        format!("only the pause container runs in the loader pod: {running:?}"),
    );
    let inits_running = init_summary(pod)
        .iter()
        .filter(|(_, c, _)| c.is_none())
        .count();
    f.check(
        "4",
        inits_running == 0,
        "every init container has terminated",
    );
    let Some(id) = container_id(pod, "containerStatuses", "pause") else {
        f.check("4", false, "no pause container ID");
        return;
    };
    let status = c.guest.out(&format!(
        "pid=$(task_pid {id}); grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/$pid/status"
    ));
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| {
                l[k.len()..]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        f.check(
            "4",
            field(cap) == "0000000000000000",
            format!("pause holds no capability: {cap} {}", field(cap)),
        );
    }
    f.check(
        "4",
        field("Uid:") == "65532 65532 65532 65532",
        format!("pause runs as uid 65532: Uid {}", field("Uid:")),
    );
    f.check(
        "4",
        field("NoNewPrivs:") == "1",
        format!(
            "pause cannot gain privileges: NoNewPrivs {}",
            field("NoNewPrivs:")
        ),
    );
    let mounts = c
        .guest
        .out(&format!("pid=$(task_pid {id}); cat /proc/$pid/mountinfo"));
    let token = mounts.contains("serviceaccount");
    f.check(
        "4",
        !token && !mounts.is_empty(),
        format!(
            "pause has no service-account token mounted (mountinfo has 'serviceaccount': {token})"
        ),
    );
    // mountinfo: id parent major:minor root mountpoint options ... - fstype source superoptions
    let writable: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let sep = w.iter().position(|x| *x == "-")?;
            let (mp, opts, fstype) = (w.get(4)?, w.get(5)?, w.get(sep + 1)?);
            let rw = opts.split(',').any(|o| o == "rw");
            let host_backed = !matches!(
                *fstype,
                "proc" | "sysfs" | "tmpfs" | "devpts" | "mqueue" | "cgroup2" | "overlay"
            );
            (rw && host_backed).then(|| format!("{mp} ({fstype})"))
        })
        .collect();
    // /dev/termination-log is the kubelet's per-container file for the termination message
    let unexpected: Vec<&String> = writable
        .iter()
        .filter(|m| !m.starts_with("/dev/termination-log "))
        .collect();
    f.check(
        "4",
        unexpected.is_empty(),
        format!("no writable host mount in pause besides its termination-log file: {writable:?}"),
    );
    let root_ro = mounts.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.get(4) == Some(&"/") && w.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
    });
    f.check("4", root_ro, "pause's root filesystem is read-only");
}

// === scenario 5: untaint used the in-cluster path ==================================================

pub(crate) fn scenario_5(c: &Cluster, f: &mut Findings, pod: &Value) {
    let Some(id) = container_id(pod, "initContainerStatuses", "untaint") else {
        f.check("5", false, "no untaint container ID");
        return;
    };
    let info = c.guest.out(&format!("ctr -n k8s.io containers info {id}"));
    let spec: Value = serde_json::from_str(&info)
        .map(|v: Value| v["Spec"].clone())
        .unwrap_or(Value::Null);
    let env = strings(&spec["process"]["env"]);
    let has = |kv: &str| env.iter().any(|e| e == kv);
    f.check(
        "5",
        has("KUBERNETES_SERVICE_HOST=10.96.0.1") && has("KUBERNETES_SERVICE_PORT=443"),
        format!(
            "untaint got the kubernetes Service address from the kubelet: {:?}",
            env.iter()
                .filter(|e| e.starts_with("KUBERNETES_"))
                .collect::<Vec<_>>()
        ),
    );
    f.check(
        "5",
        !env.iter().any(|e| e.starts_with("KUBECONFIG=")),
        "no KUBECONFIG in untaint's environment",
    );
    let args = strings(&spec["process"]["args"]);
    f.check(
        "5",
        !args.iter().any(|a| a.contains("kubeconfig")),
        format!("untaint ran without --kubeconfig: {args:?}"),
    );
    let token_mount = spec["mounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .any(|m| {
            m["destination"] == "/var/run/secrets/kubernetes.io/serviceaccount"
                && m["source"]
                    .as_str()
                    .is_some_and(|s| s.contains("kubernetes.io~projected"))
        });
    f.check(
        "5",
        token_mount,
        "the token, CA and namespace came from the projected volume at the standard path",
    );
    // the connection itself: pod -> 10.96.0.1:443, DNATed by kube-proxy to 10.0.2.2:<API server port>
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    let ct = c.guest.out(&format!(
        "sort -u /run/ct-service-{node}.log | grep 'dport=443 ' | sed 's/^ipv4 *2 tcp *6 [0-9]* //' | sort -u"
    ));
    f.check(
        "5",
        ct.lines()
            .any(|l| l.contains("src=10.0.2.2 dst=") && l.contains(&format!("sport={} ", c.cp.port))),
        format!(
            "the guest's conntrack table had the pod's connection to 10.96.0.1:443 answered by the API server (10.0.2.2:{}): {ct:?}",
            c.cp.port
        ),
    );
    // As deployed, untaint proved the admission policy in force before it wrote: the API
    // server refused its dry-run probe (the kubelet's log of the container, on the node).
    let log = c.guest.out(&format!(
        "cat /var/log/pods/{}_{}_{}/untaint/*.log",
        pod["metadata"]["namespace"].as_str().unwrap_or(""),
        pod["metadata"]["name"].as_str().unwrap_or(""),
        pod["metadata"]["uid"].as_str().unwrap_or("")
    ));
    f.check(
        "5",
        has("APPARMOR_LOADER_REQUIRE_ADMISSION_POLICY=true")
            && log.contains("the admission policy confines this loader")
            && log.contains("confined by the admission policy"),
        format!(
            "untaint required the admission policy and the API server's refusal of its probe proved it in force: {:?}",
            log.lines()
                .filter(|l| l.contains("admission") || l.contains("untaint complete"))
                .collect::<Vec<_>>()
        ),
    );
}
