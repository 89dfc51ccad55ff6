//! `copy`: profiles from the ConfigMap volume into the host's profile directory.
//!
//! The default destination is the top level of the host's `/etc/apparmor.d`, because that is
//! what the host's own `apparmor.service` loads at boot, before the kubelet starts; after a
//! reboot (which does not re-taint the node) our profiles are therefore in force before any pod
//! runs. Sharing that directory with the distribution's profiles is why ownership is strict:
//! only files listed in our state file are ever replaced or deleted, and a profile name the
//! kernel already has from someone else is never claimed.
//!
//! Validation is a full compile (a parse-only pass misses errors found after parsing). With a
//! cache directory, that compile is the node's only one: it compiles for the node's feature
//! set into the cache `load` reads, and the files it writes keep the modification time the
//! cache entries were made for.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::apparmor::compile_cache::{CompileCache, Staging};
use crate::apparmor::kernel::Kernel;
use crate::apparmor::node_parser::NodeParser;
use crate::apparmor::parser::{Cache, Parser};
use crate::apparmor::toolchain;
use crate::host::atomic_file;
use crate::host::lock::{self, LockOptions};
use crate::profile;
use crate::profile::check::CompiledProfile;
use crate::profile::copied;
use crate::profile::keys::Key;
use crate::profile::ownership::{self, Claimant};
use crate::profile::records::{Inventory, LOADED_PROFILES, OWNED_FILES};
use crate::profile::source::{ProfileFile, ProfileInput, Source};

/// Profile files are world-readable, like the distribution's own.
const PROFILE_MODE: u32 = 0o644;

mod error;
pub use error::CopyError;

#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub max_size: u64,
    /// The compile cache shared with `load` (and its record of loaded profiles); without one,
    /// `copy` compiles for validation only and `load` compiles again.
    pub cache_dir: Option<PathBuf>,
    /// The node's kernel, read-only: which profile names are already loaded.
    pub kernel: Kernel,
    /// Claim profile names the kernel already has from someone else.
    pub adopt_loaded: bool,
    /// Where the private snapshot of the ConfigMap is compiled (the pod's `/tmp`).
    pub scratch_dir: PathBuf,
    /// The node's own parser generation, and the parser that stands in for an AppArmor 3 one.
    pub node_parser: NodeParser,
    pub v3_parser: Parser,
    pub lock: LockOptions,
}

/// What a run changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub written: Vec<Key>,
    pub unchanged: Vec<Key>,
    pub removed: Vec<Key>,
}

/// Validates the whole source, then brings the destination in line with it.
///
/// Nothing is written unless every key is valid and compiles. Ownership is recorded before a
/// file is created, so a crash mid-run never leaves a file we wrote but do not own.
pub fn run(opts: &CopyOptions, parser: &Parser) -> Result<CopyReport, CopyError> {
    let lock = lock::acquire(&opts.dest, "copy", &opts.lock)?;
    lock.remove_stale_temps(&opts.dest)?;
    tracing::info!("compiling for {}", parser.features.explain());
    if let NodeParser::V3 { os } = &opts.node_parser {
        tracing::info!(
            "the node runs {os}: new files must also compile with the AppArmor 3 parser {}",
            opts.v3_parser.binary.display()
        );
    }
    let ready = prepare(opts, parser)?;
    let mtime = SystemTime::now();
    let compiled = compile(opts, parser, &ready, mtime)?;
    check_reboot_parity(opts, &ready.known, &compiled.inputs)?;
    let kernel_seen = refuse_foreign(opts, &ready.owned, &compiled.profiles)?;
    let report = write_destination(opts, &ready, &compiled.profiles, mtime, kernel_seen)?;
    promote(&ready, compiled.staging)?;
    Ok(report)
}

// === Prepare: the source, our records, the cache ===

/// What every later phase reads: the source, our record of the files we own, the compile cache
/// and the toolchain the record must name to vouch for a file.
struct Ready {
    source: Source,
    owned: Inventory,
    cache: Option<CompileCache>,
    toolchain: String,
    /// What the record says a file defines holds only for the toolchain that said it.
    known: Inventory,
}

/// Reads the whole source (refusing an empty one and any key that is not accepted) and our
/// records, and opens the compile cache.
fn prepare(opts: &CopyOptions, parser: &Parser) -> Result<Ready, CopyError> {
    let source = profile::source::read_source_dir(&opts.source, opts.max_size)?;
    if source.profiles.is_empty() && source.rejected.is_empty() {
        return Err(CopyError::Empty(opts.source.clone()));
    }
    profile::check::accept_keys(&source)?;
    let owned = Inventory::load(&opts.dest, OWNED_FILES)?;
    let cache = match &opts.cache_dir {
        Some(dir) => Some(
            CompileCache::open(dir, parser)
                .map_err(|source| io("prepare the compile cache in", dir, source))?,
        ),
        None => None,
    };
    let toolchain = match &cache {
        Some(c) => c.toolchain.clone(),
        None => toolchain::fingerprint(parser)
            .map_err(|source| io("fingerprint the parser", &parser.binary, source))?,
    };
    let known = owned.if_compiled_by(&toolchain);
    Ok(Ready {
        source,
        owned,
        cache,
        toolchain,
        known,
    })
}

// === Compile: a private snapshot, never the volume (the kubelet may swap it meanwhile) ===

/// What was compiled, from the snapshot (kept until the run ends: the AppArmor 3 check reads
/// it too), into the staging area of the cache (dropped, so discarded, on every early return).
struct Compiled<'a> {
    _snapshot: tempfile::TempDir,
    inputs: Vec<ProfileInput>,
    profiles: Vec<CompiledProfile>,
    staging: Option<Staging<'a>>,
}

/// Compiles every file the record does not vouch for, from a private snapshot written with one
/// modification time (`mtime`, which the files written to the destination keep too).
fn compile<'a>(
    opts: &CopyOptions,
    parser: &Parser,
    ready: &'a Ready,
    mtime: SystemTime,
) -> Result<Compiled<'a>, CopyError> {
    let snapshot = tempfile::Builder::new()
        .prefix("apparmor-profile-loader-")
        .tempdir_in(&opts.scratch_dir)
        .map_err(|source| io("create a snapshot directory in", &opts.scratch_dir, source))?;
    // Files the record vouches for are not compiled again, so not written, unless the AppArmor 3
    // check must see every file.
    let every_file = copied::needs_every_file_checked(&opts.node_parser, &ready.known);
    let files = &ready.source.profiles;
    let inputs = write_snapshot(snapshot.path(), files, &ready.known, every_file, mtime)?;
    let staging = match &ready.cache {
        Some(c) => Some(c.staging().map_err(|source| io("create", &c.dir, source))?),
        None => None,
    };
    let cache_mode = staging
        .as_ref()
        .map_or(Cache::Skip, |s| Cache::Refresh(s.path()));
    let profiles = profile::check::check(&inputs, parser, &ready.known, cache_mode)?;
    Ok(Compiled {
        _snapshot: snapshot,
        inputs,
        profiles,
        staging,
    })
}

// === Apply: the destination, then the compiled policy into the cache ===

/// Moves what was compiled into the cache `load` reads, once the destination is written.
fn promote(ready: &Ready, staging: Option<Staging<'_>>) -> Result<(), CopyError> {
    if let (Some(c), Some(staging)) = (&ready.cache, staging) {
        let promoted = staging
            .promote()
            .map_err(|source| io("promote compiled policy into", &c.dir, source))?;
        tracing::debug!(
            promoted,
            "compiled policy promoted into {}",
            c.dir.display()
        );
    }
    Ok(())
}

/// Writes the destination: ownership first, then the files, then the stale files removed.
fn write_destination(
    opts: &CopyOptions,
    ready: &Ready,
    compiled: &[CompiledProfile],
    mtime: SystemTime,
    kernel_seen: bool,
) -> Result<CopyReport, CopyError> {
    let (owned, files) = (&ready.owned, &ready.source.profiles);
    let clashes = ownership::foreign_files(&opts.dest, owned, files.iter().map(|p| &p.key));
    if !clashes.is_empty() {
        return Err(CopyError::Clash {
            dest: opts.dest.clone(),
            clashes,
        });
    }
    let wanted = copied::wanted(
        owned,
        compiled,
        &ready.toolchain,
        &opts.node_parser,
        kernel_seen,
    );

    let mut report = CopyReport::default();
    let mut to_write = Vec::new();
    for file in files {
        // An unchanged profile keeps its mtime (and the parser's cache stays valid).
        let path = opts.dest.join(&file.key);
        if atomic_file::holds(&path, file.content.as_bytes(), PROFILE_MODE) {
            report.unchanged.push(file.key.clone());
        } else {
            to_write.push(file);
        }
    }
    report.removed = copied::removed(owned, &wanted);
    if to_write.is_empty() && report.removed.is_empty() && copied::same_record(owned, &wanted) {
        return Ok(report);
    }

    // Own first, then write: the union of old and new ownership covers every file on disk.
    ownership::record_before_acting(owned, &wanted, "", &opts.dest, OWNED_FILES)?;

    for file in to_write {
        atomic_file::write_at(
            &opts.dest,
            &file.key,
            file.content.as_bytes(),
            PROFILE_MODE,
            Some(mtime),
        )
        .map_err(|source| io("write", &opts.dest.join(&file.key), source))?;
        report.written.push(file.key.clone());
    }
    for key in &report.removed {
        let path = opts.dest.join(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io("remove", &path, source)),
        }
    }
    atomic_file::sync_dir(&opts.dest).map_err(|source| io("sync", &opts.dest, source))?;
    wanted.save(&opts.dest, OWNED_FILES)?;
    Ok(report)
}

/// The profiles as inputs for the parser, each at its path in the snapshot directory under its
/// key (the parser's cache names entries after the file name), all with one modification time.
///
/// Only the files `known` does not describe are written: they are the only ones compiled
/// (and asked about). A file the record vouches for is never read from the snapshot.
fn write_snapshot(
    dir: &Path,
    files: &[ProfileFile],
    known: &Inventory,
    every_file: bool,
    mtime: SystemTime,
) -> Result<Vec<ProfileInput>, CopyError> {
    files
        .iter()
        .map(|file| {
            let input = file.input(dir.join(&file.key));
            if every_file || known.describes(&input.key, &input.sha256).is_none() {
                let written = fs::File::create(&input.path).and_then(|mut f| {
                    std::io::Write::write_all(&mut f, file.content.as_bytes())?;
                    f.set_modified(mtime)
                });
                written.map_err(|source| io("write the snapshot file", &input.path, source))?;
            }
            Ok(input)
        })
        .collect()
}

/// On a node whose own parser is AppArmor 3, compiles every new or changed file with an
/// AppArmor 3 parser too: the node's boot loads our files with its own parser. Every file,
/// when the record does not say they were all checked so (the node was taken for AppArmor 4
/// before, or the record predates the check).
fn check_reboot_parity(
    opts: &CopyOptions,
    owned: &Inventory,
    inputs: &[ProfileInput],
) -> Result<(), CopyError> {
    let os = match &opts.node_parser {
        NodeParser::V3 { os } => os,
        NodeParser::Current { .. } => return Ok(()),
    };
    let v3 = &opts.v3_parser;
    if !v3.binary.is_file() {
        return Err(CopyError::NoV3Parser {
            os: os.clone(),
            path: v3.binary.clone(),
        });
    }
    let to_check = copied::to_check_with_apparmor3(&opts.node_parser, owned, inputs);
    v3.compile(&to_check, Cache::Skip)
        .map_err(|source| CopyError::NodeParser {
            os: os.clone(),
            source,
        })
}

/// Refuses to claim a profile name the kernel already has from someone else.
///
/// A name is ours when one of our records lists it: `copy`'s (names it claimed earlier) or
/// `load`'s (names it loaded or retired). A new name that the kernel already has is someone
/// else's: a distribution profile, one loaded by hand, a runtime's. Writing our file would
/// replace it at the next boot, and `load` would replace it now, so neither happens unless the
/// operator passes `--adopt-loaded`.
///
/// The kernel's list is read whenever securityfs has it, whatever `--enabled-file` says. Only
/// when there is no list at all (AppArmor not running here) is nothing loaded that could be
/// harmed; the claims are then recorded as unverified and `load` does not count them. Returns
/// whether the kernel's list was seen.
fn refuse_foreign(
    opts: &CopyOptions,
    owned: &Inventory,
    compiled: &[CompiledProfile],
) -> Result<bool, CopyError> {
    let Some(loaded) = opts.kernel.loaded_profiles_if_running()? else {
        // No AppArmor (and load refuses the node); nothing is loaded to be harmed.
        return Ok(false);
    };
    if opts.adopt_loaded {
        return Ok(true);
    }
    let loaded_record = match &opts.cache_dir {
        Some(dir) => Some(Inventory::load(dir, LOADED_PROFILES)?),
        None => None,
    };
    let boot_id = opts.kernel.boot_id().unwrap_or_default();
    ownership::refuse_someone_elses_now(
        &opts.kernel,
        &loaded,
        &boot_id,
        owned,
        loaded_record.as_ref(),
        compiled,
        Claimant::Copy,
    )?;
    Ok(true)
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> CopyError {
    CopyError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}
