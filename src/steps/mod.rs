//! The steps of the DaemonSet pod, one module each: `copy` → `load` → `untaint` (init
//! containers), then `pause`; and `validate`, every check of `copy` and `load` without a node.
//! Each takes a plain options struct (never a CLI type) and returns a typed report or error.

pub(crate) mod copy;
pub(crate) mod load;
pub(crate) mod pause;
pub mod untaint;
pub(crate) mod validate;
