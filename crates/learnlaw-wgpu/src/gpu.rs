//! The device context every wgpu engine shares: adapter and device, error capture, buffers and
//! their binding windows, compute pipelines, and the submission of dispatches (one command buffer
//! per call, or per unroll pass inside `run_steps`).
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use learnlaw_core::{Error, Result, Storage};

use crate::policy_ops::PolicyKernels;

pub(crate) const BACKEND: &str = "wgpu";
/// Invocations per workgroup of the elementwise kernels.
pub(crate) const WG: usize = 256;
/// Bytes per parameter block in the uniform buffer (the largest allowed uniform offset alignment).
const PARAM_SLOT: u64 = 256;
/// Largest staging buffer used for downloads; longer vectors come back in pieces.
const STAGING_MAX: u64 = 64 << 20;
/// Non-blocking device polls (resource reclamation) every this many submissions without a wait.
const POLL_EVERY: u32 = 32;

/// Settings of an engine's device (`WgpuPerceptron::with_options`).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Use at most this many bytes per storage binding (and create the device with that limit),
    /// instead of the adapter's maximum. Lowering it splits the data and windows the long
    /// vectors exactly as a multi-GiB problem would on the real limit.
    pub max_binding_bytes: Option<u64>,
    /// The element type X (the training, dev and test inputs) is stored in on the device.
    pub storage: Storage,
    /// Sum through workgroup memory even where the adapter offers subgroup operations (the
    /// kernels' variant for adapters without them; for testing it).
    pub no_subgroups: bool,
}

/// A device-resident f32 vector: a storage buffer and its length in elements.
#[derive(Debug)]
pub struct WgpuVec {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) len: usize,
    /// Where the buffer goes when the vector is dropped, so the bind groups that hold it go too.
    dropped: Dropped,
}

/// Buffers of dropped vectors, not yet evicted from the bind-group cache.
type Dropped = Arc<Mutex<Vec<wgpu::Buffer>>>;

impl Drop for WgpuVec {
    fn drop(&mut self) {
        self.dropped.lock().unwrap_or_else(|p| p.into_inner()).push(self.buf.clone());
    }
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

/// A compiled compute pipeline and the layout of its bind group.
#[derive(Clone)]
pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Clone, Copy)]
pub(crate) enum Access {
    Read,
    ReadWrite,
    Uniform,
}

/// A buffer range bound to one binding.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Bind {
    pub binding: u32,
    pub buf: wgpu::Buffer,
    pub offset: u64,
    /// None: to the end of the buffer.
    pub size: Option<u64>,
}

pub(crate) fn whole(binding: u32, buf: &wgpu::Buffer) -> Bind {
    Bind { binding, buf: buf.clone(), offset: 0, size: None }
}

/// One compute dispatch: a kernel, its buffers, its parameter block and its workgroup count.
pub(crate) struct Dispatch {
    pub kernel: Kernel,
    pub binds: Vec<Bind>,
    pub param_binding: u32,
    pub params: Vec<u8>,
    pub groups: u32,
}

pub(crate) fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: BACKEND.into(), reason: reason.into() }
}

pub(crate) fn device_error(problem: impl Into<String>) -> Error {
    Error::Device { backend: BACKEND.into(), problem: problem.into() }
}

/// An error and its sources, one after another (wgpu's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s += &format!(": {inner}");
        source = inner.source();
    }
    s
}

pub(crate) fn check_len(what: &str, v: &WgpuVec, len: usize) -> Result<()> {
    if v.len == len {
        Ok(())
    } else {
        Err(Error::shape(what, len, v.len))
    }
}

/// The device of one engine and everything about it that is not task-specific.
pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// Bytes one storage binding may span, and the offset alignment of a binding.
    pub max_binding: u64,
    pub align: u64,
    pub max_groups: usize,
    max_buffer: u64,
    /// The kernels of the vector and simplex operations (policy_ops.rs), and their flag words.
    pub(crate) policy: PolicyKernels,
    /// [4] f32 scalars computed on the device, and their readback buffer.
    pub scalars: wgpu::Buffer,
    scalars_staging: wgpu::Buffer,
    /// Uniform parameter blocks, PARAM_SLOT bytes each, rewritten by every submission; each
    /// dispatch selects its block by a dynamic offset, so bind groups do not depend on it.
    params: wgpu::Buffer,
    bind_groups: BindGroups,
    /// Buffers of the engine's dropped vectors, to evict from `bind_groups`.
    dropped: Dropped,
    /// SUBGROUP enabled on the device: the adapter's smallest and largest subgroup size.
    subgroups: Option<(u32, u32)>,
    /// The dispatches of the steps recorded inside `run_steps`, submitted at its end as one
    /// command buffer (None: every step is submitted at once).
    recording: Option<Vec<Dispatch>>,
    /// The first device error reported by wgpu (validation, out of memory, lost device).
    error: Arc<Mutex<Option<String>>>,
    unwaited: u32,
}

impl Gpu {
    /// Opens the device (see `open_device`) and compiles the shared kernels.
    pub fn new(opts: &Options) -> Result<Self> {
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
        let subgroups = device.features().contains(wgpu::Features::SUBGROUP).then_some((info.subgroup_min_size, info.subgroup_max_size));
        let policy = compile(&device, &info, || PolicyKernels::new(&device))?;
        let storage = wgpu::BufferUsages::STORAGE;
        let readback = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let gpu = Gpu {
            scalars: buffer(&device, "scalars", 16, storage | wgpu::BufferUsages::COPY_SRC),
            scalars_staging: buffer(&device, "scalars_staging", 16, readback),
            params: buffer(&device, "params", 64 * PARAM_SLOT as usize, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST),
            bind_groups: BindGroups::default(),
            dropped: Dropped::default(),
            subgroups,
            policy,
            recording: None,
            max_binding,
            align,
            max_groups,
            max_buffer: limits.max_buffer_size,
            error,
            unwaited: 0,
            device,
            queue,
            info,
        };
        gpu.check_device()?;
        Ok(gpu)
    }

    /// Runs `build` (an engine's shader modules and pipelines) in a validation error scope: a
    /// kernel that does not compile is `Error::Device`.
    pub fn compile<K>(&self, build: impl FnOnce(&Gpu) -> K) -> Result<K> {
        compile(&self.device, &self.info, || build(self))
    }

    pub fn module(&self, label: &str, src: &str) -> wgpu::ShaderModule {
        module(&self.device, label, src)
    }

    pub fn kernel(&self, module: &wgpu::ShaderModule, entry: &str, binds: &[(u32, Access)]) -> Kernel {
        kernel(&self.device, module, entry, binds)
    }

    /// `kernel` with values for the module's `override` constants.
    pub fn kernel_with(&self, module: &wgpu::ShaderModule, entry: &str, binds: &[(u32, Access)], constants: &[(&str, f64)]) -> Kernel {
        kernel_with(&self.device, module, entry, binds, constants)
    }

    /// The adapter's smallest and largest subgroup size when the device has subgroup operations
    /// (wgpu Features::SUBGROUP, requested unless `Options::no_subgroups`).
    pub fn subgroup_sizes(&self) -> Option<(u32, u32)> {
        self.subgroups
    }

    /// Bind groups created so far, and held in the cache now.
    pub fn bind_groups(&self) -> (u64, usize) {
        (self.bind_groups.created, self.bind_groups.groups.len())
    }

    /// A buffer of `size` bytes (at least 4, rounded up to 4) that is not an engine vector.
    pub fn buffer(&self, label: &str, size: usize, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        buffer(&self.device, label, size, usage)
    }

    /// Blocks until all submitted work has finished.
    pub fn sync(&mut self) -> Result<()> {
        self.flush_recorded()?;
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| device_error(format!("waiting for the device: {e}")))?;
        self.unwaited = 0;
        self.check_device()
    }

    pub fn check_device(&self) -> Result<()> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => Err(device_error(format!("device error on {}: {e}", self.info.name))),
            None => Ok(()),
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

    /// A binding window over elements [start, start + count) of `buf` (count·4 + align ≤
    /// max_binding), and the element shift of `start` inside it. A buffer within one binding is
    /// bound whole. A larger one through the fixed window that holds the range, of the windows of
    /// one binding starting every half binding (any range of up to half a binding lies in one),
    /// else through a window of its own from `start` (aligned down). So the same call binds the
    /// same window every time, and finds its bind group in the cache.
    pub fn window(&self, buf: &wgpu::Buffer, binding: u32, start: usize, count: usize) -> (Bind, u32) {
        let (start_b, end_b) = (start as u64 * 4, (start + count.max(1)) as u64 * 4);
        let step = self.max_binding / 2 / self.align * self.align;
        let fixed = start_b / step * step;
        let offset = if buf.size() <= self.max_binding {
            0
        } else if end_b <= fixed + self.max_binding {
            fixed
        } else {
            start_b / self.align * self.align
        };
        let size = self.max_binding.min(buf.size() - offset);
        (Bind { binding, buf: buf.clone(), offset, size: Some(size) }, ((start_b - offset) / 4) as u32)
    }

    /// Rows of `row_len` f32 per window of a row kernel (one workgroup per row).
    pub fn rows_per_window(&self, row_len: usize) -> Result<usize> {
        let rows_per = (((self.max_binding - self.align) / (row_len as u64 * 4)) as usize).min(self.max_groups);
        if rows_per == 0 {
            return Err(Error::bad_input(
                "wgpu policy",
                format!("a row of {row_len} f32 exceeds one storage binding ({} bytes)", self.max_binding),
            ));
        }
        Ok(rows_per)
    }

    /// Elements per window of an elementwise kernel.
    pub fn elems_per_window(&self) -> usize {
        (((self.max_binding - self.align) / 4) as usize).min(self.max_groups * WG)
    }

    /// A forward or backward step's dispatches: recorded inside `run_steps`, else submitted.
    pub fn submit_step(&mut self, dispatches: Vec<Dispatch>) -> Result<()> {
        match &mut self.recording {
            Some(recorded) => {
                recorded.extend(dispatches);
                Ok(())
            }
            None => self.submit(dispatches, |_| {}),
        }
    }

    /// Starts recording steps (`run_steps`); false when a recording is already under way.
    pub fn start_recording(&mut self) -> bool {
        self.recording.is_none() && {
            self.recording = Some(Vec::new());
            true
        }
    }

    /// Ends the recording and submits what was recorded as one command buffer.
    pub fn finish_recording(&mut self) -> Result<()> {
        match self.recording.take() {
            Some(recorded) if !recorded.is_empty() => self.submit(recorded, |_| {}),
            _ => Ok(()),
        }
    }

    /// Submits the steps recorded so far (another engine call came inside `run_steps`: it must
    /// come after them in queue order), and goes on recording.
    pub fn flush_recorded(&mut self) -> Result<()> {
        match self.recording.as_mut().map(std::mem::take) {
            Some(recorded) if !recorded.is_empty() => self.submit(recorded, |_| {}),
            _ => Ok(()),
        }
    }

    /// Encodes `dispatches` into one compute pass, then `after` (copies), and submits.
    pub fn submit(&mut self, dispatches: Vec<Dispatch>, after: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        let needed = dispatches.len() as u64 * PARAM_SLOT;
        if needed > self.params.size() {
            self.params =
                self.buffer("params", needed.next_power_of_two() as usize, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
            self.bind_groups.groups.clear(); // they bind the old parameter buffer
        }
        self.bind_groups.evict_dropped(&self.dropped);
        if !dispatches.is_empty() {
            let mut bytes = vec![0u8; needed as usize];
            for (i, d) in dispatches.iter().enumerate() {
                bytes[i * PARAM_SLOT as usize..][..d.params.len()].copy_from_slice(&d.params);
            }
            self.queue.write_buffer(&self.params, 0, &bytes);
        }
        let groups: Vec<wgpu::BindGroup> = dispatches.iter().map(|d| self.bind_groups.get(&self.device, &self.params, d)).collect();
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        if !dispatches.is_empty() {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            for (i, (d, g)) in dispatches.iter().zip(&groups).enumerate() {
                if d.groups > 0 {
                    pass.set_pipeline(&d.kernel.pipeline);
                    pass.set_bind_group(0, g, &[(i as u64 * PARAM_SLOT) as u32]);
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
    pub fn read_staging(&mut self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
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
    pub fn submit_and_read_scalar(&mut self, dispatches: Vec<Dispatch>) -> Result<f64> {
        let (src, dst) = (self.scalars.clone(), self.scalars_staging.clone());
        self.submit(dispatches, |enc| enc.copy_buffer_to_buffer(&src, 0, &dst, 0, 4))?;
        let bytes = self.read_staging(&dst, 4)?;
        Ok(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as f64)
    }

    pub fn zeros(&mut self, len: usize) -> Result<WgpuVec> {
        self.flush_recorded()?;
        // wgpu zero-initialises new buffers.
        let buf = self.new_buffer(len, "vector")?;
        self.check_device()?; // out of memory is reported through the error handler
        Ok(WgpuVec { buf, len, dropped: self.dropped.clone() })
    }

    pub fn upload(&mut self, host: &[f32]) -> Result<WgpuVec> {
        let v = self.zeros(host.len())?;
        if !host.is_empty() {
            self.queue.write_buffer(&v.buf, 0, bytemuck::cast_slice(host));
        }
        self.check_device()?;
        Ok(v)
    }

    pub fn download(&mut self, v: &WgpuVec) -> Result<Vec<f32>> {
        self.download_buffer(&v.buf, v.len)
    }

    /// The first `len` f32 of a buffer.
    pub fn download_buffer(&mut self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        self.flush_recorded()?;
        let total = len as u64 * 4;
        let mut out = Vec::with_capacity(len);
        if total == 0 {
            return Ok(out);
        }
        let staging = self.buffer("download", total.min(STAGING_MAX) as usize, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let mut done = 0;
        while done < total {
            let size = (total - done).min(STAGING_MAX);
            let (src, dst) = (buf.clone(), staging.clone());
            self.submit(Vec::new(), |enc| enc.copy_buffer_to_buffer(&src, done, &dst, 0, size))?;
            let bytes = self.read_staging(&staging, size)?;
            out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            done += size;
        }
        Ok(out)
    }

    pub fn copy(&mut self, src: &WgpuVec, dst: &mut WgpuVec) -> Result<()> {
        self.flush_recorded()?;
        check_len("copy destination", dst, src.len)?;
        if src.len == 0 {
            return Ok(());
        }
        let (s, d, size) = (src.buf.clone(), dst.buf.clone(), src.len as u64 * 4);
        self.submit(Vec::new(), |enc| enc.copy_buffer_to_buffer(&s, 0, &d, 0, size))
    }
}

/// Bind groups by kernel and bound ranges, made once and reused: an unroll binds the same
/// buffers every outer epoch. The parameter block is a dynamic offset, so it is not part of the
/// key. A group holds its buffers alive, so those of dropped vectors are evicted.
#[derive(Default)]
struct BindGroups {
    groups: HashMap<(wgpu::BindGroupLayout, Vec<Bind>), wgpu::BindGroup>,
    created: u64,
}

impl BindGroups {
    fn get(&mut self, device: &wgpu::Device, params: &wgpu::Buffer, d: &Dispatch) -> wgpu::BindGroup {
        let key = (d.kernel.layout.clone(), d.binds.clone());
        if let Some(g) = self.groups.get(&key) {
            return g.clone();
        }
        let range = |buffer, offset, size: Option<u64>| {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset, size: size.and_then(NonZeroU64::new) })
        };
        let mut entries: Vec<wgpu::BindGroupEntry> =
            d.binds.iter().map(|b| wgpu::BindGroupEntry { binding: b.binding, resource: range(&b.buf, b.offset, b.size) }).collect();
        entries.push(wgpu::BindGroupEntry { binding: d.param_binding, resource: range(params, 0, Some(d.params.len() as u64)) });
        let g = device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &d.kernel.layout, entries: &entries });
        self.created += 1;
        self.groups.insert(key, g.clone());
        g
    }

    // A Buffer hashes and compares by its id, which its interior mutability never changes.
    #[allow(clippy::mutable_key_type)]
    fn evict_dropped(&mut self, dropped: &Dropped) {
        let dead: HashSet<wgpu::Buffer> = std::mem::take(&mut *dropped.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect();
        if !dead.is_empty() {
            self.groups.retain(|(_, binds), _| !binds.iter().any(|b| dead.contains(&b.buf)));
        }
    }
}

/// The `Engine` methods every wgpu engine shares, delegated to its `Gpu` (the macro's argument:
/// the field path, e.g. `gpu`): the vectors,
/// the policy operations (policy_ops.rs) and `run_steps`, which submits the recorded steps as one
/// command buffer. Expands inside `impl Engine for …` of an engine with `type Vec = WgpuVec`.
macro_rules! delegate_to_gpu {
    ($($gpu:tt)+) => {
        fn zeros(&mut self, len: usize) -> learnlaw_core::Result<$crate::WgpuVec> {
            self.$($gpu)+.zeros(len)
        }
        fn upload(&mut self, host: &[f32]) -> learnlaw_core::Result<$crate::WgpuVec> {
            self.$($gpu)+.upload(host)
        }
        fn download(&mut self, v: &$crate::WgpuVec) -> learnlaw_core::Result<Vec<f32>> {
            self.$($gpu)+.download(v)
        }
        fn copy(&mut self, src: &$crate::WgpuVec, dst: &mut $crate::WgpuVec) -> learnlaw_core::Result<()> {
            self.$($gpu)+.copy(src, dst)
        }
        fn scale(&mut self, a: f64, x: &mut $crate::WgpuVec) -> learnlaw_core::Result<()> {
            self.$($gpu)+.scale(a, x)
        }
        fn axpy(&mut self, a: f64, x: &$crate::WgpuVec, y: &mut $crate::WgpuVec) -> learnlaw_core::Result<()> {
            self.$($gpu)+.axpy(a, x, y)
        }
        fn project_simplex_rows(&mut self, v: &mut $crate::WgpuVec, row_len: usize) -> learnlaw_core::Result<()> {
            self.$($gpu)+.project_simplex_rows(v, row_len)
        }
        fn max_abs(&mut self, x: &$crate::WgpuVec) -> learnlaw_core::Result<f64> {
            self.$($gpu)+.max_abs(x)
        }
        fn tie_rows(&mut self, v: &mut $crate::WgpuVec, block: usize, row_len: usize) -> learnlaw_core::Result<()> {
            self.$($gpu)+.tie_rows(v, block, row_len)
        }
        fn exp_grad_rows(
            &mut self,
            gamma: &mut $crate::WgpuVec,
            grad: &$crate::WgpuVec,
            step: f64,
            row_len: usize,
        ) -> learnlaw_core::Result<()> {
            self.$($gpu)+.exp_grad_rows(gamma, grad, step, row_len)
        }
        /// Records the steps and submits all their dispatches in one command buffer at the end
        /// (one submission per unroll pass instead of one per step). A failing step submits what
        /// was recorded before it, as direct calls would have.
        fn run_steps<T>(&mut self, steps: impl FnOnce(&mut Self) -> learnlaw_core::Result<T>) -> learnlaw_core::Result<T> {
            if !self.$($gpu)+.start_recording() {
                return steps(self);
            }
            let out = steps(self);
            self.$($gpu)+.finish_recording()?;
            out
        }
    };
}
pub(crate) use delegate_to_gpu;

fn compile<K>(device: &wgpu::Device, info: &wgpu::AdapterInfo, build: impl FnOnce() -> K) -> Result<K> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let built = build();
    match pollster::block_on(scope.pop()) {
        Some(e) => Err(device_error(format!("compiling the WGSL kernels on {}: {}", info.name, error_chain(&e)))),
        None => Ok(built),
    }
}

pub(crate) fn module(device: &wgpu::Device, label: &str, src: &str) -> wgpu::ShaderModule {
    device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(src.into()) })
}

fn buffer(device: &wgpu::Device, label: &str, size: usize, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (size.max(4) as u64).next_multiple_of(4),
        usage,
        mapped_at_creation: false,
    })
}

/// A compute pipeline for `entry` of `module` with a bind group of the given bindings.
pub(crate) fn kernel(device: &wgpu::Device, module: &wgpu::ShaderModule, entry: &str, binds: &[(u32, Access)]) -> Kernel {
    kernel_with(device, module, entry, binds, &[])
}

/// `kernel` with values for the module's `override` constants.
pub(crate) fn kernel_with(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    entry: &str,
    binds: &[(u32, Access)],
    constants: &[(&str, f64)],
) -> Kernel {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = binds
        .iter()
        .map(|&(binding, access)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match access {
                    Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                    Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    Access::Uniform => wgpu::BufferBindingType::Uniform,
                },
                has_dynamic_offset: matches!(access, Access::Uniform),
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
        compilation_options: wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: false },
        cache: None,
    });
    Kernel { pipeline, layout }
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
        // Subgroup operations where offered: the kernels have a variant without them.
        let subgroups = adapter.features() & wgpu::Features::SUBGROUP;
        let required_features = if opts.no_subgroups { required_features } else { required_features | subgroups };
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

#[cfg(test)]
pub(crate) mod tests {
    /// Parses and validates WGSL with naga (types, bindings, uniformity of barriers), the front end
    /// wgpu uses, with the given capabilities; needs no adapter.
    pub fn validate(name: &str, src: &str, caps: naga::valid::Capabilities) -> Result<naga::Module, String> {
        let module = naga::front::wgsl::parse_str(src).map_err(|e| format!("{name}: {}", e.emit_to_string(src)))?;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .map_err(|e| format!("{name}: {}", e.emit_to_string(src)))?;
        Ok(module)
    }
}
