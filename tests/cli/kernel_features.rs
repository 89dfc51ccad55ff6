//! What the AppArmor feature sets of the AKS kernels (5.15, 6.6, 6.8) do to the example profiles
//! (`profiles/`) and to a profile in AppArmor 4.0 syntax: which load as written, which load with a
//! rule downgraded or not enforced, which are refused. The feature sets are dumps of the nearest
//! Debian kernels, booted under QEMU (`tests/fixtures/kernel-features/README.md` says which kernel
//! stands for which, and what differs); the tests read the committed files and need no network.
//!
//! Two views, each a table the parsers must reproduce exactly:
//! - the parsers alone (bookworm's 3.0.8, installed here, and the image's 4.1), compiling as an
//!   unpinned node's boot does (`--kernel-features <dump>`, the parser's default policy features,
//!   with the warnings for rules not enforced or downgraded turned on);
//! - our `copy` on such a node: the dump is the node's securityfs `apparmor/features`, the node's
//!   os-release names the AKS image, and `copy` compiles with the image's 4.1 parser plus the
//!   AppArmor 3 parity check where the image ships AppArmor 3.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{self, FakeKernel, Volume, kernel_features_dump as dump, real_parser};

/// A profile in AppArmor 4.0 syntax, as Ubuntu 24.04 writes them: the 4.0 abi and the rules 4.0
/// added (user namespaces, POSIX message queues, io_uring).
const PROFILE_40: &str = "abi <abi/4.0>,\ninclude <tunables/global>\n\
profile k8s-userns flags=(attach_disconnected) {\n  include <abstractions/base>\n  userns,\n  \
mqueue r type=posix /q,\n  io_uring sqpoll,\n  /tmp/** rw,\n}\n";

/// The profiles compiled: the repo's examples and the 4.0-syntax one, by file name.
fn profiles() -> Vec<(&'static str, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let mut all: Vec<(&'static str, String)> = ["k8s-audit-only", "k8s-deny-write", "k8s-nginx"]
        .into_iter()
        .map(|name| (name, fs::read_to_string(dir.join(name)).unwrap()))
        .collect();
    all.push(("k8s-userns (4.0 syntax)", PROFILE_40.to_string()));
    // Every example is in the table: a new one must be added to it.
    let examples = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("k8s-"))
        .count();
    assert_eq!(
        examples, 3,
        "profiles/ has an example this table does not cover"
    );
    all
}

/// What one compile did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Compiled with no rule downgraded or left unenforced.
    Loads,
    /// Compiled, with these warnings (sorted, each once): rules the kernel does not enforce, or
    /// enforces only in a coarser form.
    Downgraded(Vec<String>),
    /// Not compiled: the parser's error, from its message on.
    Refused(String),
}

use Outcome::{Downgraded, Loads, Refused};

fn down(warnings: &[&str]) -> Outcome {
    let mut w: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    w.sort();
    Downgraded(w)
}

fn refused(message: &str) -> Outcome {
    Refused(message.to_string())
}

const UNIX: &str = "downgrading extended network unix socket rule to generic network rule";
const DBUS: &str = "dbus rules not enforced";
const USERNS: &str = "userns rules not enforced";
const MQUEUE: &str = "mqueue type=posix rules not enforced";
const IO_URING: &str = "io_uring rules not enforced";

/// Reads a parser run: its exit status, its `Warning from profile …: MESSAGE` lines, its error.
fn outcome(out: &std::process::Output) -> Outcome {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let line = stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or_else(|| panic!("a failed parser run names its error: {stderr}"));
        // `… at line N: MESSAGE`: the message, without where (the table is per file).
        let message = line
            .split_once(" at line ")
            .and_then(|(_, rest)| rest.split_once(": "))
            .map_or(line, |(_, m)| m);
        return Refused(message.trim().to_string());
    }
    let mut warnings: Vec<String> = stderr
        .lines()
        .filter(|l| l.starts_with("Warning from profile "))
        .filter_map(|l| l.split_once("): ").map(|(_, m)| m.trim().to_string()))
        .collect();
    warnings.sort();
    warnings.dedup();
    if warnings.is_empty() {
        Loads
    } else {
        Downgraded(warnings)
    }
}

/// One parser as a node's boot runs it: its command line and its include tree.
struct Parser {
    name: &'static str,
    argv: Vec<std::ffi::OsString>,
    base: PathBuf,
}

impl Parser {
    /// Compiles `profile` for the kernel features `features`, as an unpinned node's boot does.
    fn compile(&self, features: &Path, profile: &Path) -> Outcome {
        let out = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .arg("--base")
            .arg(&self.base)
            .arg("--Include")
            .arg(&self.base)
            .arg("--kernel-features")
            .arg(features)
            .args(["--warn=rule-not-enforced", "--warn=rule-downgraded"])
            .args(["--skip-kernel-load", "--skip-cache", "-o", "/dev/null"])
            .arg(profile)
            .output()
            .unwrap();
        outcome(&out)
    }
}

/// (feature dump, parser, profile) → what the parser does. The dumps: `debian-5.10` stands for
/// AKS's 5.15 (Ubuntu 22.04), `debian-6.1` for 6.6 (Azure Linux 3), `debian-6.12` for 6.8
/// (Ubuntu 24.04); see the fixtures' README.
fn raw_table() -> Vec<(&'static str, &'static str, &'static str, Outcome)> {
    let no_abi_40 = || refused("Could not open 'abi/4.0': No such file or directory");
    vec![
        ("debian-5.10", "3.0", "k8s-audit-only", down(&[UNIX])),
        ("debian-5.10", "3.0", "k8s-deny-write", down(&[UNIX])),
        ("debian-5.10", "3.0", "k8s-nginx", down(&[DBUS, UNIX])),
        ("debian-5.10", "3.0", "k8s-userns (4.0 syntax)", no_abi_40()),
        ("debian-5.10", "4.1", "k8s-audit-only", down(&[UNIX])),
        ("debian-5.10", "4.1", "k8s-deny-write", down(&[UNIX])),
        ("debian-5.10", "4.1", "k8s-nginx", down(&[DBUS, UNIX])),
        (
            "debian-5.10",
            "4.1",
            "k8s-userns (4.0 syntax)",
            down(&[IO_URING, MQUEUE, UNIX, USERNS]),
        ),
        ("debian-6.1", "3.0", "k8s-audit-only", down(&[UNIX])),
        ("debian-6.1", "3.0", "k8s-deny-write", down(&[UNIX])),
        ("debian-6.1", "3.0", "k8s-nginx", down(&[DBUS, UNIX])),
        ("debian-6.1", "3.0", "k8s-userns (4.0 syntax)", no_abi_40()),
        ("debian-6.1", "4.1", "k8s-audit-only", down(&[UNIX])),
        ("debian-6.1", "4.1", "k8s-deny-write", down(&[UNIX])),
        ("debian-6.1", "4.1", "k8s-nginx", down(&[DBUS, UNIX])),
        (
            "debian-6.1",
            "4.1",
            "k8s-userns (4.0 syntax)",
            down(&[IO_URING, MQUEUE, UNIX, USERNS]),
        ),
        ("debian-6.12", "3.0", "k8s-audit-only", down(&[UNIX])),
        ("debian-6.12", "3.0", "k8s-deny-write", down(&[UNIX])),
        ("debian-6.12", "3.0", "k8s-nginx", down(&[DBUS, UNIX])),
        ("debian-6.12", "3.0", "k8s-userns (4.0 syntax)", no_abi_40()),
        ("debian-6.12", "4.1", "k8s-audit-only", down(&[UNIX])),
        ("debian-6.12", "4.1", "k8s-deny-write", down(&[UNIX])),
        ("debian-6.12", "4.1", "k8s-nginx", down(&[DBUS, UNIX])),
        (
            "debian-6.12",
            "4.1",
            "k8s-userns (4.0 syntax)",
            // abi/4.0 has no io_uring: under it, io_uring rules are not enforced even by a
            // kernel that could.
            down(&[IO_URING, MQUEUE, UNIX]),
        ),
    ]
}

/// Both parsers, or `None` (a skip, or a failure under CI) when one is missing.
fn parsers() -> Option<(Vec<Parser>, support::Parser41)> {
    let p30 = real_parser()?;
    let p41 = support::parser_41()?;
    let parsers = vec![
        Parser {
            name: "3.0",
            argv: vec![p30.into()],
            base: PathBuf::from("/etc/apparmor.d"),
        },
        Parser {
            name: "4.1",
            argv: p41.argv.clone(),
            base: p41.base(),
        },
    ];
    Some((parsers, p41))
}

#[test]
fn each_aks_kernel_feature_set_loads_downgrades_or_refuses_each_profile_as_the_table_says() {
    let Some((parsers, _p41)) = parsers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(&str, PathBuf)> = profiles()
        .into_iter()
        .map(|(name, text)| {
            let path = dir.path().join(name.split(' ').next().unwrap());
            fs::write(&path, text).unwrap();
            (name, path)
        })
        .collect();
    let mut seen = Vec::new();
    for features in ["debian-5.10", "debian-6.1", "debian-6.12"] {
        for parser in &parsers {
            for (name, path) in &files {
                seen.push((
                    features,
                    parser.name,
                    *name,
                    parser.compile(&dump(features), path),
                ));
            }
        }
    }
    let want = raw_table();
    assert_eq!(seen.len(), want.len(), "every cell of the table is checked");
    let wrong: Vec<String> = seen
        .iter()
        .zip(&want)
        .filter(|(s, w)| s != w)
        .map(|(s, w)| format!("  {s:?}\n    table says {:?}", w.3))
        .collect();
    assert!(
        wrong.is_empty(),
        "the parsers do otherwise than the table (README, AKS node images):\n{}",
        wrong.join("\n")
    );
}

/// An AKS node image: its os-release, the dump that stands for its kernel, and whether it ships
/// AppArmor 3 (then `copy` also checks each file with the 3.0 parser).
struct AksNode {
    image: &'static str,
    os_release: &'static str,
    features: &'static str,
    apparmor_3: bool,
}

const AKS_NODES: &[AksNode] = &[
    AksNode {
        image: "Ubuntu 22.04 (5.15)",
        os_release: "ID=ubuntu\nVERSION_ID=\"22.04\"\nUBUNTU_CODENAME=jammy\n",
        features: "debian-5.10",
        apparmor_3: true,
    },
    AksNode {
        image: "Azure Linux 3 (6.6)",
        os_release: "ID=azurelinux\nVERSION_ID=\"3.0\"\n",
        features: "debian-6.1",
        apparmor_3: true,
    },
    AksNode {
        image: "Ubuntu 24.04 (6.8)",
        os_release: "ID=ubuntu\nVERSION_ID=\"24.04\"\nUBUNTU_CODENAME=noble\n",
        features: "debian-6.12",
        apparmor_3: false,
    },
];

/// `copy` of one file on an unpinned AKS node whose kernel has the feature set `node.features`:
/// exit 0 with the file in place, and a warning logged for each rule the table says that
/// kernel does not enforce (by the image's 4.1 parser, and by the 3.0 parser where the node
/// ships AppArmor 3); or, where the table says the node's own 3.0 parser refuses the file,
/// exit 3 naming it and the parser's error, and nothing written.
#[test]
fn copy_on_each_aks_node_does_what_the_table_says_and_logs_each_rule_not_enforced() {
    let Some((_, p41)) = parsers() else { return };
    let p30 = real_parser().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let parser = p41.script(&scripts.path().join("apparmor_parser"));
    let table = raw_table();
    let cell = |features: &str, parser: &str, profile: &str| -> Outcome {
        table
            .iter()
            .find(|c| c.0 == features && c.1 == parser && c.2 == profile)
            .map(|c| c.3.clone())
            .expect("every cell is in the table")
    };
    for node in AKS_NODES {
        for (name, text) in profiles() {
            let key = name.split(' ').next().unwrap();
            let kernel = FakeKernel::new(&p30);
            fs::copy(
                dump(node.features),
                kernel.securityfs().join("apparmor/features"),
            )
            .unwrap();
            let root = tempfile::tempdir().unwrap();
            fs::create_dir_all(root.path().join("etc")).unwrap();
            fs::write(root.path().join("etc/os-release"), node.os_release).unwrap();
            let volume = Volume::new(&[(key, &text)]);
            let dest = tempfile::tempdir().unwrap();
            let out = support::copy(&parser, volume.path(), dest.path())
                .arg("--base")
                .arg(p41.base())
                .arg("--v3-parser")
                .arg(&p30)
                .arg("--v3-base")
                .arg("/etc/apparmor.d")
                .arg("--securityfs")
                .arg(kernel.securityfs())
                .arg("--enabled-file")
                .arg(kernel.enabled_file())
                .arg("--node-root")
                .arg(root.path())
                .args(["--node-apparmor", "auto"])
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            let at = format!("{}, {name}", node.image);
            // The node is unpinned: copy compiles for the kernel's features, as its boot does.
            assert!(
                log.contains("compiling for the running kernel's features"),
                "{at}: {log}"
            );
            let mut cells = vec![cell(node.features, "4.1", name)];
            if node.apparmor_3 {
                cells.push(cell(node.features, "3.0", name));
            }
            if let Some(Refused(message)) = cells.iter().find(|c| matches!(c, Refused(_))) {
                assert_eq!(out.status.code(), Some(3), "{at}: {log}");
                assert!(log.contains(key) && log.contains(message), "{at}: {log}");
                assert!(!dest.path().join(key).exists(), "{at}");
                continue;
            }
            assert_eq!(out.status.code(), Some(0), "{at}: {log}");
            assert!(dest.path().join(key).is_file(), "{at}");
            let logged: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("does not enforce this rule as written"))
                .collect();
            let mut want: Vec<&String> = cells
                .iter()
                .flat_map(|c| match c {
                    Downgraded(w) => w.iter().collect(),
                    _ => Vec::new(),
                })
                .collect();
            want.sort();
            want.dedup();
            for w in &want {
                assert!(
                    logged.iter().any(|l| l.contains(w.as_str())),
                    "{at}: copy does not log {w:?}: {log}"
                );
            }
            for l in &logged {
                assert!(
                    l.contains(&format!("Warning from profile {key} ")),
                    "{at}: the warning names the profile: {l}"
                );
                assert!(
                    want.iter().any(|w| l.contains(w.as_str())),
                    "{at}: copy logs a warning the table does not have: {l}"
                );
            }
        }
    }
}
