//! What this tool owns, recorded on the host so every run can tell its own files and profiles
//! from everyone else's.
//!
//! Two records share one format:
//! - `copy` keeps `<dest>/.apparmor-profile-loader.json`: the files it wrote to the profile
//!   directory and the profile names each defines. A file not listed there is never touched.
//! - `load` keeps `<cache-dir>/loaded.json`: what it loaded and verified in the kernel. Only
//!   names listed there are ever unloaded.
//!
//! Both records are host files read back on every run, and their entries become paths and
//! profile names. So every entry is checked as it is read, with the rules its origin had to
//! pass, by the types it is read into: a file name is a [`Key`] (no `/`, no `..`, no
//! dot-file), each profile name a [`ProfileName`] this tool could have loaded, each mode a
//! [`Mode`]; an entry's names list children only beside their parent ([`read_files`]). A
//! record with an entry that fails is corrupt: the run stops (exit 1) before anything is
//! touched, naming the file and the entry.
//!
//! Hashes (`sha256`, the kernel's `sha1`, the toolchain fingerprint) stay strings: this tool
//! only compares them with hashes it computed or read itself, so a type would check nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::apparmor::mode::Mode;
use crate::host::atomic_file;
use crate::host::host_file;
use crate::profile::keys::Key;
use crate::profile::names::{ProfileName, check_name_set};

/// File name of `copy`'s ownership record in the profile directory. A dot-file, so
/// `apparmor_parser` never reads it as a profile.
pub const OWNED_FILES: &str = ".apparmor-profile-loader.json";
/// File name of `load`'s record in the cache directory.
pub const LOADED_PROFILES: &str = "loaded.json";

const FORMAT_VERSION: u32 = 1;

/// One profile file and what it defines, as the parser reported it for these exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub sha256: String,
    pub profiles: Vec<ProfileName>,
    /// The mode each top-level profile asks for.
    #[serde(default)]
    pub modes: BTreeMap<ProfileName, Mode>,
    /// `load`'s record only: the kernel's hash (securityfs `sha1`) of each profile's policy as
    /// loaded and verified, so a re-run can prove nothing changed without loading again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policy_sha1: BTreeMap<ProfileName, String>,
    /// `copy`'s record only: the names were claimed without seeing the kernel's list (AppArmor
    /// was not running), so they do not prove the names are ours: `load` does not count them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
}

/// Files by name, as written to disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub version: u32,
    /// Fingerprint of the parser, include tree and feature set that compiled and described
    /// the entries (`toolchain::fingerprint`); entries are reused only under the same one.
    #[serde(default)]
    pub toolchain: String,
    #[serde(deserialize_with = "read_files")]
    pub files: BTreeMap<Key, Entry>,
    /// `copy`'s record only: every file listed also compiled with the image's AppArmor 3
    /// parser (the node boots with AppArmor 3). When a node is first found to need that check,
    /// a record without it has every file checked, not only the new ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checked_with_apparmor3: bool,
    /// `copy`'s record only: the node's release and its AppArmor as `copy` found them, which
    /// `load` reports on the node (the annotation's `nodeOS`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_os: String,
    /// `load`'s record only: top-level profiles of ours that left the ConfigMap and stay in the
    /// kernel, as last loaded, until the node reboots (unloading would unconfine every task
    /// under them). Their files are gone, so the node's next boot does not load them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub retired: BTreeSet<ProfileName>,
    /// `load`'s record only: children (hats, child profiles) that our files no longer define,
    /// replaced in the kernel by a deny-everything profile of the same name, with the kernel's
    /// hash of that stub (proven equal to the one computed from the stub's compiled bytes; in
    /// records of older versions unproven or empty: never trusted to skip a stub).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub neutralised: BTreeMap<ProfileName, String>,
    /// `load`'s record only: the whole family of each retired profile (the profile and every
    /// child the kernel listed under it when it was retired: hats, child profiles, neutralised
    /// stubs), with the kernel's hash of each (empty when the kernel keeps none). A family
    /// member is ours only while the kernel still holds exactly this policy in this boot
    /// ([`Inventory::retired_still_ours`]): so a rollback may bring the profile back with its
    /// children, and an administrator's own profile of that name after a reboot is not ours.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retired_sha1: BTreeMap<ProfileName, String>,
    /// `load`'s record only: the kernel boot (`/proc/sys/kernel/random/boot_id`) in which the
    /// retired family was seen; nothing retired survives a reboot.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
}

/// What the kernel shows now, to check a retired claim against.
#[derive(Debug, Clone, Copy)]
pub struct KernelNow<'a> {
    /// The kernel's profile list (names only matter here).
    pub listed: &'a BTreeMap<String, Mode>,
    /// The kernel's policy hashes by profile name.
    pub hashes: &'a BTreeMap<String, String>,
    /// This boot's id; empty when it could not be read (then no retired claim holds).
    pub boot_id: &'a str,
}

/// Why a recorded retired name is no longer ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimLost {
    /// The kernel no longer lists it (the node rebooted).
    Gone,
    /// Listed, but not provably the policy we retired: another boot, another hash, or a record
    /// written before hashes and boot ids were kept.
    NotOurs,
}

/// Reads a record's `files`, naming the entry in any error: each file name a [`Key`], each
/// entry's names [`ProfileName`]s (and its modes [`Mode`]s), children only beside their parent.
fn read_files<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Key, Entry>, D::Error> {
    struct Files;
    impl<'de> serde::de::Visitor<'de> for Files {
        type Value = BTreeMap<Key, Entry>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map from file name to entry")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut files = BTreeMap::new();
            while let Some(raw) = map.next_key::<String>()? {
                let bad = |why: &dyn std::fmt::Display| {
                    serde::de::Error::custom(format!("entry {raw:?} {why}"))
                };
                let key = Key::try_from(raw.as_str()).map_err(|e| {
                    bad(&format_args!(
                        "is not a file name this tool writes: {}",
                        e.reason
                    ))
                })?;
                let entry: Entry = map
                    .next_value()
                    .map_err(|e| bad(&format_args!("lists {e}")))?;
                check_name_set(&entry.profiles)
                    .map_err(|e| bad(&format_args!("lists a child without its parent: {e}")))?;
                files.insert(key, entry);
            }
            Ok(files)
        }
    }
    d.deserialize_map(Files)
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state file {path} is corrupt ({source}); it lists what this tool owns, so it is not \
         guessed: restore it or remove it together with the files it listed"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Well-formed JSON with an entry this tool never writes (`reason` names the entry).
    #[error(
        "state file {path} is corrupt: {reason}; this tool never writes such an entry, so the \
         file was changed by hand or damaged. It lists what this tool owns, so it is not \
         guessed: restore it or remove it together with the files it listed"
    )]
    BadEntry { path: PathBuf, reason: String },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Inventory {
    /// Reads a record; a missing file is an empty inventory (first run on this node).
    pub fn load(dir: &Path, name: &str) -> Result<Self, StateError> {
        let path = dir.join(name);
        let inventory: Self = match host_file::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| {
                // Data: an entry the types refused (or a value of the wrong kind), not broken JSON.
                if source.classify() == serde_json::error::Category::Data {
                    StateError::BadEntry {
                        path: path.clone(),
                        reason: source.to_string(),
                    }
                } else {
                    StateError::Corrupt {
                        path: path.clone(),
                        source,
                    }
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        inventory
            .check_entries()
            .map_err(|(entry, reason)| StateError::BadEntry {
                path,
                reason: format!("entry {entry:?} {reason}"),
            })?;
        Ok(inventory)
    }

    /// Checks what the types cannot: a retired name is a top-level profile, a neutralised one
    /// a child. Returns the first offending entry and why.
    fn check_entries(&self) -> Result<(), (String, String)> {
        let shape = |kind: &str, name: &ProfileName, child: bool| match (child, name.is_child()) {
            (true, false) => Err((
                format!("{kind} {name:?}"),
                "is not a child profile or hat (parent//child)".to_string(),
            )),
            (false, true) => Err((
                format!("{kind} {name:?}"),
                "is a child; only top-level profiles are retired".to_string(),
            )),
            _ => Ok(()),
        };
        for name in &self.retired {
            shape("retired", name, false)?;
        }
        for name in self.neutralised.keys() {
            shape("neutralised", name, true)?;
        }
        for name in self.retired_sha1.keys() {
            let top = name.as_str().split("//").next().unwrap_or_default();
            if !self.retired.iter().any(|r| r.as_str() == top) {
                return Err((
                    format!("retired_sha1 {name:?}"),
                    format!("belongs to {top:?}, which is not listed as retired"),
                ));
            }
        }
        Ok(())
    }

    /// The members of the retired families (profile and children) that are still ours: the
    /// kernel lists each, in the boot the record saw, with exactly the hash recorded (or, on a
    /// kernel that keeps no hashes, none now either). Anything else is not provably what we
    /// retired (a reboot cleared it and someone loaded that name since), so it is not ours.
    pub fn retired_still_ours(&self, now: KernelNow<'_>) -> BTreeMap<ProfileName, String> {
        self.retired_sha1
            .iter()
            .filter(|(name, _)| self.retired_claim(name, now).is_ok())
            .map(|(n, h)| (n.clone(), h.clone()))
            .collect()
    }

    /// Whether the record's claim on a retired name (or a child of one) holds now, and why not.
    pub fn retired_claim(&self, name: &ProfileName, now: KernelNow<'_>) -> Result<(), ClaimLost> {
        if !now.listed.contains_key(name.as_str()) {
            return Err(ClaimLost::Gone);
        }
        let same_boot = !self.boot_id.is_empty() && self.boot_id == now.boot_id;
        let same_policy = self.retired_sha1.get(name).is_some_and(|h| {
            now.hashes
                .get(name.as_str())
                .map_or(h.is_empty(), |k| k == h)
        });
        if same_boot && same_policy {
            Ok(())
        } else {
            Err(ClaimLost::NotOurs)
        }
    }

    /// Whether a record exists at all.
    pub fn exists(dir: &Path, name: &str) -> bool {
        dir.join(name).exists()
    }

    /// Writes the record atomically (mode 0644: it holds names and hashes, nothing secret).
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), StateError> {
        let mut record = self.clone();
        record.version = FORMAT_VERSION;
        let mut json = serde_json::to_vec_pretty(&record).expect("inventory serializes");
        json.push(b'\n');
        atomic_file::write(dir, name, &json, 0o644)
            .and_then(|()| atomic_file::sync_dir(dir))
            .map_err(|source| StateError::Write {
                path: dir.join(name),
                source,
            })
    }

    /// This record if the toolchain that wrote it is `toolchain`, else an empty one: what a
    /// record says a file compiles to and defines holds only for the parser that said it.
    pub fn if_compiled_by(&self, toolchain: &str) -> Inventory {
        if self.toolchain == toolchain {
            self.clone()
        } else {
            Inventory::default()
        }
    }

    /// The entry for `key` if it describes exactly the content hashed `sha256`.
    pub fn describes(&self, key: &str, sha256: &str) -> Option<&Entry> {
        self.files
            .get(key)
            .filter(|e| e.sha256 == sha256 && !e.modes.is_empty())
    }

    /// Every name this record proves is ours: the profiles of its files, the neutralised
    /// children, and the retired profiles and their children while the kernel still holds
    /// exactly what we retired ([`Inventory::retired_still_ours`]). A loaded profile of one of
    /// these names is ours to replace.
    pub fn claimed_names(&self, now: KernelNow<'_>) -> BTreeSet<ProfileName> {
        let mut names = self.profile_names();
        names.extend(self.retired_still_ours(now).into_keys());
        names.extend(self.neutralised.keys().cloned());
        names
    }

    /// The names of the files whose claim was checked against the kernel's list.
    pub fn verified_names(&self) -> BTreeSet<ProfileName> {
        self.files
            .values()
            .filter(|e| !e.unverified)
            .flat_map(|e| e.profiles.iter().cloned())
            .collect()
    }

    /// Every profile name the inventory's files define.
    pub fn profile_names(&self) -> BTreeSet<ProfileName> {
        self.files
            .values()
            .flat_map(|e| e.profiles.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn name(s: &str) -> ProfileName {
        ProfileName::try_from(s).unwrap()
    }

    /// A record as this tool wrote it before keys, names and modes were types (here, a
    /// `loaded.json` with every field; `copy`'s has a subset): it must read back unchanged and
    /// be written back byte for byte, or nodes already running would lose their records.
    const RECORD_ON_A_NODE: &str = r#"{
  "version": 1,
  "toolchain": "0123456789abcdef01234567",
  "files": {
    "k8s-web": {
      "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
      "profiles": [
        "k8s-web",
        "k8s-web//^hat",
        "k8s-web//kid"
      ],
      "modes": {
        "k8s-web": "enforce"
      },
      "policy_sha1": {
        "k8s-web": "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
        "k8s-web//kid": "b94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
      }
    },
    "usr.bin.odd": {
      "sha256": "ab",
      "profiles": [
        "/usr/bin/odd",
        "odd (name)"
      ],
      "modes": {
        "/usr/bin/odd": "complain",
        "odd (name)": "prompt"
      },
      "unverified": true
    }
  },
  "retired": [
    "k8s-old"
  ],
  "neutralised": {
    "k8s-web//gone": "c94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
  }
}
"#;

    #[test]
    fn a_record_written_before_the_types_reads_back_and_is_rewritten_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOADED_PROFILES), RECORD_ON_A_NODE).unwrap();
        let inv = Inventory::load(dir.path(), LOADED_PROFILES).unwrap();
        let odd = &inv.files["usr.bin.odd"];
        assert_eq!(odd.modes[&name("/usr/bin/odd")], Mode::Complain);
        assert_eq!(odd.modes[&name("odd (name)")], Mode::Other("prompt".into()));
        assert!(odd.unverified);
        assert!(inv.neutralised.contains_key("k8s-web//gone"));
        inv.save(dir.path(), LOADED_PROFILES).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(LOADED_PROFILES)).unwrap(),
            RECORD_ON_A_NODE
        );
    }

    #[test]
    fn round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Inventory::load(dir.path(), OWNED_FILES).unwrap(),
            Inventory::default()
        );
        let mut inv = Inventory::default();
        inv.files.insert(
            Key::try_from("p").unwrap(),
            Entry {
                sha256: "ab".into(),
                profiles: vec![name("p"), name("p//hat")],
                modes: BTreeMap::from([(name("p"), Mode::Enforce)]),
                policy_sha1: BTreeMap::new(),
                unverified: false,
            },
        );
        inv.save(dir.path(), OWNED_FILES).unwrap();
        let back = Inventory::load(dir.path(), OWNED_FILES).unwrap();
        assert_eq!(back.files, inv.files);
        assert_eq!(back.version, 1);
        assert_eq!(back.profile_names().len(), 2);
        assert!(back.describes("p", "ab").is_some());
        assert!(back.describes("p", "cd").is_none());
        assert!(back.describes("q", "ab").is_none());
    }

    #[test]
    fn corrupt_record_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(OWNED_FILES), "{not json").unwrap();
        let err = Inventory::load(dir.path(), OWNED_FILES).unwrap_err();
        assert!(err.to_string().contains("corrupt"));
    }

    /// A record whose entries name `files` as (file name, profile names), as written by hand.
    fn record_json(files: &[(&str, &[&str])]) -> String {
        let files: serde_json::Map<String, serde_json::Value> = files
            .iter()
            .map(|(key, names)| {
                (
                    key.to_string(),
                    serde_json::json!({"sha256": "ab", "profiles": names}),
                )
            })
            .collect();
        serde_json::json!({"version": 1, "files": files}).to_string()
    }

    #[test]
    fn entries_that_are_not_keys_or_loadable_names_make_the_record_corrupt() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("../x", &["p"], "'/'"),
            ("..x", &["p"], "'..'"),
            ("/etc/passwd", &["p"], "'/'"),
            ("dir/x", &["p"], "'/'"),
            (".hidden", &["p"], "letter or digit"),
            ("", &["p"], "empty"),
            ("x", &[""], "empty"),
            ("x", &["a\nb"], "control character"),
            ("x", &[":ns:p"], "namespace"),
            ("x", &["p//"], "'//'"),
            ("x", &["hostprof//kid"], "without its parent"),
            ("x", &["p", "p//a//b"], "without its parent"),
        ];
        for record in [OWNED_FILES, LOADED_PROFILES] {
            for (key, names, why) in cases {
                let dir = tempfile::tempdir().unwrap();
                let json = record_json(&[("good", &["good"]), (key, names)]);
                fs::write(dir.path().join(record), json).unwrap();
                let err = Inventory::load(dir.path(), record).unwrap_err();
                let msg = err.to_string();
                assert!(matches!(err, StateError::BadEntry { .. }), "{key:?}: {msg}");
                assert!(
                    msg.contains(&dir.path().join(record).display().to_string()),
                    "{msg}"
                );
                assert!(msg.contains(&format!("entry {key:?}")), "{msg}");
                assert!(msg.contains(why), "{key:?} {names:?}: {msg}");
            }
        }
    }

    /// A record is the proof of ownership, and `load` unloads, replaces or retires what it
    /// lists: a container runtime's own profile can never have been loaded from a file of ours
    /// (`validate` refuses the name, `--adopt-loaded` or not), so a record that lists one is
    /// corrupt, whoever wrote it.
    #[test]
    fn a_record_that_lists_a_runtime_default_or_unconfined_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "docker-default",
            "cri-containerd.apparmor.d",
            "unconfined",
            " p",
        ] {
            let json = record_json(&[("never-written", &[name])]);
            fs::write(dir.path().join(LOADED_PROFILES), json).unwrap();
            let err = Inventory::load(dir.path(), LOADED_PROFILES).unwrap_err();
            assert!(
                matches!(err, StateError::BadEntry { .. }),
                "{name:?}: {err}"
            );
        }
    }

    #[test]
    fn retired_and_neutralised_names_pass_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Inventory::default();
        inv.retired.insert(name("k8s-old"));
        inv.neutralised.insert(name("p//kid"), "abc".into());
        inv.save(dir.path(), LOADED_PROFILES).unwrap();
        let back = Inventory::load(dir.path(), LOADED_PROFILES).unwrap();
        assert_eq!(back.retired, inv.retired);
        assert_eq!(back.neutralised, inv.neutralised);
        let listed = BTreeMap::new();
        let hashes = BTreeMap::new();
        let now = KernelNow {
            listed: &listed,
            hashes: &hashes,
            boot_id: "",
        };
        assert!(back.claimed_names(now).contains("p//kid"));
        // A retired family member belongs to a retired profile.
        let json = serde_json::json!({
            "version": 1, "files": {}, "retired": ["k8s-old"],
            "retired_sha1": { "k8s-old": "a", "k8s-old//hat": "b", "other//hat": "c" },
        });
        fs::write(dir.path().join(LOADED_PROFILES), json.to_string()).unwrap();
        let msg = Inventory::load(dir.path(), LOADED_PROFILES)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("other//hat") && msg.contains("not listed as retired"),
            "{msg}"
        );
        for (retired, neutralised, offender) in [
            (
                "cri-containerd.apparmor.d",
                "p//kid",
                "cri-containerd.apparmor.d",
            ),
            ("k8s-old", "top-level", "top-level"),
            ("k8s-old", "docker-default//x", "docker-default//x"),
            ("k8s-old//kid", "p//kid", "k8s-old//kid"),
        ] {
            let json = serde_json::json!({
                "version": 1, "files": {},
                "retired": [retired], "neutralised": { neutralised: "abc" },
            });
            fs::write(dir.path().join(LOADED_PROFILES), json.to_string()).unwrap();
            let msg = Inventory::load(dir.path(), LOADED_PROFILES)
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("is corrupt") && msg.contains(offender),
                "{retired:?} {neutralised:?}: {msg}"
            );
        }
    }
}
