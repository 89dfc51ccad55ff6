//! Ownership: which files and profile names are ours, one set of rules for `copy` and `load`.
//!
//! Both steps share the host with the distribution and with whoever loads profiles by hand, so
//! both follow the same three rules:
//! - a profile name the kernel has loaded is ours only if one of our records lists it (`load`'s
//!   record of what it loaded, retired or neutralised; `copy`'s claims checked against the
//!   kernel's list); anything else is someone else's and is never replaced;
//! - what a run is about to write or load is recorded before it acts, so a crash half-way never
//!   leaves a file or a loaded profile we made but do not own;
//! - a record vouches for a file only when it describes exactly these bytes (with the toolchain
//!   that compiled them): anything else is compiled and asked about again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::apparmor::kernel::Kernel;
use crate::apparmor::mode::Mode;
use crate::profile::check::CompiledProfile;
use crate::profile::keys::Key;
use crate::profile::names::ProfileName;
use crate::profile::records::{Entry, Inventory, KernelNow, StateError};
use crate::profile::source::ProfileInput;

/// Which step refuses someone else's profiles (the explanation differs, the rule does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimant {
    Copy,
    Load,
}

/// Profiles someone else loaded that the run would replace; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error(
    "profiles already loaded by someone else would be replaced, nothing was changed: {}. {}Rename \
     the profiles in the ConfigMap; if you really mean to take them over, pass --adopt-loaded once",
    .names.join(", "),
    why(*.claimant)
)]
pub struct SomeoneElses {
    /// One line per name, naming our file that defines it.
    pub names: Vec<String>,
    pub claimant: Claimant,
}

fn why(claimant: Claimant) -> &'static str {
    match claimant {
        Claimant::Copy => {
            "Replacing them would change the confinement of every process using them (a \
             distribution profile, or one loaded by hand). "
        }
        Claimant::Load => {
            "Our records (what copy claimed and what load loaded) do not list them; replacing \
             them would change the confinement of every process using them. "
        }
    }
}

/// The profile names our records prove are ours: `copy`'s claims made while it saw the
/// kernel's list (`owned`), and every name `load` loaded or neutralised, or retired while the
/// kernel still holds exactly what it retired, in the same boot (`loaded`, checked against
/// `now`).
fn our_names(
    owned: &Inventory,
    loaded: Option<&Inventory>,
    now: KernelNow<'_>,
) -> BTreeSet<ProfileName> {
    let mut ours = owned.verified_names();
    if let Some(loaded) = loaded {
        ours.extend(loaded.claimed_names(now));
    }
    ours
}

/// Refuses to replace a profile the kernel has loaded that `ours` does not list: the names
/// our files define that are someone else's, one line per name, naming the file.
fn refuse_someone_elses(
    compiled: &[CompiledProfile],
    loaded: &BTreeMap<String, Mode>,
    ours: &BTreeSet<ProfileName>,
    claimant: Claimant,
) -> Result<(), SomeoneElses> {
    let names: Vec<String> = compiled
        .iter()
        .flat_map(|c| c.names.iter().map(move |n| (n, &c.key)))
        .filter(|(name, _)| loaded.contains_key(name.as_str()) && !ours.contains(*name))
        .map(|(name, key)| format!("{name:?} (our file {key:?}; loaded, but not by us)"))
        .collect();
    if names.is_empty() {
        Ok(())
    } else {
        Err(SomeoneElses { names, claimant })
    }
}

/// Refuses to replace a profile the kernel lists (`listed`) that our records (`copy`'s `owned`,
/// `load`'s `loaded`) do not prove ours as the kernel holds it now, its policy hashes read now
/// and in this boot (`boot_id`): [`our_names`], then [`refuse_someone_elses`].
pub fn refuse_someone_elses_now(
    kernel: &Kernel,
    listed: &BTreeMap<String, Mode>,
    boot_id: &str,
    owned: &Inventory,
    loaded: Option<&Inventory>,
    compiled: &[CompiledProfile],
    claimant: Claimant,
) -> Result<(), SomeoneElses> {
    let hashes = kernel.policy_hashes();
    let now = KernelNow {
        listed,
        hashes: &hashes,
        boot_id,
    };
    let ours = our_names(owned, loaded, now);
    refuse_someone_elses(compiled, listed, &ours, claimant)
}

/// The keys whose file already exists in the destination but is not ours (`owned` does not list
/// it), each with its path: writing them would replace someone else's file.
pub fn foreign_files<'a>(
    dest: &Path,
    owned: &Inventory,
    keys: impl Iterator<Item = &'a Key>,
) -> Vec<String> {
    keys.filter(|k| !owned.files.contains_key(*k))
        .filter(|k| std::fs::symlink_metadata(dest.join(k)).is_ok())
        .map(|k| format!("{k:?} ({})", dest.join(k).display()))
        .collect()
}

/// The inputs `known` does not vouch for (not these bytes, or not with this toolchain): the
/// ones to compile and ask about now.
pub fn unproven<'a>(known: &Inventory, inputs: &'a [ProfileInput]) -> Vec<&'a ProfileInput> {
    inputs
        .iter()
        .filter(|i| known.describes(&i.key, &i.sha256).is_none())
        .collect()
}

/// The record entry for a compiled file (`unverified`: claimed without the kernel's list).
pub fn entry(compiled: &CompiledProfile, unverified: bool) -> Entry {
    Entry {
        sha256: compiled.sha256.clone(),
        profiles: compiled.names.clone(),
        modes: compiled.modes.clone(),
        policy_sha1: BTreeMap::new(),
        unverified,
    }
}

/// Records before acting: saves `record` with `wanted`'s files added, so that whatever the run
/// writes or loads next, and however far it gets, is ours. `toolchain` is what the union may
/// say compiled it (`copy`: nothing, its entries come from two toolchains).
pub fn record_before_acting(
    record: &Inventory,
    wanted: &Inventory,
    toolchain: &str,
    dir: &Path,
    name: &str,
) -> Result<(), StateError> {
    let mut intent = record.clone();
    intent.files.extend(wanted.files.clone());
    intent.toolchain = toolchain.to_string();
    intent.save(dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_the_destination_that_we_do_not_own_is_foreign_even_as_a_dangling_link() {
        let dest = tempfile::tempdir().unwrap();
        let key = |k: &str| Key::try_from(k).unwrap();
        std::fs::write(dest.path().join("ours"), "").unwrap();
        std::fs::write(dest.path().join("theirs"), "").unwrap();
        std::os::unix::fs::symlink("/nowhere", dest.path().join("link")).unwrap();
        let mut owned = Inventory::default();
        owned.files.insert(
            key("ours"),
            Entry {
                sha256: String::new(),
                profiles: vec![],
                modes: BTreeMap::new(),
                policy_sha1: BTreeMap::new(),
                unverified: false,
            },
        );
        let keys = ["ours", "theirs", "link", "new"].map(key);
        let shown = |k: &str| format!("{k:?} ({})", dest.path().join(k).display());
        assert_eq!(
            foreign_files(dest.path(), &owned, keys.iter()),
            [shown("theirs"), shown("link")]
        );
    }
}
