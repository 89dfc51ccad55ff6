//! Kubernetes: the gate taint (`taint`).

pub mod taint;
