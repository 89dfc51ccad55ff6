//! `load`: the profiles `copy` placed on the host, into the kernel, proven.
//!
//! Order matters for failing closed: check AppArmor is on, compile everything without touching
//! the kernel (any failure stops here, the kernel untouched), load everything in one parser
//! call, read the kernel's own list to prove each profile is in force in the asked-for mode,
//! and only then unload the profiles a previous run loaded that have left the ConfigMap.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::exit_code::{self, ExitStatus};
use crate::kernel::{Kernel, KernelError};
use crate::lock::{self, LockError, LockOptions};
use crate::parser::{Cache, CompiledProfile, Parser, ParserError, ProfileInput};
use crate::profile_files::sha256_hex;
use crate::state::{Entry, Inventory, LOADED_PROFILES, OWNED_FILES, StateError};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The profile directory `copy` wrote (its state file lists our files).
    pub dest: PathBuf,
    /// Writable host directory for the parser's cache and our record of loaded profiles.
    pub cache_dir: PathBuf,
    pub kernel: Kernel,
    /// Also replace loaded profiles that are someone else's (another host file's, a runtime's).
    pub adopt_loaded: bool,
    pub lock: LockOptions,
}

/// What a run did, for the summary line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Files new or changed since the last recorded load.
    pub loaded: usize,
    /// Files identical to the last recorded load (replaced from the cache).
    pub unchanged: usize,
    /// Profiles unloaded because their file left the ConfigMap.
    pub removed: Vec<String>,
    /// Every profile name now verified in the kernel.
    pub verified: usize,
    pub took_ms: u128,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Unavailable(#[from] KernelError),
    #[error(
        "no profiles to load: {0} does not exist. The copy step writes it; check that the copy \
         init container ran against the same --dest"
    )]
    NotCopied(PathBuf),
    #[error(
        "profiles already loaded by someone else would be replaced, nothing was changed: {}. \
         Replacing them would change the confinement of every process using them. Rename the \
         profiles in the ConfigMap; if you really mean to take them over, pass --adopt-loaded \
         once",
        .0.join(", ")
    )]
    Foreign(Vec<String>),
    #[error(
        "profile file {0:?} is listed in the state file but missing from the profile directory"
    )]
    MissingFile(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Parser(ParserError),
    #[error("profiles are not provably loaded:\n  {}{}", .missing.join("\n  "), parser_note(.parser))]
    NotLoaded {
        missing: Vec<String>,
        parser: Option<String>,
    },
    #[error("profiles {0:?} were removed from the ConfigMap but are still loaded: {1}")]
    NotRemoved(Vec<String>, String),
    #[error("cannot create cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn parser_note(parser: &Option<String>) -> String {
    parser
        .as_ref()
        .map(|e| format!("\napparmor_parser said: {e}"))
        .unwrap_or_default()
}

impl ExitStatus for LoadError {
    fn exit_code(&self) -> u8 {
        match self {
            LoadError::Unavailable(_) => exit_code::APPARMOR_UNAVAILABLE,
            LoadError::NotCopied(_) | LoadError::MissingFile(_) | LoadError::Foreign(_) => {
                exit_code::INVALID_PROFILES
            }
            LoadError::Parser(ParserError::Invalid(..) | ParserError::DuplicateNames(_)) => {
                exit_code::INVALID_PROFILES
            }
            LoadError::NotLoaded { .. } | LoadError::NotRemoved(..) => exit_code::NOT_LOADED,
            _ => exit_code::INTERNAL,
        }
    }
}

/// Loads, verifies and prunes; see the module docs for the order and why.
pub fn run(opts: &LoadOptions, parser: &Parser) -> Result<LoadReport, LoadError> {
    let lock = lock::acquire(&opts.dest, "load", &opts.lock)?;
    lock.remove_stale_temps(&opts.cache_dir)?;
    let started = Instant::now();
    opts.kernel.ensure_enabled()?;
    if !Inventory::exists(&opts.dest, OWNED_FILES) {
        return Err(LoadError::NotCopied(opts.dest.join(OWNED_FILES)));
    }
    let owned = Inventory::load(&opts.dest, OWNED_FILES)?;
    std::fs::create_dir_all(&opts.cache_dir).map_err(|source| LoadError::CacheDir {
        path: opts.cache_dir.clone(),
        source,
    })?;
    let previous = Inventory::load(&opts.cache_dir, LOADED_PROFILES)?;

    // Compile what is on disk now (that is what the host loads at boot), not what the record says.
    let mut inputs = Vec::new();
    for key in owned.files.keys() {
        let path = opts.dest.join(key);
        let bytes = std::fs::read(&path).map_err(|_| LoadError::MissingFile(key.clone()))?;
        inputs.push(ProfileInput {
            key: key.clone(),
            path,
            sha256: sha256_hex(&bytes),
        });
    }
    let all: Vec<&ProfileInput> = inputs.iter().collect();
    let cache = Cache::At(&opts.cache_dir);
    parser.compile(&all, cache).map_err(LoadError::Parser)?;
    let compiled = parser
        .describe(&all, &previous)
        .map_err(LoadError::Parser)?;

    refuse_foreign(opts, parser, &compiled, &previous, &owned)?;

    // Record before loading, as copy records before writing: if the load or its verification
    // fails half-way, whatever reached the kernel is still ours to unload later.
    let current = record(&inputs, &compiled);
    let mut intent = previous.clone();
    intent.files.extend(current.files.clone());
    intent.save(&opts.cache_dir, LOADED_PROFILES)?;

    let paths: Vec<&Path> = inputs.iter().map(|i| i.path.as_path()).collect();
    let parser_failure = if paths.is_empty() {
        None
    } else {
        parser.replace(&paths, cache).err().map(|e| e.to_string())
    };
    verify(&opts.kernel, &compiled, parser_failure)?;

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

    let still_wanted: BTreeSet<String> = current.profile_names();
    let gone: Vec<String> = previous
        .profile_names()
        .into_iter()
        .filter(|n| !n.contains("//") && !still_wanted.contains(n))
        .collect();
    let unload = unload(opts, parser, &gone);
    // Keep the files whose profiles could not be unloaded in the record, so a later run retries.
    let mut saved = current;
    if unload.is_err() {
        for (key, entry) in &previous.files {
            if entry.profiles.iter().any(|n| gone.contains(n)) {
                saved
                    .files
                    .entry(key.clone())
                    .or_insert_with(|| entry.clone());
            }
        }
    }
    saved.save(&opts.cache_dir, LOADED_PROFILES)?;
    unload?;
    report.removed = gone;
    report.took_ms = started.elapsed().as_millis();
    Ok(report)
}

/// Name prefixes of the default profiles container runtimes load themselves (Docker, containerd's
/// CRI plugin, CRI-O, Podman/Buildah). Replacing one would reconfine every container on the node.
const RUNTIME_DEFAULT_PROFILES: &[&str] = &[
    "docker-default",
    "cri-containerd.apparmor.d",
    "crio-default",
    "containers-default-",
];

/// Refuses to replace a loaded profile that belongs to someone else: "nothing already loaded is
/// harmed" covers profiles that are not ours.
///
/// A name we would load that the kernel already has but our record does not list is usually
/// ours anyway: the host's boot-time loader read our top-level file (a reboot between `copy`
/// and `load`). It is someone else's when another file in the profile directory defines it (a
/// distribution profile) or when it is a container runtime's default profile; those are
/// refused. Only the unexplained names cost any work, so a normal run checks nothing more.
fn refuse_foreign(
    opts: &LoadOptions,
    parser: &Parser,
    compiled: &[CompiledProfile],
    previous: &Inventory,
    owned: &Inventory,
) -> Result<(), LoadError> {
    if opts.adopt_loaded {
        return Ok(());
    }
    let loaded = opts.kernel.loaded_profiles()?;
    let ours = previous.profile_names();
    let unexplained: Vec<(&String, &String)> = compiled
        .iter()
        .flat_map(|c| c.names.iter().map(move |n| (n, &c.key)))
        .filter(|(name, _)| loaded.contains_key(*name) && !ours.contains(*name))
        .collect();
    if unexplained.is_empty() {
        return Ok(());
    }
    let host = host_profile_names(opts, parser, owned);
    let mut foreign = Vec::new();
    for (name, key) in unexplained {
        if let Some(file) = host.get(name) {
            foreign.push(format!(
                "{name:?} (our file {key:?}; also defined by the host's {file:?})"
            ));
        } else if RUNTIME_DEFAULT_PROFILES.iter().any(|p| name.starts_with(p)) {
            foreign.push(format!(
                "{name:?} (our file {key:?}; a container runtime's default profile)"
            ));
        } else {
            tracing::warn!(profile = %name, file = %key,
                "adopting {name:?}: already loaded, defined by our file {key:?} and by no other \
                 host file (loaded at boot from our file, or by hand)");
        }
    }
    if foreign.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Foreign(foreign))
    }
}

/// Profile names defined by the top-level files in the profile directory that are not ours,
/// as the boot-time loader would read them. Files the parser cannot read are left out.
fn host_profile_names(
    opts: &LoadOptions,
    parser: &Parser,
    owned: &Inventory,
) -> BTreeMap<String, String> {
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&opts.dest)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| {
            !owned.files.contains_key(name) && crate::profile_files::parser_skips(name).is_none()
        })
        .collect();
    files.sort();
    // Host files may include the host's own snippets (`local/…`, newer abstractions).
    let mut host_parser = parser.clone();
    host_parser.includes.push(opts.dest.clone());
    let names = host_parser.parallel(&files, |(_, p)| host_parser.names(p));
    let mut defined = BTreeMap::new();
    for ((file, _), names) in files.iter().zip(names) {
        for name in names.unwrap_or_default() {
            defined.entry(name).or_insert_with(|| file.clone());
        }
    }
    defined
}

/// Proves every compiled profile is in the kernel, in the mode its flags ask for.
fn verify(
    kernel: &Kernel,
    compiled: &[CompiledProfile],
    parser_failure: Option<String>,
) -> Result<(), LoadError> {
    let loaded = kernel.loaded_profiles()?;
    let mut missing = Vec::new();
    for profile in compiled {
        for name in &profile.names {
            let want = profile.modes.get(name).map(String::as_str);
            match (loaded.get(name), want) {
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
        Ok(())
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

/// Unloads profiles we loaded earlier that left the ConfigMap, and proves they are gone.
fn unload(opts: &LoadOptions, parser: &Parser, gone: &[String]) -> Result<(), LoadError> {
    if gone.is_empty() {
        return Ok(());
    }
    let loaded = opts.kernel.loaded_profiles()?;
    let present: Vec<String> = gone
        .iter()
        .filter(|n| loaded.contains_key(*n))
        .cloned()
        .collect();
    let result = parser.remove(&present, &opts.cache_dir);
    let after = opts.kernel.loaded_profiles()?;
    let left: Vec<String> = present
        .into_iter()
        .filter(|n| after.contains_key(n))
        .collect();
    match (left.is_empty(), result) {
        (true, _) => Ok(()),
        (false, Err(e)) => Err(LoadError::NotRemoved(left, e.to_string())),
        (false, Ok(())) => Err(LoadError::NotRemoved(
            left,
            "the parser reported success".into(),
        )),
    }
}

/// Our record of what is loaded: file → hash, names and modes.
fn record(inputs: &[ProfileInput], compiled: &[CompiledProfile]) -> Inventory {
    let mut inv = Inventory::default();
    for (input, p) in inputs.iter().zip(compiled) {
        inv.files.insert(
            p.key.clone(),
            Entry {
                sha256: input.sha256.clone(),
                profiles: p.names.clone(),
                modes: p.modes.clone(),
            },
        );
    }
    inv
}
