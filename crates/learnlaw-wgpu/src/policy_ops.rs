//! The operations on engine vectors that every task shares (kernels/wgsl/vector.wgsl and
//! simplex.wgsl): axpy, scale, max |x|, block sums of rows, the exact simplex projection of every
//! row and the exponentiated-gradient step. Methods of [`Gpu`], so any engine that holds one
//! (and forwards to it with `delegate_to_gpu!`) has them.
use learnlaw_core::engine::{rows_of, rows_of_pair, tie_rows_shape};
use learnlaw_core::{Error, Result};

use crate::gpu::{check_len, kernel, module, whole, Access, Dispatch, Gpu, Kernel, WgpuVec, WG};

const SIMPLEX_WGSL: &str = include_str!("../../../kernels/wgsl/simplex.wgsl");
const VECTOR_WGSL: &str = include_str!("../../../kernels/wgsl/vector.wgsl");

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

/// The pipelines of vector.wgsl and simplex.wgsl, and the flag words their checks report in.
pub(crate) struct PolicyKernels {
    check_finite: Kernel,
    project_rows: Kernel,
    exp_grad_sums: Kernel,
    exp_grad_apply: Kernel,
    axpy: Kernel,
    scale: Kernel,
    max_abs: Kernel,
    tie_rows: Kernel,
    /// [2] u32: a check's flag and the first bad index (or max_abs's result bits).
    flag: wgpu::Buffer,
    /// [2] u32: exp_grad_sums' flag and first bad row, apart from `flag`, which it reads.
    status: wgpu::Buffer,
    /// `flag` then `status`, read back.
    staging: wgpu::Buffer,
}

impl PolicyKernels {
    pub fn new(device: &wgpu::Device) -> Self {
        let simplex = module(device, "simplex.wgsl", SIMPLEX_WGSL);
        let vector = module(device, "vector.wgsl", VECTOR_WGSL);
        use Access::*;
        let words = |label: &str, size: u64, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
        };
        let flag_usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        PolicyKernels {
            check_finite: kernel(device, &simplex, "check_finite", &[(0, Read), (1, ReadWrite), (2, Uniform)]),
            project_rows: kernel(device, &simplex, "project_rows", &[(3, ReadWrite), (4, Read), (5, Uniform)]),
            exp_grad_sums: kernel(
                device,
                &simplex,
                "exp_grad_sums",
                &[(6, Read), (7, Read), (8, ReadWrite), (9, Read), (10, ReadWrite), (11, Uniform)],
            ),
            exp_grad_apply: kernel(
                device,
                &simplex,
                "exp_grad_apply",
                &[(12, ReadWrite), (13, Read), (14, Read), (15, Read), (16, Read), (17, Uniform)],
            ),
            axpy: kernel(device, &vector, "axpy", &[(0, Read), (1, ReadWrite), (2, Uniform)]),
            scale: kernel(device, &vector, "scale", &[(3, ReadWrite), (4, Uniform)]),
            max_abs: kernel(device, &vector, "max_abs", &[(5, Read), (6, ReadWrite), (7, Uniform)]),
            tie_rows: kernel(device, &vector, "tie_rows", &[(8, ReadWrite), (9, Uniform)]),
            flag: words("flag", 8, flag_usage),
            status: words("status", 8, flag_usage),
            staging: words("flags_staging", 16, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
        }
    }
}

impl Gpu {
    /// x ← a·x.
    pub fn scale(&mut self, a: f64, x: &mut WgpuVec) -> Result<()> {
        self.flush_recorded()?;
        let ds = self.vector_dispatches(&self.policy.scale, (&x.buf, 3), None, x.len, a as f32, 4);
        if ds.is_empty() {
            return Ok(());
        }
        self.submit(ds, |_| {})
    }

    /// y ← y + a·x.
    pub fn axpy(&mut self, a: f64, x: &WgpuVec, y: &mut WgpuVec) -> Result<()> {
        self.flush_recorded()?;
        check_len("axpy y", y, x.len)?;
        let ds = self.vector_dispatches(&self.policy.axpy, (&x.buf, 0), Some((&y.buf, 1)), x.len, a as f32, 2);
        if ds.is_empty() {
            return Ok(());
        }
        self.submit(ds, |_| {})
    }

    /// Every row of `v` onto the simplex; a non-finite value is an error and leaves `v` untouched.
    pub fn project_simplex_rows(&mut self, v: &mut WgpuVec, row_len: usize) -> Result<()> {
        self.flush_recorded()?;
        let rows = rows_of("policy rows", v.len, row_len)?;
        if v.len == 0 {
            return Ok(());
        }
        let rows_per = self.rows_per_window(row_len)?;
        self.queue.write_buffer(&self.policy.flag, 0, bytemuck::cast_slice(&[0u32, u32::MAX]));
        // Pass 1: any non-finite value anywhere sets the flag.
        let mut ds = self.check_finite_dispatches(v);
        // Pass 2: one workgroup per row, skipped entirely when the flag is set.
        let mut r0 = 0;
        while r0 < rows {
            let count = rows_per.min(rows - r0);
            let (b, shift) = self.window(&v.buf, 3, r0 * row_len, count * row_len);
            let params = SimplexParams { len: row_len as u32, rows: count as u32, shift, base_index: 0 };
            ds.push(Dispatch {
                kernel: self.policy.project_rows.clone(),
                binds: vec![b, whole(4, &self.policy.flag)],
                param_binding: 5,
                params: bytemuck::bytes_of(&params).to_vec(),
                groups: count as u32,
            });
            r0 += count;
        }
        match self.submit_and_read_flags(ds)? {
            [0, ..] => Ok(()),
            [_, i, ..] => Err(Error::non_finite_policy(i as usize, row_len)),
        }
    }

    /// max_i |x_i|, NaN ignored.
    pub fn max_abs(&mut self, x: &WgpuVec) -> Result<f64> {
        self.flush_recorded()?;
        if x.len == 0 {
            return Ok(0.0);
        }
        self.queue.write_buffer(&self.policy.flag, 0, bytemuck::cast_slice(&[0u32, 0]));
        let mut ds = self.vector_dispatches(&self.policy.max_abs, (&x.buf, 5), None, x.len, 0.0, 7);
        ds.iter_mut().for_each(|d| d.binds.push(whole(6, &self.policy.flag)));
        let [bits, ..] = self.submit_and_read_flags(ds)?;
        Ok(f32::from_bits(bits) as f64)
    }

    /// Every row of a block of `block` rows ← the block's sum of rows.
    pub fn tie_rows(&mut self, v: &mut WgpuVec, block: usize, row_len: usize) -> Result<()> {
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
                kernel: self.policy.tie_rows.clone(),
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

    /// The exponentiated-gradient step on every row; a non-finite gradient or a row sum that is
    /// not a positive finite number is an error and leaves `gamma` untouched.
    pub fn exp_grad_rows(&mut self, gamma: &mut WgpuVec, grad: &WgpuVec, step: f64, row_len: usize) -> Result<()> {
        self.flush_recorded()?;
        let rows = rows_of_pair("exp_grad_rows", gamma.len, grad.len, row_len)?;
        if gamma.len == 0 {
            return Ok(());
        }
        let rows_per = self.rows_per_window(row_len)?;
        let stats = self.buffer("exp_grad_stats", rows * 8, wgpu::BufferUsages::STORAGE);
        self.queue.write_buffer(&self.policy.flag, 0, bytemuck::cast_slice(&[0u32, u32::MAX]));
        self.queue.write_buffer(&self.policy.status, 0, bytemuck::cast_slice(&[0u32, u32::MAX]));
        let mut ds = self.check_finite_dispatches(grad);
        for (kernel, binds) in [(&self.policy.exp_grad_sums, [6, 7, 8, 9, 10, 11]), (&self.policy.exp_grad_apply, [12, 13, 14, 15, 16, 17])]
        {
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
                    binds: vec![bg, bd, whole(binds[2], &stats), whole(binds[3], &self.policy.flag), whole(binds[4], &self.policy.status)],
                    param_binding: binds[5],
                    params: bytemuck::bytes_of(&params).to_vec(),
                    groups: count as u32,
                });
                r0 += count;
            }
        }
        match self.submit_and_read_flags(ds)? {
            [0, _, 0, _] => Ok(()),
            [0, _, _, row] => {
                Err(Error::Numerical(format!("exponentiated-gradient row {row}: Σ γ·exp(−step·g) is not a positive finite number")))
            }
            [_, i, ..] => Err(Error::Numerical(format!(
                "non-finite policy gradient at row {}, example {}",
                i as usize / row_len,
                i as usize % row_len
            ))),
        }
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
                kernel: self.policy.check_finite.clone(),
                binds: vec![b, whole(1, &self.policy.flag)],
                param_binding: 2,
                params: bytemuck::bytes_of(&params).to_vec(),
                groups: count.div_ceil(WG) as u32,
            });
            start += count;
        }
        ds
    }

    /// Submits `dispatches`, then waits and reads back the words of `flag` and `status`.
    fn submit_and_read_flags(&mut self, dispatches: Vec<Dispatch>) -> Result<[u32; 4]> {
        let p = &self.policy;
        let (flag, status, staging) = (p.flag.clone(), p.status.clone(), p.staging.clone());
        self.submit(dispatches, |enc| {
            enc.copy_buffer_to_buffer(&flag, 0, &staging, 0, 8);
            enc.copy_buffer_to_buffer(&status, 0, &staging, 8, 8);
        })?;
        let bytes = self.read_staging(&staging, 16)?;
        let words: &[u32] = bytemuck::cast_slice(&bytes);
        Ok([words[0], words[1], words[2], words[3]])
    }

    /// An elementwise kernel over [0, len) in windows: x (and y) bound at the given bindings.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kernel files parse and validate (types, bindings, uniformity of barriers) with naga,
    /// the same front end wgpu uses; needs no adapter.
    #[test]
    fn kernels_validate_with_naga() {
        for (name, src) in [("simplex.wgsl", SIMPLEX_WGSL), ("vector.wgsl", VECTOR_WGSL)] {
            crate::gpu::tests::validate(name, src, naga::valid::Capabilities::default()).unwrap();
        }
    }
}
