//! The CUDA executor: a [`Bundle`] (plan, launch list, weights, cubins) loaded onto the first
//! GPU and run with no NVRTC, no allocation and no host synchronization until the outputs are
//! read.
//!
//! Loading binds the cubins for the device's architecture, allocates one device arena (the
//! shared planner's layout) and uploads the weights once. A run copies the inputs into the
//! arena and launches every kernel on one stream; the first run captures the launches as a
//! CUDA graph, later runs replay it. Reading the outputs is the one synchronization.
//!
//! This is the thin layer `scripts/gpu-check` exercises on a GPU; on machines without one,
//! [`CudaModel::load`] is a clear error (`no CUDA device found: …`).

use super::bundle::{BufferSpec, Bundle, LaunchSpec};
use super::device;
use crate::Error;
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use smelt_compiler::ir::Tensor;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

fn cuda(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e}"))
}

/// What a run owns exclusively: the arena and the captured graph.
struct State {
    arena: CudaSlice<u8>,
    graph: Option<CudaGraph>,
}

/// A bundle loaded onto a GPU.
pub struct CudaModel {
    // Dropped first: the graph and the arena go before the modules they use.
    state: Mutex<State>,
    stream: Arc<CudaStream>,
    functions: Vec<CudaFunction>,
    launches: Vec<LaunchSpec>,
    buffers: Vec<BufferSpec>,
    inputs: Vec<(String, u32)>,
    outputs: Vec<(String, u32)>,
    device: device::DeviceInfo,
    syncs: AtomicU64,
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
    /// the weights.
    pub fn load(bundle: &Bundle) -> Result<CudaModel, Error> {
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
        let mut functions = Vec::with_capacity(m.launches.len());
        for l in &m.launches {
            let cubin = bundle
                .cubin(&l.kernel, &arch)
                .ok_or_else(|| Error::Bundle(format!("no {arch} cubin for {}", l.kernel)))?;
            let module = ctx
                .load_module(Ptx::from_binary(cubin.to_vec()))
                .map_err(cuda(&format!("loading {} ({arch})", l.kernel)))?;
            functions.push(
                module
                    .load_function(&l.kernel)
                    .map_err(cuda(&format!("finding {} in its module", l.kernel)))?,
            );
        }
        let mut arena = stream
            .alloc_zeros::<u8>(m.arena_bytes.max(1))
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
        Ok(CudaModel {
            stream,
            functions,
            launches: m.launches.clone(),
            buffers: m.buffers.clone(),
            inputs: m.inputs.clone(),
            outputs: m.outputs.clone(),
            state: Mutex::new(State { arena, graph: None }),
            device,
            syncs: AtomicU64::new(0),
            _ctx: ctx,
        })
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
        for (f, l) in self.functions.iter().zip(&self.launches) {
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
        let State { arena, graph } = &mut *state;
        for (name, b) in &self.inputs {
            let spec = &self.buffers[*b as usize];
            let t = inputs.get(name).ok_or_else(|| {
                Error::Compiler(smelt_compiler::Error::Input {
                    name: name.clone(),
                    message: "missing".into(),
                })
            })?;
            let mut host = vec![0u8; spec.bytes];
            if t.dtype() != spec.dtype || !t.write_le_bytes(&mut host) {
                return Err(Error::Compiler(smelt_compiler::Error::Input {
                    name: name.clone(),
                    message: format!("expected {:?} of {}", spec.shape, spec.dtype),
                }));
            }
            let mut dst = arena.slice_mut(spec.offset..spec.offset + spec.bytes);
            self.stream
                .memcpy_htod(&host, &mut dst)
                .map_err(cuda(&format!("copying input {name}")))?;
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
        match graph {
            Some(g) => g.launch().map_err(cuda("replaying the graph"))?,
            None => self.enqueue(arena)?,
        }
        let mut out = Vec::with_capacity(self.outputs.len());
        let mut hosts = Vec::with_capacity(self.outputs.len());
        for (_, b) in &self.outputs {
            let spec = &self.buffers[*b as usize];
            let mut host = vec![0u8; spec.bytes];
            let src = arena.slice(spec.offset..spec.offset + spec.bytes);
            self.stream
                .memcpy_dtoh(&src, &mut host)
                .map_err(cuda(&format!("reading output {}", spec.name)))?;
            hosts.push(host);
        }
        self.stream
            .synchronize()
            .map_err(cuda("finishing the run"))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        for ((name, b), host) in self.outputs.iter().zip(hosts) {
            let spec = &self.buffers[*b as usize];
            let t = Tensor::from_le_bytes(spec.dtype, spec.shape.clone(), &host)
                .ok_or_else(|| Error::Cuda(format!("output {name} has the wrong size")))?;
            out.push((name.clone(), t));
        }
        Ok(out)
    }
}
