//! A learning policy γ: one weight per training example per step, [T, N], each row on the simplex.
//! Stored as safetensors (`gamma`, F32), readable from PyTorch/NumPy.
use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::tensor_file::{self, Tensor, Values};
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub steps: usize,
    pub examples: usize,
    /// Row-major [steps, examples].
    pub gamma: Vec<f32>,
}

/// How far a stored row may be from the simplex (f32 rounding over N terms) before it is rejected.
const SIMPLEX_TOLERANCE: f64 = 1e-3;

impl Policy {
    /// Conventional learning: γ_{t,n} = 1/N.
    pub fn constant(steps: usize, examples: usize) -> Self {
        Policy { steps, examples, gamma: vec![1.0 / examples as f32; steps * examples] }
    }

    pub fn row(&self, t: usize) -> &[f32] {
        &self.gamma[t * self.examples..(t + 1) * self.examples]
    }

    /// Checks shape, finiteness and that every row lies on the simplex.
    pub fn validate(&self) -> Result<()> {
        if self.gamma.len() != self.steps * self.examples || self.examples == 0 {
            return Err(Error::shape("gamma", format!("[{}, {}]", self.steps, self.examples), self.gamma.len()));
        }
        for t in 0..self.steps {
            let row = self.row(t);
            if let Some(n) = row.iter().position(|g| !g.is_finite() || *g < 0.0) {
                return Err(Error::bad_input("gamma", format!("γ[{t}, {n}] = {} is not a finite non-negative weight", row[n])));
            }
            let sum: f64 = row.iter().map(|&g| g as f64).sum();
            if (sum - 1.0).abs() > SIMPLEX_TOLERANCE {
                return Err(Error::bad_input("gamma", format!("row {t} sums to {sum}, not 1")));
            }
        }
        Ok(())
    }

    pub fn save(&self, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
        self.save_with(path, metadata, Vec::new())
    }

    /// `save`, with more tensors in the same file (written atomically together).
    pub(crate) fn save_with<'a>(&'a self, path: &Path, metadata: HashMap<String, String>, mut extra: Vec<Tensor<'a>>) -> Result<()> {
        extra.insert(0, Tensor { name: "gamma", shape: vec![self.steps, self.examples], values: Values::F32(&self.gamma) });
        tensor_file::write(path, &extra, Some(metadata))
    }

    /// Loads and validates a policy file, with its metadata.
    pub fn load(path: &Path) -> Result<(Self, HashMap<String, String>)> {
        let bytes = tensor_file::read(path)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, e))?;
        let t = st.tensor("gamma").map_err(|_| Error::format(path, "missing tensor `gamma` [T, N]"))?;
        let &[steps, examples] = t.shape() else {
            return Err(Error::shape(format!("gamma in {}", path.display()), "rank 2 [T, N]", format!("shape {:?}", t.shape())));
        };
        let gamma = tensor_file::to_f32("gamma", &t, &[Dtype::F32, Dtype::F64])?;
        let policy = Policy { steps, examples, gamma };
        policy.validate()?;
        Ok((policy, tensor_file::metadata(path, &bytes)?))
    }
}
