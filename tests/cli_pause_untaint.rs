//! `pause` and the `untaint` command line, as the built binary.

mod cli_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use cli_support::loader;
use predicates::prelude::*;

#[test]
fn pause_exits_zero_on_sigterm_and_stays_small() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apparmor-loader"))
        .arg("pause")
        .env_clear()
        .env("NODE_NAME", "test-node")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("pausing until SIGTERM"), "{line}");

    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .unwrap()
    };
    // Printed for the record (the README quotes it), not asserted: it varies by build.
    println!(
        "pause: VmRSS {} KiB, threads {}",
        field("VmRSS:"),
        field("Threads:")
    );
    assert_eq!(field("Threads:"), 1, "pause must not start worker threads");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(rest.contains("received SIGTERM, exiting"), "{rest}");
}

#[test]
fn untaint_without_node_name_says_where_it_comes_from() {
    loader()
        .env_remove("NODE_NAME")
        .arg("untaint")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("NODE_NAME is not set"))
        .stderr(predicate::str::contains("spec.nodeName"));
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
            .code(2)
            .stderr(predicate::str::contains(reason));
    }
    loader()
        .args(["untaint"])
        .env("APPARMOR_LOADER_TAINTS", "gate:NoSchedule,oops")
        .assert()
        .code(2)
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
        .code(6)
        .stderr(predicate::str::contains("cannot build a Kubernetes client"));
}
