//! The CUDA device every engine of this crate runs on: the driver and NVRTC probes, error
//! mapping, kernel compilation and the device context and stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::{CUdevice_attribute, CUresult};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};
use learnlaw_core::{Error, Result, Storage};

pub(crate) const BACKEND: &str = "cuda";

/// One kernel file: its name, its source, the entry points the engine loads from it and the
/// storages of X it is compiled for (one module each, through the `X_STORAGE` define).
#[derive(Clone, Copy, Debug)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub entries: &'static [&'static str],
    pub storages: &'static [Storage],
}

/// Is the NVRTC library (libnvrtc.so.13, or an older major cudarc also accepts) loadable?
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library's candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version (major, minor), or None when the library is missing.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_available() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; nvrtcVersion only writes the two ints.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Is the CUDA driver library (libcuda) loadable? (Says nothing about a device.)
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library's candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub(crate) fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: BACKEND.into(), reason: reason.into() }
}

pub(crate) fn device_error(problem: impl Into<String>) -> Error {
    Error::Device { backend: BACKEND.into(), problem: problem.into() }
}

/// Maps a driver error of `what` to `Error::Device`.
pub(crate) fn drv(what: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| device_error(format!("{what}: {e}"))
}

/// The NVRTC options of every kernel (besides the architecture).
const NVRTC_OPTIONS: [&str; 2] = ["--std=c++17", "-lineinfo"];

/// `X_STORAGE` of perceptron.cu.
fn storage_define(storage: Storage) -> &'static str {
    match storage {
        Storage::F32 => "-DX_STORAGE=0",
        Storage::F16 => "-DX_STORAGE=1",
        Storage::Bf16 => "-DX_STORAGE=2",
    }
}

/// Compiles one kernel file with NVRTC to PTX for a virtual architecture such as `compute_90`,
/// with the options the engine uses and X in `storage` (one of `file.storages`). No NVRTC
/// library: `Error::Unavailable`; a compile error: `Error::Device` with NVRTC's log. Results are
/// cached per process.
pub fn compile_ptx(file: &KernelFile, arch: &str, storage: Storage) -> Result<String> {
    /// PTX by (file, architecture, storage).
    type Cache = Mutex<HashMap<(&'static str, String, Storage), String>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if !file.storages.contains(&storage) {
        return Err(device_error(format!("{} is not compiled for {} storage of X", file.name, storage.name())));
    }
    let key = (file.name, arch.to_string(), storage);
    if let Some(ptx) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(ptx.clone());
    }
    if !nvrtc_available() {
        return Err(unavailable(
            "NVRTC (libnvrtc.so.13) not found: add the CUDA toolkit's lib64 or the nvidia-cuda-nvrtc wheel's lib folder to LD_LIBRARY_PATH",
        ));
    }
    let mut options: Vec<String> = NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    options.push(storage_define(storage).into());
    let opts = cudarc::nvrtc::CompileOptions { name: Some(file.name.into()), options, ..Default::default() };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(file.source, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. } => {
            device_error(format!("NVRTC could not compile {} for {arch} ({nvrtc:?}):\n{}", file.name, log.to_string_lossy()))
        }
        other => device_error(format!("NVRTC failed on {} for {arch}: {other}", file.name)),
    })?;
    let src = ptx.to_src();
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, src.clone());
    Ok(src)
}

/// Driver errors that mean "no usable CUDA device here" rather than a failure of one.
fn is_unavailable(e: &DriverError) -> bool {
    use CUresult::*;
    matches!(
        e.0,
        CUDA_ERROR_NO_DEVICE
            | CUDA_ERROR_INVALID_DEVICE
            | CUDA_ERROR_NOT_INITIALIZED
            | CUDA_ERROR_DEINITIALIZED
            | CUDA_ERROR_STUB_LIBRARY
            | CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
            | CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
            | CUDA_ERROR_DEVICE_UNAVAILABLE
            | CUDA_ERROR_SYSTEM_NOT_READY
            | CUDA_ERROR_NOT_SUPPORTED
            | CUDA_ERROR_OPERATING_SYSTEM
    )
}

/// Opens the device's primary context: `Error::Unavailable` when there is no driver, no NVRTC or
/// no usable device (a driver too old for cudarc's bindings panics inside cudarc: caught).
fn open_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !driver_available() {
        return Err(unavailable("no CUDA driver library (libcuda.so) found"));
    }
    if !nvrtc_available() {
        return Err(unavailable(
            "NVRTC (libnvrtc.so.13) not found: add the CUDA toolkit's lib64 or the nvidia-cuda-nvrtc wheel's lib folder to LD_LIBRARY_PATH",
        ));
    }
    match std::panic::catch_unwind(|| CudaContext::new(ordinal)) {
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(e)) if is_unavailable(&e) => Err(unavailable(format!("no usable CUDA device {ordinal}: {e}"))),
        Ok(Err(e)) => Err(device_error(format!("creating a context on device {ordinal}: {e}"))),
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(unavailable(format!("the CUDA driver could not be used: {}", msg.unwrap_or_else(|| "panic in cudarc".into()))))
        }
    }
}

/// A CUDA device as the engines use it: its primary context, the one stream everything runs on,
/// and the properties launch plans need.
pub(crate) struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// e.g. "NVIDIA H200".
    pub device_name: String,
    /// `compute_XY` for NVRTC.
    pub arch: String,
    pub sms: usize,
    /// Largest dynamic shared memory one block may opt in to (bytes).
    pub smem_optin: u32,
}

impl Device {
    /// Opens device `ordinal`: `Error::Unavailable` without a driver, NVRTC or usable device.
    pub fn open(ordinal: usize) -> Result<Self> {
        let ctx = open_context(ordinal)?;
        // SAFETY: every engine uses one stream for everything, so stream order is the only
        // ordering needed and frees are stream-ordered (cuMemFreeAsync) after every use.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("creating a stream"))?;
        let (major, minor) = ctx.compute_capability().map_err(drv("querying the compute capability"))?;
        let device_name = ctx.name().map_err(drv("querying the device name"))?;
        let sms = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(drv("querying the SM count"))?;
        let smem_optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(drv("querying the shared memory limit"))?;
        Ok(Device {
            ctx,
            stream,
            device_name,
            arch: format!("compute_{major}{minor}"),
            sms: sms.max(1) as usize,
            smem_optin: smem_optin.max(0) as u32,
        })
    }

    /// Compiles (first use in the process) and loads one kernel file with X in `storage`.
    pub fn load_module(&self, file: &KernelFile, storage: Storage) -> Result<Arc<CudaModule>> {
        let ptx = compile_ptx(file, &self.arch, storage)?;
        self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|e| {
            device_error(format!(
                "loading {} ({}) on {}: {e} (a PTX newer than the driver? NVRTC and driver majors must match)",
                file.name, self.arch, self.device_name
            ))
        })
    }
}

/// One entry point of a loaded module.
pub(crate) fn function(module: &Arc<CudaModule>, name: &str) -> Result<CudaFunction> {
    module.load_function(name).map_err(|e| device_error(format!("kernel {name}: {e}")))
}
