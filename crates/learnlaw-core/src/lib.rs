//! learnlaw-core: the Learning Law's math, the CPU reference backend, the policy-search driver
//! (forward unroll, adjoint pass, outer optimisation) and the file formats.
pub mod data;
pub mod error;
pub mod real;
pub mod simplex;

pub use error::{Error, Result};
pub use real::Real;
