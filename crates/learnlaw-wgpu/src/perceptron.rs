//! The perceptron task on a wgpu device: X sharded into binding-sized buffers, the fused per-step
//! kernels of kernels/wgsl/perceptron.wgsl, and its [`Engine`] (vectors and policy operations
//! come from the shared [`Gpu`] context).
use learnlaw_core::data::{Examples, PerceptronData};
use learnlaw_core::{Engine, Error, Result, Set, StepFlops, Storage};
use wgpu::util::DeviceExt;

use crate::gpu::{check_len, delegate_to_gpu, whole, Access, Dispatch, Gpu, Kernel, Options, WgpuVec, BACKEND};

/// Rows per workgroup of the `rows` kernel (`WG` in perceptron.wgsl) = rows per partial-sum chunk.
const CHUNK_ROWS: usize = 256;
/// Invocations per workgroup of `combine`.
const COMBINE_WG: usize = 64;

const PERCEPTRON_WGSL: &str = include_str!("../../../kernels/wgsl/perceptron.wgsl");

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

struct Kernels {
    rows: Kernel,
    combine: Kernel,
    reduce_loss: Kernel,
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
    gpu: Gpu,
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
    dummies: Dummies,
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
        let gpu = Gpu::new(opts)?;
        let storage = opts.storage;
        let kernels = gpu.compile(|gpu| Kernels::new(gpu, storage))?;
        let dim = data.dim;
        let stride = dim.next_multiple_of(4);
        let rows_per_shard = shard_rows(stride, storage.bytes(), gpu.max_binding, gpu.align, gpu.max_groups)?;
        let upload_set = |name: &str, set: &Examples| -> Result<DeviceSet> {
            let mut shards = Vec::new();
            let (mut row0, mut chunk0) = (0, 0);
            while row0 < set.len() {
                let rows = rows_per_shard.min(set.len() - row0);
                let init = |what: &str, contents: &[u8]| {
                    gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
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
            if bytes as u64 > gpu.max_binding {
                return Err(Error::bad_input(
                    format!("wgpu {what}"),
                    format!(
                        "{bytes} bytes (N/256 × D f32) exceed one storage binding ({} bytes): too many examples for this device",
                        gpu.max_binding
                    ),
                ));
            }
        }
        let storage_usage = wgpu::BufferUsages::STORAGE;
        let dummy = |label: &str| gpu.buffer(label, 16, storage_usage);
        let engine = WgpuPerceptron {
            partials_train: gpu.buffer("partials_train", train.chunks * dim * 4, storage_usage),
            partials_eval: gpu.buffer("partials_eval", eval_chunks * dim * 4, storage_usage),
            loss_partials: gpu.buffer("loss_partials", eval_chunks * 4, storage_usage),
            dummies: Dummies {
                vecb: dummy("dummy_vecb"),
                gamma: dummy("dummy_gamma"),
                out: dummy("dummy_out"),
                partials: dummy("dummy_partials"),
                loss_partials: dummy("dummy_loss_partials"),
                cv: dummy("dummy_cv"),
                p2: dummy("dummy_p2"),
            },
            gpu,
            storage,
            dim,
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

    /// Bytes per storage binding the engine uses (the device limit, or `Options::max_binding_bytes`).
    pub fn max_binding_bytes(&self) -> u64 {
        self.gpu.max_binding
    }

    /// Bind groups (the buffers of a dispatch) created so far, and held in the cache now: an
    /// unroll creates its bind groups in its first outer epoch only; dropped vectors' leave.
    pub fn bind_groups(&self) -> (u64, usize) {
        self.gpu.bind_groups()
    }

    /// Number of shards (buffers) the training matrix is split into.
    pub fn train_shards(&self) -> usize {
        self.train.shards.len()
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
                Some((buf, base)) => self.gpu.window(buf, 4, base + s.row0, s.rows),
                None => (whole(4, &d.gamma), 0),
            };
            let (out_bind, out_shift) = match out {
                Some((buf, base)) => self.gpu.window(buf, 5, base + s.row0, s.rows),
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
            Some((buf, i)) => self.gpu.window(buf, 21, i, 1),
            None => (whole(21, &self.gpu.scalars), 0),
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

    /// Row t of a [T, N] policy: at least (t + 1)·N elements.
    fn check_policy(&self, what: &str, gamma: &WgpuVec, t: usize) -> Result<()> {
        let n = self.train.rows;
        if gamma.len < (t + 1) * n {
            return Err(Error::shape(what, format!("at least {} rows of {n}", t + 1), gamma.len));
        }
        Ok(())
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
    fn new(gpu: &Gpu, storage: Storage) -> Self {
        let perceptron = gpu.module(&format!("perceptron.wgsl ({})", storage.name()), &perceptron_wgsl(storage));
        use Access::*;
        Kernels {
            rows: gpu.kernel(
                &perceptron,
                "rows",
                &[(0, Read), (1, Read), (2, Read), (3, Read), (4, Read), (5, ReadWrite), (6, ReadWrite), (7, ReadWrite), (8, Uniform)],
            ),
            combine: gpu.kernel(&perceptron, "combine", &[(10, Read), (11, Read), (12, Read), (13, ReadWrite), (14, Uniform)]),
            reduce_loss: gpu.kernel(&perceptron, "reduce_loss", &[(20, Read), (21, ReadWrite), (22, Uniform)]),
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

    delegate_to_gpu!();

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
        self.gpu.submit_step(ds)
    }

    fn loss(&mut self, set: Set, theta: &WgpuVec) -> Result<f64> {
        self.gpu.flush_recorded()?;
        check_len("theta", theta, self.dim)?;
        let mut ds = Vec::new();
        self.mean_loss_dispatches(self.set(set), theta, None, None, &mut ds);
        self.gpu.submit_and_read_scalar(ds)
    }

    fn loss_grad(&mut self, set: Set, theta: &WgpuVec, grad: &mut WgpuVec) -> Result<f64> {
        self.gpu.flush_recorded()?;
        check_len("theta", theta, self.dim)?;
        check_len("grad", grad, self.dim)?;
        let mut ds = Vec::new();
        self.mean_loss_dispatches(self.set(set), theta, Some(grad), None, &mut ds);
        self.gpu.submit_and_read_scalar(ds)
    }

    fn train_losses(&mut self, theta: &WgpuVec, out: &mut WgpuVec) -> Result<()> {
        self.gpu.flush_recorded()?;
        check_len("theta", theta, self.dim)?;
        check_len("losses", out, self.train.rows)?;
        let mut ds = Vec::new();
        self.rows_dispatches(&self.train, mode::TRAIN_LOSS, theta, None, None, Some((&out.buf, 0)), None, None, 0.0, &mut ds);
        self.gpu.submit(ds, |_| {})
    }

    fn train_dots(&mut self, theta: &WgpuVec, v: &WgpuVec, out: &mut WgpuVec) -> Result<()> {
        self.gpu.flush_recorded()?;
        check_len("theta", theta, self.dim)?;
        check_len("v", v, self.dim)?;
        check_len("dots", out, self.train.rows)?;
        let mut ds = Vec::new();
        self.rows_dispatches(&self.train, mode::TRAIN_DOT, theta, Some(v), None, Some((&out.buf, 0)), None, None, 0.0, &mut ds);
        self.gpu.submit(ds, |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::tests::validate;

    #[test]
    fn kernels_validate_with_naga() {
        validate("perceptron.wgsl", PERCEPTRON_WGSL, naga::valid::Capabilities::default()).unwrap();
    }

    /// The f16-storage variant of perceptron.wgsl (generated from the same source) parses and
    /// validates with the SHADER_FLOAT16 capability, really stores X as f16, and is refused
    /// without the capability. Needs no adapter, so the f16 kernels are checked even where no
    /// adapter has SHADER_F16 (lavapipe 22.3, the CI adapter, has it and also runs them).
    #[test]
    fn f16_variant_validates_with_naga() {
        let src = perceptron_wgsl(Storage::F16);
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
