//! smelt's runtime: what executes a compiled graph.
//!
//! A [`Session`] owns a validated graph and runs it on a [`Device`]. Today the one device is
//! the CPU through the reference interpreter; the compiled C backend and the CUDA runtime
//! plug in here (see `DESIGN.md`).

#![warn(missing_docs)]

pub mod cuda;

use smelt_compiler::interp;
use smelt_compiler::ir::{Graph, Tensor};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// The runtime's one error type.
#[derive(Debug, Error)]
pub enum Error {
    /// The graph or its inputs were rejected by the compiler.
    #[error(transparent)]
    Compiler(#[from] smelt_compiler::Error),
    /// The requested device cannot run here.
    #[error("device '{device}' is not available: {why}")]
    DeviceUnavailable {
        /// Device name.
        device: String,
        /// Why not, and what to use instead.
        why: String,
    },
    /// An unknown device name.
    #[error("unknown device '{0}' (expected cpu, interp or cuda)")]
    UnknownDevice(String),
}

/// Where a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU. Until the compiled C backend lands this runs the reference interpreter.
    #[default]
    Cpu,
    /// The reference interpreter, explicitly (slow; the oracle).
    Interp,
    /// An NVIDIA GPU through CUDA.
    Cuda,
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "interp" => Ok(Device::Interp),
            "cuda" => Ok(Device::Cuda),
            other => Err(Error::UnknownDevice(other.to_string())),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Interp => "interp",
            Device::Cuda => "cuda",
        })
    }
}

/// A graph ready to run on a device.
///
/// ```
/// use smelt_compiler::ir::{DType, GraphBuilder, Tensor};
/// use smelt_runtime::{Device, Session};
/// use std::collections::HashMap;
///
/// let mut g = GraphBuilder::new();
/// let x = g.input("x", DType::F32, &[3])?;
/// let y = g.relu(x)?;
/// g.output("y", y)?;
/// let session = Session::new(g.build()?, Device::Cpu)?;
/// let inputs = HashMap::from([("x".to_string(), Tensor::f32([3], vec![-1.0, 0.5, 2.0]))]);
/// let out = session.run(&inputs)?;
/// assert_eq!(out[0].1.to_f64(), vec![0.0, 0.5, 2.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Session {
    graph: Graph,
    device: Device,
}

impl Session {
    /// Validates `graph` and prepares it for `device`.
    pub fn new(graph: Graph, device: Device) -> Result<Self, Error> {
        graph.validate()?;
        if device == Device::Cuda {
            return Err(Error::DeviceUnavailable {
                device: "cuda".into(),
                why: "this build has no CUDA runtime yet; use --device cpu".into(),
            });
        }
        Ok(Session { graph, device })
    }

    /// The graph this session runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs on named inputs (each exactly once, with the graph's dtype and shape) and returns
    /// the outputs in the graph's order.
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, Error> {
        Ok(interp::run(&self.graph, inputs)?)
    }
}
