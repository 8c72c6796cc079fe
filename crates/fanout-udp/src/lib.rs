//! The userspace data plane.
pub mod sys;
