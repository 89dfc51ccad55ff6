//! `pause` and the `untaint` command line, as the built binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::loader;
use apparmor_profile_loader::exit_code;
use predicates::prelude::*;

/// Bound on the anonymous memory (heap, stacks, written data pages) of the release build's
/// `pause`, the one container that runs for the pod's whole life on every node. Measured
/// 0.6 MiB (README "Performance"); the bound leaves 3x headroom for allocator and libc changes
/// while catching a runtime that starts worker threads or keeps buffers.
const PAUSE_ANON_RSS_BOUND_KIB: u64 = 2048;

/// A running `pause` of `binary`, once it said it waits for SIGTERM.
struct Pause {
    child: std::process::Child,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Pause {
    fn start(binary: &Path) -> Pause {
        let mut child = Command::new(binary)
            .arg("pause")
            .env_clear()
            .env("NODE_NAME", "test-node")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("pausing until SIGTERM"), "{line}");
        Pause { child, stderr }
    }

    /// A `/proc/<pid>/status` field in its unit (kB for sizes).
    fn status(&self, name: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status:\n{status}"))
    }

    /// SIGTERM, then the exit status and the rest of stderr.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let exit = self.child.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stderr, &mut rest).unwrap();
        (exit, rest)
    }
}

#[test]
fn pause_exits_zero_on_sigterm_with_one_thread() {
    let pause = Pause::start(Path::new(env!("CARGO_BIN_EXE_apparmor-loader")));
    assert_eq!(
        pause.status("Threads"),
        1,
        "pause must not start worker threads"
    );
    let (exit, rest) = pause.terminate();
    assert_eq!(exit.code(), Some(0));
    assert!(rest.contains("received SIGTERM, exiting"), "{rest}");
}

#[test]
fn pause_release_build_stays_under_its_anonymous_memory_bound() {
    let Some(binary) = crate::support::release_binary("pause memory bound") else {
        return;
    };
    let pause = Pause::start(&binary);
    let (rss, anon) = (pause.status("VmRSS"), pause.status("RssAnon"));
    println!(
        "METRIC pause_rss_kib {rss}\nMETRIC pause_anon_rss_kib {anon}\nMETRIC pause_anon_rss_of_bound {:.2}",
        anon as f64 / PAUSE_ANON_RSS_BOUND_KIB as f64
    );
    assert!(
        anon <= PAUSE_ANON_RSS_BOUND_KIB,
        "pause (release build {}) holds {anon} KiB of anonymous memory, over the {PAUSE_ANON_RSS_BOUND_KIB} KiB bound",
        binary.display()
    );
    let (exit, _) = pause.terminate();
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn untaint_without_node_name_says_where_it_comes_from() {
    loader()
        .env_remove("NODE_NAME")
        .arg("untaint")
        .assert()
        .code(i32::from(exit_code::USAGE))
        .stderr(predicate::str::contains("NODE_NAME is not set"))
        .stderr(predicate::str::contains("spec.nodeName"));
}

#[test]
fn a_reserved_label_prefix_is_a_usage_error_before_any_request() {
    for prefix in [
        "kubernetes.io",
        "node-restriction.kubernetes.io",
        "x.k8s.io",
    ] {
        loader()
            .env("NODE_NAME", "aks-user-0")
            .env("APPARMOR_LOADER_LABEL_PREFIX", prefix)
            .arg("untaint")
            .assert()
            .code(i32::from(exit_code::USAGE))
            .stderr(predicate::str::contains("reserved"));
    }
}

/// The condition's message carries the loaded set's digest: without the report there is none,
/// and the flag (or its env var, as the component sets it) is a usage error before any request;
/// a value that is not a boolean is one too.
#[test]
fn node_condition_without_a_node_report_is_a_usage_error_before_any_request() {
    loader()
        .env("NODE_NAME", "aks-user-0")
        .args(["untaint", "--node-condition"])
        .assert()
        .code(i32::from(exit_code::USAGE))
        .stderr(predicate::str::contains("--node-report"));
    loader()
        .env("NODE_NAME", "aks-user-0")
        .env("APPARMOR_LOADER_NODE_CONDITION", "true")
        .arg("untaint")
        .assert()
        .code(i32::from(exit_code::USAGE))
        .stderr(predicate::str::contains("--node-report"));
    loader()
        .env("NODE_NAME", "aks-user-0")
        .env("APPARMOR_LOADER_NODE_CONDITION", "maybe")
        .args(["untaint", "--node-report", "/nonexistent"])
        .assert()
        .code(i32::from(exit_code::USAGE))
        .stderr(predicate::str::contains("maybe"));
}

#[test]
fn malformed_taint_flag_is_a_usage_error() {
    for (flag, reason) in [
        ("WaitingForAppArmorProfiles=true", "no effect"),
        (
            "WaitingForAppArmorProfiles=true:Sometimes",
            "expected one of",
        ),
        ("bad key=true:NoSchedule", "only letters"),
    ] {
        loader()
            .args(["untaint", "--taint", flag])
            .assert()
            .code(i32::from(exit_code::USAGE))
            .stderr(predicate::str::contains(reason));
    }
    loader()
        .args(["untaint"])
        .env("APPARMOR_LOADER_TAINTS", "gate:NoSchedule,oops")
        .assert()
        .code(i32::from(exit_code::USAGE))
        .stderr(predicate::str::contains("\"oops\" has no effect"));
}

#[test]
fn unreachable_kubeconfig_is_a_clear_client_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    loader()
        .arg("untaint")
        .arg("--kubeconfig")
        .arg(&missing)
        .assert()
        .code(i32::from(exit_code::KUBERNETES_API))
        .stderr(predicate::str::contains("cannot build a Kubernetes client"));
}
