//! `learnlaw backends`: which `--backend` values work on this machine, and on what device. Each
//! engine is built for a tiny generated perceptron problem exactly as a search would build it, so
//! a backend listed as usable is usable, and an unusable one says why.
use anyhow::Result;
use clap::ValueEnum;
use learnlaw_core::data::{PerceptronData, PerceptronRecipe};
use learnlaw_core::lanes::{bf16, Stored};
use learnlaw_core::perceptron::CpuPerceptron;
use learnlaw_core::{Engine, Error, Real};

use crate::Backend;

/// The device behind an engine that was built, or why none could be.
fn probe(backend: Backend, data: &PerceptronData) -> std::result::Result<String, Error> {
    fn cpu<R: Real, X: Stored<R>>(data: &PerceptronData) -> std::result::Result<String, Error> {
        let e = CpuPerceptron::<R, X>::new(data)?;
        Ok(format!("{}, {} threads, {} lanes", e.name(), rayon::current_num_threads(), e.isa().name()))
    }
    Ok(match backend {
        Backend::Cpu => cpu::<f32, f32>(data)?,
        Backend::CpuF64 => cpu::<f64, f64>(data)?,
        Backend::CpuBf16 => cpu::<f32, bf16>(data)?,
        Backend::Wgpu | Backend::WgpuF16 => {
            let e = learnlaw_wgpu::WgpuPerceptron::with_options(
                data,
                &learnlaw_wgpu::Options { storage: backend.x_storage(), ..Default::default() },
            )?;
            let info = e.adapter_info();
            format!("{}: {} ({:?}, {:?}, driver {} {})", e.name(), info.name, info.backend, info.device_type, info.driver, info.driver_info)
        }
        Backend::Cuda | Backend::CudaBf16 | Backend::CudaF16 => {
            let opts = learnlaw_cuda::Options { storage: backend.x_storage(), ..Default::default() };
            let mut e = learnlaw_cuda::CudaPerceptron::with_options(data, &opts)?;
            e.pass_variant()?; // compiles and loads perceptron.cu for this storage: NVRTC and the load path work
                               // e.g. "NVIDIA H200 (sm_90, 132 SMs), kernels as sm_90 SASS; driver CUDA 13.0, NVRTC 13.0"
            format!("{}: {}", e.name(), e.device_info())
        }
    })
}

pub fn run() -> Result<()> {
    let data = PerceptronData::generate(&PerceptronRecipe { dim: 5, n_train: 7, n_dev: 3, n_test: 3, ..Default::default() })?;
    for &backend in Backend::value_variants() {
        let name = backend.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
        // A CUDA backend that cannot run still says which driver and NVRTC it found.
        let versions = match backend {
            Backend::Cuda | Backend::CudaBf16 | Backend::CudaF16 => format!(" ({})", learnlaw_cuda::versions()),
            _ => String::new(),
        };
        match probe(backend, &data) {
            Ok(device) => println!("{name:<10} ok           {device}"),
            Err(Error::Unavailable { reason, .. }) => println!("{name:<10} unavailable  {reason}{versions}"),
            Err(e) => println!("{name:<10} failed       {e}{versions}"),
        }
    }
    println!(
        "(the Transformer task runs on cpu, cpu-f64, wgpu, cuda and cuda-bf16: f32 storage; cuda-bf16 puts its GEMMs on tensor cores)"
    );
    Ok(())
}
