//! apparmor-profile-loader: gets AppArmor profiles onto a Kubernetes node, proven loaded, before
//! the node's gate taint is removed.
//!
//! The folders are layers; each names only the layers below it:
//!
//! - top: [`cli`] (arguments), [`app`] (wiring: arguments to step options, one step run, an exit
//!   code out), [`logging`];
//! - `steps`: one module per container of the DaemonSet pod, in pod order `copy` → `load` →
//!   `untaint` (init containers), then `pause`; plus `validate` for an operator's CI;
//! - `kube`: the gate taint, the node condition, the API client and the node update `untaint`
//!   sends (requests, retries, patches);
//! - `profile`: ConfigMap keys and the profile volume, profile names, checking a set of profile
//!   files, the ownership records on the host, the node labels `load` reports to `untaint`;
//! - `apparmor`: the parser process, its compile cache and toolchain fingerprint, the node's
//!   feature set and parser generation, the kernel's profile list;
//! - `host`: crash-safe writes, non-blocking reads of host files, the run lock;
//! - bottom: [`exit_code`], the exit codes and the `ExitStatus` trait every layer's errors
//!   implement; it names no other module, so any layer may use it.
//!
//! Public is only what `src/bin/` and the integration tests use.

pub mod app;
pub mod cli;
pub mod exit_code;
pub mod logging;

mod apparmor;
mod host;
mod kube;
mod profile;
mod steps;

pub use apparmor::{parser_cache, parser_conf};
pub use kube::{admission_probe, condition, node_update, taint};
pub use profile::node_labels;
pub use profile::source::CONFIGMAP_DATA_LIMIT;
pub use steps::untaint;
