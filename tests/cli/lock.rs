//! Concurrent runs on one profile directory, as real processes: a run waits for the holder of
//! the directory's lock, says who holds it, and gives up with exit 1 after `--lock-timeout`
//! with the directory untouched; runs that overlap are serialised and each ends with every
//! file it wrote owned.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

use crate::support::*;

const LOCK_RECORD: &str = ".apparmor-profile-loader.lock";

/// Holds the lock on `dir` the way a run does (flock on the directory) and records a holder.
fn hold_lock(dir: &Path) -> File {
    let handle = File::open(dir).unwrap();
    handle.try_lock().expect("nobody else holds it");
    fs::write(
        dir.join(LOCK_RECORD),
        "pid=4242\nstep=copy\nnode=other-node\nstarted_unix=1\n",
    )
    .unwrap();
    handle
}

/// `copy` as a child process with stderr piped, so the test can read it while it runs.
fn spawn_copy(parser: &Path, source: &Path, dest: &Path, lock_timeout: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_apparmor-loader"))
        .env_clear()
        .env("NODE_NAME", "this-node")
        .env("APPARMOR_LOADER_NODE_APPARMOR", "4")
        .env("APPARMOR_LOADER_LOCK_TIMEOUT", lock_timeout)
        .arg("copy")
        .arg("--source")
        .arg(source)
        .arg("--dest")
        .arg(dest)
        .arg("--parser")
        .arg(parser)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A running step whose log the test reads line by line.
struct Running {
    child: Child,
    stderr: BufReader<ChildStderr>,
}

impl Running {
    fn new(mut child: Child) -> Self {
        let stderr = BufReader::new(child.stderr.take().unwrap());
        Running { child, stderr }
    }

    /// The next log line; blocks until the step logs one.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stderr.read_line(&mut line).unwrap();
        line
    }

    /// The rest of the log and the exit code.
    fn finish(mut self) -> (String, Option<i32>) {
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        (rest, self.child.wait().unwrap().code())
    }
}

#[test]
fn copy_waits_for_the_holder_names_it_and_times_out_with_exit_1_touching_nothing() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[("alpha", &profile("alpha"))]);
    let dest = tempfile::tempdir().unwrap();
    let held = hold_lock(dest.path());
    let before = snapshot(dest.path());

    let mut run = Running::new(spawn_copy(&parser, volume.path(), dest.path(), "1s"));
    let first = run.line();
    let (rest, code) = run.finish();
    assert!(first.contains("waiting for another run"), "{first}");
    assert!(
        first.contains("held by copy on node other-node (pid 4242"),
        "{first}"
    );
    assert_eq!(code, Some(1), "{first}{rest}");
    assert!(rest.contains("still holds the lock"), "{rest}");
    assert!(rest.contains("--lock-timeout"), "{rest}");
    assert_eq!(snapshot(dest.path()), before);
    drop(held);
}

#[test]
fn load_waits_for_the_same_lock() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    node.copy().success();
    let held = hold_lock(node.dest.path());
    node.load_cmd()
        .arg("--lock-timeout")
        .arg("300ms")
        .assert()
        .code(1)
        .stderr(predicates::str::contains("still holds the lock"));
    assert_eq!(node.kernel.profiles(), "");
    drop(held);
    node.load().success();
    assert_eq!(node.kernel.profiles(), "alpha (enforce)\n");
}

#[test]
fn two_overlapping_copies_both_succeed_and_every_file_on_disk_is_owned() {
    let Some(parser) = real_parser() else { return };
    let first = Volume::new(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))]);
    let second = Volume::new(&[("gamma", &profile("gamma"))]);
    let dest = tempfile::tempdir().unwrap();

    // Both start while the test holds the lock, so they are certain to contend for it.
    let held = hold_lock(dest.path());
    let mut a = Running::new(spawn_copy(&parser, first.path(), dest.path(), "2m"));
    let mut b = Running::new(spawn_copy(&parser, second.path(), dest.path(), "2m"));
    let (a_first, b_first) = (a.line(), b.line());
    assert!(a_first.contains("waiting for another run"), "{a_first}");
    assert!(b_first.contains("waiting for another run"), "{b_first}");
    drop(held);
    let (a_rest, a_code) = a.finish();
    let (b_rest, b_code) = b.finish();
    assert_eq!(a_code, Some(0), "{a_first}{a_rest}");
    assert_eq!(b_code, Some(0), "{b_first}{b_rest}");

    let owned = owned_keys(dest.path());
    let on_disk: Vec<String> = snapshot(dest.path())
        .into_keys()
        .filter(|k| !k.starts_with('.'))
        .collect();
    assert_eq!(on_disk, owned, "a file on disk is not owned");
    assert!(
        owned == ["alpha", "beta"] || owned == ["gamma"],
        "the last run's set wins whole: {owned:?}"
    );
    // A third run, with either ConfigMap, finds nothing it does not own.
    copy(&parser, first.path(), dest.path()).assert().success();
}

#[test]
fn lock_timeout_is_in_the_help_of_copy_and_load_with_its_env_twin_and_default() {
    for step in ["copy", "load"] {
        let out = loader().args([step, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{help}");
        for want in [
            "--lock-timeout",
            "APPARMOR_LOADER_LOCK_TIMEOUT",
            "[default: 2m]",
        ] {
            assert!(help.contains(want), "{step} --help lacks {want}:\n{help}");
        }
    }
    loader()
        .args(["copy", "--lock-timeout", "25h"])
        .assert()
        .code(2);
}
