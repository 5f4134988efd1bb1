//! Renderers from the kernel IR to source text. [`c_style`] holds what CUDA C and C share
//! (expressions, statements, the op table); [`cuda`] adds CUDA's launch model and types, [`c`]
//! the CPU's (blocks as thread-pool tasks, one entry point over one arena).
//! Output is deterministic: names come from the IR, and nothing iterates a hash map.

pub mod c;
pub mod c_style;
pub mod cuda;

use thiserror::Error;

/// Why a kernel cannot be rendered.
#[derive(Debug, Error)]
#[error("kernel '{kernel}': cannot render {what}")]
pub struct RenderError {
    /// Kernel name.
    pub kernel: String,
    /// What is not supported.
    pub what: String,
}
