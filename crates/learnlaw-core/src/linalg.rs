//! Strided matrix views and a bounds-checked GEMM over them: f32 on the CPU's SIMD lanes
//! (`lanes_sgemm`), f64 through matrixmultiply.
//!
//! Views are row-major slices with explicit strides, so a transpose or one attention head's
//! columns of a [rows, hidden] activation is a view, never a copy.
use std::cell::RefCell;

use crate::lanes::{Isa, LaneKernel, Lanes, LANES};
use crate::Real;

/// A read-only matrix view: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, R> {
    data: &'a [R],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A mutable matrix view: element (i, j) is `data[i·rs + j·cs]`.
pub struct MatMut<'a, R> {
    data: &'a mut [R],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

fn last_index(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
}

impl<'a, R> Mat<'a, R> {
    /// The row-major [rows, cols] matrix in `data` (which may be longer).
    pub fn new(data: &'a [R], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }
    pub fn strided(data: &'a [R], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(rows == 0 || cols == 0 || last_index(rows, cols, rs, cs) < data.len(), "matrix view out of bounds");
        Mat { data, rows, cols, rs, cs }
    }
    /// The transpose (a view).
    pub fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    /// Rows r0..r0+rows and columns c0..c0+cols.
    pub fn block(self, r0: usize, rows: usize, c0: usize, cols: usize) -> Self {
        assert!(r0 + rows <= self.rows && c0 + cols <= self.cols, "block out of bounds");
        let start = r0 * self.rs + c0 * self.cs;
        let data = if rows == 0 || cols == 0 { &self.data[..0] } else { &self.data[start..] };
        Mat { data, rows, cols, rs: self.rs, cs: self.cs }
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl<'a, R> MatMut<'a, R> {
    pub fn new(data: &'a mut [R], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }
    pub fn strided(data: &'a mut [R], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        // Distinct (i, j) must address distinct elements, or a GEMM would race with itself.
        assert!(rows <= 1 || cols <= 1 || (rs >= cols * cs || cs >= rows * rs), "overlapping matrix view");
        assert!(rows == 0 || cols == 0 || last_index(rows, cols, rs, cs) < data.len(), "matrix view out of bounds");
        MatMut { data, rows, cols, rs, cs }
    }
    /// A shorter-lived view of the same matrix (to use it for more than one GEMM).
    pub fn reborrow(&mut self) -> MatMut<'_, R> {
        MatMut { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs }
    }
    pub fn block(self, r0: usize, rows: usize, c0: usize, cols: usize) -> Self {
        assert!(r0 + rows <= self.rows && c0 + cols <= self.cols, "block out of bounds");
        let start = r0 * self.rs + c0 * self.cs;
        let data = if rows == 0 || cols == 0 { &mut self.data[..0] } else { &mut self.data[start..] };
        MatMut { data, rows, cols, rs: self.rs, cs: self.cs }
    }
}

/// C ← α·A·B + β·C. β = 0 overwrites C (NaNs in C do not propagate).
pub fn gemm<R: Real>(alpha: R, a: Mat<R>, b: Mat<R>, beta: R, c: MatMut<R>) {
    assert!(
        a.rows == c.rows && b.cols == c.cols && a.cols == b.rows,
        "gemm shapes [{}x{}]·[{}x{}] → [{}x{}]",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        c.rows,
        c.cols
    );
    if c.rows == 0 || c.cols == 0 {
        return;
    }
    let s = |v: usize| v as isize;
    // SAFETY: the views were bounds-checked when made; C is a `&mut` borrow, so it overlaps
    // neither A nor B, and its strides address distinct elements (checked in MatMut::strided).
    unsafe {
        R::gemm_raw(
            a.rows,
            a.cols,
            b.cols,
            alpha,
            (a.data.as_ptr(), s(a.rs), s(a.cs)),
            (b.data.as_ptr(), s(b.rs), s(b.cs)),
            beta,
            (c.data.as_mut_ptr(), s(c.rs), s(c.cs)),
        )
    }
}

/// A strided f32 operand: (pointer, row stride, column stride).
type Raw<P> = (P, isize, isize);

thread_local! {
    /// Each thread's copy of B's current column panel, kept between calls (no allocation per call).
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// f32's C ← α·A·B + β·C (A [m, k], B [k, n], C [m, n], any strides) on the lanes of `isa`
/// (`Real::gemm_raw`: the widest this CPU has). The Transformer's products are tall and narrow
/// (m = a chunk's 1024 tokens, n and k the width, 64–256), where a general GEMM spends as long
/// packing A into its layout as multiplying (matrixmultiply: 20% of a step in packing against 39%
/// in its kernel). Here only B is copied, a column panel at a time (k × 64 values on AVX-512,
/// k × 32 on the others; L2-resident), and A is read where it lies, one broadcast per element per
/// panel. Each C entry is Σ_k in order with one rounding per FMA, then α·Σ + β·C, so the result
/// is the same bits on every ISA (AVX-512, AVX2, portable).
///
/// # Safety
/// As `Real::gemm_raw`: every (i, j) inside the shapes addresses memory of its operand, and C
/// overlaps neither A nor B.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn lanes_sgemm(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Raw<*const f32>,
    b: Raw<*const f32>,
    beta: f32,
    c: Raw<*mut f32>,
) {
    if m == 0 || n == 0 {
        return;
    }
    PANEL.with_borrow_mut(|panel| f32::on_lanes(isa, LaneGemm { m, k, n, alpha, a, b, beta, c, panel }));
}

struct LaneGemm<'a> {
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Raw<*const f32>,
    b: Raw<*const f32>,
    beta: f32,
    c: Raw<*mut f32>,
    panel: &'a mut Vec<f32>,
}

impl LaneKernel<f32> for LaneGemm<'_> {
    type Out = ();
    #[inline(always)]
    fn run<L: Lanes<f32>>(self) {
        // Register blocks: MR rows × NV lane sets of accumulators, with NV sets of B and a
        // broadcast beside them (AVX-512, a set one register: 16 + 4 + 1 of 32; AVX2, a set two
        // registers: 2 × (4 + 2 + 1) = 14 of 16).
        if L::ACC_SETS >= 8 {
            self.panels::<L, 4, 4>()
        } else {
            self.panels::<L, 2, 2>()
        }
    }
}

impl LaneGemm<'_> {
    #[inline(always)]
    fn panels<L: Lanes<f32>, const MR: usize, const NV: usize>(self) {
        let LaneGemm { m, k, n, alpha, a, b, beta, c, panel } = self;
        let width = NV * LANES;
        for j0 in (0..n).step_by(width) {
            let w = width.min(n - j0);
            // B's columns j0..j0 + w as a contiguous [k, width] panel, zero-padded (each value
            // written once).
            panel.resize(k * width, 0.0);
            for (kk, row) in panel.chunks_exact_mut(width).enumerate() {
                let (cols, pad) = row.split_at_mut(w);
                for (jj, p) in cols.iter_mut().enumerate() {
                    // SAFETY: kk < k and j0 + jj < n (the caller's contract).
                    *p = unsafe { *b.0.offset(kk as isize * b.1 + (j0 + jj) as isize * b.2) };
                }
                pad.fill(0.0);
            }
            let mut i0 = 0;
            while i0 + MR <= m {
                // SAFETY: rows i0..i0 + MR < m, columns j0..j0 + w ≤ n.
                unsafe { block::<L, MR, NV>(i0, j0, w, k, alpha, a, beta, c, panel) };
                i0 += MR;
            }
            for i in i0..m {
                // SAFETY: as above, one row at a time.
                unsafe { block::<L, 1, NV>(i, j0, w, k, alpha, a, beta, c, panel) };
            }
        }
    }
}

/// C\[i0..i0+MR, j0..j0+w\] from A's rows i0.. and the panel: per k, NV lane sets of the panel's
/// row and one broadcast of A per row, MR·NV FMAs.
///
/// # Safety
/// Rows i0..i0 + MR of A and C and columns j0..j0 + w of C exist; the panel is [k, NV·16].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<L: Lanes<f32>, const MR: usize, const NV: usize>(
    i0: usize,
    j0: usize,
    w: usize,
    k: usize,
    alpha: f32,
    a: Raw<*const f32>,
    beta: f32,
    c: Raw<*mut f32>,
    panel: &[f32],
) {
    let mut acc = [[L::zero(); NV]; MR];
    let rows: [*const f32; MR] = std::array::from_fn(|r| unsafe { a.0.offset((i0 + r) as isize * a.1) });
    for (kk, prow) in panel.chunks_exact(NV * LANES).enumerate().take(k) {
        let bv: [L::V; NV] = std::array::from_fn(|v| L::load(prow[v * LANES..(v + 1) * LANES].try_into().expect("16 lanes")));
        for r in 0..MR {
            let av = L::splat(unsafe { *rows[r].offset(kk as isize * a.2) });
            for v in 0..NV {
                acc[r][v] = L::mul_add(av, bv[v], acc[r][v]);
            }
        }
    }
    // The common case, a whole panel's width of contiguous C with C ← A·B or C ← C + A·B: whole
    // vectors, the same bits as the element-wise loop below (1·x and 1·c are exact).
    if w == NV * LANES && c.2 == 1 && alpha == 1.0 && (beta == 0.0 || beta == 1.0) {
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, &acc_rv) in acc_r.iter().enumerate() {
                // SAFETY: columns j0 + 16v .. j0 + 16v + 16 of row i0 + r are inside C (w = NV·16
                // columns from j0) and contiguous (c.2 = 1).
                let cv = unsafe { &mut *(c.0.offset((i0 + r) as isize * c.1 + (j0 + v * LANES) as isize) as *mut [f32; LANES]) };
                let sum = if beta == 0.0 { acc_rv } else { L::mul_add(L::splat(1.0), acc_rv, L::load(cv)) };
                L::store(sum, cv);
            }
        }
        return;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let mut out = [[0.0f32; LANES]; NV];
        for v in 0..NV {
            L::store(acc_r[v], &mut out[v]);
        }
        for (jj, &x) in out.as_flattened()[..w].iter().enumerate() {
            let cij = unsafe { &mut *c.0.offset((i0 + r) as isize * c.1 + (j0 + jj) as isize * c.2) };
            *cij = if beta == 0.0 { alpha * x } else { alpha * x + beta * *cij };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn gemm_matches_the_naive_product_with_transposes_and_blocks() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.61).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![f64::NAN; m * n];
        gemm(1.0, Mat::new(&a, m, k), Mat::new(&b, k, n), 0.0, MatMut::new(&mut c, m, n));
        assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-12));
        // (Bᵀ Aᵀ)ᵀ = A B, written into a transposed view of C, accumulated with β = 1.
        let mut ct = want.clone();
        gemm(1.0, Mat::new(&b, k, n).t(), Mat::new(&a, m, k).t(), 1.0, MatMut::strided(&mut ct, n, m, 1, n));
        assert!(ct.iter().zip(&want).all(|(x, y)| (x - 2.0 * y).abs() < 1e-12));
        // A block: rows 1..3 and columns 2..6 of A times rows 2..6 of B.
        let mut cb = vec![0.0; 2 * n];
        gemm(1.0, Mat::new(&a, m, k).block(1, 2, 2, 4), Mat::new(&b, k, n).block(2, 4, 0, n), 0.0, MatMut::new(&mut cb, 2, n));
        for i in 0..2 {
            for j in 0..n {
                let w: f64 = (2..6).map(|p| a[(i + 1) * k + p] * b[p * n + j]).sum();
                assert!((cb[i * n + j] - w).abs() < 1e-12);
            }
        }
    }

    /// f32 on every ISA, bit for bit the defined order: each C entry Σ_k by FMAs from zero,
    /// then α·Σ + β·C. Shapes with row and column remainders (m = 11 = 2·4 + 3, n = 70 = 64 + 6),
    /// A stored as is or transposed, the vector epilogue (α = 1, β = 0 over NaNs or β = 1) and
    /// the element-wise one (α = 0.5, β = 2).
    #[test]
    fn lanes_sgemm_is_the_defined_sum_on_every_isa() {
        let (m, k, n) = (11, 9, 70);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.61).cos()).collect();
        let a_t: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let c0 = |beta: f32| vec![if beta == 0.0 { f32::NAN } else { 0.25 }; m * n];
        for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (0.5, 2.0)] {
            let want: Vec<u32> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    let sum = (0..k).fold(0.0f32, |acc, p| a[i * k + p].mul_add(b[p * n + j], acc));
                    (if beta == 0.0 { alpha * sum } else { alpha * sum + beta * c0(beta)[ij] }).to_bits()
                })
                .collect();
            for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
                for (ap, ars, acs) in [(a.as_ptr(), k as isize, 1), (a_t.as_ptr(), 1, m as isize)] {
                    let mut c = c0(beta);
                    unsafe {
                        lanes_sgemm(isa, m, k, n, alpha, (ap, ars, acs), (b.as_ptr(), n as isize, 1), beta, (c.as_mut_ptr(), n as isize, 1))
                    };
                    assert!(c.iter().map(|x| x.to_bits()).eq(want.iter().copied()), "{isa:?}, α {alpha}, β {beta}, A strides {ars} {acs}");
                }
            }
        }
    }
}
