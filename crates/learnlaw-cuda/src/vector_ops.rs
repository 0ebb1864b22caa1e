//! The vector and policy operations every CUDA engine shares (vector.cu, simplex.cu): the engine
//! vector [`CudaVec`], its transfers, and the outer loop's updates of γ on the device — on any
//! [`Runtime`], so the engines built on them also run on the host simulation.
use learnlaw_core::engine::{rows_of, rows_of_pair, tie_rows_shape};
use learnlaw_core::{Error, Result, Storage};

use crate::gpu::KernelFile;
use crate::runtime::{arg, Mem, Runtime};

/// Threads per block of these kernels (`BLOCK` in the .cu files).
const BLOCK: u32 = 256;
/// Most blocks of a grid-stride launch (about 8 per SM of an H200).
const MAX_BLOCKS: usize = 1024;

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
    pub(crate) mem: Mem,
    pub(crate) len: usize,
}

impl CudaVec {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device address of element 0 (for kernels of one's own).
    pub fn device_ptr(&self) -> u64 {
        self.mem.ptr
    }
}

/// `v` holds exactly `len` values.
pub(crate) fn check_len(what: &str, v: &CudaVec, len: usize) -> Result<()> {
    if v.len == len {
        Ok(())
    } else {
        Err(Error::shape(what, len, v.len))
    }
}

fn grid_for_elems(elems: usize) -> u32 {
    elems.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS) as u32
}

/// Blocks of a kernel that takes one row per block (grid-stride beyond 2·MAX_BLOCKS).
fn grid_for_rows(rows: usize) -> u32 {
    rows.clamp(1, 2 * MAX_BLOCKS) as u32
}

pub(crate) fn zeros(rt: &dyn Runtime, len: usize) -> Result<CudaVec> {
    Ok(CudaVec { mem: rt.alloc(4 * len)?, len })
}

pub(crate) fn upload(rt: &dyn Runtime, host: &[f32]) -> Result<CudaVec> {
    let v = zeros(rt, host.len())?;
    rt.upload(&v.mem, bytemuck::cast_slice(host))?;
    Ok(v)
}

pub(crate) fn download(rt: &dyn Runtime, v: &CudaVec) -> Result<Vec<f32>> {
    let mut out = vec![0f32; v.len];
    rt.download(&v.mem, bytemuck::cast_slice_mut(&mut out))?;
    Ok(out)
}

pub(crate) fn copy(rt: &dyn Runtime, src: &CudaVec, dst: &mut CudaVec) -> Result<()> {
    check_len("copy destination", dst, src.len)?;
    rt.copy(src.mem.ptr, dst.mem.ptr, 4 * src.len)
}

pub(crate) fn scale(rt: &dyn Runtime, a: f64, x: &mut CudaVec) -> Result<()> {
    if x.len == 0 {
        return Ok(());
    }
    let (n, a) = (x.len as u64, a as f32);
    rt.launch(&VECTOR, "scale", &[arg(&x.mem.ptr), arg(&n), arg(&a)], grid_for_elems(x.len.div_ceil(4)), BLOCK)
}

pub(crate) fn axpy(rt: &dyn Runtime, a: f64, x: &CudaVec, y: &mut CudaVec) -> Result<()> {
    check_len("axpy y", y, x.len)?;
    if x.len == 0 {
        return Ok(());
    }
    let (n, a) = (x.len as u64, a as f32);
    rt.launch(&VECTOR, "axpy", &[arg(&x.mem.ptr), arg(&y.mem.ptr), arg(&n), arg(&a)], grid_for_elems(x.len.div_ceil(4)), BLOCK)
}

/// The simplex kernels' flag [2] u64: [0, u64::MAX] (nothing flagged, no index yet).
fn new_flag(rt: &dyn Runtime) -> Result<Mem> {
    let flag = rt.alloc(16)?;
    rt.upload(&flag, bytemuck::cast_slice(&[0u64, u64::MAX]))?;
    Ok(flag)
}

/// Waits for the device and reads the flag back: the first flagged index, if any.
fn read_flag(rt: &dyn Runtime, flag: &Mem) -> Result<Option<u64>> {
    let mut f = [0u64; 2];
    rt.download(flag, bytemuck::cast_slice_mut(&mut f))?;
    Ok((f[0] != 0).then_some(f[1]))
}

pub(crate) fn project_simplex_rows(rt: &dyn Runtime, v: &mut CudaVec, row_len: usize) -> Result<()> {
    let rows = rows_of("policy rows", v.len, row_len)?;
    if v.len == 0 {
        return Ok(());
    }
    let flag = new_flag(rt)?;
    let (len, n, rows_u) = (v.len as u64, row_len as u64, rows as u64);
    rt.launch(&SIMPLEX, "check_finite", &[arg(&v.mem.ptr), arg(&len), arg(&flag.ptr)], grid_for_elems(v.len), BLOCK)?;
    rt.launch(&SIMPLEX, "project_rows", &[arg(&v.mem.ptr), arg(&n), arg(&rows_u), arg(&flag.ptr)], grid_for_rows(rows), BLOCK)?;
    match read_flag(rt, &flag)? {
        Some(i) => Err(Error::non_finite_policy(i as usize, row_len)),
        None => Ok(()),
    }
}

pub(crate) fn max_abs(rt: &dyn Runtime, x: &CudaVec) -> Result<f64> {
    if x.len == 0 {
        return Ok(0.0);
    }
    // The bits of an f32, 0 before the launch.
    let bits = rt.alloc(4)?;
    let n = x.len as u64;
    rt.launch(&VECTOR, "max_abs", &[arg(&x.mem.ptr), arg(&n), arg(&bits.ptr)], grid_for_elems(x.len), BLOCK)?;
    let mut out = [0u32];
    rt.download(&bits, bytemuck::cast_slice_mut(&mut out))?;
    Ok(f32::from_bits(out[0]) as f64)
}

pub(crate) fn tie_rows(rt: &dyn Runtime, v: &mut CudaVec, block: usize, row_len: usize) -> Result<()> {
    let rows = tie_rows_shape(v.len, block, row_len)?;
    if v.len == 0 {
        return Ok(());
    }
    let (n, rows_u, block_u) = (row_len as u64, rows as u64, block as u64);
    let grid = grid_for_elems(rows.div_ceil(block) * row_len);
    rt.launch(&VECTOR, "tie_rows", &[arg(&v.mem.ptr), arg(&n), arg(&rows_u), arg(&block_u)], grid, BLOCK)
}

pub(crate) fn exp_grad_rows(rt: &dyn Runtime, gamma: &mut CudaVec, grad: &CudaVec, step: f64, row_len: usize) -> Result<()> {
    let rows = rows_of_pair("exp_grad_rows", gamma.len, grad.len, row_len)?;
    if gamma.len == 0 {
        return Ok(());
    }
    let stats = rt.alloc(16 * rows)?;
    let flag = new_flag(rt)?;
    let (n, rows_u) = (row_len as u64, rows as u64);
    let args = [arg(&gamma.mem.ptr), arg(&grad.mem.ptr), arg(&step), arg(&n), arg(&rows_u), arg(&stats.ptr), arg(&flag.ptr)];
    rt.launch(&SIMPLEX, "exp_grad_sums", &args, grid_for_rows(rows), BLOCK)?;
    rt.launch(&SIMPLEX, "exp_grad_apply", &args, grid_for_rows(rows), BLOCK)?;
    match read_flag(rt, &flag)? {
        Some(row) => Err(Error::Numerical(format!(
            "exponentiated-gradient row {row}: Σ γ·exp(−step·g) is not a positive finite number (non-finite ∂J/∂γ?)"
        ))),
        None => Ok(()),
    }
}

/// The `Engine` methods an engine hands to this module: it has `fn runtime(&self) -> &dyn
/// Runtime` and `fn before_vector_op(&mut self) -> Result<()>` (launching what it has queued).
macro_rules! delegate_vector_ops {
    () => {
        fn zeros(&mut self, len: usize) -> learnlaw_core::Result<$crate::CudaVec> {
            self.before_vector_op()?;
            $crate::vector_ops::zeros(self.runtime(), len)
        }
        fn upload(&mut self, host: &[f32]) -> learnlaw_core::Result<$crate::CudaVec> {
            self.before_vector_op()?;
            $crate::vector_ops::upload(self.runtime(), host)
        }
        fn download(&mut self, v: &$crate::CudaVec) -> learnlaw_core::Result<Vec<f32>> {
            self.before_vector_op()?;
            $crate::vector_ops::download(self.runtime(), v)
        }
        fn copy(&mut self, src: &$crate::CudaVec, dst: &mut $crate::CudaVec) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            $crate::vector_ops::copy(self.runtime(), src, dst)
        }
        fn scale(&mut self, a: f64, x: &mut $crate::CudaVec) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            $crate::vector_ops::scale(self.runtime(), a, x)
        }
        fn axpy(&mut self, a: f64, x: &$crate::CudaVec, y: &mut $crate::CudaVec) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            $crate::vector_ops::axpy(self.runtime(), a, x, y)
        }
        fn project_simplex_rows(&mut self, v: &mut $crate::CudaVec, row_len: usize) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            $crate::vector_ops::project_simplex_rows(self.runtime(), v, row_len)
        }
        fn max_abs(&mut self, x: &$crate::CudaVec) -> learnlaw_core::Result<f64> {
            self.before_vector_op()?;
            $crate::vector_ops::max_abs(self.runtime(), x)
        }
        fn tie_rows(&mut self, v: &mut $crate::CudaVec, block: usize, row_len: usize) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            $crate::vector_ops::tie_rows(self.runtime(), v, block, row_len)
        }
        fn exp_grad_rows(
            &mut self,
            gamma: &mut $crate::CudaVec,
            grad: &$crate::CudaVec,
            step: f64,
            row_len: usize,
        ) -> learnlaw_core::Result<()> {
            self.before_vector_op()?;
            $crate::vector_ops::exp_grad_rows(self.runtime(), gamma, grad, step, row_len)
        }
    };
}
pub(crate) use delegate_vector_ops;
