//! Perceptron data: the teacher–student recipe of the paper's App. D and its safetensors file format.
//!
//! File layout: `x_train` \[N, D\], `y_train` \[N\], `x_dev` \[K, D\], `y_dev` \[K\], `x_test` \[M, D\],
//! `y_test` \[M\], optional `theta0` \[D\]. [`PerceptronData::save`] writes F32; [`PerceptronData::load`]
//! also accepts F64 inputs and F64/I64/I32/U8/BOOL labels (e.g. tensors exported from PyTorch).
use crate::error::{Error, Result};
use crate::tensor_file::{self, to_f32, Tensor, Values};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// The three sets, in file and generation order.
const SETS: [&str; 3] = ["train", "dev", "test"];
const REQUIRED: &str = "x_train, y_train, x_dev, y_dev, x_test, y_test";
const X_DTYPES: &[Dtype] = &[Dtype::F32, Dtype::F64];
const Y_DTYPES: &[Dtype] = &[Dtype::F32, Dtype::F64, Dtype::I64, Dtype::I32, Dtype::U8, Dtype::BOOL];
/// The largest input magnitude whose square is a finite f32 (√f32::MAX ≈ 1.8e19).
const MAX_INPUT: f32 = 1.844e19;

/// One set of labelled examples: x is \[n, dim\] row-major f32, y is \[n\] with values 0.0 or 1.0.
#[derive(Clone, Debug, PartialEq)]
pub struct Examples {
    pub x: Vec<f32>,
    pub y: Vec<f32>,
}

impl Examples {
    /// Number of examples (the label count; `validate` checks x agrees).
    pub fn len(&self) -> usize {
        self.y.len()
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

/// A perceptron task's data: training set, desired (dev) set, held-out test set, optional θ0.
#[derive(Clone, Debug, PartialEq)]
pub struct PerceptronData {
    pub dim: usize,
    pub train: Examples,
    pub dev: Examples,
    pub test: Examples,
    pub theta0: Option<Vec<f32>>,
}

/// The teacher–student recipe of the paper's App. D.
///
/// * The teacher is drawn as w ~ N(0, I). The paper prints "N(0, √D·I)", ambiguous between variance
///   and std, but labels are sign(w·z), so only w's direction matters and the scale is irrelevant.
/// * `train_var` / `desired_var` are per-coordinate variances: the paper's "N(0, 3I)" is read as
///   covariance 3I (std √3), the reading the reference replication used.
///
/// Missing fields deserialize to the paper's values; unknown fields are rejected (typos).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerceptronRecipe {
    pub dim: usize,
    pub n_train: usize,
    pub n_dev: usize,
    pub n_test: usize,
    pub train_mean: f64,
    pub train_var: f64,
    pub desired_mean: f64,
    pub desired_var: f64,
    /// Probability of flipping each training label (0 = the recipe as printed). Not in the paper's
    /// App. D; the official code has an unused `--train-noise` flag, and noisy examples are what
    /// the Learning Law predicts a near-optimal policy down-weights.
    pub train_label_noise: f64,
    pub seed: u64,
}

impl Default for PerceptronRecipe {
    /// The paper's setting (seed 20 = the official scripts' `--seed-data`).
    fn default() -> Self {
        Self {
            dim: 128,
            n_train: 4096,
            n_dev: 512,
            n_test: 512,
            train_mean: 0.0,
            train_var: 3.0,
            desired_mean: 0.5,
            desired_var: 1.0,
            train_label_noise: 0.0,
            seed: 20,
        }
    }
}

impl PerceptronRecipe {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("dim", self.dim), ("n_train", self.n_train), ("n_dev", self.n_dev), ("n_test", self.n_test)] {
            if v == 0 {
                return Err(Error::config(name, v, "must be > 0"));
            }
        }
        for (name, v) in [("train_mean", self.train_mean), ("desired_mean", self.desired_mean)] {
            if !v.is_finite() {
                return Err(Error::config(name, v, "must be finite"));
            }
        }
        for (name, v) in [("train_var", self.train_var), ("desired_var", self.desired_var)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(name, v, "must be finite and > 0"));
            }
        }
        if !(0.0..=1.0).contains(&self.train_label_noise) {
            return Err(Error::config("train_label_noise", self.train_label_noise, "must be a probability in [0, 1]"));
        }
        Ok(())
    }
}

impl PerceptronData {
    /// Splits the desired set for a search with a held-out part: returns (the data with the first
    /// K − ⌈F·K⌉ dev examples, the data with the last ⌈F·K⌉ as its dev set). Both parts must be
    /// non-empty. Train, test and θ0 are shared.
    pub fn split_dev(&self, fraction: f64) -> Result<(PerceptronData, PerceptronData)> {
        let k = self.dev.len();
        let held = (fraction * k as f64).ceil() as usize;
        if !(fraction > 0.0 && fraction < 1.0) || held == 0 || held >= k {
            return Err(Error::config("holdout", fraction, format!("must leave both parts of the {k} dev examples non-empty")));
        }
        let cut = k - held;
        let part = |lo: usize, hi: usize| Examples { x: self.dev.x[lo * self.dim..hi * self.dim].to_vec(), y: self.dev.y[lo..hi].to_vec() };
        let with_dev = |dev: Examples| PerceptronData { dev, ..self.clone() };
        Ok((with_dev(part(0, cut)), with_dev(part(cut, k))))
    }

    /// Draws the teacher, then train, dev and test inputs (in that order) from one ChaCha8 stream
    /// seeded with `recipe.seed`; y = 1 if w·x > 0 else 0. θ0 is left `None`.
    pub fn generate(recipe: &PerceptronRecipe) -> Result<Self> {
        recipe.validate()?;
        let rows = (recipe.n_train as u64).saturating_add(recipe.n_dev as u64).saturating_add(recipe.n_test as u64);
        // The inputs and labels as f32, and twice more while `save` encodes and serialises them.
        let needed = rows.saturating_mul(recipe.dim as u64 + 1).saturating_mul(3 * 4);
        let advice = format!(
            "lower --train, --dev, --test (now {} + {} + {}) or --dim (now {})",
            recipe.n_train, recipe.n_dev, recipe.n_test, recipe.dim
        );
        crate::memory::ensure_fits("generating this data", needed, &advice)?;
        let dim = recipe.dim;
        let mut rng = ChaCha8Rng::seed_from_u64(recipe.seed);
        let teacher: Vec<f64> = (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect();
        let mut draw = |n: usize, mean: f64, var: f64| {
            let sd = var.sqrt();
            let x: Vec<f32> = (0..n * dim)
                .map(|_| {
                    let e: f64 = StandardNormal.sample(&mut rng);
                    (mean + sd * e) as f32
                })
                .collect();
            // Label the stored (f32-rounded) inputs, so the labels are exactly the teacher's on the data.
            let y = x
                .chunks_exact(dim)
                .map(|z| {
                    let dot: f64 = z.iter().zip(&teacher).map(|(&a, &w)| a as f64 * w).sum();
                    if dot > 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            Examples { x, y }
        };
        let mut train = draw(recipe.n_train, recipe.train_mean, recipe.train_var);
        let dev = draw(recipe.n_dev, recipe.desired_mean, recipe.desired_var);
        let test = draw(recipe.n_test, recipe.desired_mean, recipe.desired_var);
        // Label noise from its own stream, so the inputs do not depend on it.
        if recipe.train_label_noise > 0.0 {
            let mut flips = ChaCha8Rng::seed_from_u64(recipe.seed ^ 0x6e6f_6973_6500_0000);
            for y in &mut train.y {
                if flips.random_bool(recipe.train_label_noise) {
                    *y = 1.0 - *y;
                }
            }
        }
        let data = Self { dim, train, dev, test, theta0: None };
        data.validate()?;
        Ok(data)
    }

    /// Shape and value checks shared by `generate`, `load` and `save`.
    pub fn validate(&self) -> Result<()> {
        let dim = self.dim;
        if dim == 0 {
            return Err(Error::shape("x_train (columns = dim)", "dim > 0", 0));
        }
        for (set, ex) in SETS.iter().zip(self.sets()) {
            let (xn, yn) = (format!("x_{set}"), format!("y_{set}"));
            if ex.is_empty() {
                return Err(Error::bad_input(format!("{set} set ({xn}, {yn})"), "is empty (0 examples)"));
            }
            if ex.x.len() != ex.len() * dim {
                let expected = format!("[{}, {dim}] = {} values (rows of {yn})", ex.len(), ex.len() * dim);
                return Err(Error::shape(xn, expected, format!("{} values", ex.x.len())));
            }
            if let Some(i) = ex.x.iter().position(|v| !v.is_finite() || v.abs() > MAX_INPUT) {
                let what = if ex.x[i].is_finite() { "too large a value" } else { "non-finite value" };
                let problem = format!(
                    "{what} {:?} at flat index {i} (row {}, column {}): the Hessian products square the inputs, so |x| must stay \
                     below {MAX_INPUT:.1e} for f32 arithmetic; rescale the data",
                    ex.x[i],
                    i / dim,
                    i % dim
                );
                return Err(Error::bad_input(xn, problem));
            }
            if let Some(i) = ex.y.iter().position(|&v| v != 0.0 && v != 1.0) {
                return Err(Error::bad_input(yn, format!("label {} at index {i} is not 0 or 1", ex.y[i])));
            }
        }
        if let Some(t) = &self.theta0 {
            if t.len() != dim {
                return Err(Error::shape("theta0", format!("[{dim}] (dim of x_train)"), format!("[{}]", t.len())));
            }
            if let Some(i) = t.iter().position(|v| !v.is_finite()) {
                return Err(Error::bad_input("theta0", format!("non-finite value {} at index {i}", t[i])));
            }
        }
        Ok(())
    }

    /// Reads the safetensors layout described in the module docs. Unknown extra tensors are ignored.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = tensor_file::read(path)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, e))?;
        Self::from_tensors(&st, path).map_err(|e| match e {
            // Shape/value errors name only the tensor; add the file so the message stands alone.
            Error::Shape { what, expected, got } => Error::Shape { what: format!("{what} in {}", path.display()), expected, got },
            Error::BadInput { what, problem } => Error::BadInput { what: format!("{what} in {}", path.display()), problem },
            e => e,
        })
    }

    fn from_tensors(st: &SafeTensors, path: &Path) -> Result<Self> {
        let get = |name: &str| {
            st.tensor(name)
                .map_err(|_| Error::format(path, format!("missing required tensor `{name}` (required: {REQUIRED}; optional: theta0)")))
        };
        let mut dim = None;
        let mut sets = Vec::with_capacity(3);
        for set in SETS {
            let (xn, yn) = (format!("x_{set}"), format!("y_{set}"));
            let (xt, yt) = (get(&xn)?, get(&yn)?);
            let &[rows, cols] = xt.shape() else {
                return Err(Error::shape(xn, "rank 2 [n, dim]", format!("shape {:?}", xt.shape())));
            };
            let d = *dim.get_or_insert(cols);
            if cols != d {
                return Err(Error::shape(xn, format!("[n, {d}] (dim of x_train)"), format!("shape {:?}", xt.shape())));
            }
            if yt.shape() != [rows] {
                return Err(Error::shape(yn, format!("[{rows}] (rows of {xn})"), format!("shape {:?}", yt.shape())));
            }
            sets.push(Examples { x: to_f32(&xn, &xt, X_DTYPES)?, y: to_f32(&yn, &yt, Y_DTYPES)? });
        }
        let dim = dim.unwrap_or(0);
        let theta0 = match st.tensor("theta0") {
            Err(_) => None,
            Ok(t) if t.shape() != [dim] => {
                return Err(Error::shape("theta0", format!("[{dim}] (dim of x_train)"), format!("shape {:?}", t.shape())))
            }
            Ok(t) => Some(to_f32("theta0", &t, X_DTYPES)?),
        };
        let [train, dev, test] = <[Examples; 3]>::try_from(sets).expect("three sets");
        let data = Self { dim, train, dev, test, theta0 };
        data.validate()?;
        Ok(data)
    }

    /// Validates, then writes all tensors as F32, atomically (see `files::write_atomic`).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let names: Vec<[String; 2]> = SETS.iter().map(|set| [format!("x_{set}"), format!("y_{set}")]).collect();
        let mut tensors = Vec::new();
        for ([xn, yn], ex) in names.iter().zip(self.sets()) {
            tensors.push(Tensor { name: xn, shape: vec![ex.len(), self.dim], values: Values::F32(&ex.x) });
            tensors.push(Tensor { name: yn, shape: vec![ex.len()], values: Values::F32(&ex.y) });
        }
        if let Some(t) = &self.theta0 {
            tensors.push(Tensor { name: "theta0", shape: vec![self.dim], values: Values::F32(t) });
        }
        tensor_file::write(path, &tensors, None)
    }

    fn sets(&self) -> [&Examples; 3] {
        [&self.train, &self.dev, &self.test]
    }
}

/// θ0 as PyTorch's default `nn.Linear(dim, 1, bias=False)` init draws it: kaiming_uniform with
/// a = √5 gives bound gain·√(3/fan_in) = √(1/3)·√(3/dim) = 1/√dim, i.e. U(−1/√dim, 1/√dim).
/// Seeded with ChaCha8 (the values differ from PyTorch's; the distribution is the same).
pub fn init_theta(dim: usize, seed: u64) -> Vec<f32> {
    if dim == 0 {
        return Vec::new();
    }
    let bound = 1.0 / (dim as f32).sqrt();
    let u = Uniform::new(-bound, bound).expect("finite non-empty range");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..dim).map(|_| u.sample(&mut rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> PerceptronRecipe {
        PerceptronRecipe { dim: 8, n_train: 64, n_dev: 16, n_test: 16, seed, ..Default::default() }
    }

    fn mean_var(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().map(|&a| a as f64).sum::<f64>() / n;
        (m, v.iter().map(|&a| (a as f64 - m).powi(2)).sum::<f64>() / n)
    }

    #[test]
    fn generate_is_deterministic_per_seed() {
        let a = PerceptronData::generate(&small(1)).unwrap();
        assert_eq!(a, PerceptronData::generate(&small(1)).unwrap());
        let b = PerceptronData::generate(&small(2)).unwrap();
        assert_ne!(a.train.x, b.train.x);
        assert_ne!(a.dev.x, b.dev.x);
    }

    #[test]
    fn generate_draws_teacher_then_train_from_one_stream() {
        // Same seed, fewer training rows: the teacher and the first train rows are unchanged.
        let (a, b) = (small(5), PerceptronRecipe { n_train: 32, ..small(5) });
        let (da, db) = (PerceptronData::generate(&a).unwrap(), PerceptronData::generate(&b).unwrap());
        assert_eq!(db.train.x[..], da.train.x[..32 * 8]);
        assert_eq!(db.train.y[..], da.train.y[..32]);
        assert_ne!(db.dev.x, da.dev.x);
    }

    #[test]
    fn generate_shapes_match_recipe() {
        let r = PerceptronRecipe::default();
        let d = PerceptronData::generate(&r).unwrap();
        assert_eq!(d.dim, 128);
        for (ex, n) in [(&d.train, 4096), (&d.dev, 512), (&d.test, 512)] {
            assert_eq!((ex.len(), ex.x.len()), (n, n * 128));
        }
        assert!(d.theta0.is_none());
        d.validate().unwrap();
    }

    #[test]
    fn generate_labels_have_both_classes() {
        let d = PerceptronData::generate(&PerceptronRecipe::default()).unwrap();
        for ex in d.sets() {
            let frac = ex.y.iter().sum::<f32>() / ex.len() as f32;
            assert!((0.1..0.9).contains(&frac), "positive fraction {frac}");
        }
    }

    #[test]
    fn generate_moments_follow_recipe() {
        let d = PerceptronData::generate(&PerceptronRecipe::default()).unwrap();
        let (m, v) = mean_var(&d.train.x);
        assert!(m.abs() < 0.02 && (v - 3.0).abs() < 0.05, "train mean {m} var {v}");
        for ex in [&d.dev, &d.test] {
            let (m, v) = mean_var(&ex.x);
            assert!((m - 0.5).abs() < 0.02 && (v - 1.0).abs() < 0.05, "desired mean {m} var {v}");
        }
    }

    #[test]
    fn recipe_validate_rejects_bad_settings() {
        assert!(PerceptronRecipe::default().validate().is_ok());
        let bad = [
            PerceptronRecipe { dim: 0, ..Default::default() },
            PerceptronRecipe { n_dev: 0, ..Default::default() },
            PerceptronRecipe { train_var: 0.0, ..Default::default() },
            PerceptronRecipe { desired_var: f64::INFINITY, ..Default::default() },
            PerceptronRecipe { train_mean: f64::NAN, ..Default::default() },
        ];
        for (r, name) in bad.iter().zip(["dim", "n_dev", "train_var", "desired_var", "train_mean"]) {
            let e = PerceptronData::generate(r).unwrap_err();
            assert!(matches!(e, Error::Config { .. }) && e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn save_load_round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.safetensors");
        let mut d = PerceptronData::generate(&small(3)).unwrap();
        d.save(&path).unwrap();
        assert_eq!(PerceptronData::load(&path).unwrap(), d);
        d.theta0 = Some(init_theta(d.dim, 10));
        d.save(&path).unwrap(); // overwrites
        assert_eq!(PerceptronData::load(&path).unwrap(), d);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["d.safetensors"], "temp file left behind");
    }

    #[test]
    fn init_theta_within_pytorch_bounds() {
        let t = init_theta(128, 10);
        let b = 1.0 / 128f32.sqrt();
        assert_eq!(t.len(), 128);
        assert!(t.iter().all(|v| v.abs() <= b));
        assert!(t.iter().cloned().fold(f32::MIN, f32::max) > 0.8 * b);
        assert!(t.iter().cloned().fold(f32::MAX, f32::min) < -0.8 * b);
        assert_eq!(t, init_theta(128, 10));
        assert_ne!(t, init_theta(128, 11));
        assert!(init_theta(0, 1).is_empty());
    }

    #[test]
    fn validate_catches_in_memory_shape_error() {
        let mut d = PerceptronData::generate(&small(4)).unwrap();
        d.dev.x.pop();
        let e = d.validate().unwrap_err();
        assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("x_dev"), "{e}");
    }

    // ---- load errors: files written with the safetensors crate directly ----

    type Raw = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;
    const D: usize = 3;
    const N: usize = 4;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|f| f.to_le_bytes()).collect()
    }

    /// A valid file's tensors: D = 3, four examples per set, alternating labels.
    fn valid() -> Raw {
        let mut raw = Raw::new();
        for set in SETS {
            let x: Vec<f32> = (0..N * D).map(|i| i as f32 * 0.1).collect();
            let y: Vec<f32> = (0..N).map(|i| (i % 2) as f32).collect();
            raw.push((format!("x_{set}"), Dtype::F32, vec![N, D], f32s(&x)));
            raw.push((format!("y_{set}"), Dtype::F32, vec![N], f32s(&y)));
        }
        raw
    }

    fn set(raw: &mut Raw, name: &str, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) {
        raw.retain(|t| t.0 != name);
        raw.push((name.into(), dtype, shape, bytes));
    }

    fn load_raw(raw: &Raw) -> Result<PerceptronData> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let views = raw.iter().map(|(n, dt, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap()));
        safetensors::serialize_to_file(views, None, &path).unwrap();
        PerceptronData::load(&path)
    }

    /// Asserts the error variant and that the message names `needle` (the tensor).
    fn expect_err(r: Result<PerceptronData>, variant: fn(&Error) -> bool, needle: &str) {
        let e = r.unwrap_err();
        let msg = e.to_string();
        assert!(variant(&e), "wrong variant: {msg}");
        assert!(msg.contains(needle), "message does not name {needle}: {msg}");
    }
    fn is_shape(e: &Error) -> bool {
        matches!(e, Error::Shape { .. })
    }
    fn is_bad(e: &Error) -> bool {
        matches!(e, Error::BadInput { .. })
    }
    fn is_format(e: &Error) -> bool {
        matches!(e, Error::Format { .. })
    }

    #[test]
    fn load_valid_file_and_ignores_extra_tensors() {
        let mut raw = valid();
        set(&mut raw, "extra", Dtype::I16, vec![2], vec![0; 4]);
        let d = load_raw(&raw).unwrap();
        assert_eq!((d.dim, d.train.len(), d.theta0), (D, N, None));
    }

    #[test]
    fn load_converts_label_and_input_dtypes() {
        let want = load_raw(&valid()).unwrap();
        let labels: [u8; N] = [0, 1, 0, 1];
        let encodings: [(Dtype, Vec<u8>); 5] = [
            (Dtype::F64, labels.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect()),
            (Dtype::I64, labels.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect()),
            (Dtype::I32, labels.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect()),
            (Dtype::U8, labels.to_vec()),
            (Dtype::BOOL, labels.to_vec()),
        ];
        for (dt, bytes) in encodings {
            let mut raw = valid();
            set(&mut raw, "y_dev", dt, vec![N], bytes);
            assert_eq!(load_raw(&raw).unwrap(), want, "labels as {dt:?}");
        }
        let mut raw = valid();
        let x64: Vec<u8> = (0..N * D).map(|i| (i as f32 * 0.1) as f64).flat_map(f64::to_le_bytes).collect();
        set(&mut raw, "x_test", Dtype::F64, vec![N, D], x64);
        let theta: Vec<u8> = [0.5f64, -0.25, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        set(&mut raw, "theta0", Dtype::F64, vec![D], theta);
        let got = load_raw(&raw).unwrap();
        assert_eq!(got.test, want.test);
        assert_eq!(got.theta0, Some(vec![0.5, -0.25, 1.0]));
    }

    #[test]
    fn load_missing_file_is_io() {
        let dir = tempfile::tempdir().unwrap();
        let e = PerceptronData::load(&dir.path().join("nope.safetensors")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("nope.safetensors"), "{e}");
    }

    #[test]
    fn load_garbage_or_corrupt_header_is_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        let mut corrupt = 16u64.to_le_bytes().to_vec();
        corrupt.extend(b"{\"x_train\": oops");
        for bytes in [b"not a safetensors file".to_vec(), corrupt] {
            std::fs::write(&path, bytes).unwrap();
            let e = PerceptronData::load(&path).unwrap_err();
            assert!(is_format(&e) && e.to_string().contains("bad.safetensors"), "{e}");
        }
    }

    #[test]
    fn load_missing_tensor_names_it_and_the_required_ones() {
        let mut raw = valid();
        raw.retain(|t| t.0 != "y_dev");
        expect_err(load_raw(&raw), is_format, "`y_dev`");
        expect_err(load_raw(&raw), is_format, REQUIRED);
    }

    #[test]
    fn load_wrong_rank() {
        let mut raw = valid();
        set(&mut raw, "x_dev", Dtype::F32, vec![N * D], f32s(&[0.0; N * D]));
        expect_err(load_raw(&raw), is_shape, "x_dev");
        let mut raw = valid();
        set(&mut raw, "y_train", Dtype::F32, vec![N, 1], f32s(&[0.0; N]));
        expect_err(load_raw(&raw), is_shape, "y_train");
    }

    #[test]
    fn load_mismatched_dim_across_sets() {
        let mut raw = valid();
        set(&mut raw, "x_test", Dtype::F32, vec![N, D + 1], f32s(&[0.0; N * (D + 1)]));
        expect_err(load_raw(&raw), is_shape, "x_test");
    }

    #[test]
    fn load_label_count_must_match_rows() {
        let mut raw = valid();
        set(&mut raw, "y_train", Dtype::F32, vec![N - 1], f32s(&[0.0; N - 1]));
        expect_err(load_raw(&raw), is_shape, "y_train");
    }

    #[test]
    fn load_theta0_wrong_length() {
        let mut raw = valid();
        set(&mut raw, "theta0", Dtype::F32, vec![D + 1], f32s(&[0.0; D + 1]));
        expect_err(load_raw(&raw), is_shape, "theta0");
    }

    #[test]
    fn load_empty_set() {
        let mut raw = valid();
        set(&mut raw, "x_dev", Dtype::F32, vec![0, D], vec![]);
        set(&mut raw, "y_dev", Dtype::F32, vec![0], vec![]);
        expect_err(load_raw(&raw), is_bad, "x_dev");
    }

    #[test]
    fn load_non_finite_input_gives_index_and_row() {
        let mut raw = valid();
        let mut x = vec![0.0f32; N * D];
        x[5] = f32::NAN;
        set(&mut raw, "x_train", Dtype::F32, vec![N, D], f32s(&x));
        expect_err(load_raw(&raw), is_bad, "x_train");
        expect_err(load_raw(&raw), is_bad, "flat index 5 (row 1, column 2)");
    }

    #[test]
    fn load_input_too_large_for_f32_products_names_the_data() {
        let mut raw = valid();
        let mut x = vec![0.0f32; N * D];
        x[5] = -3e38;
        set(&mut raw, "x_train", Dtype::F32, vec![N, D], f32s(&x));
        expect_err(load_raw(&raw), is_bad, "too large a value -3e38 at flat index 5 (row 1, column 2)");
        x[5] = 1.8e19;
        set(&mut raw, "x_train", Dtype::F32, vec![N, D], f32s(&x));
        load_raw(&raw).unwrap();
    }

    #[test]
    fn load_non_finite_theta0() {
        let mut raw = valid();
        set(&mut raw, "theta0", Dtype::F32, vec![D], f32s(&[0.0, f32::INFINITY, 0.0]));
        expect_err(load_raw(&raw), is_bad, "theta0");
        expect_err(load_raw(&raw), is_bad, "index 1");
    }

    #[test]
    fn load_label_not_binary() {
        let mut raw = valid();
        set(&mut raw, "y_test", Dtype::I64, vec![N], [0i64, 1, 2, 0].iter().flat_map(|v| v.to_le_bytes()).collect());
        expect_err(load_raw(&raw), is_bad, "y_test");
        expect_err(load_raw(&raw), is_bad, "label 2 at index 2");
    }

    #[test]
    fn load_unsupported_dtype() {
        let mut raw = valid();
        set(&mut raw, "x_train", Dtype::I32, vec![N, D], vec![0; N * D * 4]);
        expect_err(load_raw(&raw), is_bad, "x_train");
        let mut raw = valid();
        set(&mut raw, "y_dev", Dtype::F16, vec![N], vec![0; N * 2]);
        expect_err(load_raw(&raw), is_bad, "y_dev");
    }
}
