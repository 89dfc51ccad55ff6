//! Fail-closed behaviour of `copy`, `load` and `validate` as the built binary (issue 9): who
//! owns a loaded profile, children that leave the ConfigMap, names `load` could not prove,
//! a compile that never ends, and the compile-once cache that must never serve stale policy.
//! The fake kernel of `support` stands in for securityfs; `kernel_e2e.rs` repeats the
//! kernel-facing cases on a real AppArmor kernel.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::support::*;
use apparmor_profile_loader::exit_code::{INVALID_PROFILES, NOT_LOADED};
use predicates::prelude::*;

const INVALID: i32 = INVALID_PROFILES as i32;

/// Every compiled-policy cache file of a node with its inode and mtime.
fn cache_entries(node: &Node) -> Vec<(PathBuf, u64, i64)> {
    let mut out = Vec::new();
    for file in walk(&node.cache.path().join("policy")) {
        let meta = fs::metadata(&file).unwrap();
        out.push((file, meta.ino(), meta.mtime_nsec()));
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

// === 1. Ownership: a name is ours only if our records say so ===

#[test]
fn a_name_someone_else_loaded_is_refused_by_copy_even_when_the_host_file_is_unreadable() {
    let Some(node) = Node::with(&[("ff", &profile("firefox"))]) else {
        return;
    };
    // Ubuntu 24.04's own firefox profile: 4.0 syntax that the image's 3.0 parser cannot read,
    // loaded unconfined by the distribution.
    fs::write(
        node.dest.path().join("firefox"),
        "abi <abi/4.0>,\nprofile firefox flags=(unconfined) {\n  userns,\n}\n",
    )
    .unwrap();
    node.kernel.load_by_hand("firefox (unconfined)");
    let before = snapshot(node.dest.path());
    node.copy_cmd()
        .assert()
        .code(INVALID)
        .stderr(predicate::str::contains(
            "\"firefox\" (our file \"ff\"; loaded, but not by us)",
        ))
        .stderr(predicate::str::contains("--adopt-loaded"));
    assert_eq!(snapshot(node.dest.path()), before, "nothing written");
    assert!(node.kernel.profiles().contains("firefox (unconfined)"));

    // Taking it over is an explicit, one-time decision; from then on it is ours.
    node.copy_cmd()
        .env("APPARMOR_LOADER_ADOPT_LOADED", "true")
        .assert()
        .success();
    node.load().success();
    assert!(node.kernel.profiles().contains("firefox (enforce)"));
    node.copy().success();
    node.load().success();
}

/// An `--enabled-file` that cannot be read (a wrong mount, a renamed parameter) does not switch
/// the ownership check off while securityfs lists what is loaded: the list is what counts. And a
/// claim `copy` made without seeing any list does not make `load` replace what it finds.
#[test]
fn an_unreadable_enabled_file_never_weakens_the_ownership_check() {
    let Some(node) = Node::with(&[("ff", &profile("firefox"))]) else {
        return;
    };
    node.kernel.load_by_hand("firefox (unconfined)");
    fs::remove_file(node.kernel.enabled_file()).unwrap();
    node.copy_cmd()
        .assert()
        .code(INVALID)
        .stderr(predicate::str::contains(
            "\"firefox\" (our file \"ff\"; loaded, but not by us)",
        ));
    assert!(!node.dest.path().join("ff").exists(), "nothing written");

    // No AppArmor at all when copy ran (no list, module off): the claim is recorded unverified.
    let profiles = node.kernel.securityfs().join("apparmor/profiles");
    fs::rename(&profiles, profiles.with_extension("hidden")).unwrap();
    node.copy().success();
    let record =
        fs::read_to_string(node.dest.path().join(".apparmor-profile-loader.json")).unwrap();
    assert!(record.contains("\"unverified\": true"), "{record}");
    // AppArmor is back (a reboot), someone's firefox is loaded: load does not take it over.
    fs::rename(profiles.with_extension("hidden"), &profiles).unwrap();
    fs::write(node.kernel.enabled_file(), "Y\n").unwrap();
    node.load()
        .code(INVALID)
        .stderr(predicate::str::contains("loaded by someone else"));
    assert!(node.kernel.profiles().contains("firefox (unconfined)"));
}

#[test]
fn load_refuses_a_loaded_name_that_no_record_lists() {
    let Some(node) = Node::with(&[("mine", &profile("mine"))]) else {
        return;
    };
    node.copy().success();
    node.load().success();
    // Our file is edited behind copy's back to define a name someone else has loaded.
    fs::write(node.dest.path().join("mine"), profile("sshd")).unwrap();
    node.kernel.load_by_hand("sshd (complain)");
    let before = node.kernel.profiles();
    node.load_cmd()
        .assert()
        .code(INVALID)
        .stderr(predicate::str::contains(
            "\"sshd\" (our file \"mine\"; loaded, but not by us)",
        ));
    assert_eq!(node.kernel.profiles(), before, "kernel untouched");
}

#[test]
fn a_profile_the_host_loaded_from_our_file_after_a_reboot_is_ours() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    node.copy().success();
    // Reboot between copy and load: the host's boot loaded our top-level file.
    node.kernel.load_by_hand("alpha (enforce)");
    node.copy().success();
    node.load().success();
}

// === 2. Children ===

const PARENT_WITH_CHILDREN: &str = "abi <abi/3.0>,\nprofile p {\n  /tmp/** r,\n  ^wide {\n    /** rw,\n  }\n  profile kid {\n    /tmp/** r,\n  }\n}\n";
const PARENT_ALONE: &str = "abi <abi/3.0>,\nprofile p {\n  /tmp/** r,\n}\n";

#[test]
fn hats_and_children_that_leave_the_configmap_are_neutralised_never_unloaded() {
    let Some(mut node) = Node::with(&[("p", PARENT_WITH_CHILDREN)]) else {
        return;
    };
    node.kernel.keep_hashes();
    node.kernel.load_by_hand("other//x (enforce)");
    node.copy().success();
    node.load().success();
    let profiles = node.kernel.profiles();
    assert!(
        profiles.contains("p//wide (") && profiles.contains("p//kid ("),
        "{profiles}"
    );
    node.volume.update(&[("p", PARENT_ALONE)]);
    node.copy().success();
    node.kernel.clear_parser_calls();
    node.load_cmd()
        .assert()
        .success()
        .stderr(predicate::str::contains("neutralised \"p//kid\""))
        .stderr(predicate::str::contains("neutralised \"p//wide\""))
        .stderr(predicate::str::contains("retired 0, neutralised 2"));
    // Unloading would unconfine the tasks inside: both stay, replaced by a stub.
    let profiles = node.kernel.profiles();
    assert!(
        profiles.contains("p//wide (enforce)") && profiles.contains("p//kid (enforce)"),
        "{profiles}"
    );
    assert!(profiles.contains("p (enforce)"), "{profiles}");
    let calls = node.kernel.parser_calls();
    assert!(!calls.contains("--remove"), "{calls}");
    let stubs: Vec<_> = calls
        .lines()
        .filter(|l| l.contains("--replace") && l.contains(".apparmor-profile-loader.stub-"))
        .collect();
    assert_eq!(stubs.len(), 1, "{calls}");
    assert!(
        profiles.contains("other//x (enforce)"),
        "not ours: {profiles}"
    );
    // Proven by the kernel's hash: the record keeps the hash the kernel shows for each stub.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.cache.path().join("loaded.json")).unwrap())
            .unwrap();
    for kid in ["p//kid", "p//wide"] {
        let have = node
            .kernel
            .policy_sha1(kid)
            .expect("the kernel hashes the stub");
        assert_eq!(record["neutralised"][kid], have.as_str(), "{record}");
    }
}

/// The stubs are temporary files in the cache directory, removed when a run ends but not when
/// it is killed (OOM, a node rebooted mid-load). The next load's neutralising starts by
/// removing them, and only them: a link with a stub's name stays, and so does what it points to.
#[test]
fn stub_files_a_killed_load_left_are_removed_by_the_next_load() {
    let Some(mut node) = Node::with(&[("p", PARENT_WITH_CHILDREN)]) else {
        return;
    };
    node.kernel.keep_hashes();
    node.copy().success();
    node.load().success();
    node.volume.update(&[("p", PARENT_ALONE)]);
    node.copy().success();
    // The load is killed while the parser loads the stubs: the stub file stays behind.
    let kill = node.cache.path().join("kill-the-loader");
    fs::write(&kill, "").unwrap();
    node.kernel.run_first(&format!(
        "if [ -f {} ] && [ \"$mode\" = replace ]; then case \"$*\" in \
         *.apparmor-profile-loader.stub-*) kill -9 $PPID; exit 0 ;; esac; fi",
        kill.display()
    ));
    node.load().failure();
    let stubs = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".apparmor-profile-loader.stub-"))
            .collect();
        names.sort();
        names
    };
    let left = stubs(node.cache.path());
    assert_eq!(
        left.len(),
        1,
        "the killed load left its stub file: {left:?}"
    );
    // Not ours to remove: a link with a stub's name, and the file it points to.
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    let link = ".apparmor-profile-loader.stub-link00";
    std::os::unix::fs::symlink(&victim, node.cache.path().join(link)).unwrap();

    fs::remove_file(&kill).unwrap();
    node.load_cmd()
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "removed 1 stub file(s) an interrupted load left in {} (deny-everything stubs",
            node.cache.path().display()
        )))
        .stderr(predicate::str::contains("retired 0, neutralised 2"));
    assert_eq!(stubs(node.cache.path()), [link]);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
}

/// A child the stub cannot name (the parser reads `"p//x\t"` as a tab, not a backslash and a
/// `t`) is never stubbed under another name: exit 5 naming it, nothing loaded, and a re-run
/// adds nothing either.
#[test]
fn a_child_the_stub_cannot_name_is_exit_5_and_nothing_is_loaded_under_another_name() {
    let Some(node) = Node::with(&[("p", PARENT_ALONE)]) else {
        return;
    };
    node.kernel.keep_hashes();
    node.copy().success();
    node.load().success();
    // Someone put a child under our profile whose name no stub can express.
    node.kernel.load_by_hand("p//x\\t (enforce)");
    let before = node.kernel.profiles();
    for _ in 0..2 {
        node.kernel.clear_parser_calls();
        node.load_cmd()
            .assert()
            .code(NOT_LOADED as i32)
            .stderr(predicate::str::contains("p//x\\\\t"))
            .stderr(predicate::str::contains(
                "no deny-everything stub can be written",
            ));
        assert_eq!(node.kernel.profiles(), before);
        let calls = node.kernel.parser_calls();
        assert!(
            !calls
                .lines()
                .any(|l| l.contains("--replace") && l.contains(".stub-")),
            "{calls}"
        );
    }
}

#[test]
fn a_child_that_cannot_be_neutralised_fails_with_exit_5() {
    let Some(mut node) = Node::with(&[("p", PARENT_WITH_CHILDREN)]) else {
        return;
    };
    node.kernel.keep_hashes();
    node.copy().success();
    node.load().success();
    // The fake parser refuses the stubs: the kernel keeps the children with their old rules.
    node.kernel.run_first(
        "case \"$*\" in *.apparmor-profile-loader.stub-*) echo refused >&2; exit 1 ;; esac",
    );
    node.volume.update(&[("p", PARENT_ALONE)]);
    node.copy().success();
    node.load_cmd()
        .assert()
        .code(NOT_LOADED as i32)
        .stderr(predicate::str::contains("p//kid"))
        .stderr(predicate::str::contains("could not be neutralised"))
        .stderr(predicate::str::contains("refused"));
}

// === 3. Names validate accepts ≡ names load can prove ===

#[test]
fn names_load_could_not_prove_are_refused_by_validate() {
    let Some(parser) = real_parser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("ns", "profile :ns1:name {\n}\n", "policy namespace"),
        (
            "parentless",
            "profile a//b {\n}\n",
            "which is not defined alongside it",
        ),
        ("newline", "profile \"a\\nb\" {\n}\n", "cannot be read back"),
        (
            "comments",
            "# only a comment\n@{X}=/tmp\n",
            "defines no profile",
        ),
        (
            "runtime",
            "profile cri-containerd.apparmor.d {\n}\n",
            "container runtime",
        ),
        (
            "unconfined",
            "profile unconfined {\n  /tmp/** r,\n}\n",
            "kernel's own name for no confinement",
        ),
        (
            "leading-space",
            "profile \" k8s-web\" {\n}\n",
            "starts or ends with whitespace",
        ),
        (
            "ideographic-space",
            "profile \"k8s-web\u{3000}\" {\n}\n",
            "starts or ends with whitespace",
        ),
        (
            "spaced-hat",
            "profile k8s-web {\n  ^\"hat \" {\n  }\n}\n",
            "starts or ends with whitespace",
        ),
        (
            "hostchild",
            "profile mine {\n}\nprofile hostprof//x {\n}\n",
            "\"hostprof\"",
        ),
    ];
    for (key, text, reason) in cases {
        let f = dir.path().join(key);
        fs::write(&f, text).unwrap();
        loader()
            .arg("validate")
            .arg(&f)
            .arg("--parser")
            .arg(&parser)
            .assert()
            .code(INVALID)
            .stderr(predicate::str::contains(format!("key {key:?}")))
            .stderr(predicate::str::contains(reason));
    }
}

#[test]
fn a_configmap_of_comment_only_files_is_refused_and_nothing_is_unloaded() {
    let Some(mut node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    node.copy().success();
    node.load().success();
    node.volume
        .update(&[("alpha", "# profiles moved elsewhere\n")]);
    let before = snapshot(node.dest.path());
    node.copy_cmd()
        .assert()
        .code(INVALID)
        .stderr(predicate::str::contains("defines no profile"));
    assert_eq!(snapshot(node.dest.path()), before);
    assert!(node.kernel.profiles().contains("alpha (enforce)"));
}

#[test]
fn validate_with_a_mistyped_path_is_a_usage_error() {
    let Some(parser) = real_parser() else { return };
    loader()
        .args(["validate", "/no/such/profiles", "--parser"])
        .arg(&parser)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/no/such/profiles"));
}

// === 7. A compile that never ends ===

#[test]
fn a_compile_that_never_ends_is_killed_and_names_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let parser = dir.path().join("hanging_parser");
    write_executable(&parser, "#!/bin/sh\nexec sleep 600\n");
    let volume = Volume::new(&[("slow-one", "profile s {\n}\n")]);
    let dest = tempfile::tempdir().unwrap();
    copy(&parser, volume.path(), dest.path())
        .args(["--parser-timeout", "1s"])
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .code(INVALID)
        .stderr(predicate::str::contains("compiling 1 profile files"))
        .stderr(predicate::str::contains(
            "did not finish compiling the profiles within 1s",
        ))
        .stderr(predicate::str::contains("slow-one"));
    assert!(snapshot(dest.path()).is_empty());
}

// === Compile once, never stale ===

#[test]
fn a_fresh_node_compiles_once_copy_fills_the_cache_load_only_reads_it() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))]) else {
        return;
    };
    node.copy().success();
    let after_copy = cache_entries(&node);
    assert_eq!(
        after_copy
            .iter()
            .filter(|(p, ..)| !p.ends_with(".features"))
            .count(),
        2,
        "{after_copy:?}"
    );
    node.load().success();
    // No entry rewritten: every compile of load was a cache hit.
    assert_eq!(cache_entries(&node), after_copy);
    // The parser was told the node's feature set in every compile.
    let calls = node.kernel.parser_calls();
    assert!(
        calls.lines().all(|l| l.contains("--kernel-features")),
        "{calls}"
    );
}

#[test]
fn a_copy_that_fails_after_compiling_leaves_no_stale_policy_in_the_cache() {
    let Some(mut node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    node.copy().success();
    node.load().success();
    let cached = cache_entries(&node);
    let bytes: Vec<Vec<u8>> = cached.iter().map(|(p, ..)| fs::read(p).unwrap()).collect();
    // alpha changes (compiles fine), but a new key clashes with a host file: copy fails.
    fs::write(node.dest.path().join("usr.bin.x"), "# host\n").unwrap();
    let changed = profile("alpha").replace("/tmp/** rw", "/var/tmp/** rw");
    node.volume
        .update(&[("alpha", &changed), ("usr.bin.x", &profile("x"))]);
    node.copy().code(INVALID);
    let after: Vec<Vec<u8>> = cache_entries(&node)
        .iter()
        .map(|(p, ..)| fs::read(p).unwrap())
        .collect();
    assert_eq!(after, bytes, "the refused content never reached the cache");
    node.load_cmd()
        .assert()
        .success()
        .stderr(predicate::str::contains("loaded 0, unchanged 1"));
}

#[test]
fn a_changed_include_with_an_old_mtime_is_compiled_again() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    // A private include tree we can change, as a new image would.
    let base = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .args([
            "-a",
            "/etc/apparmor.d/abi",
            "/etc/apparmor.d/abstractions",
            "/etc/apparmor.d/tunables",
        ])
        .arg(base.path())
        .status()
        .unwrap();
    assert!(status.success());
    node.copy_cmd()
        .arg("--base")
        .arg(base.path())
        .assert()
        .success();
    node.load_cmd()
        .arg("--base")
        .arg(base.path())
        .assert()
        .success();
    let first = cache_entries(&node);
    let include = base.path().join("abstractions/base");
    let mut text = fs::read_to_string(&include).unwrap();
    text.push_str("  /etc/aapl-new-include-rule r,\n");
    fs::write(&include, text).unwrap();
    fs::File::options()
        .write(true)
        .open(&include)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))
        .unwrap();
    node.load_cmd()
        .arg("--base")
        .arg(base.path())
        .assert()
        .success();
    let second = cache_entries(&node);
    assert!(
        second
            .iter()
            .all(|(p, ..)| first.iter().all(|(q, ..)| p != q)),
        "a new fingerprint directory, the old entries pruned: {first:?} → {second:?}"
    );
}

#[test]
fn records_of_another_parser_are_not_trusted_the_files_are_compiled_again() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    node.copy().success();
    node.load().success();
    // The image was upgraded: another parser or include tree wrote this record.
    let path = node.dest.path().join(".apparmor-profile-loader.json");
    let mut record: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert!(record["toolchain"].as_str().is_some_and(|t| !t.is_empty()));
    record["toolchain"] = "written-by-an-older-image".into();
    fs::write(&path, record.to_string()).unwrap();
    node.kernel.clear_parser_calls();
    node.copy().success();
    let calls = node.kernel.parser_calls();
    assert!(
        calls.contains("--skip-kernel-load") && calls.contains("--names"),
        "copy compiled and described alpha again: {calls}"
    );
    node.load()
        .success()
        .stderr(predicate::str::contains("loaded 0, unchanged 1"));
}
