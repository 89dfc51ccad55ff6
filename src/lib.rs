//! apparmor-profile-loader: gets AppArmor profiles onto a Kubernetes node, proven loaded, before
//! the node's gate taint is removed. One module per step of the DaemonSet pod, plus the kernel
//! interface, the parser and the profile files they share.
//!
//! Pod order: [`copy`] → [`load`] → [`untaint`] (init containers), then [`pause`].

pub mod app;
pub mod atomic_file;
pub mod cli;
pub mod compile_cache;
pub mod copy;
pub mod exit_code;
pub mod features;
pub mod host_file;
pub mod kernel;
pub mod load;
pub mod lock;
pub mod logging;
pub mod node_labels;
pub mod node_parser;
pub mod parser;
pub mod pause;
pub mod pool;
pub mod profile_check;
pub mod profile_files;
pub mod profile_names;
pub mod state;
pub mod taint;
pub mod toolchain;
pub mod untaint;
pub mod validate;

#[cfg(test)]
#[path = "../tests/executable_script/mod.rs"]
pub(crate) mod executable_script;
