//! The floating-point types the CPU backend computes in: f32 (the fast path, same as the GPU
//! kernels' storage) and f64 (the reference for finite-difference checks).
use num_traits::Float;

use crate::lanes::{self, Isa, LaneKernel};

pub trait Real: Float + Default + Send + Sync + std::fmt::Debug + std::iter::Sum + 'static {
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    /// eˣ without a library call, so loops over it vectorise (f32); f64 keeps the exact `exp`.
    fn exp_inline(self) -> Self;
    /// ln(1 + x) for x ∈ [0, 1] without a library call, so loops over it vectorise (f32); f64
    /// keeps the exact `ln_1p`.
    fn ln_1p_unit(self) -> Self;
    /// Runs `kernel` on the lanes of `isa`; where the CPU lacks them, and always for f64, on the
    /// portable lanes (the same bits either way).
    fn on_lanes<K: LaneKernel<Self>>(isa: Isa, kernel: K) -> K::Out;
    /// The lanes `on_lanes(isa, …)` runs on.
    fn lanes(isa: Isa) -> Isa;
    /// C ← α·A·B + β·C on strided matrices (A [m, k], B [k, n], C [m, n]): f32 on the SIMD
    /// lanes (`linalg::lanes_sgemm`), f64 through matrixmultiply's dgemm. Use the checked wrapper
    /// `linalg::gemm`.
    ///
    /// # Safety
    /// The pointers and strides must describe matrices inside live allocations, and C must not
    /// overlap A or B.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: (*const Self, isize, isize),
        b: (*const Self, isize, isize),
        beta: Self,
        c: (*mut Self, isize, isize),
    );
}

impl Real for f32 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    /// Cody–Waite reduction x = k·ln2 + r, |r| ≤ ln2/2, then a degree-7 Taylor polynomial
    /// (truncation < 3e-9 relative) and 2ᵏ built in the exponent bits: within 2 ulp of `exp`,
    /// branch-free. Saturates to 0 below −87 and to f32::MAX·… above 88, like `exp` in practice.
    /// k is rounded by adding and subtracting 1.5·2²³ (exact for |k| < 2²²), not `round()`,
    /// which is a library call below SSE4.1 and would stop the loop vectorising there; and the
    /// integer k is read from the bits of k + 1.5·2²³ (1.5·2²³'s bits plus k), not cast with
    /// `as i32`, whose saturating semantics LLVM compiles to one scalar conversion per lane.
    #[inline(always)]
    fn exp_inline(self) -> Self {
        const LN2_HI: f32 = 0.693_359_4; // 0x3f318000: k·LN2_HI is exact for |k| < 2⁹
        const LN2_LO: f32 = -2.121_944_4e-4;
        const ROUND: f32 = 12_582_912.0;
        let x = self.clamp(-87.0, 88.0);
        let shifted = x * std::f32::consts::LOG2_E + ROUND;
        let k = shifted - ROUND;
        let r = (x - k * LN2_HI) - k * LN2_LO;
        let p = 1.0
            + r * (1.0 + r * (1.0 / 2.0 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
        let two_k = shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23;
        p * f32::from_bits(two_k)
    }
    /// 2·atanh(s) with s = x/(2+x) ∈ [0, 1/3]: the odd series to s¹⁵ (truncation < 2e-9
    /// relative), branch-free; within a few ulp of `ln_1p`, small x included.
    #[inline(always)]
    fn ln_1p_unit(self) -> Self {
        let s = self / (2.0 + self);
        let s2 = s * s;
        let tail = s2
            * (1.0 / 3.0
                + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0 + s2 * (1.0 / 15.0)))))));
        2.0 * s + 2.0 * s * tail
    }
    fn on_lanes<K: LaneKernel<f32>>(isa: Isa, kernel: K) -> K::Out {
        lanes::run_f32(isa, kernel)
    }
    fn lanes(isa: Isa) -> Isa {
        if isa.available() {
            isa
        } else {
            Isa::Portable
        }
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: (*const f32, isize, isize),
        b: (*const f32, isize, isize),
        beta: f32,
        c: (*mut f32, isize, isize),
    ) {
        // SAFETY: the caller's contract is lanes_sgemm's.
        unsafe { crate::linalg::lanes_sgemm(Isa::widest(), m, k, n, alpha, a, b, beta, c) }
    }
}

impl Real for f64 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp_inline(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn ln_1p_unit(self) -> Self {
        self.ln_1p()
    }
    fn on_lanes<K: LaneKernel<f64>>(_isa: Isa, kernel: K) -> K::Out {
        lanes::run_f64(kernel)
    }
    fn lanes(_isa: Isa) -> Isa {
        Isa::Portable
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: (*const f64, isize, isize),
        b: (*const f64, isize, isize),
        beta: f64,
        c: (*mut f64, isize, isize),
    ) {
        matrixmultiply::dgemm(m, k, n, alpha, a.0, a.1, a.2, b.0, b.1, b.2, beta, c.0, c.1, c.2)
    }
}

#[cfg(test)]
mod tests {
    use super::Real;

    #[test]
    fn f32_exp_inline_is_within_a_few_ulp_of_exp() {
        let mut worst = 0.0f64;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 1.7e-4;
            let (got, want) = (x.exp_inline() as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert_eq!((-1000.0f32).exp_inline(), (-87.0f32).exp_inline());
        assert!((-87.0f32).exp_inline() > 0.0 && 100.0f32.exp_inline().is_finite());
    }

    #[test]
    fn f32_ln_1p_unit_is_within_a_few_ulp_of_ln_1p() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            // [0, 1] evenly, and e^-k down to the smallest normal f32 (σ's e^{−|z|} in the losses).
            for x in [i as f32 / 200_000.0, (-(i as f32) * 4.35e-4).exp()] {
                let (got, want) = (x.ln_1p_unit() as f64, (x as f64).ln_1p());
                if want > 0.0 {
                    worst = worst.max((got - want).abs() / want);
                }
            }
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert_eq!(0.0f32.ln_1p_unit(), 0.0);
    }
}
