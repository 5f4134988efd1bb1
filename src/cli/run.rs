//! `smelt run`: a model on `.npy` inputs, each output written to `DIR/<name>.npy`.

use super::write_all::{check_destination, write_all};
use super::{io_error, npy, outln, Error, ModelArgs};
use smelt::{Device, Session, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Run an ONNX model on .npy inputs and write each output to DIR/<name>.npy.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// An input as NAME=FILE.npy (repeat for each input).
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// Directory for the outputs ('/' in output names becomes '_'; a model two of whose
    /// outputs would share a file is refused). Written all or nothing.
    #[arg(long, value_name = "DIR")]
    pub output_dir: PathBuf,
    /// Where to run: cpu (default), interp (the reference interpreter) or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Run the unfused plan (one kernel per op).
    #[arg(long)]
    pub no_fuse: bool,
}

/// Runs the model on the given inputs and writes every output.
pub fn run(args: Args) -> Result<(), Error> {
    let Args {
        model,
        inputs,
        output_dir,
        device,
        no_fuse,
    } = args;
    let (output_dir, fuse) = (output_dir.as_path(), !no_fuse);
    let device: Device = device.parse()?;
    check_destination(output_dir, true, "--output-dir")?;
    let graph = model.load()?;
    let files = output_files(&graph, &model.model)?;
    let names: Vec<String> = graph
        .inputs
        .iter()
        .map(|&i| graph.nodes[i].name.clone())
        .collect();
    let mut feeds: HashMap<String, Tensor> = HashMap::new();
    for a in &inputs {
        let (name, file) = a
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--input '{a}': expected NAME=FILE.npy")))?;
        let Some(&id) = graph.inputs.iter().find(|&&i| graph.nodes[i].name == name) else {
            return Err(Error::Usage(format!(
                "--input '{name}': the model has no input of that name (inputs: {})",
                names.join(", ")
            )));
        };
        let t = npy::read(Path::new(file))?;
        let want = &graph.nodes[id].ty;
        if t.dtype() != want.dtype || t.shape() != want.shape.as_slice() {
            return Err(Error::Usage(format!(
                "--input {name}={file}: expected {want}, got {}",
                t.ty()
            )));
        }
        if feeds.insert(name.to_string(), t).is_some() {
            return Err(Error::Usage(format!("--input names '{name}' twice")));
        }
    }
    if let Some(missing) = names.iter().find(|n| !feeds.contains_key(*n)) {
        let id = graph.inputs[names.iter().position(|n| n == missing).expect("listed")];
        return Err(Error::Usage(format!(
            "missing --input {missing}=FILE.npy (expected {})",
            graph.nodes[id].ty
        )));
    }
    let opts = smelt_runtime::SessionOptions {
        optimize: smelt::optimize::Options {
            fuse,
            ..Default::default()
        },
        ..Default::default()
    };
    let session = Session::with_options(graph, device, &opts)?;
    let outputs = session.run(&feeds)?;
    let written = write_outputs(output_dir, &outputs, &files)?;
    for ((name, t), path) in outputs.iter().zip(written) {
        outln!("{} = {} -> {}", name, t.ty(), path.display());
    }
    Ok(())
}

/// The file each graph output is written to (`<name, '/' replaced by '_'>.npy`), by output
/// name; refuses a model two of whose outputs would land in the same file (`a/b` and `a_b`),
/// before anything runs, rather than letting one overwrite the other.
fn output_files(graph: &smelt::Graph, model: &Path) -> Result<HashMap<String, String>, Error> {
    let mut owner: HashMap<String, &str> = HashMap::new();
    let mut files = HashMap::new();
    for (name, _) in &graph.outputs {
        let file = format!("{}.npy", name.replace('/', "_"));
        if let Some(other) = owner.insert(file.clone(), name) {
            return Err(Error::Compiler(smelt_compiler::Error::Onnx {
                file: model.display().to_string(),
                message: format!(
                    "graph outputs '{other}' and '{name}' would both be written to {file} ('/' in output names becomes '_'); rename one of them"
                ),
            }));
        }
        files.insert(name.clone(), file);
    }
    Ok(files)
}

/// Writes every output into `dir`, all or nothing ([`write_all`]); returns the paths, in
/// `outputs`' order.
fn write_outputs(
    dir: &Path,
    outputs: &[(String, Tensor)],
    files: &HashMap<String, String>,
) -> Result<Vec<PathBuf>, Error> {
    let mut staged = Vec::with_capacity(outputs.len());
    for (name, t) in outputs {
        let file = files
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("{}.npy", name.replace('/', "_")));
        let path = dir.join(file);
        let bytes = npy::to_bytes(t).map_err(|e| io_error(&path, e))?;
        staged.push((path, bytes));
    }
    write_all(&staged)?;
    Ok(staged.into_iter().map(|(path, _)| path).collect())
}
