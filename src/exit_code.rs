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

/// An error that knows which exit code it deserves.
pub trait ExitStatus {
    fn exit_code(&self) -> u8;
}
