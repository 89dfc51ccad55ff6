//! Files on the host: crash-safe writes (`atomic_file`), reads that never block on or follow
//! what someone else planted (`host_file`), the run lock `copy` and `load` share (`lock`), the
//! temporary files a killed run left behind (`leftovers`), and the node's own files seen under a
//! node root, their links resolved inside it (`node_root`).

pub(crate) mod atomic_file;
pub(crate) mod host_file;
pub(crate) mod leftovers;
pub(crate) mod lock;
pub(crate) mod node_root;

/// The file mode bits no file or directory we (or the parser we run) create on the host may
/// have: write for group and others. Whoever could write the compile cache could have `load`
/// put their policy in the kernel, since the parser trusts a cache entry by name and time. The
/// parser creates its own cache entries with safe modes (0700 directories, 0600 files) under
/// any umask; ours are made with explicit modes too.
pub(crate) const NEVER_WRITABLE_BY_OTHERS: u32 = 0o022;
