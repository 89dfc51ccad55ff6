//! Fail-closed edges of the built binary: bounded durations, host records that are not trusted
//! as paths or names, and temporary file names that neither depend on a key's length nor
//! outlive a crash.

mod cli_support;

use cli_support::*;
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
