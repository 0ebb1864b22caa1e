//! The CUDA kernels' compile check, which needs no GPU and no driver: every `kernels/cuda/*.cu` is
//! compiled by NVRTC (with the engine's own options; perceptron.cu once per storage of X: f32,
//! f16, bf16) to an `sm_90` cubin — the SASS image the engine loads on an H200 — and to PTX for
//! `compute_90` (the fallback path), which is assembled by `ptxas -arch=sm_90`. A kernel that does
//! not compile or assemble fails the test.
//!
//! NVRTC (libnvrtc.so.13) and ptxas come from the PyPI wheels `nvidia-cuda-nvrtc` and
//! `nvidia-cuda-nvcc` (13.0; see .ci/run, which puts their lib and bin folders on LD_LIBRARY_PATH
//! and PATH). Without them the test prints SKIPPED; with `LEARNLAW_REQUIRE_NVRTC=1` (CI) it fails.
use std::io::Write as _; // a skip is written to stderr directly: test output capture would hide it
use std::path::{Path, PathBuf};
use std::process::Command;

use learnlaw_cuda::{compile_cubin, compile_ptx, nvrtc_available, nvrtc_supported_archs, nvrtc_version, KERNEL_FILES, PASS_PARAMS_BYTES};

const ARCH_PTX: &str = "compute_90";
const ARCH_SASS: &str = "sm_90";

fn required() -> bool {
    std::env::var("LEARNLAW_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    if required() {
        panic!("LEARNLAW_REQUIRE_NVRTC=1 but {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// kernels/cuda of this checkout; `LEARNLAW_KERNEL_DIR` overrides it for a binary run elsewhere
/// (scripts/gpu-check.sh on the GPU machine).
fn kernel_dir() -> PathBuf {
    match std::env::var_os("LEARNLAW_KERNEL_DIR") {
        Some(d) => d.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels/cuda"),
    }
}

/// `ptxas` on PATH, else under $CUDA_HOME/bin or /usr/local/cuda/bin.
fn find_ptxas() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        dirs.push(Path::new(&home).join("bin"));
    }
    dirs.push("/usr/local/cuda/bin".into());
    dirs.into_iter().map(|d| d.join("ptxas")).find(|p| p.is_file())
}

/// The engine's list of kernel files is exactly the .cu files on disk, with the same contents.
#[test]
fn engine_embeds_every_kernel_file() {
    let mut on_disk: Vec<String> = std::fs::read_dir(kernel_dir())
        .expect("kernels/cuda")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cu"))
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = KERNEL_FILES.iter().map(|f| f.name.to_string()).collect();
    embedded.sort();
    assert_eq!(on_disk, embedded, "kernels/cuda and learnlaw_cuda::KERNEL_FILES disagree");
    for f in KERNEL_FILES {
        let text = std::fs::read_to_string(kernel_dir().join(f.name)).expect("kernel source");
        assert_eq!(text, f.source, "{} changed since the crate was built", f.name);
    }
}

#[test]
fn every_kernel_compiles_with_nvrtc_and_assembles_for_sm_90() {
    if !nvrtc_available() {
        return skip("no NVRTC library (libnvrtc.so.13) on LD_LIBRARY_PATH");
    }
    let Some(ptxas) = find_ptxas() else {
        return skip("no ptxas on PATH");
    };
    let (major, minor) = nvrtc_version().expect("NVRTC version");
    println!("NVRTC {major}.{minor}, {}", ptxas.display());
    let tmp = tempfile::tempdir().expect("temp dir");
    for (f, storage) in KERNEL_FILES.iter().flat_map(|f| f.storages.iter().map(move |s| (f, *s))) {
        let ptx = compile_ptx(f, ARCH_PTX, storage).unwrap_or_else(|e| panic!("{e}"));
        for entry in f.entries {
            assert!(ptx.contains(&format!(".entry {entry}(")), "{} ({storage:?}): no entry {entry} in the PTX", f.name);
            if entry.starts_with("pass_") {
                // The by-value PassParams must have the size the Rust side passes.
                let decl = format!("{entry}_param_0[{PASS_PARAMS_BYTES}]");
                assert!(ptx.contains(&decl), "{}: {entry}'s parameter is not {PASS_PARAMS_BYTES} bytes", f.name);
            }
        }
        let stem = format!("{}-{}", f.name.trim_end_matches(".cu"), storage.name());
        let ptx_path = tmp.path().join(format!("{stem}.ptx"));
        std::fs::write(&ptx_path, &ptx).expect("write PTX");
        let out = Command::new(&ptxas)
            .arg(format!("-arch={ARCH_SASS}"))
            .arg("-v")
            .arg("-o")
            .arg(tmp.path().join(format!("{stem}.cubin")))
            .arg(&ptx_path)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", ptxas.display()));
        let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ptxas -arch={ARCH_SASS} failed on {} ({storage:?}, {}):\n{log}", f.name, out.status);
        // Registers, shared memory and spills per kernel, for the log.
        println!("{} (X in {}): PTX {} bytes, assembled for {ARCH_SASS}", f.name, storage.name(), ptx.len());
        for line in log.lines().filter(|l| l.contains("Compiling entry") || l.contains("Used") || l.contains("spill")) {
            println!("  {}", line.trim_start_matches("ptxas info    : "));
        }
    }
}

/// The load path the engine takes on an H200: NVRTC lists sm_90, and compiles every kernel file to
/// an sm_90 cubin (an ELF image holding every entry point) without a GPU.
#[test]
fn every_kernel_compiles_to_an_sm_90_cubin() {
    if !nvrtc_available() {
        return skip("no NVRTC library (libnvrtc.so.13) on LD_LIBRARY_PATH");
    }
    let (major, minor) = nvrtc_version().expect("NVRTC version");
    let archs = nvrtc_supported_archs().expect("NVRTC's supported architectures");
    println!("NVRTC {major}.{minor} compiles for {archs:?}");
    assert!(archs.contains(&90), "NVRTC {major}.{minor} cannot compile for sm_90: {archs:?}");
    for (f, storage) in KERNEL_FILES.iter().flat_map(|f| f.storages.iter().map(move |s| (f, *s))) {
        let cubin = compile_cubin(f, ARCH_SASS, storage).unwrap_or_else(|e| panic!("{e}"));
        assert!(cubin.starts_with(b"\x7fELF"), "{} ({storage:?}): the cubin is not an ELF image", f.name);
        for entry in f.entries {
            let name = entry.as_bytes();
            assert!(cubin.windows(name.len()).any(|w| w == name), "{} ({storage:?}): no {entry} in the cubin", f.name);
        }
        // Cached: the same bytes again.
        assert_eq!(compile_cubin(f, ARCH_SASS, storage).unwrap(), cubin);
        println!("{} (X in {}): {ARCH_SASS} cubin {} bytes", f.name, storage.name(), cubin.len());
    }
    // A virtual architecture has no SASS: an error, not a panic.
    let err = compile_cubin(&KERNEL_FILES[0], ARCH_PTX, KERNEL_FILES[0].storages[0]).unwrap_err();
    assert!(err.to_string().contains("cubin"), "{err}");
}
