//! Sixteen lanes of f32 or f64: the unit the CPU row kernels compute in — one AVX-512 register,
//! two AVX2 registers, or a plain array the compiler vectorises for whatever the CPU has.
//!
//! Every implementation does the same arithmetic in the same order: lane-wise fused multiply-adds,
//! and one fixed tree to sum the lanes (lanes i and i+8, then i and i+4, i and i+2, then the last
//! two). So a kernel written once over [`Lanes`] gives bit-identical results on every CPU, and the
//! explicit intrinsics only decide how fast. [`Real::on_lanes`] runs a [`LaneKernel`] on the lanes
//! picked at run time ([`Isa::widest`]); f64 always takes the portable lanes.
use multiversion::multiversion;

use crate::Real;

/// The bf16 type X can be stored as (`CpuPerceptron<f32, bf16>`).
pub use half::bf16;

/// Values per lane set.
pub const LANES: usize = 16;
/// Values per pair of lane sets: the unit X's rows are stored and loaded in ([`Stored`]).
pub const PAIR: usize = 2 * LANES;

/// The instruction set a kernel's lanes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// One AVX-512 register per 16 f32.
    Avx512,
    /// Two AVX2 registers, with FMA.
    Avx2,
    /// Plain arrays, compiled for every x86-64 level (and NEON on aarch64) and picked at run time.
    Portable,
}

impl Isa {
    /// The widest lanes this CPU runs for f32.
    pub fn widest() -> Isa {
        Isa::ALL.into_iter().find(|isa| isa.available()).unwrap_or(Isa::Portable)
    }

    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// Whether this CPU has the instructions.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            Isa::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

/// How X is stored: as the engine's own real type, or as bf16 (widened exactly to f32 on load).
/// Rows go in pairs of lane sets, 32 values: in order for the real type; bf16 interleaves the
/// pair, so that 32-bit word i holds value i in its low half and value 16 + i in its high half,
/// and one 64-byte load widens to both lane sets with a shift and a mask, no shuffle.
pub trait Stored<R: Real>: Copy + Send + Sync + 'static {
    /// `f32`, `f64` or `bf16`, as in an engine's name (`cpu-bf16`).
    fn name() -> &'static str;
    /// The stored value nearest to `v` (ties to even).
    fn from_f32(v: f32) -> Self;
    fn is_finite(self) -> bool;
    /// The stored value in `R` (exact).
    fn to_real(self) -> R;
    /// 32 values (two lane sets, in order) in the layout `load2` reads.
    fn store2(v: &[f32; PAIR]) -> [Self; PAIR];
    /// The two lane sets of a pair stored by `store2`.
    fn load2<L: Lanes<R>>(x: &[Self; PAIR]) -> [L::V; 2];
}

/// The two lane sets of a pair, in order.
#[inline(always)]
pub fn halves<T>(pair: &[T; PAIR]) -> [&[T; LANES]; 2] {
    let sets = pair.as_chunks::<LANES>().0;
    [&sets[0], &sets[1]]
}

/// `halves`, mutable.
#[inline(always)]
pub fn halves_mut<T>(pair: &mut [T; PAIR]) -> [&mut [T; LANES]; 2] {
    let (lo, hi) = pair.as_chunks_mut::<LANES>().0.split_at_mut(1);
    [&mut lo[0], &mut hi[0]]
}

impl<R: Real> Stored<R> for R {
    fn name() -> &'static str {
        std::any::type_name::<R>()
    }
    fn from_f32(v: f32) -> Self {
        R::of(v as f64)
    }
    fn is_finite(self) -> bool {
        num_traits::Float::is_finite(self)
    }
    fn to_real(self) -> R {
        self
    }
    fn store2(v: &[f32; PAIR]) -> [R; PAIR] {
        v.map(Self::from_f32)
    }
    #[inline(always)]
    fn load2<L: Lanes<R>>(x: &[R; PAIR]) -> [L::V; 2] {
        let [lo, hi] = halves(x);
        [L::load(lo), L::load(hi)]
    }
}

impl Stored<f32> for half::bf16 {
    fn name() -> &'static str {
        "bf16"
    }
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn is_finite(self) -> bool {
        half::bf16::is_finite(self)
    }
    fn to_real(self) -> f32 {
        widen_bf16(self)
    }
    fn store2(v: &[f32; PAIR]) -> [half::bf16; PAIR] {
        std::array::from_fn(|k| half::bf16::from_f32(v[k / 2 + (k % 2) * LANES]))
    }
    #[inline(always)]
    fn load2<L: Lanes<f32>>(x: &[half::bf16; PAIR]) -> [L::V; 2] {
        L::load_bf16_pair(x)
    }
}

/// bf16 → f32: the bits in the high half (exact).
#[inline(always)]
fn widen_bf16(b: half::bf16) -> f32 {
    f32::from_bits((b.to_bits() as u32) << 16)
}

/// Sixteen values of R and the operations the row kernels need.
pub trait Lanes<R: Real> {
    type V: Copy;
    /// Lane sets an accumulator may keep in registers (8 with 32 vector registers, else 4).
    const ACC_SETS: usize;
    fn zero() -> Self::V;
    fn splat(v: R) -> Self::V;
    fn load(x: &[R; LANES]) -> Self::V;
    /// A pair of lane sets stored as bf16 by [`Stored::store2`] (interleaved), widened.
    fn load_bf16_pair(x: &[half::bf16; PAIR]) -> [Self::V; 2];
    fn store(v: Self::V, out: &mut [R; LANES]);
    /// a·b + c, each lane rounded once.
    fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Σ of the lanes in the fixed tree order (module docs).
    fn sum(v: Self::V) -> R;
    /// `sum` of four lane sets. AVX-512 adds their trees side by side (14 instructions where four
    /// `sum`s take 36), the same pairs in the same order, so the same bits.
    #[inline(always)]
    fn sum4(v: [Self::V; 4]) -> [R; 4] {
        [Self::sum(v[0]), Self::sum(v[1]), Self::sum(v[2]), Self::sum(v[3])]
    }
}

/// Work generic over the lanes, run by [`Real::on_lanes`] (a closure cannot be generic).
pub trait LaneKernel<R: Real> {
    type Out;
    fn run<L: Lanes<R>>(self) -> Self::Out;
}

/// Plain arrays: the reference order, and what f64 and CPUs without AVX2 run.
pub struct Portable;

impl<R: Real> Lanes<R> for Portable {
    type V = [R; LANES];
    const ACC_SETS: usize = 4;
    #[inline(always)]
    fn zero() -> Self::V {
        [R::zero(); LANES]
    }
    #[inline(always)]
    fn splat(v: R) -> Self::V {
        [v; LANES]
    }
    #[inline(always)]
    fn load(x: &[R; LANES]) -> Self::V {
        *x
    }
    #[inline(always)]
    fn load_bf16_pair(x: &[half::bf16; PAIR]) -> [Self::V; 2] {
        let (mut lo, mut hi) = ([R::zero(); LANES], [R::zero(); LANES]);
        for i in 0..LANES {
            lo[i] = R::of(widen_bf16(x[2 * i]) as f64);
            hi[i] = R::of(widen_bf16(x[2 * i + 1]) as f64);
        }
        [lo, hi]
    }
    #[inline(always)]
    fn store(v: Self::V, out: &mut [R; LANES]) {
        *out = v;
    }
    #[inline(always)]
    fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        let mut r = c;
        for i in 0..LANES {
            r[i] = a[i].mul_add(b[i], c[i]);
        }
        r
    }
    #[inline(always)]
    fn sum(v: Self::V) -> R {
        let mut s = v;
        for width in [8, 4, 2, 1] {
            for i in 0..width {
                s[i] = s[i] + s[i + width];
            }
        }
        s[0]
    }
}

/// The portable lanes, compiled for every x86-64 level (NEON on aarch64), the best picked at run time.
#[multiversion(targets = "simd")]
fn run_portable<R: Real, K: LaneKernel<R>>(kernel: K) -> K::Out {
    kernel.run::<Portable>()
}

/// f32 on `isa` (the portable lanes where this CPU lacks it).
pub(crate) fn run_f32<K: LaneKernel<f32>>(isa: Isa, kernel: K) -> K::Out {
    match isa {
        // SAFETY: the CPU has the instructions (checked just before).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.available() => unsafe { x86::run_avx512(kernel) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.available() => unsafe { x86::run_avx2(kernel) },
        _ => run_portable(kernel),
    }
}

/// f64 has the portable lanes only.
pub(crate) fn run_f64<K: LaneKernel<f64>>(kernel: K) -> K::Out {
    run_portable(kernel)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The intrinsics run only inside `run_avx512` / `run_avx2`, whose target features let the
    //! `#[inline(always)]` lane operations (and the kernel around them) compile to those instructions.
    use std::arch::x86_64::*;

    use super::{LaneKernel, Lanes, LANES, PAIR};

    /// The high 16 bits of a 32-bit word: a bf16 stored there is its f32.
    const HIGH_HALF: i32 = 0xFFFF_0000u32 as i32;

    #[target_feature(enable = "avx512f")]
    pub(super) fn run_avx512<K: LaneKernel<f32>>(kernel: K) -> K::Out {
        kernel.run::<Avx512>()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn run_avx2<K: LaneKernel<f32>>(kernel: K) -> K::Out {
        kernel.run::<Avx2>()
    }

    /// Lanes 0..8 of the tree done; the rest of it: i and i+4, i and i+2, then the two.
    #[inline(always)]
    unsafe fn sum8(s8: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
    }

    pub(super) struct Avx512;

    impl Lanes<f32> for Avx512 {
        type V = __m512;
        const ACC_SETS: usize = 8;
        #[inline(always)]
        fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        fn splat(v: f32) -> __m512 {
            unsafe { _mm512_set1_ps(v) }
        }
        #[inline(always)]
        fn load(x: &[f32; LANES]) -> __m512 {
            unsafe { _mm512_loadu_ps(x.as_ptr()) }
        }
        #[inline(always)]
        fn load_bf16_pair(x: &[half::bf16; PAIR]) -> [__m512; 2] {
            unsafe {
                let words = _mm512_loadu_si512(x.as_ptr().cast());
                let high = _mm512_and_si512(words, _mm512_set1_epi32(HIGH_HALF));
                [_mm512_castsi512_ps(_mm512_slli_epi32::<16>(words)), _mm512_castsi512_ps(high)]
            }
        }
        #[inline(always)]
        fn store(v: __m512, out: &mut [f32; LANES]) {
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn sum(v: __m512) -> f32 {
            unsafe {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                sum8(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
            }
        }
        /// The four trees in one register: each step gathers the lower halves of every row's
        /// live lanes into one vector and the upper halves into another, and adds them.
        #[inline(always)]
        fn sum4([a, b, c, d]: [__m512; 4]) -> [f32; 4] {
            unsafe {
                // Lanes i and i+8: [a.lo256 | b.lo256] + [a.hi256 | b.hi256], the same for c, d.
                let ab = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
                let cd = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(c, d), _mm512_shuffle_f32x4::<0xEE>(c, d));
                // i and i+4: 128-bit lane q holds row q's four live lanes.
                let s4 = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(ab, cd), _mm512_shuffle_f32x4::<0xDD>(ab, cd));
                // i and i+2, then the two: within each 128-bit lane, as `sum8` does.
                let s2 = _mm512_add_ps(s4, _mm512_permute_ps::<0xEE>(s4));
                let s1 = _mm512_add_ps(s2, _mm512_permute_ps::<0x01>(s2));
                let sums = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s1);
                let mut out = [0.0; 4];
                _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(sums));
                out
            }
        }
    }

    pub(super) struct Avx2;

    impl Lanes<f32> for Avx2 {
        /// Lanes 0..8 and 8..16.
        type V = [__m256; 2];
        const ACC_SETS: usize = 4;
        #[inline(always)]
        fn zero() -> Self::V {
            unsafe { [_mm256_setzero_ps(); 2] }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self::V {
            unsafe { [_mm256_set1_ps(v); 2] }
        }
        #[inline(always)]
        fn load(x: &[f32; LANES]) -> Self::V {
            unsafe { [_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(x.as_ptr().add(8))] }
        }
        #[inline(always)]
        fn load_bf16_pair(x: &[half::bf16; PAIR]) -> [Self::V; 2] {
            unsafe {
                let (w0, w1) = (_mm256_loadu_si256(x.as_ptr().cast()), _mm256_loadu_si256(x.as_ptr().add(LANES).cast()));
                let mask = _mm256_set1_epi32(HIGH_HALF);
                [
                    [_mm256_castsi256_ps(_mm256_slli_epi32::<16>(w0)), _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w1))],
                    [_mm256_castsi256_ps(_mm256_and_si256(w0, mask)), _mm256_castsi256_ps(_mm256_and_si256(w1, mask))],
                ]
            }
        }
        #[inline(always)]
        fn store(v: Self::V, out: &mut [f32; LANES]) {
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), v[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), v[1]);
            }
        }
        #[inline(always)]
        fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe { [_mm256_fmadd_ps(a[0], b[0], c[0]), _mm256_fmadd_ps(a[1], b[1], c[1])] }
        }
        #[inline(always)]
        fn sum(v: Self::V) -> f32 {
            unsafe { sum8(_mm256_add_ps(v[0], v[1])) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Σ x·a over 16-lane chunks (x stored in pairs by `Stored::store2`): the accumulator's lanes
    /// and their sum.
    struct Dot<'a, X> {
        x: &'a [X],
        a: &'a [f32],
    }

    impl<X: Stored<f32>> LaneKernel<f32> for Dot<'_, X> {
        type Out = ([f32; LANES], f32);
        fn run<L: Lanes<f32>>(self) -> Self::Out {
            let mut acc = L::zero();
            for (x, a) in self.x.as_chunks::<PAIR>().0.iter().zip(self.a.as_chunks::<PAIR>().0) {
                let ([x0, x1], [a0, a1]) = (X::load2::<L>(x), halves(a));
                acc = L::mul_add(x0, L::load(a0), acc);
                acc = L::mul_add(x1, L::load(a1), acc);
            }
            let mut lanes = [0.0; LANES];
            L::store(acc, &mut lanes);
            (lanes, L::sum(acc))
        }
    }

    fn bits((lanes, sum): ([f32; LANES], f32)) -> Vec<u32> {
        lanes.iter().chain([&sum]).map(|v| v.to_bits()).collect()
    }

    /// Inputs where the order of the sums shows (mixed signs and magnitudes), stored as f32 and
    /// as bf16: every ISA gives the portable lanes' bits, and those are the dot product.
    #[test]
    fn every_isa_gives_the_portable_bits() {
        let x: Vec<f32> = (0..256).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 * if i % 3 == 0 { -1e4 } else { 1.0 }).collect();
        let a: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin() * if i % 5 == 0 { 1e-5 } else { 3.0 }).collect();
        let xb: Vec<half::bf16> = x.as_chunks::<PAIR>().0.iter().flat_map(half::bf16::store2).collect();
        let portable = (run_f32(Isa::Portable, Dot { x: &x, a: &a }), run_f32(Isa::Portable, Dot { x: &xb, a: &a }));
        let rounded = x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
        for (xs, got) in [(x.clone(), portable.0 .1), (rounded, portable.1 .1)] {
            let exact: f64 = xs.iter().zip(&a).map(|(&x, &a)| x as f64 * a as f64).sum();
            let scale: f64 = xs.iter().zip(&a).map(|(&x, &a)| (x as f64 * a as f64).abs()).sum();
            assert!((got as f64 - exact).abs() <= 1e-6 * scale, "{got} vs {exact}");
        }
        let available: Vec<Isa> = Isa::ALL.into_iter().filter(|isa| isa.available()).collect();
        for &isa in &available {
            let got = (run_f32(isa, Dot { x: &x, a: &a }), run_f32(isa, Dot { x: &xb, a: &a }));
            assert_eq!((bits(got.0), bits(got.1)), (bits(portable.0), bits(portable.1)), "{isa:?}");
        }
        println!("lanes on this CPU: {available:?}");
    }

    /// Four lane sets summed one by one and four at a time.
    struct Sums([[f32; LANES]; 4]);

    impl LaneKernel<f32> for Sums {
        type Out = ([f32; 4], [f32; 4]);
        fn run<L: Lanes<f32>>(self) -> Self::Out {
            let v = [L::load(&self.0[0]), L::load(&self.0[1]), L::load(&self.0[2]), L::load(&self.0[3])];
            (L::sum4(v), [L::sum(v[0]), L::sum(v[1]), L::sum(v[2]), L::sum(v[3])])
        }
    }

    /// `sum4` adds the same pairs in the same order as four `sum`s, on every ISA: lanes of mixed
    /// magnitudes, where any other order gives other bits.
    #[test]
    fn sum4_is_four_sums_bit_for_bit() {
        let sets: [[f32; LANES]; 4] = std::array::from_fn(|r| {
            std::array::from_fn(|i| (((r * 16 + i) * 7919 % 1000) as f32 - 500.0) * 10f32.powi((i % 5) as i32 - 2))
        });
        let want = run_f32(Isa::Portable, Sums(sets)).1;
        for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
            let (four, one_by_one) = run_f32(isa, Sums(sets));
            assert_eq!(four.map(f32::to_bits), want.map(f32::to_bits), "{isa:?}");
            assert_eq!(one_by_one.map(f32::to_bits), want.map(f32::to_bits), "{isa:?}");
        }
        let in_order = sets.map(|s| s.iter().sum::<f32>());
        assert_ne!(in_order.map(f32::to_bits), want.map(f32::to_bits), "the inputs cannot tell the orders apart");
    }
}
