//! NVRTC compiles smelt's device library to cubin for sm_80 and sm_90 with no spills. These
//! tests fail (never skip) when NVRTC is missing: `scripts/setup` installs it.

use smelt_runtime::cuda::nvrtc::{compile, parse_resources, version, NvrtcError};

/// A translation unit that includes every header and uses each of its pieces.
const USES_EVERY_HEADER: &str = r#"
#include "smelt/types.cuh"
#include "smelt/math.cuh"
#include "smelt/reduce.cuh"
#include "smelt/vector.cuh"

// One block per row: online softmax (one read for the statistics) in f16 storage.
extern "C" __global__ void softmax_rows_f16(const __half* x, __half* y, int n) {
    __shared__ float scratch[64];
    const __half* row = x + (size_t)blockIdx.x * n;
    float m = -smelt::inf(), s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) smelt::merge_max_sum(m, s, smelt::to_f32(row[i]), 1.0f);
    smelt::block_reduce_max_sum(m, s, scratch);
    const float total = smelt::block_reduce(s, smelt::Sum(), 0.0f, scratch);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        y[(size_t)blockIdx.x * n + i] = smelt::from_f32<__half>(expf(smelt::to_f32(row[i]) - m) / total);
}

// One warp per row: Welford layernorm in bf16 storage, and a double max over 8-lane groups.
extern "C" __global__ void layernorm_rows_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, double* z, int rows, int n, float eps) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= rows) return;
    float count = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (int i = lane; i < n; i += 32) smelt::merge_welford(count, mean, m2, 1.0f, smelt::to_f32(x[(size_t)row * n + i]), 0.0f);
    smelt::warp_reduce_welford(count, mean, m2);
    const float inv = rsqrtf(m2 / count + eps);
    for (int i = lane; i < n; i += 32)
        y[(size_t)row * n + i] = smelt::from_f32<__nv_bfloat16>((smelt::to_f32(x[(size_t)row * n + i]) - mean) * inv);
    z[row] = smelt::warp_reduce<8>((double)mean, smelt::Max());
}

// Grid-stride elementwise with 128-bit accesses.
extern "C" __global__ void gelu_f32x4(const float* x, float* y, int n4) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += gridDim.x * blockDim.x) {
        smelt::vec<float, 4> v = *reinterpret_cast<const smelt::vec<float, 4>*>(x + 4 * i);
        v.v[0] = smelt::gelu(v.v[0]);
        v.v[1] = smelt::gelu_tanh(v.v[1]);
        v.v[2] = smelt::hard_swish(smelt::max_nan(v.v[2], smelt::sigmoid(v.v[2])));
        v.v[3] = smelt::elu(smelt::softplus(v.v[3]), 1.0f);
        *reinterpret_cast<smelt::vec<float, 4>*>(y + 4 * i) = v;
    }
}

// The same functions in double.
extern "C" __global__ void gelu_f64x2(const double* x, double* y) {
    smelt::vec<double, 2> v = *reinterpret_cast<const smelt::vec<double, 2>*>(x + 2 * threadIdx.x);
    v.v[0] = smelt::celu(smelt::gelu(v.v[0]), 1.0);
    v.v[1] = smelt::mod_floor(smelt::selu(v.v[1], 1.5, 2.0), 3.0) + smelt::mod_floor(7ll, -2ll);
    *reinterpret_cast<smelt::vec<double, 2>*>(y + 2 * threadIdx.x) = v;
}
"#;

#[test]
fn nvrtc_is_installed() {
    let (major, minor) = version().expect("NVRTC must be present (scripts/setup installs it)");
    assert!(
        major >= 13 || (major == 12 && minor >= 0),
        "NVRTC {major}.{minor}"
    );
}

#[test]
fn device_library_compiles_for_sm80_and_sm90_without_spills() {
    for arch in ["sm_80", "sm_90"] {
        let out = compile("uses_every_header.cu", USES_EVERY_HEADER, arch)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.cubin.len() > 1000,
            "{arch}: cubin of {} bytes",
            out.cubin.len()
        );
        let names: Vec<&str> = out.resources.iter().map(|(n, _)| n.as_str()).collect();
        for k in ["softmax_rows_f16", "layernorm_rows_bf16", "gelu_f32x4"] {
            assert!(
                names.contains(&k),
                "{arch}: no ptxas report for {k}: {}",
                out.log
            );
        }
        for (name, r) in &out.resources {
            assert!(r.registers > 0, "{arch} {name}: {r:?}");
            assert_eq!(
                (r.spill_stores, r.spill_loads),
                (0, 0),
                "{arch} {name} spills: {r:?}"
            );
        }
    }
}

#[test]
fn compile_errors_name_the_kernel_and_the_line() {
    let src = "extern \"C\" __global__ void broken(float* y) {\n    y[0] = undefined_name;\n}\n";
    match compile("broken.cu", src, "sm_90") {
        Err(NvrtcError::Compile {
            kernel,
            first_error,
            log,
            ..
        }) => {
            assert_eq!(kernel, "broken.cu");
            assert!(first_error.contains("undefined_name"), "{first_error}");
            assert!(first_error.contains("line 2"), "{first_error}");
            assert!(log.contains("error"), "{log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn ptxas_report_parses() {
    let log = "ptxas info    : 0 bytes gmem\nptxas info    : Compiling entry function 'k' for 'sm_90'\nptxas info    : Function properties for k\n    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\nptxas info    : Used 26 registers, used 0 barriers\n";
    let r = parse_resources(log);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, "k");
    assert_eq!(
        (
            r[0].1.registers,
            r[0].1.stack_bytes,
            r[0].1.spill_stores,
            r[0].1.spill_loads
        ),
        (26, 8, 4, 4)
    );
}

/// Cubins are cached on disk: a second compile is a disk hit with the same bytes and
/// resources; a corrupted entry is recompiled; threads compiling the same kernel at once
/// leave one valid entry.
#[test]
fn cubins_are_cached_verified_and_safe_to_share() {
    use smelt_runtime::cache::{verify, Outcome};
    use smelt_runtime::cuda::nvrtc::compile_cached;
    let dir = std::env::temp_dir().join(format!("smelt-cubin-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = "extern \"C\" __global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }\n";
    let (a, first) = compile_cached("twice.cu", src, "sm_90", &dir).unwrap();
    assert_eq!(first, Outcome::Built);
    let (b, second) = compile_cached("twice.cu", src, "sm_90", &dir).unwrap();
    assert_eq!(second, Outcome::Disk);
    assert_eq!(a.cubin, b.cubin);
    assert_eq!(a.resources, b.resources);
    // Another architecture is another entry.
    let (_, other) = compile_cached("twice.cu", src, "sm_80", &dir).unwrap();
    assert_eq!(other, Outcome::Built);
    // Corrupt every entry (a new file renamed over each, as a damaged disk would look).
    let entries: Vec<_> = std::fs::read_dir(dir.join("cubin"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 2);
    for p in &entries {
        let mut bytes = std::fs::read(p).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(p.with_extension("bad"), &bytes).unwrap();
        std::fs::rename(p.with_extension("bad"), p).unwrap();
    }
    let (c, again) = compile_cached("twice.cu", src, "sm_90", &dir).unwrap();
    assert_eq!(again, Outcome::Rebuilt);
    assert_eq!(c.cubin, a.cubin);
    let (_, again) = compile_cached("twice.cu", src, "sm_80", &dir).unwrap();
    assert_eq!(again, Outcome::Rebuilt);
    // Concurrent writers of a new kernel.
    let src2 = "extern \"C\" __global__ void thrice(float* x) { x[threadIdx.x] *= 3.0f; }\n";
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || compile_cached("thrice.cu", src2, "sm_90", &dir).unwrap())
        })
        .collect();
    let outs: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().unwrap().0.cubin)
        .collect();
    assert!(outs.windows(2).all(|w| w[0] == w[1]));
    for e in std::fs::read_dir(dir.join("cubin")).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            p.extension().unwrap(),
            "cubin",
            "left behind: {}",
            p.display()
        );
        assert!(verify(&std::fs::read(&p).unwrap()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Distinct programs compile concurrently on the bounded pool, results in the jobs' order,
/// each equal to a compile on its own; PTX is cached beside the cubins and a hit returns the
/// same text.
#[test]
fn programs_compile_in_parallel_and_ptx_is_cached() {
    use smelt_runtime::cuda::nvrtc::{compile, compile_ptx_cached};
    let dir = std::env::temp_dir().join(format!("smelt-ptx-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sources: Vec<String> = (1..=12)
        .map(|k| {
            format!(
                "extern \"C\" __global__ void times{k}(float* x) {{ x[threadIdx.x] *= {k}.0f; }}\n"
            )
        })
        .collect();
    let built = smelt_compiler::parallel::map(&sources, |s| compile("p.cu", s, "sm_90"));
    assert_eq!(built.len(), sources.len());
    for (k, (b, s)) in built.iter().zip(&sources).enumerate() {
        let alone = compile("p.cu", s, "sm_90").unwrap();
        let b = b.as_ref().unwrap();
        assert_eq!(b.cubin, alone.cubin, "job {k} out of order or different");
        assert_eq!(b.resources[0].0, format!("times{}", k + 1));
    }
    let first = compile_ptx_cached("p.cu", &sources[0], "sm_90", &dir).unwrap();
    assert!(first.contains(".entry times1"), "{first}");
    let entries = || std::fs::read_dir(dir.join("ptx")).unwrap().count();
    assert_eq!(entries(), 1);
    let again = compile_ptx_cached("p.cu", &sources[0], "sm_90", &dir).unwrap();
    assert_eq!(first, again);
    assert_eq!(entries(), 1, "a hit writes nothing");
    let other = compile_ptx_cached("p.cu", &sources[0], "sm_80", &dir).unwrap();
    assert!(other.contains(".target sm_80"));
    assert_eq!(entries(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cubin or PTX entry of another kernel copied over a kernel's entry (well-formed, with a
/// good checksum) is recompiled, never returned; a FIFO at an entry's path is replaced
/// without being opened for reading.
#[test]
fn swapped_and_odd_cubin_entries_are_never_used() {
    use smelt_runtime::cache::Outcome;
    use smelt_runtime::cuda::nvrtc::{compile_cached, compile_ptx_cached};
    let dir = std::env::temp_dir().join(format!("smelt-cubin-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let twice = "extern \"C\" __global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }\n";
    let thrice = "extern \"C\" __global__ void thrice(float* x) { x[threadIdx.x] *= 3.0f; }\n";
    let listing = |sub: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let (a, _) = compile_cached("twice.cu", twice, "sm_90", &dir).unwrap();
    let a_ptx = compile_ptx_cached("twice.cu", twice, "sm_90", &dir).unwrap();
    let (twice_cubin, twice_ptx) = (listing("cubin")[0].clone(), listing("ptx")[0].clone());
    let (b, _) = compile_cached("thrice.cu", thrice, "sm_90", &dir).unwrap();
    let b_ptx = compile_ptx_cached("thrice.cu", thrice, "sm_90", &dir).unwrap();
    assert_ne!(a.cubin, b.cubin);
    let other = |list: Vec<std::path::PathBuf>, not: &std::path::Path| {
        list.into_iter().find(|p| p != not).unwrap()
    };
    let thrice_cubin = other(listing("cubin"), &twice_cubin);
    let thrice_ptx = other(listing("ptx"), &twice_ptx);
    std::fs::copy(&thrice_cubin, &twice_cubin).unwrap();
    std::fs::copy(&thrice_ptx, &twice_ptx).unwrap();
    let (c, outcome) = compile_cached("twice.cu", twice, "sm_90", &dir).unwrap();
    assert_eq!(outcome, Outcome::Rebuilt);
    assert_eq!(c.cubin, a.cubin);
    let ptx = compile_ptx_cached("twice.cu", twice, "sm_90", &dir).unwrap();
    assert_eq!(ptx, a_ptx);
    assert_ne!(ptx, b_ptx);
    // Both entries are twice's again.
    assert_eq!(
        compile_cached("twice.cu", twice, "sm_90", &dir).unwrap().1,
        Outcome::Disk
    );
    // A FIFO where the entry was.
    std::fs::remove_file(&twice_cubin).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&twice_cubin)
        .status()
        .unwrap()
        .success());
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    std::thread::spawn(move || {
        let _ = tx.send(compile_cached("twice.cu", twice, "sm_90", &d).map(|(c, o)| (c.cubin, o)));
    });
    let (cubin, outcome) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("blocked on a FIFO")
        .unwrap();
    assert_eq!((cubin, outcome), (a.cubin, Outcome::Rebuilt));
    assert!(std::fs::symlink_metadata(&twice_cubin).unwrap().is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
