//! The Transformer's layer kernels on a wgpu device (`LayerKernels` for `model::Model`): the
//! WGSL of kernels/wgsl/{gemm,gemm_sg8,elementwise,rmsnorm,attention,embedding,cross_entropy}.wgsl.
//!
//! Methods only record dispatches; `flush` hands them to the device context, which submits them
//! at once or, inside `Engine::run_steps`, with the rest of the unroll pass. The interface
//! returns no errors (a GPU reports them asynchronously anyway): the first failure (a buffer
//! larger than the device allows) is kept and returned by `flush`, and device errors surface
//! at the next submission.
use learnlaw_core::transformer::device::{self, DeviceHead, DeviceKernels};
use learnlaw_core::transformer::kernels::{
    positions_by_id, Dims, GemmShape, HostBuffers, LayerKernels, Norm, Operand, Output, Pair, PairMut, Param, ParamGrads, Tokens,
};
use learnlaw_core::{Error, Result};

use crate::gpu::{device_error, Access, Bind, Dispatch, Gpu, Kernel};

const GEMM_WGSL: &str = include_str!("../../../../kernels/wgsl/gemm.wgsl");
const GEMM_SG8_WGSL: &str = include_str!("../../../../kernels/wgsl/gemm_sg8.wgsl");
const ELEMENTWISE_WGSL: &str = include_str!("../../../../kernels/wgsl/elementwise.wgsl");
const RMSNORM_WGSL: &str = include_str!("../../../../kernels/wgsl/rmsnorm.wgsl");
const ATTENTION_WGSL: &str = include_str!("../../../../kernels/wgsl/attention.wgsl");
const EMBEDDING_WGSL: &str = include_str!("../../../../kernels/wgsl/embedding.wgsl");
const CROSS_ENTROPY_WGSL: &str = include_str!("../../../../kernels/wgsl/cross_entropy.wgsl");

/// Storage buffers the largest kernel binds (attention's backward).
pub(crate) const STORAGE_BINDINGS: u32 = 12;
/// Rows per block of rmsnorm.wgsl's parameter partial sums (its BLOCK_ROWS).
const NORM_BLOCK_ROWS: usize = 64;
/// Logits per chunk of the head + cross-entropy ([rows, vocab], value and tangent) by default:
/// bounds its scratch memory (16 MiB each) whatever the set's size.
const HEAD_CHUNK_LOGITS: usize = 1 << 22;
/// gemm_sg8.wgsl's barriers (its SHARE, in blocks of 4 k) where k exceeds SG8_SHARE_K: the weight
/// gradients' long sums, whose operands no longer stay in cache between subgroups.
const SG8_SHARE_K: usize = 1024;
const SG8_SHARE_BLOCKS: f64 = 16.0;
/// Workgroups per dispatch (kernels stride over their items beyond it).
const MAX_GROUPS: usize = 65535;

/// A device buffer of f32 (`LayerKernels::Buf`): its length is what the model last sized it to;
/// the allocation is reused while large enough.
#[derive(Default, Debug)]
pub struct DeviceBuf {
    buf: Option<wgpu::Buffer>,
    len: usize,
}

impl DeviceBuf {
    /// A view of an engine vector's buffer (the same device memory).
    pub fn of(buf: &wgpu::Buffer, len: usize) -> Self {
        DeviceBuf { buf: Some(buf.clone()), len }
    }
    /// Another handle to the same device memory (kernels write through it).
    pub fn of_shared(b: &DeviceBuf) -> Self {
        DeviceBuf { buf: b.buf.clone(), len: b.len }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Token rows on the device (`LayerKernels::Ids`), with the CSR index of their positions per id
/// that the embedding backward sums in row order with (see embedding.wgsl).
pub struct DeviceIds {
    ids: wgpu::Buffer,
    csr_start: wgpu::Buffer,
    csr_pos: wgpu::Buffer,
    /// Ids 0..csr_vocab have an entry in csr_start.
    csr_vocab: usize,
}

/// What attention keeps for its backward: P and Ṗ [B, heads, L, L].
#[derive(Default)]
pub struct DeviceAttention {
    p: DeviceBuf,
    p_t: DeviceBuf,
}

struct Pipelines {
    gemm: Kernel,
    gemm_blocked: Kernel,
    /// gemm_sg8.wgsl where the device's subgroups are exactly 8 lanes; its pipelines (one per
    /// transpositions, tangent and barriers) are compiled on first use.
    gemm_sg8: Option<wgpu::ShaderModule>,
    fill: Kernel,
    scale_copy: Kernel,
    axpby: Kernel,
    add: Kernel,
    relu_forward: Kernel,
    relu_backward: Kernel,
    norm_stats: Kernel,
    norm_stats_rows: Kernel,
    norm_affine: Kernel,
    norm_backward: Kernel,
    norm_backward_rows: Kernel,
    norm_partials: Kernel,
    norm_reduce: Kernel,
    attention_forward: Kernel,
    attention_rows: Kernel,
    attention_cols: Kernel,
    embed_forward: Kernel,
    embed_tokens: Kernel,
    embed_positions: Kernel,
    ce_rows: Kernel,
    ce_rows_per_row: Kernel,
    ce_sequences: Kernel,
    ce_backward: Kernel,
}

use Access::{Read as R, ReadWrite as W, Uniform as U};

impl Pipelines {
    fn new(gpu: &Gpu) -> Self {
        let gemm = gpu.module("gemm.wgsl", GEMM_WGSL);
        let ew = gpu.module("elementwise.wgsl", ELEMENTWISE_WGSL);
        let norm = gpu.module("rmsnorm.wgsl", RMSNORM_WGSL);
        let att = gpu.module("attention.wgsl", ATTENTION_WGSL);
        let emb = gpu.module("embedding.wgsl", EMBEDDING_WGSL);
        let ce = gpu.module("cross_entropy.wgsl", CROSS_ENTROPY_WGSL);
        let seq = |first: u32, access: &[Access]| -> Vec<(u32, Access)> {
            access.iter().enumerate().map(|(i, &a)| (first + i as u32, a)).collect()
        };
        let ew_binds = seq(0, &[R, R, W, W, U]);
        let norm_binds = seq(0, &[R, R, R, R, R, R, R, R, W, W, W, W, U]);
        Pipelines {
            gemm: gpu.kernel(&gemm, "gemm", &seq(0, &[R, R, R, R, W, W, U])),
            gemm_blocked: gpu.kernel(&gemm, "gemm_blocked", &seq(0, &[R, R, R, R, W, W, U])),
            gemm_sg8: (gpu.subgroup_sizes() == Some((8, 8))).then(|| gpu.module("gemm_sg8.wgsl", GEMM_SG8_WGSL)),
            fill: gpu.kernel(&ew, "fill", &ew_binds),
            scale_copy: gpu.kernel(&ew, "scale_copy", &ew_binds),
            axpby: gpu.kernel(&ew, "axpby", &ew_binds),
            add: gpu.kernel(&ew, "add", &ew_binds),
            relu_forward: gpu.kernel(&ew, "relu_forward", &ew_binds),
            relu_backward: gpu.kernel(&ew, "relu_backward", &ew_binds),
            norm_stats: gpu.kernel(&norm, "stats", &norm_binds),
            norm_stats_rows: gpu.kernel(&norm, "stats_per_row", &norm_binds),
            norm_affine: gpu.kernel(&norm, "affine", &norm_binds),
            norm_backward: gpu.kernel(&norm, "backward", &norm_binds),
            norm_backward_rows: gpu.kernel(&norm, "backward_per_row", &norm_binds),
            norm_partials: gpu.kernel(&norm, "param_partials", &norm_binds),
            norm_reduce: gpu.kernel(&norm, "param_reduce", &norm_binds),
            attention_forward: gpu.kernel(&att, "forward", &seq(0, &[R, R, R, R, R, R, W, W, W, W, U])),
            attention_rows: gpu.kernel(&att, "backward_rows", &seq(11, &[R, R, R, R, R, R, R, R, W, W, W, W, U])),
            attention_cols: gpu.kernel(&att, "backward_cols", &seq(24, &[R, R, R, R, R, R, R, R, W, W, W, W, U])),
            embed_forward: gpu.kernel(&emb, "forward", &seq(0, &[R, R, R, R, R, R, R, W, W, U])),
            embed_tokens: gpu.kernel(&emb, "tokens_backward", &seq(0, &[R, R, R, R, R, R, R, W, W, U])),
            embed_positions: gpu.kernel(&emb, "positions_backward", &seq(0, &[R, R, R, R, R, R, R, W, W, U])),
            ce_rows: gpu.kernel(&ce, "forward_rows", &seq(0, &[R, R, R, W, U])),
            ce_rows_per_row: gpu.kernel(&ce, "forward_per_row", &seq(0, &[R, R, R, W, U])),
            ce_sequences: gpu.kernel(&ce, "sequences", &[(0, R), (4, U), (5, R), (6, W), (7, W), (8, W)]),
            ce_backward: gpu.kernel(&ce, "backward_rows", &[(0, R), (4, U), (9, R), (10, R), (11, R), (12, W), (13, W)]),
        }
    }
}

/// The layer kernels of one wgpu device.
pub struct WgpuKernels {
    pub(crate) gpu: Gpu,
    pipes: Pipelines,
    /// Stand-ins for unused bindings: one read-only, and one per writable slot of a dispatch
    /// (two writable bindings of one buffer would alias).
    dummy_read: wgpu::Buffer,
    dummy_write: [wgpu::Buffer; 4],
    /// Scratch: the head's logits chunk [rows, vocab] and its tangent; rmsnorm's parameter
    /// partials; attention's gS and ġS [B, heads, L, L].
    logits: DeviceBuf,
    logits_t: DeviceBuf,
    norm_partials: DeviceBuf,
    attention_gs: DeviceBuf,
    attention_gs_t: DeviceBuf,
    /// Logits per chunk of the head (see `HEAD_CHUNK_LOGITS`).
    head_chunk_logits: usize,
    /// Bytes of the buffers these kernels allocated and still hold (activations, saved state,
    /// scratch): the working set of a pass.
    allocated: u64,
    /// Run gemm.wgsl's baseline variant instead of gemm_sg8 or the register-blocked one.
    baseline_gemm: bool,
    /// gemm_sg8.wgsl's pipelines compiled so far, by transpositions, tangent and barriers.
    gemm_sg8: [Option<Kernel>; 16],
    /// gemm_sg8.wgsl's barriers where k exceeds this (`SG8_SHARE_K`).
    sg8_share_k: usize,
    /// One invocation per row (CPU adapters) instead of a workgroup per row where a row is
    /// reduced: rmsnorm.wgsl's stats and backward, cross_entropy.wgsl's forward.
    per_row: bool,
    pending: Vec<Dispatch>,
    error: Option<Error>,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    sa: u32,
    sb: u32,
    sc: u32,
    aa: u32,
    ab: u32,
    ac: u32,
    ta: u32,
    tb: u32,
    beta: f32,
    flags: u32,
    tiles_m: u32,
    tiles_n: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ElementwiseParams {
    len: u32,
    tangent: u32,
    value: f32,
    x_at: u32,
    y_at: u32,
    _pad: [u32; 3],
}

impl ElementwiseParams {
    fn new(len: usize, tangent: bool, value: f32) -> Self {
        ElementwiseParams { len: u(len), tangent: tangent as u32, value, x_at: 0, y_at: 0, _pad: [0; 3] }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    rows: u32,
    h: u32,
    pw: u32,
    pb: u32,
    tangent: u32,
    want_grad: u32,
    want_hvp: u32,
    blocks: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AttentionParams {
    seqs: u32,
    len: u32,
    heads: u32,
    hidden: u32,
    scale: f32,
    tangent: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct EmbeddingParams {
    at: u32,
    seqs: u32,
    seq_len: u32,
    h: u32,
    vocab: u32,
    ptok: u32,
    ppos: u32,
    tangent: u32,
    want_grad: u32,
    want_hvp: u32,
    csr_vocab: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CrossEntropyParams {
    at: u32,
    seqs: u32,
    seq_len: u32,
    vocab: u32,
    r0: u32,
    rows: u32,
    tangent: u32,
    w_at: u32,
}

/// The buffers of an output pair, as the handles a dispatch binds.
fn read<'a>(y: &'a PairMut<DeviceBuf>) -> Pair<'a, DeviceBuf> {
    Pair { v: &*y.v, t: y.t.as_deref() }
}

/// `b` in tangent mode, else nothing.
fn when(tangent: bool, b: &DeviceBuf) -> Option<&DeviceBuf> {
    tangent.then_some(b)
}

fn u(x: usize) -> u32 {
    u32::try_from(x).expect("sizes are checked against the device's limits when buffers are made")
}

fn groups(items: usize, per_group: usize) -> u32 {
    u(items.div_ceil(per_group).clamp(1, MAX_GROUPS))
}

/// A dispatch's bindings, filled in order with real buffers or dummies.
struct Binds<'a> {
    k: &'a WgpuKernels,
    list: Vec<Bind>,
    writes: usize,
}

impl<'a> Binds<'a> {
    fn new(k: &'a WgpuKernels) -> Self {
        Binds { k, list: Vec::new(), writes: 0 }
    }
    fn buf(mut self, binding: u32, b: &wgpu::Buffer) -> Self {
        self.list.push(Bind { binding, buf: b.clone(), offset: 0, size: None });
        self
    }
    /// A read-only binding: the buffer, or the read dummy.
    fn read(self, binding: u32, b: Option<&DeviceBuf>) -> Self {
        let k = self.k;
        match b.and_then(|b| b.buf.as_ref()) {
            Some(buf) => self.buf(binding, buf),
            None => self.buf(binding, &k.dummy_read),
        }
    }
    /// A writable binding: the buffer, or the next write dummy.
    fn write(mut self, binding: u32, b: Option<&DeviceBuf>) -> Self {
        let k = self.k;
        match b.and_then(|b| b.buf.as_ref()) {
            Some(buf) => self.buf(binding, buf),
            None => {
                let d = &k.dummy_write[self.writes];
                self.writes += 1;
                self.buf(binding, d)
            }
        }
    }
}

impl WgpuKernels {
    /// The kernels on a device of their own (the conformance tests use this).
    pub fn open(opts: &crate::Options) -> Result<Self> {
        Self::new(Gpu::new(opts)?)
    }

    pub(crate) fn new(gpu: Gpu) -> Result<Self> {
        let limits = gpu.device.limits();
        if limits.max_storage_buffers_per_shader_stage < STORAGE_BINDINGS {
            return Err(crate::gpu::unavailable(format!(
                "adapter {} allows {} storage buffers per shader stage; the Transformer's kernels need {STORAGE_BINDINGS}",
                gpu.info.name, limits.max_storage_buffers_per_shader_stage
            )));
        }
        let pipes = gpu.compile(Pipelines::new)?;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let dummy = |label: &str| gpu.buffer(label, 16, usage);
        let per_row = gpu.info.device_type == wgpu::DeviceType::Cpu;
        Ok(WgpuKernels {
            dummy_read: dummy("dummy_read"),
            dummy_write: [dummy("dummy_write0"), dummy("dummy_write1"), dummy("dummy_write2"), dummy("dummy_write3")],
            gpu,
            pipes,
            logits: DeviceBuf::default(),
            logits_t: DeviceBuf::default(),
            norm_partials: DeviceBuf::default(),
            attention_gs: DeviceBuf::default(),
            attention_gs_t: DeviceBuf::default(),
            head_chunk_logits: HEAD_CHUNK_LOGITS,
            allocated: 0,
            baseline_gemm: false,
            gemm_sg8: Default::default(),
            sg8_share_k: SG8_SHARE_K,
            per_row,
            pending: Vec::new(),
            error: None,
        })
    }

    fn dispatch<P: bytemuck::Pod>(&mut self, kernel: &Kernel, binds: Vec<Bind>, param_binding: u32, params: P, groups: u32) {
        self.pending.push(Dispatch { kernel: kernel.clone(), binds, param_binding, params: bytemuck::bytes_of(&params).to_vec(), groups });
    }

    fn record_error(&mut self, e: Error) {
        self.error.get_or_insert(e);
    }

    /// gemm_sg8.wgsl's pipeline for the transpositions and tangent (compiled on first use), or
    /// None where it does not apply: no subgroups of 8, the baseline forced, or a row it would
    /// touch not whole vec4 (starts, strides, k, n, and m when A is transposed, multiples of 4).
    fn sg8_kernel(&mut self, s: &GemmShape, a: &Operand<DeviceBuf>, b: &Operand<DeviceBuf>, c_at: usize, tangent: bool) -> Option<Kernel> {
        let module = self.pipes.gemm_sg8.clone().filter(|_| !self.baseline_gemm)?;
        let strides = if s.batch > 1 { [s.stride_a, s.stride_b, s.stride_c] } else { [0; 3] };
        let fits = [s.k, s.n, if a.trans { s.m } else { 0 }, a.at, b.at, c_at].into_iter().chain(strides).all(|x| x % 4 == 0);
        if !fits {
            return None;
        }
        let share = s.k > self.sg8_share_k;
        let index = a.trans as usize | (b.trans as usize) << 1 | (tangent as usize) << 2 | (share as usize) << 3;
        if self.gemm_sg8[index].is_none() {
            let flag = |x: bool| x as u32 as f64;
            let share = if share { SG8_SHARE_BLOCKS } else { 0.0 };
            let constants = [("TA", flag(a.trans)), ("TB", flag(b.trans)), ("TAN", flag(tangent)), ("SHARE", share)];
            let binds: Vec<(u32, Access)> = [R, R, R, R, W, W, U].into_iter().enumerate().map(|(i, x)| (i as u32, x)).collect();
            match self.gpu.compile(|gpu| gpu.kernel_with(&module, "gemm_sg8", &binds, &constants)) {
                Ok(k) => self.gemm_sg8[index] = Some(k),
                Err(e) => {
                    self.record_error(e);
                    return None;
                }
            }
        }
        self.gemm_sg8[index].clone()
    }

    /// The kernel that reduces `rows` rows and its workgroup count: the one-invocation-per-row
    /// variant (64 rows a workgroup) on CPU adapters, else the workgroup-per-row one.
    fn row_kernel(&self, per_row: &Kernel, per_workgroup: &Kernel, rows: usize) -> (Kernel, u32) {
        if self.per_row {
            (per_row.clone(), groups(rows, 64))
        } else {
            (per_workgroup.clone(), groups(rows, 1))
        }
    }

    /// A new storage buffer of `len` f32 (at least one element).
    fn new_buffer(&mut self, len: usize) -> Option<wgpu::Buffer> {
        let bytes = len.max(1) as u64 * 4;
        if bytes > self.gpu.max_binding {
            self.record_error(Error::bad_input(
                "wgpu transformer buffer",
                format!("{len} f32 ({bytes} bytes) exceed one storage binding of {} ({} bytes)", self.gpu.info.name, self.gpu.max_binding),
            ));
            return None;
        }
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        self.allocated += bytes;
        Some(self.gpu.buffer("transformer", bytes as usize, usage))
    }

    fn sized(&mut self, b: &mut DeviceBuf, len: usize) {
        let cap = b.buf.as_ref().map_or(0, |x| x.size() as usize / 4);
        if cap < len || b.buf.is_none() {
            if let Some(old) = b.buf.take() {
                self.allocated = self.allocated.saturating_sub(old.size());
            }
            b.buf = self.new_buffer(len);
        }
        b.len = len;
    }

    /// Bytes of device memory these kernels hold: the activations, saved state and scratch of
    /// the largest pass so far (not the engine's vectors or data).
    pub fn working_set_bytes(&self) -> u64 {
        self.allocated
    }

    /// Submits what was recorded and blocks until the device has finished it.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.gpu.sync()
    }

    /// An elementwise.wgsl kernel reading x and writing y (the device writes through shared
    /// references: a buffer handle is not Rust memory).
    fn elementwise(&mut self, kernel: fn(&Pipelines) -> &Kernel, x: Pair<DeviceBuf>, y: Pair<DeviceBuf>, len: usize, value: f32) {
        if len == 0 {
            return;
        }
        let tangent = y.t.is_some();
        let binds = Binds::new(self).read(0, Some(x.v)).read(1, x.t).write(2, Some(y.v)).write(3, y.t).list;
        let kernel = kernel(&self.pipes).clone();
        self.dispatch(&kernel, binds, 4, ElementwiseParams::new(len, tangent, value), groups(len, 256));
    }

    fn fill(&mut self, b: &DeviceBuf, len: usize, value: f32) {
        if len == 0 {
            return;
        }
        let binds = Binds::new(self).read(0, None).read(1, None).write(2, Some(b)).write(3, None).list;
        let kernel = self.pipes.fill.clone();
        self.dispatch(&kernel, binds, 4, ElementwiseParams::new(len, false, value), groups(len, 256));
    }

    /// GEMMs by gemm.wgsl's baseline (one element per invocation, 16×16 workgroup-memory tiles)
    /// instead of gemm_sg8.wgsl or the register-blocked variant: for tests and benches of the
    /// variants.
    pub fn with_baseline_gemm(mut self) -> Self {
        self.baseline_gemm = true;
        self
    }

    /// gemm_sg8.wgsl's barriers on every GEMM, not only on long k: for tests of the variant.
    pub fn with_gemm_barriers(mut self) -> Self {
        self.sg8_share_k = 0;
        self
    }

    /// A workgroup per reduced row (rmsnorm's stats and backward, the cross-entropy's forward:
    /// the GPU default) on any adapter: for tests of the variants.
    pub fn with_workgroup_rows(mut self) -> Self {
        self.per_row = false;
        self
    }

    /// Chunks of at most `logits` logits in the head (at least one row each), instead of 4 Mi:
    /// less memory, more dispatches. Tests use it to cross chunk boundaries on small sets.
    pub fn with_head_chunk_logits(mut self, logits: usize) -> Self {
        self.head_chunk_logits = logits;
        self
    }
}

impl LayerKernels for WgpuKernels {
    type Buf = DeviceBuf;
    type Ids = DeviceIds;
    type Sums = DeviceBuf;
    type Attention = DeviceAttention;
    type Head = DeviceHead<DeviceBuf>;

    fn resize(&mut self, b: &mut DeviceBuf, len: usize) {
        self.sized(b, len);
    }
    fn zero(&mut self, b: &mut DeviceBuf, len: usize) {
        self.sized(b, len);
        self.fill(b, len, 0.0);
    }
    fn copy(&mut self, src: &DeviceBuf, dst: &mut DeviceBuf, len: usize) {
        self.sized(dst, len);
        self.scale_copy(1.0, (src, 0), (dst, 0), len);
    }
    fn add(&mut self, x: Pair<DeviceBuf>, y: PairMut<DeviceBuf>, len: usize) {
        self.elementwise(|p| &p.add, x, read(&y), len, 1.0);
    }

    fn gemm(&mut self, s: GemmShape, a: Operand<DeviceBuf>, b: Operand<DeviceBuf>, beta: f64, c: Output<DeviceBuf>) {
        if s.m == 0 || s.n == 0 || s.batch == 0 {
            return;
        }
        let flags = c.v.is_some() as u32 | (c.t.is_some() as u32) << 1;
        let tangent = c.t.is_some();
        let binds = Binds::new(self)
            .read(0, Some(a.v))
            .read(1, if tangent { a.t } else { None })
            .read(2, Some(b.v))
            .read(3, if tangent { b.t } else { None })
            .write(4, c.v.as_deref())
            .write(5, c.t.as_deref())
            .list;
        let sg8 = self.sg8_kernel(&s, &a, &b, c.at, tangent);
        let tile = if sg8.is_some() {
            64
        } else if self.baseline_gemm {
            16
        } else {
            32
        };
        let (tiles_m, tiles_n) = (s.m.div_ceil(tile), s.n.div_ceil(tile));
        let params = GemmParams {
            m: u(s.m),
            n: u(s.n),
            k: u(s.k),
            batch: u(s.batch),
            sa: u(s.stride_a),
            sb: u(s.stride_b),
            sc: u(s.stride_c),
            aa: u(a.at),
            ab: u(b.at),
            ac: u(c.at),
            ta: a.trans as u32,
            tb: b.trans as u32,
            beta: beta as f32,
            flags,
            tiles_m: u(tiles_m),
            tiles_n: u(tiles_n),
        };
        let kernel = match sg8 {
            Some(k) => k,
            None if self.baseline_gemm => self.pipes.gemm.clone(),
            None => self.pipes.gemm_blocked.clone(),
        };
        self.dispatch(&kernel, binds, 6, params, groups(s.batch * tiles_m * tiles_n, 1));
    }

    fn embed_forward(&mut self, t: Tokens<DeviceIds>, tok: Param<DeviceBuf>, pos: Param<DeviceBuf>, h: usize, x: PairMut<DeviceBuf>) {
        let items = t.rows() * h;
        if items == 0 {
            return;
        }
        let tangent = x.t.is_some();
        let binds = Binds::new(self)
            .buf(0, &t.ids.ids)
            .buf(1, &t.ids.csr_start)
            .buf(2, &t.ids.csr_pos)
            .read(3, Some(tok.theta))
            .read(4, tok.dir)
            .read(5, None)
            .read(6, None)
            .write(7, Some(&*x.v))
            .write(8, x.t.as_deref())
            .list;
        let params = embedding_params(&t, h, 0, (tok.range.start, pos.range.start), tangent, (false, false));
        let kernel = self.pipes.embed_forward.clone();
        self.dispatch(&kernel, binds, 9, params, groups(items, 64));
    }

    fn embed_backward(&mut self, t: Tokens<DeviceIds>, g: Pair<DeviceBuf>, h: usize, vocab: usize, out: ParamGrads<DeviceBuf>) {
        if t.rows() == 0 || (out.grad.is_none() && out.hvp.is_none()) {
            return;
        }
        let want = (out.grad.is_some(), out.hvp.is_some());
        let tangent = g.t.is_some() && want.1;
        let (ptok, ppos) = (out.range.start, out.range.start + vocab * h);
        let params = embedding_params(&t, h, vocab, (ptok, ppos), tangent, want);
        let bind = |k: &Self| {
            Binds::new(k)
                .buf(0, &t.ids.ids)
                .buf(1, &t.ids.csr_start)
                .buf(2, &t.ids.csr_pos)
                .read(3, None)
                .read(4, None)
                .read(5, Some(g.v))
                .read(6, if tangent { g.t } else { None })
                .write(7, out.grad.as_deref())
                .write(8, out.hvp.as_deref())
                .list
        };
        let (tokens, positions) = (self.pipes.embed_tokens.clone(), self.pipes.embed_positions.clone());
        let binds = bind(self);
        self.dispatch(&tokens, binds, 9, params, groups(vocab.min(t.ids.csr_vocab) * h, 64));
        let binds = bind(self);
        self.dispatch(&positions, binds, 9, params, groups(t.len() * h, 64));
    }

    fn rmsnorm_forward(
        &mut self,
        m: usize,
        h: usize,
        x: Pair<DeviceBuf>,
        w: Param<DeviceBuf>,
        b: Param<DeviceBuf>,
        nm: &mut Norm<DeviceBuf>,
    ) {
        if m == 0 {
            return;
        }
        let tangent = x.t.is_some();
        let params = NormParams {
            rows: u(m),
            h: u(h),
            pw: u(w.range.start),
            pb: u(b.range.start),
            tangent: tangent as u32,
            want_grad: 0,
            want_hvp: 0,
            blocks: 0,
        };
        let stats = Binds::new(self)
            .read(0, Some(x.v))
            .read(1, x.t)
            .read(2, None)
            .read(3, None)
            .read(4, None)
            .read(5, None)
            .read(6, None)
            .read(7, None)
            .write(8, Some(&nm.n.v))
            .write(9, when(tangent, &nm.n.t))
            .write(10, Some(&nm.r.v))
            .write(11, when(tangent, &nm.r.t))
            .list;
        let affine = Binds::new(self)
            .read(0, Some(&nm.n.v))
            .read(1, when(tangent, &nm.n.t))
            .read(2, Some(w.theta))
            .read(3, w.dir)
            .read(4, None)
            .read(5, None)
            .read(6, None)
            .read(7, None)
            .write(8, Some(&nm.out.v))
            .write(9, when(tangent, &nm.out.t))
            .write(10, None)
            .write(11, None)
            .list;
        let k_affine = self.pipes.norm_affine.clone();
        let (k_stats, n) = self.row_kernel(&self.pipes.norm_stats_rows, &self.pipes.norm_stats, m);
        self.dispatch(&k_stats, stats, 12, params, n);
        self.dispatch(&k_affine, affine, 12, params, groups(m * h, 256));
    }

    fn rmsnorm_backward(
        &mut self,
        m: usize,
        h: usize,
        nm: &Norm<DeviceBuf>,
        _x: Pair<DeviceBuf>,
        w: Param<DeviceBuf>,
        gy: Pair<DeviceBuf>,
        gx: PairMut<DeviceBuf>,
        out: ParamGrads<DeviceBuf>,
    ) {
        if m == 0 {
            return;
        }
        let tangent = gx.t.is_some();
        let blocks = m.div_ceil(NORM_BLOCK_ROWS);
        let (want_grad, want_hvp) = (out.grad.is_some(), out.hvp.is_some() && tangent);
        let params = NormParams {
            rows: u(m),
            h: u(h),
            pw: u(out.range.start),
            pb: u(out.range.start + h),
            tangent: tangent as u32,
            want_grad: want_grad as u32,
            want_hvp: want_hvp as u32,
            blocks: u(blocks),
        };
        let backward = Binds::new(self)
            .read(0, Some(&nm.n.v))
            .read(1, when(tangent, &nm.n.t))
            .read(2, Some(w.theta))
            .read(3, if tangent { w.dir } else { None })
            .read(4, Some(gy.v))
            .read(5, if tangent { gy.t } else { None })
            .read(6, Some(&nm.r.v))
            .read(7, when(tangent, &nm.r.t))
            .write(8, Some(&*gx.v))
            .write(9, gx.t.as_deref())
            .write(10, None)
            .write(11, None)
            .list;
        // The parameter gradient reads θ's w at pw: here pw is the gradient's offset, so the
        // input-gradient dispatch gets θ's own offsets.
        let input_params = NormParams { pw: u(w.range.start), pb: u(w.range.start + h), ..params };
        let (k_backward, n) = self.row_kernel(&self.pipes.norm_backward_rows, &self.pipes.norm_backward, m);
        self.dispatch(&k_backward, backward, 12, input_params, n);
        if !(want_grad || want_hvp) {
            return;
        }
        let mut partials = std::mem::take(&mut self.norm_partials);
        self.sized(&mut partials, blocks * 4 * h);
        let sums = Binds::new(self)
            .read(0, Some(&nm.n.v))
            .read(1, when(tangent, &nm.n.t))
            .read(2, None)
            .read(3, None)
            .read(4, Some(gy.v))
            .read(5, if tangent { gy.t } else { None })
            .read(6, None)
            .read(7, None)
            .write(8, Some(&partials))
            .write(9, None)
            .write(10, None)
            .write(11, None)
            .list;
        let reduce = Binds::new(self)
            .read(0, Some(&partials))
            .read(1, None)
            .read(2, None)
            .read(3, None)
            .read(4, None)
            .read(5, None)
            .read(6, None)
            .read(7, None)
            .write(8, out.grad.as_deref())
            .write(9, if want_hvp { out.hvp.as_deref() } else { None })
            .write(10, None)
            .write(11, None)
            .list;
        let (k_partials, k_reduce) = (self.pipes.norm_partials.clone(), self.pipes.norm_reduce.clone());
        self.dispatch(&k_partials, sums, 12, params, groups(blocks, 1));
        self.dispatch(&k_reduce, reduce, 12, params, groups(2 * h, 64));
        self.norm_partials = partials;
    }

    fn relu_forward(&mut self, x: Pair<DeviceBuf>, len: usize, y: PairMut<DeviceBuf>) {
        self.elementwise(|p| &p.relu_forward, x, read(&y), len, 0.0);
    }
    fn relu_backward(&mut self, x: &DeviceBuf, len: usize, g: PairMut<DeviceBuf>) {
        self.elementwise(|p| &p.relu_backward, Pair { v: x, t: None }, read(&g), len, 0.0);
    }

    fn attention_forward(
        &mut self,
        d: Dims,
        scale: f64,
        q: Pair<DeviceBuf>,
        k: Pair<DeviceBuf>,
        v: Pair<DeviceBuf>,
        saved: &mut DeviceAttention,
        o: PairMut<DeviceBuf>,
    ) {
        let items = d.seqs * d.heads * d.len;
        if items == 0 {
            return;
        }
        let tangent = o.t.is_some();
        let plen = items * d.len;
        self.sized(&mut saved.p, plen);
        if tangent {
            self.sized(&mut saved.p_t, plen);
        }
        let binds = Binds::new(self)
            .read(0, Some(q.v))
            .read(1, q.t)
            .read(2, Some(k.v))
            .read(3, k.t)
            .read(4, Some(v.v))
            .read(5, v.t)
            .write(6, Some(&saved.p))
            .write(7, when(tangent, &saved.p_t))
            .write(8, Some(&*o.v))
            .write(9, o.t.as_deref())
            .list;
        let params = attention_params(d, scale, tangent);
        let kernel = self.pipes.attention_forward.clone();
        self.dispatch(&kernel, binds, 10, params, groups(items, 64));
    }

    fn attention_backward(
        &mut self,
        d: Dims,
        scale: f64,
        q: Pair<DeviceBuf>,
        k: Pair<DeviceBuf>,
        v: Pair<DeviceBuf>,
        saved: &DeviceAttention,
        go: Pair<DeviceBuf>,
        gq: PairMut<DeviceBuf>,
        gk: PairMut<DeviceBuf>,
        gv: PairMut<DeviceBuf>,
    ) {
        let items = d.seqs * d.heads * d.len;
        if items == 0 {
            return;
        }
        let tangent = gq.t.is_some();
        let (mut gs, mut gs_t) = (std::mem::take(&mut self.attention_gs), std::mem::take(&mut self.attention_gs_t));
        self.sized(&mut gs, items * d.len);
        if tangent {
            self.sized(&mut gs_t, items * d.len);
        }
        let rows = Binds::new(self)
            .read(11, Some(k.v))
            .read(12, if tangent { k.t } else { None })
            .read(13, Some(v.v))
            .read(14, if tangent { v.t } else { None })
            .read(15, Some(&saved.p))
            .read(16, when(tangent, &saved.p_t))
            .read(17, Some(go.v))
            .read(18, if tangent { go.t } else { None })
            .write(19, Some(&gs))
            .write(20, when(tangent, &gs_t))
            .write(21, Some(&*gq.v))
            .write(22, gq.t.as_deref())
            .list;
        let cols = Binds::new(self)
            .read(24, Some(q.v))
            .read(25, if tangent { q.t } else { None })
            .read(26, Some(&gs))
            .read(27, when(tangent, &gs_t))
            .read(28, Some(&saved.p))
            .read(29, when(tangent, &saved.p_t))
            .read(30, Some(go.v))
            .read(31, if tangent { go.t } else { None })
            .write(32, Some(&*gk.v))
            .write(33, gk.t.as_deref())
            .write(34, Some(&*gv.v))
            .write(35, gv.t.as_deref())
            .list;
        let params = attention_params(d, scale, tangent);
        let (k_rows, k_cols) = (self.pipes.attention_rows.clone(), self.pipes.attention_cols.clone());
        self.dispatch(&k_rows, rows, 23, params, groups(items, 64));
        self.dispatch(&k_cols, cols, 36, params, groups(items, 64));
        self.attention_gs = gs;
        self.attention_gs_t = gs_t;
    }

    fn head_forward(
        &mut self,
        t: Tokens<DeviceIds>,
        x: Pair<DeviceBuf>,
        w: Param<DeviceBuf>,
        h: usize,
        vocab: usize,
        head: &mut DeviceHead<DeviceBuf>,
        losses: &mut DeviceBuf,
        dots: &mut DeviceBuf,
    ) {
        device::head_forward(self, t, x, w, h, vocab, head, losses, dots);
    }

    fn head_backward(
        &mut self,
        t: Tokens<DeviceIds>,
        head: &mut DeviceHead<DeviceBuf>,
        x: Pair<DeviceBuf>,
        w: Param<DeviceBuf>,
        h: usize,
        vocab: usize,
        weights: (&DeviceBuf, usize),
        gx: PairMut<DeviceBuf>,
        out: ParamGrads<DeviceBuf>,
    ) {
        device::head_backward(self, t, head, x, w, h, vocab, weights, gx, out);
    }
}

/// embedding.wgsl's parameters; `vocab` bounds the token ids the backward visits.
fn embedding_params(
    t: &Tokens<DeviceIds>,
    h: usize,
    vocab: usize,
    (ptok, ppos): (usize, usize),
    tangent: bool,
    want: (bool, bool),
) -> EmbeddingParams {
    EmbeddingParams {
        at: u(t.at),
        seqs: u(t.seqs),
        seq_len: u(t.seq_len),
        h: u(h),
        vocab: u(vocab),
        ptok: u(ptok),
        ppos: u(ppos),
        tangent: tangent as u32,
        want_grad: want.0 as u32,
        want_hvp: want.1 as u32,
        csr_vocab: u(t.ids.csr_vocab),
        _pad: 0,
    }
}

fn attention_params(d: Dims, scale: f64, tangent: bool) -> AttentionParams {
    AttentionParams {
        seqs: u(d.seqs),
        len: u(d.len),
        heads: u(d.heads),
        hidden: u(d.hidden),
        scale: scale as f32,
        tangent: tangent as u32,
        _pad: [0; 2],
    }
}

fn ce_params(t: &Tokens<DeviceIds>, vocab: usize, r0: usize, rows: usize, tangent: bool, w_at: usize) -> CrossEntropyParams {
    CrossEntropyParams {
        at: u(t.at),
        seqs: u(t.seqs),
        seq_len: u(t.seq_len),
        vocab: u(vocab),
        r0: u(r0),
        rows: u(rows),
        tangent: tangent as u32,
        w_at: u(w_at),
    }
}

impl DeviceKernels for WgpuKernels {
    /// y[y_at + i] ← a·x[x_at + i] for i < len.
    fn scale_copy(&mut self, a: f32, (x, x_at): (&DeviceBuf, usize), (y, y_at): (&DeviceBuf, usize), len: usize) {
        if len == 0 {
            return;
        }
        let binds = Binds::new(self).read(0, Some(x)).read(1, None).write(2, Some(y)).write(3, None).list;
        let params = ElementwiseParams { x_at: u(x_at), y_at: u(y_at), ..ElementwiseParams::new(len, false, a) };
        let kernel = self.pipes.scale_copy.clone();
        self.dispatch(&kernel, binds, 4, params, groups(len, 256));
    }

    /// y ← x + a·y over `len` values.
    fn axpby(&mut self, x: &DeviceBuf, a: f32, y: &DeviceBuf, len: usize) {
        self.elementwise(|p| &p.axpby, Pair { v: x, t: None }, Pair { v: y, t: None }, len, a);
    }

    /// y ← y + a·x over `len` values.
    fn axpy(&mut self, a: f32, x: &DeviceBuf, y: &DeviceBuf, len: usize) {
        self.elementwise(|p| &p.add, Pair { v: x, t: None }, Pair { v: y, t: None }, len, a);
    }

    /// Token rows on the device, with their CSR index.
    fn upload_tokens(&mut self, host: &[u32]) -> Result<DeviceIds> {
        if host.len() > u32::MAX as usize {
            return Err(Error::bad_input("token data", format!("{} ids exceed the wgpu kernels' 32-bit indices", host.len())));
        }
        let (start, pos) = positions_by_id(host);
        let upload = |gpu: &Gpu, data: &[u32]| {
            let buf = gpu.buffer("tokens", data.len() * 4, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST);
            if !data.is_empty() {
                gpu.queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
            }
            buf
        };
        let ids = DeviceIds {
            ids: upload(&self.gpu, host),
            csr_start: upload(&self.gpu, &start),
            csr_pos: upload(&self.gpu, &pos),
            csr_vocab: start.len() - 1,
        };
        self.gpu.check_device()?;
        Ok(ids)
    }

    fn upload_buf(&mut self, host: &[f32]) -> Result<DeviceBuf> {
        let mut b = DeviceBuf::default();
        self.sized(&mut b, host.len());
        self.flush()?;
        if let Some(buf) = &b.buf {
            if !host.is_empty() {
                self.gpu.queue.write_buffer(buf, 0, bytemuck::cast_slice(host));
            }
        }
        Ok(b)
    }

    fn download_buf(&mut self, b: &DeviceBuf, len: usize) -> Result<Vec<f32>> {
        self.flush()?;
        let buf = b.buf.as_ref().ok_or_else(|| device_error("download of a buffer that was never sized"))?;
        self.gpu.download_buffer(buf, len)
    }

    /// Hands the recorded dispatches to the device context (submitted now, or with the unroll
    /// pass inside `run_steps`); returns the first error since the last flush.
    fn flush(&mut self) -> Result<()> {
        if let Some(e) = self.error.take() {
            self.pending.clear();
            return Err(e);
        }
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(());
        }
        self.gpu.submit_step(pending)
    }

    fn alias(b: &DeviceBuf) -> DeviceBuf {
        DeviceBuf::of_shared(b)
    }
    fn sums(s: &DeviceBuf) -> &DeviceBuf {
        s
    }
    fn len(b: &DeviceBuf) -> usize {
        b.len()
    }
    fn ce_rows(
        &mut self,
        t: Tokens<DeviceIds>,
        z: Pair<DeviceBuf>,
        (r0, rows): (usize, usize),
        vocab: usize,
        head: &DeviceHead<DeviceBuf>,
    ) {
        let binds = Binds::new(self).buf(0, &t.ids.ids).read(1, Some(z.v)).read(2, z.t).write(3, Some(&head.stats)).list;
        let params = ce_params(&t, vocab, r0, rows, z.t.is_some(), 0);
        let (kernel, n) = self.row_kernel(&self.pipes.ce_rows_per_row, &self.pipes.ce_rows, rows);
        self.dispatch(&kernel, binds, 4, params, n);
    }
    fn ce_sequences(
        &mut self,
        t: Tokens<DeviceIds>,
        vocab: usize,
        head: &DeviceHead<DeviceBuf>,
        losses: &DeviceBuf,
        dots: Option<&DeviceBuf>,
    ) {
        let binds = Binds::new(self)
            .buf(0, &t.ids.ids)
            .read(5, Some(&head.stats))
            .write(6, Some(losses))
            .write(7, dots)
            .write(8, Some(&head.counts))
            .list;
        let kernel = self.pipes.ce_sequences.clone();
        self.dispatch(&kernel, binds, 4, ce_params(&t, vocab, 0, t.rows(), dots.is_some(), 0), groups(t.seqs, 64));
    }
    fn ce_backward_rows(
        &mut self,
        t: Tokens<DeviceIds>,
        head: &DeviceHead<DeviceBuf>,
        (weights, w_at): (&DeviceBuf, usize),
        (r0, rows): (usize, usize),
        vocab: usize,
        z: Pair<DeviceBuf>,
    ) {
        let binds = Binds::new(self)
            .buf(0, &t.ids.ids)
            .read(9, Some(&head.stats))
            .read(10, Some(&head.counts))
            .read(11, Some(weights))
            .write(12, Some(z.v))
            .write(13, z.t)
            .list;
        let kernel = self.pipes.ce_backward.clone();
        self.dispatch(&kernel, binds, 4, ce_params(&t, vocab, r0, rows, z.t.is_some(), w_at), groups(rows, 1));
    }
    fn head_chunk_rows(&self, vocab: usize) -> usize {
        (self.head_chunk_logits / vocab.max(1)).max(1)
    }
    fn take_logits(&mut self) -> (DeviceBuf, DeviceBuf) {
        (std::mem::take(&mut self.logits), std::mem::take(&mut self.logits_t))
    }
    fn put_logits(&mut self, (z, zt): (DeviceBuf, DeviceBuf)) {
        self.logits = z;
        self.logits_t = zt;
    }
}

impl HostBuffers for WgpuKernels {
    fn upload(&mut self, host: &[f64]) -> DeviceBuf {
        let h: Vec<f32> = host.iter().map(|&x| x as f32).collect();
        self.upload_buf(&h).expect("wgpu upload")
    }
    fn download(&mut self, b: &DeviceBuf, len: usize) -> Vec<f64> {
        self.download_buf(b, len).expect("wgpu download").into_iter().map(f64::from).collect()
    }
    fn upload_ids(&mut self, host: &[u32]) -> DeviceIds {
        self.upload_tokens(host).expect("wgpu token upload")
    }
    fn download_sums(&mut self, s: &DeviceBuf, len: usize) -> Vec<f64> {
        HostBuffers::download(self, s, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::tests::validate;

    #[test]
    fn kernels_validate_with_naga() {
        for (name, src) in [
            ("gemm.wgsl", GEMM_WGSL),
            ("elementwise.wgsl", ELEMENTWISE_WGSL),
            ("rmsnorm.wgsl", RMSNORM_WGSL),
            ("attention.wgsl", ATTENTION_WGSL),
            ("embedding.wgsl", EMBEDDING_WGSL),
            ("cross_entropy.wgsl", CROSS_ENTROPY_WGSL),
        ] {
            validate(name, src, naga::valid::Capabilities::empty()).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// gemm_sg8.wgsl validates with subgroup operations, and needs them.
    #[test]
    fn gemm_sg8_validates_with_naga() {
        let module = naga::front::wgsl::parse_str(GEMM_SG8_WGSL).unwrap();
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::SUBGROUP);
        validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE).subgroup_operations(naga::valid::SubgroupOperationSet::all());
        validator.validate(&module).unwrap_or_else(|e| panic!("gemm_sg8.wgsl: {}", e.emit_to_string(GEMM_SG8_WGSL)));
        assert!(validate("gemm_sg8.wgsl", GEMM_SG8_WGSL, naga::valid::Capabilities::empty()).is_err());
    }
}
