//! Fail-closed cases on a real AppArmor kernel under QEMU, where the kernel's behaviour is the point
//! (issues 9, 11 and 17): a distribution profile loaded unconfined from a 4.0-syntax file is never replaced
//! (F1); hats and child profiles that leave the ConfigMap are neutralised, never unloaded, with tasks
//! running inside them (F2); a policy namespace is refused before anything is loaded (F3); the policy
//! `load` puts in the kernel hashes the same as the node's own boot-style load of the same file, unpinned
//! and pinned (F4); removed and renamed profiles are retired with tasks running under them (F5), and
//! leave the kernel and the record after a reboot (F6, a second boot from F5's disk); `unconfined` is
//! refused as a name (F7); an Ubuntu 22.04 node (os-release single-quoted, behind Ubuntu's relative link)
//! refuses a 4.0-only profile, and a node without os-release is not guessed (F8); hats and children whose names hold
//! backslashes are neutralised under exactly their names, proven by the kernel's policy hash (F9); a retired profile
//! with a hat and a neutralised child comes back with them (F10); after the reboot, an administrator's profile of a
//! retired name is not ours any more (F6). The first boot runs `tests/vm/guest/fail-closed.sh`'s suite `failclosed`, the
//! second its suite `failclosed-reboot`; each test asserts its case.
//!
//! Prerequisites as for `kernel_e2e.rs` (tests/vm/README.md); under CI a missing one fails.

use std::path::Path;
use std::sync::OnceLock;

use aapl_test_support::vm::Boot;

/// A parent profile that denies writes under `/etc`, with a hat and a child profile that each allow the
/// `/etc/aapl-fc-*` writes of the test tasks, or without them. The parent may write its tasks'
/// `attr/current` (to change hats) with or without hats of its own.
fn parent(with_children: bool) -> String {
    let task = "    /** rix,\n    /run/** rw,\n    /tmp/** rw,\n    /dev/null rw,\n    /proc/** rw,\n    \
                /etc/aapl-fc-* w,\n";
    let children = if with_children {
        format!("  ^wide {{\n{task}  }}\n  profile kid {{\n{task}  }}\n")
    } else {
        String::new()
    };
    format!(
        "abi <abi/3.0>,\n#include <tunables/global>\nprofile aapl-fc-p {{\n  \
         #include <abstractions/base>\n  /** rix,\n  /run/** rw,\n  /tmp/** rw,\n  /proc/** rw,\n  \
         deny /etc/** w,\n{children}}}\n"
    )
}

/// A top-level profile for the tasks of F5: `/tmp` and `/run` writable, `/etc` not.
fn task_profile(name: &str) -> String {
    format!(
        "abi <abi/3.0>,\nprofile {name} {{\n  /** rix,\n  /run/** rw,\n  /tmp/** rw,\n  \
         /dev/null rw,\n  deny /etc/** w,\n}}\n"
    )
}

fn payload(dir: &Path) {
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("suite", "failclosed\n");
    let repo = &aapl_test_support::repo();
    std::fs::copy(
        repo.join("tests/vm/guest/fail-closed.sh"),
        dir.join("fail-closed.sh"),
    )
    .unwrap();
    // Ubuntu 24.04's own firefox profile: 4.0 syntax, unconfined.
    write(
        "host/firefox",
        "abi <abi/4.0>,\ninclude <tunables/global>\nprofile firefox flags=(unconfined) {\n  userns,\n}\n",
    );
    write(
        "src/f1/ff",
        "abi <abi/3.0>,\nprofile firefox {\n  /tmp/** rw,\n}\n",
    );
    write("src/f2a/fc-p", &parent(true));
    write("src/f2b/fc-p", &parent(false));
    // No abi rule: the node's policy-features pin decides what it is compiled for.
    write("src/f4/fc-p", &parent(false));
    write(
        "src/f4/fc-q",
        "#include <tunables/global>\nprofile aapl-fc-q {\n  #include <abstractions/base>\n  \
         network inet stream,\n  signal (send) peer=aapl-fc-p,\n  /tmp/** rw,\n}\n",
    );
    // F5: fc-a leaves, fc-old is renamed in its key; fc-p (F2's last version) stays.
    write("src/f5a/fc-a", &task_profile("aapl-fc-a"));
    write("src/f5a/fc-old", &task_profile("aapl-fc-old"));
    write("src/f5a/fc-p", &parent(false));
    write("src/f5b/fc-old", &task_profile("aapl-fc-new"));
    write("src/f5b/fc-p", &parent(false));
    write("src/f7/unconfined", &task_profile("unconfined"));
    write(
        "src/f8/userns",
        "abi <abi/4.0>,\ninclude <tunables/global>\nprofile aapl-fc-userns {\n  userns,\n  /tmp/** rw,\n}\n",
    );
    // F9: a hat whose name holds a backslash and a child whose name holds two.
    let b = |children: &str| {
        format!(
            "abi <abi/3.0>,\n#include <tunables/global>\nprofile aapl-fc-b {{\n  \
             #include <abstractions/base>\n  /** rix,\n  /proc/** rw,\n  /tmp/** rw,\n{children}}}\n"
        )
    };
    write(
        "src/f9a/fc-b",
        &b(
            "  ^a\\b {\n    /** rix,\n    /tmp/** rw,\n  }\n  profile \"k\\\\d\" {\n    /tmp/** rw,\n  }\n",
        ),
    );
    write("src/f9b/fc-b", &b(""));
    // F10: a profile with a hat and a child profile; then without the child; then gone; then back.
    let r = |children: &str| {
        format!(
            "abi <abi/3.0>,\n#include <tunables/global>\nprofile aapl-fc-r {{\n  \
             #include <abstractions/base>\n  /** rix,\n  /proc/** rw,\n  /tmp/** rw,\n{children}}}\n"
        )
    };
    let hat = "  ^h {\n    /** rix,\n    /tmp/** rw,\n  }\n";
    write(
        "src/f10a/fc-r",
        &r(&format!("{hat}  profile kid {{\n    /tmp/** rw,\n  }}\n")),
    );
    write("src/f10b/fc-r", &r(hat));
    write("src/f10c/fc-s", &task_profile("aapl-fc-s"));
    write(
        "src/f3/ns",
        "abi <abi/3.0>,\nprofile :ns1:aapl-ns {\n  /tmp/** r,\n}\n",
    );
}

/// The first boot, shared by the tests; `None` when skipped outside CI.
fn the_boot() -> Option<&'static Boot> {
    static BOOT: OnceLock<Option<Result<Boot, String>>> = OnceLock::new();
    let shared = BOOT.get_or_init(|| {
        let p = aapl_test_support::vm::prerequisites()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let payload_dir = dir.path().join("payload");
        std::fs::create_dir_all(&payload_dir).unwrap();
        payload(&payload_dir);
        Some(aapl_test_support::vm::boot(
            &p,
            "failclosed",
            &payload_dir,
            "apparmor=1 security=apparmor",
        ))
    });
    match shared {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => panic!("the AppArmor boot failed: {e}"),
    }
}

/// The second boot: the node reboots with the disk F5 left (its profile directory and cache dir, which
/// the first boot printed as a base64 tarball).
fn the_reboot() -> Option<&'static Boot> {
    static BOOT: OnceLock<Option<Result<Boot, String>>> = OnceLock::new();
    let shared = BOOT.get_or_init(|| {
        let first = the_boot()?;
        let p = aapl_test_support::vm::prerequisites()?;
        let state = first.report.output("F5", "state", "stdout").join("\n");
        assert!(
            !state.is_empty(),
            "the first boot printed no state for the reboot (see scenario F5)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let payload_dir = dir.path().join("payload");
        std::fs::create_dir_all(&payload_dir).unwrap();
        payload(&payload_dir);
        std::fs::write(payload_dir.join("suite"), "failclosed-reboot\n").unwrap();
        std::fs::write(payload_dir.join("state.b64"), state + "\n").unwrap();
        Some(aapl_test_support::vm::boot(
            &p,
            "failclosed-reboot",
            &payload_dir,
            "apparmor=1 security=apparmor",
        ))
    });
    match shared {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => panic!("the AppArmor reboot failed: {e}"),
    }
}

#[test]
fn f1_a_distribution_profile_loaded_unconfined_is_never_replaced() {
    let Some(b) = the_boot() else { return };
    b.assert_scenario("F1");
}

#[test]
fn f2_hats_and_children_that_leave_the_configmap_are_neutralised_and_their_tasks_stay_confined() {
    let Some(b) = the_boot() else { return };
    b.assert_scenario("F2");
}

#[test]
fn f3_a_policy_namespace_is_refused_before_anything_is_loaded() {
    let Some(b) = the_boot() else { return };
    b.assert_scenario("F3");
}

#[test]
fn f4_load_puts_in_the_kernel_what_the_nodes_own_boot_would_pinned_and_unpinned() {
    let Some(b) = the_boot() else { return };
    b.assert_scenario("F4");
}

#[test]
fn f5_removed_and_renamed_profiles_are_retired_and_their_tasks_stay_confined() {
    let Some(b) = the_boot() else { return };
    b.assert_scenario("F5");
}

#[test]
fn f6_after_a_reboot_retired_profiles_are_gone_from_the_kernel_and_the_record() {
    let Some(b) = the_reboot() else { return };
    b.assert_scenario("F6");
}

#[test]
fn f9_children_named_with_backslashes_are_neutralised_under_exactly_their_names_proven_by_the_kernels_hash()
 {
    let Some(b) = the_boot() else { return };
    b.assert_scenario("F9");
}

#[test]
fn f10_a_retired_profile_with_a_hat_and_a_neutralised_child_can_be_rolled_back() {
    let Some(b) = the_boot() else { return };
    b.assert_scenario("F10");
}

#[test]
fn f7_a_profile_named_unconfined_is_refused_with_exit_3() {
    let Some(b) = the_boot() else { return };
    b.assert_scenario("F7");
}

#[test]
fn f8_an_apparmor_3_node_refuses_a_4_0_only_profile_and_a_missing_os_release_is_not_guessed() {
    let Some(b) = the_boot() else { return };
    b.assert_scenario("F8");
}
