//! The `smelt` command line: argument parsing, the error a user sees, and one file per
//! command. The commands only drive the library (`smelt::compile_for`, `Session`, bundles);
//! the `.npy` reader, the benchmark harness and the GPU check are private to the tool.

mod bench;
mod compile;
mod gpu_check;
mod harness;
mod inspect;
pub mod npy;
mod profile;
mod run;
mod show;
mod transcript;
mod write_all;

use clap::{Parser, Subcommand};
use smelt::onnx::ImportOptions;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `println!` that ends the process quietly when stdout is closed (`smelt inspect | head`)
/// instead of panicking on the broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }};
}

pub(crate) use outln;

#[derive(Parser)]
#[command(
    name = "smelt",
    version,
    about = "Compile and run deep-learning inference graphs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The model and the input shapes that fix its symbolic dims.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Fix an input's shape, e.g. x=1x128 (needed for symbolic dims).
    #[arg(long = "shape", value_name = "NAME=AxB")]
    shapes: Vec<String>,
    /// Store f32 tensors as f16 or bf16 (kernels still compute in f32; inputs and outputs
    /// keep their declared types).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
}

impl ModelArgs {
    /// Imports the model with the given shapes.
    pub fn load(&self) -> Result<smelt::Graph, Error> {
        self.import(smelt::onnx::read_model(&self.model)?)
    }

    /// Imports `model`, read from the model file, with the given shapes and storage type.
    pub fn import(&self, model: smelt::onnx::proto::ModelProto) -> Result<smelt::Graph, Error> {
        let opts = ImportOptions {
            shapes: parse_shapes(&self.shapes)?,
            ..Default::default()
        };
        let file = self.model.display().to_string();
        let graph = smelt::onnx::import_owned(model, self.model.parent(), &file, &opts)?;
        let dtype = match self.dtype.as_str() {
            "f16" => smelt::DType::F16,
            "bf16" => smelt::DType::BF16,
            _ => return Ok(graph),
        };
        Ok(smelt::ir::with_storage(&graph, dtype)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run an ONNX model on .npy inputs and write each output to DIR/<name>.npy.
    Run(run::Args),
    /// Compile an ONNX model and write DIR/plan.json (kernels, bytes, flops, arena).
    Compile(compile::Args),
    /// Explain a compile: the kernels and their costs, the fusions not taken and why, and
    /// (with --dot) Graphviz of the graph before and after optimization.
    Inspect(inspect::Args),
    /// Benchmark a model on the CPU backend: warm-up, then the median and fastest of N runs
    /// on fresh random inputs, fused and unfused, and compile time with a cold and a warm
    /// cache.
    Bench(bench::Args),
    /// On a GPU: load each bundle (no NVRTC), check its outputs against the ones it carries,
    /// audit host synchronizations, and time it (what scripts/gpu-check runs).
    GpuCheck(gpu_check::Args),
    /// Import an ONNX model and print its IR in text form.
    Show(show::Args),
}

/// What a command can report: a mistake in how it was called ([`Error::Usage`]), a model or
/// input smelt refuses (most compiler and runtime errors, which name the node, the file or
/// the input), or a failure of smelt itself ([`Error::is_internal`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the compiler (import, validation, interpretation, lowering, rendering).
    #[error(transparent)]
    Compiler(#[from] smelt_compiler::Error),
    /// From the runtime.
    #[error(transparent)]
    Runtime(#[from] smelt_runtime::Error),
    /// NVRTC could not be found or did not compile a generated kernel.
    #[error(transparent)]
    Nvrtc(#[from] smelt_runtime::cuda::nvrtc::NvrtcError),
    /// A `.npy` file could not be read or written.
    #[error(transparent)]
    Npy(#[from] npy::NpyError),
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A command-line argument is malformed or names something that is not there.
    #[error("{0}")]
    Usage(String),
    /// A check the command ran did not pass (`gpu-check`).
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// True for failures of smelt itself rather than of the model or the call: lowering or
    /// rendering a graph the importer accepted, generated C or CUDA that does not compile.
    pub fn is_internal(&self) -> bool {
        use smelt_compiler::Error as C;
        use smelt_runtime::cuda::nvrtc::NvrtcError as N;
        use smelt_runtime::Error as R;
        matches!(
            self,
            Error::Compiler(C::Lower(_) | C::Render(_))
                | Error::Runtime(
                    R::Compiler(C::Lower(_) | C::Render(_)) | R::CCompile(_) | R::Codegen(_)
                )
                | Error::Nvrtc(N::Compile { .. })
        )
    }
}

/// Runs the command line; exit status 2 for a usage mistake, 1 for anything else.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Compile(a) => compile::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Bench(a) => bench::run(a),
        Command::GpuCheck(a) => gpu_check::run(a),
        Command::Show(a) => show::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            if e.is_internal() {
                eprintln!(
                    "internal error: {msg} (this is a smelt bug: please report it with the model)"
                );
            } else {
                eprintln!("error: {msg}");
            }
            ExitCode::from(if matches!(e, Error::Usage(_)) { 2 } else { 1 })
        }
    }
}

/// Optimizes and lays out for the GPU, saying one line per optimizer pass (for stderr).
fn compile_gpu(
    graph: &smelt::Graph,
    fast_math: bool,
    fuse: bool,
    say: &mut transcript::Transcript,
) -> Result<smelt::Compiled, Error> {
    let opts = smelt::optimize::Options {
        fast_math,
        fuse,
        ..Default::default()
    };
    let compiled = smelt::compile(graph, &opts)?;
    for line in compiled.report.lines() {
        say.err(line);
    }
    Ok(compiled)
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn parse_shapes(args: &[String]) -> Result<BTreeMap<String, Vec<usize>>, Error> {
    let mut out = BTreeMap::new();
    for a in args {
        let (name, dims) = a
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--shape '{a}': expected NAME=AxBxC")))?;
        let shape = if dims.is_empty() {
            vec![]
        } else {
            dims.split(['x', ','])
                .map(|d| d.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    Error::Usage(format!(
                        "--shape '{a}': dims must be non-negative integers like 2x32x64"
                    ))
                })?
        };
        if out.insert(name.to_string(), shape).is_some() {
            return Err(Error::Usage(format!("--shape names '{name}' twice")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn failures_of_smelt_are_told_from_refused_input() {
        let lower = smelt_compiler::kernel::LowerError::Unsupported {
            node: "n".into(),
            op: "op".into(),
        };
        assert!(Error::Compiler(lower.into()).is_internal());
        let c = smelt_runtime::Error::CCompile("x.c: error".into());
        assert!(Error::Runtime(c).is_internal());
        let onnx = smelt_compiler::Error::Onnx {
            file: "m.onnx".into(),
            message: "unsupported ops: Foo".into(),
        };
        assert!(!Error::Compiler(onnx).is_internal());
        assert!(!Error::Usage("--shape".into()).is_internal());
    }
}
