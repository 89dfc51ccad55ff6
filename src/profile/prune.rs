//! What `load` does with what left the ConfigMap, decided from our records and the kernel's
//! list as read once, never by unloading.
//!
//! The kernel unconfines every task of a profile (or child profile, or hat) that is unloaded
//! (`security/apparmor/policy.c`, `__remove_profile()`), and keeps a replaced profile's children
//! that the new version does not define (`__replace_profile()` hands them to the new parent). So
//! nothing is ever unloaded:
//! - a top-level profile that left the ConfigMap is **retired** ([`retire`]): it stays in the
//!   kernel as last loaded until the node reboots (its file is already gone, so the boot does not
//!   load it). Its tasks stay confined as before and nothing gains a right. Retired profiles stay
//!   in our record with their whole family (the children the kernel lists under them), each with
//!   the kernel's policy hash, and the boot id: they are ours, reported on every run, only while
//!   the kernel holds exactly that policy in that boot, and leave the record otherwise.
//! - a child profile or hat that its parent no longer defines is **stale**
//!   ([`stale_children`]) and is neutralised: replaced by a deny-everything profile of exactly
//!   the same name, proven by the kernel's policy hash (`profile::neutralise`).
//!
//! A rerun loads nothing when the kernel provably holds exactly these bytes already
//! ([`unchanged_in_kernel`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::apparmor::mode::Mode;
use crate::profile::check::CompiledProfile;
use crate::profile::names::{BadProfileName, ProfileName};
use crate::profile::records::{ClaimLost, Inventory, KernelNow};

/// Whether the kernel already holds exactly what we would load: every file is byte for byte
/// what the last verified load loaded, with the same toolchain, and the kernel's hash of every
/// profile's policy is still the one recorded then (nobody replaced one since). Without the
/// kernel's hashes this is never proven, and the files are loaded again.
pub fn unchanged_in_kernel(
    compiled: &[CompiledProfile],
    previous: &Inventory,
    hashes: &BTreeMap<String, String>,
    toolchain: &str,
) -> bool {
    previous.toolchain == toolchain
        && compiled.iter().all(|c| {
            previous.files.get(&c.key).is_some_and(|e| {
                e.sha256 == c.sha256
                    && e.profiles == c.names
                    && c.names.iter().all(|n| {
                        e.policy_sha1
                            .get(n)
                            .is_some_and(|h| hashes.get(n.as_str()) == Some(h))
                    })
            })
        })
}

/// What is retired after this run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retired {
    /// The retired top-level profiles.
    pub tops: Vec<ProfileName>,
    /// Each retired profile's whole family (itself and the children the kernel listed under it
    /// when it was retired), with the kernel's hash of each.
    pub family: BTreeMap<ProfileName, String>,
    /// Retired names of earlier runs that are no longer ours, and why.
    pub lost: Vec<(ProfileName, ClaimLost)>,
}

impl Retired {
    /// Writes what is retired into the record of this run: the families with their hashes, the
    /// boot they hold for (none when nothing is retired), and the retired top-level names.
    pub fn keep_in(&self, current: &mut Inventory, boot_id: &str) {
        current.retired_sha1 = self.family.clone();
        current.boot_id = if current.retired_sha1.is_empty() {
            String::new()
        } else {
            boot_id.to_string()
        };
        current.retired = self.tops.iter().cloned().collect();
    }

    /// Says what was retired now, and which earlier retired names are no longer ours.
    pub fn log(&self) {
        for name in &self.tops {
            tracing::warn!(
                profile = %name,
                "retired {name:?}: it left the ConfigMap and stays loaded, as last loaded, until \
                 the node reboots (unloading it would unconfine every process running under it); \
                 its file is gone, so the next boot does not load it"
            );
        }
        for (name, why) in &self.lost {
            match why {
                ClaimLost::Gone => tracing::info!(
                    profile = %name,
                    "{name:?} was retired and the kernel no longer lists it (the node rebooted): \
                     dropped from the record"
                ),
                ClaimLost::NotOurs => tracing::warn!(
                    profile = %name,
                    "{name:?} was retired, but the kernel's {name:?} is not provably the policy we \
                     retired (the node rebooted since, or its policy hash changed: someone else \
                     loaded that name): dropped from the record, left alone and no longer counted \
                     as ours; to take it over, bring it back in the ConfigMap and pass \
                     --adopt-loaded once"
                ),
            }
        }
    }
}

/// The top-level profiles of ours that the kernel still has but our files no longer define,
/// each with its whole family: those a previous run loaded (their family taken from the kernel
/// now: every child listed under them, neutralised stubs included) and those a previous run
/// retired whose claim still holds (the same policy in the same boot). They stay loaded (see
/// the module docs). A family is recorded whole so that the ConfigMap may bring the profile
/// back with its hats and children: those names are ours too.
pub fn retire(previous: &Inventory, current: &Inventory, now: KernelNow<'_>) -> Retired {
    let wanted = current.profile_names();
    let back = |name: &ProfileName| {
        let top = name.as_str().split("//").next().unwrap_or_default();
        wanted.iter().any(|w| w.as_str() == top)
    };
    let mut out = Retired::default();
    for (name, hash) in &previous.retired_sha1 {
        if back(name) {
            // Back in the ConfigMap: loaded and verified as a file of ours now, and its
            // children that the file no longer defines are neutralised.
            continue;
        }
        match previous.retired_claim(name, now) {
            Ok(()) => {
                out.family.insert(name.clone(), hash.clone());
            }
            Err(why) => out.lost.push((name.clone(), why)),
        }
    }
    // Retired by a version that kept no hashes or boot ids: not provably ours.
    for name in &previous.retired {
        if !previous.retired_sha1.contains_key(name) && !back(name) {
            let why = if now.listed.contains_key(name.as_str()) {
                ClaimLost::NotOurs
            } else {
                ClaimLost::Gone
            };
            out.lost.push((name.clone(), why));
        }
    }
    let hash_of = |name: &str| now.hashes.get(name).cloned().unwrap_or_default();
    for top in previous.profile_names() {
        if top.is_child()
            || wanted.contains(&top)
            || out.family.contains_key(&top)
            || !now.listed.contains_key(top.as_str())
        {
            continue;
        }
        let prefix = format!("{top}//");
        for child in now.listed.keys().filter(|n| n.starts_with(&prefix)) {
            // A child name this tool could not load cannot be recorded: it stays someone
            // else's, as it was.
            if let Ok(name) = ProfileName::try_from(child.as_str()) {
                out.family.insert(name, hash_of(child));
            }
        }
        out.family.insert(top.clone(), hash_of(top.as_str()));
    }
    // A child is ours only with its parent.
    let tops: BTreeSet<ProfileName> = out
        .family
        .keys()
        .filter(|n| !n.is_child())
        .cloned()
        .collect();
    out.family.retain(|n, _| {
        let top = n.as_str().split("//").next().unwrap_or_default();
        tops.iter().any(|t| t.as_str() == top)
    });
    out.tops = tops.into_iter().collect();
    out
}

/// Every child (hat, child profile, at any depth) the kernel has under a profile our files
/// define, that our files do not define: the kernel kept it across the replace of its parent.
/// The kernel's names enter here: one this tool could not load (someone put it under our
/// profile by hand) cannot be neutralised or recorded, and is returned as refused.
pub fn stale_children(
    loaded: &BTreeMap<String, Mode>,
    current: &Inventory,
) -> (Vec<ProfileName>, Vec<BadProfileName>) {
    let wanted = current.profile_names();
    let (mut stale, mut refused) = (Vec::new(), Vec::new());
    for name in loaded.keys() {
        let ours = name
            .split_once("//")
            .is_some_and(|(top, _)| wanted.contains(top));
        if !ours || wanted.contains(name.as_str()) {
            continue;
        }
        match ProfileName::try_from(name.as_str()) {
            Ok(name) => stale.push(name),
            Err(bad) => refused.push(bad),
        }
    }
    (stale, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::keys::Key;
    use crate::profile::records::Entry;
    use std::path::PathBuf;

    fn name(s: &str) -> ProfileName {
        ProfileName::try_from(s).unwrap()
    }

    fn inv(files: &[(&str, &[&str])]) -> Inventory {
        let mut inv = Inventory::default();
        for (key, names) in files {
            inv.files.insert(
                Key::try_from(*key).unwrap(),
                Entry {
                    sha256: String::new(),
                    profiles: names.iter().map(|s| name(s)).collect(),
                    modes: BTreeMap::new(),
                    policy_sha1: BTreeMap::new(),
                    unverified: false,
                },
            );
        }
        inv
    }

    fn loaded(names: &[&str]) -> BTreeMap<String, Mode> {
        names
            .iter()
            .map(|n| (n.to_string(), Mode::Enforce))
            .collect()
    }

    fn hashes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect()
    }

    #[test]
    fn retired_are_our_top_level_profiles_still_loaded_that_left_the_configmap() {
        let kernel = loaded(&["p", "p//kid", "old", "old//hat", "was-retired", "hostprof"]);
        let sums = hashes(&[
            ("old", "h-old"),
            ("old//hat", "h-hat"),
            ("was-retired", "h-w"),
        ]);
        let now = KernelNow {
            listed: &kernel,
            hashes: &sums,
            boot_id: "boot-1",
        };
        let mut previous = inv(&[("p", &["p", "p//kid"]), ("o", &["old", "old//hat"])]);
        previous.retired = ["was-retired", "rebooted-away"].map(name).into();
        previous.retired_sha1 = [("was-retired", "h-w"), ("rebooted-away", "h-r")]
            .iter()
            .map(|(n, h)| (name(n), h.to_string()))
            .collect();
        previous.boot_id = "boot-1".into();
        let current = inv(&[("p", &["p"])]);
        // Not the child (neutralised instead), not someone else's, not what the kernel lost;
        // each with its whole family and the kernel's hashes.
        let r = retire(&previous, &current, now);
        assert_eq!(r.tops, ["old", "was-retired"]);
        assert_eq!(
            r.family,
            [
                ("old", "h-old"),
                ("old//hat", "h-hat"),
                ("was-retired", "h-w")
            ]
            .iter()
            .map(|(n, h)| (name(n), h.to_string()))
            .collect::<BTreeMap<_, _>>()
        );
        assert_eq!(r.lost, [(name("rebooted-away"), ClaimLost::Gone)]);
        // A retired name back in the ConfigMap is wanted again.
        let current = inv(&[("p", &["p"]), ("w", &["was-retired"])]);
        assert_eq!(retire(&previous, &current, now).tops, ["old"]);
    }

    /// After a reboot (another boot id) or with another policy under the name (another hash),
    /// a retired name is not ours any more, even though the kernel lists it.
    #[test]
    fn a_retired_claim_holds_only_for_the_same_policy_in_the_same_boot() {
        let kernel = loaded(&["gone", "gone//hat"]);
        let mut previous = inv(&[]);
        previous.retired = [name("gone")].into();
        previous.retired_sha1 = [("gone", "h1"), ("gone//hat", "h2")]
            .iter()
            .map(|(n, h)| (name(n), h.to_string()))
            .collect();
        previous.boot_id = "boot-1".into();
        let current = inv(&[]);
        let same = hashes(&[("gone", "h1"), ("gone//hat", "h2")]);
        let check = |sums: &BTreeMap<String, String>, boot: &str| {
            let now = KernelNow {
                listed: &kernel,
                hashes: sums,
                boot_id: boot,
            };
            (
                retire(&previous, &current, now),
                previous.claimed_names(now),
            )
        };
        let (kept, claimed) = check(&same, "boot-1");
        assert_eq!(kept.tops, ["gone"]);
        assert!(kept.lost.is_empty());
        assert!(claimed.contains("gone//hat"));
        for (sums, boot) in [
            (&same, "boot-2"),
            (&same, ""),
            (&hashes(&[("gone", "admin"), ("gone//hat", "h2")]), "boot-1"),
            (&hashes(&[]), "boot-1"),
        ] {
            let (r, claimed) = check(sums, boot);
            assert!(r.tops.is_empty(), "{boot:?} {sums:?}: {r:?}");
            assert!(!claimed.contains("gone"), "{boot:?} {sums:?}");
            assert!(r.lost.contains(&(name("gone"), ClaimLost::NotOurs)));
        }
        // A record of a version that kept no hashes or boot ids proves nothing.
        let mut old = previous.clone();
        old.retired_sha1.clear();
        old.boot_id.clear();
        let now = KernelNow {
            listed: &kernel,
            hashes: &same,
            boot_id: "boot-1",
        };
        let r = retire(&old, &current, now);
        assert!(r.tops.is_empty());
        assert_eq!(r.lost, [(name("gone"), ClaimLost::NotOurs)]);
    }

    #[test]
    fn the_record_keeps_retired_families_bound_to_this_boot_and_no_boot_without_them() {
        let retired = Retired {
            tops: vec![name("old")],
            family: [("old", "h-old"), ("old//hat", "h-hat")]
                .iter()
                .map(|(n, h)| (name(n), h.to_string()))
                .collect(),
            lost: vec![(name("gone"), ClaimLost::Gone)],
        };
        let mut current = inv(&[("p", &["p"])]);
        retired.keep_in(&mut current, "boot-1");
        assert_eq!(current.retired_sha1, retired.family);
        assert_eq!(current.retired, [name("old")].into());
        assert_eq!(current.boot_id, "boot-1");
        // Nothing retired: no claim, so no boot to hold it to (and an old one is cleared).
        Retired::default().keep_in(&mut current, "boot-2");
        assert!(current.retired_sha1.is_empty() && current.retired.is_empty());
        assert_eq!(current.boot_id, "");
    }

    #[test]
    fn stale_children_are_every_undefined_child_under_a_profile_we_define() {
        let kernel = loaded(&[
            "p",
            "p//keep",
            "p//kid",
            "p//kid//grandkid",
            "p//^hat",
            "old",
            "old//hat",
            "hostprof//x",
            "p// spaced",
        ]);
        let current = inv(&[("p", &["p", "p//keep"])]);
        let (stale, unnameable) = stale_children(&kernel, &current);
        assert_eq!(stale, ["p//^hat", "p//kid", "p//kid//grandkid"]);
        // A child someone loaded under our profile with a name we never load cannot be proven
        // neutralised: it is named, not skipped.
        assert_eq!(unnameable.len(), 1);
        assert_eq!(unnameable[0].name, "p// spaced");
    }

    #[test]
    fn a_rerun_skips_loading_only_when_the_kernel_provably_holds_these_bytes() {
        let compiled = vec![CompiledProfile {
            key: Key::try_from("k").unwrap(),
            path: PathBuf::from("k"),
            sha256: "s1".into(),
            names: vec![name("p"), name("p//hat")],
            modes: BTreeMap::new(),
        }];
        let mut previous = inv(&[("k", &["p", "p//hat"])]);
        previous.toolchain = "t".into();
        let entry = previous.files.get_mut("k").unwrap();
        entry.sha256 = "s1".into();
        entry.policy_sha1 = [("p", "h1"), ("p//hat", "h2")]
            .iter()
            .map(|(n, h)| (name(n), h.to_string()))
            .collect();
        let kernel: BTreeMap<String, String> = [("p", "h1"), ("p//hat", "h2"), ("x", "h9")]
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect();
        assert!(unchanged_in_kernel(&compiled, &previous, &kernel, "t"));
        // Another toolchain, other bytes, a profile replaced by hand, or no hashes: load again.
        assert!(!unchanged_in_kernel(&compiled, &previous, &kernel, "t2"));
        let mut other = compiled.clone();
        other[0].sha256 = "s2".into();
        assert!(!unchanged_in_kernel(&other, &previous, &kernel, "t"));
        let mut replaced = kernel.clone();
        replaced.insert("p//hat".into(), "by-hand".into());
        assert!(!unchanged_in_kernel(&compiled, &previous, &replaced, "t"));
        assert!(!unchanged_in_kernel(
            &compiled,
            &previous,
            &BTreeMap::new(),
            "t"
        ));
    }
}
