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
//! profile names. So every entry is checked when read, with the rules its origin had to pass:
//! a file name must be a valid ConfigMap key ([`profile_files::validate_key`]: no `/`, no
//! `..`, no dot-file) and each profile name one this tool could have loaded
//! ([`profile_names`]), children only beside their parent. A record with an entry that fails
//! is corrupt: the run stops (exit 1) before anything is touched, naming the file and entry.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{atomic_file, profile_files, profile_names};

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
    pub profiles: Vec<String>,
    /// The mode each top-level profile asks for.
    #[serde(default)]
    pub modes: BTreeMap<String, String>,
    /// `load`'s record only: the kernel's hash (securityfs `sha1`) of each profile's policy as
    /// loaded and verified, so a re-run can prove nothing changed without loading again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policy_sha1: BTreeMap<String, String>,
}

/// Files by name, as written to disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub version: u32,
    /// Fingerprint of the parser, include tree and feature set that compiled and described
    /// the entries (`toolchain::fingerprint`); entries are reused only under the same one.
    #[serde(default)]
    pub toolchain: String,
    pub files: BTreeMap<String, Entry>,
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
    #[error(
        "state file {path} is corrupt: entry {entry:?} {reason}; this tool never writes such an \
         entry, so the file was changed by hand or damaged. It lists what this tool owns, so it \
         is not guessed: restore it or remove it together with the files it listed"
    )]
    BadEntry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
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
        let inventory: Self = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        inventory
            .check_entries()
            .map_err(|(entry, reason)| StateError::BadEntry {
                path,
                entry,
                reason,
            })?;
        Ok(inventory)
    }

    /// Checks every entry as its origin was checked: the file name as a ConfigMap key, each
    /// profile name as a name this tool loads, each child beside its parent. Returns the first
    /// offending entry (the file name) and why.
    fn check_entries(&self) -> Result<(), (String, String)> {
        for (key, entry) in &self.files {
            profile_files::validate_key(key).map_err(|e| {
                (
                    key.clone(),
                    format!("is not a file name this tool writes: {e}"),
                )
            })?;
            for name in &entry.profiles {
                profile_names::check_profile_name(name).map_err(|e| {
                    (
                        key.clone(),
                        format!("lists profile {name:?}, a name this tool never loads: {e}"),
                    )
                })?;
            }
            profile_names::check_name_set(&entry.profiles).map_err(|e| {
                (
                    key.clone(),
                    format!("lists a child without its parent: {e}"),
                )
            })?;
        }
        Ok(())
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

    /// Every profile name in the inventory.
    pub fn profile_names(&self) -> BTreeSet<String> {
        self.files
            .values()
            .flat_map(|e| e.profiles.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Inventory::load(dir.path(), OWNED_FILES).unwrap(),
            Inventory::default()
        );
        let mut inv = Inventory::default();
        inv.files.insert(
            "p".into(),
            Entry {
                sha256: "ab".into(),
                profiles: vec!["p".into(), "p//hat".into()],
                modes: BTreeMap::from([("p".into(), "enforce".into())]),
                policy_sha1: BTreeMap::new(),
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

    /// A record is the proof of ownership (what `load` loaded, what `copy` wrote), so a name
    /// shaped like one this tool loads is accepted whoever else uses it: `docker-default` is in
    /// `loaded.json` legitimately after `--adopt-loaded` took it over. What the checks refuse is
    /// anything a profile file of ours could not have produced.
    #[test]
    fn a_loadable_name_is_accepted_even_when_it_is_a_runtime_default() {
        let dir = tempfile::tempdir().unwrap();
        let json = record_json(&[
            ("never-written", &["docker-default"]),
            ("p", &["p", "p//hat", "p//hat//inner"]),
        ]);
        fs::write(dir.path().join(LOADED_PROFILES), json).unwrap();
        let inv = Inventory::load(dir.path(), LOADED_PROFILES).unwrap();
        assert!(inv.profile_names().contains("docker-default"));
    }
}
