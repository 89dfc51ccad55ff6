//! Kubernetes: the gate taint (`taint`) and the node condition `untaint` can write (`condition`).

pub mod condition;
pub mod taint;
