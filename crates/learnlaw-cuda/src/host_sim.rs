//! [`HostSim`]: the CUDA C of kernels/cuda compiled by the host's C++ compiler against
//! `host_sim.h` (the CUDA execution model with a block's threads as fibers) and run on the CPU —
//! so the conformance tests execute the CUDA kernels and engines, not just compile them, on
//! machines without a GPU (CI).
//!
//! Each kernel file becomes a shared library with one entry, `sim_launch(entry, arguments' bytes,
//! grid, block)`, built at first use with `$CXX` (default `c++`) and cached under the system's
//! temporary directory by a hash of its sources. Launches are serialised (the shim keeps the
//! running launch in globals). It is a correctness tool: blocks run one after another, the math is
//! the host's libm, and it is slow.
use std::alloc::Layout;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use learnlaw_core::{Error, Result};

use crate::gpu::{device_error, KernelFile};
use crate::runtime::{Mem, Runtime};

const SHIM: &str = include_str!("host_sim.h");
const BACKEND: &str = "cuda-host-sim";

/// `sim_launch(entry, args, sizes, nargs, grid, block)` of a compiled kernel file.
type SimLaunch = unsafe extern "C" fn(*const std::ffi::c_char, *const *const u8, *const usize, usize, u32, u32) -> i32;

/// Zeroed host memory with the alignment of a device allocation.
pub(crate) struct HostAlloc {
    ptr: *mut u8,
    layout: Layout,
}

impl HostAlloc {
    fn zeroed(bytes: usize) -> Result<Self> {
        let layout =
            Layout::from_size_align(bytes.max(1), 256).map_err(|e| device_error(format!("host allocation of {bytes} bytes: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(device_error(format!("host allocation of {bytes} bytes failed")));
        }
        Ok(HostAlloc { ptr, layout })
    }
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr as u64
    }
    pub(crate) fn bytes(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for HostAlloc {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The host runtime: the compiled kernel files, loaded at first use.
#[derive(Default)]
pub struct HostSim {
    libs: Mutex<HashMap<&'static str, Arc<libloading::Library>>>,
}

/// One launch at a time in the whole process.
static LAUNCH: Mutex<()> = Mutex::new(());

fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

impl HostSim {
    /// The host runtime, or `Error::Unavailable` when there is no C++ compiler.
    pub fn new() -> Result<Self> {
        match Command::new(compiler()).arg("--version").output() {
            Ok(o) if o.status.success() => Ok(HostSim::default()),
            _ => Err(Error::Unavailable { backend: BACKEND.into(), reason: format!("no C++ compiler ({}; set CXX)", compiler()) }),
        }
    }

    fn library(&self, file: &KernelFile) -> Result<Arc<libloading::Library>> {
        let mut libs = self.libs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = libs.get(file.name) {
            return Ok(l.clone());
        }
        let path = build(file)?;
        // SAFETY: a library built from our own sources; its initialisers only set up statics.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| device_error(format!("loading {}: {e}", path.display())))?;
        let lib = Arc::new(lib);
        libs.insert(file.name, lib.clone());
        Ok(lib)
    }
}

/// Builds (or finds in the cache) the shared library of one kernel file.
fn build(file: &KernelFile) -> Result<PathBuf> {
    static BUILDS: OnceLock<Mutex<()>> = OnceLock::new();
    let _one_at_a_time = BUILDS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    let entries: String = file.entries.iter().map(|e| format!("    SIM_ENTRY({e})\n")).collect();
    let wrapper = format!(
        "#include \"host_sim.h\"\n#include \"{name}\"\n\
         extern \"C\" int sim_launch(const char* entry, const void* const* args, const std::size_t* sizes, std::size_t nargs,\n\
         \x20                          unsigned grid, unsigned block) {{\n{entries}    return 2;\n}}\n",
        name = file.name
    );
    let flags = ["-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-w", "-x", "c++"];
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (SHIM, file.source, &wrapper, flags, compiler()).hash(&mut h);
    let dir = std::env::temp_dir().join(format!("learnlaw-host-sim-{:016x}", h.finish()));
    let lib = dir.join(format!("{}.so", file.name.trim_end_matches(".cu")));
    if lib.is_file() {
        return Ok(lib);
    }
    let io = |what: &str, p: &Path, e: std::io::Error| device_error(format!("{what} {}: {e}", p.display()));
    std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
    for (name, text) in [("host_sim.h", SHIM), (file.name, file.source), ("wrapper.cpp", wrapper.as_str())] {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| io("writing", &p, e))?;
    }
    // Built under a temporary name and renamed: another process may be building it too.
    let tmp = dir.join(format!("{}.{}.tmp", file.name, std::process::id()));
    let out = Command::new(compiler())
        .args(flags)
        .arg(dir.join("wrapper.cpp"))
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| device_error(format!("running {}: {e}", compiler())))?;
    if !out.status.success() {
        return Err(device_error(format!(
            "{} could not compile {} for the host simulation:\n{}",
            compiler(),
            file.name,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::rename(&tmp, &lib).map_err(|e| io("renaming", &tmp, e))?;
    Ok(lib)
}

impl Runtime for HostSim {
    fn alloc(&self, bytes: usize) -> Result<Mem> {
        Ok(Mem::host(HostAlloc::zeroed(bytes)?))
    }
    fn upload(&self, dst: &Mem, src: &[u8]) -> Result<()> {
        if src.len() > dst.bytes {
            return Err(device_error(format!("upload of {} bytes into an allocation of {}", src.len(), dst.bytes)));
        }
        // SAFETY: dst is a live host allocation of at least src.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.ptr as *mut u8, src.len()) };
        Ok(())
    }
    fn download(&self, src: &Mem, dst: &mut [u8]) -> Result<()> {
        if dst.len() > src.bytes {
            return Err(device_error(format!("download of {} bytes from an allocation of {}", dst.len(), src.bytes)));
        }
        let _done = LAUNCH.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: src is a live host allocation of at least dst.len() bytes; no launch runs.
        unsafe { std::ptr::copy_nonoverlapping(src.ptr as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        let _one = LAUNCH.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: both ranges lie in live host allocations (the callers check lengths); `copy`
        // allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }
    fn launch(&self, file: &KernelFile, entry: &str, args: &[&[u8]], grid: u32, block: u32) -> Result<()> {
        let lib = self.library(file)?;
        // SAFETY: the symbol has the signature `sim_launch` is defined with in `build`.
        let f = unsafe { lib.get::<SimLaunch>(b"sim_launch\0") }.map_err(|e| device_error(format!("{}: {e}", file.name)))?;
        let name = std::ffi::CString::new(entry).map_err(|e| device_error(e.to_string()))?;
        let (ptrs, sizes): (Vec<*const u8>, Vec<usize>) = args.iter().map(|a| (a.as_ptr(), a.len())).unzip();
        let _one = LAUNCH.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: every argument is a byte slice of its parameter's size (the shim checks the count
        // and the sizes); pointer arguments are addresses of live host allocations, or 0 where the
        // kernel does not read them.
        let rc = unsafe { f(name.as_ptr(), ptrs.as_ptr(), sizes.as_ptr(), args.len(), grid, block) };
        match rc {
            0 => Ok(()),
            1 => Err(device_error(format!(
                "{entry} of {}: {} arguments of sizes {sizes:?} do not match its signature",
                file.name,
                args.len()
            ))),
            _ => Err(device_error(format!("{} has no kernel {entry}", file.name))),
        }
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    fn name(&self) -> &str {
        "the CPU (CUDA host simulation)"
    }
}
