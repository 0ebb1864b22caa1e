//! The binary runs on any x86-64: the build targets the baseline and the hot loops pick their
//! instruction set at run time. A small search under qemu-user emulating a Westmere (SSE4.2, no
//! AVX, no FMA) must give the policy this machine gives, bit for bit (fused multiply-adds stay
//! fused: `mul_add` is a library call there, not an unfused multiply and add). Needs
//! `qemu-x86_64` (Debian's qemu-user, which .ci/run installs): without it the test prints
//! SKIPPED, and fails with LEARNLAW_REQUIRE_QEMU=1.
mod common;

use std::path::Path;
use std::process::Command;

use common::{ok, text};

/// The tensor bytes of a safetensors file (what follows its JSON header, whose metadata holds
/// timings).
fn tensor_bytes(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    raw[8 + header..].to_vec()
}

#[test]
#[cfg(target_arch = "x86_64")]
fn a_search_on_a_cpu_without_avx_gives_the_same_policy() {
    if Command::new("qemu-x86_64").arg("--version").output().is_err() {
        assert!(std::env::var("LEARNLAW_REQUIRE_QEMU").as_deref() != Ok("1"), "qemu-x86_64 not found and LEARNLAW_REQUIRE_QEMU=1");
        println!("SKIPPED: qemu-x86_64 not found (Debian: apt-get install qemu-user)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["data", "perceptron", "--out", "p.safetensors", "--train", "64", "--dev", "32", "--test", "32", "--dim", "40"], d);
    let search = |out: &str| ["search", "--data", "p.safetensors", "--out", out, "--steps", "20", "--epochs", "1"].map(String::from);
    ok(&search("native").each_ref().map(String::as_str), d);
    let emulated = Command::new("qemu-x86_64")
        .args(["-cpu", "Westmere", env!("CARGO_BIN_EXE_learnlaw")])
        .args(search("westmere"))
        .current_dir(d)
        .output()
        .unwrap();
    assert!(emulated.status.success(), "under qemu -cpu Westmere: {}\n{}", emulated.status, text(&emulated.stderr));
    let policy = |run: &str| tensor_bytes(&d.join(run).join("policy.safetensors"));
    assert!(policy("native") == policy("westmere"), "the policies differ between this CPU and a Westmere");
}
