//! Running the `learnlaw` binary from the CLI's end-to-end tests.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// Runs `learnlaw ARGS` in `cwd` (without backtraces or colours, so messages are what users see).
pub fn learnlaw(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_learnlaw"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("NO_COLOR", "1")
        .current_dir(cwd)
        .output()
        .expect("the learnlaw binary runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and expects success; returns stdout.
pub fn ok(args: &[&str], cwd: &Path) -> String {
    let out = learnlaw(args, cwd);
    assert!(
        out.status.success(),
        "learnlaw {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs and expects a failure; returns stderr.
pub fn fails(args: &[&str], cwd: &Path) -> String {
    let out = learnlaw(args, cwd);
    assert!(!out.status.success(), "learnlaw {args:?} should fail:\nstdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
    assert_ne!(out.status.code(), Some(0));
    assert!(out.status.code().is_some(), "exited by a signal (a panic abort?): {}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"), "a user error must not panic:\n{}", text(&out.stderr));
    text(&out.stderr)
}
