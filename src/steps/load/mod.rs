//! `load`: the profiles `copy` placed on the host, into the kernel, proven.
//!
//! Order matters for failing closed: check AppArmor is on, compile everything without touching
//! the kernel (any failure stops here, the kernel untouched; on a fresh node every compile is a
//! cache hit of `copy`'s), refuse to replace a loaded profile our records do not call ours,
//! load everything in one parser call, read the kernel's own list to prove each profile (and
//! exactly its children) is in force in the asked-for mode, and only then deal with what left
//! the ConfigMap, without ever unconfining a running process.
//!
//! Nothing is ever unloaded, as unloading unconfines every task of the profile: what left the
//! ConfigMap is retired or neutralised (see `profile::prune` and `profile::neutralise`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::apparmor::compile_cache::CompileCache;
use crate::apparmor::kernel::Kernel;
use crate::apparmor::mode::Mode;
use crate::apparmor::parser::{Cache, Parser, ParserError};
use crate::host::host_file;
use crate::host::lock::{self, LockOptions, RunLock};
use crate::profile;
use crate::profile::check::{CheckError, CompiledProfile};
use crate::profile::loaded::{self, Changes};
use crate::profile::names::ProfileName;
use crate::profile::neutralise::{self};
use crate::profile::ownership::{self, Claimant};
use crate::profile::prune;
use crate::profile::records::{Inventory, KernelNow, LOADED_PROFILES, OWNED_FILES};
use crate::profile::source::{ProfileInput, sha256_hex};

mod error;
pub use error::LoadError;

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

/// Loads, verifies and prunes; see the module docs for the order and why.
pub fn run(opts: &LoadOptions, parser: &Parser) -> Result<LoadReport, LoadError> {
    let lock = lock::acquire(&opts.dest, "load", &opts.lock)?;
    lock.remove_stale_temps(&opts.cache_dir)?;
    tracing::info!("compiling for {}", parser.features.explain());
    let started = Instant::now();
    let ready = prepare(opts, parser)?;
    let (inputs, compiled) = compile(opts, parser, &ready)?;
    refuse_foreign(opts, &compiled, &ready)?;
    let mut current = record_before_loading(opts, &compiled, &ready.previous)?;
    let parser_failure = apply(opts, parser, &inputs, &compiled, &ready)?;
    let listed = verify(&opts.kernel, &compiled, parser_failure)?;
    current.toolchain = ready.cache.toolchain.clone();
    let hashes = opts.kernel.policy_hashes();
    loaded::take_policy_hashes(&mut current, &hashes);
    let changes = Changes::since(&ready.previous, &current);
    let (retired, neutralised) =
        prune(opts, parser, &lock, &ready, &listed, &hashes, &mut current)?;
    report_to_untaint(opts, &current, &ready.owned)?;
    Ok(LoadReport {
        loaded: changes.loaded,
        unchanged: changes.unchanged,
        retired,
        neutralised,
        verified: compiled.iter().map(|c| c.names.len()).sum(),
        took_ms: started.elapsed().as_millis(),
    })
}

// === Prepare: AppArmor on, our records, the cache ===

/// What every later phase reads: this boot's id, `copy`'s record of our files, our record of
/// the last load, and the compile cache.
struct Ready {
    boot_id: String,
    owned: Inventory,
    previous: Inventory,
    cache: CompileCache,
}

/// Checks AppArmor is on and reads our records; without `copy`'s record there is nothing to
/// load.
fn prepare(opts: &LoadOptions, parser: &Parser) -> Result<Ready, LoadError> {
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
    Ok(Ready {
        boot_id,
        owned,
        previous,
        cache,
    })
}

// === Compile, the kernel untouched ===

/// Compiles what is on disk now (that is what the host loads at boot), not what a record says.
///
/// A file copy wrote, byte for byte, with this toolchain compiled then (copy records only what
/// compiled), and its policy is in the cache: the load reads it from there. Anything else
/// (edited behind copy's back, or recorded by another parser or include tree) is compiled
/// afresh now, before the kernel is touched.
fn compile(
    opts: &LoadOptions,
    parser: &Parser,
    ready: &Ready,
) -> Result<(Vec<ProfileInput>, Vec<CompiledProfile>), LoadError> {
    let inputs = read_owned_files(&opts.dest, &ready.owned)?;
    let known = ready.owned.if_compiled_by(&ready.cache.toolchain);
    let unproven = ownership::unproven(&known, &inputs);
    for i in &unproven {
        tracing::info!(file = %i.key, "{} was not compiled by copy with this parser; compiling it now", i.key);
    }
    let dir = &ready.cache.dir;
    parser
        .compile(&unproven, Cache::Refresh(dir))
        .map_err(CheckError::from)?;
    let compiled = profile::check::check(&inputs, parser, &known, Cache::ReadWrite(dir))?;
    Ok((inputs, compiled))
}

/// Reads every file `copy` recorded. Only a file that does not exist is "missing" (exit 3);
/// any other read error is reported as it is.
fn read_owned_files(dest: &Path, owned: &Inventory) -> Result<Vec<ProfileInput>, LoadError> {
    owned
        .files
        .keys()
        .map(|key| {
            let path = dest.join(key);
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

// === Guard: nothing of someone else's replaced; what we load recorded first ===

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
    ready: &Ready,
) -> Result<(), LoadError> {
    if opts.adopt_loaded {
        return Ok(());
    }
    let loaded = opts.kernel.loaded_profiles()?;
    // copy's claims count only where copy saw the kernel's list when it made them; retired
    // names only while the kernel holds exactly what we retired, in the same boot.
    ownership::refuse_someone_elses_now(
        &opts.kernel,
        &loaded,
        &ready.boot_id,
        &ready.owned,
        Some(&ready.previous),
        compiled,
        Claimant::Load,
    )?;
    Ok(())
}

/// Records what we load before loading it, as copy records before writing: if the load or its
/// verification fails half-way, whatever reached the kernel is still ours to unload later.
fn record_before_loading(
    opts: &LoadOptions,
    compiled: &[CompiledProfile],
    previous: &Inventory,
) -> Result<Inventory, LoadError> {
    let current = loaded::record(compiled);
    ownership::record_before_acting(
        previous,
        &current,
        &previous.toolchain,
        &opts.cache_dir,
        LOADED_PROFILES,
    )?;
    Ok(current)
}

// === Apply, then verify in the kernel's own list ===

/// Loads every file in one parser call, unless the kernel provably holds exactly these bytes
/// already. Returns the parser's complaint when it ran to its end and said no (what reached the
/// kernel is verified next, and the parser's words go with the verdict).
fn apply(
    opts: &LoadOptions,
    parser: &Parser,
    inputs: &[ProfileInput],
    compiled: &[CompiledProfile],
    ready: &Ready,
) -> Result<Option<ParserError>, LoadError> {
    let hashes_before = opts.kernel.policy_hashes();
    let toolchain = &ready.cache.toolchain;
    if inputs.is_empty()
        || prune::unchanged_in_kernel(compiled, &ready.previous, &hashes_before, toolchain)
    {
        tracing::info!(
            "every profile is in the kernel from exactly these bytes (the kernel's policy hashes \
             match our record): nothing to load"
        );
        return Ok(None);
    }
    match parser.replace(inputs, Cache::ReadWrite(&ready.cache.dir)) {
        Ok(()) => Ok(None),
        Err(e @ ParserError::Failed { .. }) => Ok(Some(e)),
        // Killed (OOM), timed out, could not start: keep what happened, and its exit code.
        Err(e) => Err(LoadError::Parser(e)),
    }
}

/// Proves every compiled profile is in the kernel, in the mode its flags ask for. Returns the
/// kernel's list it proved it against.
fn verify(
    kernel: &Kernel,
    compiled: &[CompiledProfile],
    parser_failure: Option<ParserError>,
) -> Result<BTreeMap<String, Mode>, LoadError> {
    let listed = kernel.loaded_profiles()?;
    match loaded::proven(compiled, &listed, parser_failure.is_some()) {
        Ok(()) => Ok(listed),
        Err(missing) => Err(LoadError::NotLoaded {
            missing,
            parser: parser_failure,
        }),
    }
}

// === Prune: retire what left, neutralise stale children, never unload ===

/// Retires our top-level profiles that left the ConfigMap and neutralises the children our
/// files no longer define, then saves the record (with what is known to be neutralised even
/// when that failed half-way). Returns the retired and the neutralised names. The stubs are
/// written in the cache directory, under the run lock.
fn prune(
    opts: &LoadOptions,
    parser: &Parser,
    lock: &RunLock,
    ready: &Ready,
    listed: &BTreeMap<String, Mode>,
    hashes: &BTreeMap<String, String>,
    current: &mut Inventory,
) -> Result<(Vec<ProfileName>, Vec<ProfileName>), LoadError> {
    let now = KernelNow {
        listed,
        hashes,
        boot_id: &ready.boot_id,
    };
    let retired = prune::retire(&ready.previous, current, now);
    retired.log();
    retired.keep_in(current, &ready.boot_id);
    let (stale, unnameable) = prune::stale_children(listed, current);
    let dir = &opts.cache_dir;
    let neutralised =
        neutralise::neutralise(&opts.kernel, parser, lock, dir, &stale, unnameable, hashes);
    current.neutralised = match &neutralised {
        Ok(done) => done.clone(),
        Err((done, _)) => done.clone(),
    };
    current.save(&opts.cache_dir, LOADED_PROFILES)?;
    let neutralised = neutralised.map_err(|(_, e)| e)?;
    neutralise::log_done(&neutralised);
    Ok((retired.tops, neutralised.into_keys().collect()))
}

// === Report, to `untaint` ===

/// Writes what `untaint` labels the node with, when asked to; the retired names count too: they
/// accumulate until the node reboots.
fn report_to_untaint(
    opts: &LoadOptions,
    current: &Inventory,
    owned: &Inventory,
) -> Result<(), LoadError> {
    if let Some(path) = &opts.node_report {
        let out = loaded::node_report(current, &owned.node_os);
        out.fits()?;
        out.save(path)?;
    }
    Ok(())
}
