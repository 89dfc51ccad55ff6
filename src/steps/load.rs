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
//!   Its tasks stay confined as before and nothing gains a right. Retired profiles stay in our
//!   record with their whole family (the children the kernel lists under them), each with the
//!   kernel's policy hash, and the boot id: they are ours, reported on every run, only while the
//!   kernel holds exactly that policy in that boot, and leave the record otherwise.
//! - a child profile or hat that its parent no longer defines is **neutralised**: replaced by a
//!   deny-everything profile of exactly the same name. It stays reachable (a hat through
//!   change_hat), so keeping its old rules would grant them to whoever enters it; the stub is not
//!   a hat, so the kernel refuses change_hat into it, and a task already inside stays confined,
//!   allowed nothing. Each stub is proven by the kernel's policy hash, computed beforehand from
//!   the very bytes the parser compiles it to; a name no stub can express is never stubbed under
//!   another name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::apparmor::compile_cache::CompileCache;
use crate::apparmor::kernel::{Kernel, KernelError};
use crate::apparmor::mode::Mode;
use crate::apparmor::parser::{Cache, Parser, ParserError};
use crate::exit_code::{self, ExitStatus};
use crate::host::host_file;
use crate::host::lock::{self, LockError, LockOptions};
use crate::profile;
use crate::profile::check::{CheckError, CompiledProfile};
use crate::profile::keys::Key;
use crate::profile::names::ProfileName;
pub use crate::profile::neutralise::NeutraliseFailure;
use crate::profile::neutralise::{self, NeutraliseError};
use crate::profile::node_labels::{NodeReport, ReportTooLarge};
use crate::profile::ownership::{self, Claimant, SomeoneElses};
use crate::profile::prune;
use crate::profile::records::{
    ClaimLost, Inventory, KernelNow, LOADED_PROFILES, OWNED_FILES, StateError,
};
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

impl From<NeutraliseError> for LoadError {
    fn from(e: NeutraliseError) -> Self {
        match e {
            NeutraliseError::Kernel(e) => LoadError::Kernel(e),
            NeutraliseError::NotNeutralised(names, why) => LoadError::NotNeutralised(names, why),
        }
    }
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
    let boot_id = opts.kernel.boot_id().unwrap_or_else(|| {
        tracing::warn!(
            file = %opts.kernel.boot_id_file.display(),
            "cannot read this boot's id from {}: profiles retired earlier cannot be proven to be \
             still ours, so they are not counted as ours",
            opts.kernel.boot_id_file.display()
        );
        String::new()
    });
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
    refuse_foreign(opts, &compiled, &previous, &owned, &boot_id)?;

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
    let now = KernelNow {
        listed: &loaded,
        hashes: &hashes,
        boot_id: &boot_id,
    };
    let retired = prune::retire(&previous, &current, now);
    for name in &retired.tops {
        tracing::warn!(
            profile = %name,
            "retired {name:?}: it left the ConfigMap and stays loaded, as last loaded, until the \
             node reboots (unloading it would unconfine every process running under it); its \
             file is gone, so the next boot does not load it"
        );
    }
    for (name, why) in &retired.lost {
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
    retired.keep_in(&mut current, &boot_id);
    let (stale, unnameable) = prune::stale_children(&loaded, &current);
    let neutralised = neutralise::neutralise(
        &opts.kernel,
        parser,
        &opts.cache_dir,
        &stale,
        unnameable,
        &hashes,
    );
    // Keep what is known to be neutralised in the record even when this run failed half-way.
    current.neutralised = match &neutralised {
        Ok(done) => done.clone(),
        Err((done, _)) => done.clone(),
    };
    current.save(&opts.cache_dir, LOADED_PROFILES)?;
    let neutralised = neutralised.map_err(|(_, e)| e)?;
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
    report.retired = retired.tops;
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
        || prune::unchanged_in_kernel(compiled, previous, &hashes_before, &cache.toolchain)
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
    boot_id: &str,
) -> Result<(), LoadError> {
    if opts.adopt_loaded {
        return Ok(());
    }
    let loaded = opts.kernel.loaded_profiles()?;
    let hashes = opts.kernel.policy_hashes();
    let now = KernelNow {
        listed: &loaded,
        hashes: &hashes,
        boot_id,
    };
    // copy's claims count only where copy saw the kernel's list when it made them; retired
    // names only while the kernel holds exactly what we retired, in the same boot.
    let ours = ownership::our_names(owned, Some(previous), now);
    ownership::refuse_someone_elses(compiled, &loaded, &ours, Claimant::Load)?;
    Ok(())
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

/// Our record of what is loaded: file → hash, names and modes.
fn record(compiled: &[CompiledProfile]) -> Inventory {
    let mut inv = Inventory::default();
    for p in compiled {
        inv.files.insert(p.key.clone(), ownership::entry(p, false));
    }
    inv
}
