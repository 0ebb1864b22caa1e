//! The vector and policy operations every CUDA engine shares (vector.cu, simplex.cu): the
//! engine vector [`CudaVec`], its transfers, and the outer loop's updates of γ on the device.
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, LaunchConfig, PushKernelArg};
use learnlaw_core::engine::{rows_of, rows_of_pair, tie_rows_shape};
use learnlaw_core::{Error, Result, Storage};

use crate::gpu::{device_error, drv, function, Device, KernelFile};

/// Threads per block of these kernels (`BLOCK` in the .cu files).
const BLOCK: u32 = 256;

pub const SIMPLEX: KernelFile = KernelFile {
    name: "simplex.cu",
    source: include_str!("../../../kernels/cuda/simplex.cu"),
    entries: &["check_finite", "project_rows", "exp_grad_sums", "exp_grad_apply"],
    storages: &[Storage::F32],
};
pub const VECTOR: KernelFile = KernelFile {
    name: "vector.cu",
    source: include_str!("../../../kernels/cuda/vector.cu"),
    entries: &["axpy", "scale", "max_abs", "tie_rows"],
    storages: &[Storage::F32],
};

/// A device-resident f32 vector: one allocation (at least one element) and its length.
#[derive(Debug)]
pub struct CudaVec {
    pub(crate) buf: CudaSlice<f32>,
    pub(crate) len: usize,
}

impl CudaVec {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The underlying cudarc allocation (may be longer than `len()` when `len()` is 0).
    pub fn slice(&self) -> &CudaSlice<f32> {
        &self.buf
    }
}

struct SimplexKernels {
    _module: Arc<CudaModule>,
    check_finite: CudaFunction,
    project_rows: CudaFunction,
    exp_grad_sums: CudaFunction,
    exp_grad_apply: CudaFunction,
    /// [2] u64: non-finite flag, first bad index.
    flag: CudaSlice<u64>,
}

struct VectorKernels {
    _module: Arc<CudaModule>,
    axpy: CudaFunction,
    scale: CudaFunction,
    max_abs: CudaFunction,
    tie_rows: CudaFunction,
    /// max_abs's result: the bits of an f32.
    max_bits: CudaSlice<u32>,
}

/// The loaded vector.cu and simplex.cu (each at first use).
#[derive(Default)]
pub(crate) struct VectorOps {
    simplex: Option<SimplexKernels>,
    vector: Option<VectorKernels>,
}

/// `v` holds exactly `len` values.
pub(crate) fn check_len(what: &str, v: &CudaVec, len: usize) -> Result<()> {
    if v.len == len {
        Ok(())
    } else {
        Err(Error::shape(what, len, v.len))
    }
}

impl VectorOps {
    fn ensure_simplex(&mut self, gpu: &Device) -> Result<()> {
        if self.simplex.is_none() {
            let module = gpu.load_module(&SIMPLEX, Storage::F32)?;
            let flag = gpu.stream.alloc_zeros::<u64>(2).map_err(drv("allocating the flag"))?;
            self.simplex = Some(SimplexKernels {
                check_finite: function(&module, "check_finite")?,
                project_rows: function(&module, "project_rows")?,
                exp_grad_sums: function(&module, "exp_grad_sums")?,
                exp_grad_apply: function(&module, "exp_grad_apply")?,
                _module: module,
                flag,
            });
        }
        Ok(())
    }

    fn ensure_vector(&mut self, gpu: &Device) -> Result<()> {
        if self.vector.is_none() {
            let module = gpu.load_module(&VECTOR, Storage::F32)?;
            let max_bits = gpu.stream.alloc_zeros::<u32>(1).map_err(drv("allocating a scalar"))?;
            self.vector = Some(VectorKernels {
                axpy: function(&module, "axpy")?,
                scale: function(&module, "scale")?,
                max_abs: function(&module, "max_abs")?,
                tie_rows: function(&module, "tie_rows")?,
                max_bits,
                _module: module,
            });
        }
        Ok(())
    }

    /// Clears the simplex kernels' flag: [0, u64::MAX] (nothing flagged, no index yet).
    fn reset_flag(&mut self, gpu: &Device) -> Result<()> {
        let k = self.simplex.as_mut().ok_or_else(|| device_error("simplex kernels not loaded"))?;
        gpu.stream.memcpy_htod(&[0u64, u64::MAX], &mut k.flag).map_err(drv("resetting the policy flag"))
    }

    /// Waits for the device and reads the flag back: the first flagged index, if any.
    fn read_flag(&self, gpu: &Device) -> Result<Option<u64>> {
        let k = self.simplex.as_ref().ok_or_else(|| device_error("simplex kernels not loaded"))?;
        let mut flag = [0u64; 2];
        gpu.stream.memcpy_dtoh(&k.flag, &mut flag).map_err(drv("reading the policy flag"))?;
        gpu.stream.synchronize().map_err(drv("updating the policy"))?;
        Ok((flag[0] != 0).then_some(flag[1]))
    }

    fn grid_for_elems(gpu: &Device, elems: usize) -> u32 {
        elems.div_ceil(BLOCK as usize).clamp(1, gpu.sms * 8) as u32
    }

    /// Blocks of a kernel that takes one row per block (grid-stride beyond 16 per SM).
    fn grid_for_rows(gpu: &Device, rows: usize) -> u32 {
        rows.clamp(1, gpu.sms * 16) as u32
    }

    pub fn zeros(&mut self, gpu: &Device, len: usize) -> Result<CudaVec> {
        let buf = gpu.stream.alloc_zeros::<f32>(len.max(1)).map_err(drv("allocating a vector"))?;
        Ok(CudaVec { buf, len })
    }

    pub fn upload(&mut self, gpu: &Device, host: &[f32]) -> Result<CudaVec> {
        let mut v = self.zeros(gpu, host.len())?;
        if !host.is_empty() {
            gpu.stream.memcpy_htod(host, &mut v.buf.slice_mut(..host.len())).map_err(drv("uploading a vector"))?;
        }
        Ok(v)
    }

    pub fn download(&mut self, gpu: &Device, v: &CudaVec) -> Result<Vec<f32>> {
        if v.len == 0 {
            return Ok(Vec::new());
        }
        let mut out = vec![0f32; v.len];
        gpu.stream.memcpy_dtoh(&v.buf.slice(..v.len), &mut out).map_err(drv("downloading a vector"))?;
        gpu.stream.synchronize().map_err(drv("downloading a vector"))?;
        Ok(out)
    }

    pub fn copy(&mut self, gpu: &Device, src: &CudaVec, dst: &mut CudaVec) -> Result<()> {
        check_len("copy destination", dst, src.len)?;
        if src.len == 0 {
            return Ok(());
        }
        gpu.stream.memcpy_dtod(&src.buf.slice(..src.len), &mut dst.buf.slice_mut(..src.len)).map_err(drv("copying a vector"))
    }

    pub fn scale(&mut self, gpu: &Device, a: f64, x: &mut CudaVec) -> Result<()> {
        if x.len == 0 {
            return Ok(());
        }
        self.ensure_vector(gpu)?;
        let k = self.vector.as_ref().ok_or_else(|| device_error("vector kernels not loaded"))?;
        let (n, a) = (x.len as u64, a as f32);
        let grid = Self::grid_for_elems(gpu, x.len.div_ceil(4));
        let mut b = gpu.stream.launch_builder(&k.scale);
        b.arg(&mut x.buf).arg(&n).arg(&a);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `scale(float*, u64, float)`; n ≤ the allocation's length.
        unsafe { b.launch(cfg) }.map_err(drv("launching scale"))?;
        Ok(())
    }

    pub fn axpy(&mut self, gpu: &Device, a: f64, x: &CudaVec, y: &mut CudaVec) -> Result<()> {
        check_len("axpy y", y, x.len)?;
        if x.len == 0 {
            return Ok(());
        }
        self.ensure_vector(gpu)?;
        let k = self.vector.as_ref().ok_or_else(|| device_error("vector kernels not loaded"))?;
        let (n, a) = (x.len as u64, a as f32);
        let grid = Self::grid_for_elems(gpu, x.len.div_ceil(4));
        let mut b = gpu.stream.launch_builder(&k.axpy);
        b.arg(&x.buf).arg(&mut y.buf).arg(&n).arg(&a);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches `axpy(const float*, float*, u64, float)`; both hold n elements.
        unsafe { b.launch(cfg) }.map_err(drv("launching axpy"))?;
        Ok(())
    }

    pub fn project_simplex_rows(&mut self, gpu: &Device, v: &mut CudaVec, row_len: usize) -> Result<()> {
        let rows = rows_of("policy rows", v.len, row_len)?;
        if v.len == 0 {
            return Ok(());
        }
        self.ensure_simplex(gpu)?;
        let grid_check = Self::grid_for_elems(gpu, v.len);
        let grid_rows = Self::grid_for_rows(gpu, rows);
        self.reset_flag(gpu)?;
        let k = self.simplex.as_ref().ok_or_else(|| device_error("simplex kernels not loaded"))?;
        let (len, n, rows_u) = (v.len as u64, row_len as u64, rows as u64);
        let mut b = gpu.stream.launch_builder(&k.check_finite);
        b.arg(&v.buf).arg(&len).arg(&k.flag);
        let cfg = LaunchConfig { grid_dim: (grid_check, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches check_finite(const float*, u64, u64*); len ≤ the allocation.
        unsafe { b.launch(cfg) }.map_err(drv("launching check_finite"))?;
        let mut b = gpu.stream.launch_builder(&k.project_rows);
        b.arg(&mut v.buf).arg(&n).arg(&rows_u).arg(&k.flag);
        let cfg = LaunchConfig { grid_dim: (grid_rows, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches project_rows(float*, u64, u64, const u64*); rows·n = len.
        unsafe { b.launch(cfg) }.map_err(drv("launching project_rows"))?;
        match self.read_flag(gpu)? {
            Some(i) => Err(Error::non_finite_policy(i as usize, row_len)),
            None => Ok(()),
        }
    }

    pub fn max_abs(&mut self, gpu: &Device, x: &CudaVec) -> Result<f64> {
        if x.len == 0 {
            return Ok(0.0);
        }
        self.ensure_vector(gpu)?;
        let grid = Self::grid_for_elems(gpu, x.len);
        let k = self.vector.as_mut().ok_or_else(|| device_error("vector kernels not loaded"))?;
        gpu.stream.memcpy_htod(&[0u32], &mut k.max_bits).map_err(drv("resetting max_abs"))?;
        let n = x.len as u64;
        let mut b = gpu.stream.launch_builder(&k.max_abs);
        b.arg(&x.buf).arg(&n).arg(&mut k.max_bits);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches max_abs(const float*, u64, u32*); n ≤ the allocation.
        unsafe { b.launch(cfg) }.map_err(drv("launching max_abs"))?;
        let mut bits = [0u32];
        gpu.stream.memcpy_dtoh(&k.max_bits, &mut bits).map_err(drv("reading max_abs"))?;
        gpu.stream.synchronize().map_err(drv("reading max_abs"))?;
        Ok(f32::from_bits(bits[0]) as f64)
    }

    pub fn tie_rows(&mut self, gpu: &Device, v: &mut CudaVec, block: usize, row_len: usize) -> Result<()> {
        let rows = tie_rows_shape(v.len, block, row_len)?;
        if v.len == 0 {
            return Ok(());
        }
        self.ensure_vector(gpu)?;
        let grid = Self::grid_for_elems(gpu, rows.div_ceil(block) * row_len);
        let k = self.vector.as_ref().ok_or_else(|| device_error("vector kernels not loaded"))?;
        let (n, rows_u, block_u) = (row_len as u64, rows as u64, block as u64);
        let mut b = gpu.stream.launch_builder(&k.tie_rows);
        b.arg(&mut v.buf).arg(&n).arg(&rows_u).arg(&block_u);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches tie_rows(float*, u64, u64, u64); rows·n = len.
        unsafe { b.launch(cfg) }.map_err(drv("launching tie_rows"))?;
        Ok(())
    }

    pub fn exp_grad_rows(&mut self, gpu: &Device, gamma: &mut CudaVec, grad: &CudaVec, step: f64, row_len: usize) -> Result<()> {
        let rows = rows_of_pair("exp_grad_rows", gamma.len, grad.len, row_len)?;
        if gamma.len == 0 {
            return Ok(());
        }
        self.ensure_simplex(gpu)?;
        let grid = Self::grid_for_rows(gpu, rows);
        let mut stats = gpu.stream.alloc_zeros::<f64>(2 * rows).map_err(drv("allocating row sums"))?;
        self.reset_flag(gpu)?;
        let k = self.simplex.as_ref().ok_or_else(|| device_error("simplex kernels not loaded"))?;
        let (n, rows_u) = (row_len as u64, rows as u64);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let mut b = gpu.stream.launch_builder(&k.exp_grad_sums);
        b.arg(&gamma.buf).arg(&grad.buf).arg(&step).arg(&n).arg(&rows_u).arg(&mut stats).arg(&k.flag);
        // SAFETY: matches exp_grad_sums(const float*, const float*, double, u64, u64, double*, u64*);
        // γ and g hold rows·n values, stats 2·rows.
        unsafe { b.launch(cfg) }.map_err(drv("launching exp_grad_sums"))?;
        let mut b = gpu.stream.launch_builder(&k.exp_grad_apply);
        b.arg(&mut gamma.buf).arg(&grad.buf).arg(&step).arg(&n).arg(&rows_u).arg(&stats).arg(&k.flag);
        // SAFETY: matches exp_grad_apply(float*, const float*, double, u64, u64, const double*, const u64*).
        unsafe { b.launch(cfg) }.map_err(drv("launching exp_grad_apply"))?;
        match self.read_flag(gpu)? {
            Some(row) => Err(Error::Numerical(format!(
                "exponentiated-gradient row {row}: Σ γ·exp(−step·g) is not a positive finite number (non-finite ∂J/∂γ?)"
            ))),
            None => Ok(()),
        }
    }
}

/// The `Engine` methods an engine with fields `gpu: Device` and `ops: VectorOps` hands to
/// `VectorOps`, each after the engine's own `before_vector_op` (launching what it has queued).
macro_rules! delegate_vector_ops {
    () => {
        fn zeros(&mut self, len: usize) -> learnlaw_core::Result<$crate::CudaVec> {
            self.before_vector_op()?;
            self.ops.zeros(&self.gpu, len)
        }
        fn upload(&mut self, host: &[f32]) -> learnlaw_core::Result<$crate::CudaVec> {
            self.before_vector_op()?;
            self.ops.upload(&self.gpu, host)
        }
        fn download(&mut self, v: &$crate::CudaVec) -> learnlaw_core::Result<Vec<f32>> {
            self.before_vector_op()?;
            self.ops.download(&self.gpu, v)
        }
        fn copy(&mut self, src: &$crate::CudaVec, dst: &mut $crate::CudaVec) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            self.ops.copy(&self.gpu, src, dst)
        }
        fn scale(&mut self, a: f64, x: &mut $crate::CudaVec) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            self.ops.scale(&self.gpu, a, x)
        }
        fn axpy(&mut self, a: f64, x: &$crate::CudaVec, y: &mut $crate::CudaVec) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            self.ops.axpy(&self.gpu, a, x, y)
        }
        fn project_simplex_rows(&mut self, v: &mut $crate::CudaVec, row_len: usize) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            self.ops.project_simplex_rows(&self.gpu, v, row_len)
        }
        fn max_abs(&mut self, x: &$crate::CudaVec) -> learnlaw_core::Result<f64> {
            self.before_vector_op()?;
            self.ops.max_abs(&self.gpu, x)
        }
        fn tie_rows(&mut self, v: &mut $crate::CudaVec, block: usize, row_len: usize) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            self.ops.tie_rows(&self.gpu, v, block, row_len)
        }
        fn exp_grad_rows(
            &mut self,
            gamma: &mut $crate::CudaVec,
            grad: &$crate::CudaVec,
            step: f64,
            row_len: usize,
        ) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            self.ops.exp_grad_rows(&self.gpu, gamma, grad, step, row_len)
        }
    };
}
pub(crate) use delegate_vector_ops;
