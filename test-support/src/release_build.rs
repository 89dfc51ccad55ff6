//! The one finder of the release executable, for every test that runs what the image ships (the QEMU
//! and node harnesses, the `pause` memory bound).
//!
//! They run the release build, not the test profile's debug build that `CARGO_BIN_EXE_*` names: under
//! emulation an unoptimized build is several times slower, and the gate's figures must time what an
//! operator's node runs. A test never builds it: `tests/run-all` runs `cargo build --release --locked`
//! for both targets before `cargo test`, and a build from inside a test once took 1 min 50 s of a test's
//! time. A missing executable, or one older than the sources (`src/**`, `Cargo.toml`, `Cargo.lock`), is
//! refused with the exact command that makes it; callers pass that to the prerequisite rule
//! (`test-support/src/prereq.rs`: skip outside CI, fail under CI).
//!

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The release `apparmor-loader` for this machine's architecture.
pub fn loader() -> Result<PathBuf, String> {
    find(None)
}

/// The release `apparmor-loader` cross-built for `triple` (`cargo build --target <triple>`).
pub fn loader_for(triple: &str) -> Result<PathBuf, String> {
    find(Some(triple))
}

fn repo() -> PathBuf {
    crate::repo()
}

/// Cargo's target directory: env `CARGO_TARGET_DIR` (relative to the repository) or `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => repo().join(d),
        _ => repo().join("target"),
    }
}

/// The command that builds what [`find`] looks for.
pub fn build_command(triple: Option<&str>) -> String {
    let target = triple.map(|t| format!(" --target {t}")).unwrap_or_default();
    format!("cargo build --release --locked{target} --bin apparmor-loader")
}

/// `<target>/<triple>/release/apparmor-loader`; for this machine's architecture also
/// `<target>/release/apparmor-loader` (a build without `[build] target`), the newer of the two.
fn find(triple: Option<&str>) -> Result<PathBuf, String> {
    let target = target_dir();
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut candidates = vec![
        target
            .join(triple.unwrap_or(&host))
            .join("release/apparmor-loader"),
    ];
    if triple.is_none() {
        candidates.push(target.join("release/apparmor-loader"));
    }
    let build = build_command(triple);
    let Some((built, binary)) = candidates
        .iter()
        .filter_map(|p| Some((modified(p)?, p.clone())))
        .max()
    else {
        return Err(format!(
            "no release executable at {}: run `{build}` first (tests/run-all does)",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    };
    let (source_time, source) = newest_source(&repo());
    if built < source_time {
        return Err(format!(
            "{} is older than the sources ({} changed since): run `{build}` first (tests/run-all does)",
            binary.display(),
            source.display()
        ));
    }
    eprintln!(
        "apparmor-loader under test: {} (release build)",
        binary.display()
    );
    Ok(binary)
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest of `Cargo.toml`, `Cargo.lock` and the files under `src/`, with its modification time.
fn newest_source(repo: &Path) -> (SystemTime, PathBuf) {
    let mut newest = (SystemTime::UNIX_EPOCH, repo.join("src"));
    let mut consider = |path: PathBuf| {
        if let Some(t) = modified(&path)
            && t > newest.0
        {
            newest = (t, path);
        }
    };
    consider(repo.join("Cargo.toml"));
    consider(repo.join("Cargo.lock"));
    for entry in walkdir::WalkDir::new(repo.join("src"))
        .into_iter()
        .flatten()
    {
        if entry.file_type().is_file() {
            consider(entry.into_path());
        }
    }
    newest
}
