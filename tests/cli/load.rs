//! `load` as the built binary against a fake kernel (a securityfs tree edited by a fake parser
//! that delegates compiling to the real one). The real-kernel runs are in `kernel_e2e.rs`; these
//! cover the decision logic: refuse, verify, prune, and never touch what is not ours.

use std::fs;

use crate::support::*;
use apparmor_profile_loader::exit_code;
use predicates::prelude::*;

const INVALID: i32 = exit_code::INVALID_PROFILES as i32;
const UNAVAILABLE: i32 = exit_code::APPARMOR_UNAVAILABLE as i32;
const NOT_LOADED: i32 = exit_code::NOT_LOADED as i32;

#[test]
fn fresh_node_loads_and_verifies_every_profile_in_its_mode() {
    let complain = "abi <abi/3.0>,\nprofile quiet flags=(complain) {\n  /tmp/** rw,\n}\n";
    let Some(node) = Node::with(&[("alpha", &profile("alpha")), ("quiet", complain)]) else {
        return;
    };
    node.copy().success();
    node.load().success().stderr(predicate::str::contains(
        "load complete: loaded 2, unchanged 0, retired 0, neutralised 0",
    ));
    let profiles = node.kernel.profiles();
    assert!(profiles.contains("alpha (enforce)"), "{profiles}");
    assert!(profiles.contains("quiet (complain)"), "{profiles}");
    // One parser process loaded everything, with a dedicated cache directory.
    let calls = node.kernel.parser_calls();
    let loads: Vec<_> = calls.lines().filter(|l| l.contains("--replace")).collect();
    assert_eq!(loads.len(), 1, "{calls}");
    assert!(loads[0].contains(&format!("--cache-loc {}", node.cache.path().display())));
    assert!(loads[0].contains("--write-cache"));
}

#[test]
fn rerun_with_unchanged_profiles_reports_unchanged() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    node.copy().success();
    node.load().success();
    let before = node.kernel.profiles();
    node.kernel.clear_parser_calls();
    node.copy().success();
    node.load().success().stderr(predicate::str::contains(
        "load complete: loaded 0, unchanged 1, retired 0, neutralised 0",
    ));
    assert_eq!(node.kernel.profiles(), before);
    // Unchanged files are neither compiled nor described again (copy's record, written by the
    // same parser, vouches for them): one parser call, the load itself, from the cache.
    let calls = node.kernel.parser_calls();
    assert!(
        !calls.contains("--names") && !calls.contains("--debug"),
        "{calls}"
    );
    assert_eq!(calls.lines().count(), 1, "{calls}");
    assert!(
        calls.contains("--replace") && calls.contains("--cache-loc"),
        "{calls}"
    );
}

#[test]
fn changed_file_is_compiled_and_described_again() {
    let Some(mut node) = Node::with(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))])
    else {
        return;
    };
    node.copy().success();
    node.load().success();
    let complain = "abi <abi/3.0>,\nprofile beta flags=(complain) {\n  /tmp/** rw,\n}\n";
    node.volume
        .update(&[("alpha", &profile("alpha")), ("beta", complain)]);
    node.kernel.clear_parser_calls();
    node.copy().success();
    node.load().success().stderr(predicate::str::contains(
        "load complete: loaded 1, unchanged 1, retired 0, neutralised 0",
    ));
    assert!(node.kernel.profiles().contains("beta (complain)"));
    let calls = node.kernel.parser_calls();
    let names: Vec<_> = calls.lines().filter(|l| l.contains("--names")).collect();
    // copy asked about beta only (one parser call, beta between two markers); load reused what
    // copy recorded for the same bytes.
    assert_eq!(names.len(), 1, "{calls}");
    assert!(
        names[0].contains("/beta ") && !names[0].contains("/alpha"),
        "{calls}"
    );
}

/// A file `load` compiles itself (not from `copy`'s compile: here edited on the host behind
/// `copy`'s back) is compiled for the node's own feature set with the parser's warnings for rules
/// that kernel does not enforce as written, and `load` logs each, naming the profile and its
/// file, as `copy` does. The node's kernel is the 5.10 dump (AKS Ubuntu 22.04's stand-in), which
/// has neither `unix` nor `dbus` mediation.
#[test]
fn a_file_load_compiles_itself_logs_each_rule_the_nodes_kernel_does_not_enforce() {
    let Some(node) = Node::with(&[("chatty", &profile("chatty"))]) else {
        return;
    };
    fs::copy(
        kernel_features_dump("debian-5.10"),
        node.kernel.securityfs().join("apparmor/features"),
    )
    .unwrap();
    node.copy().success();
    let edited = "abi <abi/3.0>,\nprofile chatty {\n  unix (send, receive) type=stream,\n  \
                  dbus send bus=session,\n  /tmp/** rw,\n}\n";
    fs::write(node.dest.path().join("chatty"), edited).unwrap();
    node.kernel.clear_parser_calls();
    let out = node.load_cmd().output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("chatty was not compiled by copy with this parser; compiling it now"),
        "{log}"
    );
    // The compile was load's own, fresh, with the warnings asked for.
    let calls = node.kernel.parser_calls();
    assert!(
        calls.lines().any(|l| l.contains("--skip-read-cache")
            && l.contains("--warn=rule-not-enforced --warn=rule-downgraded")
            && l.ends_with("/chatty")),
        "{calls}"
    );
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("does not enforce this rule as written"))
        .collect();
    let file = node.dest.path().join("chatty");
    let named = format!("Warning from profile chatty ({}): ", file.display());
    for rule in [
        "downgrading extended network unix socket rule to generic network rule",
        "dbus rules not enforced",
    ] {
        let logged: Vec<&&str> = warnings
            .iter()
            .filter(|l| l.contains(&format!("{named}{rule}")))
            .collect();
        assert_eq!(logged.len(), 1, "load logs {rule:?} once: {log}");
    }
    assert_eq!(warnings.len(), 2, "{log}");
    assert!(node.kernel.profiles().contains("chatty (enforce)"));
}

/// The kernel unconfines every task of an unloaded profile, so a profile that left the
/// ConfigMap is retired, never unloaded: it stays in the kernel until the node reboots, its file
/// goes at once (the next boot does not load it), and the record keeps it until the kernel no
/// longer lists it.
#[test]
fn removed_key_is_retired_not_unloaded_its_file_deleted_and_dropped_after_a_reboot() {
    let Some(mut node) = Node::with(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))])
    else {
        return;
    };
    node.kernel.load_by_hand("hand-loaded (enforce)");
    node.copy().success();
    node.load().success();
    node.volume.update(&[("alpha", &profile("alpha"))]);
    node.copy().success();
    node.kernel.clear_parser_calls();
    node.load()
        .success()
        .stderr(predicate::str::contains("retired \"beta\""))
        .stderr(predicate::str::contains("retired 1, neutralised 0"));
    let profiles = node.kernel.profiles();
    assert!(profiles.contains("beta (enforce)"), "{profiles}");
    assert!(profiles.contains("alpha (enforce)"), "{profiles}");
    assert!(profiles.contains("hand-loaded (enforce)"), "{profiles}");
    assert!(!node.dest.path().join("beta").exists());
    assert!(
        !node.kernel.parser_calls().contains("--remove"),
        "{}",
        node.kernel.parser_calls()
    );
    assert_eq!(retired(&node), ["beta"]);
    // A re-run reports it again and keeps it.
    node.load()
        .success()
        .stderr(predicate::str::contains("retired 1, neutralised 0"));
    assert_eq!(retired(&node), ["beta"]);
    // The node reboots: its boot loads the top-level files, beta is not among them.
    node.kernel.reboot(&["alpha (enforce)"]);
    node.copy().success();
    node.load()
        .success()
        .stderr(predicate::str::contains("dropped from the record"))
        .stderr(predicate::str::contains("retired 0, neutralised 0"));
    assert!(retired(&node).is_empty());
    assert!(!node.kernel.profiles().contains("beta ("));
}

/// A retired name is still ours: the ConfigMap may bring it back without `--adopt-loaded`.
#[test]
fn a_retired_profile_can_come_back() {
    let Some(mut node) = Node::with(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))])
    else {
        return;
    };
    node.copy().success();
    node.load().success();
    node.volume.update(&[("alpha", &profile("alpha"))]);
    node.copy().success();
    node.load().success();
    assert_eq!(retired(&node), ["beta"]);
    node.volume.update(&[
        ("alpha", &profile("alpha")),
        ("beta-again", &profile("beta")),
    ]);
    node.copy().success();
    node.load()
        .success()
        .stderr(predicate::str::contains("retired 0, neutralised 0"));
    assert!(retired(&node).is_empty());
}

/// A retired profile is recorded with its whole family (its hats and children, neutralised
/// stubs included), so a rollback brings it back with them, without `--adopt-loaded`.
#[test]
fn a_retired_profile_with_a_hat_and_a_neutralised_child_comes_back_with_them() {
    let with_both = "abi <abi/3.0>,\nprofile beta {\n  /tmp/** r,\n  ^hat {\n    /tmp/** r,\n  }\n  \
                     profile kid {\n    /tmp/** r,\n  }\n}\n";
    let with_hat =
        "abi <abi/3.0>,\nprofile beta {\n  /tmp/** r,\n  ^hat {\n    /tmp/** r,\n  }\n}\n";
    let Some(mut node) = Node::with(&[("alpha", &profile("alpha")), ("beta", with_both)]) else {
        return;
    };
    node.kernel.keep_hashes();
    node.copy().success();
    node.load().success();
    node.volume
        .update(&[("alpha", &profile("alpha")), ("beta", with_hat)]);
    node.copy().success();
    node.load()
        .success()
        .stderr(predicate::str::contains("retired 0, neutralised 1"));
    node.volume.update(&[("alpha", &profile("alpha"))]);
    node.copy().success();
    node.load()
        .success()
        .stderr(predicate::str::contains("retired 1, neutralised 0"));
    assert_eq!(retired(&node), ["beta"]);
    // The rollback.
    node.volume
        .update(&[("alpha", &profile("alpha")), ("beta", with_both)]);
    node.copy().success();
    node.load()
        .success()
        .stderr(predicate::str::contains("retired 0, neutralised 0"));
    let profiles = node.kernel.profiles();
    for name in ["beta", "beta//hat", "beta//kid"] {
        assert!(
            profiles.contains(&format!("{name} (enforce)")),
            "{profiles}"
        );
    }
    assert!(retired(&node).is_empty());
}

/// A retired name is ours only while the kernel holds exactly what we retired, in the same boot:
/// after a reboot, an administrator's own profile of that name is someone else's. `load` drops
/// the claim (and says so), and a ConfigMap that brings the name back does not replace it.
#[test]
fn after_a_reboot_an_administrators_profile_of_a_retired_name_is_not_ours() {
    let Some(mut node) = Node::with(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))])
    else {
        return;
    };
    node.kernel.keep_hashes();
    node.copy().success();
    node.load().success();
    let ours = node
        .kernel
        .policy_sha1("beta")
        .expect("the kernel hashes beta");
    node.volume.update(&[("alpha", &profile("alpha"))]);
    node.copy().success();
    node.load()
        .success()
        .stderr(predicate::str::contains("retired 1, neutralised 0"));
    assert_eq!(retired(&node), ["beta"]);
    // The node reboots; its boot loads alpha; an administrator loads a profile named beta.
    node.kernel.reboot(&["alpha (enforce)"]);
    node.kernel
        .load_by_hand_hashed("beta", "0123456789abcdef0123456789abcdef01234567");
    node.copy().success();
    node.load()
        .success()
        .stderr(predicate::str::contains(
            "\"beta\" was retired, but the kernel's \"beta\" is not provably the policy we retired",
        ))
        .stderr(predicate::str::contains("retired 0, neutralised 0"));
    assert!(retired(&node).is_empty());
    // The ConfigMap brings beta back: the administrator's profile is not replaced.
    node.volume
        .update(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))]);
    node.copy()
        .code(INVALID)
        .stderr(predicate::str::contains("\"beta\""))
        .stderr(predicate::str::contains("--adopt-loaded"));
    // copy wrote nothing, so load has nothing of beta to load.
    node.load().success();
    assert_eq!(
        node.kernel.policy_sha1("beta").as_deref(),
        Some("0123456789abcdef0123456789abcdef01234567"),
        "ours was {ours}"
    );
}

/// The top-level names `load`'s record keeps as retired.
fn retired(node: &Node) -> Vec<String> {
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(node.cache.path().join("loaded.json")).unwrap())
            .unwrap();
    record["retired"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn profile_silently_skipped_by_the_parser_fails_verification() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))]) else {
        return;
    };
    node.kernel.skip_silently("beta");
    node.copy().success();
    node.load()
        .code(NOT_LOADED)
        .stderr(predicate::str::contains(
            "\"beta\" from file \"beta\" is not in the kernel",
        ));
    // alpha did reach the kernel: it is recorded before loading, so it stays ours.
    let record = fs::read_to_string(node.cache.path().join("loaded.json")).unwrap();
    assert!(record.contains("\"alpha\""), "{record}");
}

#[test]
fn profiles_loaded_by_a_failed_run_are_ours_and_retired_when_removed() {
    let Some(mut node) = Node::with(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))])
    else {
        return;
    };
    node.kernel.skip_silently("beta");
    node.copy().success();
    node.load().code(NOT_LOADED);
    assert!(node.kernel.profiles().contains("alpha (enforce)"));
    // The operator drops both profiles; alpha, loaded by the failed run, is ours: retired.
    node.volume.update(&[("gamma", &profile("gamma"))]);
    node.copy().success();
    node.load().success();
    let profiles = node.kernel.profiles();
    assert!(profiles.contains("alpha (enforce)"), "{profiles}");
    assert!(profiles.contains("gamma (enforce)"), "{profiles}");
    assert_eq!(retired(&node), ["alpha"]);
}

#[test]
fn wrong_mode_fails_verification() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    node.copy().success();
    // Someone flipped our profile to complain mode by hand; the file asks for enforce.
    node.kernel.load_enforce_as_complain();
    node.load()
        .code(NOT_LOADED)
        .stderr(predicate::str::contains(
            "\"alpha\" from file \"alpha\" is loaded in complain mode, its flags ask for enforce",
        ));
}

#[test]
fn invalid_file_on_disk_leaves_the_kernel_untouched() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))]) else {
        return;
    };
    node.copy().success();
    node.load().success();
    let before = node.kernel.profiles();
    // The host file was edited behind our back into something that does not compile.
    fs::write(node.dest.path().join("beta"), BROKEN).unwrap();
    node.load()
        .code(INVALID)
        .stderr(predicate::str::contains("profile \"beta\" line 5"));
    assert_eq!(node.kernel.profiles(), before);
    let replaces = node
        .kernel
        .parser_calls()
        .lines()
        .filter(|l| l.contains("--replace"))
        .count();
    assert_eq!(replaces, 1, "the second run must not reach --replace");
}

#[test]
fn apparmor_disabled_is_refused_naming_the_file() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    node.copy().success();
    fs::write(node.kernel.enabled_file(), "N\n").unwrap();
    node.load()
        .code(UNAVAILABLE)
        .stderr(predicate::str::contains(
            "AppArmor is disabled on this node",
        ))
        .stderr(predicate::str::contains(
            node.kernel.enabled_file().display().to_string(),
        ));
    fs::remove_file(node.kernel.enabled_file()).unwrap();
    node.load()
        .code(UNAVAILABLE)
        .stderr(predicate::str::contains("SELinux"));
}

#[test]
fn load_without_copy_says_to_run_copy() {
    let Some(node) = Node::with(&[]) else { return };
    node.load()
        .code(INVALID)
        .stderr(predicate::str::contains("The copy step writes it"));
}

#[test]
fn profile_moved_to_another_key_stays_loaded() {
    let Some(mut node) = Node::with(&[("old-key", &profile("moved"))]) else {
        return;
    };
    node.copy().success();
    node.load().success();
    node.volume.update(&[("new-key", &profile("moved"))]);
    node.copy().success();
    node.load().success().stderr(predicate::str::contains(
        "loaded 1, unchanged 0, retired 0, neutralised 0",
    ));
    assert!(node.kernel.profiles().contains("moved (enforce)"));
    assert!(!node.dest.path().join("old-key").exists());
    assert!(node.dest.path().join("new-key").exists());
}

/// A parser killed while loading (the OOM killer, say) is an internal failure (exit 1) with the
/// signal named, not "not loaded" (exit 5): the operator looks at the node's memory, not the file.
#[test]
fn a_parser_killed_while_loading_keeps_its_exit_code() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    node.copy().success();
    node.kernel
        .run_first("[ \"$mode\" = replace ] && kill -9 $$");
    node.load()
        .code(exit_code::INTERNAL as i32)
        .stderr(predicate::str::contains("killed by signal 9"));
}

#[test]
fn under_umask_000_nothing_on_the_host_is_writable_by_group_or_others() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let Some(node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    // A world-writable cache directory left by an earlier run (or made by hand).
    fs::create_dir(node.cache.path().join("policy")).unwrap();
    fs::set_permissions(
        node.cache.path().join("policy"),
        fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    for cmd in [node.copy_cmd(), node.load_cmd()] {
        let mut std_cmd = std::process::Command::new(cmd.get_program());
        std_cmd.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => std_cmd.env(k, v),
                None => std_cmd.env_remove(k),
            };
        }
        // SAFETY: umask is async-signal-safe.
        unsafe {
            std_cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        assert_cmd::Command::from_std(std_cmd).assert().success();
    }
    let mut seen = 0;
    for root in [node.dest.path(), node.cache.path()] {
        for entry in walkdir::WalkDir::new(root).min_depth(1) {
            let entry = entry.unwrap();
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.file_type().is_symlink() {
                continue;
            }
            seen += 1;
            assert_eq!(
                meta.permissions().mode() & 0o022,
                0,
                "{} is writable by group or others (mode {:o})",
                entry.path().display(),
                meta.permissions().mode() & 0o7777
            );
        }
    }
    assert!(
        seen > 5,
        "the cache and the profile were written ({seen} entries)"
    );
}

/// A node whose os-release names a release this tool does not know: `copy` says so in its log
/// and checks with AppArmor 3 as well, and `load`'s report to `untaint` (the node's annotation)
/// carries what `copy` found.
#[test]
fn an_unknown_os_is_named_in_the_log_and_in_the_node_report() {
    let Some(node) = Node::with(&[("alpha", &profile("alpha"))]) else {
        return;
    };
    // The node root both steps are given.
    let root = node.cache.path().join("no-node-root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/os-release"),
        "ID=flatcar\nVERSION_ID=4081.2.0\n",
    )
    .unwrap();
    let v3 = real_parser().unwrap();
    node.copy_cmd()
        .args(["--node-apparmor", "auto"])
        .arg("--v3-parser")
        .arg(&v3)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "flatcar 4081.2.0, a release this tool does not know",
        ));
    let report = node.cache.path().join("loaded-profiles.json");
    node.load_cmd()
        .arg("--node-report")
        .arg(&report)
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let os = report["node_os"].as_str().unwrap_or_default();
    assert!(
        os.contains("flatcar 4081.2.0, a release this tool does not know"),
        "{report}"
    );
}
