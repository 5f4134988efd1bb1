//! The machine's peaks, as the C backend's generated code can reach them: copy bandwidth and
//! f32 FMA throughput on a number of threads, measured once per machine (the probe,
//! `kernels/c/peak.c`, is built with the backend's own compiler and flags) and cached beside
//! the compiled code. A profile divides each kernel's achieved rate by the one that bounds
//! it (the roofline: bytes ÷ bandwidth or flops ÷ FMA peak, whichever takes longer).

use super::cc;
use crate::cache;
use crate::Error;
use std::path::Path;

/// Peaks of this machine on `threads` threads.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Peak {
    /// Copy bandwidth, bytes read + bytes written per second, in GB/s.
    pub copy_gbps: f64,
    /// f32 fused multiply-add throughput (an FMA is two flops), in GFLOP/s.
    pub fma_gflops: f64,
    /// Threads it was measured on.
    pub threads: usize,
    /// The CPU (`/proc/cpuinfo`'s model name and flags).
    pub cpu: String,
}

impl Peak {
    /// The balance point: flops per byte above which a kernel is bound by arithmetic.
    pub fn balance(&self) -> f64 {
        self.fma_gflops / self.copy_gbps
    }

    /// What bounds a kernel that moves `bytes` and does `flops`, and the fastest it could
    /// run at this machine's peaks, in milliseconds.
    pub fn bound(&self, bytes: u64, flops: u64) -> (Bound, f64) {
        let memory = bytes as f64 / (self.copy_gbps * 1e6);
        let compute = flops as f64 / (self.fma_gflops * 1e6);
        if compute > memory {
            (Bound::Compute, compute)
        } else {
            (Bound::Memory, memory)
        }
    }
}

/// Which peak bounds a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// Bytes moved ÷ copy bandwidth.
    Memory,
    /// Flops ÷ FMA throughput.
    Compute,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bound::Memory => "memory",
            Bound::Compute => "compute",
        })
    }
}

/// Floats per array of the copy probe (64 MB each: far beyond any cache here).
const COPY_FLOATS: i64 = 16 << 20;
/// FMA rounds per thread (256 FMAs each).
const FMA_ITERS: i64 = 2 << 20;
const REPS: i32 = 5;

type CopyFn = unsafe extern "C" fn(i32, i64, i32) -> f64;
type FmaFn = unsafe extern "C" fn(i32, i64, i32) -> f64;

/// This machine's peaks on `threads` threads: read from `cache_dir` when measured before
/// (with the same CPU, compiler, flags and probe), else measured now (about a second) and
/// stored.
pub fn measure(threads: usize, cache_dir: &Path) -> Result<Peak, Error> {
    let threads = threads.max(1);
    let mut compiler = cc::find().map_err(|why| Error::NoCompiler { why })?;
    // The probe's `a * m + c` must be one FMA (the backend itself keeps -ffp-contract=off).
    compiler.flags.push("-ffp-contract=fast".into());
    let cpu = cc::host_cpu();
    let key = cache::key(&[
        cpu.as_bytes(),
        compiler.command.as_bytes(),
        compiler.version.as_bytes(),
        compiler.flags.join(" ").as_bytes(),
        smelt_kernels::C_PEAK.as_bytes(),
        &(threads as u64).to_le_bytes(),
    ]);
    let dir = cache_dir.join("peak");
    let entry = dir.join(format!("{key}.json"));
    if let Ok(bytes) = cache::read_regular(&entry) {
        if let Ok(p) = serde_json::from_slice::<Peak>(&bytes) {
            if p.threads == threads && p.copy_gbps > 0.0 && p.fma_gflops > 0.0 {
                return Ok(p);
            }
        }
    }
    let io = |p: &Path, e: std::io::Error| Error::Cache {
        path: p.display().to_string(),
        why: e.to_string(),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let work = dir.join(format!("{key}.{}.build", std::process::id()));
    let so = work.join("peak.so");
    let built = compiler.build(&[smelt_kernels::C_PEAK.to_string()], &[], &work, &so, 1);
    let measured = built.and_then(|()| run_probe(&so, threads));
    let _ = std::fs::remove_dir_all(&work);
    let (copy_gbps, fma_gflops) = measured?;
    let peak = Peak {
        copy_gbps,
        fma_gflops,
        threads,
        cpu,
    };
    let text = serde_json::to_vec_pretty(&peak).map_err(|e| Error::Codegen(e.to_string()))?;
    let tmp = cache::temp_path(&entry);
    std::fs::write(&tmp, &text).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &entry).map_err(|e| io(&entry, e))?;
    Ok(peak)
}

/// Loads the probe and runs both measurements.
fn run_probe(so: &Path, threads: usize) -> Result<(f64, f64), Error> {
    let load = |why: String| Error::Load {
        path: so.display().to_string(),
        why,
    };
    // SAFETY: the probe is the C above, built just now; its initializers only set up OpenMP.
    let lib = unsafe { libloading::Library::new(so) }.map_err(|e| load(e.to_string()))?;
    // SAFETY: the symbols have these signatures (kernels/c/peak.c).
    let (copy, fma) = unsafe {
        (
            *lib.get::<CopyFn>(b"smelt_peak_copy\0")
                .map_err(|e| load(e.to_string()))?,
            *lib.get::<FmaFn>(b"smelt_peak_fma\0")
                .map_err(|e| load(e.to_string()))?,
        )
    };
    let t = threads as i32;
    // SAFETY: plain computations over memory the probe allocates itself.
    let (gbps, gflops) = unsafe { (copy(t, COPY_FLOATS, REPS), fma(t, FMA_ITERS, REPS)) };
    // The library stays loaded: unloading it could unload OpenMP under its idle workers.
    std::mem::forget(lib);
    if !(gbps > 0.0 && gflops > 0.0) {
        return Err(Error::Codegen(format!(
            "the peak probe measured {gbps} GB/s and {gflops} GFLOP/s"
        )));
    }
    Ok((gbps, gflops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_the_roofline() {
        let p = Peak {
            copy_gbps: 10.0,
            fma_gflops: 100.0,
            threads: 1,
            cpu: String::new(),
        };
        assert_eq!(p.balance(), 10.0);
        // 1 MB and 1 MFLOP: 0.1 ms of memory, 0.01 ms of arithmetic.
        let (b, ms) = p.bound(1_000_000, 1_000_000);
        assert_eq!(b, Bound::Memory);
        assert!((ms - 0.1).abs() < 1e-12);
        let (b, ms) = p.bound(1_000, 100_000_000);
        assert_eq!(b, Bound::Compute);
        assert!((ms - 1.0).abs() < 1e-12);
    }
}
