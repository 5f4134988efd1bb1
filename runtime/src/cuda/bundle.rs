//! Ahead-of-time bundles: everything a GPU run needs, in one versioned file that loads with no
//! NVRTC: the plan, the launch list (kernel, grid, block, buffer parameters), the buffers and
//! their arena offsets, the weights, and a cubin per kernel per architecture.
//!
//! Layout: `SMELTBDL` · format version (u32 LE) · manifest length (u64 LE) · manifest (JSON)
//! · blobs · the cache trailer (magic + FNV-1a checksum of everything before it). A reader
//! checks the magic, the version (a mismatch is an error that says how to rebuild), the
//! checksum and every blob's range before trusting anything.

use crate::cache;
use serde::{Deserialize, Serialize};
use smelt_compiler::codegen::cuda;
use smelt_compiler::ir::DType;
use smelt_compiler::kernel::ir::{BlasGemm, BlasMatrix, IndexCheck};
use smelt_compiler::kernel::Target;
use smelt_compiler::Compiled;
use std::path::Path;

/// First bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"SMELTBDL";
/// The format this build writes. Version 2 added the element offset of a cuBLASLt call's
/// operands (`BlasMatrix::offset`): a runtime that reads only version 1 must refuse such a
/// bundle rather than drop the offset and read the wrong elements.
pub const VERSION: u32 = 2;
/// The formats this build reads (a version 1 bundle's calls all have offset 0).
pub const READS: std::ops::RangeInclusive<u32> = 1..=VERSION;

/// Where a blob lies in the data section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One buffer of the program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferSpec {
    /// Name (the producing node's).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Offset in the device arena.
    pub offset: usize,
    /// Size in bytes.
    pub bytes: usize,
    /// Its initial contents, for a weight.
    pub constant: Option<Blob>,
}

/// One launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The function launched (the entry point in its cubin). Kernels that differ only in
    /// their buffers launch one function: their cubin and source blobs are one.
    pub kernel: String,
    /// The plan's kernel this launch computes (`k3_fused_add_layernorm`); empty in bundles
    /// written before functions were shared, whose `kernel` is that name.
    #[serde(default)]
    pub name: String,
    /// Blocks.
    pub grid: usize,
    /// Threads per block.
    pub block: usize,
    /// Buffers passed as the function's pointer parameters, in order (the kernel's reads and
    /// writes, each once, in the order the function takes them).
    pub params: Vec<u32>,
    /// The cubin of each architecture, as (arch, blob).
    pub cubins: Vec<(String, Blob)>,
    /// The CUDA source the cubins were compiled from (UTF-8), so a GPU machine with NVRTC
    /// can time a cold and a warm-cache compile against the bundle's load.
    #[serde(default)]
    pub source: Option<Blob>,
    /// The cuBLASLt call that computes the same as the kernel, which a runtime with the
    /// library makes instead of the launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blas: Option<BlasGemm>,
    /// The run-time index checks of the kernel, by site: an index outside its dim records
    /// (site + 1, index) in its module's `smelt_fault_record`, which the executor reads with
    /// the outputs and reports as an error naming the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<IndexCheck>,
}

/// A correctness check carried with a bundle, for machines that have a GPU but no reference
/// interpreter run of their own: inputs are drawn again from `seed` (the facade's
/// `random_tensor`, input k with seed `seed·1000 + k`), and each output must match `expected`
/// within `atol + rtol·|expected|`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Seed of the inputs.
    pub seed: u64,
    /// The reference interpreter's outputs: (name, blob of little-endian elements).
    pub expected: Vec<(String, Blob)>,
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
}

/// What a bundle holds, besides the blobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Architectures it has cubins for (`sm_90`).
    pub archs: Vec<String>,
    /// The plan (as `plan.json` has it).
    pub plan: serde_json::Value,
    /// Device arena bytes.
    pub arena_bytes: usize,
    /// Every buffer.
    pub buffers: Vec<BufferSpec>,
    /// Graph inputs: (name, buffer).
    pub inputs: Vec<(String, u32)>,
    /// Graph outputs: (name, buffer).
    pub outputs: Vec<(String, u32)>,
    /// Launches in order.
    pub launches: Vec<LaunchSpec>,
    /// A correctness check, if the bundle was built with one.
    #[serde(default)]
    pub check: Option<Check>,
}

/// A bundle in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    /// The manifest.
    pub manifest: Manifest,
    data: Vec<u8>,
}

type R<T> = Result<T, crate::Error>;

/// CUDA's limit on blocks in a grid's x dimension.
pub const MAX_BLOCKS: usize = i32::MAX as usize;

fn err(what: impl Into<String>) -> crate::Error {
    crate::Error::Bundle(what.into())
}

impl Bundle {
    /// Compiles every kernel of a program lowered for the GPU for each of `archs` (through the
    /// cubin cache in `cache_dir`), and packs it with its plan, layout and weights.
    pub fn build(compiled: &Compiled, archs: &[String], cache_dir: &Path) -> R<Bundle> {
        Self::build_for(compiled, archs, cache_dir, &cuda::Cuda::default())
    }

    /// [`Bundle::build`] with the kernels rendered for `target` (fast math or not).
    pub fn build_for(
        compiled: &Compiled,
        archs: &[String],
        cache_dir: &Path,
        target: &cuda::Cuda,
    ) -> R<Bundle> {
        if archs.is_empty() {
            return Err(err("no architecture given (e.g. --arch sm_80,sm_90)"));
        }
        let (program, plan) = (&compiled.program, &compiled.plan);
        if program.target != Target::Gpu {
            return Err(err("the program was lowered for the CPU, not the GPU"));
        }
        let module = cuda::render_module(target, program).map_err(smelt_compiler::Error::from)?;
        let layout = &program.layout;
        let mut data = Vec::new();
        let mut push = |bytes: &[u8]| {
            let b = Blob {
                offset: data.len() as u64,
                len: bytes.len() as u64,
            };
            data.extend_from_slice(bytes);
            b
        };
        let mut buffers = Vec::new();
        for (i, b) in program.buffers.iter().enumerate() {
            let bytes = b.len * b.dtype.size();
            let constant = match program.constants.iter().find(|(c, _)| *c as usize == i) {
                Some((_, t)) => {
                    let mut raw = vec![0u8; bytes];
                    if !t.write_le_bytes(&mut raw) {
                        return Err(err(format!("weight {} does not fit its buffer", b.name)));
                    }
                    Some(push(&raw))
                }
                None => None,
            };
            buffers.push(BufferSpec {
                name: b.name.clone(),
                dtype: b.dtype,
                shape: b.shape.clone(),
                offset: layout.offsets[i],
                bytes,
                constant,
            });
        }
        // Every distinct function for every architecture, on every core; each function's
        // cubins and source stored once, shared by the launches of all its kernels.
        let jobs: Vec<(&cuda::Function, &String)> = module
            .functions
            .iter()
            .flat_map(|f| archs.iter().map(move |arch| (f, arch)))
            .collect();
        let mut built = smelt_compiler::parallel::map(&jobs, |&(f, arch)| {
            super::nvrtc::compile_cached(&format!("{}.cu", f.name), &f.source, arch, cache_dir)
        })
        .into_iter();
        let mut blobs = Vec::with_capacity(module.functions.len());
        for f in &module.functions {
            let mut cubins = Vec::new();
            for arch in archs {
                let (c, _) = built
                    .next()
                    .expect("one result per job")
                    .map_err(|e| err(e.to_string()))?;
                cubins.push((arch.clone(), push(&c.cubin)));
            }
            blobs.push((cubins, push(f.source.as_bytes())));
        }
        let mut launches = Vec::new();
        for ((k, &fi), params) in program.kernels.iter().zip(&module.of).zip(&module.params) {
            let (cubins, source) = &blobs[fi];
            launches.push(LaunchSpec {
                kernel: module.functions[fi].name.clone(),
                name: k.name.clone(),
                grid: k.launch.grid,
                block: k.launch.block,
                params: params.clone(),
                cubins: cubins.clone(),
                source: Some(source.clone()),
                blas: k.blas.as_deref().cloned(),
                checks: k.checks.clone(),
            });
        }
        let plan = serde_json::from_str(&plan.to_json()).map_err(|e| err(e.to_string()))?;
        Ok(Bundle {
            manifest: Manifest {
                version: VERSION,
                archs: archs.to_vec(),
                plan,
                arena_bytes: layout.size,
                buffers,
                inputs: program.inputs.clone(),
                outputs: program.outputs.clone(),
                launches,
                check: None,
            },
            data,
        })
    }

    /// Adds a correctness check: the outputs the reference gives on inputs drawn from `seed`.
    pub fn with_check(
        mut self,
        seed: u64,
        expected: &[(String, smelt_compiler::ir::Tensor)],
        rtol: f64,
        atol: f64,
    ) -> Bundle {
        let mut blobs = Vec::new();
        for (name, t) in expected {
            let mut raw = vec![0u8; t.numel() * t.dtype().size()];
            t.write_le_bytes(&mut raw);
            let b = Blob {
                offset: self.data.len() as u64,
                len: raw.len() as u64,
            };
            self.data.extend_from_slice(&raw);
            blobs.push((name.clone(), b));
        }
        self.manifest.check = Some(Check {
            seed,
            expected: blobs,
            rtol,
            atol,
        });
        self
    }

    /// The bytes of a blob.
    pub fn blob(&self, b: &Blob) -> &[u8] {
        &self.data[b.offset as usize..(b.offset + b.len) as usize]
    }

    /// The cubin of `kernel` for `arch`, if the bundle has it.
    pub fn cubin(&self, kernel: &str, arch: &str) -> Option<&[u8]> {
        let l = self.manifest.launches.iter().find(|l| l.kernel == kernel)?;
        let (_, b) = l.cubins.iter().find(|(a, _)| a == arch)?;
        Some(self.blob(b))
    }

    /// The CUDA source of a launch's kernel, if the bundle carries it.
    pub fn source(&self, l: &LaunchSpec) -> Option<&str> {
        std::str::from_utf8(self.blob(l.source.as_ref()?)).ok()
    }

    /// This bundle with its cubins for `arch` only, compiled again from the carried sources
    /// by NVRTC through the cubin cache in `cache_dir` (what a first request costs without a
    /// bundle: cold with an empty cache, warm with a filled one). Returns the bundle and how
    /// many functions NVRTC compiled (the rest came from the cache).
    pub fn recompiled(&self, arch: &str, cache_dir: &Path) -> R<(Bundle, usize)> {
        let mut out = self.clone();
        let mut compiled = 0;
        // One compile per function, its cubin shared by every launch of it.
        let mut done: std::collections::HashMap<String, Blob> = Default::default();
        for l in &mut out.manifest.launches {
            if let Some(b) = done.get(&l.kernel) {
                l.cubins = vec![(arch.to_string(), b.clone())];
                continue;
            }
            let src = self
                .source(l)
                .ok_or_else(|| err(format!("no source for {} (an older bundle)", l.kernel)))?;
            let (c, outcome) =
                super::nvrtc::compile_cached(&format!("{}.cu", l.kernel), src, arch, cache_dir)
                    .map_err(|e| err(e.to_string()))?;
            if matches!(outcome, cache::Outcome::Built | cache::Outcome::Rebuilt) {
                compiled += 1;
            }
            let b = Blob {
                offset: out.data.len() as u64,
                len: c.cubin.len() as u64,
            };
            out.data.extend_from_slice(&c.cubin);
            done.insert(l.kernel.clone(), b.clone());
            l.cubins = vec![(arch.to_string(), b)];
        }
        out.manifest.archs = vec![arch.to_string()];
        Ok((out, compiled))
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let manifest = serde_json::to_vec(&self.manifest).expect("manifests serialize");
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(manifest.len() as u64).to_le_bytes());
        out.extend_from_slice(&manifest);
        out.extend_from_slice(&self.data);
        cache::seal(&mut out);
        out
    }

    /// Reads a bundle from bytes, checking magic, version, checksum and blob ranges.
    pub fn from_bytes(bytes: &[u8]) -> R<Bundle> {
        if bytes.len() < 20 || &bytes[..8] != MAGIC {
            return Err(err("not a smelt bundle (bad magic)"));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if !READS.contains(&version) {
            return Err(err(format!(
                "bundle format version {version}, but this smelt reads versions {}-{}: rebuild it with `smelt compile MODEL --bundle FILE`",
                READS.start(),
                READS.end()
            )));
        }
        if !cache::verify(bytes) {
            return Err(err("corrupted or truncated (checksum mismatch)"));
        }
        let body = &bytes[..bytes.len() - 16];
        let len = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes")) as usize;
        let end = 20usize
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| err("manifest length past the end"))?;
        let manifest: Manifest =
            serde_json::from_slice(&body[20..end]).map_err(|e| err(format!("manifest: {e}")))?;
        if manifest.version != version {
            return Err(err("manifest version differs from the header's"));
        }
        let data = body[end..].to_vec();
        let fits = |b: &Blob| {
            b.offset
                .checked_add(b.len)
                .is_some_and(|e| e <= data.len() as u64)
        };
        let blobs_fit = manifest
            .buffers
            .iter()
            .filter_map(|b| b.constant.as_ref())
            .chain(
                manifest
                    .launches
                    .iter()
                    .flat_map(|l| l.cubins.iter().map(|(_, b)| b).chain(&l.source)),
            )
            .chain(
                manifest
                    .check
                    .iter()
                    .flat_map(|c| c.expected.iter().map(|(_, b)| b)),
            )
            .all(fits);
        if !blobs_fit {
            return Err(err("a blob lies outside the bundle"));
        }
        let n = manifest.buffers.len();
        let buffers_fit = manifest.buffers.iter().all(|b| {
            b.offset
                .checked_add(b.bytes)
                .is_some_and(|e| e <= manifest.arena_bytes)
                && b.constant.as_ref().is_none_or(|c| c.len == b.bytes as u64)
        });
        let indices_fit = manifest
            .launches
            .iter()
            .flat_map(|l| &l.params)
            .chain(manifest.inputs.iter().map(|(_, b)| b))
            .chain(manifest.outputs.iter().map(|(_, b)| b))
            .all(|&b| (b as usize) < n);
        if !buffers_fit || !indices_fit {
            return Err(err("a buffer lies outside the arena or is not declared"));
        }
        for l in &manifest.launches {
            if let Some(g) = &l.blas {
                blas_fits(g, &manifest.buffers)
                    .map_err(|why| err(format!("launch {}: cuBLASLt call {why}", l.kernel)))?;
            }
        }
        if let Some(l) = manifest
            .launches
            .iter()
            .find(|l| !(1..=MAX_BLOCKS).contains(&l.grid) || !(1..=1024).contains(&l.block))
        {
            return Err(err(format!(
                "launch {} of {} blocks of {} threads is outside CUDA's limits",
                l.kernel, l.grid, l.block
            )));
        }
        Ok(Bundle { manifest, data })
    }

    /// Writes the bundle to `path` atomically (a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> R<()> {
        let tmp = cache::temp_path(path);
        std::fs::write(&tmp, self.to_bytes())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                err(format!("{}: {e}", path.display()))
            })
    }

    /// Reads the bundle at `path`.
    pub fn read(path: &Path) -> R<Bundle> {
        let bytes = std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        Bundle::from_bytes(&bytes).map_err(|e| match e {
            crate::Error::Bundle(m) => err(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}

/// Checks that a cuBLASLt call stays inside its buffers and that their types are the call's,
/// so a damaged or hostile bundle cannot make the library read or write outside them.
pub fn blas_fits(g: &BlasGemm, buffers: &[BufferSpec]) -> Result<(), String> {
    let int = |v: usize| i32::try_from(v).is_ok();
    if ![g.m, g.n, g.k, g.batch]
        .into_iter()
        .all(|v| v > 0 && int(v))
    {
        return Err(format!(
            "has extents {}x{}x{} x{} outside 1..2^31",
            g.m, g.n, g.k, g.batch
        ));
    }
    let buffer = |b: u32| -> Result<(usize, &BufferSpec), String> {
        let spec = buffers
            .get(b as usize)
            .ok_or_else(|| format!("names buffer {b}, which is not declared"))?;
        if spec.dtype != g.dtype {
            return Err(format!(
                "reads {} ({}) as {}",
                spec.name, spec.dtype, g.dtype
            ));
        }
        Ok((spec.bytes / g.dtype.size().max(1), spec))
    };
    // Elements a (batched) column-major matrix of `rows × cols` reaches.
    let reach = |x: &BlasMatrix, rows: usize, cols: usize| -> Option<usize> {
        if !int(x.ld) || x.ld < rows {
            return None;
        }
        (g.batch - 1)
            .checked_mul(x.batch_stride)?
            .checked_add((cols - 1).checked_mul(x.ld)?)?
            .checked_add(rows)?
            .checked_add(x.offset)
    };
    let stored = |x: &BlasMatrix, r: usize, c: usize| if x.trans { (c, r) } else { (r, c) };
    let (ar, ac) = stored(&g.a, g.m, g.k);
    let (br, bc) = stored(&g.b, g.k, g.n);
    let mut parts = vec![("a", g.a, ar, ac), ("b", g.b, br, bc), ("d", g.d, g.m, g.n)];
    if let Some(r) = g.residual {
        parts.push(("residual", BlasMatrix { buf: r, ..g.d }, g.m, g.n));
    }
    for (what, x, rows, cols) in parts {
        let (len, spec) = buffer(x.buf)?;
        match reach(&x, rows, cols) {
            Some(n) if n <= len => {}
            _ => {
                return Err(format!(
                    "reaches past {what} ({}: {len} elements)",
                    spec.name
                ))
            }
        }
    }
    if g.d.offset != 0 {
        // The residual is passed at its buffer's start, laid out as d.
        return Err("writes a result that does not start at its buffer's start".into());
    }
    let span = (g.n - 1) * g.d.ld + g.m;
    if g.d.trans || (g.batch > 1 && g.d.batch_stride < span) {
        return Err("writes a transposed or overlapping result".into());
    }
    if let Some(b) = g.bias {
        let (len, spec) = buffer(b)?;
        if len < g.m {
            return Err(format!(
                "reads {} elements of bias {} ({len})",
                g.m, spec.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(name: &str, elems: usize) -> BufferSpec {
        BufferSpec {
            name: name.into(),
            dtype: DType::F32,
            shape: vec![elems],
            offset: 0,
            bytes: elems * 4,
            constant: None,
        }
    }

    /// A batch of 3 products `d (4×5) = a (4×6) · b (6×5)`, all column-major and packed.
    fn call() -> (BlasGemm, Vec<BufferSpec>) {
        let m = |buf, ld, batch_stride| BlasMatrix {
            buf,
            trans: false,
            ld,
            batch_stride,
            offset: 0,
        };
        let g = BlasGemm {
            dtype: DType::F32,
            m: 4,
            n: 5,
            k: 6,
            batch: 3,
            a: m(0, 4, 24),
            b: m(1, 6, 30),
            d: m(2, 4, 20),
            alpha: 1.0,
            bias: Some(3),
            residual: Some(4),
            activation: None,
        };
        let bufs = vec![
            buffer("a", 72),
            buffer("b", 90),
            buffer("d", 60),
            buffer("bias", 4),
            buffer("res", 60),
        ];
        (g, bufs)
    }

    /// A one-launch bundle with a weight, a cubin and a source, built by hand (no NVRTC).
    fn small_bundle() -> Bundle {
        let mut data = Vec::new();
        let mut push = |bytes: &[u8]| {
            let b = Blob {
                offset: data.len() as u64,
                len: bytes.len() as u64,
            };
            data.extend_from_slice(bytes);
            b
        };
        let weight = push(&[1, 0, 128, 63, 0, 0, 0, 64]);
        let cubin = push(b"\x7fELF pretend cubin");
        let source = push(b"extern \"C\" __global__ void k(float* w, float* y) {}");
        let mut w = buffer("w", 2);
        w.constant = Some(weight);
        let mut y = buffer("y", 2);
        y.offset = 64;
        Bundle {
            manifest: Manifest {
                version: VERSION,
                archs: vec!["sm_90".into()],
                plan: serde_json::json!({"kernels": []}),
                arena_bytes: 128,
                buffers: vec![w, y],
                inputs: vec![],
                outputs: vec![("y".into(), 1)],
                launches: vec![LaunchSpec {
                    kernel: "k".into(),
                    name: "k0".into(),
                    grid: 1,
                    block: 32,
                    params: vec![0, 1],
                    cubins: vec![("sm_90".into(), cubin)],
                    source: Some(source),
                    blas: None,
                    checks: vec![],
                }],
                check: None,
            },
            data,
        }
    }

    /// A bundle is bound to its content by the digest in its trailer: any damaged byte,
    /// in the header, the manifest, a blob or the trailer, and any truncation, is an error
    /// that says so; nothing damaged loads.
    #[test]
    fn a_damaged_bundle_never_loads() {
        let b = small_bundle();
        let bytes = b.to_bytes();
        assert_eq!(Bundle::from_bytes(&bytes).unwrap(), b);
        for i in 0..bytes.len() {
            let mut x = bytes.clone();
            x[i] ^= 0x04;
            let e = Bundle::from_bytes(&x).expect_err(&format!("byte {i} flipped"));
            let msg = e.to_string();
            let version_bytes = 8..12;
            let expected = match version_bytes.contains(&i) {
                true => "version",
                false if i < 8 => "not a smelt bundle",
                false => "checksum",
            };
            assert!(msg.contains(expected), "byte {i}: {msg}");
        }
        for len in 0..bytes.len() {
            assert!(Bundle::from_bytes(&bytes[..len]).is_err(), "{len} bytes");
        }
        // A blob swapped for another of the same length is damage too.
        let mut x = bytes.clone();
        let at = x.windows(4).position(|w| w == b"\x7fELF").unwrap();
        x[at + 1..at + 4].copy_from_slice(b"FLE");
        assert!(Bundle::from_bytes(&x)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
    }

    #[test]
    fn calls_inside_their_buffers_pass() {
        let (g, bufs) = call();
        assert_eq!(blas_fits(&g, &bufs), Ok(()));
        // A transposed, shared left operand: stored 6×4, read by every product.
        let mut t = g.clone();
        t.a = BlasMatrix {
            trans: true,
            ld: 6,
            batch_stride: 0,
            ..t.a
        };
        assert_eq!(blas_fits(&t, &bufs), Ok(()));
    }

    #[test]
    fn calls_reaching_outside_or_overlapping_are_refused() {
        let (g, bufs) = call();
        let refused = |g: &BlasGemm, what: &str| {
            let e = blas_fits(g, &bufs).unwrap_err();
            assert!(e.contains(what), "{e:?} should mention {what:?}");
        };
        let mut x = g.clone();
        x.b.batch_stride = 31;
        refused(&x, "reaches past b");
        let mut x = g.clone();
        x.a.ld = 3;
        refused(&x, "reaches past a");
        // An operand starting inside its buffer: b reaches its buffer's last element, so
        // one element in is one too far; with a longer buffer it fits.
        let mut x = g.clone();
        x.b.offset = 1;
        refused(&x, "reaches past b");
        let mut longer = bufs.clone();
        longer[1] = buffer("b", 91);
        assert_eq!(blas_fits(&x, &longer), Ok(()));
        let mut x = g.clone();
        x.a.offset = usize::MAX;
        refused(&x, "reaches past a");
        let mut x = g.clone();
        x.bias = Some(0);
        x.m = 5;
        x.d.ld = 5;
        refused(&x, "reaches past");
        let mut x = g.clone();
        x.residual = Some(3);
        refused(&x, "reaches past residual");
        let mut x = g.clone();
        x.k = 0;
        refused(&x, "outside 1..2^31");
        let mut x = g.clone();
        x.batch = usize::MAX;
        refused(&x, "outside 1..2^31");
        // Padded result rows: each product spans 4·4 + 4 = 20 elements past its start, so
        // a stride of 19 would write the next product's first element too.
        let mut x = g.clone();
        x.d.batch_stride = 19;
        refused(&x, "overlapping");
        let mut x = g.clone();
        x.d.trans = true;
        refused(&x, "transposed");
        let mut x = g;
        x.bias = Some(7);
        refused(&x, "not declared");
    }
}
