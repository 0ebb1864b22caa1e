//! Small safetensors helpers shared by the data and policy files: atomic writes of f32 tensors and
//! reads that turn every failure into an error naming the file.
use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, View};

use crate::{Error, Result};

/// An f32 tensor to write: name, shape, values.
pub struct F32Tensor<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub values: &'a [f32],
}

impl View for &F32Tensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        // safetensors is little-endian, like every platform this crate targets.
        std::borrow::Cow::Owned(self.values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.values.len() * 4
    }
}

/// Writes the tensors to a temporary file beside `path` and renames it into place, so a reader
/// (or a resumed run after a crash) sees either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, tensors: &[F32Tensor], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(tensors.iter().map(|t| (t.name, t)), metadata, &tmp)
        .map_err(|e| Error::format(&tmp, format!("cannot write safetensors: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The bytes of a safetensors file, checked to parse.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    Ok(bytes)
}

/// The file's string metadata (empty when it has none).
pub fn metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| Error::format(path, e))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Tensor `name` as f32 values and its shape; F32 only.
pub fn read_f32(path: &Path, bytes: &[u8], name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::format(path, e))?;
    let t = st.tensor(name).map_err(|_| Error::bad_input(format!("{} in {}", name, path.display()), "tensor is missing"))?;
    if t.dtype() != Dtype::F32 {
        return Err(Error::bad_input(name, format!("dtype {:?} is not supported (expected F32)", t.dtype())));
    }
    let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok((t.shape().to_vec(), values))
}
