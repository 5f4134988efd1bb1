//! The kernel IR ([`ir`]), lowering from the optimized graph ([`lower`]) and its interpreter
//! ([`interp`]).

pub mod interp;
pub mod ir;
pub mod lower;

pub use ir::{Kernel, Program};
pub use lower::{lower, lower_for, LowerError, Target};
