//! Fail-closed cases on a real AppArmor kernel under QEMU, where the kernel's behaviour is the point
//! (issues 9 and 11): a distribution profile loaded unconfined from a 4.0-syntax file is never replaced
//! (F1); hats and child profiles that leave the ConfigMap leave the kernel, although the kernel keeps
//! children across a replace (F2); a policy namespace is refused before anything is loaded (F3); and the
//! policy `load` puts in the kernel hashes the same as the node's own boot-style load of the same file,
//! unpinned and pinned (F4). One boot runs `tests/vm/guest/fail-closed.sh`; each test asserts its case.
//!
//! Prerequisites as for `kernel_e2e.rs` (tests/vm/README.md); under CI a missing one fails.

mod vm_common;

use std::path::Path;
use std::sync::OnceLock;

use vm_common::Boot;

/// A parent profile with a hat and a child profile, or without them.
fn parent(with_children: bool) -> String {
    let children = if with_children {
        "  ^wide {\n    /** rw,\n  }\n  profile kid {\n    /tmp/** r,\n  }\n"
    } else {
        ""
    };
    format!(
        "abi <abi/3.0>,\n#include <tunables/global>\nprofile aapl-fc-p {{\n  \
         #include <abstractions/base>\n  /tmp/** rw,\n  deny /etc/** w,\n{children}}}\n"
    )
}

fn payload(dir: &Path) {
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("suite", "failclosed\n");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
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
    write(
        "src/f3/ns",
        "abi <abi/3.0>,\nprofile :ns1:aapl-ns {\n  /tmp/** r,\n}\n",
    );
}

/// The one boot, shared by the tests; `None` when skipped outside CI.
fn the_boot() -> Option<&'static Boot> {
    static BOOT: OnceLock<Option<Result<Boot, String>>> = OnceLock::new();
    let shared = BOOT.get_or_init(|| {
        let p = vm_common::prerequisites()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let payload_dir = dir.path().join("payload");
        std::fs::create_dir_all(&payload_dir).unwrap();
        payload(&payload_dir);
        Some(vm_common::boot(
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

#[test]
fn f1_a_distribution_profile_loaded_unconfined_is_never_replaced() {
    let Some(b) = the_boot() else { return };
    b.assert_scenario("F1");
}

#[test]
fn f2_hats_and_children_that_leave_the_configmap_leave_the_kernel() {
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
