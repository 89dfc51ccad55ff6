//! What the tests share (the crate is a dev-dependency of apparmor-profile-loader only):
//!
//! - [`prereq`]: one rule for a missing prerequisite (skip loudly outside CI, fail under CI);
//! - [`release_build`]: the one finder of the release executable the harnesses run;
//! - [`qemu`]: the QEMU command line per architecture, KVM when it works, else TCG;
//! - [`vm`]: the kernel suites' guest (an initramfs with the loader and a parser), booted and read;
//! - [`apiserver`]: the real kube-apiserver harness, its objects, nodes, pod-bound tokens, `untaint`;
//! - [`node`]: the node suite's control plane, watches and QEMU guest with a kubelet;
//! - [`fixtures`]: nodes and taints for the mocked and the real API server;
//! - [`executable_script`]: writing a script a test then runs, without ETXTBSY;
//! - [`repo`], [`loader_exe`], [`target_tmpdir`]: where things are.

pub mod apiserver;
pub mod executable_script;
pub mod fixtures;
pub mod node;
pub mod prereq;
pub mod qemu;
pub mod release_build;
pub mod vm;

use std::path::PathBuf;

/// The repository's root (this crate lives in `<repo>/test-support`).
pub fn repo() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The directory of the running test executable's profile (`<target>[/<triple>]/<profile>`):
/// test executables live in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("deps/");
    deps.parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| deps.to_path_buf())
}

/// The `apparmor-loader` executable cargo built for the running tests (what `CARGO_BIN_EXE_*`
/// names in an integration test): the test profile's build, beside the test executable's `deps/`.
pub fn loader_exe() -> PathBuf {
    profile_dir().join("apparmor-loader")
}

/// Cargo's scratch directory for integration tests (`CARGO_TARGET_TMPDIR`): `tmp/` beside the
/// profile directory, created if missing.
pub fn target_tmpdir() -> PathBuf {
    let profile = profile_dir();
    let dir = profile.parent().unwrap_or(&profile).join("tmp");
    let _ = std::fs::create_dir_all(&dir);
    dir
}
