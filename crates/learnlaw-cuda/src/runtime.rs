//! Where kernels run: a CUDA stream ([`Stream`]), or the same CUDA C compiled by the host's C++
//! compiler ([`HostSim`](crate::host_sim::HostSim)), which lets the tests execute the kernels and
//! the engines built on them on a machine without a GPU.
//!
//! A kernel sees only its arguments' bytes, so both runtimes launch it the same way: one byte
//! slice per parameter — a device address (8 bytes, 0 for null), a scalar, or a struct by value.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use learnlaw_core::{Result, Storage};

use crate::gpu::{device_error, drv, function, Device, KernelFile};
use crate::host_sim::HostAlloc;

/// An allocation of a runtime: its device address and what keeps it alive.
pub(crate) struct Mem {
    pub ptr: u64,
    pub bytes: usize,
    _keep: Keep,
}

enum Keep {
    Cuda(#[allow(dead_code, reason = "held to be freed with the Mem")] CudaSlice<u8>),
    Host(#[allow(dead_code, reason = "held to be freed with the Mem")] HostAlloc),
}

impl Mem {
    pub(crate) fn host(a: HostAlloc) -> Self {
        Mem { ptr: a.ptr(), bytes: a.bytes(), _keep: Keep::Host(a) }
    }
}

impl std::fmt::Debug for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mem({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}

/// What kernels and engines need of a device.
pub(crate) trait Runtime {
    /// `bytes` of zeroed device memory (at least one byte; 256-byte aligned).
    fn alloc(&self, bytes: usize) -> Result<Mem>;
    /// Copies `src` to the start of `dst`.
    fn upload(&self, dst: &Mem, src: &[u8]) -> Result<()>;
    /// Copies the start of `src` to `dst`, after the work launched before.
    fn download(&self, src: &Mem, dst: &mut [u8]) -> Result<()>;
    /// Copies `bytes` from device address `src` to `dst`, in order with the launches.
    fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()>;
    /// Launches `entry` of `file` on `grid` blocks of `block` threads, with one byte slice per
    /// kernel parameter (`arg` makes them).
    fn launch(&self, file: &KernelFile, entry: &str, args: &[&[u8]], grid: u32, block: u32) -> Result<()>;
    /// Blocks until the launched work has finished.
    fn sync(&self) -> Result<()>;
    /// What the kernels run on, e.g. "NVIDIA H200".
    fn name(&self) -> &str;
}

/// A kernel argument's bytes: a device address, a scalar or a `#[repr(C)]` struct.
pub(crate) fn arg<T: bytemuck::Pod>(x: &T) -> &[u8] {
    bytemuck::bytes_of(x)
}

/// The largest by-value parameter a kernel takes (bytes).
pub(crate) const MAX_PARAMS: usize = 64;

/// One parameter's bytes: the driver copies the kernel's declared size from the start.
#[repr(C, align(8))]
struct ParamBlock([u8; MAX_PARAMS]);
// SAFETY: plain bytes; the kernel reads its parameter's size (≤ MAX_PARAMS) from the start.
unsafe impl DeviceRepr for ParamBlock {}

/// The kernels of a CUDA device's stream, each file compiled and loaded at its first launch.
pub(crate) struct Stream {
    gpu: Device,
    modules: Mutex<HashMap<&'static str, Module>>,
}

struct Module {
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
}

impl Stream {
    pub(crate) fn new(gpu: Device) -> Self {
        Stream { gpu, modules: Mutex::default() }
    }

    /// Compiles and loads `file` unless it is loaded.
    pub(crate) fn load(&self, file: &KernelFile) -> Result<()> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if !modules.contains_key(file.name) {
            let module = self.gpu.load_module(file, Storage::F32)?;
            let functions = file.entries.iter().map(|&e| Ok((e, function(&module, e)?))).collect::<Result<_>>()?;
            modules.insert(file.name, Module { _module: module, functions });
        }
        Ok(())
    }

    fn function(&self, file: &KernelFile, entry: &str) -> Result<CudaFunction> {
        self.load(file)?;
        let modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        modules[file.name].functions.get(entry).cloned().ok_or_else(|| device_error(format!("{} has no kernel {entry}", file.name)))
    }

    fn slice<'a>(m: &'a Mem, bytes: usize, what: &str) -> Result<&'a CudaSlice<u8>> {
        match &m._keep {
            Keep::Cuda(s) if bytes <= s.len() => Ok(s),
            _ => Err(device_error(format!("{what} of {bytes} bytes with an allocation of {}", m.bytes))),
        }
    }
}

impl Runtime for Stream {
    fn alloc(&self, bytes: usize) -> Result<Mem> {
        let s = self.gpu.stream.alloc_zeros::<u8>(bytes.max(1)).map_err(drv("allocating device memory"))?;
        let ptr = s.device_ptr(&self.gpu.stream).0;
        Ok(Mem { ptr, bytes: s.len(), _keep: Keep::Cuda(s) })
    }
    fn upload(&self, dst: &Mem, src: &[u8]) -> Result<()> {
        Self::slice(dst, src.len(), "upload")?;
        self.copy_in(dst.ptr, src)
    }
    fn download(&self, src: &Mem, dst: &mut [u8]) -> Result<()> {
        let s = Self::slice(src, dst.len(), "download")?;
        self.gpu.stream.memcpy_dtoh(&s.slice(..dst.len()), dst).map_err(drv("downloading from the device"))?;
        self.gpu.stream.synchronize().map_err(drv("downloading from the device"))
    }
    fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.gpu.ctx.bind_to_thread().map_err(drv("binding the context"))?;
        // SAFETY: both ranges lie in live allocations of this context (the callers check lengths).
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.gpu.stream.cu_stream()) }
            .map_err(drv("copying on the device"))
    }
    fn launch(&self, file: &KernelFile, entry: &str, args: &[&[u8]], grid: u32, block: u32) -> Result<()> {
        let f = self.function(file, entry)?;
        let mut params = Vec::with_capacity(args.len());
        for a in args {
            if a.len() > MAX_PARAMS {
                return Err(device_error(format!("{entry}: a parameter of {} bytes", a.len())));
            }
            let mut p = ParamBlock([0; MAX_PARAMS]);
            p.0[..a.len()].copy_from_slice(a);
            params.push(p);
        }
        let mut b = self.gpu.stream.launch_builder(&f);
        for p in &params {
            b.arg(p);
        }
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the caller passes one argument per kernel parameter, in order, device addresses
        // of live allocations (or 0 where the kernel does not read them) for the pointers.
        unsafe { b.launch(cfg) }.map_err(|e| device_error(format!("launching {entry} of {}: {e}", file.name)))?;
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        self.gpu.stream.synchronize().map_err(drv("synchronising"))
    }
    fn name(&self) -> &str {
        &self.gpu.device_name
    }
}

impl Stream {
    /// Host bytes to a device address, in stream order (synchronous for the host buffer).
    fn copy_in(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.gpu.ctx.bind_to_thread().map_err(drv("binding the context"))?;
        // SAFETY: dst has room for src (checked by the caller); the sync below keeps `src` alive
        // until the copy has read it.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.gpu.stream.cu_stream()) }
            .map_err(drv("uploading to the device"))?;
        self.gpu.stream.synchronize().map_err(drv("uploading to the device"))
    }
}
