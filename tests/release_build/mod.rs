//! The executable the image ships, for the harnesses that run it on a real kernel or node.
//!
//! They run the release build, not the test profile's debug build that `CARGO_BIN_EXE_*` names:
//! under emulation an unoptimized build is several times slower, and the gate's figures must time
//! what an operator's node runs. `tests/run-all` builds it first, so here cargo only checks it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The release `apparmor-loader`, built (or found up to date) by cargo now.
pub fn loader() -> Result<PathBuf, String> {
    let started = Instant::now();
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--release", "--locked", "--bin", "apparmor-loader"])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo build --release: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo build --release failed ({})", out.status));
    }
    let executable = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or("cargo build --release named no executable")?;
    eprintln!(
        "apparmor-loader under test: {} (release build, checked in {:.1}s)",
        executable.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(executable)
}
