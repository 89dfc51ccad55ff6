//! The one rule every harness follows for a missing prerequisite (test-support/src/prereq.rs): which
//! values of env `CI` make it a failure, and the skip line `tests/run-all` summarises.

use std::ffi::OsStr;

use aapl_test_support::prereq;

#[test]
fn ci_is_strict_only_when_set_to_a_value_other_than_empty_0_or_false() {
    for (ci, strict) in [
        (None, false),
        (Some(""), false),
        (Some("  "), false),
        (Some("0"), false),
        (Some("false"), false),
        (Some("FALSE"), false),
        (Some("1"), true),
        (Some("true"), true),
        (Some("True"), true),
        (Some("yes"), true),
    ] {
        assert_eq!(prereq::is_strict(ci.map(OsStr::new)), strict, "CI={ci:?}");
    }
}

#[test]
fn a_skip_line_carries_the_marker_what_and_the_first_line_of_why() {
    let line = prereq::skip_line(
        "real-kernel tests",
        "missing: kernel /x (run tests/vm/prepare.sh)\nto run the real-kernel tests: …",
    );
    assert_eq!(
        line,
        "AAPL-SKIPPED real-kernel tests: missing: kernel /x (run tests/vm/prepare.sh)"
    );
    // tests/run-all recognises skip lines by this prefix.
    let run_all = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/run-all"))
        .expect("tests/run-all");
    assert!(run_all.contains(&format!("{} ", prereq::MARKER)));
    assert!(run_all.contains(prereq::ENV_SKIP_LOG));
}
