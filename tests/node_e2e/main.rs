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
//!
//! This file holds the session (control plane, guest, the order of the scenarios), what the scenarios
//! share and the `#[test]`s; the scenarios are in one file per phase: `gate` (node A: 1, 2, 4, 5), `day2`
//! (node A: 7, 9, 10), `gated_nodes` (nodes B and C: 3, 6), `label_gate` (node D: 8) and `reboot` (11).

mod day2;
mod gate;
mod gated_nodes;
mod label_gate;
mod reboot;

use day2::*;
use gate::*;
use gated_nodes::*;
use label_gate::*;
use reboot::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aapl_test_support::node::{ControlPlane, Guest, Prereqs, Watch};
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
        let p = aapl_test_support::node::prerequisites()?;
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
    let base = aapl_test_support::target_tmpdir();
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
    let rendered = cp.render(&aapl_test_support::repo().join("manifests"))?;
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
    let repo = aapl_test_support::repo();
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
    c.guest.out(UBUNTU_2404);
    let cn = "aapl-node-c";
    scenario_6(c, f, cn)?;
    // --- node D: no gate: the price of the gate, and the label as the gate (scenario 8) --------------
    unregister(c, cn)?;
    c.guest.out(DEBIAN_13);
    let d = "aapl-node-d";
    let (ni, pods_before) = ungated_node_runs_the_workload(c, f, d)?;
    scenario_8(c, f, d, ni, pods_before);
    Ok(())
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
