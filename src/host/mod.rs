//! Files on the host: crash-safe writes (`atomic_file`), reads that never block on or follow what
//! someone else planted (`host_file`), the run lock `copy` and `load` share (`lock`), and the node's own files seen under a node root,
//! their links resolved inside it (`node_root`).

pub(crate) mod atomic_file;
pub(crate) mod host_file;
pub(crate) mod lock;
pub(crate) mod node_root;
