//! Profiles as this tool handles them: ConfigMap keys and the profile volume (`files`), profile
//! names (`names`), checking a set of profile files with the parser (`check`), the ownership
//! records on the host (`records`), and the node labels `load` reports to `untaint`
//! (`node_labels`).

pub(crate) mod check;
pub(crate) mod files;
pub(crate) mod names;
pub mod node_labels;
pub(crate) mod records;
