//! learnlaw-wgpu: the WGSL backend. [`WgpuPerceptron`] is the perceptron task's [`Engine`] on any
//! GPU wgpu reaches (Vulkan, Metal, DX12) and, through Mesa's lavapipe, on a plain CPU.
//!
//! - Kernels live in `kernels/wgsl/*.wgsl` (one family per file, each with a header giving the
//!   math, buffer shapes and workgroup geometry) and are compiled once, in [`WgpuPerceptron::new`];
//!   the pipelines are cached for the engine's lifetime.
//! - Semantics match the CPU engine (`learnlaw_core::perceptron::CpuPerceptron<f32>`): f32 storage (by default)
//!   and accumulation, per-chunk partial sums over the same 256-row chunks reduced in chunk order,
//!   so results are deterministic run to run; the conformance tests check every operation against
//!   the f64 reference.
//! - Everything of an unrolled run stays on the device. Neither a forward nor a backward step reads
//!   anything back or waits for the device: the forward step's dev loss is written by the loss
//!   reduction's last stage straight into the caller's curve buffer, which the driver downloads
//!   once per unroll. Calls that return a host value (`loss`, `loss_grad`, `download`, `max_abs`,
//!   and the policy updates `project_simplex_rows` and `exp_grad_rows`, which read a non-finite
//!   flag) wait. The SGD and exp-grad outer updates and `tie_rows` run on the device. Steps
//!   inside `Engine::run_steps` (the unroll's passes) are submitted as one command buffer.
//! - Large inputs: one storage binding is limited (128 MiB on lavapipe). Each data set is split
//!   into shards of whole rows, each its own buffer of at most one binding, and long vectors (a
//!   policy [T, N], ∂J/∂γ) are bound through aligned windows, so X of several GiB works as long as
//!   the device has the memory. [`Options::max_binding_bytes`] lowers the limit (the device is then
//!   created with it) to exercise that path on small problems (tests/large_inputs.rs). What must
//!   still fit: one row of X in one binding; the partial sums [⌈N/256⌉, D] in one binding (at
//!   128 MiB: N·D ≤ 2^33, i.e. X ≤ 32 GiB); one engine vector (e.g. the whole policy) in one
//!   buffer (`max_buffer_size`). Past those the constructor or the call returns an error.
//! - X is stored with rows zero-padded to a multiple of 4 values (the kernels load vec4s).
//! - No adapter is `Error::Unavailable { backend: "wgpu", .. }`, never a panic; a kernel that
//!   does not compile or a device error while the engine runs (validation, out of memory, device
//!   lost) is `Error::Device`, which tests never treat as a skip.
//!
//! - Storage of X ([`Options::storage`]): f32 (the default, name `wgpu-f32`) or f16 (`wgpu-f16`),
//!   converted on upload by [`Storage::encode_rows`] (round to nearest even) and read by the same WGSL
//!   compiled with X's element type substituted (see perceptron.wgsl); accumulation is f32 in
//!   both. f16 needs `wgpu::Features::SHADER_F16`: an adapter without it gives
//!   `Error::Unavailable { backend: "wgpu-f16", .. }` (the f32 backend `wgpu` is still usable
//!   there), no adapter at all gives `backend: "wgpu"`. [`Storage::round`] gives the values the
//!   f16 kernels compute with.
//!
//! Not done yet: subgroup reductions and tiled row dots (see the kernel headers).
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use learnlaw_core::data::{Examples, PerceptronData};
use learnlaw_core::engine::{rows_of, rows_of_pair, tie_rows_shape};
pub use learnlaw_core::Storage;
use learnlaw_core::{Engine, Error, Result, Set, StepFlops};
use wgpu::util::DeviceExt;

const BACKEND: &str = "wgpu";
/// Rows per workgroup of the `rows` kernel (`WG` in perceptron.wgsl) = rows per partial-sum chunk.
const CHUNK_ROWS: usize = 256;
/// Invocations per workgroup of the elementwise kernels.
const WG: usize = 256;
/// Invocations per workgroup of `combine`.
const COMBINE_WG: usize = 64;
/// Bytes per parameter block in the uniform buffer (the largest allowed uniform offset alignment).
const PARAM_SLOT: u64 = 256;
/// Largest staging buffer used for downloads; longer vectors come back in pieces.
const STAGING_MAX: u64 = 64 << 20;
/// Non-blocking device polls (resource reclamation) every this many submissions without a wait.
const POLL_EVERY: u32 = 32;

const PERCEPTRON_WGSL: &str = include_str!("../../../kernels/wgsl/perceptron.wgsl");
const SIMPLEX_WGSL: &str = include_str!("../../../kernels/wgsl/simplex.wgsl");
const VECTOR_WGSL: &str = include_str!("../../../kernels/wgsl/vector.wgsl");

/// `mode` of the `rows` kernel (see perceptron.wgsl).
mod mode {
    pub const FORWARD: u32 = 0;
    pub const BACKWARD: u32 = 1;
    pub const LOSS: u32 = 2;
    pub const GRAD: u32 = 3;
    pub const TRAIN_LOSS: u32 = 4;
    pub const TRAIN_DOT: u32 = 5;
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    rows: u32,
    dim: u32,
    stride4: u32,
    mode: u32,
    chunk0: u32,
    gamma_shift: u32,
    out_shift: u32,
    coef: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CombineParams {
    dim: u32,
    chunks1: u32,
    chunks2: u32,
    use_v: u32,
    beta: f32,
    delta: f32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScalarParams {
    count: u32,
    out_index: u32,
    scale: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct VecParams {
    len: u32,
    shift_x: u32,
    shift_y: u32,
    a: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SimplexParams {
    len: u32,
    rows: u32,
    shift: u32,
    base_index: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TieParams {
    n: u32,
    rows: u32,
    block: u32,
    shift: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ExpGradParams {
    len: u32,
    rows: u32,
    shift: u32,
    shift_g: u32,
    row0: u32,
    a: f32,
    _pad: [u32; 2],
}

/// Settings of [`WgpuPerceptron::with_options`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Use at most this many bytes per storage binding (and create the device with that limit),
    /// instead of the adapter's maximum. Lowering it splits the data and windows the long
    /// vectors exactly as a multi-GiB problem would on the real limit.
    pub max_binding_bytes: Option<u64>,
    /// The element type X (the training, dev and test inputs) is stored in on the device.
    pub storage: Storage,
}

/// A device-resident f32 vector: a storage buffer and its length in elements.
#[derive(Debug)]
pub struct WgpuVec {
    buf: wgpu::Buffer,
    len: usize,
}

impl WgpuVec {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buf
    }
}

/// Rows [row0, row0 + rows) of a data set, in their own buffers.
struct Shard {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    row0: usize,
    rows: usize,
    /// Index of the shard's first 256-row chunk among the set's chunks.
    chunk0: usize,
}

struct DeviceSet {
    shards: Vec<Shard>,
    rows: usize,
    chunks: usize,
}

#[derive(Clone)]
struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

struct Kernels {
    rows: Kernel,
    combine: Kernel,
    reduce_loss: Kernel,
    check_finite: Kernel,
    project_rows: Kernel,
    exp_grad_sums: Kernel,
    exp_grad_apply: Kernel,
    axpy: Kernel,
    scale: Kernel,
    max_abs: Kernel,
    tie_rows: Kernel,
}

#[derive(Clone, Copy)]
enum Access {
    Read,
    ReadWrite,
    Uniform,
}

/// A buffer range bound to one binding.
struct Bind {
    binding: u32,
    buf: wgpu::Buffer,
    offset: u64,
    /// None: to the end of the buffer.
    size: Option<u64>,
}

fn whole(binding: u32, buf: &wgpu::Buffer) -> Bind {
    Bind { binding, buf: buf.clone(), offset: 0, size: None }
}

/// One compute dispatch: a kernel, its buffers, its parameter block and its workgroup count.
struct Dispatch {
    kernel: Kernel,
    binds: Vec<Bind>,
    param_binding: u32,
    params: Vec<u8>,
    groups: u32,
}

/// Scratch buffers that stand in for bindings a kernel mode does not use (one per binding, so no
/// two writable bindings alias).
struct Dummies {
    vecb: wgpu::Buffer,
    gamma: wgpu::Buffer,
    out: wgpu::Buffer,
    partials: wgpu::Buffer,
    loss_partials: wgpu::Buffer,
    cv: wgpu::Buffer,
    p2: wgpu::Buffer,
}

/// The perceptron engine on a wgpu device: X in f32 or f16 ([`Storage`]), everything else f32.
pub struct WgpuPerceptron {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    storage: Storage,
    dim: usize,
    train: DeviceSet,
    dev: DeviceSet,
    test: DeviceSet,
    kernels: Kernels,
    /// [train chunks, D]: the training pass's partial sums (gradient or HVP).
    partials_train: wgpu::Buffer,
    /// [max(dev, test) chunks, D]: an evaluation set's gradient partial sums.
    partials_eval: wgpu::Buffer,
    /// [max(dev, test) chunks]: an evaluation set's per-chunk loss sums.
    loss_partials: wgpu::Buffer,
    /// [4] f32 scalars computed on the device, and their readback buffer.
    scalars: wgpu::Buffer,
    scalars_staging: wgpu::Buffer,
    /// [2] u32: the non-finite flag of `project_simplex_rows` and the first bad index.
    flag: wgpu::Buffer,
    flag_staging: wgpu::Buffer,
    /// Uniform parameter blocks, PARAM_SLOT bytes each, rewritten by every call.
    params: wgpu::Buffer,
    /// The dispatches of the steps recorded inside `run_steps`, submitted at its end as one
    /// command buffer (None: every step is submitted at once).
    recording: Option<Vec<Dispatch>>,
    dummies: Dummies,
    /// Bytes one storage binding may span, and the offset alignment of a binding.
    max_binding: u64,
    align: u64,
    max_groups: usize,
    max_buffer: u64,
    /// The first device error reported by wgpu (validation, out of memory, lost device).
    error: Arc<Mutex<Option<String>>>,
    unwaited: u32,
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: BACKEND.into(), reason: reason.into() }
}

fn device_error(problem: impl Into<String>) -> Error {
    Error::Device { backend: BACKEND.into(), problem: problem.into() }
}

/// Rows per shard for rows of `dim` values of `elem_bytes` bytes: whole chunks, a shard within one
/// binding, a [rows] f32 window (plus alignment slack) within one binding, and ≤ `max_groups`
/// workgroups.
fn shard_rows(dim: usize, elem_bytes: usize, max_binding: u64, align: u64, max_groups: usize) -> Result<usize> {
    let by_x = max_binding / (dim * elem_bytes) as u64;
    let by_window = (max_binding.saturating_sub(align)) / 4;
    let rows = by_x.min(by_window).min((max_groups * CHUNK_ROWS) as u64) as usize;
    if rows == 0 {
        return Err(Error::bad_input(
            format!("wgpu data (D = {dim})"),
            format!("one row of {} bytes exceeds the device's storage binding limit of {max_binding} bytes", dim * elem_bytes),
        ));
    }
    Ok(if rows >= CHUNK_ROWS { rows - rows % CHUNK_ROWS } else { rows })
}

impl WgpuPerceptron {
    /// The engine on the default adapter (high-performance preference; the `WGPU_BACKEND` and
    /// `WGPU_POWER_PREF` environment variables are honoured). No adapter: `Error::Unavailable`.
    pub fn new(data: &PerceptronData) -> Result<Self> {
        Self::with_options(data, &Options::default())
    }

    pub fn with_options(data: &PerceptronData, opts: &Options) -> Result<Self> {
        data.validate()?;
        let (device, queue, info) = open_device(opts)?;
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        {
            let slot = error.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
                if s.is_none() {
                    *s = Some(e.to_string());
                }
            }));
        }
        let limits = device.limits();
        let align = (limits.min_storage_buffer_offset_alignment as u64).max(4);
        let max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size) / align * align;
        let max_groups = limits.max_compute_workgroups_per_dimension as usize;
        if limits.max_storage_buffers_per_shader_stage < 8 || max_binding < 2 * align || max_groups == 0 {
            return Err(unavailable(format!("adapter {} has too small limits for the kernels", info.name)));
        }

        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let kernels = Kernels::new(&device, opts.storage);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(device_error(format!("compiling the WGSL kernels on {}: {e}", info.name)));
        }

        let dim = data.dim;
        let stride = dim.next_multiple_of(4);
        let storage = opts.storage;
        let rows_per_shard = shard_rows(stride, storage.bytes(), max_binding, align, max_groups)?;
        let upload_set = |name: &str, set: &Examples| -> Result<DeviceSet> {
            let mut shards = Vec::new();
            let (mut row0, mut chunk0) = (0, 0);
            while row0 < set.len() {
                let rows = rows_per_shard.min(set.len() - row0);
                let init = |what: &str, contents: &[u8]| {
                    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(&format!("{what}_{name}[{row0}..]")),
                        contents,
                        usage: wgpu::BufferUsages::STORAGE,
                    })
                };
                // Rows padded with zeros to a multiple of 4 values: the kernels load X as vec4.
                let rows_x = &set.x[row0 * dim..(row0 + rows) * dim];
                let x = init("x", &storage.encode_rows(&format!("wgpu x_{name}"), rows_x, dim, stride, row0)?);
                let y = init("y", bytemuck::cast_slice(&set.y[row0..row0 + rows]));
                shards.push(Shard { x, y, row0, rows, chunk0 });
                row0 += rows;
                chunk0 += rows.div_ceil(CHUNK_ROWS);
            }
            Ok(DeviceSet { shards, rows: set.len(), chunks: chunk0 })
        };
        let train = upload_set("train", &data.train)?;
        let dev = upload_set("dev", &data.dev)?;
        let test = upload_set("test", &data.test)?;

        let eval_chunks = dev.chunks.max(test.chunks);
        for (what, bytes) in [("train partial sums", train.chunks * dim * 4), ("evaluation partial sums", eval_chunks * dim * 4)] {
            if bytes as u64 > max_binding {
                return Err(Error::bad_input(
                    format!("wgpu {what}"),
                    format!(
                        "{bytes} bytes (N/256 × D f32) exceed one storage binding ({max_binding} bytes): too many examples for this device"
                    ),
                ));
            }
        }
        let storage = wgpu::BufferUsages::STORAGE;
        let buffer = |label: &str, size: usize, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (size.max(4) as u64).next_multiple_of(4),
                usage,
                mapped_at_creation: false,
            })
        };
        let readback = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let dummy = |label: &str| buffer(label, 16, storage);
        let engine = WgpuPerceptron {
            partials_train: buffer("partials_train", train.chunks * dim * 4, storage),
            partials_eval: buffer("partials_eval", eval_chunks * dim * 4, storage),
            loss_partials: buffer("loss_partials", eval_chunks * 4, storage),
            scalars: buffer("scalars", 16, storage | wgpu::BufferUsages::COPY_SRC),
            scalars_staging: buffer("scalars_staging", 16, readback),
            flag: buffer("flag", 8, storage | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST),
            flag_staging: buffer("flag_staging", 8, readback),
            params: buffer("params", 64 * PARAM_SLOT as usize, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST),
            recording: None,
            dummies: Dummies {
                vecb: dummy("dummy_vecb"),
                gamma: dummy("dummy_gamma"),
                out: dummy("dummy_out"),
                partials: dummy("dummy_partials"),
                loss_partials: dummy("dummy_loss_partials"),
                cv: dummy("dummy_cv"),
                p2: dummy("dummy_p2"),
            },
            device,
            queue,
            info,
            storage: opts.storage,
            dim,
            train,
            dev,
            test,
            kernels,
            max_binding,
            align,
            max_groups,
            max_buffer: limits.max_buffer_size,
            error,
            unwaited: 0,
        };
        engine.check_device()?;
        Ok(engine)
    }

    /// The adapter the engine runs on (name, backend, device type).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The device's limits (as requested: the adapter's, with `Options::max_binding_bytes` applied).
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// The element type X is stored in on the device.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Bytes per storage binding the engine uses (the device limit, or `Options::max_binding_bytes`).
    pub fn max_binding_bytes(&self) -> u64 {
        self.max_binding
    }

    /// Number of shards (buffers) the training matrix is split into.
    pub fn train_shards(&self) -> usize {
        self.train.shards.len()
    }

    /// Blocks until all submitted work has finished (for timing).
    pub fn sync(&mut self) -> Result<()> {
        self.flush_recorded()?;
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| device_error(format!("waiting for the device: {e}")))?;
        self.unwaited = 0;
        self.check_device()
    }

    fn check_device(&self) -> Result<()> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => Err(device_error(format!("device error on {}: {e}", self.info.name))),
            None => Ok(()),
        }
    }

    fn check_len(what: &str, v: &WgpuVec, len: usize) -> Result<()> {
        if v.len == len {
            Ok(())
        } else {
            Err(Error::shape(what, len, v.len))
        }
    }

    fn set(&self, set: Set) -> &DeviceSet {
        match set {
            Set::Dev => &self.dev,
            Set::Test => &self.test,
        }
    }

    fn new_buffer(&self, len: usize, label: &str) -> Result<wgpu::Buffer> {
        let size = (len.max(1) as u64) * 4;
        if size > self.max_buffer {
            return Err(Error::bad_input(
                format!("wgpu {label}"),
                format!("{len} f32 ({size} bytes) exceed the adapter's largest buffer ({} bytes)", self.max_buffer),
            ));
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// An aligned binding window over elements [start, start + count) of `buf`:
    /// (byte offset, byte size, element shift of `start` inside the window).
    fn window(&self, buf: &wgpu::Buffer, binding: u32, start: usize, count: usize) -> (Bind, u32) {
        let start_b = start as u64 * 4;
        let offset = start_b / self.align * self.align;
        let size = (start_b - offset + count.max(1) as u64 * 4).min(buf.size() - offset);
        (Bind { binding, buf: buf.clone(), offset, size: Some(size) }, ((start_b - offset) / 4) as u32)
    }

    /// Rows of `row_len` f32 per window of a row kernel (one workgroup per row).
    fn rows_per_window(&self, row_len: usize) -> Result<usize> {
        let rows_per = (((self.max_binding - self.align) / (row_len as u64 * 4)) as usize).min(self.max_groups);
        if rows_per == 0 {
            return Err(Error::bad_input(
                "wgpu policy",
                format!("a row of {row_len} f32 exceeds one storage binding ({} bytes)", self.max_binding),
            ));
        }
        Ok(rows_per)
    }

    /// check_finite over every window of `v`: a non-finite value sets flag[0] = 1 and flag[1] to
    /// the smallest such index.
    fn check_finite_dispatches(&self, v: &WgpuVec) -> Vec<Dispatch> {
        let per = self.elems_per_window();
        let mut ds = Vec::new();
        let mut start = 0;
        while start < v.len {
            let count = per.min(v.len - start);
            let (b, shift) = self.window(&v.buf, 0, start, count);
            let params = SimplexParams { len: count as u32, rows: 0, shift, base_index: start.min(u32::MAX as usize) as u32 };
            ds.push(Dispatch {
                kernel: self.kernels.check_finite.clone(),
                binds: vec![b, whole(1, &self.flag)],
                param_binding: 2,
                params: bytemuck::bytes_of(&params).to_vec(),
                groups: count.div_ceil(WG) as u32,
            });
            start += count;
        }
        ds
    }

    /// Submits `dispatches`, then waits and reads the two flag words back.
    fn submit_and_read_flag(&mut self, dispatches: Vec<Dispatch>) -> Result<[u32; 2]> {
        let (flag, staging) = (self.flag.clone(), self.flag_staging.clone());
        self.submit(dispatches, |enc| enc.copy_buffer_to_buffer(&flag, 0, &staging, 0, 8))?;
        let bytes = self.read_staging(&staging, 8)?;
        let words: &[u32] = bytemuck::cast_slice(&bytes);
        Ok([words[0], words[1]])
    }

    /// Elements per window of an elementwise kernel.
    fn elems_per_window(&self) -> usize {
        (((self.max_binding - self.align) / 4) as usize).min(self.max_groups * WG)
    }

    /// A forward or backward step's dispatches: recorded inside `run_steps`, else submitted.
    fn submit_step(&mut self, dispatches: Vec<Dispatch>) -> Result<()> {
        match &mut self.recording {
            Some(recorded) => {
                recorded.extend(dispatches);
                Ok(())
            }
            None => self.submit(dispatches, |_| {}),
        }
    }

    /// Submits the steps recorded so far (another engine call came inside `run_steps`: it must
    /// come after them in queue order), and goes on recording.
    fn flush_recorded(&mut self) -> Result<()> {
        match self.recording.as_mut().map(std::mem::take) {
            Some(recorded) if !recorded.is_empty() => self.submit(recorded, |_| {}),
            _ => Ok(()),
        }
    }

    /// Encodes `dispatches` into one compute pass, then `after` (copies), and submits.
    fn submit(&mut self, dispatches: Vec<Dispatch>, after: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        let needed = dispatches.len() as u64 * PARAM_SLOT;
        if needed > self.params.size() {
            self.params = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: needed.next_power_of_two(),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
        }
        if !dispatches.is_empty() {
            let mut bytes = vec![0u8; needed as usize];
            for (i, d) in dispatches.iter().enumerate() {
                bytes[i * PARAM_SLOT as usize..][..d.params.len()].copy_from_slice(&d.params);
            }
            self.queue.write_buffer(&self.params, 0, &bytes);
        }
        let groups: Vec<wgpu::BindGroup> = dispatches
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut entries: Vec<wgpu::BindGroupEntry> = d
                    .binds
                    .iter()
                    .map(|b| wgpu::BindGroupEntry {
                        binding: b.binding,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &b.buf,
                            offset: b.offset,
                            size: b.size.and_then(NonZeroU64::new),
                        }),
                    })
                    .collect();
                entries.push(wgpu::BindGroupEntry {
                    binding: d.param_binding,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &self.params,
                        offset: i as u64 * PARAM_SLOT,
                        size: NonZeroU64::new(d.params.len() as u64),
                    }),
                });
                self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &d.kernel.layout, entries: &entries })
            })
            .collect();
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        if !dispatches.is_empty() {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            for (d, g) in dispatches.iter().zip(&groups) {
                if d.groups > 0 {
                    pass.set_pipeline(&d.kernel.pipeline);
                    pass.set_bind_group(0, g, &[]);
                    pass.dispatch_workgroups(d.groups, 1, 1);
                }
            }
        }
        after(&mut encoder);
        self.queue.submit([encoder.finish()]);
        self.unwaited += 1;
        if self.unwaited >= POLL_EVERY {
            // Reclaims finished submissions' resources; does not block.
            let _ = self.device.poll(wgpu::PollType::Poll);
            self.unwaited = 0;
        }
        self.check_device()
    }

    /// Maps `staging` (after a submitted copy into it), waits for the device, returns its bytes.
    fn read_staging(&mut self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let slice = staging.slice(..size);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| device_error(format!("waiting for the device: {e}")))?;
        self.unwaited = 0;
        self.check_device()?;
        match rx.try_recv() {
            Ok(Ok(())) => {}
            other => return Err(device_error(format!("mapping a readback buffer failed: {other:?}"))),
        }
        let bytes = slice.get_mapped_range().map_err(|e| device_error(format!("reading a mapped buffer: {e}")))?.to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Submits `dispatches`, copies `scalars[0]` back and returns it.
    fn submit_and_read_scalar(&mut self, dispatches: Vec<Dispatch>) -> Result<f64> {
        let (src, dst) = (self.scalars.clone(), self.scalars_staging.clone());
        self.submit(dispatches, |enc| enc.copy_buffer_to_buffer(&src, 0, &dst, 0, 4))?;
        let bytes = self.read_staging(&dst, 4)?;
        Ok(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as f64)
    }

    /// One `rows` dispatch per shard of `set`. `gamma`/`out`: (buffer, element offset of row 0).
    #[allow(clippy::too_many_arguments)]
    fn rows_dispatches(
        &self,
        set: &DeviceSet,
        mode: u32,
        theta: &WgpuVec,
        vecb: Option<&WgpuVec>,
        gamma: Option<(&wgpu::Buffer, usize)>,
        out: Option<(&wgpu::Buffer, usize)>,
        partials: Option<&wgpu::Buffer>,
        loss_partials: Option<&wgpu::Buffer>,
        coef: f32,
        into: &mut Vec<Dispatch>,
    ) {
        let d = &self.dummies;
        for s in &set.shards {
            let (gamma_bind, gamma_shift) = match gamma {
                Some((buf, base)) => self.window(buf, 4, base + s.row0, s.rows),
                None => (whole(4, &d.gamma), 0),
            };
            let (out_bind, out_shift) = match out {
                Some((buf, base)) => self.window(buf, 5, base + s.row0, s.rows),
                None => (whole(5, &d.out), 0),
            };
            let params = RowParams {
                rows: s.rows as u32,
                dim: self.dim as u32,
                stride4: self.dim.div_ceil(4) as u32,
                mode,
                chunk0: s.chunk0 as u32,
                gamma_shift,
                out_shift,
                coef,
            };
            into.push(Dispatch {
                kernel: self.kernels.rows.clone(),
                binds: vec![
                    whole(0, &s.x),
                    whole(1, &s.y),
                    whole(2, &theta.buf),
                    whole(3, vecb.map_or(&d.vecb, |v| &v.buf)),
                    gamma_bind,
                    out_bind,
                    whole(6, partials.unwrap_or(&d.partials)),
                    whole(7, loss_partials.unwrap_or(&d.loss_partials)),
                ],
                param_binding: 8,
                params: bytemuck::bytes_of(&params).to_vec(),
                groups: s.rows.div_ceil(CHUNK_ROWS) as u32,
            });
        }
    }

    /// out = (v or 0) + beta·Σ p1 + delta·Σ p2 (sums over chunks, in order).
    #[allow(clippy::too_many_arguments)]
    fn combine_dispatch(
        &self,
        v: Option<&WgpuVec>,
        p1: &wgpu::Buffer,
        chunks1: usize,
        beta: f32,
        p2: Option<(&wgpu::Buffer, usize, f32)>,
        out: &WgpuVec,
    ) -> Dispatch {
        let (p2_buf, chunks2, delta) = p2.unwrap_or((&self.dummies.p2, 0, 0.0));
        let params = CombineParams {
            dim: self.dim as u32,
            chunks1: chunks1 as u32,
            chunks2: chunks2 as u32,
            use_v: v.is_some() as u32,
            beta,
            delta,
            _pad: [0; 2],
        };
        Dispatch {
            kernel: self.kernels.combine.clone(),
            binds: vec![whole(10, v.map_or(&self.dummies.cv, |v| &v.buf)), whole(11, p1), whole(12, p2_buf), whole(13, &out.buf)],
            param_binding: 14,
            params: bytemuck::bytes_of(&params).to_vec(),
            groups: self.dim.div_ceil(COMBINE_WG) as u32,
        }
    }

    /// target = scale · Σ loss_partials[..count], where target is `scalars[0]` or, with
    /// `slot = Some((buf, i))`, element i of `buf` (bound through an aligned window).
    fn reduce_loss_dispatch(&self, count: usize, scale: f32, slot: Option<(&wgpu::Buffer, usize)>) -> Dispatch {
        let (target, out_index) = match slot {
            Some((buf, i)) => self.window(buf, 21, i, 1),
            None => (whole(21, &self.scalars), 0),
        };
        let params = ScalarParams { count: count as u32, out_index, scale, _pad: 0 };
        Dispatch {
            kernel: self.kernels.reduce_loss.clone(),
            binds: vec![whole(20, &self.loss_partials), target],
            param_binding: 22,
            params: bytemuck::bytes_of(&params).to_vec(),
            groups: 1,
        }
    }

    /// Mean loss of an evaluation set (and its gradient into `grad`), as dispatches; the loss goes
    /// to `scalars[0]`, or to element i of `slot = Some((buf, i))`.
    fn mean_loss_dispatches(
        &self,
        set: &DeviceSet,
        theta: &WgpuVec,
        grad: Option<&WgpuVec>,
        slot: Option<(&wgpu::Buffer, usize)>,
        into: &mut Vec<Dispatch>,
    ) {
        let inv = (1.0 / set.rows as f64) as f32;
        match grad {
            None => self.rows_dispatches(set, mode::LOSS, theta, None, None, None, None, Some(&self.loss_partials), 0.0, into),
            Some(g) => {
                self.rows_dispatches(
                    set,
                    mode::GRAD,
                    theta,
                    None,
                    None,
                    None,
                    Some(&self.partials_eval),
                    Some(&self.loss_partials),
                    0.0,
                    into,
                );
                into.push(self.combine_dispatch(None, &self.partials_eval, set.chunks, inv, None, g));
            }
        }
        into.push(self.reduce_loss_dispatch(set.chunks, inv, slot));
    }

    /// Elementwise kernel over [0, len) in windows: `make(window start, count, x binding, shift x,
    /// y binding, shift y)`.
    fn vector_dispatches(
        &self,
        kernel: &Kernel,
        x: (&wgpu::Buffer, u32),
        y: Option<(&wgpu::Buffer, u32)>,
        len: usize,
        a: f32,
        param_binding: u32,
    ) -> Vec<Dispatch> {
        let per = self.elems_per_window();
        let mut out = Vec::new();
        let mut start = 0;
        while start < len {
            let count = per.min(len - start);
            let (bx, sx) = self.window(x.0, x.1, start, count);
            let mut binds = vec![bx];
            let mut sy = 0;
            if let Some((ybuf, ybind)) = y {
                let (b, s) = self.window(ybuf, ybind, start, count);
                binds.push(b);
                sy = s;
            }
            let params = VecParams { len: count as u32, shift_x: sx, shift_y: sy, a };
            out.push(Dispatch {
                kernel: kernel.clone(),
                binds,
                param_binding,
                params: bytemuck::bytes_of(&params).to_vec(),
                groups: count.div_ceil(WG) as u32,
            });
            start += count;
        }
        out
    }

    /// Row t of a [T, N] policy: at least (t + 1)·N elements.
    fn check_policy(&self, what: &str, gamma: &WgpuVec, t: usize) -> Result<()> {
        let n = self.train.rows;
        if gamma.len < (t + 1) * n {
            return Err(Error::shape(what, format!("at least {} rows of {n}", t + 1), gamma.len));
        }
        Ok(())
    }
}

/// Instance, adapter, device. Any failure (no Vulkan/Metal/DX12 driver, no adapter, even a panic
/// inside the driver probe) is `Error::Unavailable`.
fn open_device(opts: &Options) -> Result<(wgpu::Device, wgpu::Queue, wgpu::AdapterInfo)> {
    let open = || -> Result<(wgpu::Device, wgpu::Queue, wgpu::AdapterInfo)> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let power_preference = wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions { power_preference, ..Default::default() }))
            .map_err(|e| unavailable(format!("no adapter ({e})")))?;
        let info = adapter.get_info();
        let required_features = match opts.storage {
            Storage::F32 => wgpu::Features::empty(),
            Storage::F16 => wgpu::Features::SHADER_F16,
            Storage::Bf16 => {
                return Err(Error::config("storage", "bf16", "WGSL has no bf16 type: the wgpu backend stores X as f32 or f16"))
            }
        };
        if !adapter.features().contains(required_features) {
            // The backend `wgpu-f16` is unavailable; plain `wgpu` (f32 storage) is not.
            return Err(Error::Unavailable {
                backend: format!("{BACKEND}-{}", opts.storage.name()),
                reason: format!(
                    "adapter {} ({:?}) lacks wgpu::Features::SHADER_F16, needed for f16 storage of X; use f32 storage",
                    info.name, info.backend
                ),
            });
        }
        let mut limits = adapter.limits();
        if let Some(cap) = opts.max_binding_bytes {
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(cap);
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("learnlaw"),
            required_features,
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| unavailable(format!("adapter {} refused a device ({e})", info.name)))?;
        Ok((device, queue, info))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(unavailable(format!("wgpu panicked while opening a device: {msg}")))
        }
    }
}

/// perceptron.wgsl for a storage type of X: the file as is for f32; for f16 the one type
/// substitution `alias xelem = f32;` → `f16` (the kernels convert each loaded vec4 of X to f32),
/// plus the `enable f16;` directive. One source, two pipelines' worth of WGSL.
fn perceptron_wgsl(storage: Storage) -> std::borrow::Cow<'static, str> {
    match storage {
        Storage::F32 | Storage::Bf16 => PERCEPTRON_WGSL.into(),
        Storage::F16 => {
            const ALIAS: &str = "alias xelem = f32;";
            debug_assert_eq!(PERCEPTRON_WGSL.matches(ALIAS).count(), 1, "perceptron.wgsl must declare `{ALIAS}` once");
            format!("enable f16;\n{}", PERCEPTRON_WGSL.replacen(ALIAS, "alias xelem = f16;", 1)).into()
        }
    }
}

impl Kernels {
    fn new(device: &wgpu::Device, storage: Storage) -> Self {
        let module = |label: &str, src: &str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(src.into()) })
        };
        let perceptron = module(&format!("perceptron.wgsl ({})", storage.name()), &perceptron_wgsl(storage));
        let simplex = module("simplex.wgsl", SIMPLEX_WGSL);
        let vector = module("vector.wgsl", VECTOR_WGSL);
        use Access::*;
        let kernel = |module: &wgpu::ShaderModule, entry: &str, binds: &[(u32, Access)]| {
            let entries: Vec<wgpu::BindGroupLayoutEntry> = binds
                .iter()
                .map(|&(binding, access)| wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: match access {
                            Read => wgpu::BufferBindingType::Storage { read_only: true },
                            ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                            Uniform => wgpu::BufferBindingType::Uniform,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &entries });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module,
                entry_point: Some(entry),
                // Every kernel writes its workgroup memory before reading it.
                compilation_options: wgpu::PipelineCompilationOptions { constants: &[], zero_initialize_workgroup_memory: false },
                cache: None,
            });
            Kernel { pipeline, layout }
        };
        Kernels {
            rows: kernel(
                &perceptron,
                "rows",
                &[(0, Read), (1, Read), (2, Read), (3, Read), (4, Read), (5, ReadWrite), (6, ReadWrite), (7, ReadWrite), (8, Uniform)],
            ),
            combine: kernel(&perceptron, "combine", &[(10, Read), (11, Read), (12, Read), (13, ReadWrite), (14, Uniform)]),
            reduce_loss: kernel(&perceptron, "reduce_loss", &[(20, Read), (21, ReadWrite), (22, Uniform)]),
            check_finite: kernel(&simplex, "check_finite", &[(0, Read), (1, ReadWrite), (2, Uniform)]),
            project_rows: kernel(&simplex, "project_rows", &[(3, ReadWrite), (4, Read), (5, Uniform)]),
            exp_grad_sums: kernel(&simplex, "exp_grad_sums", &[(6, Read), (7, Read), (8, ReadWrite), (9, ReadWrite), (10, Uniform)]),
            exp_grad_apply: kernel(&simplex, "exp_grad_apply", &[(11, ReadWrite), (12, Read), (13, Read), (14, Read), (15, Uniform)]),
            axpy: kernel(&vector, "axpy", &[(0, Read), (1, ReadWrite), (2, Uniform)]),
            scale: kernel(&vector, "scale", &[(3, ReadWrite), (4, Uniform)]),
            max_abs: kernel(&vector, "max_abs", &[(5, Read), (6, ReadWrite), (7, Uniform)]),
            tie_rows: kernel(&vector, "tie_rows", &[(8, ReadWrite), (9, Uniform)]),
        }
    }
}

impl Engine for WgpuPerceptron {
    type Real = f32;
    type Vec = WgpuVec;

    fn name(&self) -> String {
        format!("{BACKEND}-{}", self.storage.name())
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

    fn zeros(&mut self, len: usize) -> Result<WgpuVec> {
        self.flush_recorded()?;
        // wgpu zero-initialises new buffers.
        let buf = self.new_buffer(len, "vector")?;
        self.check_device()?; // out of memory is reported through the error handler
        Ok(WgpuVec { buf, len })
    }

    fn upload(&mut self, host: &[f32]) -> Result<WgpuVec> {
        self.flush_recorded()?;
        let v = self.zeros(host.len())?;
        if !host.is_empty() {
            self.queue.write_buffer(&v.buf, 0, bytemuck::cast_slice(host));
        }
        self.check_device()?;
        Ok(v)
    }

    fn download(&mut self, v: &WgpuVec) -> Result<Vec<f32>> {
        self.flush_recorded()?;
        let total = v.len as u64 * 4;
        let mut out = Vec::with_capacity(v.len);
        if total == 0 {
            return Ok(out);
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("download"),
            size: total.min(STAGING_MAX),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut done = 0;
        while done < total {
            let size = (total - done).min(STAGING_MAX);
            let (src, dst) = (v.buf.clone(), staging.clone());
            self.submit(Vec::new(), |enc| enc.copy_buffer_to_buffer(&src, done, &dst, 0, size))?;
            let bytes = self.read_staging(&staging, size)?;
            out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            done += size;
        }
        Ok(out)
    }

    fn copy(&mut self, src: &WgpuVec, dst: &mut WgpuVec) -> Result<()> {
        self.flush_recorded()?;
        Self::check_len("copy destination", dst, src.len)?;
        if src.len == 0 {
            return Ok(());
        }
        let (s, d, size) = (src.buf.clone(), dst.buf.clone(), src.len as u64 * 4);
        self.submit(Vec::new(), |enc| enc.copy_buffer_to_buffer(&s, 0, &d, 0, size))
    }

    fn scale(&mut self, a: f64, x: &mut WgpuVec) -> Result<()> {
        self.flush_recorded()?;
        let ds = self.vector_dispatches(&self.kernels.scale, (&x.buf, 3), None, x.len, a as f32, 4);
        if ds.is_empty() {
            return Ok(());
        }
        self.submit(ds, |_| {})
    }

    fn axpy(&mut self, a: f64, x: &WgpuVec, y: &mut WgpuVec) -> Result<()> {
        self.flush_recorded()?;
        Self::check_len("axpy y", y, x.len)?;
        let ds = self.vector_dispatches(&self.kernels.axpy, (&x.buf, 0), Some((&y.buf, 1)), x.len, a as f32, 2);
        if ds.is_empty() {
            return Ok(());
        }
        self.submit(ds, |_| {})
    }

    fn project_simplex_rows(&mut self, v: &mut WgpuVec, row_len: usize) -> Result<()> {
        self.flush_recorded()?;
        let rows = rows_of("policy rows", v.len, row_len)?;
        if v.len == 0 {
            return Ok(());
        }
        let rows_per = self.rows_per_window(row_len)?;
        self.queue.write_buffer(&self.flag, 0, bytemuck::cast_slice(&[0u32, u32::MAX]));
        // Pass 1: any non-finite value anywhere sets the flag.
        let mut ds = self.check_finite_dispatches(v);
        // Pass 2: one workgroup per row, skipped entirely when the flag is set.
        let mut r0 = 0;
        while r0 < rows {
            let count = rows_per.min(rows - r0);
            let (b, shift) = self.window(&v.buf, 3, r0 * row_len, count * row_len);
            let params = SimplexParams { len: row_len as u32, rows: count as u32, shift, base_index: 0 };
            ds.push(Dispatch {
                kernel: self.kernels.project_rows.clone(),
                binds: vec![b, whole(4, &self.flag)],
                param_binding: 5,
                params: bytemuck::bytes_of(&params).to_vec(),
                groups: count as u32,
            });
            r0 += count;
        }
        match self.submit_and_read_flag(ds)? {
            [0, _] => Ok(()),
            [_, i] => Err(Error::non_finite_policy(i as usize, row_len)),
        }
    }

    fn max_abs(&mut self, x: &WgpuVec) -> Result<f64> {
        self.flush_recorded()?;
        if x.len == 0 {
            return Ok(0.0);
        }
        self.queue.write_buffer(&self.flag, 0, bytemuck::cast_slice(&[0u32, 0]));
        let mut ds = self.vector_dispatches(&self.kernels.max_abs, (&x.buf, 5), None, x.len, 0.0, 7);
        ds.iter_mut().for_each(|d| d.binds.push(whole(6, &self.flag)));
        let [bits, _] = self.submit_and_read_flag(ds)?;
        Ok(f32::from_bits(bits) as f64)
    }

    fn tie_rows(&mut self, v: &mut WgpuVec, block: usize, row_len: usize) -> Result<()> {
        self.flush_recorded()?;
        let rows = tie_rows_shape(v.len, block, row_len)?;
        // Windows of whole blocks, within a binding and the workgroup limit.
        let by_binding = ((self.max_binding - self.align) / (row_len as u64 * 4)) as usize;
        let blocks_per = (by_binding / block).min(self.max_groups * WG / row_len);
        if rows > 0 && blocks_per == 0 {
            return Err(Error::bad_input(
                "wgpu policy",
                format!("a block of {block} rows of {row_len} f32 exceeds one storage binding ({} bytes)", self.max_binding),
            ));
        }
        let mut ds = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let count = (blocks_per * block).min(rows - r0);
            let (bind, shift) = self.window(&v.buf, 8, r0 * row_len, count * row_len);
            let params = TieParams { n: row_len as u32, rows: count as u32, block: block as u32, shift };
            ds.push(Dispatch {
                kernel: self.kernels.tie_rows.clone(),
                binds: vec![bind],
                param_binding: 9,
                params: bytemuck::bytes_of(&params).to_vec(),
                groups: (count.div_ceil(block) * row_len).div_ceil(WG) as u32,
            });
            r0 += count;
        }
        if ds.is_empty() {
            return Ok(());
        }
        self.submit(ds, |_| {})
    }

    fn exp_grad_rows(&mut self, gamma: &mut WgpuVec, grad: &WgpuVec, step: f64, row_len: usize) -> Result<()> {
        self.flush_recorded()?;
        let rows = rows_of_pair("exp_grad_rows", gamma.len, grad.len, row_len)?;
        if gamma.len == 0 {
            return Ok(());
        }
        let rows_per = self.rows_per_window(row_len)?;
        let stats = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("exp_grad_stats"),
            size: (rows * 8) as u64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&self.flag, 0, bytemuck::cast_slice(&[0u32, u32::MAX]));
        let mut ds = self.check_finite_dispatches(grad);
        for (kernel, binds) in [(&self.kernels.exp_grad_sums, [6, 7, 8, 9, 10]), (&self.kernels.exp_grad_apply, [11, 12, 13, 14, 15])] {
            let mut r0 = 0;
            while r0 < rows {
                let count = rows_per.min(rows - r0);
                let (bg, shift) = self.window(&gamma.buf, binds[0], r0 * row_len, count * row_len);
                let (bd, shift_g) = self.window(&grad.buf, binds[1], r0 * row_len, count * row_len);
                let params = ExpGradParams {
                    len: row_len as u32,
                    rows: count as u32,
                    shift,
                    shift_g,
                    row0: r0 as u32,
                    a: step as f32,
                    _pad: [0; 2],
                };
                ds.push(Dispatch {
                    kernel: kernel.clone(),
                    binds: vec![bg, bd, whole(binds[2], &stats), whole(binds[3], &self.flag)],
                    param_binding: binds[4],
                    params: bytemuck::bytes_of(&params).to_vec(),
                    groups: count as u32,
                });
                r0 += count;
            }
        }
        match self.submit_and_read_flag(ds)? {
            [0, _] => Ok(()),
            [1, i] => Err(Error::Numerical(format!(
                "non-finite policy gradient at row {}, example {}",
                i as usize / row_len,
                i as usize % row_len
            ))),
            [_, row] => {
                Err(Error::Numerical(format!("exponentiated-gradient row {row}: Σ γ·exp(−step·g) is not a positive finite number")))
            }
        }
    }

    fn forward_step(
        &mut self,
        theta: &WgpuVec,
        gamma: &WgpuVec,
        t: usize,
        eta: f64,
        theta_next: &mut WgpuVec,
        dev_loss: Option<(&mut WgpuVec, usize)>,
    ) -> Result<()> {
        let dim = self.dim;
        Self::check_len("theta", theta, dim)?;
        Self::check_len("theta_next", theta_next, dim)?;
        self.check_policy("policy", gamma, t)?;
        if let Some((curve, i)) = &dev_loss {
            if *i >= curve.len {
                return Err(Error::shape("dev-loss curve", format!("more than {i} entries"), curve.len));
            }
        }
        let n = self.train.rows;
        let mut ds = Vec::new();
        self.rows_dispatches(
            &self.train,
            mode::FORWARD,
            theta,
            None,
            Some((&gamma.buf, t * n)),
            None,
            Some(&self.partials_train),
            None,
            0.0,
            &mut ds,
        );
        ds.push(self.combine_dispatch(Some(theta), &self.partials_train, self.train.chunks, -(eta as f32), None, theta_next));
        if let Some((curve, i)) = dev_loss {
            // reduce_loss's final stage writes L_dev(θ) straight into curve[i]: no readback, no wait.
            self.mean_loss_dispatches(&self.dev, theta, None, Some((&curve.buf, i)), &mut ds);
        }
        self.submit_step(ds)
    }

    fn backward_step(
        &mut self,
        theta: &WgpuVec,
        gamma: &WgpuVec,
        t: usize,
        lambda_next: &WgpuVec,
        eta: f64,
        dev_weight: f64,
        grad_gamma: &mut WgpuVec,
        lambda: &mut WgpuVec,
    ) -> Result<()> {
        let dim = self.dim;
        Self::check_len("theta", theta, dim)?;
        Self::check_len("lambda_next", lambda_next, dim)?;
        Self::check_len("lambda", lambda, dim)?;
        self.check_policy("policy", gamma, t)?;
        Self::check_len("grad_gamma", grad_gamma, gamma.len)?;
        let n = self.train.rows;
        let mut ds = Vec::new();
        self.rows_dispatches(
            &self.train,
            mode::BACKWARD,
            theta,
            Some(lambda_next),
            Some((&gamma.buf, t * n)),
            Some((&grad_gamma.buf, t * n)),
            Some(&self.partials_train),
            None,
            -(eta as f32),
            &mut ds,
        );
        self.rows_dispatches(
            &self.dev,
            mode::GRAD,
            theta,
            None,
            None,
            None,
            Some(&self.partials_eval),
            Some(&self.loss_partials),
            0.0,
            &mut ds,
        );
        let dev_scale = (dev_weight / self.dev.rows as f64) as f32;
        ds.push(self.combine_dispatch(
            Some(lambda_next),
            &self.partials_train,
            self.train.chunks,
            -(eta as f32),
            Some((&self.partials_eval, self.dev.chunks, dev_scale)),
            lambda,
        ));
        self.submit_step(ds)
    }

    /// Records the steps and submits all their dispatches in one command buffer at the end (one
    /// submission per unroll pass instead of one per step). A failing step submits what was
    /// recorded before it, as direct calls would have.
    fn run_steps<T>(&mut self, steps: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.recording.is_some() {
            return steps(self);
        }
        self.recording = Some(Vec::new());
        let out = steps(self);
        let recorded = self.recording.take().unwrap_or_default();
        if !recorded.is_empty() {
            self.submit(recorded, |_| {})?;
        }
        out
    }

    fn loss(&mut self, set: Set, theta: &WgpuVec) -> Result<f64> {
        self.flush_recorded()?;
        Self::check_len("theta", theta, self.dim)?;
        let mut ds = Vec::new();
        self.mean_loss_dispatches(self.set(set), theta, None, None, &mut ds);
        self.submit_and_read_scalar(ds)
    }

    fn loss_grad(&mut self, set: Set, theta: &WgpuVec, grad: &mut WgpuVec) -> Result<f64> {
        self.flush_recorded()?;
        Self::check_len("theta", theta, self.dim)?;
        Self::check_len("grad", grad, self.dim)?;
        let mut ds = Vec::new();
        self.mean_loss_dispatches(self.set(set), theta, Some(grad), None, &mut ds);
        self.submit_and_read_scalar(ds)
    }

    fn train_losses(&mut self, theta: &WgpuVec, out: &mut WgpuVec) -> Result<()> {
        self.flush_recorded()?;
        Self::check_len("theta", theta, self.dim)?;
        Self::check_len("losses", out, self.train.rows)?;
        let mut ds = Vec::new();
        self.rows_dispatches(&self.train, mode::TRAIN_LOSS, theta, None, None, Some((&out.buf, 0)), None, None, 0.0, &mut ds);
        self.submit(ds, |_| {})
    }

    fn train_dots(&mut self, theta: &WgpuVec, v: &WgpuVec, out: &mut WgpuVec) -> Result<()> {
        self.flush_recorded()?;
        Self::check_len("theta", theta, self.dim)?;
        Self::check_len("v", v, self.dim)?;
        Self::check_len("dots", out, self.train.rows)?;
        let mut ds = Vec::new();
        self.rows_dispatches(&self.train, mode::TRAIN_DOT, theta, Some(v), None, Some((&out.buf, 0)), None, None, 0.0, &mut ds);
        self.submit(ds, |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel file parses and validates (types, bindings, uniformity of barriers) with naga,
    /// the same front end wgpu uses; needs no adapter.
    #[test]
    fn kernels_validate_with_naga() {
        for (name, src) in [("perceptron.wgsl", PERCEPTRON_WGSL), ("simplex.wgsl", SIMPLEX_WGSL), ("vector.wgsl", VECTOR_WGSL)] {
            let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::default())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        }
    }

    /// The f16-storage variant of perceptron.wgsl (generated from the same source) parses and
    /// validates with the SHADER_FLOAT16 capability, really stores X as f16, and is refused
    /// without the capability. Needs no adapter, so the f16 kernels are checked even where no
    /// adapter has SHADER_F16 (lavapipe 22.3, the CI adapter, has it and also runs them).
    #[test]
    fn f16_variant_validates_with_naga() {
        let src = perceptron_wgsl(Storage::F16);
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("f16 perceptron.wgsl: {}", e.emit_to_string(&src)));
        let x = module.global_variables.iter().find(|(_, v)| v.name.as_deref() == Some("x")).expect("binding x").1;
        let naga::TypeInner::Array { base, .. } = module.types[x.ty].inner else { panic!("x is not an array") };
        assert_eq!(
            module.types[base].inner,
            naga::TypeInner::Vector { size: naga::VectorSize::Quad, scalar: naga::Scalar::F16 },
            "x must be vec4<f16>"
        );
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::SHADER_FLOAT16)
            .validate(&module)
            .unwrap_or_else(|e| panic!("f16 perceptron.wgsl: {}", e.emit_to_string(&src)));
        assert!(
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::default())
                .validate(&module)
                .is_err(),
            "f16 kernels must need the SHADER_FLOAT16 capability"
        );
        assert_eq!(perceptron_wgsl(Storage::F32), PERCEPTRON_WGSL);
    }

    #[test]
    fn shards_are_whole_chunks_within_a_binding() {
        // 128 MiB, D = 128: 262144 rows per shard, a multiple of 256.
        assert_eq!(shard_rows(128, 4, 128 << 20, 256, 65535).unwrap(), 262144);
        // f16: twice the rows per binding.
        assert_eq!(shard_rows(128, 2, 128 << 20, 256, 65535).unwrap(), 524288);
        // D = 1: limited by the window of a [rows] vector and by the workgroup count.
        assert_eq!(shard_rows(1, 4, 128 << 20, 256, 65535).unwrap(), 65535 * 256);
        assert_eq!(shard_rows(1, 4, 4096, 256, 65535).unwrap(), 768);
        // Rows too long for a whole chunk: fewer rows, still ≥ 1.
        assert_eq!(shard_rows(1000, 4, 4096 * 10, 256, 65535).unwrap(), 10);
        assert!(shard_rows(2000, 4, 4096, 256, 65535).is_err());
        assert_eq!(shard_rows(2000, 2, 4096, 256, 65535).unwrap(), 1);
    }
}
