//! [`CudaPerceptron`]: the perceptron task's engine on a CUDA device.

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, CudaGraph, CudaModule, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use learnlaw_core::data::{Examples, PerceptronData};
use learnlaw_core::{Engine, Error, Result, Set, StepFlops, Storage};
use std::sync::Arc;

use crate::gpu::{device_error, drv, function, Device, KernelFile, BACKEND};
use crate::graphs::{GraphCache, Plan};
use crate::runtime::{Runtime, Stream};
use crate::vector_ops::{check_len, delegate_vector_ops, CudaVec};
use crate::GraphStats;

/// Threads per block of every kernel (`BLOCK` in the .cu files).
const BLOCK: u32 = 256;
/// Warps per block of the row kernels (`WARPS` in perceptron.cu).
const WARPS: u32 = 8;
/// Rows each warp takes (at least) before the grid is grown (`Options::rows_per_warp` overrides
/// it): fewer blocks mean a shorter final reduction, more mean more rows in flight at once. At the
/// paper's size a step is latency-bound; measured on an H200 (`benches/cuda.rs`' sweep, µs per
/// forward / backward step): 1 row 11.2 / 10.2, 2 rows 7.5 / 7.3, 4 rows 6.5 / 7.1 (128 + 16
/// blocks, two iterations of the register variants' row pairs), 8 rows 7.2 / 8.4.
const ROWS_PER_WARP: usize = 4;
/// The default per-block dynamic shared memory limit without opting in.
const SMEM_DEFAULT: u32 = 48 * 1024;
/// Largest partial-sum volume (blocks·D floats) the last block reduces itself; above it the
/// reduction is a second launch (`pass_finish`) with a thread per column.
const FUSED_FINISH_MAX: usize = 1 << 17;

pub const PERCEPTRON: KernelFile = KernelFile {
    name: "perceptron.cu",
    source: include_str!("../../../kernels/cuda/perceptron.cu"),
    entries: &["pass_r1", "pass_r2", "pass_r4", "pass_smem", "pass_smem_ldg", "pass_finish", "row_outputs"],
    storages: &Storage::ALL,
};

/// The kernel-side `PassParams` (perceptron.cu): pointers are device addresses (0 = null).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct PassParams {
    x0: u64,
    y0: u64,
    gamma0: u64,
    out0: u64,
    x1: u64,
    y1: u64,
    theta: u64,
    vec: u64,
    base: u64,
    out_vec: u64,
    out_scalar: u64,
    partials: u64,
    loss_partials: u64,
    counter: u64,
    rows0: u32,
    rows1: u32,
    blocks0: u32,
    blocks1: u32,
    dim: u32,
    stride4: u32,
    mode0: u32,
    mode1: u32,
    warps: u32,
    fused_finish: u32,
    coef: f32,
    a0: f32,
    a1: f32,
    s1: f32,
}

// SAFETY: plain old data with the C layout of the kernel's struct (checked against the PTX's
// parameter size by tests/nvrtc_compile.rs).
unsafe impl DeviceRepr for PassParams {}

/// Size in bytes of the pass kernels' by-value parameter (what the PTX must declare).
pub const PASS_PARAMS_BYTES: usize = std::mem::size_of::<PassParams>();

/// One engine step as launched: the pass kernel over `blocks` blocks with `params`, then
/// `pass_finish` unless `fused`. A recorded step sequence is a list of these.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct PassLaunch {
    params: PassParams,
    blocks: u32,
    fused: u32,
}

/// `mode*` of `PassParams`.
mod mode {
    pub const NONE: u32 = 0;
    pub const FORWARD: u32 = 1;
    pub const BACKWARD: u32 = 2;
    pub const LOSS: u32 = 3;
    pub const GRAD: u32 = 4;
}

/// Settings of [`CudaPerceptron::with_options`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Device ordinal (default 0).
    pub device: usize,
    /// Force the shared-memory variant of the row kernels (`pass_smem`) whatever D is, to test it
    /// on small problems.
    pub force_smem_variant: bool,
    /// With the shared-memory variant, read θ and λ through the L1 cache instead of staging them in
    /// shared memory (`pass_smem_ldg`, otherwise chosen only for D too large to stage them).
    pub force_global_theta: bool,
    /// Rows each warp takes before the grid grows (0: the default, 2); a tuning knob for
    /// benchmarks. Results stay reproducible for a given value, not across values (the
    /// reduction's grouping changes).
    pub rows_per_warp: usize,
    /// Force the separate `pass_finish` launch (otherwise used only when blocks·D is large), to
    /// test it on small problems.
    pub force_separate_finish: bool,
    /// The element type X is stored in on the device (arithmetic stays f32).
    pub storage: Storage,
    /// Launch every step of `run_steps` directly instead of replaying repeated step sequences
    /// as CUDA graphs (same results; for comparison and diagnosis).
    pub direct_launches: bool,
}

/// A data set on the device: X (in the engine's storage) with rows padded to `stride4` groups of
/// 4 values, y.
struct DeviceSet {
    x: CudaSlice<u8>,
    y: CudaSlice<f32>,
    rows: usize,
}

/// The loaded perceptron module and its launch plan.
struct PassKernels {
    _module: Arc<CudaModule>,
    /// The row kernel's name (`pass_r1`, …, `pass_smem`, `pass_smem_ldg`) and the kernel.
    variant: &'static str,
    pass: CudaFunction,
    finish: CudaFunction,
    row_outputs: CudaFunction,
    /// Dynamic shared memory of `pass` (bytes) and the warps per block that take rows.
    smem: u32,
    warps: u32,
    /// Blocks of `pass` resident on the whole device at once.
    resident: usize,
    /// Partial sums [max blocks, stride4·4] f32, their losses [max blocks] f64, the retirement counter.
    partials: CudaSlice<f32>,
    loss_partials: CudaSlice<f64>,
    counter: CudaSlice<u32>,
    /// The scalar `loss`/`loss_grad` write and read back.
    scalar: CudaSlice<f32>,
}

/// The perceptron engine on a CUDA device (f32).
pub struct CudaPerceptron {
    gpu: Device,
    opts: Options,
    dim: usize,
    stride4: usize,
    train: DeviceSet,
    dev: DeviceSet,
    test: DeviceSet,
    /// Steps recorded inside `run_steps`, launched at its end (None: steps launch at once).
    recording: Option<Vec<PassLaunch>>,
    /// Declared before the kernels: graphs are destroyed before the modules they launch.
    graphs: GraphCache<CudaGraph>,
    pass: Option<PassKernels>,
    /// vector.cu and simplex.cu on the engine's stream (the vector and policy operations).
    vector_rt: Stream,
}

impl CudaPerceptron {
    /// The engine on device 0. No driver, NVRTC or device: `Error::Unavailable`.
    pub fn new(data: &PerceptronData) -> Result<Self> {
        Self::with_options(data, &Options::default())
    }

    pub fn with_options(data: &PerceptronData, opts: &Options) -> Result<Self> {
        data.validate()?;
        let gpu = Device::open(opts.device)?;
        let stream = gpu.stream.clone();
        let dim = data.dim;
        let stride4 = dim.div_ceil(4);
        let storage = opts.storage;
        let upload_set = |name: &str, set: &Examples| -> Result<DeviceSet> {
            let rows = set.len();
            let row_bytes = 4 * stride4 * storage.bytes();
            let mut x = stream.alloc_zeros::<u8>((rows * row_bytes).max(1)).map_err(drv("allocating X"))?;
            // Encode (pad, convert) in pieces of ~16 MiB, so no full padded host copy.
            let per = ((16 << 20) / row_bytes).max(1);
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + per).min(rows);
                let host = storage.encode_rows(&format!("cuda x_{name}"), &set.x[r0 * dim..r1 * dim], dim, 4 * stride4, r0)?;
                stream.memcpy_htod(&host, &mut x.slice_mut(r0 * row_bytes..r1 * row_bytes)).map_err(drv("uploading X"))?;
                stream.synchronize().map_err(drv("uploading X"))?; // `host` is dropped
                r0 = r1;
            }
            let mut y = stream.alloc_zeros::<f32>(rows.max(1)).map_err(drv("allocating y"))?;
            if rows > 0 {
                stream.memcpy_htod(&set.y, &mut y.slice_mut(..rows)).map_err(drv("uploading y"))?;
            }
            Ok(DeviceSet { x, y, rows })
        };
        let (train, dev, test) = (upload_set("train", &data.train)?, upload_set("dev", &data.dev)?, upload_set("test", &data.test)?);
        stream.synchronize().map_err(drv("uploading the data"))?;
        let vector_rt = Stream::new(gpu.clone());
        Ok(CudaPerceptron {
            gpu,
            opts: opts.clone(),
            dim,
            stride4,
            train,
            dev,
            test,
            recording: None,
            graphs: GraphCache::default(),
            pass: None,
            vector_rt,
        })
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn device_name(&self) -> &str {
        &self.gpu.device_name
    }

    /// The architecture NVRTC compiles the kernels for: the device's own, e.g. `sm_90` (SASS), or
    /// an older `compute_XY` (PTX) where NVRTC cannot target it.
    #[allow(clippy::misnamed_getters)] // not the device's `compute_XY` (`Device::arch`)
    pub fn arch(&self) -> &str {
        &self.gpu.target
    }

    /// The device, how its kernels are loaded, and the driver's and NVRTC's versions.
    pub fn device_info(&self) -> crate::DeviceInfo {
        self.gpu.info()
    }

    /// Blocks until every queued operation of the engine has finished (for timing).
    pub fn synchronize(&mut self) -> Result<()> {
        self.flush_recorded()?;
        self.gpu.stream.synchronize().map_err(drv("synchronising"))
    }

    /// How the step sequences of `run_steps` were launched so far.
    pub fn graph_stats(&self) -> GraphStats {
        self.graphs.stats
    }

    /// The pass kernel variant in use (`pass_r1`, …, `pass_smem`, `pass_smem_ldg`), after the first step.
    pub fn pass_variant(&mut self) -> Result<&'static str> {
        self.ensure_pass()?;
        Ok(self.pass.as_ref().map_or("", |k| k.variant))
    }

    /// The register variant for this D, if one fits (and the shared-memory one is not forced).
    fn register_variant(&self) -> Option<&'static str> {
        match self.stride4 {
            _ if self.opts.force_smem_variant || self.opts.force_global_theta => None,
            0..=32 => Some("pass_r1"),
            33..=64 => Some("pass_r2"),
            65..=128 => Some("pass_r4"),
            _ => None,
        }
    }

    /// Loads a kernel file compiled for the engine's storage of X (`Storage::F32` for files that
    /// do not read X).
    fn load_module(&self, file: &KernelFile) -> Result<Arc<CudaModule>> {
        let storage = if file.storages.contains(&self.opts.storage) { self.opts.storage } else { Storage::F32 };
        self.gpu.load_module(file, storage)
    }

    /// Blocks for a segment of `rows` rows.
    fn blocks_for(rows: usize, warps: u32, rows_per_warp: usize, resident: usize) -> usize {
        rows.div_ceil(warps as usize * rows_per_warp.max(1)).clamp(1, resident.max(1))
    }

    fn rows_per_warp(&self) -> usize {
        if self.opts.rows_per_warp == 0 {
            ROWS_PER_WARP
        } else {
            self.opts.rows_per_warp
        }
    }

    /// Compiles and loads perceptron.cu (first use), and plans the pass kernel's launches.
    fn ensure_pass(&mut self) -> Result<()> {
        if self.pass.is_some() {
            return Ok(());
        }
        let module = self.load_module(&PERCEPTRON)?;
        let finish = function(&module, "pass_finish")?;
        let row_outputs = function(&module, "row_outputs")?;
        let row_bytes = (self.stride4 * 16) as u32;
        let (variant, warps, staged) = match self.register_variant() {
            Some(v) => (v, WARPS, 0),
            None => {
                // The static shared memory (the finish's and the reduction's) is the same for both
                // shared-memory variants.
                let static_smem = function(&module, "pass_smem")?
                    .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                    .map_err(drv("querying the static shared memory"))?
                    .max(0) as u32;
                let avail = self.gpu.smem_optin.max(SMEM_DEFAULT).saturating_sub(static_smem);
                smem_plan(row_bytes, avail, self.opts.force_global_theta).ok_or_else(|| {
                    Error::bad_input(
                        format!("cuda data (D = {})", self.dim),
                        format!(
                            "one row accumulator ({row_bytes} bytes) exceeds the shared memory a block can have on {} ({} bytes)",
                            self.gpu.device_name, self.gpu.smem_optin
                        ),
                    )
                })?
            }
        };
        let pass = function(&module, variant)?;
        let smem = (warps + staged) * row_bytes;
        // Static + dynamic shared memory above 48 KiB needs the opt-in; setting it is always valid.
        pass.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
            .map_err(drv("opting in to more shared memory"))?;
        let per_sm = pass.occupancy_max_active_blocks_per_multiprocessor(BLOCK, smem as usize, None).map_err(drv("occupancy"))?;
        if per_sm == 0 {
            return Err(device_error(format!("{variant} cannot run with {smem} bytes of shared memory on {}", self.gpu.device_name)));
        }
        let resident = per_sm as usize * self.gpu.sms;
        let rpw = self.rows_per_warp();
        let max_blocks = Self::blocks_for(self.train.rows, warps, rpw, resident)
            + Self::blocks_for(self.dev.rows, warps, rpw, resident).max(Self::blocks_for(self.test.rows, warps, rpw, resident));
        let s = &self.gpu.stream;
        let partials = s.alloc_zeros::<f32>(max_blocks * self.stride4 * 4).map_err(drv("allocating partial sums"))?;
        let loss_partials = s.alloc_zeros::<f64>(max_blocks).map_err(drv("allocating partial sums"))?;
        let counter = s.alloc_zeros::<u32>(1).map_err(drv("allocating the counter"))?;
        let scalar = s.alloc_zeros::<f32>(1).map_err(drv("allocating a scalar"))?;
        self.pass = Some(PassKernels {
            _module: module,
            variant,
            pass,
            finish,
            row_outputs,
            smem,
            warps,
            resident,
            partials,
            loss_partials,
            counter,
            scalar,
        });
        Ok(())
    }

    fn set(&self, set: Set) -> &DeviceSet {
        match set {
            Set::Dev => &self.dev,
            Set::Test => &self.test,
        }
    }

    fn check_policy(&self, gamma: &CudaVec, t: usize) -> Result<()> {
        let n = self.train.rows;
        if (t + 1) * n <= gamma.len {
            Ok(())
        } else {
            Err(Error::shape("policy", format!("at least {} rows of {n}", t + 1), gamma.len))
        }
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(&self.gpu.stream);
        p
    }

    /// Fills the parts of `PassParams` that depend on the engine and the segments: the launch of
    /// one step (None: nothing to do). `seg0`: a training-set mode; `seg1`: an evaluation set
    /// and its mode.
    fn plan_pass(&self, mut p: PassParams, seg0: u32, seg1: Option<(Set, u32)>) -> Result<Option<PassLaunch>> {
        let k = self.pass.as_ref().ok_or_else(|| device_error("perceptron kernels not loaded"))?;
        let rpw = self.rows_per_warp();
        let (blocks0, rows0) =
            if seg0 == mode::NONE { (0, 0) } else { (Self::blocks_for(self.train.rows, k.warps, rpw, k.resident), self.train.rows) };
        p.mode0 = seg0;
        p.rows0 = rows0 as u32;
        p.blocks0 = blocks0 as u32;
        p.x0 = self.ptr(&self.train.x);
        p.y0 = self.ptr(&self.train.y);
        if let Some((set, m)) = seg1 {
            let s = self.set(set);
            p.mode1 = m;
            p.rows1 = s.rows as u32;
            p.blocks1 = Self::blocks_for(s.rows, k.warps, rpw, k.resident) as u32;
            p.x1 = self.ptr(&s.x);
            p.y1 = self.ptr(&s.y);
            p.s1 = 1.0 / s.rows as f32;
        }
        p.dim = self.dim as u32;
        p.stride4 = self.stride4 as u32;
        p.warps = k.warps;
        p.partials = self.ptr(&k.partials);
        p.loss_partials = self.ptr(&k.loss_partials);
        p.counter = self.ptr(&k.counter);
        let blocks = p.blocks0 + p.blocks1;
        if blocks == 0 {
            return Ok(None);
        }
        let fused = blocks as usize * self.dim <= FUSED_FINISH_MAX && !self.opts.force_separate_finish;
        p.fused_finish = fused as u32;
        Ok(Some(PassLaunch { params: p, blocks, fused: fused as u32 }))
    }

    /// Launches one planned step on the stream.
    fn issue(&self, l: &PassLaunch) -> Result<()> {
        let k = self.pass.as_ref().ok_or_else(|| device_error("perceptron kernels not loaded"))?;
        let cfg = LaunchConfig { grid_dim: (l.blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: k.smem };
        let mut b = self.gpu.stream.launch_builder(&k.pass);
        b.arg(&l.params);
        // SAFETY: `params` matches the kernel's PassParams; every pointer is a live allocation of
        // the engine or of the caller's vectors (lengths checked by the callers; `run_steps`'s
        // contract keeps recorded ones alive until they launch), used in stream order.
        unsafe { b.launch(cfg) }.map_err(drv("launching the perceptron pass"))?;
        if l.fused == 0 {
            let grid = self.dim.div_ceil(BLOCK as usize).max(1) as u32;
            let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
            let mut b = self.gpu.stream.launch_builder(&k.finish);
            b.arg(&l.params);
            // SAFETY: as above; pass_finish reads the partials the pass just wrote (stream order).
            unsafe { b.launch(cfg) }.map_err(drv("launching pass_finish"))?;
        }
        Ok(())
    }

    /// Launches one step now (loss, loss_grad), after anything recorded.
    fn launch_pass(&mut self, p: PassParams, seg0: u32, seg1: Option<(Set, u32)>) -> Result<()> {
        self.flush_recorded()?;
        match self.plan_pass(p, seg0, seg1)? {
            Some(l) => self.issue(&l),
            None => Ok(()),
        }
    }

    /// A forward or backward step: recorded inside `run_steps`, else launched now.
    fn submit_step(&mut self, p: PassParams, seg0: u32, seg1: Option<(Set, u32)>) -> Result<()> {
        let Some(l) = self.plan_pass(p, seg0, seg1)? else { return Ok(()) };
        match &mut self.recording {
            Some(steps) => {
                steps.push(l);
                Ok(())
            }
            None => self.issue(&l),
        }
    }

    /// Launches the steps recorded so far one by one (another engine call came inside
    /// `run_steps`: it must see their results), and goes on recording.
    fn flush_recorded(&mut self) -> Result<()> {
        match self.recording.as_mut().map(std::mem::take) {
            Some(steps) if !steps.is_empty() => steps.iter().try_for_each(|l| self.issue(l)),
            _ => Ok(()),
        }
    }

    /// Launches a recorded step sequence: from a cached graph when the same sequence was captured
    /// before; captured into a graph (then launched) when it was seen once before; else directly.
    fn replay(&mut self, steps: Vec<PassLaunch>) -> Result<()> {
        let key = bytemuck::cast_slice::<PassLaunch, u8>(&steps);
        match self.graphs.plan(steps.len(), key) {
            Plan::Direct => steps.iter().try_for_each(|l| self.issue(l)),
            Plan::Replay => {
                let graph = self.graphs.front().ok_or_else(|| device_error("no cached CUDA graph to replay"))?;
                graph.launch().map_err(drv("launching a CUDA graph"))
            }
            Plan::Capture => {
                // The launches are recorded into the graph, not executed.
                self.gpu
                    .stream
                    .begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                    .map_err(drv("starting a stream capture"))?;
                let issued = steps.iter().try_for_each(|l| self.issue(l));
                let captured = self.gpu.stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
                match (issued, captured) {
                    (Ok(()), Ok(Some(graph))) => {
                        graph.launch().map_err(drv("launching a CUDA graph"))?;
                        self.graphs.insert(key.to_vec(), graph);
                        Ok(())
                    }
                    // The driver would not capture or instantiate (nothing ran): step by step.
                    _ => {
                        self.graphs.capture_failed(key);
                        steps.iter().try_for_each(|l| self.issue(l))
                    }
                }
            }
        }
    }

    /// One launch of `row_outputs` over the training set (mode 0: losses, 1: dots with `v`).
    fn launch_row_outputs(&mut self, theta: &CudaVec, v: Option<&CudaVec>, out: &mut CudaVec, m: u32) -> Result<()> {
        self.flush_recorded()?;
        let k = self.pass.as_ref().ok_or_else(|| device_error("perceptron kernels not loaded"))?;
        let rows = self.train.rows;
        let grid = rows.div_ceil(WARPS as usize).clamp(1, self.gpu.sms * 8) as u32;
        let (rows_u, dim_u, st_u) = (rows as u32, self.dim as u32, self.stride4 as u32);
        let v_buf = v.unwrap_or(theta);
        let mut b = self.gpu.stream.launch_builder(&k.row_outputs);
        let (theta_p, v_p, out_p) = (theta.mem.ptr, v_buf.mem.ptr, out.mem.ptr);
        b.arg(&self.train.x).arg(&self.train.y).arg(&theta_p).arg(&v_p).arg(&out_p);
        b.arg(&rows_u).arg(&dim_u).arg(&st_u).arg(&m);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: argument list matches row_outputs; lengths checked by the callers.
        unsafe { b.launch(cfg) }.map_err(drv("launching row_outputs"))?;
        Ok(())
    }

    /// The device address of the scalar `loss`/`loss_grad` write (0 before the kernels load).
    fn scalar_ptr(&self) -> u64 {
        self.pass.as_ref().map_or(0, |k| self.ptr(&k.scalar))
    }

    /// Reads back the scalar `loss`/`loss_grad` wrote (waits for the device).
    fn read_scalar(&self) -> Result<f64> {
        let k = self.pass.as_ref().ok_or_else(|| device_error("perceptron kernels not loaded"))?;
        let mut host = [0f32; 1];
        self.gpu.stream.memcpy_dtoh(&k.scalar, &mut host).map_err(drv("reading a loss back"))?;
        self.gpu.stream.synchronize().map_err(drv("reading a loss back"))?;
        Ok(host[0] as f64)
    }

    /// Vector operations run in stream order after the steps recorded so far.
    fn before_vector_op(&mut self) -> Result<()> {
        self.flush_recorded()
    }

    fn runtime(&self) -> &dyn Runtime {
        &self.vector_rt
    }
}

/// The shared-memory variant for rows of `row_bytes` accumulator bytes when a block may have
/// `avail` bytes of dynamic shared memory: (kernel, warps taking rows, staged vectors θ and λ of
/// `row_bytes` each), or None when not even one accumulator fits. θ and λ are staged unless that
/// costs more than half the warps (or `force_ldg`).
fn smem_plan(row_bytes: u32, avail: u32, force_ldg: bool) -> Option<(&'static str, u32, u32)> {
    let row_bytes = row_bytes.max(1);
    let unstaged = (avail / row_bytes).min(WARPS);
    let staged = (avail.saturating_sub(2 * row_bytes) / row_bytes).min(WARPS);
    if !force_ldg && staged >= 1 && 2 * staged >= unstaged {
        Some(("pass_smem", staged, 2))
    } else if unstaged >= 1 {
        Some(("pass_smem_ldg", unstaged, 0))
    } else {
        None
    }
}

impl Drop for CudaPerceptron {
    /// Waits for queued work before the graphs, modules and buffers go (frees are stream-ordered,
    /// graph destruction and module unloads are not).
    fn drop(&mut self) {
        let _ = self.gpu.stream.synchronize();
    }
}

impl Engine for CudaPerceptron {
    type Real = f32;
    type Vec = CudaVec;

    fn name(&self) -> String {
        format!("{BACKEND}-{}", self.opts.storage.name())
    }
    fn num_params(&self) -> usize {
        self.dim
    }
    fn num_train(&self) -> usize {
        self.train.rows
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn step_flops(&self) -> StepFlops {
        learnlaw_core::perceptron::step_flops(self.num_train(), self.dev.rows, self.dim)
    }

    delegate_vector_ops!();

    fn forward_step(
        &mut self,
        theta: &CudaVec,
        gamma: &CudaVec,
        t: usize,
        eta: f64,
        theta_next: &mut CudaVec,
        dev_loss: Option<(&mut CudaVec, usize)>,
    ) -> Result<()> {
        check_len("theta", theta, self.dim)?;
        check_len("theta_next", theta_next, self.dim)?;
        self.check_policy(gamma, t)?;
        if let Some((curve, i)) = &dev_loss {
            if *i >= curve.len {
                return Err(Error::shape("dev-loss curve", format!("more than {i} entries"), curve.len));
            }
        }
        self.ensure_pass()?;
        let n = self.train.rows as u64;
        let mut p = PassParams {
            gamma0: gamma.mem.ptr + 4 * t as u64 * n,
            theta: theta.mem.ptr,
            base: theta.mem.ptr,
            out_vec: theta_next.mem.ptr,
            a0: -(eta as f32),
            ..Default::default()
        };
        let seg1 = match dev_loss {
            Some((curve, i)) => {
                p.out_scalar = curve.mem.ptr + 4 * i as u64;
                Some((Set::Dev, mode::LOSS))
            }
            None => None,
        };
        self.submit_step(p, mode::FORWARD, seg1)
    }

    fn backward_step(
        &mut self,
        theta: &CudaVec,
        gamma: &CudaVec,
        t: usize,
        lambda_next: &CudaVec,
        eta: f64,
        dev_weight: f64,
        grad_gamma: &mut CudaVec,
        lambda: &mut CudaVec,
    ) -> Result<()> {
        check_len("theta", theta, self.dim)?;
        check_len("lambda_next", lambda_next, self.dim)?;
        check_len("lambda", lambda, self.dim)?;
        self.check_policy(gamma, t)?;
        check_len("grad_gamma", grad_gamma, gamma.len)?;
        self.ensure_pass()?;
        let n = self.train.rows as u64;
        let p = PassParams {
            gamma0: gamma.mem.ptr + 4 * t as u64 * n,
            out0: grad_gamma.mem.ptr + 4 * t as u64 * n,
            theta: theta.mem.ptr,
            vec: lambda_next.mem.ptr,
            base: lambda_next.mem.ptr,
            out_vec: lambda.mem.ptr,
            coef: -(eta as f32),
            a0: -(eta as f32),
            a1: (dev_weight / self.dev.rows as f64) as f32,
            ..Default::default()
        };
        self.submit_step(p, mode::BACKWARD, Some((Set::Dev, mode::GRAD)))
    }

    /// Records the steps and launches them at the end: a sequence seen before as one CUDA graph
    /// (see `replay`). Nested calls join the outer sequence. A failing step launches what was
    /// recorded before it, as direct calls would have.
    fn run_steps<T>(&mut self, steps: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.opts.direct_launches || self.recording.is_some() {
            return steps(self);
        }
        self.recording = Some(Vec::new());
        let out = steps(self);
        let recorded = self.recording.take().unwrap_or_default();
        match out {
            Ok(v) => self.replay(recorded).map(|()| v),
            Err(e) => {
                recorded.iter().try_for_each(|l| self.issue(l))?;
                Err(e)
            }
        }
    }

    fn loss(&mut self, set: Set, theta: &CudaVec) -> Result<f64> {
        check_len("theta", theta, self.dim)?;
        self.ensure_pass()?;
        let p = PassParams { theta: theta.mem.ptr, out_scalar: self.scalar_ptr(), ..Default::default() };
        self.launch_pass(p, mode::NONE, Some((set, mode::LOSS)))?;
        self.read_scalar()
    }

    fn loss_grad(&mut self, set: Set, theta: &CudaVec, grad: &mut CudaVec) -> Result<f64> {
        check_len("theta", theta, self.dim)?;
        check_len("grad", grad, self.dim)?;
        self.ensure_pass()?;
        let p = PassParams {
            theta: theta.mem.ptr,
            out_vec: grad.mem.ptr,
            out_scalar: self.scalar_ptr(),
            a1: 1.0 / self.set(set).rows as f32,
            ..Default::default()
        };
        self.launch_pass(p, mode::NONE, Some((set, mode::GRAD)))?;
        self.read_scalar()
    }

    fn train_losses(&mut self, theta: &CudaVec, out: &mut CudaVec) -> Result<()> {
        check_len("theta", theta, self.dim)?;
        check_len("losses", out, self.train.rows)?;
        self.ensure_pass()?;
        self.launch_row_outputs(theta, None, out, 0)
    }

    fn train_dots(&mut self, theta: &CudaVec, v: &CudaVec, out: &mut CudaVec) -> Result<()> {
        check_len("theta", theta, self.dim)?;
        check_len("v", v, self.dim)?;
        check_len("dots", out, self.train.rows)?;
        self.ensure_pass()?;
        self.launch_row_outputs(theta, Some(v), out, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_params_layout_matches_the_kernel_struct() {
        // 14 pointers, 10 u32, 4 f32.
        assert_eq!(PASS_PARAMS_BYTES, 168);
        assert_eq!(std::mem::align_of::<PassParams>(), 8);
        // Recorded launches are compared as bytes: no padding (Pod checks it), 168 + 2 u32.
        assert_eq!(std::mem::size_of::<PassLaunch>(), 176);
    }

    #[test]
    fn every_kernel_file_declares_its_entries() {
        for f in crate::KERNEL_FILES {
            for e in f.entries {
                let declared = f.source.lines().any(|l| l.contains("__global__ void __launch_bounds__(") && l.contains(&format!(") {e}(")));
                assert!(declared, "{}: no kernel {e}", f.name);
            }
        }
    }

    #[test]
    fn blocks_grow_with_rows_up_to_the_resident_count() {
        // The paper's size at the default 4 rows per warp: 128 + 16 blocks, all resident (H200: 132
        // SMs, 4 blocks of pass_r1 each).
        assert_eq!(CudaPerceptron::blocks_for(4096, 8, ROWS_PER_WARP, 528), 128);
        assert_eq!(CudaPerceptron::blocks_for(512, 8, ROWS_PER_WARP, 528), 16);
        assert_eq!(CudaPerceptron::blocks_for(4096, 8, 2, 528), 256);
        assert_eq!(CudaPerceptron::blocks_for(1, 8, 2, 264), 1);
        assert_eq!(CudaPerceptron::blocks_for(4096, 8, 8, 264), 64);
        assert_eq!(CudaPerceptron::blocks_for(512, 8, 8, 264), 8);
        assert_eq!(CudaPerceptron::blocks_for(1 << 20, 8, 2, 264), 264);
        assert_eq!(CudaPerceptron::blocks_for(0, 8, 2, 264), 1);
        assert_eq!(CudaPerceptron::blocks_for(100, 8, 0, 264), 13, "0 rows per warp counts as 1");
    }

    #[test]
    fn shared_memory_plan_stages_theta_unless_it_costs_too_many_warps() {
        // An H200 block may opt in to 227 KiB; the kernels' static shared memory is ~8.1 KiB.
        let avail = 232_448 - 8_272;
        let plan = |dim: u32| smem_plan(dim.div_ceil(4) * 16, avail, false);
        assert_eq!(plan(4096), Some(("pass_smem", 8, 2)), "D = 4096: 160 KiB, one block per SM");
        assert_eq!(plan(600), Some(("pass_smem", 8, 2)));
        assert_eq!(plan(10_000), Some(("pass_smem", 3, 2)), "3 warps staged against 5 unstaged");
        assert_eq!(plan(16_000), Some(("pass_smem_ldg", 3, 0)), "staging would leave 1 warp of 3");
        assert_eq!(plan(56_000), Some(("pass_smem_ldg", 1, 0)));
        assert_eq!(plan(57_000), None, "one accumulator no longer fits");
        assert_eq!(smem_plan(64, avail, true), Some(("pass_smem_ldg", 8, 0)), "forced");
        // The 48 KiB a block gets without opting in (D = 1000: 4000-byte rows).
        assert_eq!(smem_plan(4000, 48 * 1024 - 8_272, false), Some(("pass_smem", 8, 2)));
    }

    /// Without a driver the engine is an error value, not a panic (on a GPU machine: an engine).
    #[test]
    fn no_driver_is_unavailable_not_a_panic() {
        let data = learnlaw_core::data::PerceptronData::generate(&learnlaw_core::data::PerceptronRecipe {
            dim: 3,
            n_train: 5,
            n_dev: 2,
            n_test: 2,
            ..Default::default()
        })
        .expect("data");
        match CudaPerceptron::new(&data) {
            Ok(e) => assert_eq!(e.name(), "cuda-f32"),
            Err(Error::Unavailable { backend, .. }) => assert_eq!(backend, "cuda"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}
