//! Neutralising the children of our profiles that our files no longer define
//! ([`crate::profile::prune::stale_children`]): each is replaced by a deny-everything profile of
//! exactly the same name (an `apparmor::stub`), never unloaded, and proven by the kernel's own
//! policy hash.
//!
//! A stale child stays reachable (a hat through change_hat), so keeping its old rules would grant
//! them to whoever enters it; the stub is not a hat, so the kernel refuses change_hat into it,
//! and a task already inside stays confined, allowed nothing. A name no stub can express is never
//! stubbed under another name.

use std::collections::BTreeMap;
use std::path::Path;

use crate::apparmor::kernel::{Kernel, KernelError};
use crate::apparmor::mode::Mode;
use crate::apparmor::parser::Parser;
use crate::apparmor::stub::{self, StubError, StubHash};
use crate::host::lock::{LockError, RunLock};
use crate::profile::names::{BadProfileName, ProfileName};

/// Neutralised children, each with the kernel's hash of its stub.
pub type Neutralised = BTreeMap<ProfileName, String>;

/// Why children that left the ConfigMap are not neutralised (always exit 5, as a whole).
#[derive(Debug, thiserror::Error)]
pub enum NeutraliseFailure {
    #[error(transparent)]
    Stub(#[from] StubError),
    #[error(
        "the kernel does not show the stubs' policy for them: {}{}",
        .0.join("; "),
        if *.1 { " (the kernel keeps no policy hashes, apparmor.hash_policy=0, so no stub can \
                  be proven: boot with apparmor.hash_policy=1)" } else { "" }
    )]
    NotProven(Vec<String>, bool),
    #[error(
        "no deny-everything stub can be written for these names (nothing was loaded for them; \
         their old rules stay reachable until the node reboots: drain and reboot it, or define \
         them again in the ConfigMap): {}",
        .0.join("; ")
    )]
    Unexpressible(Vec<String>),
    #[error(
        "the kernel lists them under our profiles with names this tool does not load, so no \
         stub can be proven for them: {}",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Unnameable(Vec<BadProfileName>),
}

/// Why [`neutralise`] did not finish; `load` reports each as its own error.
#[derive(Debug)]
pub enum NeutraliseError {
    /// The stub files a killed run left behind could not be removed.
    Cleanup(LockError),
    /// The kernel's list could not be read to prove the stubs.
    Kernel(KernelError),
    /// These children are not neutralised, and why.
    NotNeutralised(Vec<String>, NeutraliseFailure),
}

/// Replaces each stale child by a deny-everything profile of the same name, in one parser call,
/// and proves each by the kernel's own policy hash: each stub is compiled alone to the bytes the
/// kernel will get, which must hold exactly one profile of exactly the child's name (a name the
/// stub cannot express is never loaded under another name) and give the hash the kernel must
/// show; after loading, the kernel must list the child in enforce mode with that hash. A child
/// whose kernel hash already is its stub's is left alone (computed afresh on every run, never
/// taken from the record: a record may hold a hash that was never proven). Children the kernel
/// lists under a name this tool does not load (`unnameable`) cannot be stubbed or proven: they
/// fail the run once the others are done.
///
/// Returns the neutralised names with the kernel's hash of their stub; on failure, also what is
/// known to be done. `hashes` are the kernel's policy hashes as the load left them; the stubs
/// are temporary files in `dir`, written under `lock`, which first removes the ones a killed run
/// left there ([`remove_leftover_stubs`]).
pub fn neutralise(
    kernel: &Kernel,
    parser: &Parser,
    lock: &RunLock,
    dir: &Path,
    stale: &[ProfileName],
    unnameable: Vec<BadProfileName>,
    hashes: &BTreeMap<String, String>,
) -> Result<Neutralised, (Neutralised, NeutraliseError)> {
    remove_leftover_stubs(lock, dir)
        .map_err(|e| (Neutralised::new(), NeutraliseError::Cleanup(e)))?;
    let done = replace_by_stubs(kernel, parser, dir, stale, hashes)?;
    if !unnameable.is_empty() {
        let names = unnameable.iter().map(|bad| bad.name.clone()).collect();
        let failure = NeutraliseFailure::Unnameable(unnameable);
        return Err((done, NeutraliseError::NotNeutralised(names, failure)));
    }
    Ok(done)
}

/// Removes the stub files and compiled stubs a killed run (OOM, a node rebooted mid-load) left
/// in `dir`: they are removed when a run ends, but not when it is killed, and would stay
/// forever. Only regular files with a stub's name ([`stub::is_stub_temp_name`]), never a link
/// or a directory; under the run lock, so no run of ours is writing one meanwhile. Logs how
/// many; returns that number.
pub fn remove_leftover_stubs(lock: &RunLock, dir: &Path) -> Result<usize, LockError> {
    let removed = lock.remove_leftovers(dir, stub::is_stub_temp_name)?.len();
    if removed > 0 {
        tracing::warn!(
            dir = %dir.display(),
            removed,
            "removed {removed} stub file(s) an interrupted load left in {} (deny-everything stubs \
             and their compiled policy, written while neutralising)",
            dir.display()
        );
    }
    Ok(removed)
}

/// Says which children were neutralised, and what that means for the processes inside.
pub fn log_done(done: &Neutralised) {
    for name in done.keys() {
        tracing::warn!(
            profile = %name,
            "neutralised {name:?}: its parent no longer defines it, so it was replaced by a \
             deny-everything profile of the same name (processes inside stay confined and are \
             allowed nothing; nobody can enter it with its old rules)"
        );
    }
}

/// [`neutralise`] for the children this tool can name.
fn replace_by_stubs(
    kernel: &Kernel,
    parser: &Parser,
    dir: &Path,
    stale: &[ProfileName],
    hashes: &BTreeMap<String, String>,
) -> Result<Neutralised, (Neutralised, NeutraliseError)> {
    let mut result: Neutralised = BTreeMap::new();
    if stale.is_empty() {
        return Ok(result);
    }
    let fail = |result: &Neutralised, names: Vec<String>, why: NeutraliseFailure| {
        (result.clone(), NeutraliseError::NotNeutralised(names, why))
    };
    let all = || stale.iter().map(ToString::to_string).collect::<Vec<_>>();

    // What the kernel must show for each stub, from the very bytes a load sends it.
    let mut expected: BTreeMap<&ProfileName, String> = BTreeMap::new();
    let mut unexpressible = Vec::new();
    for name in stale {
        match stub::stub_hash(dir, parser, name) {
            Ok(StubHash::Hash(hash)) if hashes.get(name.as_str()) == Some(&hash) => {
                // Already the stub (an earlier run loaded it).
                result.insert(name.clone(), hash);
            }
            Ok(StubHash::Hash(hash)) => {
                expected.insert(name, hash);
            }
            Ok(StubHash::Unexpressible(why)) => {
                unexpressible.push((name, format!("{name:?}: {why}")))
            }
            Err(e) => return Err(fail(&result, all(), e.into())),
        }
    }
    let unexpressible_err = |result: &Neutralised| {
        let (names, why): (Vec<String>, Vec<String>) = unexpressible
            .iter()
            .map(|(n, why)| (n.to_string(), why.clone()))
            .unzip();
        fail(result, names, NeutraliseFailure::Unexpressible(why))
    };
    if expected.is_empty() {
        return if unexpressible.is_empty() {
            Ok(result)
        } else {
            Err(unexpressible_err(&result))
        };
    }
    let stubs: Vec<&str> = expected.keys().map(|n| n.as_str()).collect();
    let outcome = stub::load_stubs(dir, parser, &stubs);
    let after = kernel
        .loaded_profiles()
        .map_err(|e| (result.clone(), NeutraliseError::Kernel(e)))?;
    let hashes = kernel.policy_hashes();
    if let Err(e) = outcome {
        let left = expected.keys().map(ToString::to_string).collect();
        return Err(fail(&result, left, e.into()));
    }
    let (shown, unproven) = shown_by_kernel(&expected, &after, &hashes);
    result.extend(shown);
    if !unproven.is_empty() {
        let (left, unproven) = unproven.into_iter().unzip();
        let no_hashes = hashes.is_empty();
        return Err(fail(
            &result,
            left,
            NeutraliseFailure::NotProven(unproven, no_hashes),
        ));
    }
    if !unexpressible.is_empty() {
        return Err(unexpressible_err(&result));
    }
    Ok(result)
}

/// Splits the stubs just loaded (each name with its stub's hash) into those the kernel shows,
/// listed in enforce mode with exactly the stub's hash, and the others, each with what the
/// kernel shows instead.
fn shown_by_kernel(
    expected: &BTreeMap<&ProfileName, String>,
    listed: &BTreeMap<String, Mode>,
    hashes: &BTreeMap<String, String>,
) -> (Neutralised, Vec<(String, String)>) {
    let (mut shown, mut unproven) = (Neutralised::new(), Vec::new());
    for (name, want) in expected {
        let mode = listed.get(name.as_str());
        let have = hashes.get(name.as_str());
        if mode == Some(&Mode::Enforce) && have == Some(want) {
            shown.insert((*name).clone(), want.clone());
            continue;
        }
        unproven.push((
            name.to_string(),
            format!(
                "{name:?} is {} with policy hash {}, the stub's is {want}",
                mode.map_or("not listed".to_string(), |m| format!("listed in {m} mode")),
                have.map_or("none", String::as_str)
            ),
        ));
    }
    (shown, unproven)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ProfileName {
        ProfileName::try_from(s).unwrap()
    }

    #[test]
    fn a_stub_is_proven_only_in_enforce_mode_with_exactly_its_hash() {
        let names = [
            "p//ok",
            "p//complain",
            "p//other",
            "p//unlisted",
            "p//nohash",
        ]
        .map(name);
        let expected: BTreeMap<&ProfileName, String> =
            names.iter().map(|n| (n, format!("h-{n}"))).collect();
        let listed: BTreeMap<String, Mode> = [
            ("p//ok", Mode::Enforce),
            ("p//complain", Mode::Complain),
            ("p//other", Mode::Enforce),
            ("p//nohash", Mode::Enforce),
        ]
        .iter()
        .map(|(n, m)| (n.to_string(), m.clone()))
        .collect();
        let hashes: BTreeMap<String, String> = [
            ("p//ok", "h-p//ok"),
            ("p//complain", "h-p//complain"),
            ("p//other", "by-hand"),
        ]
        .iter()
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect();
        let (shown, unproven) = shown_by_kernel(&expected, &listed, &hashes);
        assert_eq!(shown, [(name("p//ok"), "h-p//ok".to_string())].into());
        assert_eq!(
            unproven,
            [
                (
                    "p//complain",
                    "\"p//complain\" is listed in complain mode with policy hash \
                     h-p//complain, the stub's is h-p//complain"
                ),
                (
                    "p//nohash",
                    "\"p//nohash\" is listed in enforce mode with policy hash none, the stub's \
                     is h-p//nohash"
                ),
                (
                    "p//other",
                    "\"p//other\" is listed in enforce mode with policy hash by-hand, the \
                     stub's is h-p//other"
                ),
                (
                    "p//unlisted",
                    "\"p//unlisted\" is not listed with policy hash none, the stub's is \
                     h-p//unlisted"
                ),
            ]
            .map(|(n, why)| (n.to_string(), why.to_string()))
        );
    }

    /// Neutralising starts by removing the stubs a killed run left in its directory: regular
    /// files with a stub's name, and nothing else (not a link, not what it points to, not a
    /// directory, not `atomic_file`'s temporary files, not a near miss).
    #[test]
    fn neutralising_first_removes_the_stub_files_a_killed_run_left_and_nothing_else() {
        use std::fs;
        let dest = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let left = [
            ".apparmor-profile-loader.stub-a1B2c3",
            ".apparmor-profile-loader.stub-Zz9Yy8",
        ];
        for name in left {
            fs::write(dir.path().join(name), "profile \"p//kid\" {\n}\n").unwrap();
        }
        let keep = [
            "loaded.json",
            ".apparmor-profile-loader.stub-a1B2c3.bak",
            ".apparmor-profile-loader.stub-toolong1",
            ".apparmor-profile-loader.stubxa1B2c3",
            ".apparmor-profile-loader.tmp-0123456789abcdef",
        ];
        for name in keep {
            fs::write(dir.path().join(name), "keep").unwrap();
        }
        let link = ".apparmor-profile-loader.stub-link00";
        std::os::unix::fs::symlink(&victim, dir.path().join(link)).unwrap();
        let subdir = ".apparmor-profile-loader.stub-dir000";
        fs::create_dir(dir.path().join(subdir)).unwrap();

        let lock = crate::host::lock::acquire(dest.path(), "load", &Default::default()).unwrap();
        let tools = tempfile::tempdir().unwrap();
        let parser = crate::apparmor::toolchain::tests::parser(tools.path());
        let kernel = Kernel::new(&tools.path().join("none"), &tools.path().join("none"));
        // No stale child: the parser and the kernel are not asked anything.
        let done = neutralise(
            &kernel,
            &parser,
            &lock,
            dir.path(),
            &[],
            vec![],
            &BTreeMap::new(),
        );
        assert!(done.unwrap().is_empty());

        let mut now: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        now.sort();
        let mut want: Vec<String> = keep
            .iter()
            .chain(&[link, subdir])
            .map(|s| s.to_string())
            .collect();
        want.sort();
        assert_eq!(now, want);
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        // Nothing left to remove: a second run removes nothing; a missing directory is no error.
        assert_eq!(remove_leftover_stubs(&lock, dir.path()).unwrap(), 0);
        assert_eq!(
            remove_leftover_stubs(&lock, &dir.path().join("gone")).unwrap(),
            0
        );
    }

    #[test]
    fn the_failures_name_every_child_and_how_to_act() {
        let not_proven = NeutraliseFailure::NotProven(vec!["a".into(), "b".into()], true);
        assert_eq!(
            not_proven.to_string(),
            "the kernel does not show the stubs' policy for them: a; b (the kernel keeps no \
             policy hashes, apparmor.hash_policy=0, so no stub can be proven: boot with \
             apparmor.hash_policy=1)"
        );
        let with_hashes = NeutraliseFailure::NotProven(vec!["a".into()], false);
        assert_eq!(
            with_hashes.to_string(),
            "the kernel does not show the stubs' policy for them: a"
        );
    }
}
