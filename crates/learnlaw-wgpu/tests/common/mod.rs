//! Shared by the crate's device tests.
use learnlaw_core::data::PerceptronData;
use learnlaw_core::Error;
use learnlaw_wgpu::{Options, WgpuPerceptron};

/// The engine, or None after a visible SKIPPED line when this machine has no wgpu adapter (a
/// failure instead with LEARNLAW_REQUIRE_WGPU=1).
pub fn engine(data: &PerceptronData, opts: &Options) -> Option<WgpuPerceptron> {
    match WgpuPerceptron::with_options(data, opts) {
        Ok(e) => Some(e),
        Err(Error::Unavailable { reason, .. }) => {
            assert!(
                std::env::var("LEARNLAW_REQUIRE_WGPU").map_or(true, |v| v != "1"),
                "LEARNLAW_REQUIRE_WGPU=1 but no wgpu adapter: {reason}"
            );
            println!("SKIPPED: no wgpu adapter ({reason})");
            None
        }
        Err(e) => panic!("wgpu engine: {e}"),
    }
}
