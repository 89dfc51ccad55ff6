//! Fail-closed edges of the built binary: bounded durations, host records that are not trusted
//! as paths or names, and temporary file names that neither depend on a key's length nor
//! outlive a crash.

use crate::support::*;
use predicates::prelude::*;

const USAGE: i32 = 2;

// === Durations ===

#[test]
fn huge_timeout_is_a_usage_error_not_a_panic() {
    for huge in ["3000000000000000h", "18446744073709551615s", "25h"] {
        loader()
            .args(["untaint", "--timeout", huge])
            .assert()
            .code(USAGE)
            .stderr(predicate::str::contains("too large: at most 24h"))
            .stderr(predicate::str::contains("panicked").not());
        loader()
            .args(["untaint"])
            .env("APPARMOR_LOADER_TIMEOUT", huge)
            .assert()
            .code(USAGE)
            .stderr(predicate::str::contains("too large"));
    }
}

// === Host records ===

const INTERNAL: i32 = 1;

/// Writes a record (`.apparmor-profile-loader.json` or `loaded.json`) as if edited by hand.
fn write_record(path: &std::path::Path, files: serde_json::Value) {
    let record = serde_json::json!({"version": 1, "files": files});
    std::fs::write(path, record.to_string()).unwrap();
}

fn entry(names: &[&str]) -> serde_json::Value {
    serde_json::json!({"sha256": "00", "profiles": names, "modes": {}})
}

#[test]
fn owned_record_entries_outside_the_destination_stop_copy_before_anything_is_deleted() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[("alpha", &profile("alpha"))]);
    let host = tempfile::tempdir().unwrap();
    let dest = host.path().join("apparmor.d");
    std::fs::create_dir_all(dest.join("dir")).unwrap();
    std::fs::write(host.path().join("victim"), "outside\n").unwrap();
    std::fs::write(dest.join("dir/x"), "below\n").unwrap();
    let absolute = host.path().join("victim").display().to_string();
    for bad in ["../victim", absolute.as_str(), "dir/x"] {
        write_record(
            &dest.join(".apparmor-profile-loader.json"),
            serde_json::json!({ bad: entry(&["gone"]) }),
        );
        let before = snapshot(&dest);
        copy(&parser, volume.path(), &dest)
            .assert()
            .code(INTERNAL)
            .stderr(predicate::str::contains(
                ".apparmor-profile-loader.json is corrupt",
            ))
            .stderr(predicate::str::contains(format!("entry {bad:?}")));
        assert_eq!(snapshot(&dest), before, "{bad}");
        assert!(host.path().join("victim").exists(), "{bad}");
        assert!(dest.join("dir/x").exists(), "{bad}");
        assert!(!dest.join("alpha").exists(), "{bad}");
    }
}

#[test]
fn loaded_record_entries_this_tool_never_writes_stop_load_before_the_kernel_is_touched() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[("alpha", &profile("alpha"))]);
    let dest = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    copy(&parser, volume.path(), dest.path()).assert().success();
    let kernel = FakeKernel::new(&parser);
    kernel.load_by_hand("docker-default (enforce)");
    let cases = [
        // A path out of the profile directory: load would read it.
        ("../etc/passwd", entry(&["docker-default"])),
        // Names this tool never loads.
        ("x", entry(&[":ns:docker-default"])),
        ("x", entry(&["docker-default\n"])),
        ("x", entry(&["docker-default//kid"])),
        // A container runtime's own profile, or the kernel's name for no confinement: never
        // loaded from a file of ours, so never ours to replace or retire.
        ("gone", entry(&["docker-default"])),
        ("gone", entry(&["cri-containerd.apparmor.d"])),
        ("gone", entry(&["unconfined"])),
        ("gone", entry(&[" alpha"])),
    ];
    for (key, bad) in cases {
        write_record(
            &cache.path().join("loaded.json"),
            serde_json::json!({ key: bad }),
        );
        kernel.clear_parser_calls();
        kernel
            .load(dest.path(), cache.path())
            .assert()
            .code(INTERNAL)
            .stderr(predicate::str::contains("loaded.json is corrupt"))
            .stderr(predicate::str::contains(format!("entry {key:?}")));
        assert_eq!(kernel.profiles(), "docker-default (enforce)\n", "{key}");
        assert_eq!(kernel.parser_calls(), "", "the parser ran for {key}");
    }
}

// === Temporary files ===

#[test]
fn next_copy_removes_the_temp_files_a_killed_run_left_and_nothing_else() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[("alpha", &profile("alpha"))]);
    let dest = tempfile::tempdir().unwrap();
    let debris = [
        ".apparmor-profile-loader.tmp-0123456789abcdef",
        ".apparmor-profile-loader.tmp-ZYXWVUTSRQPONMLK",
    ];
    // An editor's and a package manager's temporary files in /etc/apparmor.d are not ours.
    let foreign = [
        ".hidden",
        "alpha.tmp-1",
        ".alpha.tmp-x",
        "usr.bin.man",
        ".usr.bin.man.tmp-1",
        ".usr.sbin.cupsd.tmp-20240101",
        ".apparmor-profile-loader.tmp-31337-0",
    ];
    for name in debris.iter().chain(&foreign) {
        std::fs::write(dest.path().join(name), "half-written").unwrap();
    }
    copy(&parser, volume.path(), dest.path())
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "a temporary file an interrupted run left behind",
        ));
    for name in debris {
        assert!(!dest.path().join(name).exists(), "{name} is still there");
    }
    for name in foreign {
        assert!(dest.path().join(name).exists(), "{name} was removed");
    }
}

#[test]
fn the_longest_key_validate_accepts_is_one_copy_writes() {
    let Some(parser) = real_parser() else { return };
    let longest = format!("p{}", "x".repeat(252));
    let too_long = format!("{longest}x");
    assert_eq!((longest.len(), too_long.len()), (253, 254));

    let volume = Volume::new(&[(longest.as_str(), &profile("long"))]);
    validate(&parser, volume.path()).assert().success();
    let dest = tempfile::tempdir().unwrap();
    copy(&parser, volume.path(), dest.path()).assert().success();
    assert_eq!(
        std::fs::read_to_string(dest.path().join(&longest)).unwrap(),
        profile("long")
    );

    let volume = Volume::new(&[(too_long.as_str(), &profile("long"))]);
    validate(&parser, volume.path())
        .assert()
        .code(3)
        .stderr(predicate::str::contains("longer than 253 bytes"));
    let dest = tempfile::tempdir().unwrap();
    copy(&parser, volume.path(), dest.path())
        .assert()
        .code(3)
        .stderr(predicate::str::contains("longer than 253 bytes"));
    assert!(snapshot(dest.path()).is_empty());
}

// === untaint, stopped ===

/// A kubeconfig pointing at a port nothing listens on: every request is a transient error.
fn kubeconfig_to_nowhere(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{name: k, cluster: {server: 'http://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: c, context: {cluster: k, user: u}}]\n",
    )
    .unwrap();
    path
}

#[test]
fn sigterm_while_untaint_retries_is_exit_6_never_success() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_apparmor-loader"))
        .env_clear()
        .env("NODE_NAME", "test-node")
        .arg("untaint")
        .arg("--kubeconfig")
        .arg(kubeconfig_to_nowhere(dir.path()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // Read the log until untaint says it is retrying (the client logs its own errors first).
    let mut first = String::new();
    while !first.contains("transient error") {
        let read = stderr.read_line(&mut first).unwrap();
        assert!(read > 0, "untaint ended without retrying: {first}");
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(6), "{first}{rest}");
    assert!(
        rest.contains("stopped by SIGTERM before the taint was removed"),
        "{rest}"
    );
}

// === Special files planted in host directories ===

fn mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// How long a run that must not block may take before the test calls it hung.
const NOT_HUNG: std::time::Duration = std::time::Duration::from_secs(60);

/// A FIFO where the lock holder's record should be: the waiting run still gives up at its
/// `--lock-timeout` (reading the record never blocks).
#[test]
fn a_fifo_at_the_lock_record_does_not_hang_a_waiting_run() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[("alpha", &profile("alpha"))]);
    let dest = tempfile::tempdir().unwrap();
    let handle = std::fs::File::open(dest.path()).unwrap();
    handle.try_lock().unwrap();
    mkfifo(&dest.path().join(".apparmor-profile-loader.lock"));
    copy(&parser, volume.path(), dest.path())
        .env("APPARMOR_LOADER_LOCK_TIMEOUT", "1s")
        .timeout(NOT_HUNG)
        .assert()
        .code(INTERNAL)
        .stderr(predicate::str::contains("still holds the lock"))
        .stderr(predicate::str::contains("a FIFO"));
    drop(handle);
}

/// A FIFO at `load`'s record is refused at once, naming it, never a hung run.
#[test]
fn fifos_in_the_cache_dir_never_block_a_run() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[("alpha", &profile("alpha"))]);
    let dest = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    copy(&parser, volume.path(), dest.path())
        .env("APPARMOR_LOADER_CACHE_DIR", cache.path())
        .timeout(NOT_HUNG)
        .assert()
        .success();
    let kernel = FakeKernel::new(&parser);
    mkfifo(&cache.path().join("loaded.json"));
    kernel
        .load(dest.path(), cache.path())
        .timeout(NOT_HUNG)
        .assert()
        .code(INTERNAL)
        .stderr(predicate::str::contains("loaded.json"))
        .stderr(predicate::str::contains("a FIFO"));
}
