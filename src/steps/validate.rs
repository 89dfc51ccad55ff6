//! `validate`: every check `copy` and `load` make, without a kernel or a cluster, so an
//! operator's CI can refuse a profile before it reaches a ConfigMap; and that the set fits in
//! one ConfigMap at all.

use std::path::PathBuf;

use crate::apparmor::parser::{Cache, Parser};
use crate::exit_code::{self, ExitStatus};
use crate::profile;
use crate::profile::check::{CheckError, CompiledProfile};
use crate::profile::source::{CONFIGMAP_DATA_LIMIT, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("no profiles found in {0}")]
    Empty(String),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(
        "the profiles hold {bytes} bytes together, over the {limit} bytes a ConfigMap can hold \
         (the API server refuses more, whichever way the ConfigMap is made); the DaemonSet mounts \
         one ConfigMap, so drop profiles or comments until the set fits"
    )]
    TooLargeForConfigMap { bytes: u64, limit: u64 },
}

impl ExitStatus for ValidateError {
    fn exit_code(&self) -> u8 {
        match self {
            // A path that does not exist is a mistyped argument.
            ValidateError::Source(SourceError::NotFound(_)) => exit_code::USAGE,
            ValidateError::Source(SourceError::Io { .. }) => exit_code::INTERNAL,
            ValidateError::Empty(_) | ValidateError::TooLargeForConfigMap { .. } => {
                exit_code::INVALID_PROFILES
            }
            ValidateError::Check(e) => e.exit_code(),
        }
    }
}

/// Validates directories and files; returns what they define.
pub fn run(
    paths: &[PathBuf],
    max_size: u64,
    parser: &Parser,
) -> Result<Vec<CompiledProfile>, ValidateError> {
    let source = profile::source::read_sources(paths, max_size)?;
    if source.profiles.is_empty() && source.rejected.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(ValidateError::Empty(shown.join(", ")));
    }
    profile::check::accept_keys(&source)?;
    let bytes = source.total_bytes();
    if bytes > CONFIGMAP_DATA_LIMIT {
        return Err(ValidateError::TooLargeForConfigMap {
            bytes,
            limit: CONFIGMAP_DATA_LIMIT,
        });
    }
    let inputs: Vec<_> = source
        .profiles
        .iter()
        .map(|p| p.input(p.path.clone()))
        .collect();
    let compiled = profile::check::check(&inputs, parser, &Default::default(), Cache::Skip)?;
    for p in &compiled {
        tracing::info!(file = %p.key, profiles = ?p.modes, "valid: {} defines {}", p.key, p.names.join(", "));
    }
    Ok(compiled)
}
