//! Running the `learnlaw` binary from the CLI's end-to-end tests.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `learnlaw ARGS` in `cwd`, without backtraces or colours, so messages are what users see.
pub fn command(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_learnlaw"));
    c.args(args).env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE").env("NO_COLOR", "1").current_dir(cwd);
    c
}

/// Runs `learnlaw ARGS` in `cwd`.
pub fn learnlaw(args: &[&str], cwd: &Path) -> Output {
    command(args, cwd).output().expect("the learnlaw binary runs")
}

/// A learnlaw process started by a test; killed if the test ends before it does.
pub struct Running(Option<Child>);

impl Running {
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
    /// Sends a signal ("INT", "KILL", …).
    #[cfg(unix)]
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill").args([format!("-{name}"), self.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -{name} {}", self.id());
    }
    pub fn wait(mut self) -> Output {
        self.0.take().expect("running").wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `learnlaw ARGS` in `cwd` without waiting for it (stdout and stderr piped).
pub fn spawn(args: &[&str], cwd: &Path) -> Running {
    Running(Some(command(args, cwd).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the learnlaw binary starts")))
}

/// Waits (a minute at most) until the file at `path` holds `needle`.
pub fn wait_for(path: &Path, needle: &str) {
    let start = Instant::now();
    while !std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
        assert!(start.elapsed() < Duration::from_secs(60), "{} never held {needle:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// Starts a search (`args`, in `cwd`), stops it with Ctrl-C once it has run half a second, and
/// returns the outer epoch it says it stopped after (exit status 130, the policy saved).
#[cfg(unix)]
pub fn interrupt(args: &[&str], cwd: &Path) -> usize {
    let out = args.iter().position(|a| *a == "--out").map(|i| cwd.join(args[i + 1])).expect("a search with --out");
    let child = spawn(args, cwd);
    // The lock names the process once the search owns its directory (the handler is installed before).
    wait_for(&out.join(".lock"), &format!("pid {}:", child.id()));
    std::thread::sleep(Duration::from_millis(500));
    child.signal("INT");
    let output = child.wait();
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "stdout:\n{stdout}\nstderr:\n{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("stopping after this outer epoch"), "{}", text(&output.stderr));
    let epoch = stdout.split("stopped after outer epoch ").nth(1).and_then(|s| s.split(' ').next()).and_then(|k| k.parse().ok());
    epoch.unwrap_or_else(|| panic!("no stop message:\n{stdout}"))
}
