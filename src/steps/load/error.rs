//! What can stop `load`, and the exit code each says.

use std::path::PathBuf;

use crate::apparmor::kernel::KernelError;
use crate::apparmor::parser::ParserError;
use crate::exit_code::{self, ExitStatus};
use crate::host::lock::LockError;
use crate::profile::check::CheckError;
use crate::profile::keys::Key;
use crate::profile::neutralise::{NeutraliseError, NeutraliseFailure};
use crate::profile::node_labels::ReportTooLarge;
use crate::profile::ownership::SomeoneElses;
use crate::profile::records::StateError;

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
            NeutraliseError::Cleanup(e) => LoadError::Lock(e),
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
