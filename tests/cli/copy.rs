//! `copy` and `validate` run as the built binary with the real `apparmor_parser`: what reaches
//! the host directory, what is refused, and that a refusal leaves the host untouched.

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};

use crate::support::*;
use apparmor_profile_loader::exit_code;
use predicates::prelude::*;

const INVALID: i32 = exit_code::INVALID_PROFILES as i32;

#[test]
fn validate_accepts_the_repository_examples() {
    let Some(parser) = real_parser() else { return };
    loader()
        .args(["validate", "profiles/", "--parser"])
        .arg(&parser)
        .assert()
        .success()
        .stderr(predicate::str::contains("k8s-nginx"))
        .stderr(predicate::str::contains("validate complete"))
        .stderr(predicate::str::contains("skipping profiles.yaml"));
}

#[test]
fn copy_writes_profiles_with_mode_and_state_then_second_run_changes_nothing() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))]);
    let dest = tempfile::tempdir().unwrap();
    fs::write(
        dest.path().join("usr.bin.man"),
        "# the distribution's own\n",
    )
    .unwrap();

    copy(&parser, volume.path(), dest.path())
        .assert()
        .success()
        .stderr(predicate::str::contains("wrote [alpha, beta]"));
    assert_eq!(
        fs::read_to_string(dest.path().join("alpha")).unwrap(),
        profile("alpha")
    );
    assert_eq!(
        fs::metadata(dest.path().join("beta")).unwrap().mode() & 0o777,
        0o644
    );
    let state: serde_json::Value = serde_json::from_slice(
        &fs::read(dest.path().join(".apparmor-profile-loader.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["files"]["alpha"]["profiles"],
        serde_json::json!(["alpha"])
    );
    assert!(state["files"].get("usr.bin.man").is_none());

    let before = snapshot(dest.path());
    let mtime = fs::metadata(dest.path().join("alpha"))
        .unwrap()
        .mtime_nsec();
    copy(&parser, volume.path(), dest.path())
        .assert()
        .success()
        .stderr(predicate::str::contains("nothing changed"));
    assert_eq!(snapshot(dest.path()), before);
    assert_eq!(
        fs::metadata(dest.path().join("alpha"))
            .unwrap()
            .mtime_nsec(),
        mtime
    );
}

#[test]
fn key_removed_from_configmap_is_deleted_but_foreign_files_stay() {
    let Some(parser) = real_parser() else { return };
    let mut volume = Volume::new(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))]);
    let dest = tempfile::tempdir().unwrap();
    fs::write(dest.path().join("usr.bin.man"), "# foreign\n").unwrap();
    copy(&parser, volume.path(), dest.path()).assert().success();

    volume.update(&[("alpha", &profile("alpha2"))]);
    copy(&parser, volume.path(), dest.path())
        .assert()
        .success()
        .stderr(predicate::str::contains("removed [beta]"));
    assert!(!dest.path().join("beta").exists());
    assert_eq!(
        fs::read_to_string(dest.path().join("alpha")).unwrap(),
        profile("alpha2")
    );
    assert_eq!(
        fs::read_to_string(dest.path().join("usr.bin.man")).unwrap(),
        "# foreign\n"
    );
}

#[test]
fn key_clashing_with_a_host_file_is_refused_and_nothing_written() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[
        ("alpha", &profile("alpha")),
        ("usr.bin.man", &profile("man")),
    ]);
    let dest = tempfile::tempdir().unwrap();
    fs::write(
        dest.path().join("usr.bin.man"),
        "# the distribution's own\n",
    )
    .unwrap();
    let before = snapshot(dest.path());
    copy(&parser, volume.path(), dest.path())
        .assert()
        .code(INVALID)
        .stderr(predicate::str::contains("\"usr.bin.man\""))
        .stderr(predicate::str::contains(
            "not owned by apparmor-profile-loader",
        ));
    assert_eq!(snapshot(dest.path()), before);
}

/// Each bad input: the key and reason in the message, exit 3, destination byte-identical.
#[test]
fn bad_inputs_are_refused_with_the_key_and_reason_and_leave_dest_untouched() {
    let Some(parser) = real_parser() else { return };
    let good = profile("good");
    let big = format!("{good}#{}\n", "x".repeat(1024 * 1024));
    type MakeBad = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, MakeBad, &str)> = vec![
        (
            "empty file",
            Box::new(|d| fs::write(d.join("empty"), "").unwrap()),
            "key \"empty\": the file is empty",
        ),
        (
            "binary file",
            Box::new(|d| fs::write(d.join("bin"), b"\x7fELF\0\0\x01").unwrap()),
            "key \"bin\": the file is binary",
        ),
        (
            "not UTF-8",
            Box::new(|d| fs::write(d.join("latin1"), b"profile caf\xe9 {}\n").unwrap()),
            "key \"latin1\": the file is not UTF-8 text",
        ),
        (
            "over the size limit",
            Box::new(move |d| fs::write(d.join("huge"), &big).unwrap()),
            "over the limit of 1048576 bytes",
        ),
        (
            "directory as key",
            Box::new(|d| fs::create_dir(d.join("adir")).unwrap()),
            "key \"adir\": it is a directory",
        ),
        (
            "symlink escaping the volume",
            Box::new(|d| symlink("/etc/hostname", d.join("escape")).unwrap()),
            "outside the source volume",
        ),
        (
            "dot-file",
            Box::new(|d| fs::write(d.join(".sneaky"), "profile s {}\n").unwrap()),
            "key \".sneaky\"",
        ),
        (
            "backup suffix the boot loader skips",
            Box::new(|d| fs::write(d.join("p.dpkg-old"), "profile s {}\n").unwrap()),
            "skips files ending in .dpkg-old",
        ),
        (
            "syntax error",
            Box::new(|d| fs::write(d.join("broken"), BROKEN).unwrap()),
            "profile \"broken\" line 5",
        ),
        (
            "two files defining the same profile",
            Box::new(|d| fs::write(d.join("again"), profile("good")).unwrap()),
            "\"good\" in \"again\" and \"good\"",
        ),
    ];
    for (what, make_bad, expected) in cases {
        let source = tempfile::tempdir().unwrap();
        fs::write(source.path().join("good"), &good).unwrap();
        make_bad(source.path());
        let dest = tempfile::tempdir().unwrap();
        fs::write(dest.path().join("existing"), "keep me").unwrap();
        let before = snapshot(dest.path());
        let out = copy(&parser, source.path(), dest.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(INVALID), "{what}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: expected {expected:?} in {stderr}"
        );
        assert_eq!(snapshot(dest.path()), before, "{what}: destination changed");
        assert!(
            !dest.path().join("good").exists(),
            "{what}: good file written"
        );

        // validate says the same about the same directory.
        let out = validate(&parser, source.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(INVALID), "validate, {what}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(expected),
            "validate, {what}"
        );
    }
}

#[test]
fn every_broken_file_is_reported_not_just_the_last() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[
        ("a-broken", BROKEN),
        ("b-good", &profile("b")),
        ("c-broken", "profile c {\n  nonsense here\n}\n"),
    ]);
    validate(&parser, volume.path())
        .assert()
        .code(INVALID)
        .stderr(predicate::str::contains(
            "2 of 3 profile files do not compile",
        ))
        .stderr(predicate::str::contains("profile \"a-broken\" line 5"))
        .stderr(predicate::str::contains("profile \"c-broken\" line 2"));
}

#[test]
fn traversal_names_given_as_files_are_refused() {
    let Some(parser) = real_parser() else { return };
    // ConfigMap keys cannot hold '/', so a traversal attempt reaches us as a file name the
    // kubelet could never create; validate sees the names as given.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("x y"), profile("xy")).unwrap();
    loader()
        .arg("validate")
        .arg(dir.path().join("x y"))
        .arg("--parser")
        .arg(&parser)
        .assert()
        .code(INVALID)
        .stderr(predicate::str::contains(
            "key \"x y\": the name contains ' '",
        ));
}

/// A ConfigMap holds at most 1 MiB of data (the API server adds up the values): `validate`
/// accepts a set of exactly that many bytes and refuses one byte more, saying why, so an
/// operator's CI learns it before `kubectl` does. apiserver_e2e finds the limit on the server.
#[test]
fn a_set_over_what_a_configmap_can_hold_is_refused_by_validate() {
    use apparmor_profile_loader::CONFIGMAP_DATA_LIMIT;
    let Some(parser) = real_parser() else { return };
    // Four profiles padded with comment lines to `size` bytes each.
    let padded = |name: &str, size: usize| -> String {
        let mut text = profile(name);
        while text.len() < size {
            let line = (size - text.len()).min(4096);
            text.push_str(&format!("#{}\n", "x".repeat(line.saturating_sub(2))));
            if line < 2 {
                text.truncate(size);
            }
        }
        assert_eq!(text.len(), size);
        text
    };
    let quarter = CONFIGMAP_DATA_LIMIT as usize / 4;
    for (extra, ok) in [(0, true), (1, false)] {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["p0", "p1", "p2", "p3"].into_iter().enumerate() {
            let size = quarter + if i == 3 { extra } else { 0 };
            fs::write(dir.path().join(name), padded(name, size)).unwrap();
        }
        let run = loader()
            .arg("validate")
            .arg(format!("{}/", dir.path().display()))
            .arg("--parser")
            .arg(&parser)
            .assert();
        if ok {
            run.success();
        } else {
            run.code(INVALID).stderr(predicate::str::contains(format!(
                "the profiles hold {} bytes together, over the {CONFIGMAP_DATA_LIMIT} bytes a \
                 ConfigMap can hold",
                CONFIGMAP_DATA_LIMIT + 1
            )));
        }
    }
}

#[test]
fn empty_configmap_is_refused_rather_than_deleting_everything() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[]);
    let dest = tempfile::tempdir().unwrap();
    copy(&parser, volume.path(), dest.path())
        .assert()
        .code(INVALID)
        .stderr(predicate::str::contains("holds no profiles"));
}

#[test]
fn configmap_update_between_runs_is_read_as_one_generation() {
    let Some(parser) = real_parser() else { return };
    let mut volume = Volume::new(&[("alpha", &profile("alpha"))]);
    let dest = tempfile::tempdir().unwrap();
    copy(&parser, volume.path(), dest.path()).assert().success();
    volume.update(&[("alpha", &profile("alpha")), ("gamma", &profile("gamma"))]);
    copy(&parser, volume.path(), dest.path())
        .assert()
        .success()
        .stderr(predicate::str::contains("wrote [gamma]"))
        .stderr(predicate::str::contains("1 unchanged"));
    let owned = owned_keys(dest.path());
    assert_eq!(owned, ["alpha", "gamma"]);
}

#[test]
fn busybox_style_link_runs_the_step() {
    let Some(parser) = real_parser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("validate");
    symlink(env!("CARGO_BIN_EXE_apparmor-loader"), &link).unwrap();
    assert_cmd::Command::new(&link)
        .arg("profiles/")
        .arg("--parser")
        .arg(&parser)
        .assert()
        .success()
        .stderr(predicate::str::contains("validate complete"));
}

#[test]
fn json_logs_name_the_step_and_node() {
    let Some(parser) = real_parser() else { return };
    let out = loader()
        .args([
            "--log-format",
            "json",
            "validate",
            "profiles/k8s-nginx",
            "--parser",
        ])
        .arg(&parser)
        .output()
        .unwrap();
    assert!(out.status.success());
    let last = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let line: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(line["span"]["step"], "validate");
    assert_eq!(line["span"]["node"], "test-node");
    assert_eq!(line["fields"]["profiles"], 1);
}

/// A set is refused when the node annotation that lists it would not fit the budget (the API
/// server's 256 KiB for all of a node's annotations, halved): `untaint` could never write it, so
/// every new node would stay tainted. Just under the budget it is accepted.
#[test]
fn a_set_whose_node_annotation_would_not_fit_is_refused_and_nothing_is_written() {
    use apparmor_profile_loader::node_labels::ANNOTATION_BUDGET;
    let Some(parser) = real_parser() else { return };
    // Each file one profile with a long attachment path: about 280 bytes of annotation each.
    let files = |n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                let name = format!("/opt/vendor/app-{i:05}/{}", "b".repeat(180));
                (format!("p{i:05}"), format!("profile {name} {{\n}}\n"))
            })
            .collect()
    };
    let per_file = 180 + 22 + "sha256:".len() + 64 + 6;
    let fits = ANNOTATION_BUDGET / per_file - 10;
    for (n, ok) in [(fits, true), (ANNOTATION_BUDGET / per_file + 10, false)] {
        let set = files(n);
        let borrowed: Vec<(&str, &str)> =
            set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let volume = Volume::new(&borrowed);
        let dest = tempfile::tempdir().unwrap();
        let run = copy(&parser, volume.path(), dest.path()).assert();
        if ok {
            run.success();
            assert_eq!(owned_keys(dest.path()).len(), n);
        } else {
            run.code(INVALID)
                .stderr(predicate::str::contains("profiles would take"))
                .stderr(predicate::str::contains(format!(
                    "over the {ANNOTATION_BUDGET}"
                )));
            assert!(snapshot(dest.path()).is_empty(), "nothing written");
        }
    }
}

/// A node first taken for AppArmor 4, then found to be AppArmor 3 (its os-release changed, or an
/// older loader read it as 4): the files its record already vouches for are checked with the
/// AppArmor 3 parser too, once, and the record says so from then on.
#[test]
fn files_recorded_on_apparmor_4_are_checked_once_the_node_is_apparmor_3() {
    let Some(parser) = real_parser() else { return };
    let volume = Volume::new(&[("alpha", &profile("alpha")), ("beta", &profile("beta"))]);
    let dest = tempfile::tempdir().unwrap();
    let record = || -> serde_json::Value {
        serde_json::from_slice(
            &fs::read(dest.path().join(".apparmor-profile-loader.json")).unwrap(),
        )
        .unwrap()
    };
    copy(&parser, volume.path(), dest.path()).assert().success();
    assert_eq!(record()["checked_with_apparmor3"], serde_json::Value::Null);
    // The same ConfigMap on a node now declared AppArmor 3: every file is in the snapshot the
    // AppArmor 3 parser compiles (none is "not found"), and they all compile.
    let as_3 = || {
        let mut cmd = copy(&parser, volume.path(), dest.path());
        cmd.env("APPARMOR_LOADER_NODE_APPARMOR", "3")
            .arg("--v3-parser")
            .arg(&parser)
            .arg("--v3-base")
            .arg("/etc/apparmor.d");
        cmd
    };
    as_3().assert().success();
    assert_eq!(record()["checked_with_apparmor3"], true);
    assert!(
        record()["node_os"]
            .as_str()
            .is_some_and(|os| os.contains("declared AppArmor 3")),
        "{}",
        record()
    );
    // Checked once: a re-run changes nothing.
    let before = snapshot(dest.path());
    as_3().assert().success();
    assert_eq!(snapshot(dest.path()), before);
}
