//! `validate`: every check `copy` and `load` make, without a kernel or a cluster, so an
//! operator's CI can refuse a profile before it reaches a ConfigMap.

use std::path::PathBuf;

use crate::exit_code::{self, ExitStatus};
use crate::parser::{Cache, CompiledProfile, Parser, ParserError, ProfileInput};
use crate::profile_files::{self, Rejection, Source, SourceError};
use crate::state::Inventory;

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

/// Logs the keys skipped on purpose, refuses any rejected key, compiles the rest and asks the
/// parser what each defines.
///
/// Files that `known` (a record this tool wrote) describes byte for byte compiled when the
/// record was written and are not compiled again; `load` recompiles everything anyway, against
/// the cache, before it touches the kernel.
pub fn check_source(
    source: &Source,
    parser: &Parser,
    known: &Inventory,
) -> Result<Vec<CompiledProfile>, ValidateError> {
    for key in &source.skipped {
        tracing::warn!(key = %key, "skipping {key}: a Kubernetes manifest, not a profile");
    }
    if !source.rejected.is_empty() {
        return Err(ValidateError::Rejected(source.rejected.clone()));
    }
    let inputs: Vec<ProfileInput> = source.profiles.iter().map(|p| p.input()).collect();
    let all: Vec<&ProfileInput> = inputs.iter().collect();
    let fresh: Vec<&ProfileInput> = inputs
        .iter()
        .filter(|i| known.describes(&i.key, &i.sha256).is_none())
        .collect();
    parser.compile(&fresh, Cache::Skip)?;
    Ok(parser.describe(&all, known)?)
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
    let compiled = check_source(&source, parser, &Inventory::default())?;
    for p in &compiled {
        tracing::info!(file = %p.key, profiles = ?p.modes, "valid: {} defines {}", p.key, p.names.join(", "));
    }
    Ok(compiled)
}
