//! What can stop `copy`, and the exit code each says.

use std::path::PathBuf;

use crate::apparmor::kernel::KernelError;
use crate::apparmor::parser::ParserError;
use crate::exit_code::{self, ExitStatus};
use crate::host::lock::LockError;
use crate::profile;
use crate::profile::check::CheckError;
use crate::profile::ownership::SomeoneElses;
use crate::profile::records::StateError;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Source(#[from] profile::source::SourceError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error("the ConfigMap volume {0} holds no profiles; refusing to remove every profile")]
    Empty(PathBuf),
    #[error(
        "{} not owned by apparmor-profile-loader already exist in {dest}, nothing was changed: \
         {}. Rename the ConfigMap keys (or remove those host files if you are sure they are \
         unused)",
        if .clashes.len() == 1 { "a file" } else { "files" },
        .clashes.join(", ")
    )]
    Clash { dest: PathBuf, clashes: Vec<String> },
    #[error(transparent)]
    Foreign(#[from] SomeoneElses),
    #[error(
        "the node runs {os}, whose own AppArmor 3 parser loads our files at every boot, and it \
         cannot compile them, nothing was changed: {source}. Write these profiles in AppArmor 3 \
         syntax (no `userns,`, no `abi <abi/4.0>` rules), or keep them off {os} nodes"
    )]
    NodeParser {
        os: String,
        #[source]
        source: ParserError,
    },
    #[error(
        "the node runs {os} (AppArmor 3) but the AppArmor 3 parser {path} is not in this image, \
         so reboot parity cannot be checked; use the project's image or pass --v3-parser"
    )]
    NoV3Parser { os: String, path: PathBuf },
    #[error(transparent)]
    Kernel(#[from] KernelError),
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
            CopyError::Check(e) => e.exit_code(),
            CopyError::NodeParser { source, .. } => source.exit_code(),
            CopyError::Kernel(e) => e.exit_code(),
            CopyError::Empty(_) | CopyError::Clash { .. } | CopyError::Foreign(_) => {
                exit_code::INVALID_PROFILES
            }
            // The source unreadable as a whole, the image without its AppArmor 3 parser, our
            // records, the lock, the host's files: nothing the ConfigMap can fix.
            CopyError::Source(_)
            | CopyError::NoV3Parser { .. }
            | CopyError::State(_)
            | CopyError::Lock(_)
            | CopyError::Io { .. } => exit_code::INTERNAL,
        }
    }
}
