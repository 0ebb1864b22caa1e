//! Euclidean projection onto the probability simplex Δ = {p : Σp = 1, p ≥ 0}.
//!
//! The projection of v is p_i = max(v_i − τ, 0) for the unique τ with Σ max(v_i − τ, 0) = 1,
//! so every routine finds τ and then clips. Sums are accumulated in f64 whatever `R` is, so an
//! f32 row sums to 1 within about n·ε_f32. Inputs are assumed finite (callers check): NaN or ∞
//! gives a meaningless result, not a panic, and magnitudes so large that 1 is below their f64
//! ulp (≳ 1e15) lose the answer to rounding. An empty slice is left alone.

use crate::real::Real;
use multiversion::multiversion;
use rayon::prelude::*;
use std::cell::RefCell;

/// Reference: exact Euclidean projection onto {p : Σp = 1, p ≥ 0} by sorting
/// (Held et al. 1974 / Duchi et al. 2008). O(n log n), allocates a sorted copy.
pub fn project_sorted<R: Real>(v: &mut [R]) {
    if !v.is_empty() {
        let tau = tau_sorted(v);
        clip(v, tau);
    }
}

/// Fast exact projection: τ by Newton's method on whole-row vector passes (`tau_newton`), or
/// by Condat's algorithm (2016, §3; expected linear time) for the rare row that needs more than
/// 12 of them (`NEWTON_PASSES`). Same result as [`project_sorted`] up to rounding. Condat's uses a
/// thread-local O(n) scratch buffer, so repeated calls (e.g. from [`project_rows`]) do not
/// allocate. Compiled for every x86-64 level and picked at run time (multiversion), the passes
/// below inlined into it.
#[multiversion(targets = "simd")]
pub fn project<R: Real>(v: &mut [R]) {
    if !v.is_empty() {
        let tau = tau(v);
        clip(v, tau);
    }
}

/// y ← Π(y + a·x), one outer SGD step on a policy row: the axpy (`host::axpy`'s own, so the same
/// bits as the axpy and the projection apart) and the first pass's sums over the row while it is
/// in cache. Err(i) when entry i of y + a·x is not finite; `y` then
/// holds y + a·x, unprojected. Panics unless `x` and `y` have the same length.
#[multiversion(targets = "simd")]
pub fn axpy_project<R: Real>(a: R, x: &[R], y: &mut [R]) -> Result<(), usize> {
    assert_eq!(x.len(), y.len(), "axpy_project: lengths differ");
    if y.is_empty() {
        return Ok(());
    }
    crate::host::add_scaled(a, x, y);
    let (sum, top) = sum_and_max(y);
    // A non-finite entry makes the sum non-finite; a finite sum clears the row in one pass.
    if !sum.is_finite() {
        if let Some(i) = y.iter().position(|v| !v.is_finite()) {
            return Err(i);
        }
    }
    let tau = tau_given(y, sum, top);
    clip(y, tau);
    Ok(())
}

/// Newton passes a row may take before Condat's algorithm finishes it instead. Policy rows of
/// 4096 take 4–5 (the tests); rows that need more (in a test, a million values spread ever more
/// thinly below the top) cost no more than twelve passes on top of Condat's.
const NEWTON_PASSES: usize = 12;

/// τ of a non-empty `v`: Newton's when it converges within [`NEWTON_PASSES`], else Condat's.
#[inline(always)]
fn tau<R: Real>(v: &[R]) -> f64 {
    let (sum, top) = sum_and_max(v);
    tau_given(v, sum, top)
}

/// [`tau`] from the row's (Σv, max v), already taken.
#[inline(always)]
fn tau_given<R: Real>(v: &[R], sum: f64, top: f64) -> f64 {
    tau_newton(v, sum, top, NEWTON_PASSES).unwrap_or_else(|| with_scratch(v.len(), |buf| tau_condat(v, buf)))
}

/// Projects each consecutive row of length `row_len` onto the simplex, in parallel over rows.
/// Panics unless `v.len()` is a multiple of a non-zero `row_len` (callers validate shapes).
pub fn project_rows<R: Real>(v: &mut [R], row_len: usize) {
    if v.is_empty() {
        return;
    }
    // checked_rem: None for row_len 0 (and no `is_multiple_of`, which needs Rust 1.87).
    assert!(v.len().checked_rem(row_len) == Some(0), "project_rows: length {} is not a multiple of row length {row_len}", v.len());
    v.par_chunks_mut(row_len).for_each(project);
}

/// The threshold τ such that the projection of `v` is max(v − τ, 0); NaN for an empty slice.
pub fn threshold<R: Real>(v: &[R]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    tau(v)
}

#[inline(always)]
fn clip<R: Real>(v: &mut [R], tau: f64) {
    for x in v {
        *x = R::of((x.f64() - tau).max(0.0));
    }
}

/// τ from the sorted values u₁ ≥ u₂ ≥ …: the support is the longest prefix with
/// u_k > (Σ_{j≤k} u_j − 1)/k, and τ is that mean-excess at its end. Sums are taken relative to
/// u₁ (support values lie within 1 of it), so a large common offset costs no precision.
/// `v` must be non-empty.
fn tau_sorted<R: Real>(v: &[R]) -> f64 {
    let mut u: Vec<f64> = v.iter().map(|x| x.f64()).collect();
    u.sort_unstable_by(|a, b| b.total_cmp(a));
    let top = u[0];
    let (mut sum, mut tau) = (0.0, top - 1.0);
    for (k, &y) in u.iter().enumerate() {
        sum += y - top;
        let t = top + (sum - 1.0) / (k + 1) as f64;
        if y <= t {
            break; // the condition holds on a prefix only
        }
        tau = t;
    }
    tau
}

/// Condat's algorithm. Invariant: ρ = (Σ_active − 1)/|active| is a lower bound on τ, so any
/// y ≤ ρ can be dropped for good (its projection is 0). Candidates live in `b[..len]`:
/// `b[..start]` are set aside (ṽ), `b[start..len]` are active (v). `v` must be non-empty.
#[inline(always)]
fn tau_condat<R: Real>(v: &[R], buf: &mut Vec<f64>) -> f64 {
    if buf.len() < v.len() {
        buf.resize(v.len(), 0.0); // grows only: no per-call clearing
    }
    let b = &mut buf[..v.len()];
    b[0] = v[0].f64();
    let (mut len, mut start) = (1, 0);
    let mut sum = b[0];

    // Pass 1: one sweep builds an active set whose ρ is already close to τ. Tests are written
    // multiplied through by k so the hot loop has no division; k comes from the integer
    // indices so that the only floating-point chain carried across iterations is the sum. The
    // rare restart leaves the inner loop, which keeps the compiler from turning it into a
    // select on `sum` (a select there triples the loop's latency).
    let mut rest = v[1..].iter();
    loop {
        let mut restart = None;
        for x in rest.by_ref() {
            let y = x.f64();
            let k = (len - start) as f64;
            if y * k > sum - 1.0 {
                // y > ρ. Admit it if ρ of (active ∪ {y}) stays above y − 1, the ρ of {y} alone
                // (⇔ k·y < Σ + k); otherwise restart from y, setting the active set aside.
                if y * k >= sum + k {
                    restart = Some(y);
                    break;
                }
                sum += y;
                b[len] = y;
                len += 1;
            }
        }
        let Some(y) = restart else { break };
        start = len;
        sum = y;
        b[len] = y;
        len += 1;
    }
    let mut k = (len - start) as f64;
    let mut rho = (sum - 1.0) / k;

    // Pass 2: readmit set-aside values that beat the current ρ, compacting them to the front
    // (write index ≤ read index < start, so nothing unread is overwritten).
    if start > 0 {
        let mut w = 0;
        for i in 0..start {
            let y = b[i];
            if y > rho {
                b[w] = y;
                w += 1;
                sum += y;
                k += 1.0;
                rho = (sum - 1.0) / k;
            }
        }
        b.copy_within(start..len, w);
        len = w + len - start;
    }

    // Pass 3: sweep out values ≤ ρ until none is left. After each sweep a cheap vectorised
    // pass checks for leftovers (ρ rose meanwhile) and re-sums the candidates relative to ρ
    // (≈ τ, so the terms are ≈ the p_i): τ then carries neither the running updates'
    // cancellation error nor a large common offset's.
    loop {
        let n = len;
        len = 0;
        for i in 0..n {
            let y = b[i];
            // Never drop the last one: only possible through rounding at absurd magnitudes.
            if y > rho || k == 1.0 {
                b[len] = y;
                len += 1;
            } else {
                // ρ only grows in exact arithmetic; keeping it monotone under rounding too
                // guarantees each further sweep drops something, so the loop ends.
                sum -= y;
                k -= 1.0;
                rho = rho.max((sum - 1.0) / k);
            }
        }
        let (excess, lowest) = excess_and_min(&b[..len], rho);
        if lowest > 0.0 || len == 1 {
            return rho + (excess - 1.0) / len as f64;
        }
    }
}

/// Newton's method on f(τ) = Σ max(v_i − τ, 0), whose root f(τ) = 1 is τ. f is convex, decreasing
/// and piecewise linear, so Newton steps started below the root stay below it and rise to it:
/// τ ← τ + (f(τ) − 1)/#{v > τ}, each one vectorised pass over the row (in cache: a policy row
/// is 16 KB). The set {v > τ} only shrinks; once a pass finds it unchanged, f is linear between
/// τ and the root, so that step lands on it. The start is the larger of two lower bounds:
/// max v − 1 (the top value alone already contributes 1 there) and (Σv − 1)/n (every value
/// counted). The sums are taken relative to the current τ, so the last one, from a τ within
/// rounding of the root, is accurate to the size of the p_i. None after `max_passes` passes, or
/// when rounding at absurd magnitudes empties the set. `sum` and `top` are Σv and max v.
#[inline(always)]
fn tau_newton<R: Real>(v: &[R], sum: f64, top: f64, max_passes: usize) -> Option<f64> {
    let mut tau = ((sum - 1.0) / v.len() as f64).max(top - 1.0);
    let mut count = f64::NAN;
    for _ in 0..max_passes {
        let (excess, above) = excess_and_count(v, tau);
        if above == 0.0 {
            return None;
        }
        let next = tau + (excess - 1.0) / above;
        if above == count {
            return Some(next);
        }
        count = above;
        // τ rises in exact arithmetic; kept monotone under rounding too, the set never grows.
        tau = next.max(tau);
    }
    None
}

/// Lanes of the Newton passes' sums: four AVX-512 registers of f64 (eight AVX2 ones), enough
/// independent chains to hide the adds' latency.
const LANES: usize = 32;

/// (Σ x, max x) in f64 on [`LANES`] independent lanes, so it vectorises.
#[inline(always)]
fn sum_and_max<R: Real>(x: &[R]) -> (f64, f64) {
    let (mut acc, mut top) = ([0.0; LANES], [f64::NEG_INFINITY; LANES]);
    let chunks = x.chunks_exact(LANES);
    for &y in chunks.remainder() {
        acc[0] += y.f64();
        top[0] = if y.f64() > top[0] { y.f64() } else { top[0] };
    }
    for c in chunks {
        for j in 0..LANES {
            let y = c[j].f64();
            acc[j] += y;
            top[j] = if y > top[j] { y } else { top[j] };
        }
    }
    (acc.iter().sum(), top.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)))
}

/// (Σ_{x > base} (x − base), #{x > base}) in f64 on [`LANES`] independent lanes.
#[inline(always)]
fn excess_and_count<R: Real>(x: &[R], base: f64) -> (f64, f64) {
    let (mut acc, mut count) = ([0.0; LANES], [0.0; LANES]);
    let chunks = x.chunks_exact(LANES);
    for &y in chunks.remainder() {
        let d = y.f64() - base;
        acc[0] += if d > 0.0 { d } else { 0.0 };
        count[0] += if d > 0.0 { 1.0 } else { 0.0 };
    }
    for c in chunks {
        for j in 0..LANES {
            let d = c[j].f64() - base;
            acc[j] += if d > 0.0 { d } else { 0.0 };
            count[j] += if d > 0.0 { 1.0 } else { 0.0 };
        }
    }
    (acc.iter().sum(), count.iter().sum())
}

/// (Σ (x − base), min (x − base)) with 8 independent lanes, so it vectorises; the split sum
/// also shortens the rounding chain.
#[inline(always)]
fn excess_and_min(x: &[f64], base: f64) -> (f64, f64) {
    let (mut acc, mut low) = ([0.0; 8], [f64::INFINITY; 8]);
    let chunks = x.chunks_exact(8);
    for &y in chunks.remainder() {
        acc[0] += y - base;
        low[0] = if y - base < low[0] { y - base } else { low[0] };
    }
    for c in chunks {
        for j in 0..8 {
            let d = c[j] - base;
            acc[j] += d;
            low[j] = if d < low[j] { d } else { low[j] };
        }
    }
    (acc.iter().sum(), low.iter().fold(f64::INFINITY, |a, &b| a.min(b)))
}

thread_local! {
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer; very long inputs get a one-off buffer so that
/// no worker thread pins a huge allocation for the rest of the run.
#[inline(always)]
fn with_scratch<T>(n: usize, f: impl FnOnce(&mut Vec<f64>) -> T) -> T {
    const KEEP_MAX: usize = 1 << 20;
    if n > KEEP_MAX {
        return f(&mut Vec::with_capacity(n));
    }
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::with_capacity(n)), // re-entered: cannot happen today, stay safe
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: tiny deterministic generator, enough for test inputs.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn unif(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let u = 1.0 - self.unif(); // (0, 1]
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unif()).cos()
        }
    }

    const SIZES: [usize; 6] = [1, 2, 3, 7, 4096, 10000];

    /// Inputs of the shapes the optimiser produces plus the awkward extremes.
    fn cases(n: usize, rng: &mut Rng) -> Vec<(&'static str, Vec<f64>)> {
        let m = 1.0 / n as f64;
        let mut g = |f: &mut dyn FnMut(&mut Rng, usize) -> f64| (0..n).map(|i| f(rng, i)).collect();
        vec![
            ("policy+small step", g(&mut |r, _| m + 0.1 * m * r.normal())),
            ("policy+big step", g(&mut |r, _| m + 2.0 * m * r.normal())),
            ("uniform[-1,1]", g(&mut |r, _| 2.0 * r.unif() - 1.0)),
            ("large", g(&mut |r, _| 1e6 * r.normal())),
            ("all negative", g(&mut |r, _| -1.0 - 10.0 * r.unif())),
            ("all equal", g(&mut |_, _| 3.7)),
            ("one dominant", g(&mut |r, i| if i == n / 2 { 100.0 } else { 0.01 * r.normal() })),
            ("ties on a grid", g(&mut |r, _| (r.next() % 5) as f64 * 0.25)),
            // The jump makes Condat's pass 1 restart, and pass 2 must readmit the block's top.
            ("block, jump, tail", g(&mut |r, i| if i == n / 2 { 1.6 } else { r.unif() - (i > n / 2) as u8 as f64 })),
        ]
    }

    fn assert_on_simplex<R: Real>(p: &[R], tol: f64, what: &str) {
        assert!(p.iter().all(|x| x.f64() >= 0.0), "{what}: negative entry");
        let s: f64 = p.iter().map(|x| x.f64()).sum();
        assert!((s - 1.0).abs() <= tol, "{what}: sum {s}");
    }

    fn max_diff<R: Real>(a: &[R], b: &[R]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x.f64() - y.f64()).abs()).fold(0.0, f64::max)
    }

    fn to<R: Real>(v: &[f64]) -> Vec<R> {
        v.iter().map(|&x| R::of(x)).collect()
    }

    /// Simplex membership, idempotence and agreement with the sorting reference.
    fn check_all<R: Real>(eps: f64, agree: f64) {
        let mut rng = Rng(7);
        for n in SIZES {
            for (name, v) in cases(n, &mut rng) {
                let what = format!("{name}, n={n}");
                let v: Vec<R> = to(&v);
                let (mut fast, mut slow) = (v.clone(), v.clone());
                project(&mut fast);
                project_sorted(&mut slow);
                // τ itself is only known to ε·|τ|, so tolerances scale with the input magnitude.
                let scale = v.iter().fold(1.0, |m: f64, x| m.max(x.f64().abs()));
                let tol = 4.0 * n as f64 * eps * scale;
                assert_on_simplex(&fast, tol, &what);
                assert_on_simplex(&slow, tol, &what);
                let d = max_diff(&fast, &slow);
                assert!(d <= agree * scale, "{what}: project != project_sorted by {d}");
                let mut again = fast.clone();
                project(&mut again);
                let d = max_diff(&fast, &again);
                assert!(d <= agree, "{what}: not idempotent, moved by {d}");
                let tau = threshold(&v);
                let mut clipped = v.clone();
                clip(&mut clipped, tau);
                assert_eq!(clipped, fast, "{what}: threshold disagrees with project");
            }
        }
    }

    /// The passes Newton's method takes on `v` (None: more than 1000).
    fn newton_passes(v: &[f64]) -> Option<usize> {
        let (sum, top) = sum_and_max(v);
        (1..=1000).find(|&p| tau_newton(v, sum, top, p).is_some())
    }

    /// Each route of `project` on its own against the sorting reference: Newton's, uncapped, and
    /// Condat's, which finishes the rows Newton's would take too long on.
    #[test]
    fn newton_and_condat_agree_with_sorting() {
        let mut rng = Rng(13);
        for n in SIZES {
            for (name, v) in cases(n, &mut rng) {
                let scale = v.iter().fold(1.0, |m: f64, x| m.max(x.abs()));
                let want = tau_sorted(&v);
                let (sum, top) = sum_and_max(&v);
                let newton = tau_newton(&v, sum, top, usize::MAX).unwrap_or_else(|| panic!("{name}, n={n}: Newton's set emptied"));
                let condat = with_scratch(n, |buf| tau_condat(&v, buf));
                for (route, tau) in [("Newton", newton), ("Condat", condat)] {
                    let d = (tau - want).abs();
                    assert!(d <= 1e-12 * scale, "{name}, n={n}: {route}'s τ {tau} vs sorted {want}");
                }
            }
        }
    }

    /// Policy rows (the uniform policy moved by an outer step) converge in a few passes, far
    /// inside the cap, so the optimiser's rows never pay for Condat's fallback.
    #[test]
    fn newton_converges_fast_on_policy_rows() {
        let mut rng = Rng(17);
        for n in [4096, 10000] {
            for (name, v) in cases(n, &mut rng).into_iter().filter(|(name, _)| name.starts_with("policy")) {
                let passes = newton_passes(&v).unwrap();
                assert!(passes <= NEWTON_PASSES / 2, "{name}, n={n}: {passes} Newton passes");
            }
        }
        // A row past the cap: a million values spread ever more thinly below the top (Newton's
        // passes grow like log n on it), so Condat's algorithm finishes it.
        let n = 1 << 20;
        let v: Vec<f64> = (0..n).map(|i| 1.0 - (i as f64 / n as f64).powf(0.01)).collect();
        let (sum, top) = sum_and_max(&v);
        assert!(tau_newton(&v, sum, top, NEWTON_PASSES).is_none(), "the row meant to need Condat's converged within the cap");
        let (mut fast, mut slow) = (v.clone(), v.clone());
        project(&mut fast);
        project_sorted(&mut slow);
        assert!(max_diff(&fast, &slow) <= 1e-12, "Condat's fallback disagrees with sorting");
    }

    /// The fused outer step gives the bits of the axpy and the projection apart, and names the
    /// first entry of y + a·x that is not finite.
    #[test]
    fn axpy_project_is_the_axpy_then_the_projection() {
        let mut rng = Rng(19);
        for n in SIZES {
            let x: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let y: Vec<f32> = (0..n).map(|_| (1.0 + 0.1 * rng.normal()) as f32 / n as f32).collect();
            let a = -0.3 / n as f32;
            let mut fused = y.clone();
            axpy_project(a, &x, &mut fused).unwrap();
            let mut apart: Vec<f32> = y.iter().zip(&x).map(|(&y, &x)| y + a * x).collect();
            project(&mut apart);
            assert_eq!(fused, apart, "n={n}");
            for bad in [f32::NAN, f32::INFINITY] {
                let mut x_bad = x.clone();
                x_bad[n / 2] = bad;
                let mut fused = y.clone();
                assert_eq!(axpy_project(a, &x_bad, &mut fused), Err(n / 2), "n={n}, {bad}");
            }
        }
    }

    #[test]
    fn simplex_identity_agreement_f64() {
        check_all::<f64>(f64::EPSILON, 1e-12);
    }

    #[test]
    fn simplex_identity_agreement_f32() {
        check_all::<f32>(f32::EPSILON as f64, 1e-6);
    }

    /// For tiny n the projection is the nearest feasible p_S = v_S − (Σv_S − 1)/|S| over all
    /// non-empty supports S: an independent check that needs no theory about τ.
    #[test]
    fn brute_force_tiny() {
        let mut rng = Rng(11);
        for n in 1..=6 {
            for trial in 0..400 {
                let v: Vec<f64> = (0..n)
                    .map(|_| match trial % 3 {
                        0 => 2.0 * rng.normal(),
                        1 => (rng.next() % 7) as f64 * 0.5 - 1.0, // ties and exact zeros
                        _ => 1.0 / n as f64 + 0.3 * rng.normal(),
                    })
                    .collect();
                let mut best: Option<(f64, Vec<f64>)> = None;
                for mask in 1u32..(1 << n) {
                    let inside = |i: usize| mask >> i & 1 == 1;
                    let (s, k) = (0..n).filter(|&i| inside(i)).fold((0.0, 0.0), |(s, k), i| (s + v[i], k + 1.0));
                    let p: Vec<f64> = (0..n).map(|i| if inside(i) { v[i] - (s - 1.0) / k } else { 0.0 }).collect();
                    if p.iter().any(|&x| x < -1e-12) {
                        continue;
                    }
                    let d: f64 = p.iter().zip(&v).map(|(a, b)| (a - b) * (a - b)).sum();
                    if best.as_ref().is_none_or(|(bd, _)| d < *bd) {
                        best = Some((d, p));
                    }
                }
                let want = best.expect("the single largest entry is always feasible").1;
                let (mut fast, mut slow) = (v.clone(), v.clone());
                project(&mut fast);
                project_sorted(&mut slow);
                assert!(max_diff(&fast, &want) <= 1e-12, "project {v:?}: {fast:?} vs {want:?}");
                assert!(max_diff(&slow, &want) <= 1e-12, "project_sorted {v:?}: {slow:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn feasible_point_unchanged() {
        let mut rng = Rng(3);
        for n in SIZES {
            // Some exact zeros too: they sit on the boundary and must stay there (up to rounding).
            let raw: Vec<f64> = (0..n).map(|i| if i % 3 == 1 { 0.0 } else { rng.unif() + 0.01 }).collect();
            let s: f64 = raw.iter().sum();
            let p: Vec<f64> = raw.iter().map(|x| x / s).collect();
            let mut q = p.clone();
            project(&mut q);
            assert!(max_diff(&p, &q) <= 1e-15, "n={n}: feasible point moved");
            let p32: Vec<f32> = to(&p);
            let mut q32 = p32.clone();
            project(&mut q32);
            assert!(max_diff(&p32, &q32) <= 1e-7, "n={n}: f32 feasible point moved");
        }
    }

    #[test]
    fn rows_match_single_projection() {
        let mut rng = Rng(5);
        let (rows, len) = (37, 513);
        let v: Vec<f32> = (0..rows * len).map(|_| (rng.normal() * 0.01 + 1.0 / len as f64) as f32).collect();
        let mut all = v.clone();
        project_rows(&mut all, len);
        for (r, row) in v.chunks(len).enumerate() {
            let mut one = row.to_vec();
            project(&mut one);
            assert_eq!(&all[r * len..(r + 1) * len], &one[..], "row {r}");
        }
        project_rows::<f64>(&mut [], 0); // empty is a no-op whatever row_len is
    }

    #[test]
    #[should_panic(expected = "not a multiple")]
    fn rows_reject_ragged_length() {
        project_rows(&mut [0.5f64; 10], 3);
    }

    #[test]
    fn empty_is_noop() {
        let mut e: [f32; 0] = [];
        project(&mut e);
        project_sorted(&mut e);
        assert!(threshold(&e).is_nan());
    }
}
