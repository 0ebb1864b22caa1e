//! Text data for the Transformer task (paper §5): token rows, their tokenizer, a built-in story
//! generator and the training noise.
//!
//! - `bpe`: a byte-level BPE tokenizer trained on the training text (UNK = 0, PAD = 1).
//! - `stories`: a small probabilistic grammar of TinyStories-like stories (no download needed).
//! - `corpus`: reading a user corpus, cutting stories into rows, perturbing training rows.
//! - here: [`TokenData`] (train/dev/test rows and their safetensors file) and [`TextRecipe`].
//!
//! File layout: `train` \[N, L\], `dev` \[K, L\], `test` \[M, L\] as I32 (I64 also read), optional
//! `noisy` \[N\] as U8 (1 = perturbed training row), metadata `vocab_size`. L = context length + 1,
//! as the official `{train,dev,test}.pt` tensors of width 65: inputs are [:, :-1], labels [:, 1:].
//! The test set may be empty (M = 0, shape [0, L]) in a file meant only for a search.
pub mod bpe;
pub mod corpus;
pub mod stories;

pub use bpe::Bpe;
pub use corpus::{add_noise, perturb, read_corpus, rows_from_texts};
pub use stories::generate_stories;

use crate::error::{Error, Result};
use crate::tensor_file;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Id of unknown tokens (bytes never seen when the tokenizer was trained), as in the official data.
pub const UNK: u32 = 0;
/// Id of padding; label positions holding PAD are masked from the loss.
pub const PAD: u32 = 1;

/// The three sets, in file and generation order.
const SETS: [&str; 3] = ["train", "dev", "test"];
/// Seeds the noise stream apart from the stories, so the clean text does not depend on the noise.
const NOISE_SALT: u64 = 0x6e6f_6973_6500_0000;
/// Ids are stored as I32.
const MAX_VOCAB: usize = i32::MAX as usize + 1;

/// Tokenized train/dev/test rows for the Transformer task.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenData {
    pub vocab_size: usize,
    /// Tokens per row = the model's context length + 1 (inputs [:, :-1], labels [:, 1:]).
    pub seq_len: usize,
    /// [n_train, seq_len] row-major.
    pub train: Vec<u32>,
    /// [n_dev, seq_len] row-major.
    pub dev: Vec<u32>,
    /// [n_test, seq_len] row-major.
    pub test: Vec<u32>,
    /// Which training rows were perturbed by the noise (for analysis), length n_train; may be
    /// empty when loaded from a file without it.
    pub noisy: Vec<bool>,
}

/// How [`TokenData::generate`] and [`TokenData::from_texts`] build the data. Missing fields
/// deserialize to the defaults; unknown fields are rejected (typos).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextRecipe {
    pub n_train: usize,
    pub n_dev: usize,
    pub n_test: usize,
    /// Tokens per row = context length + 1.
    pub seq_len: usize,
    /// Vocabulary size asked of the BPE; the data's is the one reached (≤ this, see [`Bpe::train`]).
    pub vocab_size: usize,
    pub seed: u64,
    /// Fraction of training rows perturbed (paper: 50%).
    pub noise_fraction: f64,
    /// Operations per perturbed row (paper: 20).
    pub noise_ops: usize,
}

impl Default for TextRecipe {
    /// The scaled CPU setting (the paper's is [`TextRecipe::paper`]); seed 20 = the official `--seed-data`.
    fn default() -> Self {
        Self { n_train: 1024, n_dev: 256, n_test: 256, seq_len: 33, vocab_size: 512, seed: 20, noise_fraction: 0.5, noise_ops: 20 }
    }
}

impl TextRecipe {
    /// The paper's sizes: 16384 training rows, 512 dev, 512 test, context 64, 5K vocabulary.
    pub fn paper() -> Self {
        Self { n_train: 16384, n_dev: 512, n_test: 512, seq_len: 65, vocab_size: 5000, ..Self::default() }
    }

    pub fn validate(&self) -> Result<()> {
        // n_test = 0 makes a file for a search alone (the test set only serves evaluations).
        for (name, v) in [("n_train", self.n_train), ("n_dev", self.n_dev)] {
            if v == 0 {
                return Err(Error::config(name, v, "must be > 0"));
            }
        }
        if self.seq_len < 2 {
            return Err(Error::config("seq_len", self.seq_len, "must be ≥ 2 (context length + 1)"));
        }
        if !(3..=MAX_VOCAB).contains(&self.vocab_size) {
            return Err(Error::config("vocab_size", self.vocab_size, format!("must be in 3..={MAX_VOCAB}")));
        }
        if !(0.0..=1.0).contains(&self.noise_fraction) {
            return Err(Error::config("noise_fraction", self.noise_fraction, "must be a fraction in [0, 1]"));
        }
        Ok(())
    }
}

impl TokenData {
    pub fn n_train(&self) -> usize {
        self.train.len().checked_div(self.seq_len).unwrap_or(0)
    }
    pub fn n_dev(&self) -> usize {
        self.dev.len().checked_div(self.seq_len).unwrap_or(0)
    }
    pub fn n_test(&self) -> usize {
        self.test.len().checked_div(self.seq_len).unwrap_or(0)
    }

    fn sets(&self) -> [&Vec<u32>; 3] {
        [&self.train, &self.dev, &self.test]
    }

    /// Generates `n_train + n_dev + n_test` distinct stories with [`generate_stories`] (seeded with
    /// `recipe.seed`; train first, then dev, then test) and builds the data with [`TokenData::from_texts`].
    pub fn generate(recipe: &TextRecipe) -> Result<(TokenData, Bpe)> {
        recipe.validate()?;
        let stories = generate_stories(recipe.n_train + recipe.n_dev + recipe.n_test, recipe.seed);
        let (train, rest) = stories.split_at(recipe.n_train);
        let (dev, test) = rest.split_at(recipe.n_dev);
        Self::from_texts(train, dev, test, recipe)
    }

    /// Trains the BPE on the training texts only, cuts each set into rows (one story per row, see
    /// [`rows_from_texts`]; the first n of each set), then perturbs `noise_fraction` of the training
    /// rows with `noise_ops` operations each (dev and test stay clean). The data's `vocab_size` is
    /// the tokenizer's. Errors when a set yields fewer rows than its n.
    pub fn from_texts(train: &[String], dev: &[String], test: &[String], recipe: &TextRecipe) -> Result<(TokenData, Bpe)> {
        recipe.validate()?;
        let bpe = Bpe::train(train, recipe.vocab_size)?;
        let seq_len = recipe.seq_len;
        let mut rows = Vec::with_capacity(3);
        for (set, texts, n) in [("train", train, recipe.n_train), ("dev", dev, recipe.n_dev), ("test", test, recipe.n_test)] {
            let r = rows_from_texts(&bpe, texts, seq_len, n);
            if r.len() < n * seq_len {
                let problem = format!(
                    "{} texts give only {} rows (stories of at least 2 tokens), but n_{set} = {n} were asked for",
                    texts.len(),
                    r.len() / seq_len
                );
                return Err(Error::bad_input(format!("{set} texts"), problem));
            }
            rows.push(r);
        }
        let [mut train, dev, test] = <[Vec<u32>; 3]>::try_from(rows).expect("three sets");
        let vocab_size = bpe.vocab_size();
        let noisy = add_noise(&mut train, seq_len, recipe.noise_fraction, recipe.noise_ops, vocab_size, recipe.seed ^ NOISE_SALT);
        let data = TokenData { vocab_size, seq_len, train, dev, test, noisy };
        data.validate()?;
        Ok((data, bpe))
    }

    /// Splits the dev set for a search with a held-out part: returns (the data with the first
    /// K − ⌈F·K⌉ dev rows, the data with the last ⌈F·K⌉ as its dev set). Both parts must be
    /// non-empty. Train, test and `noisy` are shared.
    pub fn split_dev(&self, fraction: f64) -> Result<(TokenData, TokenData)> {
        let k = self.n_dev();
        let held = (fraction * k as f64).ceil() as usize;
        if !(fraction > 0.0 && fraction < 1.0) || held == 0 || held >= k {
            return Err(Error::config("holdout", fraction, format!("must leave both parts of the {k} dev rows non-empty")));
        }
        let cut = (k - held) * self.seq_len;
        let with_dev = |dev: &[u32]| TokenData { dev: dev.to_vec(), ..self.clone() };
        Ok((with_dev(&self.dev[..cut]), with_dev(&self.dev[cut..])))
    }

    /// Checks shared by `from_texts`, `load` and `save`: whole rows, non-empty train and dev sets
    /// (the test set may be empty: a file for a search alone), ids below `vocab_size`, and at least
    /// one non-PAD label (positions 1..seq_len) in every row.
    pub fn validate(&self) -> Result<()> {
        let seq_len = self.seq_len;
        if seq_len < 2 {
            return Err(Error::shape("seq_len", "≥ 2 (context length + 1)", seq_len));
        }
        if !(3..=MAX_VOCAB).contains(&self.vocab_size) {
            return Err(Error::bad_input("vocab_size", format!("{} is not in 3..={MAX_VOCAB}", self.vocab_size)));
        }
        for (set, rows) in SETS.iter().zip(self.sets()) {
            let what = format!("{set} set");
            if rows.is_empty() && *set != "test" {
                return Err(Error::bad_input(what, "is empty (0 rows)"));
            }
            if rows.len() % seq_len != 0 {
                return Err(Error::shape(what, format!("whole rows of {seq_len} ids"), format!("{} ids", rows.len())));
            }
            for (r, row) in rows.chunks_exact(seq_len).enumerate() {
                if let Some(p) = row.iter().position(|&id| id as usize >= self.vocab_size) {
                    let problem = format!("token id {} at row {r}, position {p} is not below vocab_size {}", row[p], self.vocab_size);
                    return Err(Error::bad_input(what, problem));
                }
                if row[1..].iter().all(|&id| id == PAD) {
                    return Err(Error::bad_input(what, format!("row {r} has no label: positions 1..{seq_len} are all PAD")));
                }
            }
        }
        if !self.noisy.is_empty() && self.noisy.len() != self.n_train() {
            return Err(Error::shape("noisy", format!("[{}] (rows of train) or empty", self.n_train()), format!("[{}]", self.noisy.len())));
        }
        Ok(())
    }

    /// Validates, then writes the layout of the module docs, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let mut bytes: Vec<(&str, Vec<usize>, Dtype, Vec<u8>)> = SETS
            .iter()
            .zip(self.sets())
            .map(|(&set, rows)| {
                (
                    set,
                    vec![rows.len() / self.seq_len, self.seq_len],
                    Dtype::I32,
                    rows.iter().flat_map(|&id| (id as i32).to_le_bytes()).collect(),
                )
            })
            .collect();
        if !self.noisy.is_empty() {
            bytes.push(("noisy", vec![self.noisy.len()], Dtype::U8, self.noisy.iter().map(|&b| b as u8).collect()));
        }
        let metadata = HashMap::from([("vocab_size".to_string(), self.vocab_size.to_string())]);
        let serialized = bytes
            .iter()
            .map(|(name, shape, dtype, b)| TensorView::new(*dtype, shape.clone(), b).map(|v| (*name, v)))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|views| safetensors::serialize(views, Some(metadata)))
            .map_err(|e| Error::format(path, format!("cannot serialize: {e}")))?;
        crate::files::write_atomic(path, &serialized)
    }

    /// Reads the layout of the module docs. Unknown extra tensors are ignored.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = tensor_file::read(path)?;
        let meta = tensor_file::metadata(path, &bytes)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, e))?;
        Self::from_tensors(&st, &meta, path).map_err(|e| match e {
            // Shape/value errors name only the tensor; add the file so the message stands alone.
            Error::Shape { what, expected, got } => Error::Shape { what: format!("{what} in {}", path.display()), expected, got },
            Error::BadInput { what, problem } => Error::BadInput { what: format!("{what} in {}", path.display()), problem },
            e => e,
        })
    }

    fn from_tensors(st: &SafeTensors, meta: &HashMap<String, String>, path: &Path) -> Result<Self> {
        let vocab_size = match meta.get("vocab_size").map(|v| v.parse::<usize>()) {
            Some(Ok(v)) => v,
            Some(Err(_)) => {
                return Err(Error::format(path, format!("metadata `vocab_size` = {:?} is not a whole number", meta["vocab_size"])))
            }
            None => {
                let hint = "missing metadata `vocab_size` (e.g. save_file(tensors, path, metadata={\"vocab_size\": \"5000\"}))";
                return Err(Error::format(path, hint));
            }
        };
        let mut seq_len = None;
        let mut sets = Vec::with_capacity(3);
        for set in SETS {
            let t = st.tensor(set).map_err(|_| {
                Error::format(path, format!("missing required tensor `{set}` (required: train, dev, test; optional: noisy)"))
            })?;
            let &[_, cols] = t.shape() else {
                return Err(Error::shape(set, "rank 2 [n, seq_len]", format!("shape {:?}", t.shape())));
            };
            let l = *seq_len.get_or_insert(cols);
            if cols != l {
                return Err(Error::shape(set, format!("[n, {l}] (seq_len of train)"), format!("shape {:?}", t.shape())));
            }
            sets.push(token_ids(set, &t, cols)?);
        }
        let seq_len = seq_len.unwrap_or(0);
        let n_train = sets[0].len().checked_div(seq_len).unwrap_or(0);
        let noisy = match st.tensor("noisy") {
            Err(_) => Vec::new(),
            Ok(t) if t.shape() != [n_train] => {
                return Err(Error::shape("noisy", format!("[{n_train}] (rows of train)"), format!("shape {:?}", t.shape())));
            }
            Ok(t) if !matches!(t.dtype(), Dtype::U8 | Dtype::BOOL) => {
                return Err(Error::bad_input("noisy", format!("unsupported dtype {:?}; expected U8 or BOOL", t.dtype())));
            }
            Ok(t) => match t.data().iter().position(|&b| b > 1) {
                Some(i) => return Err(Error::bad_input("noisy", format!("value {} at index {i} is not 0 or 1", t.data()[i]))),
                None => t.data().iter().map(|&b| b == 1).collect(),
            },
        };
        let [train, dev, test] = <[Vec<u32>; 3]>::try_from(sets).expect("three sets");
        let data = TokenData { vocab_size, seq_len, train, dev, test, noisy };
        data.validate()?;
        Ok(data)
    }
}

/// A token-id tensor (I32 or I64) as u32, rejecting negative or oversized ids.
fn token_ids(name: &str, t: &TensorView, seq_len: usize) -> Result<Vec<u32>> {
    let b = t.data();
    let values: Vec<i64> = match t.dtype() {
        Dtype::I32 => tensor_file::le(b, |c| i32::from_le_bytes(c) as i64).collect(),
        Dtype::I64 => tensor_file::le(b, i64::from_le_bytes).collect(),
        dt => return Err(Error::bad_input(name, format!("unsupported dtype {dt:?}; expected I32 or I64"))),
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            u32::try_from(v).map_err(|_| {
                Error::bad_input(
                    name,
                    format!("token id {v} at row {}, position {} is not a valid id", i / seq_len.max(1), i % seq_len.max(1)),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> TextRecipe {
        TextRecipe { n_train: 64, n_dev: 16, n_test: 16, seq_len: 17, vocab_size: 200, seed, ..Default::default() }
    }

    /// A small valid data set by hand: vocab 10, seq_len 4, 3 train, 2 dev, 2 test rows.
    fn hand() -> TokenData {
        TokenData {
            vocab_size: 10,
            seq_len: 4,
            train: vec![2, 3, 4, 5, 6, 7, PAD, PAD, 9, UNK, 8, PAD],
            dev: vec![2, 3, PAD, PAD, 4, 5, 6, 7],
            test: vec![8, 9, 2, 3, 3, 3, PAD, PAD],
            noisy: vec![true, false, true],
        }
    }

    #[test]
    fn generate_is_deterministic_and_valid() {
        let (a, bpe) = TokenData::generate(&small(1)).unwrap();
        let (b, bpe_b) = TokenData::generate(&small(1)).unwrap();
        assert_eq!(a, b);
        assert_eq!(bpe, bpe_b);
        a.validate().unwrap();
        assert_eq!((a.n_train(), a.n_dev(), a.n_test(), a.seq_len), (64, 16, 16, 17));
        assert_eq!(a.vocab_size, bpe.vocab_size());
        assert_eq!(a.noisy.iter().filter(|&&n| n).count(), 32);
        let (c, _) = TokenData::generate(&small(2)).unwrap();
        assert_ne!(a.train, c.train);
        // Dev rows are clean stories: they decode to the start of a story.
        assert!(bpe.decode(&a.dev[..17]).starts_with(|c: char| c.is_uppercase()));
        // No noise: the noisy flags are all false and the rows are the clean ones.
        let (clean, _) = TokenData::generate(&TextRecipe { noise_fraction: 0.0, ..small(1) }).unwrap();
        assert!(clean.noisy.iter().all(|&n| !n));
        for (r, &noisy) in a.noisy.iter().enumerate() {
            let (x, y) = (&a.train[r * 17..(r + 1) * 17], &clean.train[r * 17..(r + 1) * 17]);
            assert_eq!(noisy, x != y, "row {r}"); // 20 operations always change a row here
        }
        assert_eq!(a.dev, clean.dev);
    }

    #[test]
    fn recipe_validation() {
        TextRecipe::default().validate().unwrap();
        TextRecipe::paper().validate().unwrap();
        for (r, name) in [
            (TextRecipe { n_dev: 0, ..small(1) }, "n_dev"),
            (TextRecipe { seq_len: 1, ..small(1) }, "seq_len"),
            (TextRecipe { vocab_size: 2, ..small(1) }, "vocab_size"),
            (TextRecipe { noise_fraction: 1.5, ..small(1) }, "noise_fraction"),
            (TextRecipe { noise_fraction: f64::NAN, ..small(1) }, "noise_fraction"),
        ] {
            let e = TokenData::generate(&r).unwrap_err();
            assert!(matches!(e, Error::Config { .. }) && e.to_string().contains(name), "{e}");
        }
        let e = TokenData::generate(&TextRecipe { vocab_size: 10, ..small(1) }).unwrap_err();
        assert!(e.to_string().contains("at least"), "{e}");
        let r: TextRecipe = serde_json::from_str(r#"{"n_train": 8}"#).unwrap();
        assert_eq!(r, TextRecipe { n_train: 8, ..Default::default() });
        assert!(serde_json::from_str::<TextRecipe>(r#"{"n_trian": 8}"#).is_err());
    }

    #[test]
    fn from_texts_too_few_rows_and_first_n() {
        let texts: Vec<String> = generate_stories(10, 5);
        let recipe = TextRecipe { n_train: 8, n_dev: 2, n_test: 3, seq_len: 9, vocab_size: 120, ..Default::default() };
        let mut short = texts[8..].to_vec();
        short.push("a".into()); // one token: no row
        let e = TokenData::from_texts(&texts[..8], &texts[8..], &short, &recipe).unwrap_err();
        assert!(matches!(e, Error::BadInput { .. }) && e.to_string().contains("n_test = 3"), "{e}");
        let (d, bpe) = TokenData::from_texts(&texts, &texts, &texts, &TextRecipe { noise_fraction: 0.0, ..recipe }).unwrap();
        assert_eq!(d.n_train(), 8);
        assert_eq!(d.dev[..9], bpe.encode(&texts[0])[..9]);
        assert_eq!(d.test[9..18], bpe.encode(&texts[1])[..9]);
    }

    #[test]
    fn validate_names_set_and_row() {
        let mut d = hand();
        d.validate().unwrap();
        d.dev[6] = 10;
        let e = d.validate().unwrap_err();
        assert!(
            matches!(e, Error::BadInput { .. }) && e.to_string().contains("dev set") && e.to_string().contains("row 1, position 2"),
            "{e}"
        );
        let mut d = hand();
        d.test[5] = PAD; // row 1 = [3, PAD, PAD, PAD]: no label
        let e = d.validate().unwrap_err();
        assert!(e.to_string().contains("test set") && e.to_string().contains("row 1 has no label"), "{e}");
        let mut d = hand();
        d.train.pop();
        assert!(matches!(d.validate().unwrap_err(), Error::Shape { .. }));
        let mut d = hand();
        d.noisy.pop();
        assert!(d.validate().unwrap_err().to_string().contains("noisy"));
        let mut d = hand();
        d.dev.clear();
        assert!(d.validate().unwrap_err().to_string().contains("dev set"));
        let d = TokenData { seq_len: 1, ..hand() };
        assert!(d.validate().is_err());
    }

    #[test]
    fn split_dev_like_perceptron() {
        let d = TokenData { dev: (0..5).flat_map(|r| [2 + r, 3, 4, 5]).collect(), ..hand() };
        let (a, b) = d.split_dev(0.3).unwrap();
        assert_eq!((a.n_dev(), b.n_dev()), (3, 2));
        assert_eq!(b.dev, [5, 3, 4, 5, 6, 3, 4, 5]);
        assert_eq!((a.train.clone(), a.test.clone(), a.noisy.clone()), (d.train.clone(), d.test.clone(), d.noisy.clone()));
        for f in [0.0, 1.0, 0.99, -0.1] {
            assert!(matches!(d.split_dev(f).unwrap_err(), Error::Config { .. }), "fraction {f}");
        }
    }

    // ---- file round trips and load errors ----

    fn i32s(v: &[i64]) -> Vec<u8> {
        v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect()
    }

    type Raw = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

    fn raw_of(d: &TokenData) -> Raw {
        SETS.iter()
            .zip(d.sets())
            .map(|(s, rows)| {
                (
                    s.to_string(),
                    Dtype::I32,
                    vec![rows.len() / d.seq_len, d.seq_len],
                    i32s(&rows.iter().map(|&x| x as i64).collect::<Vec<_>>()),
                )
            })
            .collect()
    }

    fn load_raw(raw: &Raw, vocab: Option<&str>) -> Result<TokenData> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let views = raw.iter().map(|(n, dt, s, b)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap()));
        let meta = vocab.map(|v| HashMap::from([("vocab_size".to_string(), v.to_string())]));
        safetensors::serialize_to_file(views, meta, &path).unwrap();
        TokenData::load(&path)
    }

    fn set(raw: &mut Raw, name: &str, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) {
        raw.retain(|t| t.0 != name);
        raw.push((name.into(), dtype, shape, bytes));
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.safetensors");
        let (d, _) = TokenData::generate(&small(3)).unwrap();
        d.save(&path).unwrap();
        assert_eq!(TokenData::load(&path).unwrap(), d);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["d.safetensors"], "temp file left behind");
        // Without noise flags.
        let h = TokenData { noisy: Vec::new(), ..hand() };
        h.save(&path).unwrap();
        assert_eq!(TokenData::load(&path).unwrap(), h);
        // Saving invalid data fails before writing.
        let bad = TokenData { vocab_size: 9, ..hand() };
        assert!(bad.save(&dir.path().join("bad.safetensors")).is_err());
        assert!(!dir.path().join("bad.safetensors").exists());
    }

    /// A file for a search alone: an empty test set ([0, L]) generates, saves and loads; an empty
    /// train or dev set is still an error.
    #[test]
    fn empty_test_set_for_a_search_alone() {
        let (d, _) = TokenData::generate(&TextRecipe { n_test: 0, ..small(4) }).unwrap();
        assert_eq!((d.n_train(), d.n_dev(), d.n_test()), (64, 16, 0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("search-only.safetensors");
        d.save(&path).unwrap();
        assert_eq!(TokenData::load(&path).unwrap(), d);
        let mut raw = raw_of(&hand());
        set(&mut raw, "test", Dtype::I32, vec![0, 4], Vec::new());
        assert_eq!(load_raw(&raw, Some("10")).unwrap().n_test(), 0);
        set(&mut raw, "train", Dtype::I32, vec![0, 4], Vec::new());
        let e = load_raw(&raw, Some("10")).unwrap_err();
        assert!(e.to_string().contains("train set") && e.to_string().contains("empty"), "{e}");
        let e = TokenData::generate(&TextRecipe { n_train: 0, ..small(4) }).unwrap_err();
        assert!(e.to_string().contains("n_train"), "{e}");
    }

    #[test]
    fn load_accepts_i64_and_missing_noisy() {
        let d = TokenData { noisy: Vec::new(), ..hand() };
        let mut raw = raw_of(&d);
        let dev: Vec<u8> = d.dev.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect();
        set(&mut raw, "dev", Dtype::I64, vec![2, 4], dev);
        set(&mut raw, "extra", Dtype::F32, vec![1], vec![0; 4]);
        assert_eq!(load_raw(&raw, Some("10")).unwrap(), d);
        set(&mut raw, "noisy", Dtype::BOOL, vec![3], vec![1, 0, 1]);
        assert_eq!(load_raw(&raw, Some("10")).unwrap(), hand());
    }

    #[test]
    fn load_errors_are_clear() {
        let base = raw_of(&hand());
        let check = |raw: &Raw, vocab: Option<&str>, needle: &str, variant: fn(&Error) -> bool| {
            let e = load_raw(raw, vocab).unwrap_err();
            assert!(variant(&e) && e.to_string().contains(needle), "expected {needle}: {e}");
            assert!(e.to_string().contains("t.safetensors"), "names the file: {e}");
        };
        let format = |e: &Error| matches!(e, Error::Format { .. });
        let bad = |e: &Error| matches!(e, Error::BadInput { .. });
        let shape = |e: &Error| matches!(e, Error::Shape { .. });

        check(&base, None, "missing metadata `vocab_size`", format);
        check(&base, Some("ten"), "not a whole number", format);
        // An id ≥ vocab_size.
        check(&base, Some("9"), "token id 9 at row 2, position 0", bad);
        let mut raw = base.clone();
        raw.retain(|t| t.0 != "test");
        check(&raw, Some("10"), "missing required tensor `test`", format);
        let mut raw = base.clone();
        set(&mut raw, "dev", Dtype::I32, vec![8], i32s(&[2, 3, 1, 1, 4, 5, 6, 7]));
        check(&raw, Some("10"), "rank 2", shape);
        let mut raw = base.clone();
        set(&mut raw, "dev", Dtype::I32, vec![4, 2], i32s(&[2, 3, 1, 1, 4, 5, 6, 7]));
        check(&raw, Some("10"), "seq_len of train", shape);
        let mut raw = base.clone();
        set(&mut raw, "test", Dtype::I32, vec![2, 4], i32s(&[8, 9, 2, 3, 3, -3, 1, 1]));
        check(&raw, Some("10"), "token id -3 at row 1, position 1", bad);
        let mut raw = base.clone();
        set(&mut raw, "train", Dtype::F32, vec![3, 4], vec![0; 48]);
        check(&raw, Some("10"), "unsupported dtype F32", bad);
        let mut raw = base.clone();
        set(&mut raw, "noisy", Dtype::U8, vec![2], vec![0, 1]);
        check(&raw, Some("10"), "noisy", shape);
        let mut raw = base.clone();
        set(&mut raw, "noisy", Dtype::U8, vec![3], vec![0, 2, 1]);
        check(&raw, Some("10"), "value 2 at index 1", bad);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        std::fs::write(&path, b"garbage, not safetensors").unwrap();
        let e = TokenData::load(&path).unwrap_err();
        assert!(format(&e) && e.to_string().contains("t.safetensors"), "{e}");
        let e = TokenData::load(&dir.path().join("missing.safetensors")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }

    /// The default recipe's cost and statistics (run with --nocapture to see them).
    #[test]
    fn default_recipe_stats() {
        let t = std::time::Instant::now();
        let (d, bpe) = TokenData::generate(&TextRecipe::default()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let count = |rows: &[u32]| rows.iter().filter(|&&id| id != PAD).count() as f64 / (rows.len() / d.seq_len) as f64;
        let distinct: std::collections::HashSet<&[u32]> = d.dev.chunks(d.seq_len).collect();
        println!(
            "generate(default): {secs:.2} s, vocab {} of {}, non-PAD tokens per row: train {:.1}, dev {:.1}, test {:.1} (of {}); distinct dev rows {}/{}",
            bpe.vocab_size(),
            TextRecipe::default().vocab_size,
            count(&d.train),
            count(&d.dev),
            count(&d.test),
            d.seq_len,
            distinct.len(),
            d.n_dev()
        );
        assert_eq!(d.vocab_size, 512);
        assert!(count(&d.dev) > 25.0);
    }

    /// Tokenizer training speed on a ~3 MB corpus. Slow in debug builds: run with
    /// `cargo test --release -p learnlaw-core --lib text::tests::bpe_on_3mb -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bpe_on_3mb() {
        use rand::{RngExt, SeedableRng};
        // Stories plus random pseudo-words (skewed letters, so pairs repeat), for a realistic
        // number of distinct words: the generator alone has only a few hundred.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let letters = b"eeeeettttaaaoooiiinnnssshhrrdlcumwfgypbvkjxqz";
        let stories: Vec<String> = generate_stories(6_000, 9)
            .into_iter()
            .map(|s| {
                let words: Vec<String> = (0..40)
                    .map(|_| (0..rng.random_range(2..9)).map(|_| letters[rng.random_range(0..letters.len())] as char).collect())
                    .collect();
                format!("{s} {}.", words.join(" "))
            })
            .collect();
        let mb = stories.iter().map(|s| s.len()).sum::<usize>() as f64 / 1e6;
        let t = std::time::Instant::now();
        let bpe = Bpe::train(&stories, 5000).unwrap();
        let train_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let n: usize = stories.iter().map(|s| bpe.encode(s).len()).sum();
        println!(
            "BPE on {mb:.1} MB: train {train_s:.2} s (vocab {}), encode {:.2} s ({n} tokens)",
            bpe.vocab_size(),
            t.elapsed().as_secs_f64()
        );
    }
}
