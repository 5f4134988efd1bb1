//! `smelt show`: the imported graph (or the optimized one) in text form.

use super::transcript::Transcript;
use super::{compile_gpu, outln, Error, ModelArgs};

/// Import an ONNX model and print its IR in text form.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the graph after the optimizer (one line per pass goes to stderr).
    #[arg(long)]
    pub optimize: bool,
    /// Allow rewrites that change results beyond rounding (x*0 -> 0, reassociation).
    #[arg(long)]
    pub fast_math: bool,
}

/// Prints the graph.
pub fn run(args: Args) -> Result<(), Error> {
    let Args {
        model,
        optimize,
        fast_math,
    } = args;

    let graph = model.load()?;
    if optimize {
        let mut say = Transcript::default();
        let compiled = compile_gpu(&graph, fast_math, true, &mut say)?;
        say.print();
        outln!("{}", compiled.graph);
    } else {
        outln!("{graph}");
    }
    Ok(())
}
