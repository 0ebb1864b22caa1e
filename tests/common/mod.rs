//! Shared test helpers: the one tolerance rule, random problems and random policies.
#![allow(dead_code)]
use learnlaw::data::{PerceptronData, PerceptronRecipe};
use learnlaw::wgpu_backend::{Options, WgpuPerceptron};
use learnlaw::Real;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// |x − ref| ≤ atol + rtol·|ref|.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

impl Tol {
    /// Presets per element type: what a correct f32 or f64 implementation reaches.
    pub fn of<R: Real>() -> Tol {
        if std::mem::size_of::<R>() == 4 {
            Tol { atol: 1e-5, rtol: 1e-4 }
        } else {
            Tol { atol: 1e-12, rtol: 1e-10 }
        }
    }
}

/// Asserts `got ≈ want` elementwise; on failure prints the worst index, both values and the first pairs.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: Tol) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs reference {}", got.len(), want.len());
    let excess = |i: usize| (got[i] - want[i]).abs() - (tol.atol + tol.rtol * want[i].abs());
    let worst = (0..got.len()).max_by(|&a, &b| excess(a).total_cmp(&excess(b)).then(b.cmp(&a)));
    if let Some(i) = worst {
        let bad = !got[i].is_finite() || excess(i) > 0.0 || got.iter().any(|g| g.is_nan());
        if bad {
            let pairs: Vec<String> = got.iter().zip(want).take(5).map(|(g, w)| format!("({g:.9e}, {w:.9e})")).collect();
            panic!("{what}: worst index {i}: got {:.9e}, reference {:.9e} (tol {tol:?}); first pairs {}", got[i], want[i], pairs.join(" "));
        }
    }
}

pub fn to_f64<R: Real>(v: &[R]) -> Vec<f64> {
    v.iter().map(|x| x.f64()).collect()
}

pub fn from_f64<R: Real>(v: &[f64]) -> Vec<R> {
    v.iter().map(|&x| R::of(x)).collect()
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A random perceptron problem of the given sizes.
pub fn problem(dim: usize, n_train: usize, n_eval: usize, seed: u64) -> PerceptronData {
    PerceptronData::generate(&PerceptronRecipe { dim, n_train, n_dev: n_eval, n_test: n_eval + 3, seed, ..PerceptronRecipe::default() })
        .expect("valid recipe")
}

/// A vector of uniform values in [lo, hi).
pub fn uniform(rng: &mut ChaCha8Rng, len: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// A random policy [steps, n] on the simplex, with some exact zeros.
pub fn random_policy(rng: &mut ChaCha8Rng, steps: usize, n: usize) -> Vec<f64> {
    let mut g = Vec::with_capacity(steps * n);
    for _ in 0..steps {
        let row: Vec<f64> = (0..n).map(|_| if rng.random_bool(0.2) { 0.0 } else { rng.random_range(0.1..1.0) }).collect();
        let sum: f64 = row.iter().sum();
        g.extend(row.iter().map(|x| if sum > 0.0 { x / sum } else { 1.0 / n as f64 }));
    }
    g
}

/// The WGSL engine, or None after a visible SKIPPED line (see `wgpu_or_skip`).
pub fn wgpu_engine(data: &PerceptronData, opts: &Options) -> Option<WgpuPerceptron> {
    wgpu_or_skip(WgpuPerceptron::with_options(data, opts))
}

/// Something made on a wgpu device, or None after a visible SKIPPED line: when this machine has
/// no wgpu adapter (a failure instead with LEARNLAW_REQUIRE_WGPU=1, as in CI, which installs
/// lavapipe), or when the adapter lacks a feature the options need (f16 storage; the `wgpu`
/// backend still works).
pub fn wgpu_or_skip<T>(made: learnlaw::Result<T>) -> Option<T> {
    use std::io::Write as _; // a skip is written to stderr directly: test output capture would hide it
    match made {
        Ok(e) => Some(e),
        Err(learnlaw::Error::Unavailable { backend, reason }) if backend != "wgpu" => {
            let _ = writeln!(std::io::stderr(), "SKIPPED: {backend}: {reason}");
            None
        }
        Err(learnlaw::Error::Unavailable { reason, .. }) => {
            if std::env::var("LEARNLAW_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("LEARNLAW_REQUIRE_WGPU=1 but no wgpu adapter: {reason}");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED: no wgpu adapter ({reason})");
            None
        }
        Err(e) => panic!("wgpu: {e}"),
    }
}

/// Something made on a CUDA device, or None after a visible SKIPPED line when this machine has no
/// CUDA driver, NVRTC or device (a failure instead with LEARNLAW_REQUIRE_CUDA=1, as in the GPU
/// check).
pub fn cuda_or_skip<T>(made: learnlaw::Result<T>) -> Option<T> {
    use std::io::Write as _;
    match made {
        Ok(e) => Some(e),
        Err(learnlaw::Error::Unavailable { reason, .. }) => {
            if std::env::var("LEARNLAW_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("LEARNLAW_REQUIRE_CUDA=1 but no CUDA device: {reason}");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED: no CUDA driver ({reason})");
            None
        }
        Err(e) => panic!("cuda: {e}"),
    }
}

/// Something made on the CUDA host simulation (the CUDA C compiled for the CPU), or None after a
/// visible SKIPPED line when there is no C++ compiler; where the CUDA C is checked
/// (LEARNLAW_REQUIRE_NVRTC=1, as in CI) a missing compiler fails instead.
pub fn host_sim_or_skip<T>(made: learnlaw::Result<T>) -> Option<T> {
    use std::io::Write as _;
    match made {
        Ok(e) => Some(e),
        Err(learnlaw::Error::Unavailable { reason, .. }) => {
            if std::env::var("LEARNLAW_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("LEARNLAW_REQUIRE_NVRTC=1 but the CUDA host simulation is unavailable: {reason}");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED: cuda host simulation ({reason})");
            None
        }
        Err(e) => panic!("cuda host simulation: {e}"),
    }
}
