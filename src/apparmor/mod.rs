//! AppArmor on the node: the `apparmor_parser` command lines and what they print (`parser`), run
//! by a generic bounded child-process supervisor (`process`) on a small thread pool (`pool`); its compile cache (`compile_cache`, and the parser's own layout of it, `parser_cache`) keyed by the toolchain fingerprint
//! (`toolchain`), the feature set the node boots with (`features`) and its parser generation
//! (`node_parser`), the kernel's own list of loaded profiles (`kernel`) with their modes (`mode`), the
//! compiled policy read as the kernel reads it, for the hash it will give each profile (`policy_blob`),
//! and the deny-everything stubs `load` neutralises stale children with (`stub`).

pub(crate) mod compile_cache;
pub(crate) mod features;
pub(crate) mod kernel;
pub(crate) mod mode;
pub(crate) mod node_parser;
pub(crate) mod parser;
pub mod parser_cache;
pub mod parser_conf;
pub(crate) mod policy_blob;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod stub;
pub(crate) mod toolchain;
