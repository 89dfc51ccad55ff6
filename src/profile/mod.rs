//! Profiles as this tool handles them: ConfigMap keys (`keys`), the profile volume (`source`),
//! profile names (`names`), checking a set of profile files with the parser (`check`), the ownership
//! records on the host (`records`) and the rules both steps follow with them (`ownership`), and the node labels `load` reports to `untaint`
//! (`node_labels`).

pub(crate) mod check;
pub(crate) mod keys;
pub(crate) mod names;
pub mod node_labels;
pub(crate) mod ownership;
pub(crate) mod records;
pub(crate) mod source;
