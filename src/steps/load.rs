//! `load`: the profiles `copy` placed on the host, into the kernel, proven.
//!
//! Order matters for failing closed: check AppArmor is on, compile everything without touching
//! the kernel (any failure stops here, the kernel untouched; on a fresh node every compile is a
//! cache hit of `copy`'s), refuse to replace a loaded profile our records do not call ours,
//! load everything in one parser call, read the kernel's own list to prove each profile (and
//! exactly its children) is in force in the asked-for mode, and only then deal with what left
//! the ConfigMap, without ever unconfining a running process.
//!
//! The kernel unconfines every task of a profile (or child profile, or hat) that is unloaded
//! (`security/apparmor/policy.c`, `__remove_profile()`), and keeps a replaced profile's children
//! that the new version does not define (`__replace_profile()` hands them to the new parent). So
//! nothing is ever unloaded:
//! - a top-level profile that left the ConfigMap is **retired**: it stays in the kernel as last
//!   loaded until the node reboots (its file is already gone, so the boot does not load it).
//!   Its tasks stay confined as before and nothing gains a right. Retired names stay in our
//!   record, are reported on every run and leave the record once the kernel no longer lists
//!   them.
//! - a child profile or hat that its parent no longer defines is **neutralised**: replaced by a
//!   deny-everything profile of the same name. It stays reachable (a hat through change_hat), so
//!   keeping its old rules would grant them to whoever enters it; the stub is not a hat, so the
//!   kernel refuses change_hat into it, and a task already inside stays confined, allowed
//!   nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use crate::apparmor::compile_cache::CompileCache;
use crate::apparmor::kernel::{Kernel, KernelError};
use crate::apparmor::mode::Mode;
use crate::apparmor::parser::{Cache, Parser, ParserError, ParserInput};
use crate::exit_code::{self, ExitStatus};
use crate::host::host_file;
use crate::host::lock::{self, LockError, LockOptions};
use crate::profile;
use crate::profile::check::{CheckError, CompiledProfile};
use crate::profile::keys::Key;
use crate::profile::names::{BadProfileName, ProfileName};
use crate::profile::node_labels::{NodeReport, ReportTooLarge};
use crate::profile::ownership::{self, Claimant, SomeoneElses};
use crate::profile::records::{Inventory, LOADED_PROFILES, OWNED_FILES, StateError};
use crate::profile::source::{ProfileInput, sha256_hex};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The profile directory `copy` wrote (its state file lists our files).
    pub dest: PathBuf,
    /// Writable host directory for the parser's cache and our record of loaded profiles.
    pub cache_dir: PathBuf,
    pub kernel: Kernel,
    /// Also replace loaded profiles our records do not list (someone else's).
    pub adopt_loaded: bool,
    pub lock: LockOptions,
    /// Where to report what was loaded for `untaint` (a pod-local file), if anywhere.
    pub node_report: Option<PathBuf>,
}

/// What a run did, for the summary line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Files new or changed since the last recorded load.
    pub loaded: usize,
    /// Files identical to the last recorded load (replaced from the cache).
    pub unchanged: usize,
    /// Top-level profiles of ours that left the ConfigMap, kept in the kernel until reboot.
    pub retired: Vec<ProfileName>,
    /// Children our files no longer define, replaced by a deny-everything profile.
    pub neutralised: Vec<ProfileName>,
    /// Every profile name now verified in the kernel.
    pub verified: usize,
    pub took_ms: u128,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    ReportTooLarge(#[from] ReportTooLarge),
    #[error(
        "no profiles to load: {0} does not exist. The copy step writes it; check that the copy \
         init container ran against the same --dest"
    )]
    NotCopied(PathBuf),
    #[error(transparent)]
    Foreign(#[from] SomeoneElses),
    #[error(
        "profile file {0:?} is listed in the state file but missing from the profile directory"
    )]
    MissingFile(Key),
    #[error("cannot read profile file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    Parser(ParserError),
    #[error(transparent)]
    Report(#[from] crate::profile::node_labels::ReportError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("profiles are not provably loaded:\n  {}{}", .missing.join("\n  "), parser_note(.parser))]
    NotLoaded {
        missing: Vec<String>,
        parser: Option<ParserError>,
    },
    #[error(
        "children that left the ConfigMap could not be neutralised (replaced by a \
         deny-everything profile), so their old rules may still be reachable: {0:?}: {1}"
    )]
    NotNeutralised(Vec<String>, NeutraliseFailure),
    #[error("cannot prepare the cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why children that left the ConfigMap are not neutralised (always exit 5, as a whole).
#[derive(Debug, thiserror::Error)]
pub enum NeutraliseFailure {
    #[error("cannot create a temporary file in {dir}: {source}")]
    CreateStub {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteStub {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Parser(ParserError),
    #[error("the parser reported success, but the kernel does not list them in enforce mode")]
    NotInForce,
    #[error(
        "the kernel lists them under our profiles with names this tool does not load, so no \
         stub can be proven for them: {}",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Unnameable(Vec<BadProfileName>),
}

fn parser_note(parser: &Option<ParserError>) -> String {
    parser
        .as_ref()
        .map(|e| format!("\napparmor_parser said: {e}"))
        .unwrap_or_default()
}

impl ExitStatus for LoadError {
    fn exit_code(&self) -> u8 {
        match self {
            LoadError::Kernel(e) => e.exit_code(),
            LoadError::Check(e) => e.exit_code(),
            LoadError::Parser(e) => e.exit_code(),
            LoadError::NotCopied(_)
            | LoadError::MissingFile(_)
            | LoadError::Foreign(_)
            | LoadError::ReportTooLarge(_) => exit_code::INVALID_PROFILES,
            LoadError::NotLoaded { .. } | LoadError::NotNeutralised(..) => exit_code::NOT_LOADED,
            LoadError::Read { .. }
            | LoadError::State(_)
            | LoadError::Lock(_)
            | LoadError::Report(_)
            | LoadError::CacheDir { .. } => exit_code::INTERNAL,
        }
    }
}

/// Loads, verifies and prunes; see the module docs for the order and why.
pub fn run(opts: &LoadOptions, parser: &Parser) -> Result<LoadReport, LoadError> {
    // === Prepare: the lock, AppArmor on, our records, the cache ===
    let lock = lock::acquire(&opts.dest, "load", &opts.lock)?;
    lock.remove_stale_temps(&opts.cache_dir)?;
    tracing::info!("compiling for {}", parser.features.explain());
    let started = Instant::now();
    opts.kernel.ensure_enabled()?;
    if !Inventory::exists(&opts.dest, OWNED_FILES) {
        return Err(LoadError::NotCopied(opts.dest.join(OWNED_FILES)));
    }
    let owned = Inventory::load(&opts.dest, OWNED_FILES)?;
    let cache_err = |source| LoadError::CacheDir {
        path: opts.cache_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&opts.cache_dir).map_err(cache_err)?;
    let previous = Inventory::load(&opts.cache_dir, LOADED_PROFILES)?;
    let cache = CompileCache::open(&opts.cache_dir, parser).map_err(cache_err)?;

    // === Compile, the kernel untouched ===
    // Compile what is on disk now (that is what the host loads at boot), not what a record says.
    let inputs = read_owned_files(opts, &owned)?;
    // A file copy wrote, byte for byte, with this toolchain compiled then (copy records only
    // what compiled), and its policy is in the cache: the load below reads it from there.
    // Anything else (edited behind copy's back, or recorded by another parser or include tree)
    // is compiled afresh now, before the kernel is touched.
    let known = owned.if_compiled_by(&cache.toolchain);
    let unproven = ownership::unproven(&known, &inputs);
    for i in &unproven {
        tracing::info!(file = %i.key, "{} was not compiled by copy with this parser; compiling it now", i.key);
    }
    parser
        .compile(&unproven, Cache::Refresh(&cache.dir))
        .map_err(CheckError::from)?;
    let compiled = profile::check::check(&inputs, parser, &known, Cache::ReadWrite(&cache.dir))?;

    // === Guard: nothing of someone else's replaced; what we load recorded first ===
    refuse_foreign(opts, &compiled, &previous, &owned)?;

    // Record before loading, as copy records before writing: if the load or its verification
    // fails half-way, whatever reached the kernel is still ours to unload later.
    let current = record(&compiled);
    ownership::record_before_acting(
        &previous,
        &current,
        &previous.toolchain,
        &opts.cache_dir,
        LOADED_PROFILES,
    )?;

    // === Apply, then verify in the kernel's own list ===
    let parser_failure = apply(opts, parser, &inputs, &compiled, &previous, &cache)?;
    let loaded = verify(&opts.kernel, &compiled, parser_failure)?;
    let mut current = current;
    current.toolchain = cache.toolchain.clone();
    let hashes = opts.kernel.policy_hashes();
    for entry in current.files.values_mut() {
        entry.policy_sha1 = entry
            .profiles
            .iter()
            .filter_map(|n| hashes.get(n.as_str()).map(|h| (n.clone(), h.clone())))
            .collect();
    }

    let mut report = LoadReport {
        verified: compiled.iter().map(|c| c.names.len()).sum(),
        ..LoadReport::default()
    };
    for (key, entry) in &current.files {
        match previous.files.get(key) {
            Some(old) if old.sha256 == entry.sha256 => report.unchanged += 1,
            _ => report.loaded += 1,
        }
    }

    // === Prune: retire what left, neutralise stale children, never unload ===
    let retired = retire(&loaded, &previous, &current);
    for name in &retired {
        tracing::warn!(
            profile = %name,
            "retired {name:?}: it left the ConfigMap and stays loaded, as last loaded, until the \
             node reboots (unloading it would unconfine every process running under it); its \
             file is gone, so the next boot does not load it"
        );
    }
    for name in previous
        .retired
        .iter()
        .filter(|n| !loaded.contains_key(n.as_str()))
    {
        tracing::info!(
            profile = %name,
            "{name:?} was retired and the kernel no longer lists it (the node rebooted): dropped \
             from the record"
        );
    }
    current.retired = retired.iter().cloned().collect();
    let (stale, unnameable) = stale_children(&loaded, &current);
    let neutralised = neutralise(opts, parser, &stale, &previous, &hashes);
    // Keep what is known to be neutralised in the record even when this run failed half-way.
    current.neutralised = match &neutralised {
        Ok(done) => done.clone(),
        Err((done, _)) => done.clone(),
    };
    current.save(&opts.cache_dir, LOADED_PROFILES)?;
    let neutralised = neutralised.map_err(|(_, e)| e)?;
    if !unnameable.is_empty() {
        return Err(LoadError::NotNeutralised(
            unnameable.iter().map(|bad| bad.name.clone()).collect(),
            NeutraliseFailure::Unnameable(unnameable),
        ));
    }
    for name in neutralised.keys() {
        tracing::warn!(
            profile = %name,
            "neutralised {name:?}: its parent no longer defines it, so it was replaced by a \
             deny-everything profile of the same name (processes inside stay confined and are \
             allowed nothing; nobody can enter it with its old rules)"
        );
    }
    // === Report, to the log and to `untaint` ===
    if let Some(path) = &opts.node_report {
        // The retired names count too: they accumulate until the node reboots.
        let out = node_report(&current, &owned.node_os);
        out.fits()?;
        out.save(path)?;
    }
    report.retired = retired;
    report.neutralised = neutralised.into_keys().collect();
    report.took_ms = started.elapsed().as_millis();
    Ok(report)
}

/// Loads every file in one parser call, unless the kernel provably holds exactly these bytes
/// already. Returns the parser's complaint when it ran to its end and said no (what reached the
/// kernel is verified next, and the parser's words go with the verdict).
fn apply(
    opts: &LoadOptions,
    parser: &Parser,
    inputs: &[ProfileInput],
    compiled: &[CompiledProfile],
    previous: &Inventory,
    cache: &CompileCache,
) -> Result<Option<ParserError>, LoadError> {
    let hashes_before = opts.kernel.policy_hashes();
    if inputs.is_empty()
        || unchanged_in_kernel(compiled, previous, &hashes_before, &cache.toolchain)
    {
        tracing::info!(
            "every profile is in the kernel from exactly these bytes (the kernel's policy hashes \
             match our record): nothing to load"
        );
        return Ok(None);
    }
    match parser.replace(inputs, Cache::ReadWrite(&cache.dir)) {
        Ok(()) => Ok(None),
        Err(e @ ParserError::Failed { .. }) => Ok(Some(e)),
        // Killed (OOM), timed out, could not start: keep what happened, and its exit code.
        Err(e) => Err(LoadError::Parser(e)),
    }
}

/// What `untaint` labels the node with: each top-level profile with its file's digest, the
/// retired ones, and the node's release as `copy` found it.
fn node_report(current: &Inventory, node_os: &str) -> NodeReport {
    NodeReport::of(
        current
            .files
            .values()
            .map(|e| (e.sha256.as_str(), e.profiles.as_slice())),
        current.retired.iter().map(ToString::to_string).collect(),
    )
    .with_node_os(node_os)
}

/// Reads every file `copy` recorded. Only a file that does not exist is "missing" (exit 3);
/// any other read error is reported as it is.
fn read_owned_files(opts: &LoadOptions, owned: &Inventory) -> Result<Vec<ProfileInput>, LoadError> {
    owned
        .files
        .keys()
        .map(|key| {
            let path = opts.dest.join(key);
            match host_file::read(&path) {
                Ok(bytes) => Ok(ProfileInput {
                    key: key.clone(),
                    path,
                    sha256: sha256_hex(&bytes),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(LoadError::MissingFile(key.clone()))
                }
                Err(source) => Err(LoadError::Read { path, source }),
            }
        })
        .collect()
}

/// Refuses to replace a loaded profile that our records do not call ours: "nothing already
/// loaded is harmed" covers profiles that are not ours.
///
/// A name is ours only if `load` loaded it before (`loaded.json`) or `copy` claimed it for a
/// file we own (`copy` refuses to claim a name the kernel already has from someone else; the
/// claim also covers a reboot between `copy` and `load`, when the host loaded our file itself).
/// Nothing is guessed from other files: a host file the parser cannot read never makes this
/// pass.
fn refuse_foreign(
    opts: &LoadOptions,
    compiled: &[CompiledProfile],
    previous: &Inventory,
    owned: &Inventory,
) -> Result<(), LoadError> {
    if opts.adopt_loaded {
        return Ok(());
    }
    let loaded = opts.kernel.loaded_profiles()?;
    // copy's claims count only where copy saw the kernel's list when it made them.
    let ours = ownership::our_names(owned, Some(previous));
    ownership::refuse_someone_elses(compiled, &loaded, &ours, Claimant::Load)?;
    Ok(())
}

/// Whether the kernel already holds exactly what we would load: every file is byte for byte
/// what the last verified load loaded, with the same toolchain, and the kernel's hash of every
/// profile's policy is still the one recorded then (nobody replaced one since). Without the
/// kernel's hashes this is never proven, and the files are loaded again.
fn unchanged_in_kernel(
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

/// Proves every compiled profile is in the kernel, in the mode its flags ask for. Returns the
/// kernel's list it proved it against.
fn verify(
    kernel: &Kernel,
    compiled: &[CompiledProfile],
    parser_failure: Option<ParserError>,
) -> Result<BTreeMap<String, Mode>, LoadError> {
    let loaded = kernel.loaded_profiles()?;
    let mut missing = Vec::new();
    for profile in compiled {
        for name in &profile.names {
            let want = profile.modes.get(name);
            match (loaded.get(name.as_str()), want) {
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
    if missing.is_empty() && parser_failure.is_none() {
        Ok(loaded)
    } else if missing.is_empty() {
        // Everything is in force, but the parser complained: fail closed, it may be partial.
        Err(LoadError::NotLoaded {
            missing: vec!["the parser reported an error while loading".into()],
            parser: parser_failure,
        })
    } else {
        Err(LoadError::NotLoaded {
            missing,
            parser: parser_failure,
        })
    }
}

/// The top-level profiles of ours that the kernel still has but our files no longer define:
/// those a previous run loaded or retired. They stay loaded (see the module docs).
fn retire(
    loaded: &BTreeMap<String, Mode>,
    previous: &Inventory,
    current: &Inventory,
) -> Vec<ProfileName> {
    let wanted = current.profile_names();
    previous
        .profile_names()
        .into_iter()
        .chain(previous.retired.iter().cloned())
        .filter(|n| !n.is_child() && !wanted.contains(n) && loaded.contains_key(n.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Every child (hat, child profile, at any depth) the kernel has under a profile our files
/// define, that our files do not define: the kernel kept it across the replace of its parent.
/// The kernel's names enter here: one this tool could not load (someone put it under our
/// profile by hand) cannot be neutralised or recorded, and is returned as refused.
fn stale_children(
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

/// Replaces each stale child by a deny-everything profile of the same name, in one parser call,
/// and proves each is then listed in enforce mode. A child already holding the stub a previous
/// run loaded (the kernel's hash says so) is left alone. Returns the neutralised names with the
/// kernel's hash of their stub; on failure, also what is known to be done. `hashes` are the
/// kernel's policy hashes as the load left them.
#[allow(clippy::type_complexity)]
fn neutralise(
    opts: &LoadOptions,
    parser: &Parser,
    stale: &[ProfileName],
    previous: &Inventory,
    hashes: &BTreeMap<String, String>,
) -> Result<BTreeMap<ProfileName, String>, (BTreeMap<ProfileName, String>, LoadError)> {
    let already = |name: &ProfileName| {
        previous
            .neutralised
            .get(name)
            .is_some_and(|h| !h.is_empty() && hashes.get(name.as_str()) == Some(h))
    };
    let (mut done, todo): (Vec<&ProfileName>, Vec<&ProfileName>) =
        stale.iter().partition(|n| already(n));
    let mut result: BTreeMap<ProfileName, String> = done
        .drain(..)
        .map(|n| (n.clone(), hashes[n.as_str()].clone()))
        .collect();
    if todo.is_empty() {
        return Ok(result);
    }
    let fail = |result: &BTreeMap<ProfileName, String>, e: LoadError| (result.clone(), e);
    let outcome = stub_file(&opts.cache_dir, &todo).and_then(|stub| {
        parser
            .replace(&[Stubs(stub.path())], Cache::Skip)
            .map_err(NeutraliseFailure::Parser)
    });
    let after = opts
        .kernel
        .loaded_profiles()
        .map_err(|e| fail(&result, e.into()))?;
    let hashes = opts.kernel.policy_hashes();
    let mut left = Vec::new();
    for name in todo {
        match (&outcome, after.get(name.as_str())) {
            (Ok(()), Some(Mode::Enforce)) => {
                let hash = hashes.get(name.as_str()).cloned().unwrap_or_default();
                result.insert(name.clone(), hash);
            }
            _ => left.push(name.to_string()),
        }
    }
    match (left.is_empty(), outcome) {
        (true, _) => Ok(result),
        (false, Err(e)) => Err(fail(&result, LoadError::NotNeutralised(left, e))),
        (false, Ok(())) => Err(fail(
            &result,
            LoadError::NotNeutralised(left, NeutraliseFailure::NotInForce),
        )),
    }
}

/// A profile file declaring an empty (deny-everything) profile for each name, in a temporary
/// file of its own (created exclusively, with an unpredictable name) in `dir`.
fn stub_file(
    dir: &std::path::Path,
    names: &[&ProfileName],
) -> Result<tempfile::NamedTempFile, NeutraliseFailure> {
    use std::io::Write;
    let stub: String = names
        .iter()
        .map(|n| format!("profile {} {{\n}}\n", quote_name(n)))
        .collect();
    let mut file = tempfile::Builder::new()
        .prefix(".apparmor-profile-loader.stub-")
        .tempfile_in(dir)
        .map_err(|source| NeutraliseFailure::CreateStub {
            dir: dir.to_path_buf(),
            source,
        })?;
    file.write_all(stub.as_bytes())
        .map_err(|source| NeutraliseFailure::WriteStub {
            path: file.path().to_path_buf(),
            source,
        })?;
    Ok(file)
}

/// The stub file, as the parser's input.
struct Stubs<'a>(&'a std::path::Path);

impl ParserInput for Stubs<'_> {
    fn key(&self) -> &str {
        "(deny-everything stubs for children that left the ConfigMap)"
    }
    fn path(&self) -> &std::path::Path {
        self.0
    }
}

/// A profile name as the parser's grammar accepts it in a `profile` statement.
fn quote_name(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Our record of what is loaded: file → hash, names and modes.
fn record(compiled: &[CompiledProfile]) -> Inventory {
    let mut inv = Inventory::default();
    for p in compiled {
        inv.files.insert(p.key.clone(), ownership::entry(p, false));
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::records::Entry;

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

    #[test]
    fn retired_are_our_top_level_profiles_still_loaded_that_left_the_configmap() {
        let kernel = loaded(&["p", "p//kid", "old", "old//hat", "was-retired", "hostprof"]);
        let mut previous = inv(&[("p", &["p", "p//kid"]), ("o", &["old", "old//hat"])]);
        previous.retired = ["was-retired", "rebooted-away"].map(name).into();
        let current = inv(&[("p", &["p"])]);
        // Not the child (neutralised instead), not someone else's, not what the kernel lost.
        assert_eq!(retire(&kernel, &previous, &current), ["old", "was-retired"]);
        // A retired name back in the ConfigMap is wanted again.
        let current = inv(&[("p", &["p"]), ("w", &["was-retired"])]);
        assert_eq!(retire(&kernel, &previous, &current), ["old"]);
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

    #[test]
    fn names_are_quoted_for_the_stub() {
        assert_eq!(quote_name("a b"), "\"a b\"");
        assert_eq!(quote_name("x\"y"), "\"x\\\"y\"");
    }
}
