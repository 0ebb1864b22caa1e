//! The Transformer's layer kernels on a CUDA device (`LayerKernels` for `model::Model`): the CUDA C
//! of kernels/cuda/{gemm,elementwise,rmsnorm,attention,embedding,cross_entropy}.cu, compiled by
//! NVRTC at first use.
//!
//! Methods only launch kernels (on the engine's stream: nothing waits). The interface returns no
//! errors: the first failure (a failed allocation or launch) is kept and returned by `flush`;
//! asynchronous device faults surface at the next synchronisation. The same kernels run on the
//! host through [`HostSim`] (`CudaKernels::on_host`), which is how the tests execute them
//! without a GPU.
//!
//! Each kernel takes its buffers as device pointers, in the order of the WGSL twin's bindings
//! (null where the WGSL binds a dummy), then its parameter struct by value; the structs below
//! mirror the .cu ones field for field.
use learnlaw_core::transformer::device::{self, DeviceHead, DeviceKernels};
use learnlaw_core::transformer::kernels::{
    positions_by_id, Dims, GemmShape, HostBuffers, LayerKernels, Norm, Operand, Output, Pair, PairMut, Param, ParamGrads, Tokens,
};
use std::rc::Rc;

use learnlaw_core::{Error, Result, Storage};

use crate::gpu::{device_error, Device, KernelFile};
use crate::host_sim::HostSim;
use crate::runtime::{arg, Mem, Runtime, Stream, MAX_PARAMS};

pub const GEMM: KernelFile = KernelFile {
    name: "gemm.cu",
    source: include_str!("../../../../kernels/cuda/gemm.cu"),
    entries: &["gemm_value", "gemm_pair", "gemm_bf16_value", "gemm_bf16_pair"],
    storages: &[Storage::F32],
};
pub const ELEMENTWISE: KernelFile = KernelFile {
    name: "elementwise.cu",
    source: include_str!("../../../../kernels/cuda/elementwise.cu"),
    entries: &["fill", "scale_copy", "axpby", "add", "relu_forward", "relu_backward", "sum_slices"],
    storages: &[Storage::F32],
};
pub const RMSNORM: KernelFile = KernelFile {
    name: "rmsnorm.cu",
    source: include_str!("../../../../kernels/cuda/rmsnorm.cu"),
    entries: &["stats", "affine", "backward", "param_partials", "param_reduce"],
    storages: &[Storage::F32],
};
pub const ATTENTION: KernelFile = KernelFile {
    name: "attention.cu",
    source: include_str!("../../../../kernels/cuda/attention.cu"),
    entries: &["forward", "backward_rows", "backward_cols", "flash_forward", "flash_backward_rows", "flash_backward_cols"],
    storages: &[Storage::F32],
};
pub const EMBEDDING: KernelFile = KernelFile {
    name: "embedding.cu",
    source: include_str!("../../../../kernels/cuda/embedding.cu"),
    entries: &["forward", "tokens_backward", "positions_backward"],
    storages: &[Storage::F32],
};
pub const CROSS_ENTROPY: KernelFile = KernelFile {
    name: "cross_entropy.cu",
    source: include_str!("../../../../kernels/cuda/cross_entropy.cu"),
    entries: &["forward_rows", "sequences", "backward_rows"],
    storages: &[Storage::F32],
};
/// The files of the layer kernels.
pub const TRANSFORMER_FILES: [KernelFile; 6] = [GEMM, ELEMENTWISE, RMSNORM, ATTENTION, EMBEDDING, CROSS_ENTROPY];

/// Threads per block of gemm.cu, elementwise.cu and rmsnorm.cu (their `BLOCK`).
const BLOCK: u32 = 256;
/// Threads per block of attention.cu, embedding.cu and cross_entropy.cu (their `WG`, the WGSL
/// workgroup size).
const WG: u32 = 64;
/// Head widths up to this run attention.cu's flash kernels (its FLASH_DH).
const FLASH_DH: usize = 16;
/// Rows per block of rmsnorm.cu's row kernels (a warp each).
const NORM_ROWS_PER_BLOCK: usize = 8;
/// Rows per block of rmsnorm.cu's parameter partial sums (its BLOCK_ROWS).
const NORM_BLOCK_ROWS: usize = 64;
/// The output tile of gemm.cu (its TILE).
const GEMM_TILE: usize = 64;
/// GEMMs of fewer output tiles than this split a long k (see `CudaKernels::gemm_split_k`): about
/// two blocks per SM of an H200 otherwise idle.
const SPLIT_TILES: usize = 256;
/// The k of one slice of a split GEMM (the default of `CudaKernels::split_k`), and the most slices.
const SPLIT_K: usize = 1024;
const MAX_SLICES: usize = 64;
/// Threads per block of gemm.cu's tensor-core entries (its TC_THREADS).
const TC_THREADS: u32 = 128;
/// Logits per chunk of the head + cross-entropy ([rows, vocab], value and tangent): bounds its
/// scratch memory (64 MiB each) whatever the set's size.
const HEAD_CHUNK_LOGITS: usize = 1 << 24;
/// Largest grid of the grid-stride kernels (more blocks add nothing but launch cost).
const MAX_BLOCKS: usize = 1 << 16;

/// A device buffer of f32 (`LayerKernels::Buf`): an allocation these kernels own (reused while
/// large enough), or a view of memory an engine vector owns. Its length is what the model last
/// sized it to.
#[derive(Default)]
pub struct DeviceBuf {
    owned: Option<Mem>,
    /// Device address of element 0 (0: never sized), and the floats there.
    ptr: u64,
    cap: usize,
    len: usize,
}

impl DeviceBuf {
    /// A view of `len` floats at `ptr`, which the caller keeps alive (and does not resize) while
    /// the view is used.
    pub(crate) fn view(ptr: u64, len: usize) -> Self {
        DeviceBuf { owned: None, ptr, cap: len, len }
    }
    /// Another view of the same memory.
    pub(crate) fn alias(&self) -> Self {
        DeviceBuf::view(self.ptr, self.len)
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Token rows on the device (`LayerKernels::Ids`) and the CSR index of their positions per id
/// that the embedding backward sums in row order with (see embedding.cu).
pub struct DeviceIds {
    _mem: [Mem; 3],
    ids: u64,
    csr_start: u64,
    csr_pos: u64,
    /// Ids 0..csr_vocab have an entry in csr_start.
    csr_vocab: usize,
}

/// What attention keeps for its backward: P and Ṗ [B, heads, L, L], or with the flash kernels
/// each row's log-sum-exp and μ = Σ_j P Ṡ [B, heads, L].
#[derive(Default)]
pub struct DeviceAttention {
    p: DeviceBuf,
    p_t: DeviceBuf,
    flash: bool,
}

/// The layer kernels of one CUDA device (f32 storage and accumulation).
pub struct CudaKernels {
    rt: Rc<dyn Runtime>,
    /// Scratch: the head's logits chunk [rows, vocab] and its tangent; rmsnorm's parameter
    /// partials; attention's gS and ġS [B, heads, L, L].
    logits: DeviceBuf,
    logits_t: DeviceBuf,
    norm_partials: DeviceBuf,
    attention_gs: DeviceBuf,
    attention_gs_t: DeviceBuf,
    head_chunk_logits: usize,
    /// GEMMs on tensor cores with bf16 operands (gemm.cu's `gemm_bf16_*`) instead of f32.
    bf16_gemm: bool,
    /// Attention through the kernels that store P even where the flash ones apply.
    stored_attention: bool,
    /// The k of one slice of a split-k GEMM, and the partial products' scratch (and tangents).
    split_k: usize,
    gemm_partials: DeviceBuf,
    gemm_partials_t: DeviceBuf,
    /// Bytes of the buffers these kernels allocated and still hold.
    allocated: u64,
    error: Option<Error>,
}

macro_rules! params {
    ($($name:ident { $($field:ident: $ty:ty),* $(,)? })*) => {$(
        /// The kernel-side struct of the same name (by value, C layout).
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        struct $name { $($field: $ty),* }
        const _: () = assert!(std::mem::size_of::<$name>() <= MAX_PARAMS);
    )*};
}

params! {
    GemmParams { m: u32, n: u32, k: u32, batch: u32, sa: u32, sb: u32, sc: u32, aa: u32, ab: u32, ac: u32, ta: u32, tb: u32,
                 beta: f32, flags: u32, tiles_m: u32, tiles_n: u32 }
    ElementwiseParams { len: u32, tangent: u32, value: f32, x_at: u32, y_at: u32, slices: u32, _pad1: u32, _pad2: u32 }
    NormParams { rows: u32, h: u32, pw: u32, pb: u32, tangent: u32, want_grad: u32, want_hvp: u32, blocks: u32 }
    AttentionParams { seqs: u32, len: u32, heads: u32, hidden: u32, scale: f32, tangent: u32, _pad0: u32, _pad1: u32 }
    EmbeddingParams { at: u32, seqs: u32, seq_len: u32, h: u32, vocab: u32, ptok: u32, ppos: u32, tangent: u32, want_grad: u32,
                      want_hvp: u32, csr_vocab: u32, _pad: u32 }
    CrossEntropyParams { at: u32, seqs: u32, seq_len: u32, vocab: u32, r0: u32, rows: u32, tangent: u32, w_at: u32 }
}

/// Device address of a buffer (0 when absent or never sized: the kernels do not read it).
fn ptr(b: Option<&DeviceBuf>) -> u64 {
    b.map_or(0, |b| b.ptr)
}

/// `b` in tangent mode, else nothing.
fn when(tangent: bool, b: &DeviceBuf) -> Option<&DeviceBuf> {
    tangent.then_some(b)
}

fn u(x: usize) -> u32 {
    u32::try_from(x).expect("sizes are checked against 32-bit indices when the engine is made")
}

/// Blocks for `items` at `per_block` items each (the kernels stride beyond `MAX_BLOCKS`).
fn blocks(items: usize, per_block: usize) -> u32 {
    items.div_ceil(per_block).clamp(1, MAX_BLOCKS) as u32
}

impl CudaKernels {
    /// Compiles (first use in the process) and loads the kernels on `gpu`.
    pub(crate) fn new(gpu: &Device) -> Result<Self> {
        // Compile every file now: a kernel that does not build is an error here, not mid-pass.
        let rt = Stream::new(gpu.clone());
        for f in &TRANSFORMER_FILES {
            rt.load(f)?;
        }
        Ok(Self::with_runtime(Rc::new(rt)))
    }

    /// The kernels compiled for the host and run on the CPU ([`HostSim`]): `Error::Unavailable`
    /// without a C++ compiler.
    pub fn on_host() -> Result<Self> {
        Ok(Self::with_runtime(Rc::new(HostSim::new()?)))
    }

    /// Where the kernels run (engines share it for their vector operations).
    pub(crate) fn runtime(&self) -> Rc<dyn Runtime> {
        self.rt.clone()
    }

    pub(crate) fn with_runtime(rt: Rc<dyn Runtime>) -> Self {
        CudaKernels {
            rt,
            logits: DeviceBuf::default(),
            logits_t: DeviceBuf::default(),
            norm_partials: DeviceBuf::default(),
            attention_gs: DeviceBuf::default(),
            attention_gs_t: DeviceBuf::default(),
            head_chunk_logits: HEAD_CHUNK_LOGITS,
            bf16_gemm: false,
            stored_attention: false,
            split_k: SPLIT_K,
            gemm_partials: DeviceBuf::default(),
            gemm_partials_t: DeviceBuf::default(),
            allocated: 0,
            error: None,
        }
    }

    /// The kernels on device `ordinal`, for the conformance tests.
    pub fn open(ordinal: usize) -> Result<Self> {
        Self::new(&Device::open(ordinal)?)
    }

    /// Chunks of at most `logits` logits in the head (at least one row each): less memory, more
    /// launches. Tests use it to cross chunk boundaries on small sets.
    pub fn with_head_chunk_logits(mut self, logits: usize) -> Self {
        self.head_chunk_logits = logits;
        self
    }

    /// Every GEMM on tensor cores: operands rounded to bf16, products and sums in f32 (about
    /// three significant digits per operand instead of seven; several times the f32 rate).
    pub fn with_bf16_gemm(mut self) -> Self {
        self.set_bf16_gemm(true);
        self
    }

    pub(crate) fn set_bf16_gemm(&mut self, on: bool) {
        self.bf16_gemm = on;
    }

    /// Split-k GEMMs from slices of `k` (instead of 1024) on: tests use it to run that path on
    /// small shapes.
    pub fn with_split_k(mut self, k: usize) -> Self {
        self.split_k = k.max(1);
        self
    }

    /// Attention by the kernels that store P [B, heads, L, L] (attention.cu's first entries) even
    /// where the flash ones (row statistics only, head width ≤ 16) apply: for tests and benches.
    pub fn with_stored_attention(mut self) -> Self {
        self.stored_attention = true;
        self
    }

    /// Bytes of device memory these kernels hold: activations, saved state and scratch of the
    /// largest pass so far (not the engine's vectors or data).
    pub fn working_set_bytes(&self) -> u64 {
        self.allocated
    }

    /// Blocks until every launched kernel has finished; returns the first error.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.rt.sync()
    }

    fn record_error(&mut self, e: Error) {
        self.error.get_or_insert(e);
    }

    /// Launches `entry` of `file` on `grid` blocks of `block` threads with `ptrs` then `params` as
    /// arguments (after an error, nothing more is launched until `flush`).
    fn launch<P: bytemuck::Pod>(&mut self, file: &KernelFile, entry: &str, ptrs: &[u64], params: P, grid: u32, block: u32) {
        if self.error.is_some() {
            return;
        }
        let mut args: Vec<&[u8]> = ptrs.iter().map(arg).collect();
        args.push(arg(&params));
        if let Err(e) = self.rt.launch(file, entry, &args, grid, block) {
            self.record_error(e);
        }
    }

    fn sized(&mut self, b: &mut DeviceBuf, len: usize) {
        if b.ptr != 0 && b.owned.is_none() && b.cap < len {
            // A view cannot grow (the engine sizes its vectors before viewing them).
            self.record_error(device_error(format!("a view of {} floats sized to {len}", b.cap)));
        } else if b.ptr == 0 || b.cap < len {
            if let Some(old) = b.owned.take() {
                self.allocated = self.allocated.saturating_sub(old.bytes as u64);
            }
            match self.rt.alloc(4 * len) {
                Ok(m) => {
                    self.allocated += m.bytes as u64;
                    (b.ptr, b.cap) = (m.ptr, m.bytes / 4);
                    b.owned = Some(m);
                }
                Err(e) => {
                    self.record_error(e);
                    (b.ptr, b.cap) = (0, 0);
                }
            }
        }
        b.len = len;
    }

    fn elementwise(&mut self, entry: &str, x: Pair<DeviceBuf>, y: Pair<DeviceBuf>, len: usize, a: f32) {
        if len == 0 {
            return;
        }
        let tangent = y.t.is_some();
        let params = ElementwiseParams { len: u(len), tangent: tangent as u32, value: a, ..Default::default() };
        self.launch(&ELEMENTWISE, entry, &[x.v.ptr, ptr(x.t), y.v.ptr, ptr(y.t)], params, blocks(len, BLOCK as usize), BLOCK);
    }

    fn fill(&mut self, b: &DeviceBuf, len: usize, value: f32) {
        self.elementwise("fill", Pair { v: &DeviceBuf::default(), t: None }, Pair { v: b, t: None }, len, value);
    }

    /// One launch of gemm.cu for the whole (batched) product.
    fn gemm_direct(&mut self, s: GemmShape, a: Operand<DeviceBuf>, b: Operand<DeviceBuf>, beta: f64, c: Output<DeviceBuf>) {
        let tangent = c.t.is_some();
        let flags = c.v.is_some() as u32 | (tangent as u32) << 1;
        let (tiles_m, tiles_n) = (s.m.div_ceil(GEMM_TILE), s.n.div_ceil(GEMM_TILE));
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
        let tan = |x: Option<&DeviceBuf>| if tangent { ptr(x) } else { 0 };
        let ptrs = [a.v.ptr, tan(a.t), b.v.ptr, tan(b.t), ptr(c.v.as_deref()), ptr(c.t.as_deref())];
        let grid = blocks(s.batch * tiles_m * tiles_n, 1);
        let (entry, threads) = match (self.bf16_gemm, tangent) {
            (false, false) => ("gemm_value", BLOCK),
            (false, true) => ("gemm_pair", BLOCK),
            (true, false) => ("gemm_bf16_value", TC_THREADS),
            (true, true) => ("gemm_bf16_pair", TC_THREADS),
        };
        self.launch(&GEMM, entry, &ptrs, params, grid, threads);
    }

    /// C ← op(A)·B + β·C with A transposed, as S slices of k: partial products (a strided batch
    /// over the slices, and one more for a remainder) into scratch [S, m, n], then their sum in
    /// slice order (elementwise.cu's sum_slices). Deterministic: S depends on the shape only.
    fn gemm_split_k(&mut self, s: GemmShape, a: Operand<DeviceBuf>, b: Operand<DeviceBuf>, beta: f64, c: Output<DeviceBuf>) {
        let tangent = c.t.is_some();
        let full = (s.k / self.split_k).min(MAX_SLICES);
        let kc = s.k / full;
        let rest = s.k - full * kc;
        let slices = full + (rest > 0) as usize;
        let mn = s.m * s.n;
        let (mut part, mut part_t) = (std::mem::take(&mut self.gemm_partials), std::mem::take(&mut self.gemm_partials_t));
        self.sized(&mut part, slices * mn);
        if tangent {
            self.sized(&mut part_t, slices * mn);
        }
        // `count` slices of `kc` rows of both operands from row k0, into partials from `slot`.
        let mut partial = |k: &mut Self, k0: usize, count: usize, kc: usize, slot: usize| {
            let shape = GemmShape { m: s.m, n: s.n, k: kc, batch: count, stride_a: kc * s.m, stride_b: kc * s.n, stride_c: mn };
            let ao = Operand { v: a.v, t: a.t, at: a.at + k0 * s.m, trans: true };
            let bo = Operand { v: b.v, t: b.t, at: b.at + k0 * s.n, trans: false };
            let out = Output { v: Some(&mut part), t: if tangent { Some(&mut part_t) } else { None }, at: slot * mn };
            k.gemm_direct(shape, ao, bo, 0.0, out);
        };
        partial(self, 0, full, kc, 0);
        if rest > 0 {
            partial(self, full * kc, 1, rest, full);
        }
        let params = ElementwiseParams {
            len: u(mn),
            tangent: tangent as u32,
            value: beta as f32,
            y_at: u(c.at),
            slices: u(slices),
            ..Default::default()
        };
        let ptrs = [part.ptr, ptr(when(tangent, &part_t)), ptr(c.v.as_deref()), ptr(c.t.as_deref())];
        self.launch(&ELEMENTWISE, "sum_slices", &ptrs, params, blocks(mn, BLOCK as usize), BLOCK);
        self.gemm_partials = part;
        self.gemm_partials_t = part_t;
    }
}

impl DeviceKernels for CudaKernels {
    /// y[y_at + i] ← a·x[x_at + i] for i < len.
    fn scale_copy(&mut self, a: f32, (x, x_at): (&DeviceBuf, usize), (y, y_at): (&DeviceBuf, usize), len: usize) {
        if len == 0 {
            return;
        }
        let params = ElementwiseParams { len: u(len), value: a, x_at: u(x_at), y_at: u(y_at), ..Default::default() };
        self.launch(&ELEMENTWISE, "scale_copy", &[x.ptr, 0, y.ptr, 0], params, blocks(len, BLOCK as usize), BLOCK);
    }

    /// y ← x + a·y over `len` values.
    fn axpby(&mut self, x: &DeviceBuf, a: f32, y: &DeviceBuf, len: usize) {
        self.elementwise("axpby", Pair { v: x, t: None }, Pair { v: y, t: None }, len, a);
    }

    /// y ← y + a·x over `len` values.
    fn axpy(&mut self, a: f32, x: &DeviceBuf, y: &DeviceBuf, len: usize) {
        self.elementwise("add", Pair { v: x, t: None }, Pair { v: y, t: None }, len, a);
    }

    /// Token rows on the device, with their CSR index.
    fn upload_tokens(&mut self, host: &[u32]) -> Result<DeviceIds> {
        if host.len() >= u32::MAX as usize {
            return Err(Error::bad_input("token data", format!("{} ids exceed the CUDA kernels' 32-bit indices", host.len())));
        }
        let (start, pos) = positions_by_id(host);
        let upload = |data: &[u32]| -> Result<Mem> {
            let m = self.rt.alloc(4 * data.len())?;
            self.rt.upload(&m, bytemuck::cast_slice(data))?;
            Ok(m)
        };
        let mem = [upload(host)?, upload(&start)?, upload(&pos)?];
        let (ids, csr_start, csr_pos) = (mem[0].ptr, mem[1].ptr, mem[2].ptr);
        Ok(DeviceIds { _mem: mem, ids, csr_start, csr_pos, csr_vocab: start.len() - 1 })
    }

    fn upload_buf(&mut self, host: &[f32]) -> Result<DeviceBuf> {
        let mut b = DeviceBuf::default();
        self.sized(&mut b, host.len());
        self.flush()?;
        if let Some(m) = &b.owned {
            self.rt.upload(m, bytemuck::cast_slice(host))?;
        }
        Ok(b)
    }

    /// The first `len` values of a buffer these kernels allocated.
    fn download_buf(&mut self, b: &DeviceBuf, len: usize) -> Result<Vec<f32>> {
        self.flush()?;
        let m = b.owned.as_ref().filter(|_| len <= b.len).ok_or_else(|| {
            device_error(format!("download of {len} values from a buffer of {} (views are downloaded by their owner)", b.len))
        })?;
        let mut out = vec![0f32; len];
        self.rt.download(m, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    /// The first error since the last flush, if any.
    fn flush(&mut self) -> Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }

    fn alias(b: &DeviceBuf) -> DeviceBuf {
        b.alias()
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
        let ptrs = [t.ids.ids, z.v.ptr, ptr(z.t), head.stats.ptr];
        self.launch(&CROSS_ENTROPY, "forward_rows", &ptrs, ce_params(&t, vocab, r0, rows, z.t.is_some(), 0), blocks(rows, 1), WG);
    }
    fn ce_sequences(
        &mut self,
        t: Tokens<DeviceIds>,
        vocab: usize,
        head: &DeviceHead<DeviceBuf>,
        losses: &DeviceBuf,
        dots: Option<&DeviceBuf>,
    ) {
        let ptrs = [t.ids.ids, head.stats.ptr, losses.ptr, ptr(dots), head.counts.ptr];
        let params = ce_params(&t, vocab, 0, t.rows(), dots.is_some(), 0);
        self.launch(&CROSS_ENTROPY, "sequences", &ptrs, params, blocks(t.seqs, WG as usize), WG);
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
        let ptrs = [t.ids.ids, head.stats.ptr, head.counts.ptr, weights.ptr, z.v.ptr, ptr(z.t)];
        let params = ce_params(&t, vocab, r0, rows, z.t.is_some(), w_at);
        self.launch(&CROSS_ENTROPY, "backward_rows", &ptrs, params, blocks(rows, 1), WG);
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

impl LayerKernels for CudaKernels {
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
        let y = Pair { v: &*y.v, t: y.t.as_deref() };
        self.elementwise("add", x, y, len, 1.0);
    }

    fn gemm(&mut self, s: GemmShape, a: Operand<DeviceBuf>, b: Operand<DeviceBuf>, beta: f64, c: Output<DeviceBuf>) {
        if s.m == 0 || s.n == 0 || s.batch == 0 {
            return;
        }
        // Few output tiles over a long k (the weight gradients: k = every token of a chunk): the
        // k range in slices, one strided batch of partial products into scratch, then their sum
        // in slice order. Aᵀ and B untransposed (the weight gradients' layout) make each slice a
        // contiguous block of rows of both operands.
        let tiles = s.m.div_ceil(GEMM_TILE) * s.n.div_ceil(GEMM_TILE);
        if s.batch == 1 && a.trans && !b.trans && tiles < SPLIT_TILES && s.k >= 2 * self.split_k {
            return self.gemm_split_k(s, a, b, beta, c);
        }
        self.gemm_direct(s, a, b, beta, c);
    }

    fn embed_forward(&mut self, t: Tokens<DeviceIds>, tok: Param<DeviceBuf>, pos: Param<DeviceBuf>, h: usize, x: PairMut<DeviceBuf>) {
        let items = t.rows() * h;
        if items == 0 {
            return;
        }
        let tangent = x.t.is_some();
        let ptrs = [t.ids.ids, t.ids.csr_start, t.ids.csr_pos, tok.theta.ptr, ptr(tok.dir), 0, 0, x.v.ptr, ptr(x.t.as_deref())];
        let params = embedding_params(&t, h, 0, (tok.range.start, pos.range.start), tangent, (false, false));
        self.launch(&EMBEDDING, "forward", &ptrs, params, blocks(items, WG as usize), WG);
    }

    fn embed_backward(&mut self, t: Tokens<DeviceIds>, g: Pair<DeviceBuf>, h: usize, vocab: usize, out: ParamGrads<DeviceBuf>) {
        if t.rows() == 0 || (out.grad.is_none() && out.hvp.is_none()) {
            return;
        }
        let want = (out.grad.is_some(), out.hvp.is_some());
        let tangent = g.t.is_some() && want.1;
        let (ptok, ppos) = (out.range.start, out.range.start + vocab * h);
        let params = embedding_params(&t, h, vocab, (ptok, ppos), tangent, want);
        let g_t = if tangent { ptr(g.t) } else { 0 };
        let ptrs = [t.ids.ids, t.ids.csr_start, t.ids.csr_pos, 0, 0, g.v.ptr, g_t, ptr(out.grad.as_deref()), ptr(out.hvp.as_deref())];
        let token_items = vocab.min(t.ids.csr_vocab) * h;
        self.launch(&EMBEDDING, "tokens_backward", &ptrs, params, blocks(token_items, WG as usize), WG);
        self.launch(&EMBEDDING, "positions_backward", &ptrs, params, blocks(t.len() * h, WG as usize), WG);
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
        let params =
            NormParams { rows: u(m), h: u(h), pw: u(w.range.start), pb: u(b.range.start), tangent: tangent as u32, ..Default::default() };
        let stats = [x.v.ptr, ptr(x.t), 0, 0, 0, 0, 0, 0, nm.n.v.ptr, ptr(when(tangent, &nm.n.t)), nm.r.v.ptr, ptr(when(tangent, &nm.r.t))];
        let affine = [
            nm.n.v.ptr,
            ptr(when(tangent, &nm.n.t)),
            w.theta.ptr,
            ptr(w.dir),
            0,
            0,
            0,
            0,
            nm.out.v.ptr,
            ptr(when(tangent, &nm.out.t)),
            0,
            0,
        ];
        self.launch(&RMSNORM, "stats", &stats, params, blocks(m, NORM_ROWS_PER_BLOCK), BLOCK);
        self.launch(&RMSNORM, "affine", &affine, params, blocks(m * h, BLOCK as usize), BLOCK);
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
        let nblocks = m.div_ceil(NORM_BLOCK_ROWS);
        let (want_grad, want_hvp) = (out.grad.is_some(), out.hvp.is_some() && tangent);
        let params = NormParams {
            rows: u(m),
            h: u(h),
            pw: u(out.range.start),
            pb: u(out.range.start + h),
            tangent: tangent as u32,
            want_grad: want_grad as u32,
            want_hvp: want_hvp as u32,
            blocks: u(nblocks),
        };
        let tan = |b: Option<&DeviceBuf>| if tangent { ptr(b) } else { 0 };
        let backward = [
            nm.n.v.ptr,
            ptr(when(tangent, &nm.n.t)),
            w.theta.ptr,
            tan(w.dir),
            gy.v.ptr,
            tan(gy.t),
            nm.r.v.ptr,
            ptr(when(tangent, &nm.r.t)),
            gx.v.ptr,
            ptr(gx.t.as_deref()),
            0,
            0,
        ];
        // The parameter sums write the gradient at pw: the input gradient reads θ's w at its own
        // offset.
        let input_params = NormParams { pw: u(w.range.start), pb: u(w.range.start + h), ..params };
        self.launch(&RMSNORM, "backward", &backward, input_params, blocks(m, NORM_ROWS_PER_BLOCK), BLOCK);
        if !(want_grad || want_hvp) {
            return;
        }
        let mut partials = std::mem::take(&mut self.norm_partials);
        self.sized(&mut partials, nblocks * 4 * h);
        let sums = [nm.n.v.ptr, ptr(when(tangent, &nm.n.t)), 0, 0, gy.v.ptr, tan(gy.t), 0, 0, partials.ptr, 0, 0, 0];
        let hvp = if want_hvp { ptr(out.hvp.as_deref()) } else { 0 };
        let reduce = [partials.ptr, 0, 0, 0, 0, 0, 0, 0, ptr(out.grad.as_deref()), hvp, 0, 0];
        self.launch(&RMSNORM, "param_partials", &sums, params, blocks(nblocks, 1), BLOCK);
        self.launch(&RMSNORM, "param_reduce", &reduce, params, blocks(2 * h, BLOCK as usize), BLOCK);
        self.norm_partials = partials;
    }

    fn relu_forward(&mut self, x: Pair<DeviceBuf>, len: usize, y: PairMut<DeviceBuf>) {
        let y = Pair { v: &*y.v, t: y.t.as_deref() };
        self.elementwise("relu_forward", x, y, len, 0.0);
    }
    fn relu_backward(&mut self, x: &DeviceBuf, len: usize, g: PairMut<DeviceBuf>) {
        let g = Pair { v: &*g.v, t: g.t.as_deref() };
        self.elementwise("relu_backward", Pair { v: x, t: None }, g, len, 0.0);
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
        saved.flash = d.hidden / d.heads <= FLASH_DH && !self.stored_attention;
        // The flash kernels keep two floats per row, the others P and Ṗ.
        let per_item = if saved.flash { 1 } else { d.len };
        self.sized(&mut saved.p, items * per_item);
        if tangent {
            self.sized(&mut saved.p_t, items * per_item);
        }
        let ptrs = [
            q.v.ptr,
            ptr(q.t),
            k.v.ptr,
            ptr(k.t),
            v.v.ptr,
            ptr(v.t),
            saved.p.ptr,
            ptr(when(tangent, &saved.p_t)),
            o.v.ptr,
            ptr(o.t.as_deref()),
        ];
        let entry = if saved.flash { "flash_forward" } else { "forward" };
        self.launch(&ATTENTION, entry, &ptrs, attention_params(d, scale, tangent), blocks(items, WG as usize), WG);
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
        let params = attention_params(d, scale, tangent);
        let grid = blocks(items, WG as usize);
        let tan = |b: Option<&DeviceBuf>| if tangent { ptr(b) } else { 0 };
        let p_t = ptr(when(tangent, &saved.p_t));
        let (mut gs, mut gs_t) = (std::mem::take(&mut self.attention_gs), std::mem::take(&mut self.attention_gs_t));
        if saved.flash {
            // ρ and ρ̇ per row, from the rows kernel to the columns kernel.
            self.sized(&mut gs, 2 * items);
            let inputs = [q.v.ptr, tan(q.t), k.v.ptr, tan(k.t), v.v.ptr, tan(v.t), saved.p.ptr, p_t, go.v.ptr, tan(go.t), gs.ptr];
            let mut rows = inputs.to_vec();
            rows.extend([gq.v.ptr, ptr(gq.t.as_deref())]);
            let mut cols = inputs.to_vec();
            cols.extend([gk.v.ptr, ptr(gk.t.as_deref()), gv.v.ptr, ptr(gv.t.as_deref())]);
            self.launch(&ATTENTION, "flash_backward_rows", &rows, params, grid, WG);
            self.launch(&ATTENTION, "flash_backward_cols", &cols, params, grid, WG);
        } else {
            self.sized(&mut gs, items * d.len);
            if tangent {
                self.sized(&mut gs_t, items * d.len);
            }
            let gs_tp = ptr(when(tangent, &gs_t));
            let rows = [
                k.v.ptr,
                tan(k.t),
                v.v.ptr,
                tan(v.t),
                saved.p.ptr,
                p_t,
                go.v.ptr,
                tan(go.t),
                gs.ptr,
                gs_tp,
                gq.v.ptr,
                ptr(gq.t.as_deref()),
            ];
            let cols = [
                q.v.ptr,
                tan(q.t),
                gs.ptr,
                gs_tp,
                saved.p.ptr,
                p_t,
                go.v.ptr,
                tan(go.t),
                gk.v.ptr,
                ptr(gk.t.as_deref()),
                gv.v.ptr,
                ptr(gv.t.as_deref()),
            ];
            self.launch(&ATTENTION, "backward_rows", &rows, params, grid, WG);
            self.launch(&ATTENTION, "backward_cols", &cols, params, grid, WG);
        }
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

/// embedding.cu's parameters; `vocab` bounds the token ids the backward visits.
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
        ..Default::default()
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

impl HostBuffers for CudaKernels {
    fn upload(&mut self, host: &[f64]) -> DeviceBuf {
        let h: Vec<f32> = host.iter().map(|&x| x as f32).collect();
        self.upload_buf(&h).expect("cuda upload")
    }
    fn download(&mut self, b: &DeviceBuf, len: usize) -> Vec<f64> {
        self.download_buf(b, len).expect("cuda download").into_iter().map(f64::from).collect()
    }
    fn upload_ids(&mut self, host: &[u32]) -> DeviceIds {
        self.upload_tokens(host).expect("cuda token upload")
    }
    fn download_sums(&mut self, s: &DeviceBuf, len: usize) -> Vec<f64> {
        HostBuffers::download(self, s, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The by-value parameter structs have the .cu structs' sizes (no padding surprises).
    #[test]
    fn parameter_structs_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<GemmParams>(), 64);
        assert_eq!(std::mem::size_of::<ElementwiseParams>(), 32);
        assert_eq!(std::mem::size_of::<NormParams>(), 32);
        assert_eq!(std::mem::size_of::<AttentionParams>(), 32);
        assert_eq!(std::mem::size_of::<EmbeddingParams>(), 48);
        assert_eq!(std::mem::size_of::<CrossEntropyParams>(), 32);
    }
}
