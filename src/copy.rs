//! `copy`: profiles from the ConfigMap volume into the host's profile directory.
//!
//! The default destination is the top level of the host's `/etc/apparmor.d`, because that is
//! what the host's own `apparmor.service` loads at boot, before the kubelet starts; after a
//! reboot (which does not re-taint the node) our profiles are therefore in force before any pod
//! runs. Sharing that directory with the distribution's profiles is why ownership is strict:
//! only files listed in our state file are ever replaced or deleted.

use std::fs;
use std::path::{Path, PathBuf};

use crate::atomic_file;
use crate::exit_code::{self, ExitStatus};
use crate::lock::{self, LockError, LockOptions};
use crate::parser::Parser;
use crate::profile_files;
use crate::state::{Entry, Inventory, OWNED_FILES, StateError};
use crate::validate::{self, ValidateError};

/// Profile files are world-readable, like the distribution's own.
const PROFILE_MODE: u32 = 0o644;

#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub max_size: u64,
    pub lock: LockOptions,
}

/// What a run changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub written: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error("the ConfigMap volume {0} holds no profiles; refusing to remove every profile")]
    Empty(PathBuf),
    #[error("destination {0} is not a directory")]
    NoDestination(PathBuf),
    #[error(
        "{} not owned by apparmor-profile-loader already exist in {dest}, nothing was changed: \
         {}. Rename the ConfigMap keys (or remove those host files if you are sure they are \
         unused)",
        if .clashes.len() == 1 { "a file" } else { "files" },
        .clashes.join(", ")
    )]
    Clash { dest: PathBuf, clashes: Vec<String> },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ExitStatus for CopyError {
    fn exit_code(&self) -> u8 {
        match self {
            CopyError::Invalid(e) => e.exit_code(),
            CopyError::Empty(_) | CopyError::Clash { .. } => exit_code::INVALID_PROFILES,
            _ => exit_code::INTERNAL,
        }
    }
}

/// Validates the whole source, then brings the destination in line with it.
///
/// Nothing is written unless every key is valid and compiles. Ownership is recorded before a
/// file is created, so a crash mid-run never leaves a file we wrote but do not own.
pub fn run(opts: &CopyOptions, parser: &Parser) -> Result<CopyReport, CopyError> {
    let lock = lock::acquire(&opts.dest, "copy", &opts.lock)?;
    lock.remove_stale_temps(&opts.dest)?;
    let source =
        profile_files::read_source_dir(&opts.source, opts.max_size).map_err(ValidateError::from)?;
    if source.profiles.is_empty() && source.rejected.is_empty() {
        return Err(CopyError::Empty(opts.source.clone()));
    }
    if !opts.dest.is_dir() {
        return Err(CopyError::NoDestination(opts.dest.clone()));
    }
    let owned = Inventory::load(&opts.dest, OWNED_FILES)?;
    let compiled = validate::check_source(&source, parser, &owned)?;

    let clashes = foreign_files(&opts.dest, &owned, source.profiles.iter().map(|p| &p.key));
    if !clashes.is_empty() {
        return Err(CopyError::Clash {
            dest: opts.dest.clone(),
            clashes,
        });
    }

    let mut wanted = Inventory::default();
    for (file, compiled) in source.profiles.iter().zip(&compiled) {
        wanted.files.insert(
            file.key.clone(),
            Entry {
                sha256: file.sha256(),
                profiles: compiled.names.clone(),
                modes: compiled.modes.clone(),
            },
        );
    }

    let mut report = CopyReport::default();
    let mut to_write = Vec::new();
    for file in &source.profiles {
        if is_current(&opts.dest.join(&file.key), file.content.as_bytes()) {
            report.unchanged.push(file.key.clone());
        } else {
            to_write.push(file);
        }
    }
    report.removed = owned
        .files
        .keys()
        .filter(|k| !wanted.files.contains_key(*k))
        .cloned()
        .collect();
    if to_write.is_empty() && report.removed.is_empty() && owned.files == wanted.files {
        return Ok(report);
    }

    // Own first, then write: the union of old and new ownership covers every file on disk.
    let mut intent = owned.clone();
    intent.files.extend(wanted.files.clone());
    intent.save(&opts.dest, OWNED_FILES)?;

    for file in to_write {
        atomic_file::write(&opts.dest, &file.key, file.content.as_bytes(), PROFILE_MODE).map_err(
            |source| CopyError::Io {
                action: "write",
                path: opts.dest.join(&file.key),
                source,
            },
        )?;
        report.written.push(file.key.clone());
    }
    for key in &report.removed {
        let path = opts.dest.join(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CopyError::Io {
                    action: "remove",
                    path,
                    source,
                });
            }
        }
    }
    atomic_file::sync_dir(&opts.dest).map_err(|source| CopyError::Io {
        action: "sync",
        path: opts.dest.clone(),
        source,
    })?;
    wanted.save(&opts.dest, OWNED_FILES)?;
    Ok(report)
}

/// Keys whose file already exists in the destination but is not ours.
fn foreign_files<'a>(
    dest: &Path,
    owned: &Inventory,
    keys: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    keys.filter(|k| !owned.files.contains_key(*k))
        .filter(|k| fs::symlink_metadata(dest.join(k)).is_ok())
        .map(|k| format!("{k:?} ({})", dest.join(k).display()))
        .collect()
}

/// Whether the destination already holds exactly this content as a regular file with our mode,
/// so an unchanged profile keeps its mtime (and the parser's cache stays valid).
fn is_current(path: &Path, content: &[u8]) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o777 == PROFILE_MODE => {
            fs::read(path).is_ok_and(|existing| existing == content)
        }
        _ => false,
    }
}
