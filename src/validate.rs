//! `validate`: every check `copy` and `load` make, without a kernel or a cluster, so an
//! operator's CI can refuse a profile before it reaches a ConfigMap.

use std::path::PathBuf;

use crate::exit_code::{self, ExitStatus};
use crate::parser::{Cache, CompiledProfile, Parser, ParserError};
use crate::profile_files::{self, Rejection, Source, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{} of the profile keys are invalid, nothing was changed:\n  {}", .0.len(), list(.0))]
    Rejected(Vec<Rejection>),
    #[error("no profiles found in {0}")]
    Empty(String),
    #[error(transparent)]
    Parser(#[from] ParserError),
}

fn list(rejections: &[Rejection]) -> String {
    rejections
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

impl ExitStatus for ValidateError {
    fn exit_code(&self) -> u8 {
        match self {
            ValidateError::Source(_) => exit_code::INTERNAL,
            ValidateError::Rejected(_) | ValidateError::Empty(_) => exit_code::INVALID_PROFILES,
            ValidateError::Parser(ParserError::Invalid(..) | ParserError::DuplicateNames(_)) => {
                exit_code::INVALID_PROFILES
            }
            ValidateError::Parser(_) => exit_code::INTERNAL,
        }
    }
}

/// Logs the keys skipped on purpose, refuses any rejected key, then compiles the rest.
pub fn check_source(
    source: &Source,
    parser: &Parser,
    cache: Cache<'_>,
) -> Result<Vec<CompiledProfile>, ValidateError> {
    for key in &source.skipped {
        tracing::warn!(key = %key, "skipping {key}: a Kubernetes manifest, not a profile");
    }
    if !source.rejected.is_empty() {
        return Err(ValidateError::Rejected(source.rejected.clone()));
    }
    let files: Vec<(String, PathBuf)> = source
        .profiles
        .iter()
        .map(|p| (p.key.clone(), p.path.clone()))
        .collect();
    Ok(parser.check(&files, cache)?)
}

/// Validates directories and files; returns what they define.
pub fn run(
    paths: &[PathBuf],
    max_size: u64,
    parser: &Parser,
) -> Result<Vec<CompiledProfile>, ValidateError> {
    let source = profile_files::read_sources(paths, max_size)?;
    if source.profiles.is_empty() && source.rejected.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(ValidateError::Empty(shown.join(", ")));
    }
    let compiled = check_source(&source, parser, Cache::Skip)?;
    for p in &compiled {
        tracing::info!(file = %p.key, profiles = ?p.modes, "valid: {} defines {}", p.key, p.names.join(", "));
    }
    Ok(compiled)
}
