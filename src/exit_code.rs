//! Exit codes, one per kind of failure an operator handles differently. The kubelet restarts a
//! failed init container, so every non-zero code keeps the node tainted and retries; the code
//! tells the reader of `kubectl describe pod` where to look without reading logs.

/// Something unexpected: a bug, or an I/O error outside the categories below.
pub const INTERNAL: u8 = 1;
/// Command-line usage error (clap's own code).
pub const USAGE: u8 = 2;
/// A profile or ConfigMap key is invalid; nothing was changed. Fix the ConfigMap.
pub const INVALID_PROFILES: u8 = 3;
/// AppArmor is not usable on this node (disabled, not built in, securityfs missing).
pub const APPARMOR_UNAVAILABLE: u8 = 4;
/// The kernel did not end up with the profiles in the asked-for mode.
pub const NOT_LOADED: u8 = 5;
/// The Kubernetes API refused or could not be reached in time.
pub const KUBERNETES_API: u8 = 6;

/// Every code with its one-line meaning, as `--help` and the README list them.
pub const ALL: &[(u8, &str)] = &[
    (0, "ok"),
    (
        INTERNAL,
        "internal or I/O error (the message names the path)",
    ),
    (USAGE, "usage error"),
    (
        INVALID_PROFILES,
        "invalid profiles, nothing changed: fix the ConfigMap",
    ),
    (APPARMOR_UNAVAILABLE, "AppArmor unavailable on this node"),
    (
        NOT_LOADED,
        "profiles not provably loaded (or a stale child not neutralised)",
    ),
    (KUBERNETES_API, "Kubernetes API error"),
];

/// The exit-code list for `--help`.
pub fn help() -> String {
    let mut text = String::from("Exit codes:\n");
    for (code, meaning) in ALL {
        text.push_str(&format!("  {code}  {meaning}\n"));
    }
    text
}

/// An error that knows which exit code it deserves.
pub trait ExitStatus {
    fn exit_code(&self) -> u8;
}

/// Why a run failed, with the exit code it deserves: the one error value that travels to the
/// top (cargo's `CliError`). A typed error brings its own code ([`ExitStatus`]) when it becomes
/// a `CliError`, so there is no second table from error types to codes.
#[derive(Debug)]
pub struct CliError {
    /// What went wrong, with its causes (logged as `{:#}`: the message and each cause).
    pub error: anyhow::Error,
    pub exit_code: u8,
}

impl CliError {
    /// A failure outside the typed errors (exit 1, [`INTERNAL`]).
    pub fn internal(error: anyhow::Error) -> Self {
        CliError {
            error,
            exit_code: INTERNAL,
        }
    }
}

impl<E> From<E> for CliError
where
    E: ExitStatus + std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        CliError {
            exit_code: error.exit_code(),
            error: error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_listed_in_order() {
        let codes: Vec<u8> = ALL.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6]);
        assert!(help().contains("  3  invalid profiles"));
    }
}
