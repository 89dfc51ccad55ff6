//! One rule for a missing test prerequisite (a harness not built, a tool not installed), shared by
//! every harness module (`vm`, `apiserver`, `node`, `tests/cli/support.rs`): under CI
//! the test fails; elsewhere it is skipped, loudly.
//!
//! "Under CI" means env `CI` is set to a non-empty value other than `0` or `false` (any case): CI
//! systems set `CI=true` or `CI=1`, and `.ci/run` sets `CI=1`; an empty `CI` is a shell's leftover,
//! not a CI run.
//!
//! A skip prints one marker line, `AAPL-SKIPPED <what>: <why>`, to stderr (libtest shows it with
//! `--show-output` or `--nocapture`) and appends the same line to the file named by env
//! `AAPL_SKIP_LOG`, if set: `tests/run-all` sets it and lists every skipped harness at the end of
//! the run, so a green run that skipped a harness says so.
//!

use std::ffi::OsStr;
use std::io::Write as _;

/// The start of a skip line; `tests/run-all` greps for it.
pub const MARKER: &str = "AAPL-SKIPPED";
/// Env var naming a file that collects the skip lines of a whole run.
pub const ENV_SKIP_LOG: &str = "AAPL_SKIP_LOG";

/// Whether a missing prerequisite fails the test (this run is CI) rather than skipping it.
pub fn strict() -> bool {
    is_strict(std::env::var_os("CI").as_deref())
}

/// The rule behind [`strict`], for a given value of env `CI`.
pub fn is_strict(ci: Option<&OsStr>) -> bool {
    let Some(ci) = ci else { return false };
    let ci = ci.to_string_lossy().trim().to_ascii_lowercase();
    !(ci.is_empty() || ci == "0" || ci == "false")
}

/// `found`'s value; or, when a prerequisite is missing (`Err(why)`), [`skip_or_fail`] and `None`.
/// `what` names the harness and the test or suite that needs it.
pub fn require<T>(what: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) => {
            skip_or_fail(what, &why);
            None
        }
    }
}

/// A prerequisite of `what` is missing, for the reason `why` (which says how to provide it).
/// Under CI this panics; otherwise it prints and records the skip (see the module doc).
pub fn skip_or_fail(what: &str, why: &str) {
    if strict() {
        panic!(
            "{what}: a prerequisite is missing and env CI is set, so this fails instead of skipping: {why}"
        );
    }
    let line = skip_line(what, why);
    eprintln!("{line}\n{why}");
    if let Some(log) = std::env::var_os(ENV_SKIP_LOG) {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "cannot record the skip in {ENV_SKIP_LOG}={}: {e}",
                log.to_string_lossy()
            );
        }
    }
}

/// The one-line record of a skip: the marker, what skipped and the first line of why.
pub fn skip_line(what: &str, why: &str) -> String {
    let first = why.lines().next().unwrap_or_default().trim();
    format!("{MARKER} {what}: {first}")
}
