//! smelt's runtime: what executes a compiled graph.
//!
//! A [`Session`] owns a validated graph and runs it on a [`Device`]: the CPU through the C
//! backend ([`cpu`], the default), the reference interpreter ([`Device::Interp`], the
//! oracle), or a GPU ([`cuda`]: NVRTC-compiled cubins in a bundle, one arena, one stream,
//! CUDA graphs).

#![warn(missing_docs)]

pub mod cache;
pub mod cpu;
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
    /// A CUDA call failed (what smelt was doing, and the driver's error).
    #[error("cuda: {0}")]
    Cuda(String),
    /// An ahead-of-time bundle could not be built, written or read.
    #[error("bundle: {0}")]
    Bundle(String),
    /// `--device cuda` on a machine without a usable GPU.
    #[error("no CUDA device found: {0}; use --device cpu")]
    NoCudaDevice(String),
    /// An unknown device name.
    #[error("unknown device '{0}' (expected cpu, interp or cuda)")]
    UnknownDevice(String),
    /// No usable C compiler for the CPU backend.
    #[error("no C compiler found for --device cpu: {why}. Install gcc or clang, or set SMELT_CC to a C compiler; --device interp runs the slow reference interpreter instead")]
    NoCompiler {
        /// What was tried.
        why: String,
    },
    /// The generated C did not compile (a smelt bug: please report it with the model).
    #[error("C compilation failed: {0}")]
    CCompile(String),
    /// Lowering or rendering the graph failed.
    #[error("code generation: {0}")]
    Codegen(String),
    /// A compiled shared object could not be loaded.
    #[error("cannot load {path}: {why}")]
    Load {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The compiled-code cache cannot be used: its directory cannot be created or written
    /// (it is a file, it is read-only, the disk is full), or something that is not a cache
    /// entry sits where one belongs and cannot be removed. A problem of the machine, not of
    /// the model or of smelt.
    #[error("compiled-code cache: {path}: {why} (set SMELT_CACHE_DIR to a writable directory)")]
    Cache {
        /// The file or directory.
        path: String,
        /// The OS error, or what is wrong with the file.
        why: String,
    },
}

impl From<cache::CacheError> for Error {
    fn from(e: cache::CacheError) -> Error {
        let path = e.path().display().to_string();
        let why = match e {
            cache::CacheError::Io { source, .. } => source.to_string(),
            cache::CacheError::NotAnEntry { what, .. } => what,
        };
        Error::Cache { path, why }
    }
}

/// Where a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU, through the C backend (generated C, the system compiler, a thread pool).
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

/// How a [`Session`] compiles its graph.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Optimizer options (fusion on by default; `fuse: false` gives the unfused plan).
    pub optimize: smelt_compiler::optimize::Options,
    /// Threads for the CPU backend (default: `$SMELT_THREADS`, else every core).
    pub threads: usize,
    /// Where compiled code is cached (default: [`cache::dir`]).
    pub cache_dir: Option<std::path::PathBuf>,
    /// Reuse code this process already loaded (default). `false` reads and verifies the
    /// disk cache as a fresh process would (for measuring warm-cache load time).
    pub reuse_loaded: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            optimize: Default::default(),
            threads: default_threads(),
            cache_dir: None,
            reuse_loaded: true,
        }
    }
}

/// `$SMELT_THREADS` if set to a positive number, else the available parallelism.
pub fn default_threads() -> usize {
    std::env::var("SMELT_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[derive(Debug)]
enum Backend {
    Interp,
    Cpu(Box<cpu::CpuModel>),
    Cuda(Box<cuda::executor::CudaModel>),
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
    backend: Backend,
    timings: smelt_compiler::timings::Timings,
}

impl Session {
    /// Validates `graph` and prepares it for `device` with the default options.
    pub fn new(graph: Graph, device: Device) -> Result<Self, Error> {
        Session::with_options(graph, device, &SessionOptions::default())
    }

    /// Validates `graph`, optimizes it and compiles it for `device`: everything is compiled
    /// and loaded before this returns, so the first run pays no compilation.
    pub fn with_options(
        graph: Graph,
        device: Device,
        opts: &SessionOptions,
    ) -> Result<Self, Error> {
        graph.validate()?;
        let mut timings = smelt_compiler::timings::Timings::default();
        let backend = match device {
            Device::Cuda => {
                // Everything compiles and loads here (warm-up): the first run only launches.
                let dev = cuda::device::probe().map_err(Error::NoCudaDevice)?;
                let compiled = smelt_compiler::compile_for(
                    &graph,
                    &opts.optimize,
                    smelt_compiler::kernel::Target::Gpu,
                )?;
                let dir = opts.cache_dir.clone().unwrap_or_else(cache::dir);
                let target = smelt_compiler::codegen::cuda::Cuda {
                    fast_math: opts.optimize.fast_math,
                };
                timings.extend(&compiled.timings);
                let bundle = timings.time("nvrtc and bundle", || {
                    cuda::bundle::Bundle::build_for(&compiled, &[dev.arch()], &dir, &target)
                })?;
                let model = timings.time("load", || cuda::executor::CudaModel::load(&bundle))?;
                Backend::Cuda(Box::new(model))
            }
            Device::Interp => Backend::Interp,
            Device::Cpu => {
                let compiled = smelt_compiler::compile_for(
                    &graph,
                    &opts.optimize,
                    smelt_compiler::kernel::Target::Cpu,
                )?;
                timings.extend(&compiled.timings);
                let dir = opts.cache_dir.clone().unwrap_or_else(cache::dir);
                let model = cpu::CpuModel::with_cache(
                    &compiled.program,
                    opts.threads,
                    &dir,
                    opts.reuse_loaded,
                )?;
                timings.extend(&model.info().timings);
                Backend::Cpu(Box::new(model))
            }
        };
        Ok(Session {
            graph,
            device,
            backend,
            timings,
        })
    }

    /// Where the time to create this session went: the optimizer's passes, lowering, and
    /// the backend's stages (rendering, the C compiler or the cache, loading, weights).
    pub fn timings(&self) -> &smelt_compiler::timings::Timings {
        &self.timings
    }

    /// The graph this session runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The compiled CPU model, when the device is the CPU.
    pub fn cpu_model(&self) -> Option<&cpu::CpuModel> {
        match &self.backend {
            Backend::Cpu(m) => Some(m),
            _ => None,
        }
    }

    /// Like [`Session::run`], reusing the storage of `previous` (an earlier run's outputs)
    /// for the new outputs where it fits: a serving loop that hands each result back
    /// allocates nothing per run.
    pub fn run_reusing(
        &self,
        inputs: &HashMap<String, Tensor>,
        previous: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, Error> {
        match &self.backend {
            Backend::Interp => Ok(interp::run(&self.graph, inputs)?),
            Backend::Cpu(m) => {
                interp::check_inputs(&self.graph, inputs)?;
                m.run_reusing(inputs, previous)
            }
            Backend::Cuda(m) => {
                interp::check_inputs(&self.graph, inputs)?;
                m.run(inputs)
            }
        }
    }

    /// Makes the first request cost what later ones do. Everything is compiled and loaded
    /// when a session is created; this also runs the plan once on inputs of zeros and
    /// discards the outputs, which starts the CPU thread pool and touches every page of the
    /// arena, or on a GPU captures the launches as the CUDA graph that later runs replay.
    /// Nothing to do for the reference interpreter. (A plan that divides integers by an
    /// input fails on zeros: warm it with [`Session::run`] on real inputs instead.)
    pub fn warm_up(&self) -> Result<(), Error> {
        if matches!(self.backend, Backend::Interp) {
            return Ok(());
        }
        let inputs: HashMap<String, Tensor> = self
            .graph
            .inputs
            .iter()
            .map(|&i| {
                let n = &self.graph.nodes[i];
                let zeros = vec![0.0; n.ty.numel()];
                let t = Tensor::from_f64(n.ty.dtype, n.ty.shape.clone(), &zeros);
                (n.name.clone(), t)
            })
            .collect();
        self.run(&inputs).map(|_| ())
    }

    /// Runs on named inputs (each exactly once, with the graph's dtype and shape) and returns
    /// the outputs in the graph's order.
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, Error> {
        self.run_reusing(inputs, Vec::new())
    }

    /// The CUDA model, when the device is a GPU.
    pub fn cuda_model(&self) -> Option<&cuda::executor::CudaModel> {
        match &self.backend {
            Backend::Cuda(m) => Some(m),
            _ => None,
        }
    }
}
