//! Small safetensors helpers shared by the data and policy files: atomic writes of f32 and f64
//! tensors (`files::write_atomic`), and reads that turn every failure into an error naming the
//! file or the tensor.
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::files::write_atomic;
use crate::{Error, Result};

/// The values of a tensor to write.
pub enum Values<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// A tensor to write: name, shape, values.
pub struct Tensor<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub values: Values<'a>,
}

/// Serialises the tensors (little-endian) and writes them with [`write_atomic`].
pub fn write(path: &Path, tensors: &[Tensor], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let encoded: Vec<(Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|t| match t.values {
            Values::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Values::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&encoded)
        .map(|(t, (dtype, b))| TensorView::new(*dtype, t.shape.clone(), b).map(|v| (t.name, v)))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| safetensors::serialize(v, metadata))
        .map_err(|e| Error::format(path, format!("cannot serialize: {e}")))?;
    write_atomic(path, &views)
}

/// The bytes of a safetensors file, checked to parse.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("not a safetensors file or corrupt header: {e}")))?;
    Ok(bytes)
}

/// The file's string metadata (empty when it has none).
pub fn metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| Error::format(path, e))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// The values of a little-endian tensor buffer, N bytes each, decoded by `f` (e.g. `i32::from_le_bytes`).
pub fn le<'a, const N: usize, T>(b: &'a [u8], f: impl Fn([u8; N]) -> T + 'a) -> impl Iterator<Item = T> + 'a {
    let (chunks, _) = b.as_chunks::<N>();
    chunks.iter().map(move |&c| f(c))
}

/// The values of an F64 tensor, exactly (any other dtype is an error naming the tensor).
pub fn to_f64(name: &str, t: &TensorView) -> Result<Vec<f64>> {
    match t.dtype() {
        Dtype::F64 => Ok(le(t.data(), f64::from_le_bytes).collect()),
        dt => Err(Error::bad_input(name, format!("unsupported dtype {dt:?}; expected F64"))),
    }
}

/// Converts a tensor of one of the `allowed` dtypes to f32 (integer labels keep their value, so a
/// bad label is reported as read).
pub fn to_f32(name: &str, t: &TensorView, allowed: &[Dtype]) -> Result<Vec<f32>> {
    let b = t.data();
    Ok(match t.dtype() {
        dt if !allowed.contains(&dt) => {
            return Err(Error::bad_input(name, format!("unsupported dtype {dt:?}; expected one of {allowed:?}")));
        }
        Dtype::F32 => le(b, f32::from_le_bytes).collect(),
        Dtype::F64 => le(b, |c| f64::from_le_bytes(c) as f32).collect(),
        Dtype::I64 => le(b, |c| i64::from_le_bytes(c) as f32).collect(),
        Dtype::I32 => le(b, |c| i32::from_le_bytes(c) as f32).collect(),
        Dtype::U8 | Dtype::BOOL => b.iter().map(|&v| v as f32).collect(),
        dt => unreachable!("dtype {dt:?} listed as allowed but not converted"),
    })
}
