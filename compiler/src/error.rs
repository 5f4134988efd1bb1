//! The compiler crate's one error type.

use thiserror::Error;

/// Everything that can go wrong while building, importing, validating or interpreting a graph.
#[derive(Debug, Error)]
pub enum Error {
    /// An op was given inputs it cannot take.
    #[error("node '{node}' ({op}): {message}")]
    Node {
        /// Node name.
        node: String,
        /// Op name.
        op: String,
        /// What is wrong, with shapes.
        message: String,
    },
    /// `Graph::validate` found problems; every one is listed.
    #[error("invalid graph: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// A run was given an input that does not fit the graph.
    #[error("input '{name}': {message}")]
    Input {
        /// Input name.
        name: String,
        /// What was expected and what was given.
        message: String,
    },
    /// The ONNX file could not be read or understood.
    #[error("{file}: {message}")]
    Onnx {
        /// The model file.
        file: String,
        /// What is wrong, naming the node when there is one.
        message: String,
    },
    /// The optimized graph could not be lowered to the kernel IR.
    #[error(transparent)]
    Lower(#[from] crate::kernel::LowerError),
    /// A lowered kernel could not be rendered to source text.
    #[error(transparent)]
    Render(#[from] crate::codegen::RenderError),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
