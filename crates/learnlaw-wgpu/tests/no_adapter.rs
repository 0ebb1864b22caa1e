//! Without an adapter the engine is `Error::Unavailable`, never a panic. Forced here by asking
//! wgpu for a backend this build does not include (its own process: the variable is global).
use learnlaw_core::data::{PerceptronData, PerceptronRecipe};
use learnlaw_core::Error;
use learnlaw_wgpu::WgpuPerceptron;

#[test]
fn no_adapter_is_unavailable() {
    std::env::set_var("WGPU_BACKEND", "gl"); // the crate is built without wgpu's `gles` feature
    let data = PerceptronData::generate(&PerceptronRecipe { dim: 3, n_train: 5, n_dev: 2, n_test: 2, ..Default::default() }).unwrap();
    match WgpuPerceptron::new(&data) {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, "wgpu");
            println!("unavailable as expected: {reason}");
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("expected no adapter with WGPU_BACKEND=gl"),
    }
}
