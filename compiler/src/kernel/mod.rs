//! The kernel IR ([`ir`]), lowering from the optimized graph ([`lower`]) and its interpreter
//! ([`interp`]).

pub mod interp;
pub mod ir;
pub mod layout;
pub mod lower;

pub use ir::{Kernel, Layout, Program, Target};
pub use lower::{lower, lower_for, lowerings, LowerError};
