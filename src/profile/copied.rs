//! `copy`'s record of the files it owns in the profile directory (`OWNED_FILES`), as pure steps
//! over the record on disk and what was just compiled: the record to write ([`wanted`]), the
//! files it no longer lists ([`removed`]), whether it says anything new ([`same_record`]), and
//! which files the node's AppArmor 3 parser must compile ([`to_check_with_apparmor3`]).

use crate::apparmor::node_parser::NodeParser;
use crate::profile::check::CompiledProfile;
use crate::profile::keys::Key;
use crate::profile::ownership;
use crate::profile::records::Inventory;
use crate::profile::source::ProfileInput;

/// The record `copy` writes for the files it is about to own: each compiled file with its
/// names, compiled by `toolchain`, for the node's parser generation and release.
///
/// A claim is unverified when the kernel's list was not seen (`kernel_seen`), unless the record
/// already holds it checked for exactly the same names: a claim checked against the kernel once
/// stays checked while the names are the same.
pub fn wanted(
    owned: &Inventory,
    compiled: &[CompiledProfile],
    toolchain: &str,
    node_parser: &NodeParser,
    kernel_seen: bool,
) -> Inventory {
    let mut wanted = Inventory {
        toolchain: toolchain.to_string(),
        checked_with_apparmor3: matches!(node_parser, NodeParser::V3 { .. }),
        node_os: node_parser.os().to_string(),
        ..Inventory::default()
    };
    for compiled in compiled {
        let checked_before = owned
            .files
            .get(&compiled.key)
            .is_some_and(|e| !e.unverified && e.profiles == compiled.names);
        wanted.files.insert(
            compiled.key.clone(),
            ownership::entry(compiled, !(kernel_seen || checked_before)),
        );
    }
    wanted
}

/// The files we own that `wanted` no longer lists: to be removed from the destination.
pub fn removed(owned: &Inventory, wanted: &Inventory) -> Vec<Key> {
    owned
        .files
        .keys()
        .filter(|k| !wanted.files.contains_key(*k))
        .cloned()
        .collect()
}

/// Whether the record on disk already says everything `wanted` says (its files, the toolchain,
/// the AppArmor 3 check and the node's release), so it need not be written again.
pub fn same_record(owned: &Inventory, wanted: &Inventory) -> bool {
    owned.files == wanted.files
        && owned.toolchain == wanted.toolchain
        && owned.checked_with_apparmor3 == wanted.checked_with_apparmor3
        && owned.node_os == wanted.node_os
}

/// Whether the AppArmor 3 check must compile every file, not only new or changed ones: the node
/// boots with AppArmor 3 and the record does not say its files were checked so.
pub fn needs_every_file_checked(node_parser: &NodeParser, owned: &Inventory) -> bool {
    matches!(node_parser, NodeParser::V3 { .. }) && !owned.checked_with_apparmor3
}

/// The inputs the node's AppArmor 3 parser must compile: every one when
/// [`needs_every_file_checked`], else those `owned` does not vouch for (new or changed).
pub fn to_check_with_apparmor3<'a>(
    node_parser: &NodeParser,
    owned: &Inventory,
    inputs: &'a [ProfileInput],
) -> Vec<&'a ProfileInput> {
    if needs_every_file_checked(node_parser, owned) {
        inputs.iter().collect()
    } else {
        ownership::unproven(owned, inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apparmor::mode::Mode;
    use crate::profile::names::ProfileName;
    use std::path::PathBuf;

    /// A compiled file (a record vouches only for an entry with the modes the parser printed).
    fn compiled(key: &str, sha256: &str, names: &[&str]) -> CompiledProfile {
        let names: Vec<ProfileName> = names
            .iter()
            .map(|n| ProfileName::try_from(*n).unwrap())
            .collect();
        CompiledProfile {
            key: Key::try_from(key).unwrap(),
            path: PathBuf::from(key),
            sha256: sha256.into(),
            modes: names.iter().map(|n| (n.clone(), Mode::Enforce)).collect(),
            names,
        }
    }

    fn v3() -> NodeParser {
        NodeParser::V3 {
            os: "ubuntu 22.04 (AppArmor 3.0)".into(),
        }
    }

    fn current() -> NodeParser {
        NodeParser::Current {
            os: "ubuntu 24.04 (AppArmor 4.0)".into(),
        }
    }

    fn input(key: &str, sha256: &str) -> ProfileInput {
        ProfileInput {
            key: Key::try_from(key).unwrap(),
            path: PathBuf::from(key),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn the_record_says_which_toolchain_parser_generation_and_release_it_was_made_for() {
        let r = wanted(
            &Inventory::default(),
            &[compiled("a", "s", &["a"])],
            "t1",
            &v3(),
            true,
        );
        assert_eq!(r.toolchain, "t1");
        assert!(r.checked_with_apparmor3);
        assert_eq!(r.node_os, "ubuntu 22.04 (AppArmor 3.0)");
        assert_eq!(r.files["a"].sha256, "s");
        assert!(!r.files["a"].unverified);
        let r = wanted(&Inventory::default(), &[], "t1", &current(), true);
        assert!(!r.checked_with_apparmor3);
        assert_eq!(r.node_os, "ubuntu 24.04 (AppArmor 4.0)");
    }

    #[test]
    fn a_claim_without_the_kernels_list_is_unverified_unless_checked_before_with_the_same_names() {
        let before = wanted(
            &Inventory::default(),
            &[compiled("a", "s1", &["a"]), compiled("b", "s1", &["b"])],
            "t",
            &current(),
            true,
        );
        let now = [
            compiled("a", "s2", &["a"]),
            compiled("b", "s2", &["b", "b//hat"]),
            compiled("c", "s2", &["c"]),
        ];
        let r = wanted(&before, &now, "t", &current(), false);
        assert!(!r.files["a"].unverified, "same names, checked before");
        assert!(r.files["b"].unverified, "a new name was never checked");
        assert!(r.files["c"].unverified, "a new file was never checked");
        // An unverified claim stays so until the kernel's list is seen.
        let again = wanted(&r, &now, "t", &current(), false);
        assert!(again.files["c"].unverified);
        let seen = wanted(&r, &now, "t", &current(), true);
        assert!(seen.files.values().all(|e| !e.unverified));
    }

    #[test]
    fn removed_are_the_owned_files_the_new_record_does_not_list() {
        let owned = wanted(
            &Inventory::default(),
            &[compiled("a", "s", &["a"]), compiled("b", "s", &["b"])],
            "t",
            &current(),
            true,
        );
        let new = wanted(
            &owned,
            &[compiled("b", "s", &["b"]), compiled("c", "s", &["c"])],
            "t",
            &current(),
            true,
        );
        assert_eq!(removed(&owned, &new), [Key::try_from("a").unwrap()]);
    }

    #[test]
    fn the_record_is_rewritten_when_anything_it_says_changed() {
        let files = [compiled("a", "s", &["a"])];
        let owned = wanted(&Inventory::default(), &files, "t", &current(), true);
        assert!(same_record(
            &owned,
            &wanted(&owned, &files, "t", &current(), true)
        ));
        for other in [
            wanted(&owned, &files, "t2", &current(), true),
            wanted(&owned, &files, "t", &v3(), true),
            wanted(
                &owned,
                &[compiled("a", "s2", &["a"])],
                "t",
                &current(),
                true,
            ),
            wanted(&owned, &[], "t", &current(), true),
        ] {
            assert!(!same_record(&owned, &other), "{other:?}");
        }
        let mut other_os = owned.clone();
        other_os.node_os = "debian 12".into();
        assert!(!same_record(&other_os, &owned));
    }

    #[test]
    fn the_apparmor3_parser_checks_every_file_until_the_record_says_they_were_checked_so() {
        let inputs = [input("a", "s1"), input("b", "s2")];
        let files = [compiled("a", "s1", &["a"]), compiled("b", "s1", &["b"])];
        let not_checked = wanted(&Inventory::default(), &files, "t", &current(), true);
        let checked = wanted(&Inventory::default(), &files, "t", &v3(), true);
        let keys = |v: Vec<&ProfileInput>| v.iter().map(|i| i.key.to_string()).collect::<Vec<_>>();
        assert!(needs_every_file_checked(&v3(), &not_checked));
        assert_eq!(
            keys(to_check_with_apparmor3(&v3(), &not_checked, &inputs)),
            ["a", "b"]
        );
        // Checked so before: only what the record does not vouch for (b's bytes changed).
        assert!(!needs_every_file_checked(&v3(), &checked));
        assert_eq!(
            keys(to_check_with_apparmor3(&v3(), &checked, &inputs)),
            ["b"]
        );
        assert!(!needs_every_file_checked(&current(), &not_checked));
    }
}
