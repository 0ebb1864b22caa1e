//! The CUDA device every engine of this crate runs on: the driver and NVRTC probes, error
//! mapping, kernel compilation and loading, and the device context and stream.
//!
//! Loading works whatever NVRTC the machine has: kernels are compiled to SASS for the device's own
//! architecture (`--gpu-architecture=sm_XY`, NVRTC's cubin output) and the driver loads that image
//! as it is. PTX would have to be JIT-compiled by the driver, which refuses PTX newer than itself
//! (NVRTC 13.2 emits PTX ISA 9.2, which a CUDA 13.0 driver cannot read), while a cubin of the same
//! major version loads on any driver of that major. Only when NVRTC cannot target the device's
//! architecture (a device newer than NVRTC) is PTX used, for the newest architecture NVRTC knows
//! below the device's (PTX runs on later architectures); a device older than every architecture
//! NVRTC supports is `Error::Unavailable`, naming both.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
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

/// The CUDA version the driver supports (cuDriverGetVersion: 13000 → (13, 0)), or None when the
/// driver library is missing.
pub fn driver_version() -> Option<(i32, i32)> {
    if !driver_available() {
        return None;
    }
    // cudarc panics when a symbol is missing (not expected of this one): caught.
    let (r, v) = std::panic::catch_unwind(|| {
        let mut v = 0;
        // SAFETY: the library is present; cuDriverGetVersion needs no cuInit and only writes the int.
        let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        (r, v)
    })
    .ok()?;
    (r == CUresult::CUDA_SUCCESS && v > 0).then_some((v / 1000, (v % 1000) / 10))
}

/// The architectures NVRTC can compile for, as compute capabilities ×10 (e.g. 75, 80, …, 90, …,
/// 120), ascending; None when NVRTC is missing or does not say.
pub fn nvrtc_supported_archs() -> Option<Vec<u32>> {
    use cudarc::nvrtc::sys::{nvrtcGetNumSupportedArchs, nvrtcGetSupportedArchs, nvrtcResult::NVRTC_SUCCESS};
    if !nvrtc_available() {
        return None;
    }
    let mut n = 0;
    // SAFETY: the library is present; the call only writes the count.
    if unsafe { nvrtcGetNumSupportedArchs(&mut n) } != NVRTC_SUCCESS || n <= 0 {
        return None;
    }
    let mut archs = vec![0; n as usize];
    // SAFETY: `archs` holds the n ints NVRTC writes.
    if unsafe { nvrtcGetSupportedArchs(archs.as_mut_ptr()) } != NVRTC_SUCCESS {
        return None;
    }
    let mut archs: Vec<u32> = archs.into_iter().filter(|&a| a > 0).map(|a| a as u32).collect();
    archs.sort_unstable();
    Some(archs)
}

fn version_text(v: Option<(i32, i32)>) -> String {
    v.map_or_else(|| "none".into(), |(a, b)| format!("{a}.{b}"))
}

/// "driver CUDA 13.0, NVRTC 13.0" ("driver none", "NVRTC none" for a missing library): what
/// `learnlaw backends` prints beside a CUDA backend, usable or not.
pub fn versions() -> String {
    let driver = driver_version().map_or_else(|| "none".into(), |v| format!("CUDA {}", version_text(Some(v))));
    format!("driver {driver}, NVRTC {}", version_text(nvrtc_version()))
}

/// How an engine's kernels reach the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loading {
    /// SASS compiled by NVRTC for the device's own architecture (`sm_XY`), loaded as it is.
    Cubin,
    /// PTX for an older architecture (`compute_XY`) that the driver JIT-compiles: NVRTC cannot
    /// target the device's own.
    Ptx,
}

/// The load path for a device of compute capability `cc` (×10, e.g. 90) when NVRTC supports
/// `archs`: its own architecture as a cubin, else PTX for the newest supported one below it, else
/// the reason it cannot run (for `Error::Unavailable`). Returns (path, architecture ×10).
pub(crate) fn plan_loading(cc: u32, archs: &[u32], nvrtc: Option<(i32, i32)>) -> std::result::Result<(Loading, u32), String> {
    if archs.contains(&cc) {
        return Ok((Loading::Cubin, cc));
    }
    if let Some(&below) = archs.iter().filter(|&&a| a < cc).max() {
        return Ok((Loading::Ptx, below));
    }
    let list = archs.iter().map(|a| format!("sm_{a}")).collect::<Vec<_>>().join(", ");
    Err(format!(
        "the device's architecture sm_{cc} is not supported by NVRTC {} (it compiles for {list}): use an NVRTC that supports sm_{cc}",
        version_text(nvrtc)
    ))
}

/// A device that is usable, in words (for `learnlaw backends`, logs and benchmarks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// e.g. "NVIDIA H200".
    pub name: String,
    /// (major, minor), e.g. (9, 0).
    pub compute_capability: (u32, u32),
    pub sms: usize,
    /// The CUDA version the driver supports, NVRTC's version.
    pub driver: Option<(i32, i32)>,
    pub nvrtc: Option<(i32, i32)>,
    /// How kernels are loaded, and the architecture they are compiled for (`sm_90`, `compute_89`).
    pub loading: Loading,
    pub target: String,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (major, minor) = self.compute_capability;
        let how = match self.loading {
            Loading::Cubin => format!("kernels as {} SASS", self.target),
            Loading::Ptx => format!("kernels as {} PTX, JIT-compiled by the driver", self.target),
        };
        write!(
            f,
            "{} (sm_{major}{minor}, {} SMs), {how}; driver CUDA {}, NVRTC {}",
            self.name,
            self.sms,
            version_text(self.driver),
            version_text(self.nvrtc)
        )
    }
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
    let bytes = compile(file, arch, storage, Output::Ptx)?;
    // NVRTC's PTX is text ending in a NUL.
    let text = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
    String::from_utf8(text.to_vec()).map_err(|_| device_error(format!("NVRTC's PTX of {} is not UTF-8", file.name)))
}

/// Compiles one kernel file with NVRTC to SASS for a real architecture such as `sm_90`: the cubin
/// (ELF) image the driver loads without JIT compilation, so without caring which PTX version the
/// driver reads. Same options, errors and caching as [`compile_ptx`]; needs no GPU.
pub fn compile_cubin(file: &KernelFile, arch: &str, storage: Storage) -> Result<Vec<u8>> {
    compile(file, arch, storage, Output::Cubin).map(|b| b.to_vec())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Output {
    Ptx,
    Cubin,
}

/// The NVRTC program of one compilation, destroyed on every path.
struct Program(cudarc::nvrtc::sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program and destroyed only here.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(self.0) };
    }
}

/// NVRTC's output (PTX text with its NUL, or a cubin) for (file, arch, storage), cached per process.
fn compile(file: &KernelFile, arch: &str, storage: Storage, output: Output) -> Result<Arc<[u8]>> {
    use cudarc::nvrtc::{result, sys};
    /// Outputs by (file, architecture, storage, kind).
    type Cache = Mutex<HashMap<(&'static str, String, Storage, Output), Arc<[u8]>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if !file.storages.contains(&storage) {
        return Err(device_error(format!("{} is not compiled for {} storage of X", file.name, storage.name())));
    }
    let key = (file.name, arch.to_string(), storage, output);
    if let Some(out) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(out.clone());
    }
    if !nvrtc_available() {
        return Err(unavailable(
            "NVRTC (libnvrtc.so.13) not found: add the CUDA toolkit's lib64 or the nvidia-cuda-nvrtc wheel's lib folder to LD_LIBRARY_PATH",
        ));
    }
    let nvrtc_err = |what: &str, e: result::NvrtcError| device_error(format!("NVRTC {what} for {} ({arch}): {e:?}", file.name));
    let src = CString::new(file.source).map_err(|_| device_error(format!("{} contains a NUL byte", file.name)))?;
    let name = CString::new(file.name).map_err(|_| device_error(format!("{} contains a NUL byte", file.name)))?;
    let prog = Program(result::create_program(&src, Some(&name)).map_err(|e| nvrtc_err("could not create a program", e))?);
    let mut options: Vec<String> = NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    options.push(storage_define(storage).into());
    // SAFETY: `prog` is a live program; the options are plain strings.
    if let Err(e) = unsafe { result::compile_program(prog.0, &options) } {
        // SAFETY: as above; the log is a NUL-terminated string.
        let log = unsafe { result::get_program_log(prog.0) }
            .map(|l| unsafe { CStr::from_ptr(l.as_ptr()) }.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(device_error(format!("NVRTC could not compile {} for {arch} ({e:?}):\n{log}", file.name)));
    }
    let bytes: Vec<u8> = match output {
        // SAFETY: `prog` compiled successfully.
        Output::Ptx => unsafe { result::get_ptx(prog.0) }.map_err(|e| nvrtc_err("gave no PTX", e))?.into_iter().map(|c| c as u8).collect(),
        Output::Cubin => {
            let mut size = 0usize;
            // SAFETY: `prog` compiled successfully; the calls write the size, then that many bytes.
            let r = unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) };
            if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                return Err(device_error(format!(
                    "NVRTC gave no cubin for {} ({arch}: a cubin needs a real architecture sm_XY): {r:?}",
                    file.name
                )));
            }
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` holds `size` bytes.
            let r = unsafe { sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr().cast()) };
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(device_error(format!("NVRTC gave no cubin for {} ({arch}): {r:?}", file.name)));
            }
            buf
        }
    };
    let bytes: Arc<[u8]> = bytes.into();
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, bytes.clone());
    Ok(bytes)
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
    // cudarc's CUDA 13.0 bindings call functions an older driver lacks (and panic there).
    if let Some((major, minor)) = driver_version().filter(|&(major, _)| major < 13) {
        return Err(unavailable(format!(
            "the CUDA driver supports CUDA {major}.{minor}; learnlaw's bindings need CUDA 13.0 (driver 580 or newer)"
        )));
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
/// and the properties launch plans need. Clones share the context and the stream.
#[derive(Clone)]
pub(crate) struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// e.g. "NVIDIA H200".
    pub device_name: String,
    /// `compute_XY`: the device's virtual architecture (what [`compile_ptx`] takes).
    pub arch: String,
    /// (major, minor), e.g. (9, 0).
    pub compute_capability: (u32, u32),
    /// How kernels are loaded, and the architecture NVRTC compiles them for: `sm_XY` (the
    /// device's own, [`Loading::Cubin`]) or an older `compute_XY` ([`Loading::Ptx`]).
    pub loading: Loading,
    pub target: String,
    pub sms: usize,
    /// Largest dynamic shared memory one block may opt in to (bytes).
    pub smem_optin: u32,
}

impl Device {
    /// Opens device `ordinal`: `Error::Unavailable` without a driver, NVRTC or usable device, or
    /// when NVRTC cannot compile for its architecture (naming both).
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
        let (major, minor) = (major.max(0) as u32, minor.max(0) as u32);
        let cc = 10 * major + minor;
        // An NVRTC that cannot list its architectures (none known) is asked for the device's own.
        let archs = nvrtc_supported_archs().unwrap_or_else(|| vec![cc]);
        let (loading, target_cc) = plan_loading(cc, &archs, nvrtc_version()).map_err(|why| unavailable(format!("{device_name}: {why}")))?;
        let target = match loading {
            Loading::Cubin => format!("sm_{target_cc}"),
            Loading::Ptx => format!("compute_{target_cc}"),
        };
        Ok(Device {
            ctx,
            stream,
            device_name,
            arch: format!("compute_{major}{minor}"),
            compute_capability: (major, minor),
            loading,
            target,
            sms: sms.max(1) as usize,
            smem_optin: smem_optin.max(0) as u32,
        })
    }

    /// The device, its load path and the versions, in words.
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.device_name.clone(),
            compute_capability: self.compute_capability,
            sms: self.sms,
            driver: driver_version(),
            nvrtc: nvrtc_version(),
            loading: self.loading,
            target: self.target.clone(),
        }
    }

    /// Why PTX from this NVRTC may not load: NVRTC newer than the driver (its PTX ISA may be
    /// beyond what the driver JIT-compiles). Empty when the versions do not say so.
    fn ptx_hint() -> String {
        match (nvrtc_version(), driver_version()) {
            (Some(n), Some(d)) if n > d => format!(
                " (NVRTC {} is newer than the driver's CUDA {}: its PTX may be too new for the driver; use NVRTC {}, e.g. pip install \"nvidia-cuda-nvrtc=={}.{}.*\", or a newer driver)",
                version_text(Some(n)),
                version_text(Some(d)),
                version_text(Some(d)),
                d.0,
                d.1
            ),
            _ => String::new(),
        }
    }

    /// Compiles (first use in the process) and loads one kernel file with X in `storage`: SASS
    /// for the device's architecture, or PTX where NVRTC cannot target it (see the module doc).
    /// A cubin the driver refuses is retried as PTX for the device's architecture.
    pub fn load_module(&self, file: &KernelFile, storage: Storage) -> Result<Arc<CudaModule>> {
        use cudarc::nvrtc::Ptx;
        let load_ptx = |arch: &str| -> std::result::Result<Arc<CudaModule>, String> {
            let ptx = compile_ptx(file, arch, storage).map_err(|e| e.to_string())?;
            self.ctx.load_module(Ptx::from_src(ptx)).map_err(|e| format!("{arch} PTX: {e}{}", Self::ptx_hint()))
        };
        let loaded = match self.loading {
            Loading::Cubin => {
                let cubin = compile_cubin(file, &self.target, storage)?;
                self.ctx
                    .load_module(Ptx::from_binary(cubin))
                    .or_else(|e| load_ptx(&self.arch).map_err(|ptx_err| format!("the {} image: {e}; then {ptx_err}", self.target)))
            }
            Loading::Ptx => load_ptx(&self.target),
        };
        loaded.map_err(|why| device_error(format!("loading {} ({}) on {}: {why}", file.name, storage.name(), self.device_name)))
    }
}

/// One entry point of a loaded module.
pub(crate) fn function(module: &Arc<CudaModule>, name: &str) -> Result<CudaFunction> {
    module.load_function(name).map_err(|e| device_error(format!("kernel {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC 13.0's list (nvrtcGetSupportedArchs).
    const NVRTC_13_0: [u32; 12] = [75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121];

    #[test]
    fn a_device_nvrtc_knows_gets_its_own_sass() {
        assert_eq!(plan_loading(90, &NVRTC_13_0, Some((13, 0))), Ok((Loading::Cubin, 90)));
        assert_eq!(plan_loading(75, &NVRTC_13_0, Some((13, 0))), Ok((Loading::Cubin, 75)));
    }

    #[test]
    fn a_device_newer_than_nvrtc_gets_ptx_for_the_newest_architecture_below_it() {
        assert_eq!(plan_loading(130, &NVRTC_13_0, Some((13, 0))), Ok((Loading::Ptx, 121)));
        assert_eq!(plan_loading(101, &NVRTC_13_0, Some((13, 0))), Ok((Loading::Ptx, 100)));
    }

    #[test]
    fn a_device_older_than_nvrtc_is_unavailable_naming_it() {
        let why = plan_loading(70, &NVRTC_13_0, Some((13, 0))).unwrap_err();
        assert!(why.contains("sm_70") && why.contains("NVRTC 13.0") && why.contains("sm_75, sm_80"), "{why}");
        assert!(plan_loading(90, &[], None).is_err());
    }

    #[test]
    fn device_info_reads_as_a_line() {
        let info = DeviceInfo {
            name: "NVIDIA H200".into(),
            compute_capability: (9, 0),
            sms: 132,
            driver: Some((13, 0)),
            nvrtc: Some((13, 2)),
            loading: Loading::Cubin,
            target: "sm_90".into(),
        };
        assert_eq!(info.to_string(), "NVIDIA H200 (sm_90, 132 SMs), kernels as sm_90 SASS; driver CUDA 13.0, NVRTC 13.2");
    }

    #[test]
    fn versions_never_panic() {
        let v = versions();
        assert!(v.starts_with("driver ") && v.contains(", NVRTC "), "{v}");
    }
}
