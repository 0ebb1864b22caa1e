//! The perceptron task on a wgpu device: the data sets' rows in binding-sized buffers, the fused
//! per-step kernels of kernels/wgsl/perceptron.wgsl, and its [`Engine`] (vectors and policy
//! operations come from the shared [`Gpu`] context).
use learnlaw_core::data::PerceptronData;
use learnlaw_core::{Engine, Error, Result, Set, StepFlops, Storage};
use wgpu::util::DeviceExt;

use crate::gpu::{check_len, delegate_to_gpu, whole, Access, Dispatch, Gpu, Kernel, Options, WgpuVec, BACKEND};

/// Rows per workgroup of the `rows` kernel (`WG` in perceptron.wgsl) = rows per partial-sum chunk.
const CHUNK_ROWS: usize = 256;
/// Lanes per row in the row phase of `rows` (`TEAM`): the subgroup variant needs subgroups of at
/// least this many lanes.
const TEAM: u32 = 8;
/// Invocations per workgroup of `finish` (`FWG`).
const FINISH_WG: usize = 64;

const PERCEPTRON_WGSL: &str = include_str!("../../../kernels/wgsl/perceptron.wgsl");

/// `mode` of a part of the `rows` kernel (see perceptron.wgsl).
mod mode {
    pub const FORWARD: u32 = 0;
    pub const BACKWARD: u32 = 1;
    pub const LOSS: u32 = 2;
    pub const GRAD: u32 = 3;
    pub const TRAIN_LOSS: u32 = 4;
    pub const TRAIN_DOT: u32 = 5;
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Part {
    rows: u32,
    x0: u32,
    chunk0: u32,
    groups: u32,
    mode: u32,
    gamma_shift: u32,
    out_shift: u32,
    sums: u32,
    loss: u32,
    coef: f32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    dim: u32,
    stride4: u32,
    slices: u32,
    _pad: u32,
    a: Part,
    b: Part,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct FinishParams {
    dim: u32,
    col_groups: u32,
    chunks1: u32,
    off1: u32,
    chunks2: u32,
    off2: u32,
    use_v: u32,
    beta: f32,
    delta: f32,
    loss_count: u32,
    loss_off: u32,
    out_index: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Rows [row0, row0 + rows) of a data set, at rows [x0, x0 + rows) of row buffer `buf`; the
/// piece's first row starts the set's chunk `chunk0`.
struct Piece {
    buf: usize,
    x0: usize,
    row0: usize,
    rows: usize,
    chunk0: usize,
}

/// X (padded rows) and y of consecutive pieces of the data sets.
struct RowBuffer {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
}

impl RowBuffer {
    fn new(device: &wgpu::Device, index: usize, x: &[u8], y: &[f32]) -> Self {
        let init = |what: &str, contents: &[u8]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&format!("{what}[{index}]")),
                contents,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        RowBuffer { x: init("x", x), y: init("y", bytemuck::cast_slice(y)) }
    }
}

struct DeviceSet {
    pieces: Vec<Piece>,
    rows: usize,
    chunks: usize,
}

impl DeviceSet {
    /// The set's piece in row buffer `buf` (a buffer holds at most one piece of a set: all but a
    /// set's last piece fill a buffer).
    fn piece_in(&self, buf: usize) -> Option<&Piece> {
        self.pieces.iter().find(|p| p.buf == buf)
    }
}

/// What a `rows` dispatch computes on the training set (part a): `mode`, with γ and out given as
/// (buffer, element offset of training row 0) and `coef` as in perceptron.wgsl.
struct TrainPass<'a> {
    mode: u32,
    gamma: Option<(&'a wgpu::Buffer, usize)>,
    out: Option<(&'a wgpu::Buffer, usize)>,
    coef: f32,
}

/// The column part of `finish`: out = (v or 0) + beta·Σ p1 + delta·Σ p2, each p given as
/// (offset in `sums`, chunks, factor).
struct Combine<'a> {
    v: Option<&'a WgpuVec>,
    p1: (usize, usize, f32),
    p2: Option<(usize, usize, f32)>,
    out: &'a WgpuVec,
}

/// The loss part of `finish`: scale·Σ of an evaluation set's `count` loss partials into
/// `scalars[0]`, or into element i of `slot = Some((buf, i))`.
struct LossSum<'a> {
    count: usize,
    scale: f32,
    slot: Option<(&'a wgpu::Buffer, usize)>,
}

struct Kernels {
    rows: Kernel,
    finish: Kernel,
}

/// The perceptron engine on a wgpu device: X in f32 or f16 ([`Storage`]), everything else f32.
pub struct WgpuPerceptron {
    gpu: Gpu,
    storage: Storage,
    subgroups: bool,
    dim: usize,
    buffers: Vec<RowBuffer>,
    train: DeviceSet,
    dev: DeviceSet,
    test: DeviceSet,
    kernels: Kernels,
    /// Partial sums: [train chunks, D] at 0, [max(dev, test) chunks, D] at `eval_sums`, then the
    /// evaluation set's per-chunk losses [max(dev, test) chunks] at `eval_losses`.
    sums: wgpu::Buffer,
    eval_sums: usize,
    eval_losses: usize,
    /// Stand-ins for bindings a dispatch does not use: one read-only, one writable (a dispatch
    /// leaves at most one writable binding unused, so no two writable bindings alias).
    dummy_read: wgpu::Buffer,
    dummy_write: wgpu::Buffer,
}

/// Rows per row buffer for rows of `dim` values of `elem_bytes` bytes: whole chunks, X within one
/// binding, a [rows] f32 window (plus alignment slack) within one binding, and the workgroups of
/// the pieces of two sets sharing a buffer (≤ 1 + rows/256) within `max_groups`.
fn shard_rows(dim: usize, elem_bytes: usize, max_binding: u64, align: u64, max_groups: usize) -> Result<usize> {
    let by_x = max_binding / (dim * elem_bytes) as u64;
    let by_window = max_binding.saturating_sub(align) / 4;
    let rows = by_x.min(by_window).min((max_groups.saturating_sub(1) * CHUNK_ROWS) as u64) as usize;
    if rows == 0 {
        return Err(Error::bad_input(
            format!("wgpu data (D = {dim})"),
            format!("one row of {} bytes exceeds the device's storage binding limit of {max_binding} bytes", dim * elem_bytes),
        ));
    }
    Ok(if rows >= CHUNK_ROWS { rows - rows % CHUNK_ROWS } else { rows })
}

/// Row slices of the column phase: the largest power of two with slices · stride4 ≤ 256, ≥ 1.
fn column_slices(stride4: usize) -> u32 {
    let fit = (CHUNK_ROWS / stride4.max(1)).max(1);
    1 << fit.ilog2()
}

impl WgpuPerceptron {
    /// The engine on the default adapter (high-performance preference; the `WGPU_BACKEND` and
    /// `WGPU_POWER_PREF` environment variables are honoured). No adapter: `Error::Unavailable`.
    pub fn new(data: &PerceptronData) -> Result<Self> {
        Self::with_options(data, &Options::default())
    }

    pub fn with_options(data: &PerceptronData, opts: &Options) -> Result<Self> {
        data.validate()?;
        let gpu = Gpu::new(opts)?;
        let storage = opts.storage;
        let subgroups = gpu.subgroup_sizes().is_some_and(|(min, max)| min >= TEAM && max as usize <= CHUNK_ROWS);
        let kernels = gpu.compile(|gpu| Kernels::new(gpu, storage, subgroups))?;
        let dim = data.dim;
        let stride = dim.next_multiple_of(4);
        let per_buffer = shard_rows(stride, storage.bytes(), gpu.max_binding, gpu.align, gpu.max_groups)?;

        // Every set in pieces of whole chunks, packed in order into buffers of ≤ per_buffer rows;
        // a buffer goes to the device once the next piece does not fit it.
        let mut buffers = Vec::new();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut sets = Vec::new();
        for (name, set) in [("train", &data.train), ("dev", &data.dev), ("test", &data.test)] {
            let mut pieces = Vec::new();
            let (mut row0, mut chunk0) = (0, 0);
            while row0 < set.len() {
                let rows = per_buffer.min(set.len() - row0);
                if y.len() + rows > per_buffer {
                    buffers.push(RowBuffer::new(&gpu.device, buffers.len(), &x, &y));
                    (x, y) = (Vec::new(), Vec::new());
                }
                pieces.push(Piece { buf: buffers.len(), x0: y.len(), row0, rows, chunk0 });
                // Rows padded with zeros to a multiple of 4 values: the kernels load X as vec4.
                x.extend(storage.encode_rows(&format!("wgpu x_{name}"), &set.x[row0 * dim..(row0 + rows) * dim], dim, stride, row0)?);
                y.extend_from_slice(&set.y[row0..row0 + rows]);
                row0 += rows;
                chunk0 += rows.div_ceil(CHUNK_ROWS);
            }
            sets.push(DeviceSet { pieces, rows: set.len(), chunks: chunk0 });
        }
        buffers.push(RowBuffer::new(&gpu.device, buffers.len(), &x, &y));
        let [train, dev, test] = <[DeviceSet; 3]>::try_from(sets).ok().expect("three sets");

        let eval_chunks = dev.chunks.max(test.chunks);
        let eval_sums = train.chunks * dim;
        let eval_losses = eval_sums + eval_chunks * dim;
        let sums_bytes = (eval_losses + eval_chunks) * 4;
        if sums_bytes as u64 > gpu.max_binding {
            return Err(Error::bad_input(
                "wgpu partial sums",
                format!(
                    "{sums_bytes} bytes ((N + K)/256 × D f32) exceed one storage binding ({} bytes): too many examples for this device",
                    gpu.max_binding
                ),
            ));
        }
        let storage_usage = wgpu::BufferUsages::STORAGE;
        let engine = WgpuPerceptron {
            sums: gpu.buffer("sums", sums_bytes, storage_usage),
            eval_sums,
            eval_losses,
            dummy_read: gpu.buffer("dummy_read", 16, storage_usage),
            dummy_write: gpu.buffer("dummy_write", 16, storage_usage),
            gpu,
            storage,
            subgroups,
            dim,
            buffers,
            train,
            dev,
            test,
            kernels,
        };
        engine.gpu.check_device()?;
        Ok(engine)
    }

    /// The adapter the engine runs on (name, backend, device type).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.gpu.info
    }

    /// The device's limits (as requested: the adapter's, with `Options::max_binding_bytes` applied).
    pub fn limits(&self) -> wgpu::Limits {
        self.gpu.device.limits()
    }

    /// The element type X is stored in on the device.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Whether the kernels sum through subgroup operations (the adapter offers them with
    /// subgroups of ≥ 8 lanes, and `Options::no_subgroups` is off) or through workgroup memory.
    pub fn uses_subgroups(&self) -> bool {
        self.subgroups
    }

    /// Bind groups (the buffers of a dispatch) created so far, and held in the cache now: an
    /// unroll creates its bind groups in its first outer epoch only; dropped vectors' leave.
    pub fn bind_groups(&self) -> (u64, usize) {
        self.gpu.bind_groups()
    }

    /// Bytes per storage binding the engine uses (the device limit, or `Options::max_binding_bytes`).
    pub fn max_binding_bytes(&self) -> u64 {
        self.gpu.max_binding
    }

    /// Number of buffers the training matrix is split over.
    pub fn train_shards(&self) -> usize {
        self.train.pieces.len()
    }

    /// Blocks until all submitted work has finished (for timing).
    pub fn sync(&mut self) -> Result<()> {
        self.gpu.sync()
    }

    fn set(&self, set: Set) -> &DeviceSet {
        match set {
            Set::Dev => &self.dev,
            Set::Test => &self.test,
        }
    }

    /// `rows` dispatches: `train` on the training set as part a, an evaluation set's LOSS or GRAD
    /// as part b, one dispatch per buffer that holds rows of either.
    fn rows_dispatches(
        &self,
        theta: &WgpuVec,
        vecb: Option<&WgpuVec>,
        train: Option<TrainPass>,
        eval: Option<(&DeviceSet, u32)>,
        into: &mut Vec<Dispatch>,
    ) {
        let part = |p: &Piece, mode: u32, sums: usize, loss: usize| Part {
            rows: p.rows as u32,
            x0: p.x0 as u32,
            chunk0: p.chunk0 as u32,
            groups: p.rows.div_ceil(CHUNK_ROWS) as u32,
            mode,
            sums: sums as u32,
            loss: loss as u32,
            ..Part::default()
        };
        for (b, buffer) in self.buffers.iter().enumerate() {
            let pa = train.as_ref().and_then(|_| self.train.piece_in(b));
            let pb = eval.and_then(|(set, _)| set.piece_in(b));
            if pa.is_none() && pb.is_none() {
                continue;
            }
            let (mut gamma_bind, mut out_bind) = (whole(4, &self.dummy_read), whole(5, &self.dummy_write));
            let mut a = Part::default();
            if let (Some(p), Some(t)) = (pa, &train) {
                a = Part { coef: t.coef, ..part(p, t.mode, 0, 0) };
                if let Some((buf, base)) = t.gamma {
                    (gamma_bind, a.gamma_shift) = self.gpu.window(buf, 4, base + p.row0, p.rows);
                }
                if let Some((buf, base)) = t.out {
                    (out_bind, a.out_shift) = self.gpu.window(buf, 5, base + p.row0, p.rows);
                }
            }
            let b_part = match (pb, eval) {
                (Some(p), Some((_, mode))) => part(p, mode, self.eval_sums, self.eval_losses),
                _ => Part::default(),
            };
            let params = RowParams {
                dim: self.dim as u32,
                stride4: self.dim.div_ceil(4) as u32,
                slices: column_slices(self.dim.div_ceil(4)),
                _pad: 0,
                a,
                b: b_part,
            };
            into.push(Dispatch {
                kernel: self.kernels.rows.clone(),
                binds: vec![
                    whole(0, &buffer.x),
                    whole(1, &buffer.y),
                    whole(2, &theta.buf),
                    whole(3, vecb.map_or(&self.dummy_read, |v| &v.buf)),
                    gamma_bind,
                    out_bind,
                    whole(6, &self.sums),
                ],
                param_binding: 7,
                params: bytemuck::bytes_of(&params).to_vec(),
                groups: a.groups + b_part.groups,
            });
        }
    }

    /// One `finish` dispatch: the combine, the loss sum, or both.
    fn finish_dispatch(&self, combine: Option<Combine>, loss: Option<LossSum>) -> Dispatch {
        let mut params = FinishParams { dim: self.dim as u32, ..FinishParams::default() };
        let (mut cv, mut cout) = (whole(10, &self.dummy_read), whole(12, &self.dummy_write));
        if let Some(c) = combine {
            params.col_groups = self.dim.div_ceil(FINISH_WG) as u32;
            (params.off1, params.chunks1, params.beta) = (c.p1.0 as u32, c.p1.1 as u32, c.p1.2);
            if let Some((off, chunks, delta)) = c.p2 {
                (params.off2, params.chunks2, params.delta) = (off as u32, chunks as u32, delta);
            }
            if let Some(v) = c.v {
                (params.use_v, cv) = (1, whole(10, &v.buf));
            }
            cout = whole(12, &c.out.buf);
        }
        let mut target = whole(13, &self.dummy_write);
        if let Some(l) = &loss {
            (params.loss_count, params.loss_off, params.scale) = (l.count as u32, self.eval_losses as u32, l.scale);
            (target, params.out_index) = match l.slot {
                Some((buf, i)) => self.gpu.window(buf, 13, i, 1),
                None => (whole(13, &self.gpu.scalars), 0),
            };
        }
        Dispatch {
            kernel: self.kernels.finish.clone(),
            binds: vec![cv, whole(11, &self.sums), cout, target],
            param_binding: 14,
            params: bytemuck::bytes_of(&params).to_vec(),
            groups: params.col_groups + loss.is_some() as u32,
        }
    }

    /// The mean loss of an evaluation set (and its gradient into `grad`) into `scalars[0]`.
    fn mean_loss(&mut self, set: Set, theta: &WgpuVec, grad: Option<&WgpuVec>) -> Result<f64> {
        let s = self.set(set);
        let inv = (1.0 / s.rows as f64) as f32;
        let mut ds = Vec::new();
        self.rows_dispatches(theta, None, None, Some((s, if grad.is_some() { mode::GRAD } else { mode::LOSS })), &mut ds);
        let combine = grad.map(|out| Combine { v: None, p1: (self.eval_sums, s.chunks, inv), p2: None, out });
        ds.push(self.finish_dispatch(combine, Some(LossSum { count: s.chunks, scale: inv, slot: None })));
        self.gpu.submit_and_read_scalar(ds)
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

/// perceptron.wgsl for a storage type of X and a team-sum variant: the common part of the file
/// with the section after `// @variant subgroup` or `// @variant workgroup`; for f16 the one type
/// substitution `alias xelem = f32;` → `f16` (the kernels convert each loaded vec4 of X to f32),
/// plus the `enable f16;` directive.
fn perceptron_wgsl(storage: Storage, subgroups: bool) -> String {
    const MARK: &str = "// @variant ";
    let want = if subgroups { "subgroup\n" } else { "workgroup\n" };
    let mut sections = PERCEPTRON_WGSL.split(MARK);
    let common = sections.next().unwrap_or_default();
    let variant = sections.find(|s| s.starts_with(want)).expect("perceptron.wgsl has both variant sections");
    let src = format!("{common}{MARK}{variant}");
    match storage {
        Storage::F32 | Storage::Bf16 => src,
        Storage::F16 => {
            const ALIAS: &str = "alias xelem = f32;";
            debug_assert_eq!(src.matches(ALIAS).count(), 1, "perceptron.wgsl must declare `{ALIAS}` once");
            format!("enable f16;\n{}", src.replacen(ALIAS, "alias xelem = f16;", 1))
        }
    }
}

impl Kernels {
    fn new(gpu: &Gpu, storage: Storage, subgroups: bool) -> Self {
        let variant = if subgroups { "subgroup" } else { "workgroup" };
        let perceptron = gpu.module(&format!("perceptron.wgsl ({}, {variant})", storage.name()), &perceptron_wgsl(storage, subgroups));
        use Access::*;
        Kernels {
            rows: gpu.kernel(
                &perceptron,
                "rows",
                &[(0, Read), (1, Read), (2, Read), (3, Read), (4, Read), (5, ReadWrite), (6, ReadWrite), (7, Uniform)],
            ),
            finish: gpu.kernel(&perceptron, "finish", &[(10, Read), (11, Read), (12, ReadWrite), (13, ReadWrite), (14, Uniform)]),
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

    delegate_to_gpu!(gpu);

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
        check_len("theta", theta, dim)?;
        check_len("theta_next", theta_next, dim)?;
        self.check_policy("policy", gamma, t)?;
        if let Some((curve, i)) = &dev_loss {
            if *i >= curve.len {
                return Err(Error::shape("dev-loss curve", format!("more than {i} entries"), curve.len));
            }
        }
        let n = self.train.rows;
        let train = TrainPass { mode: mode::FORWARD, gamma: Some((&gamma.buf, t * n)), out: None, coef: 0.0 };
        let mut ds = Vec::new();
        self.rows_dispatches(theta, None, Some(train), dev_loss.as_ref().map(|_| (&self.dev, mode::LOSS)), &mut ds);
        let combine = Combine { v: Some(theta), p1: (0, self.train.chunks, -(eta as f32)), p2: None, out: theta_next };
        // The loss sum writes L_dev(θ) straight into curve[i]: no readback, no wait.
        let scale = (1.0 / self.dev.rows as f64) as f32;
        let loss = dev_loss.as_ref().map(|(curve, i)| LossSum { count: self.dev.chunks, scale, slot: Some((&curve.buf, *i)) });
        ds.push(self.finish_dispatch(Some(combine), loss));
        self.gpu.submit_step(ds)
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
        check_len("theta", theta, dim)?;
        check_len("lambda_next", lambda_next, dim)?;
        check_len("lambda", lambda, dim)?;
        self.check_policy("policy", gamma, t)?;
        check_len("grad_gamma", grad_gamma, gamma.len)?;
        let n = self.train.rows;
        let train =
            TrainPass { mode: mode::BACKWARD, gamma: Some((&gamma.buf, t * n)), out: Some((&grad_gamma.buf, t * n)), coef: -(eta as f32) };
        let mut ds = Vec::new();
        self.rows_dispatches(theta, Some(lambda_next), Some(train), Some((&self.dev, mode::GRAD)), &mut ds);
        let dev_scale = (dev_weight / self.dev.rows as f64) as f32;
        let combine = Combine {
            v: Some(lambda_next),
            p1: (0, self.train.chunks, -(eta as f32)),
            p2: Some((self.eval_sums, self.dev.chunks, dev_scale)),
            out: lambda,
        };
        ds.push(self.finish_dispatch(Some(combine), None));
        self.gpu.submit_step(ds)
    }

    fn loss(&mut self, set: Set, theta: &WgpuVec) -> Result<f64> {
        self.gpu.flush_recorded()?;
        check_len("theta", theta, self.dim)?;
        self.mean_loss(set, theta, None)
    }

    fn loss_grad(&mut self, set: Set, theta: &WgpuVec, grad: &mut WgpuVec) -> Result<f64> {
        self.gpu.flush_recorded()?;
        check_len("theta", theta, self.dim)?;
        check_len("grad", grad, self.dim)?;
        self.mean_loss(set, theta, Some(grad))
    }

    fn train_losses(&mut self, theta: &WgpuVec, out: &mut WgpuVec) -> Result<()> {
        self.gpu.flush_recorded()?;
        check_len("theta", theta, self.dim)?;
        check_len("losses", out, self.train.rows)?;
        let train = TrainPass { mode: mode::TRAIN_LOSS, gamma: None, out: Some((&out.buf, 0)), coef: 0.0 };
        let mut ds = Vec::new();
        self.rows_dispatches(theta, None, Some(train), None, &mut ds);
        self.gpu.submit(ds, |_| {})
    }

    fn train_dots(&mut self, theta: &WgpuVec, v: &WgpuVec, out: &mut WgpuVec) -> Result<()> {
        self.gpu.flush_recorded()?;
        check_len("theta", theta, self.dim)?;
        check_len("v", v, self.dim)?;
        check_len("dots", out, self.train.rows)?;
        let train = TrainPass { mode: mode::TRAIN_DOT, gamma: None, out: Some((&out.buf, 0)), coef: 0.0 };
        let mut ds = Vec::new();
        self.rows_dispatches(theta, Some(v), Some(train), None, &mut ds);
        self.gpu.submit(ds, |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::tests::validate;

    const SUBGROUP: naga::valid::Capabilities = naga::valid::Capabilities::SUBGROUP;

    /// Both team-sum variants parse and validate; the subgroup one needs the SUBGROUP capability
    /// and the workgroup one does not.
    #[test]
    fn kernels_validate_with_naga() {
        let caps = naga::valid::Capabilities::default();
        validate("perceptron.wgsl (workgroup)", &perceptron_wgsl(Storage::F32, false), caps).unwrap();
        let src = perceptron_wgsl(Storage::F32, true);
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), SUBGROUP);
        validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE).subgroup_operations(naga::valid::SubgroupOperationSet::all());
        validator.validate(&module).unwrap_or_else(|e| panic!("perceptron.wgsl (subgroup): {}", e.emit_to_string(&src)));
        assert!(validate("perceptron.wgsl (subgroup)", &src, caps).is_err(), "the subgroup variant must need SUBGROUP");
    }

    /// The f16-storage variant of perceptron.wgsl (generated from the same source) parses and
    /// validates with the SHADER_FLOAT16 capability, really stores X as f16, and is refused
    /// without the capability. Needs no adapter, so the f16 kernels are checked even where no
    /// adapter has SHADER_F16 (lavapipe 22.3, the CI adapter, has it and also runs them).
    #[test]
    fn f16_variant_validates_with_naga() {
        let src = perceptron_wgsl(Storage::F16, false);
        let module = validate("f16 perceptron.wgsl", &src, naga::valid::Capabilities::SHADER_FLOAT16).unwrap();
        let x = module.global_variables.iter().find(|(_, v)| v.name.as_deref() == Some("x")).expect("binding x").1;
        let naga::TypeInner::Array { base, .. } = module.types[x.ty].inner else { panic!("x is not an array") };
        assert_eq!(
            module.types[base].inner,
            naga::TypeInner::Vector { size: naga::VectorSize::Quad, scalar: naga::Scalar::F16 },
            "x must be vec4<f16>"
        );
        assert!(
            validate("f16 perceptron.wgsl", &src, naga::valid::Capabilities::default()).is_err(),
            "f16 kernels must need the SHADER_FLOAT16 capability"
        );
    }

    #[test]
    fn row_buffers_are_whole_chunks_within_a_binding() {
        // 128 MiB, D = 128: 262144 rows per buffer, a multiple of 256.
        assert_eq!(shard_rows(128, 4, 128 << 20, 256, 65535).unwrap(), 262144);
        // f16: twice the rows per binding.
        assert_eq!(shard_rows(128, 2, 128 << 20, 256, 65535).unwrap(), 524288);
        // D = 1: limited by the window of a [rows] vector and by the workgroup count (two sets'
        // pieces in one buffer take up to one workgroup more than its rows fill).
        assert_eq!(shard_rows(1, 4, 128 << 20, 256, 65535).unwrap(), 65534 * 256);
        assert_eq!(shard_rows(1, 4, 4096, 256, 65535).unwrap(), 768);
        // Rows too long for a whole chunk: fewer rows, still ≥ 1.
        assert_eq!(shard_rows(1000, 4, 4096 * 10, 256, 65535).unwrap(), 10);
        assert!(shard_rows(2000, 4, 4096, 256, 65535).is_err());
        assert_eq!(shard_rows(2000, 2, 4096, 256, 65535).unwrap(), 1);
    }

    #[test]
    fn column_slices_fill_the_workgroup() {
        assert_eq!(column_slices(1), 256);
        assert_eq!(column_slices(32), 8);
        assert_eq!(column_slices(33), 4);
        assert_eq!(column_slices(256), 1);
        assert_eq!(column_slices(1000), 1);
    }
}
