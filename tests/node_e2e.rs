//! The whole gate on a real node (issue 12): the DaemonSet from `manifests/` scheduled by a real control
//! plane (kube-apiserver + etcd, kube-scheduler, kube-controller-manager on this machine) onto a real kubelet
//! (containerd, runc, CNI bridge, kube-proxy in nftables mode) in a QEMU guest running the AppArmor kernel,
//! with a confined workload waiting behind the gate taint. Nothing is mocked.
//!
//! One boot serves scenarios 1 to 10 (TCG is slow); the guest registers as four nodes in turn:
//!   aapl-node-a  gate taint                       scenarios 1, 2, 4, 5, 7, 9, 10; node_gate_ms,
//!                                                 workload_running_ms, rollout_node_ms
//!   aapl-node-b  gate taint, broken ConfigMap     scenario 3
//!   aapl-node-c  autoscaler-prefixed gate taint   scenario 6
//!   aapl-node-d  no taint                         scenario 8; gate_overhead_ms (the same workload without
//!                                                 the gate)
//! then reboots from its disk and comes back as aapl-node-d (scenario 11).
//! The session records checks per scenario and each `#[test]` asserts its own. Logs of every component stay
//! in `target/x86_64-unknown-linux-gnu/tmp/node_e2e/`. Run: `cargo test --test node_e2e -- --nocapture`.

mod node_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use node_common::{ControlPlane, Guest, Prereqs, Watch};
use serde_json::Value;

const GATE: &str = "WaitingForAppArmorProfiles";
const AUTOSCALER_GATE: &str =
    "startup-taint.cluster-autoscaler.kubernetes.io/WaitingForAppArmorProfiles";
const WORKLOAD_NS: &str = "aapl-workload";
const PROFILE: &str = "k8s-deny-write";
/// Bound of one wait for the cluster (a kubelet's first start under TCG is the slowest step); env
/// `AAPL_NODE_WAIT` (seconds) overrides it.
static WAIT: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
    Duration::from_secs(
        std::env::var("AAPL_NODE_WAIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    )
});

/// What the session saw: checks per scenario ("1".."11"), metrics, and why it stopped early (if it did).
#[derive(Default, Debug)]
struct Findings {
    checks: BTreeMap<String, Vec<(bool, String)>>,
    metrics: Vec<(String, f64)>,
    aborted: Option<String>,
    /// The scenario under way when the session stopped: it fails, whatever checks it passed before.
    aborted_in: Option<String>,
    /// The scenario begun or checked last.
    current: String,
    wall: Duration,
}

impl Findings {
    /// Marks `scenario` as under way (before its first check).
    fn begin(&mut self, scenario: &str) {
        self.current = scenario.into();
    }

    fn check(&mut self, scenario: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.current = scenario.into();
        let detail = detail.into();
        eprintln!(
            "[scenario {scenario}] {} {detail}",
            if ok { "PASS" } else { "FAIL" }
        );
        self.checks
            .entry(scenario.into())
            .or_default()
            .push((ok, detail));
        ok
    }

    fn metric(&mut self, name: &str, value: f64) {
        println!("METRIC {name} {value:.0}");
        self.metrics.push((name.into(), value));
    }
}

fn session() -> Option<&'static Findings> {
    static S: OnceLock<Option<Findings>> = OnceLock::new();
    S.get_or_init(|| {
        let p = node_common::prerequisites()?;
        let started = Instant::now();
        let mut f = Findings::default();
        let mut result = run(&p, &mut f);
        // A guest kernel soft lockup is QEMU TCG starved of host CPU, not the product: a new
        // session, from scratch, up to LOCKUP_RETRIES times. Any other failure stands as it is.
        for _ in 0..LOCKUP_RETRIES {
            match &result {
                Err(e) if e.contains(LOCKED_UP) => {
                    eprintln!(
                        "node_e2e: {e}\nnode_e2e: an emulator fault, not the product's: one more session"
                    );
                    f = Findings::default();
                    result = run(&p, &mut f);
                }
                _ => break,
            }
        }
        if let Err(e) = result {
            eprintln!("node_e2e session stopped: {e}");
            f.aborted = Some(e);
            f.aborted_in = Some(f.current.clone());
        }
        f.wall = started.elapsed();
        println!(
            "METRIC node_e2e_wall_s {:.0} (whole session: control plane, images, boot, 4 registrations)",
            f.wall.as_secs_f64()
        );
        Some(f)
    })
    .as_ref()
}

fn assert_scenario(scenario: &str) {
    let Some(f) = session() else { return };
    let checks = f.checks.get(scenario).cloned().unwrap_or_default();
    let failed: Vec<&String> = checks
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, d)| d)
        .collect();
    if !checks.is_empty() && failed.is_empty() && f.aborted.is_none() {
        eprintln!("scenario {scenario}: {} checks passed", checks.len());
        return;
    }
    if !checks.is_empty() && failed.is_empty() && f.aborted_in.as_deref() != Some(scenario) {
        // the session stopped later than this scenario: its own checks stand
        eprintln!(
            "scenario {scenario}: {} checks passed (the session stopped later: {})",
            checks.len(),
            f.aborted.as_deref().unwrap_or("")
        );
        return;
    }
    panic!(
        "scenario {scenario} failed\nfailed checks:\n  {}\n{}all checks:\n  {}",
        failed
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        f.aborted
            .as_ref()
            .map(|a| format!("the session stopped: {a}\n"))
            .unwrap_or_default(),
        checks
            .iter()
            .map(|(ok, d)| format!("{} {d}", if *ok { "PASS" } else { "FAIL" }))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

// === the session =================================================================================

fn out_dir() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let d = base.join("node_e2e");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create the node_e2e log dir");
    d
}

struct Cluster<'a> {
    cp: &'a ControlPlane,
    nodes: &'a Watch,
    pods: &'a Watch,
    guest: &'a Guest,
}

fn taint_keys(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["key"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn is_workload(pod: &Value) -> bool {
    pod["metadata"]["namespace"] == WORKLOAD_NS
}

fn is_loader(pod: &Value) -> bool {
    pod["metadata"]["namespace"] == "kube-system"
        && pod["metadata"]["labels"]["app.kubernetes.io/name"] == "apparmor-profile-loader"
}

fn on_node(pod: &Value, node: &str) -> bool {
    pod["spec"]["nodeName"] == node && pod["metadata"]["deletionTimestamp"].is_null()
}

fn running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
}

/// The container ID (without `containerd://`) of container `c` in the pod's (init) container statuses.
fn container_id(pod: &Value, list: &str, c: &str) -> Option<String> {
    pod["status"][list].as_array()?.iter().find_map(|s| {
        (s["name"] == c)
            .then(|| s["containerID"].as_str())
            .flatten()
            .map(|id| id.trim_start_matches("containerd://").to_string())
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run(p: &Prereqs, f: &mut Findings) -> Result<(), String> {
    let dir = out_dir();
    eprintln!("node_e2e: logs in {}", dir.display());
    let t = Instant::now();
    let cp = ControlPlane::start(p, &dir)?;
    eprintln!(
        "control plane up at {} in {:.1}s",
        cp.server_url,
        t.elapsed().as_secs_f64()
    );
    let nodes = Watch::start(&cp, "nodes")?;
    let pods = Watch::start(&cp, "pods")?;

    // what an operator applies: the kustomization (profiles ConfigMap, RBAC, DaemonSet, admission policy)
    let rendered = cp.render(&node_common::repo().join("manifests"))?;
    let items = rendered.as_array().cloned().unwrap_or_default();
    apply_retrying(&cp, &items)?;

    // the guest: the cached base tree + this run's payload
    let initrd = build_initrd(p, &cp, &dir)?;
    let disk = node_disk(&dir)?;
    let boot = Instant::now();
    let guest = Guest::boot(p, &initrd, &disk, &dir, 3072, GUEST_LIFETIME)?;
    eprintln!(
        "guest ready in {:.1}s:\n  {}",
        boot.elapsed().as_secs_f64(),
        guest.events().join("\n  ")
    );
    let c = Cluster {
        cp: &cp,
        nodes: &nodes,
        pods: &pods,
        guest: &guest,
    };
    let result = scenarios(&c, f).map_err(|e| match guest_lockup(&guest) {
        Some(l) if !e.contains(LOCKED_UP) => format!("{e}\n({LOCKED_UP}: {l})"),
        _ => e,
    });
    if result.is_err() {
        let _ = std::fs::write(dir.join("guest-logs.txt"), guest.out(GUEST_DIAG));
        eprintln!("guest logs in {}", dir.join("guest-logs.txt").display());
    }
    // scenario 11 last: the node reboots from its disk
    let result = result.and_then(|()| {
        let before = before_reboot(&cp, &pods, "aapl-node-d")?;
        // what the node wrote must be on its disk before QEMU goes (a lost write would read as
        // a loader failure after the reboot)
        match guest.sh("sync", Duration::from_secs(120))? {
            (0, _) => {}
            (rc, out) => return Err(format!("sync before the reboot: exit {rc}: {out}")),
        }
        drop(guest);
        let dir = dir.join("reboot");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let guest = Guest::boot(p, &initrd, &disk, &dir, 3072, GUEST_LIFETIME)?;
        let c = Cluster {
            cp: &cp,
            nodes: &nodes,
            pods: &pods,
            guest: &guest,
        };
        let result = scenario_11(&c, f, &before);
        if result.is_err() {
            let _ = std::fs::write(dir.join("guest-logs.txt"), guest.out(GUEST_DIAG));
        }
        result
    });
    let _ = std::fs::write(
        dir.join("cluster-state.json"),
        cp.kubectl(&["get", "nodes,pods,events", "-A", "-o", "json"], None)
            .unwrap_or_default(),
    );
    result
}

/// How long a guest may run (QEMU is killed after it).
const GUEST_LIFETIME: Duration = Duration::from_secs(45 * 60);

/// The node's disk: a raw ext4 image the guest keeps `/etc/apparmor.d` and the loader's cache on,
/// so that a second boot finds them (scenario 11).
fn node_disk(dir: &Path) -> Result<PathBuf, String> {
    let disk = dir.join("node-disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(128 << 20))
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    let out = Command::new("mkfs.ext4")
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .args(["-q", "-F"])
        .arg(&disk)
        .output()
        .map_err(|e| format!("mkfs.ext4 (Debian package e2fsprogs): {e}"))?;
    out.status
        .success()
        .then_some(disk)
        .ok_or_else(|| format!("mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr)))
}

/// kubectl apply, again while the API server is still creating its defaults (namespaces, priority classes).
fn apply_retrying(cp: &ControlPlane, items: &[Value]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match cp.apply(items) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// What the guest shows about itself when something went wrong.
const GUEST_DIAG: &str = "for f in /var/log/*.log; do echo \"== $f\"; tail -n 60 $f; done; \
    for f in /var/log/pods/*/*/*.log; do echo \"== $f\"; tail -n 20 $f; done; \
    echo '== nft'; nft list ruleset | head -n 120; echo '== conntrack'; head -n 40 /proc/net/nf_conntrack; \
    echo '== routes'; ip route; ip -o addr";

fn build_initrd(p: &Prereqs, cp: &ControlPlane, dir: &Path) -> Result<PathBuf, String> {
    let root = dir.join("payload");
    let aapl = root.join("aapl");
    let sh = |script: &str| -> Result<(), String> {
        let st = Command::new("bash")
            .args(["-c", script])
            .status()
            .map_err(|e| e.to_string())?;
        st.success()
            .then_some(())
            .ok_or_else(|| format!("`{script}` failed ({st})"))
    };
    let repo = node_common::repo();
    std::fs::create_dir_all(aapl.join("etc/kubernetes")).map_err(|e| e.to_string())?;
    sh(&format!(
        "cp -a {g}/etc/. {a}/etc/ && cp {g}/init {r}/init && chmod 0755 {r}/init",
        g = repo.join("tests/node/guest").display(),
        a = aapl.display(),
        r = root.display()
    ))?;
    let t = Instant::now();
    let out = Command::new("bash")
        .arg(repo.join("tests/node/build-images.sh"))
        .arg(aapl.join("images"))
        .arg(&p.loader)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "tests/node/build-images.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("images built in {:.1}s", t.elapsed().as_secs_f64());
    let k = aapl.join("etc/kubernetes");
    std::fs::copy(&cp.ca, k.join("ca.crt")).map_err(|e| e.to_string())?;
    for node in ["aapl-node-a", "aapl-node-b", "aapl-node-c", "aapl-node-d"] {
        let kc = cp.guest_kubeconfig(&format!("system:node:{node}"), "system:nodes")?;
        std::fs::write(k.join(format!("kubelet-{node}.kubeconfig")), kc)
            .map_err(|e| e.to_string())?;
    }
    // the built-in ClusterRoleBinding system:node-proxier binds this user
    let kc = cp.guest_kubeconfig("system:kube-proxy", "")?;
    std::fs::write(k.join("kube-proxy.kubeconfig"), kc).map_err(|e| e.to_string())?;
    let initrd = dir.join("initrd.gz");
    sh(&format!(
        "cd {r} && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1 > {d}/payload.cpio.gz && \
         cat {base} {d}/payload.cpio.gz > {i}",
        r = root.display(),
        d = dir.display(),
        base = p.guest_base.display(),
        i = initrd.display()
    ))?;
    Ok(initrd)
}

/// Checks (for `scenario`) that `node`'s first watch event, at `ni`, carries `key`, then waits
/// for the taint with that key to go.
fn registered_with_then_released(
    c: &Cluster,
    f: &mut Findings,
    scenario: &str,
    ni: usize,
    node: &str,
    key: &'static str,
) -> Option<(usize, Instant, Value)> {
    let first = &c.nodes.between(ni, ni + 1)[0];
    f.check(
        scenario,
        taint_keys(first).iter().any(|k| k == key),
        format!(
            "{node} registered with {key} (taints: {:?})",
            taint_keys(first)
        ),
    );
    c.nodes.wait(ni, *WAIT, gate_released(node, key))
}

/// Checks (for `scenario`) that a workload pod created since `pods_before` runs on `node`.
fn workload_runs_on(
    c: &Cluster,
    f: &mut Findings,
    scenario: &str,
    pods_before: usize,
    node: &str,
) -> Option<(usize, Instant, Value)> {
    let wl = c.pods.wait(pods_before, *WAIT, |p| {
        is_workload(p) && on_node(p, node) && running(p)
    });
    f.check(
        scenario,
        wl.is_some(),
        format!("the workload became Running on {node}"),
    );
    wl
}

/// The strings of a JSON array (empty for anything else).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(String::from))
        .collect()
}

/// What a session's error says when the guest kernel reported a soft lockup.
const LOCKED_UP: &str = "the guest kernel locked up";
/// How many new sessions a soft lockup gets before the suite fails.
const LOCKUP_RETRIES: usize = 2;
/// A vCPU stuck this long is given up on: the kernel reports a soft lockup after about 20 s
/// and keeps reporting while the CPU stays stuck; a TCG vCPU that has not run for two minutes
/// has not been seen to come back.
const LOCKUP_GIVE_UP_S: u64 = 120;

/// The guest kernel's last soft lockup report, if it made one.
fn guest_lockup(guest: &Guest) -> Option<String> {
    let console = guest.console_text();
    console
        .lines()
        .rev()
        .find(|l| l.contains("soft lockup"))
        .map(|l| l.trim().to_string())
}

/// Seconds of "CPU#1 stuck for 544s!" in a soft lockup report (0 when absent).
fn stuck_for_s(report: &str) -> u64 {
    report
        .split_once("stuck for ")
        .and_then(|(_, rest)| rest.split_once('s'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn soft_lockup_reports_are_read_for_how_long_the_cpu_was_stuck() {
    let report = "[  632.650607] watchdog: BUG: soft lockup - CPU#1 stuck for 544s! [kubelet:228]";
    assert_eq!(stuck_for_s(report), 544);
    assert_eq!(
        stuck_for_s("watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [x:1]"),
        23
    );
    assert_eq!(stuck_for_s("rcu: INFO: rcu_sched self-detected stall"), 0);
}

/// Registers the guest as `node` with `taints`: returns the index of the node's first watch event and when it
/// arrived (the node is registered).
fn register(c: &Cluster, node: &str, taints: &str) -> Result<(usize, Instant), String> {
    let from = c.nodes.len();
    let (rc, out) = c.guest.sh(
        &format!("node_up {node} '{taints}'"),
        Duration::from_secs(60),
    )?;
    if rc != 0 {
        return Err(format!("node_up {node}: {out}"));
    }
    eprintln!("{out}");
    // Waited for in slices, so that a guest whose vCPU QEMU stopped running is given up on
    // within minutes instead of at the deadline.
    let deadline = Instant::now() + *WAIT;
    let (i, at, _) = loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(10));
        if let Some(found) = c.nodes.wait(from, slice, |n| name(n) == node) {
            break found;
        }
        if let Some(l) = guest_lockup(c.guest).filter(|l| stuck_for_s(l) >= LOCKUP_GIVE_UP_S) {
            return Err(format!(
                "node {node} did not register: {LOCKED_UP} ({l}); QEMU TCG under host CPU starvation"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {node} did not register within {:?}; kubelet log:\n{}",
                *WAIT,
                c.guest
                    .out(&format!("tail -n 40 /var/log/kubelet-{node}.log"))
            ));
        }
    };
    Ok((i, at))
}

/// Takes the current node out: kubelet and kube-proxy stopped, containers gone, Node and its pods deleted.
fn unregister(c: &Cluster, node: &str) -> Result<(), String> {
    let (_, out) = c.guest.sh("node_down", Duration::from_secs(120))?;
    eprintln!("{out}");
    c.cp.kubectl(&["delete", "node", node, "--wait=false"], None)?;
    c.cp.kubectl(
        &[
            "delete",
            "pods",
            "-A",
            "--field-selector",
            &format!("spec.nodeName={node}"),
            "--force",
            "--grace-period=0",
        ],
        None,
    )?;
    Ok(())
}

/// Saves what the guest shows about itself (logs, nftables, conntrack) as `guest-<label>.txt`.
fn save_guest_diag(c: &Cluster, label: &str) {
    let path = c.cp.dir.join(format!("guest-{label}.txt"));
    let _ = std::fs::write(&path, c.guest.out(GUEST_DIAG));
    eprintln!("guest state saved in {}", path.display());
}

fn gate_released(node: &str, key: &'static str) -> impl Fn(&Value) -> bool {
    let node = node.to_string();
    move |n| name(n) == node && !taint_keys(n).iter().any(|k| k == key)
}

fn scenarios(c: &Cluster, f: &mut Findings) -> Result<(), String> {
    // --- node A: the gate (scenarios 1, 2, 4, 5, 7, 9, 10) ------------------------------------------
    let a = "aapl-node-a";
    let gate = gate_lifts(c, f, a)?;
    // scenario 5 right away: its conntrack evidence lasts as long as TIME_WAIT (120 s)
    scenario_5_untaint_went_through_the_service(c, f, a, gate.pods_before);
    let node_a = scenario_1(c, f, a, &gate)?;
    scenario_2(c, f, &node_a.workload);
    if let Some(p) = &node_a.loader {
        scenario_4(c, f, p);
    }
    scenario_7(c, f, a, &node_a.workload)?;
    scenario_9(c, f, a, &node_a.workload, node_a.digest.as_deref())?;
    scenario_10(c, f, a, &node_a.workload)?;
    scenario_10_rollback(c, f, a, node_a.digest.as_deref())?;
    // --- node B: a broken ConfigMap keeps the gate shut (scenario 3) ---------------------------------
    unregister(c, a)?;
    let b = "aapl-node-b";
    scenario_3(c, f, b)?;
    // --- node C: the autoscaler-prefixed gate taint (scenario 6) -------------------------------------
    unregister(c, b)?;
    c.guest.out(DEBIAN_13);
    let cn = "aapl-node-c";
    scenario_6(c, f, cn)?;
    // --- node D: no gate: the price of the gate, and the label as the gate (scenario 8) --------------
    unregister(c, cn)?;
    let d = "aapl-node-d";
    let (ni, pods_before) = ungated_node_runs_the_workload(c, f, d)?;
    scenario_8(c, f, d, ni, pods_before);
    Ok(())
}

// === node A: the gate ============================================================================

/// Node A registered with the gate taint and the workload applied, up to the taint's removal.
struct GateLifted {
    pods_before: usize,
    ni: usize,
    registered: Instant,
    released_at: Instant,
}

/// Registers `a` with the gate taint, applies the workload and waits for the loader to lift the gate
/// (scenario 1's first check; `node_gate_ms`).
fn gate_lifts(c: &Cluster, f: &mut Findings, a: &str) -> Result<GateLifted, String> {
    let pods_before = c.pods.len();
    let (ni, registered) = register(c, a, &format!("{GATE}=true:NoSchedule"))?;
    // the workload arrives once the node is there (and tainted): the scheduler then says why it waits (it
    // would not retry a pod that was pending before, since the new node's taint does not help it)
    let workload =
        c.cp.render(&node_common::repo().join("tests/node/workload.yaml"))?;
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
fn scenario_5_untaint_went_through_the_service(
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
struct NodeA {
    /// The workload pod, Running.
    workload: Value,
    /// The DaemonSet pod, Running.
    loader: Option<Value>,
    /// The node's first digest label of [`PROFILE`].
    digest: Option<String>,
}

/// Scenario 1: the workload was not bound while the taint was there and runs once it went; the node
/// carries a digest label per loaded profile (`workload_running_ms`).
fn scenario_1(c: &Cluster, f: &mut Findings, a: &str, gate: &GateLifted) -> Result<NodeA, String> {
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
fn digest(labels: &Value) -> Option<String> {
    labels[format!("{LABEL_PREFIX}/{PROFILE}")]
        .as_str()
        .map(String::from)
}

/// Scenario 10's last check: the repository's kustomization applied again rolls node A back to its
/// first digest, for the nodes that follow.
fn scenario_10_rollback(
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

// === node B: a broken ConfigMap keeps the gate shut ==============================================

/// Scenario 3: a broken ConfigMap keeps node `b` (an AppArmor 3 node) tainted with the reason in the
/// pod status, so does a 4.0-only profile; fixing the ConfigMap releases it.
fn scenario_3(c: &Cluster, f: &mut Findings, b: &str) -> Result<(), String> {
    let good = configmap(c)?;
    let mut broken = good.clone();
    broken["data"]["aapl-broken"] = Value::String(
        "abi <abi/3.0>,\n#include <tunables/global>\nprofile aapl-broken {\n  /etc/** rw\n  this is not a rule,\n}\n"
            .into(),
    );
    strip_meta(&mut broken);
    c.cp.apply(&[broken])?;
    // node B boots AppArmor 3 (Ubuntu 22.04, single-quoted as os-release(5) allows, behind Ubuntu's link)
    c.guest.out(UBUNTU_2204);
    let pods_before = c.pods.len();
    let (ni, _) = register(c, b, &format!("{GATE}=true:NoSchedule"))?;
    // copy fails; the kubelet restarts it with back-off: wait for the second failure
    let failed = c.pods.wait(pods_before, *WAIT, |p| {
        is_loader(p) && on_node(p, b) && copy_failures(p) >= 2
    });
    let Some((_, _, lp)) = failed else {
        return Err(format!(
            "the loader pod on {b} never failed twice; {}",
            loader_pod_summary(c, b)
        ));
    };
    let node = c.cp.get_json(&["node", b])?;
    f.check(
        "3",
        taint_keys(&node).iter().any(|k| k == GATE),
        format!(
            "{b} keeps the gate taint while the ConfigMap is broken (taints {:?})",
            taint_keys(&node)
        ),
    );
    let wl = c.cp.get_json(&["pods", "-n", WORKLOAD_NS])?;
    let wl_items = wl["items"].as_array().cloned().unwrap_or_default();
    f.check(
        "3",
        !wl_items.is_empty()
            && wl_items
                .iter()
                .all(|p| p["status"]["phase"] == "Pending" && p["spec"]["nodeName"].is_null()),
        format!(
            "the workload stays Pending and unbound: {:?}",
            wl_items
                .iter()
                .map(|p| format!(
                    "{} {} {}",
                    name(p),
                    p["status"]["phase"],
                    p["spec"]["nodeName"]
                ))
                .collect::<Vec<_>>()
        ),
    );
    let msg = copy_message(&lp);
    f.check(
        "3",
        msg.contains("aapl-broken"),
        format!("the loader pod's status names the broken key without kubectl logs: {msg:?}"),
    );
    let describe =
        c.cp.kubectl(&["describe", "pod", "-n", "kube-system", name(&lp)], None)
            .unwrap_or_default();
    f.check(
        "3",
        describe.contains("aapl-broken"),
        "`kubectl describe pod` shows the reason",
    );
    // The operator fixes the syntax, but the profile now asks for AppArmor 4 (`userns,`): the image's 4.1
    // parser compiles it, the node's own AppArmor 3 boot could not. copy refuses it, the node stays gated.
    let lp = scenario_3_reboot_parity(c, f, b, &good, &lp)?;
    // the operator fixes the ConfigMap and restarts the pod
    let mut fixed = good;
    strip_meta(&mut fixed);
    c.cp.kubectl(&["replace", "-f", "-"], Some(&fixed.to_string()))?;
    c.cp.kubectl(
        &[
            "delete",
            "pod",
            "-n",
            "kube-system",
            name(&lp),
            "--wait=false",
        ],
        None,
    )?;
    let released = c.nodes.wait(ni, *WAIT, gate_released(b, GATE));
    if released.is_none() {
        save_guest_diag(c, b);
    }
    f.check(
        "3",
        released.is_some(),
        format!("fixing the ConfigMap and restarting the pod released {b}"),
    );
    workload_runs_on(c, f, "3", pods_before, b);

    Ok(())
}

// === node C: the autoscaler-prefixed gate taint ==================================================

/// Scenario 6: the autoscaler-prefixed gate taint on node `cn` is released the same way.
fn scenario_6(c: &Cluster, f: &mut Findings, cn: &str) -> Result<(), String> {
    let pods_before = c.pods.len();
    let (ni, reg) = register(c, cn, &format!("{AUTOSCALER_GATE}=true:NoSchedule"))?;
    let released = registered_with_then_released(c, f, "6", ni, cn, AUTOSCALER_GATE);
    if released.is_none() {
        save_guest_diag(c, cn);
    }
    f.check(
        "6",
        released.is_some(),
        format!(
            "the prefixed gate taint was removed from {cn}{}",
            released
                .as_ref()
                .map(|(_, at, _)| format!(" after {:.1}s", (*at - reg).as_secs_f64()))
                .unwrap_or_default()
        ),
    );
    let wl = workload_runs_on(c, f, "6", pods_before, cn);
    if let (Some((_, rel_at, _)), Some((_, _, _))) = (&released, &wl) {
        let early = c
            .pods
            .between(pods_before, c.pods.len())
            .iter()
            .zip(pods_before..)
            .any(|(p, i)| {
                is_workload(p) && p["spec"]["nodeName"] == cn && c.pods_event_time(i) < *rel_at
            });
        f.check(
            "6",
            !early,
            "no workload pod was bound to the node while the prefixed taint was there",
        );
    }

    Ok(())
}

// === node D: no gate =============================================================================

/// Node `d` registered with no taint and the label-requiring workload applied: the workload's time to
/// Running without the gate (`workload_running_nogate_ms`, `gate_overhead_ms`). Returns the nodes' and
/// pods' watch positions before it, for scenario 8.
fn ungated_node_runs_the_workload(
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
        c.cp.render(&node_common::repo().join("tests/node/workload-labelled.yaml"))?;
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
fn node_condition_overlay(c: &Cluster) -> Result<Value, String> {
    let dir = tempfile_dir(c, "node-condition")?;
    for d in ["manifests", "profiles"] {
        copy_tree(&node_common::repo().join(d), &dir.join(d))?;
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

const LABELLED_NS: &str = "aapl-labelled";

/// On a node registered with no gate taint, a workload that requires the label
/// `apparmor-profile-loader/k8s-deny-write` is bound only once the loader has proven the
/// profile loaded and labelled the node, and then runs confined by it.
fn scenario_8(c: &Cluster, f: &mut Findings, node: &str, ni: usize, pods_before: usize) {
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
fn gate_total(f: &Findings) -> Duration {
    f.metrics
        .iter()
        .find(|(n, _)| n == "workload_running_ms")
        .map(|(_, v)| Duration::from_secs_f64(v / 1000.0))
        .unwrap_or_default()
}

impl Cluster<'_> {
    fn pods_event_time(&self, i: usize) -> Instant {
        self.pods.events.0.lock().unwrap()[i].0
    }

    fn nodes_event_time(&self, i: usize) -> Instant {
        self.nodes.events.0.lock().unwrap()[i].0
    }
}

fn scheduler_reasons(c: &Cluster) -> Vec<String> {
    scheduler_reasons_in(c, WORKLOAD_NS)
}

fn scheduler_reasons_in(c: &Cluster, ns: &str) -> Vec<String> {
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
fn init_summary(pod: &Value) -> Vec<(String, Option<i64>, String)> {
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

fn copy_status(pod: &Value) -> Value {
    pod["status"]["initContainerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "copy").cloned())
        .unwrap_or(Value::Null)
}

fn copy_failures(pod: &Value) -> i64 {
    let s = copy_status(pod);
    let failed_now = s["state"]["terminated"]["exitCode"]
        .as_i64()
        .is_some_and(|c| c != 0) as i64;
    s["restartCount"].as_i64().unwrap_or(0) + failed_now
}

fn copy_message(pod: &Value) -> String {
    let s = copy_status(pod);
    for t in [&s["state"]["terminated"], &s["lastState"]["terminated"]] {
        if let Some(m) = t["message"].as_str() {
            return m.to_string();
        }
    }
    String::new()
}

fn loader_pod_summary(c: &Cluster, node: &str) -> String {
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
fn configmap(c: &Cluster) -> Result<Value, String> {
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

fn strip_meta(o: &mut Value) {
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

/// The guest's release as Ubuntu 22.04 (AppArmor 3), or back to Debian 13 (AppArmor 4).
const UBUNTU_2204: &str =
    "printf \"NAME='Ubuntu'\\nID='ubuntu'\\nVERSION_ID='22.04'\\n\" >/usr/lib/os-release";
const DEBIAN_13: &str = "printf 'ID=debian\\nVERSION_ID=\"13\"\\n' >/usr/lib/os-release";

/// Scenario 3, second half: on an AppArmor 3 node, a profile only AppArmor 4 can read keeps the
/// gate shut, with the reason in `kubectl describe pod`. Returns the pod that refused it.
fn scenario_3_reboot_parity(
    c: &Cluster,
    f: &mut Findings,
    node: &str,
    good: &Value,
    failed_pod: &Value,
) -> Result<Value, String> {
    let mut v4_only = good.clone();
    v4_only["data"]["aapl-userns"] = Value::String(
        "abi <abi/4.0>,\ninclude <tunables/global>\nprofile aapl-userns {\n  userns,\n  /tmp/** rw,\n}\n"
            .into(),
    );
    strip_meta(&mut v4_only);
    c.cp.kubectl(&["replace", "-f", "-"], Some(&v4_only.to_string()))?;
    let pods_before = c.pods.len();
    c.cp.kubectl(
        &[
            "delete",
            "pod",
            "-n",
            "kube-system",
            name(failed_pod),
            "--wait=false",
        ],
        None,
    )?;
    let refused = c.pods.wait(pods_before, *WAIT, |p| {
        is_loader(p)
            && on_node(p, node)
            && copy_failures(p) >= 1
            && copy_message(p).contains("aapl-userns")
    });
    let Some((_, _, lp)) = refused else {
        return Err(format!(
            "copy on the AppArmor 3 node {node} never refused the 4.0-only profile; {}",
            loader_pod_summary(c, node)
        ));
    };
    let n = c.cp.get_json(&["node", node])?;
    f.check(
        "3",
        taint_keys(&n).iter().any(|k| k == GATE),
        format!(
            "{node} (Ubuntu 22.04) keeps the gate taint while a profile needs AppArmor 4 (taints {:?})",
            taint_keys(&n)
        ),
    );
    let describe =
        c.cp.kubectl(&["describe", "pod", "-n", "kube-system", name(&lp)], None)
            .unwrap_or_default();
    f.check(
        "3",
        describe.contains("ubuntu 22.04") && describe.contains("AppArmor 3"),
        format!(
            "`kubectl describe pod` says the node's own AppArmor 3 boot cannot load it: {:?}",
            copy_message(&lp)
        ),
    );
    Ok(lp)
}

// === scenario 11: the node reboots ===============================================================

/// What scenario 11 compares after the reboot.
struct BeforeReboot {
    node: String,
    labels: Value,
    workload: String,
    workload_container: String,
    load_started: Value,
    /// When the node went down (taken just before the guest is stopped).
    down_since: Instant,
}

fn before_reboot(cp: &ControlPlane, pods: &Watch, node: &str) -> Result<BeforeReboot, String> {
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
fn ours(node: &Value) -> Value {
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

fn init_status(pod: &Value, container: &str) -> Value {
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
fn scenario_11(c: &Cluster, f: &mut Findings, before: &BeforeReboot) -> Result<(), String> {
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

// === scenarios 9 and 10: day 2, a profile change rolls out by itself, a broken one halts ===========

const LABEL_PREFIX: &str = "apparmor-profile-loader";

/// What a rollout of an edited kustomize input did on `node`.
struct Rollout {
    /// When `kubectl apply` of the new objects returned.
    applied: Instant,
    /// The DaemonSet's loader pod before (name, controller-revision-hash) and the one that
    /// replaced it.
    old_pod: Option<(String, String)>,
    new_pod: Option<Value>,
    /// Whether the new pod ran copy -> load -> untaint and is Running.
    running: bool,
    /// The node's labels when the new pod was Running or had failed (see `rollout`).
    labels: Value,
    /// Index and arrival of the first node event after `applied`, for the caller's waits.
    nodes_from: usize,
}

/// Copies `manifests/` and `profiles/` of the repository, lets `edit` change the profiles
/// directory, renders the kustomization as an operator's `kubectl apply -k` would, applies it, and
/// waits for the DaemonSet's own rolling update to replace the loader pod on `node` (no pod is
/// deleted by hand) until the new pod is Running, or its copy failed twice.
fn rollout(
    c: &Cluster,
    node: &str,
    edit: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<Rollout, String> {
    let dir = tempfile_dir(c, "rollout")?;
    for d in ["manifests", "profiles"] {
        copy_tree(&node_common::repo().join(d), &dir.join(d))?;
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

fn tempfile_dir(c: &Cluster, label: &str) -> Result<PathBuf, String> {
    let n = std::fs::read_dir(&c.cp.dir).map(|d| d.count()).unwrap_or(0);
    let dir = c.cp.dir.join(format!("{label}-{n}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
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

fn revision(pod: &Value) -> String {
    pod["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The workload's container writes /data/NAME: Ok(true) when allowed, Ok(false) when AppArmor
/// refused it (EACCES).
fn workload_may_write(c: &Cluster, id: &str, probe: &str) -> Result<bool, String> {
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

fn profile_state(c: &Cluster, id: &str) -> String {
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
fn scenario_9(
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
fn scenario_10(c: &Cluster, f: &mut Findings, node: &str, wl_pod: &Value) -> Result<(), String> {
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
fn scenario_7(c: &Cluster, f: &mut Findings, node: &str, wl_pod: &Value) -> Result<(), String> {
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

// === scenario 2: the workload is confined =========================================================

fn scenario_2(c: &Cluster, f: &mut Findings, pod: &Value) {
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

fn scenario_4(c: &Cluster, f: &mut Findings, pod: &Value) {
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

fn scenario_5(c: &Cluster, f: &mut Findings, pod: &Value) {
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
}

// === the tests ====================================================================================

#[test]
fn scenario_1_workload_waits_behind_the_taint_until_profiles_are_loaded() {
    assert_scenario("1");
}

#[test]
fn scenario_2_workload_runs_confined_by_the_loaded_profile() {
    assert_scenario("2");
}

#[test]
fn scenario_3_broken_configmap_keeps_the_node_gated_and_says_why() {
    assert_scenario("3");
}

#[test]
fn scenario_4_after_the_gate_only_an_unprivileged_pause_runs() {
    assert_scenario("4");
}

#[test]
fn scenario_5_untaint_uses_the_in_cluster_service_path() {
    assert_scenario("5");
}

#[test]
fn scenario_6_autoscaler_prefixed_gate_is_released_the_same_way() {
    assert_scenario("6");
}

#[test]
fn scenario_7_a_removed_profile_never_unconfines_the_running_workload() {
    assert_scenario("7");
}

#[test]
fn scenario_8_a_workload_that_requires_the_profile_label_waits_for_it_without_a_taint() {
    assert_scenario("8");
}

#[test]
fn scenario_9_a_profile_change_rolls_out_by_itself_and_the_workload_gets_the_new_rules() {
    assert_scenario("9");
}

#[test]
fn scenario_10_a_broken_change_halts_at_the_node_which_keeps_its_policy_and_labels() {
    assert_scenario("10");
}

#[test]
fn scenario_11_after_a_reboot_the_node_s_own_boot_confines_the_workload_and_the_loader_changes_nothing()
 {
    assert_scenario("11");
}

#[test]
fn metrics_are_measured_in_one_boot() {
    let Some(f) = session() else { return };
    for m in [
        "node_gate_ms",
        "workload_running_ms",
        "gate_overhead_ms",
        "rollout_node_ms",
    ] {
        assert!(
            f.metrics.iter().any(|(n, _)| n == m),
            "METRIC {m} was not measured (session: {:?})",
            f.aborted
        );
    }
}
