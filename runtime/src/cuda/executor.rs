//! The CUDA executor: a [`Bundle`] (plan, launch list, weights, cubins) loaded onto the first
//! GPU and run with no NVRTC, no allocation and no host synchronization until the outputs are
//! read.
//!
//! Loading binds the cubins for the device's architecture, allocates one device arena (the
//! shared planner's layout), uploads the weights once and allocates page-locked host staging
//! for every input and output (copies from pageable memory would go through a driver
//! bounce buffer and block the host). A run stages the inputs, copies them into the arena
//! and launches every kernel on one stream; the first run captures the launches as a CUDA
//! graph, later runs replay it between two CUDA events, which time the device's work.
//! Reading the outputs is the one synchronization.
//!
//! Run-time indices (token ids, positions) are checked in the kernels that read them: a
//! bad one is recorded in its module's `smelt_fault_record`, copied back with the outputs
//! (no added synchronization) and reported as an error naming the node and the index.
//!
//! Product kernels that carry a cuBLASLt form ([`BlasGemm`](smelt_compiler::kernel::ir::BlasGemm))
//! become that library call where cuBLASLt is installed (planned at load, its workspace at
//! the end of the arena, enqueued and captured like a launch); elsewhere, or when loaded
//! with [`Products::Kernels`], the kernel runs.
//!
//! This is the thin layer `scripts/gpu-check` exercises on a GPU; on machines without one,
//! [`CudaModel::load`] is a clear error (`no CUDA device found: …`).

use super::bundle::{BufferSpec, Bundle, LaunchSpec};
use super::device;
use super::lt::{CublasLt, LtMatmul, Pointers};
use crate::Error;
use cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream,
    DevicePtr, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use smelt_compiler::ir::Tensor;
pub use smelt_compiler::kernel::interp::Products;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

fn cuda(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e}"))
}

/// What a run owns exclusively: the arena, the captured graph, the host staging of each
/// input and output (`None` for an empty one), and the events around the kernels.
struct State {
    arena: CudaSlice<u8>,
    graph: Option<CudaGraph>,
    staged_inputs: Vec<Option<PinnedHostSlice<u8>>>,
    staged_outputs: Vec<Option<PinnedHostSlice<u8>>>,
    /// Each checking module's fault record, copied back with the outputs.
    staged_faults: Vec<PinnedHostSlice<u64>>,
    start: CudaEvent,
    end: CudaEvent,
}

/// The name of a module's fault record (`kernels/cuda/smelt/math.cuh`): the check site + 1
/// (0: no fault) and the index.
const FAULT_RECORD: &str = "smelt_fault_record";

/// A module whose function checks run-time indices, and the first launch of it (whose
/// checks name the nodes: every launch of one function has the same sites).
struct Checking {
    module: Arc<CudaModule>,
    launch: usize,
}

/// Page-locked host memory of `bytes` (none for 0), plain (not write-combined: outputs are
/// read back on the host).
fn staging(ctx: &Arc<CudaContext>, bytes: usize) -> Result<Option<PinnedHostSlice<u8>>, Error> {
    if bytes == 0 {
        return Ok(None);
    }
    // SAFETY: the contents are unset until a run writes them; every run writes an input's
    // staging completely before copying it, and reads an output's only after the copy into
    // it has finished (after the run's synchronization).
    unsafe { ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }
        .map(Some)
        .map_err(cuda("allocating page-locked staging"))
}

/// A bundle loaded onto a GPU.
pub struct CudaModel {
    // Dropped first: the graph and the arena go before the modules they use.
    state: Mutex<State>,
    /// The cuBLASLt call made instead of each launch, where there is one.
    calls: Vec<Option<LtMatmul>>,
    /// Why launches with a cuBLASLt form run their kernel instead (empty when none do).
    cublas_note: String,
    stream: Arc<CudaStream>,
    functions: Vec<CudaFunction>,
    checking: Vec<Checking>,
    launches: Vec<LaunchSpec>,
    buffers: Vec<BufferSpec>,
    inputs: Vec<(String, u32)>,
    outputs: Vec<(String, u32)>,
    device: device::DeviceInfo,
    syncs: AtomicU64,
    /// The last run's kernel time on the device, in milliseconds (f64 bits).
    device_ms: AtomicU64,
    _ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModel")
            .field("device", &self.device)
            .field("launches", &self.launches.len())
            .finish()
    }
}

impl CudaModel {
    /// Loads `bundle` onto the first GPU: its cubins for the device's architecture, one arena,
    /// the weights, and cuBLASLt calls where the plan has them and the library is installed.
    pub fn load(bundle: &Bundle) -> Result<CudaModel, Error> {
        Self::load_with(bundle, Products::Library)
    }

    /// [`CudaModel::load`], choosing whether launches with a cuBLASLt form make the library
    /// call ([`Products::Library`], where cuBLASLt is installed) or run their kernel.
    pub fn load_with(bundle: &Bundle, products: Products) -> Result<CudaModel, Error> {
        let device = device::probe().map_err(Error::NoCudaDevice)?;
        let arch = device.arch();
        let m = &bundle.manifest;
        if !m.archs.contains(&arch) {
            return Err(Error::Bundle(format!(
                "it has cubins for {}, but the GPU ({}) is {arch}: rebuild it with --arch {arch}",
                m.archs.join(", "),
                device.name
            )));
        }
        let ctx = CudaContext::new(0).map_err(cuda("creating a context"))?;
        // One stream and buffers whose order the launch list fixes: cudarc's cross-stream
        // event tracking would only add work (and host-visible events) to every launch.
        // SAFETY: everything this model allocates is used on its one stream only, in stream
        // order, and freed (on drop) after that stream's work: the cross-stream hazards the
        // events guard against cannot arise.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda("creating a stream"))?;
        // One module per distinct function, shared by every launch of it.
        let mut functions = Vec::with_capacity(m.launches.len());
        let mut checking = Vec::new();
        let mut loaded: std::collections::HashMap<&str, CudaFunction> = Default::default();
        for (i, l) in m.launches.iter().enumerate() {
            if let Some(f) = loaded.get(l.kernel.as_str()) {
                functions.push(f.clone());
                continue;
            }
            let cubin = bundle
                .cubin(&l.kernel, &arch)
                .ok_or_else(|| Error::Bundle(format!("no {arch} cubin for {}", l.kernel)))?;
            let module = ctx
                .load_module(Ptx::from_binary(cubin.to_vec()))
                .map_err(cuda(&format!("loading {} ({arch})", l.kernel)))?;
            let f = module
                .load_function(&l.kernel)
                .map_err(cuda(&format!("finding {} in its module", l.kernel)))?;
            loaded.insert(&l.kernel, f.clone());
            functions.push(f);
            if !l.checks.is_empty() {
                module
                    .get_global(FAULT_RECORD, &stream)
                    .map_err(cuda(&format!("finding {}'s fault record", l.kernel)))?;
                checking.push(Checking { module, launch: i });
            }
        }
        // cuBLASLt, if the plan has calls for it and it is wanted and installed.
        let wanted = m.launches.iter().any(|l| l.blas.is_some());
        let (lt, mut cublas_note) = match (wanted, products) {
            (false, _) => (None, String::new()),
            (true, Products::Kernels) => (None, "kernels chosen at load".to_string()),
            (true, Products::Library) => match CublasLt::open() {
                Ok(lt) => (Some(Arc::new(lt)), String::new()),
                Err(why) => (None, why),
            },
        };
        // Its workspace lies past the planned buffers, in the same allocation.
        let ws_bytes = if lt.is_some() {
            super::lt::workspace_bytes(device.major.max(0) as u32)
        } else {
            0
        };
        let too_big = || Error::Bundle(format!("an arena of {} bytes", m.arena_bytes));
        let ws_offset = m
            .arena_bytes
            .checked_next_multiple_of(256)
            .ok_or_else(too_big)?;
        let total = ws_offset.checked_add(ws_bytes).ok_or_else(too_big)?;
        let mut arena = stream
            .alloc_zeros::<u8>(total.max(1))
            .map_err(cuda("allocating the arena"))?;
        for b in &m.buffers {
            if let Some(blob) = &b.constant {
                let mut dst = arena.slice_mut(b.offset..b.offset + b.bytes);
                stream
                    .memcpy_htod(bundle.blob(blob), &mut dst)
                    .map_err(cuda(&format!("uploading weight {}", b.name)))?;
            }
        }
        stream.synchronize().map_err(cuda("finishing the upload"))?;
        let mut calls = Vec::with_capacity(m.launches.len());
        {
            let (base, _guard) = arena.device_ptr(&stream);
            let at = |b: u32| base + m.buffers[b as usize].offset as u64;
            for l in &m.launches {
                let (Some(lt), Some(g)) = (&lt, &l.blas) else {
                    calls.push(None);
                    continue;
                };
                // An operand may start inside its buffer (a slice).
                let elem = g.dtype.size() as u64;
                let start =
                    |x: &smelt_compiler::kernel::ir::BlasMatrix| at(x.buf) + x.offset as u64 * elem;
                let ptrs = Pointers {
                    a: start(&g.a),
                    b: start(&g.b),
                    d: start(&g.d),
                    bias: g.bias.map(at),
                    residual: g.residual.map(at),
                    workspace: (base + ws_offset as u64, ws_bytes),
                };
                match LtMatmul::new(lt, g, ptrs) {
                    Ok(call) => calls.push(Some(call)),
                    Err(why) => {
                        if !cublas_note.is_empty() {
                            cublas_note.push_str("; ");
                        }
                        cublas_note.push_str(&format!("{}: {why}", l.kernel));
                        calls.push(None);
                    }
                }
            }
        }
        let size = |b: &u32| m.buffers[*b as usize].bytes;
        let staged_inputs = m
            .inputs
            .iter()
            .map(|(_, b)| staging(&ctx, size(b)))
            .collect::<Result<_, _>>()?;
        let staged_outputs = m
            .outputs
            .iter()
            .map(|(_, b)| staging(&ctx, size(b)))
            .collect::<Result<_, _>>()?;
        let staged_faults = checking
            .iter()
            .map(|_| {
                // SAFETY: read only after a run's copy into it has finished.
                unsafe { ctx.alloc_pinned_with_flags::<u64>(2, 0) }
                    .map_err(cuda("allocating page-locked staging"))
            })
            .collect::<Result<_, _>>()?;
        let timing = || ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT));
        let (start, end) = (
            timing().map_err(cuda("creating an event"))?,
            timing().map_err(cuda("creating an event"))?,
        );
        Ok(CudaModel {
            calls,
            cublas_note,
            stream,
            functions,
            checking,
            launches: m.launches.clone(),
            buffers: m.buffers.clone(),
            inputs: m.inputs.clone(),
            outputs: m.outputs.clone(),
            state: Mutex::new(State {
                arena,
                graph: None,
                staged_inputs,
                staged_outputs,
                staged_faults,
                start,
                end,
            }),
            device,
            syncs: AtomicU64::new(0),
            device_ms: AtomicU64::new(0f64.to_bits()),
            _ctx: ctx,
        })
    }

    /// Launches made as cuBLASLt calls.
    pub fn cublas_calls(&self) -> usize {
        self.calls.iter().flatten().count()
    }

    /// Why launches that have a cuBLASLt form run their kernel instead (empty when none
    /// do): the library is missing, kernels were chosen, or it had no algorithm for one.
    pub fn cublas_note(&self) -> &str {
        &self.cublas_note
    }

    /// The GPU it runs on.
    pub fn device(&self) -> &device::DeviceInfo {
        &self.device
    }

    /// Host synchronizations so far: one per run, when the outputs are read (the sync audit
    /// of `scripts/gpu-check` asserts this).
    pub fn host_syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The device time of the last run's kernels (between CUDA events recorded before and
    /// after the graph replay), in milliseconds; 0 before the first run.
    pub fn last_device_ms(&self) -> f64 {
        f64::from_bits(self.device_ms.load(Ordering::Relaxed))
    }

    /// Fills every output buffer with 0xFF bytes (NaN for floats), so a kernel that fails to
    /// write its output shows up in the next run's results.
    pub fn poison_outputs(&self) -> Result<(), Error> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (_, b) in &self.outputs {
            let spec = &self.buffers[*b as usize];
            // A weight or an input that is also an output is rewritten by no kernel: leave it.
            if spec.constant.is_some() || self.inputs.iter().any(|(_, i)| i == b) {
                continue;
            }
            let junk = vec![0xffu8; spec.bytes];
            let mut dst = state.arena.slice_mut(spec.offset..spec.offset + spec.bytes);
            self.stream
                .memcpy_htod(&junk, &mut dst)
                .map_err(cuda("poisoning the outputs"))?;
        }
        self.stream
            .synchronize()
            .map_err(cuda("poisoning the outputs"))
    }

    /// The graph inputs: (name, dtype, shape), in order.
    pub fn inputs(&self) -> Vec<(String, smelt_compiler::ir::DType, Vec<usize>)> {
        self.inputs
            .iter()
            .map(|(n, b)| {
                let s = &self.buffers[*b as usize];
                (n.clone(), s.dtype, s.shape.clone())
            })
            .collect()
    }

    /// Every launch of the list, in order, on the stream.
    fn enqueue(&self, arena: &CudaSlice<u8>) -> Result<(), Error> {
        let (base, _guard) = arena.device_ptr(&self.stream);
        for ((f, l), call) in self.functions.iter().zip(&self.launches).zip(&self.calls) {
            if let Some(call) = call {
                // SAFETY: the stream is the model's, in the context the arena (and so every
                // pointer of the call) was allocated in; the arena outlives the run.
                unsafe { call.enqueue(self.stream.cu_stream() as _) }
                    .map_err(|e| Error::Cuda(format!("{}: {e}", l.kernel)))?;
                continue;
            }
            let ptrs: Vec<u64> = l
                .params
                .iter()
                .map(|&p| base + self.buffers[p as usize].offset as u64)
                .collect();
            let mut args = self.stream.launch_builder(f);
            for p in &ptrs {
                args.arg(p);
            }
            let cfg = LaunchConfig {
                grid_dim: (l.grid as u32, 1, 1),
                block_dim: (l.block as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: each kernel was generated with one pointer parameter per entry of
            // `params`, in that order, each pointing at its buffer's planned place in the
            // arena, which holds `arena_bytes`.
            unsafe { args.launch(cfg) }.map_err(cuda(&format!("launching {}", l.kernel)))?;
        }
        Ok(())
    }

    /// Runs on inputs already checked against the graph; returns the outputs in order.
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, Error> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        // Every input is checked and staged before any work is queued, so a bad input
        // leaves nothing in flight.
        for ((name, b), staged) in self.inputs.iter().zip(state.staged_inputs.iter_mut()) {
            let spec = &self.buffers[*b as usize];
            let wrong = |message: String| {
                Error::Compiler(smelt_compiler::Error::Input {
                    name: name.clone(),
                    message,
                })
            };
            let t = inputs.get(name).ok_or_else(|| wrong("missing".into()))?;
            if t.dtype() != spec.dtype || t.shape() != spec.shape.as_slice() {
                return Err(wrong(format!(
                    "expected {:?} of {}",
                    spec.shape, spec.dtype
                )));
            }
            if let Some(staged) = staged {
                // The previous run's copy out of this staging finished before that run
                // returned (a run returns only after its stream is synchronized).
                let host = staged
                    .as_mut_slice()
                    .map_err(cuda(&format!("staging input {name}")))?;
                if !t.write_le_bytes(host) {
                    return Err(wrong(format!(
                        "expected {:?} of {}",
                        spec.shape, spec.dtype
                    )));
                }
            }
        }
        let queued = self.queue(state);
        // One synchronization, also when queuing failed part way: nothing of this run (a
        // copy reading the staging, a kernel writing the arena) is left in flight.
        let synced = self.stream.synchronize().map_err(cuda("finishing the run"));
        self.syncs.fetch_add(1, Ordering::Relaxed);
        queued?;
        synced?;
        // Both events have completed: this waits for nothing.
        let ms = device::elapsed_ms(&state.start, &state.end).map_err(Error::Cuda)?;
        self.device_ms.store(ms.to_bits(), Ordering::Relaxed);
        self.faults(state)?;
        let mut out = Vec::with_capacity(self.outputs.len());
        for ((name, b), staged) in self.outputs.iter().zip(&state.staged_outputs) {
            let spec = &self.buffers[*b as usize];
            let host = match staged {
                Some(s) => s.as_slice().map_err(cuda("reading the staging"))?,
                None => &[],
            };
            let t = Tensor::from_le_bytes(spec.dtype, spec.shape.clone(), host)
                .ok_or_else(|| Error::Cuda(format!("output {name} has the wrong size")))?;
            out.push((name.clone(), t));
        }
        Ok(out)
    }

    /// The first index fault the run recorded, as an error naming the node and the index
    /// (the record is cleared, so the next run starts clean); `Ok` when there was none.
    fn faults(&self, state: &State) -> Result<(), Error> {
        for (c, staged) in self.checking.iter().zip(&state.staged_faults) {
            let record = staged
                .as_slice()
                .map_err(cuda("reading the fault record"))?;
            let (site, index) = (record[0], record[1] as i64);
            if site == 0 {
                continue;
            }
            let mut rec = c
                .module
                .get_global(FAULT_RECORD, &self.stream)
                .map_err(cuda("finding a fault record"))?;
            self.stream
                .memset_zeros(&mut rec)
                .map_err(cuda("clearing a fault record"))?;
            self.stream
                .synchronize()
                .map_err(cuda("clearing a fault record"))?;
            let l = &self.launches[c.launch];
            return Err(match l.checks.get((site - 1) as usize) {
                Some(check) => Error::Compiler(check.error(index)),
                None => Error::Cuda(format!(
                    "{}: an index check failed at unknown site {}",
                    l.kernel,
                    site - 1
                )),
            });
        }
        Ok(())
    }

    /// Queues a run on the stream: the staged inputs into the arena, the kernels (captured
    /// as a graph the first time, replayed between the timing events), the outputs into
    /// their staging. Nothing waits here.
    fn queue(&self, state: &mut State) -> Result<(), Error> {
        let State {
            arena,
            graph,
            staged_inputs,
            staged_outputs,
            staged_faults,
            start,
            end,
        } = state;
        for ((name, b), staged) in self.inputs.iter().zip(staged_inputs.iter()) {
            let spec = &self.buffers[*b as usize];
            if let Some(staged) = staged {
                let mut dst = arena.slice_mut(spec.offset..spec.offset + spec.bytes);
                self.stream
                    .memcpy_htod(staged, &mut dst)
                    .map_err(cuda(&format!("copying input {name}")))?;
            }
        }
        if graph.is_none() {
            self.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(cuda("starting the graph capture"))?;
            let launched = self.enqueue(arena);
            let captured = self
                .stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(cuda("ending the graph capture"));
            launched?;
            *graph = captured?;
        }
        start
            .record(&self.stream)
            .map_err(cuda("recording an event"))?;
        match graph {
            Some(g) => g.launch().map_err(cuda("replaying the graph"))?,
            None => self.enqueue(arena)?,
        }
        end.record(&self.stream)
            .map_err(cuda("recording an event"))?;
        for (c, staged) in self.checking.iter().zip(staged_faults.iter_mut()) {
            let rec = c
                .module
                .get_global(FAULT_RECORD, &self.stream)
                .map_err(cuda("finding a fault record"))?;
            // SAFETY: the record is two u64 (see `kernels/cuda/smelt/math.cuh`).
            let rec = unsafe { rec.transmute::<u64>(2) }
                .ok_or_else(|| Error::Cuda("a fault record of the wrong size".into()))?;
            self.stream
                .memcpy_dtoh(&rec, staged)
                .map_err(cuda("reading a fault record"))?;
        }
        for ((_, b), staged) in self.outputs.iter().zip(staged_outputs.iter_mut()) {
            let spec = &self.buffers[*b as usize];
            if let Some(staged) = staged {
                let src = arena.slice(spec.offset..spec.offset + spec.bytes);
                self.stream
                    .memcpy_dtoh(&src, staged)
                    .map_err(cuda(&format!("reading output {}", spec.name)))?;
            }
        }
        Ok(())
    }
}
