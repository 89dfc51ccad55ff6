//! Files on the host: crash-safe writes (`atomic_file`), reads that never block on or follow what
//! someone else planted (`host_file`), and the run lock `copy` and `load` share (`lock`).

pub(crate) mod atomic_file;
pub(crate) mod host_file;
pub(crate) mod lock;
