//! How a GPU backend stores X (the inputs of the training, dev and test sets) on its device.
//!
//! Everything else (θ, λ, γ, labels, partial sums, losses) stays f32, and all arithmetic
//! accumulates in f32 whatever the storage: a 16-bit X halves the bytes each pass reads, which is
//! the whole cost of a step at large N·D. [`Storage::round`] gives the values the kernels compute
//! with, so a reference computed on rounded X sees exactly the engine's inputs.
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Storage {
    /// f32: exactly the host data.
    #[default]
    F32,
    /// IEEE binary16 (rounded to nearest even): 11 significant bits, values within ±65504.
    F16,
    /// bfloat16 (rounded to nearest even): 8 significant bits, f32's exponent range.
    Bf16,
}

impl Storage {
    pub const ALL: [Storage; 3] = [Storage::F32, Storage::F16, Storage::Bf16];

    /// `f32`, `f16` or `bf16`, as in an engine's name (`cuda-bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16 => "f16",
            Storage::Bf16 => "bf16",
        }
    }

    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::F16 | Storage::Bf16 => 2,
        }
    }

    /// The value the kernels compute with for an input `v` (nearest, ties to even).
    pub fn round(self, v: f32) -> f32 {
        match self {
            Storage::F32 => v,
            Storage::F16 => half::f16::from_f32(v).to_f32(),
            Storage::Bf16 => half::bf16::from_f32(v).to_f32(),
        }
    }

    /// The device bytes of rows of X (`x` holds whole rows of `dim` values), each row zero-padded
    /// to `stride` values, little-endian. A finite value that does not fit the storage (|v| >
    /// 65504 in f16) is a `BadInput` naming `what`, the row (counted from `first_row`) and column.
    pub fn encode_rows(self, what: &str, x: &[f32], dim: usize, stride: usize, first_row: usize) -> Result<Vec<u8>> {
        assert!(
            dim > 0 && stride >= dim && x.len().is_multiple_of(dim),
            "encode_rows: {} values in rows of {dim}, stride {stride}",
            x.len()
        );
        let rows = x.len() / dim;
        let mut out = Vec::with_capacity(rows * stride * self.bytes());
        for (r, row) in x.chunks_exact(dim).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                match self {
                    Storage::F32 => out.extend_from_slice(&v.to_le_bytes()),
                    Storage::F16 | Storage::Bf16 => {
                        let (bits, finite) = match self {
                            Storage::F16 => {
                                let h = half::f16::from_f32(v);
                                (h.to_bits(), h.is_finite())
                            }
                            _ => {
                                let h = half::bf16::from_f32(v);
                                (h.to_bits(), h.is_finite())
                            }
                        };
                        if v.is_finite() && !finite {
                            return Err(Error::bad_input(
                                format!("{} storage of {what}", self.name()),
                                format!("x[{}, {c}] = {v} is outside the {} range; use f32 storage", first_row + r, self.name()),
                            ));
                        }
                        out.extend_from_slice(&bits.to_le_bytes());
                    }
                }
            }
            out.resize(out.len() + (stride - dim) * self.bytes(), 0);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(Storage::F32.round(0.1), 0.1);
        assert_eq!(Storage::F16.round(1.0 + 1.0 / 2048.0), 1.0); // half an ulp of 2^-10: to even
        assert_eq!(Storage::F16.round(1.0 + 3.0 / 2048.0), 1.0 + 2.0 / 1024.0);
        assert_eq!(Storage::Bf16.round(1.0 + 1.0 / 256.0), 1.0); // half an ulp of 2^-7: to even
        assert_eq!(Storage::Bf16.round(1.0 + 3.0 / 256.0), 1.0 + 2.0 / 128.0);
        assert_eq!(Storage::Bf16.round(1e30), half::bf16::from_f32(1e30).to_f32());
        // f32's range
    }

    #[test]
    fn rows_are_padded_little_endian_and_decode_to_the_rounded_values() {
        let x = [1.5f32, -2.25, 0.1, 3.0, 4.0, 5.0];
        for s in Storage::ALL {
            let bytes = s.encode_rows("x", &x, 3, 4, 0).unwrap();
            assert_eq!(bytes.len(), 2 * 4 * s.bytes(), "{s:?}");
            let decoded: Vec<f32> = bytes
                .chunks_exact(s.bytes())
                .map(|b| match s {
                    Storage::F32 => f32::from_le_bytes(b.try_into().unwrap()),
                    Storage::F16 => half::f16::from_le_bytes(b.try_into().unwrap()).to_f32(),
                    Storage::Bf16 => half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32(),
                })
                .collect();
            let want: Vec<f32> = [&x[..3], &[0.0], &x[3..], &[0.0]].concat().into_iter().map(|v| s.round(v)).collect();
            assert_eq!(decoded, want, "{s:?}");
        }
    }

    #[test]
    fn values_outside_the_range_are_bad_input() {
        let err = Storage::F16.encode_rows("x_train", &[1.0, 7e4], 1, 4, 10).unwrap_err();
        assert!(err.to_string().contains("x[11, 0] = 70000"), "{err}");
        assert!(Storage::Bf16.encode_rows("x", &[7e4], 1, 1, 0).is_ok());
        assert!(Storage::Bf16.encode_rows("x", &[f32::MAX], 1, 1, 0).is_err(), "f32::MAX rounds up to bf16 infinity");
    }
}
