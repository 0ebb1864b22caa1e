//! Strided matrix views and a bounds-checked GEMM over them (matrixmultiply underneath).
//!
//! Views are row-major slices with explicit strides, so a transpose or one attention head's
//! columns of a [rows, hidden] activation is a view, never a copy.
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
}
