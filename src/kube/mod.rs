//! Kubernetes: the gate taint (`taint`), the node condition `untaint` can write (`condition`),
//! the API client (`client`), the proof that the admission policy confines the loader
//! (`admission_probe`) and bringing a node to what `untaint` wants (`node_update`).

pub mod admission_probe;
pub mod client;
pub mod condition;
pub mod node_update;
pub mod taint;
