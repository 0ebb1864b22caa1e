//! learnlaw: near-optimal learning policies in the sense of the Learning Law (Gu et al., 2024).
//!
//! This facade re-exports the workspace's library crates; see `learnlaw_core` for the math and the
//! CPU reference backend.
pub use learnlaw_core::*;
