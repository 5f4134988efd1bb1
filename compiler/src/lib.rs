//! smelt's compiler: the typed tensor IR, its reference interpreter and the ONNX importer.
//!
//! Everything here is pure Rust with no CUDA or C-compiler dependency.

#![warn(missing_docs)]

pub mod error;
pub mod interp;
pub mod ir;
pub mod onnx;
pub mod optimize;

pub use error::{Error, Result};
