//! `load`'s record of what it loaded (`loaded.json`), as pure steps over the compiled files and
//! the kernel's list: the record written before loading ([`record`]), whether the kernel's list
//! proves the load ([`proven`]), the kernel's policy hashes taken into the record
//! ([`take_policy_hashes`]), what changed since the last load ([`Changes`]), and what `untaint`
//! labels the node with ([`node_report`]).

use std::collections::BTreeMap;

use crate::apparmor::mode::Mode;
use crate::profile::check::CompiledProfile;
use crate::profile::node_labels::NodeReport;
use crate::profile::ownership;
use crate::profile::records::Inventory;

/// Our record of what is loaded: file → hash, names and modes.
pub fn record(compiled: &[CompiledProfile]) -> Inventory {
    let mut inv = Inventory::default();
    for p in compiled {
        inv.files.insert(p.key.clone(), ownership::entry(p, false));
    }
    inv
}

/// Whether the load is proven: every compiled profile in force in the kernel's list (`listed`)
/// in the mode its flags ask for, and the parser did not complain. Otherwise, what is not in
/// force, each as a line an operator can act on; when everything is in force but the parser
/// complained, that line (fail closed: the load may be partial).
pub fn proven(
    compiled: &[CompiledProfile],
    listed: &BTreeMap<String, Mode>,
    parser_complained: bool,
) -> Result<(), Vec<String>> {
    let missing = not_in_force(compiled, listed);
    if !missing.is_empty() {
        Err(missing)
    } else if parser_complained {
        Err(vec!["the parser reported an error while loading".into()])
    } else {
        Ok(())
    }
}

/// Every compiled profile the kernel's list does not show in force in the mode its flags ask
/// for, each as a line an operator can act on (empty when all are proven).
fn not_in_force(compiled: &[CompiledProfile], listed: &BTreeMap<String, Mode>) -> Vec<String> {
    let mut missing = Vec::new();
    for profile in compiled {
        for name in &profile.names {
            let want = profile.modes.get(name);
            match (listed.get(name.as_str()), want) {
                (None, _) => missing.push(format!(
                    "{name:?} from file {:?} is not in the kernel's profile list (is \
                     disable/{} present in the profile directory?)",
                    profile.key, profile.key
                )),
                (Some(have), Some(want)) if have != want => missing.push(format!(
                    "{name:?} from file {:?} is loaded in {have} mode, its flags ask for {want}",
                    profile.key
                )),
                _ => {}
            }
        }
    }
    missing
}

/// Records, for each profile of each file, the kernel's hash of its policy (a name the kernel
/// keeps no hash for is left out): what a rerun proves "unchanged in the kernel" against.
pub fn take_policy_hashes(current: &mut Inventory, hashes: &BTreeMap<String, String>) {
    for entry in current.files.values_mut() {
        entry.policy_sha1 = entry
            .profiles
            .iter()
            .filter_map(|n| hashes.get(n.as_str()).map(|h| (n.clone(), h.clone())))
            .collect();
    }
}

/// How many files are new or changed since the last recorded load, and how many are the same.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub loaded: usize,
    pub unchanged: usize,
}

impl Changes {
    pub fn since(previous: &Inventory, current: &Inventory) -> Self {
        let mut out = Changes::default();
        for (key, entry) in &current.files {
            match previous.files.get(key) {
                Some(old) if old.sha256 == entry.sha256 => out.unchanged += 1,
                _ => out.loaded += 1,
            }
        }
        out
    }
}

/// What `untaint` labels the node with: each top-level profile with its file's digest, the
/// retired ones, and the node's release as `copy` found it.
pub fn node_report(current: &Inventory, node_os: &str) -> NodeReport {
    NodeReport::of(
        current
            .files
            .values()
            .map(|e| (e.sha256.as_str(), e.profiles.as_slice())),
        current.retired.iter().map(ToString::to_string).collect(),
    )
    .with_node_os(node_os)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::keys::Key;
    use crate::profile::names::ProfileName;
    use std::path::PathBuf;

    fn name(s: &str) -> ProfileName {
        ProfileName::try_from(s).unwrap()
    }

    fn compiled(key: &str, sha256: &str, names: &[(&str, Option<Mode>)]) -> CompiledProfile {
        CompiledProfile {
            key: Key::try_from(key).unwrap(),
            path: PathBuf::from(key),
            sha256: sha256.into(),
            names: names.iter().map(|(n, _)| name(n)).collect(),
            modes: names
                .iter()
                .filter_map(|(n, m)| m.clone().map(|m| (name(n), m)))
                .collect(),
        }
    }

    #[test]
    fn the_record_lists_each_file_with_its_digest_names_and_modes_as_verified() {
        let inv = record(&[compiled(
            "k",
            "s1",
            &[("p", Some(Mode::Complain)), ("p//hat", None)],
        )]);
        let entry = &inv.files["k"];
        assert_eq!(entry.sha256, "s1");
        assert_eq!(entry.profiles, [name("p"), name("p//hat")]);
        assert_eq!(entry.modes, [(name("p"), Mode::Complain)].into());
        assert!(!entry.unverified);
        assert!(entry.policy_sha1.is_empty());
    }

    #[test]
    fn a_profile_is_in_force_only_when_listed_in_the_mode_its_flags_ask_for() {
        let files = [compiled(
            "k",
            "s",
            &[
                ("p", Some(Mode::Enforce)),
                ("p//any", None),
                ("p//gone", None),
                ("p//complain", Some(Mode::Complain)),
            ],
        )];
        let listed: BTreeMap<String, Mode> = [
            ("p", Mode::Enforce),
            ("p//any", Mode::Complain),
            ("p//complain", Mode::Enforce),
        ]
        .into_iter()
        .map(|(n, m)| (n.to_string(), m))
        .collect();
        assert_eq!(
            not_in_force(&files, &listed),
            [
                "\"p//gone\" from file \"k\" is not in the kernel's profile list (is disable/k \
                 present in the profile directory?)",
                "\"p//complain\" from file \"k\" is loaded in enforce mode, its flags ask for \
                 complain",
            ]
        );
        let all: BTreeMap<String, Mode> = [
            ("p", Mode::Enforce),
            ("p//any", Mode::Enforce),
            ("p//gone", Mode::Enforce),
            ("p//complain", Mode::Complain),
        ]
        .into_iter()
        .map(|(n, m)| (n.to_string(), m))
        .collect();
        assert!(not_in_force(&files, &all).is_empty());
        // The verdict: what is not in force, else the parser's complaint, else proven.
        assert_eq!(proven(&files, &all, false), Ok(()));
        assert_eq!(
            proven(&files, &all, true),
            Err(vec![
                "the parser reported an error while loading".to_string()
            ])
        );
        assert_eq!(
            proven(&files, &listed, true),
            Err(not_in_force(&files, &listed))
        );
    }

    #[test]
    fn the_record_takes_the_kernels_hash_of_each_of_its_profiles_only() {
        let mut inv = record(&[compiled("k", "s", &[("p", None), ("p//hat", None)])]);
        let hashes: BTreeMap<String, String> = [("p", "h1"), ("other", "h9")]
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect();
        take_policy_hashes(&mut inv, &hashes);
        assert_eq!(
            inv.files["k"].policy_sha1,
            [(name("p"), "h1".to_string())].into()
        );
    }

    #[test]
    fn a_file_counts_as_loaded_unless_the_last_load_had_the_same_bytes() {
        let previous = record(&[
            compiled("same", "s1", &[("a", None)]),
            compiled("edited", "s2", &[("b", None)]),
            compiled("removed", "s3", &[("c", None)]),
        ]);
        let current = record(&[
            compiled("same", "s1", &[("a", None)]),
            compiled("edited", "s2b", &[("b", None)]),
            compiled("new", "s4", &[("d", None)]),
        ]);
        assert_eq!(
            Changes::since(&previous, &current),
            Changes {
                loaded: 2,
                unchanged: 1
            }
        );
    }

    #[test]
    fn the_node_report_has_top_level_profiles_with_their_files_digest_and_the_retired() {
        let mut current = record(&[compiled("k", "abc", &[("p", None), ("p//hat", None)])]);
        current.retired = [name("old")].into();
        let report = node_report(&current, "ubuntu 22.04 (AppArmor 3.0)");
        assert_eq!(report.profiles, [("p".into(), "sha256:abc".into())].into());
        assert_eq!(report.retired, ["old".to_string()].into());
        assert_eq!(report.node_os, "ubuntu 22.04 (AppArmor 3.0)");
    }
}
