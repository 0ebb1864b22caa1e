//! Where the Transformer's layer kernels run: a CUDA stream ([`Stream`]), or the same CUDA C
//! compiled by the host's C++ compiler ([`HostSim`](crate::host_sim::HostSim)), which lets the
//! conformance tests execute every kernel on a machine without a GPU.
//!
//! A kernel sees only device addresses and its parameter struct's bytes, so both runtimes launch
//! it the same way: pointers (as 64-bit addresses, 0 for null), then the struct by value.
use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use learnlaw_core::{Result, Storage};

use crate::gpu::{device_error, drv, function, Device, KernelFile};
use crate::host_sim::HostAlloc;

/// An allocation of a runtime: its device address and what keeps it alive.
pub(crate) struct Mem {
    pub ptr: u64,
    pub bytes: usize,
    keep: Keep,
}

enum Keep {
    Cuda(CudaSlice<u8>),
    Host(#[allow(dead_code, reason = "held to be freed with the Mem")] HostAlloc),
}

impl Mem {
    pub(crate) fn host(a: HostAlloc) -> Self {
        Mem { ptr: a.ptr(), bytes: a.bytes(), keep: Keep::Host(a) }
    }
}

/// What the layer kernels need of a device.
pub(crate) trait Runtime {
    /// `bytes` of zeroed device memory (at least one byte; 256-byte aligned).
    fn alloc(&self, bytes: usize) -> Result<Mem>;
    /// Copies `src` to the start of `dst`.
    fn upload(&self, dst: &mut Mem, src: &[u8]) -> Result<()>;
    /// Copies the start of `src` to `dst`, after the work launched before.
    fn download(&self, src: &Mem, dst: &mut [u8]) -> Result<()>;
    /// Launches `entry` of `file` on `grid` blocks of `block` threads with the pointers, then the
    /// parameter struct's bytes, as its arguments.
    fn launch(&self, file: &KernelFile, entry: &str, ptrs: &[u64], params: &[u8], grid: u32, block: u32) -> Result<()>;
    /// Blocks until the launched work has finished.
    fn sync(&self) -> Result<()>;
}

/// The largest parameter struct a kernel takes by value (bytes).
pub(crate) const MAX_PARAMS: usize = 64;

/// A parameter struct's bytes, passed by value: the driver copies the kernel's declared size.
#[repr(C, align(8))]
struct ParamBlock([u8; MAX_PARAMS]);
// SAFETY: plain bytes; the kernel reads its parameter's size (≤ MAX_PARAMS) from the start.
unsafe impl DeviceRepr for ParamBlock {}

/// A CUDA stream and the loaded modules of some kernel files.
pub(crate) struct Stream {
    stream: Arc<CudaStream>,
    functions: HashMap<(&'static str, &'static str), CudaFunction>,
    _modules: Vec<Arc<CudaModule>>,
}

impl Stream {
    /// Compiles (first use in the process) and loads `files` on `gpu`.
    pub(crate) fn load(gpu: &Device, files: &[KernelFile]) -> Result<Self> {
        let mut functions = HashMap::new();
        let mut modules = Vec::new();
        for f in files {
            let module = gpu.load_module(f, Storage::F32)?;
            for &e in f.entries {
                functions.insert((f.name, e), function(&module, e)?);
            }
            modules.push(module);
        }
        Ok(Stream { stream: gpu.stream.clone(), functions, _modules: modules })
    }
}

impl Runtime for Stream {
    fn alloc(&self, bytes: usize) -> Result<Mem> {
        let s = self.stream.alloc_zeros::<u8>(bytes.max(1)).map_err(drv("allocating device memory"))?;
        let ptr = s.device_ptr(&self.stream).0;
        Ok(Mem { ptr, bytes: s.len(), keep: Keep::Cuda(s) })
    }
    fn upload(&self, dst: &mut Mem, src: &[u8]) -> Result<()> {
        match &mut dst.keep {
            Keep::Cuda(s) if src.len() <= s.len() => {
                self.stream.memcpy_htod(src, &mut s.slice_mut(..src.len())).map_err(drv("uploading to the device"))
            }
            _ => Err(device_error(format!("upload of {} bytes into an allocation of {}", src.len(), dst.bytes))),
        }
    }
    fn download(&self, src: &Mem, dst: &mut [u8]) -> Result<()> {
        match &src.keep {
            Keep::Cuda(s) if dst.len() <= s.len() => {
                self.stream.memcpy_dtoh(&s.slice(..dst.len()), dst).map_err(drv("downloading from the device"))?;
                self.stream.synchronize().map_err(drv("downloading from the device"))
            }
            _ => Err(device_error(format!("download of {} bytes from an allocation of {}", dst.len(), src.bytes))),
        }
    }
    fn launch(&self, file: &KernelFile, entry: &str, ptrs: &[u64], params: &[u8], grid: u32, block: u32) -> Result<()> {
        let f =
            self.functions.get(&(file.name, entry)).ok_or_else(|| device_error(format!("kernel {entry} of {} not loaded", file.name)))?;
        let mut block_bytes = ParamBlock([0; MAX_PARAMS]);
        block_bytes.0[..params.len()].copy_from_slice(params);
        let mut b = self.stream.launch_builder(f);
        for p in ptrs {
            b.arg(p);
        }
        b.arg(&block_bytes);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the caller passes the kernel's pointer parameters as 64-bit device addresses of
        // live allocations (or 0 where the kernel does not read them) and its struct's bytes.
        unsafe { b.launch(cfg) }.map_err(|e| device_error(format!("launching {entry} of {}: {e}", file.name)))?;
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv("synchronising"))
    }
}
