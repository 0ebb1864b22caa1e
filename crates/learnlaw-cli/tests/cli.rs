//! End-to-end tests of the `learnlaw` binary on tiny problems, in temporary directories.
use std::io::Write as _; // a skip is written to stderr directly: test output capture would hide it
use std::path::Path;

mod common;

use common::{fails, interrupt, learnlaw, ok, text};

fn small_data(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let p = path.to_str().unwrap().to_string();
    ok(&["data", "perceptron", "--out", &p, "--dim", "8", "--train", "16", "--dev", "8", "--test", "8"], dir);
    p
}

#[test]
fn reproduce_perceptron_small_and_again() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let args = [
        "reproduce",
        "perceptron",
        "--out",
        o,
        "--dim",
        "8",
        "--train",
        "64",
        "--dev",
        "32",
        "--test",
        "32",
        "--steps",
        "20",
        "--epochs",
        "3",
        "--outer-lr",
        "0.5",
    ];
    let stdout = ok(&args, tmp.path());
    assert!(stdout.lines().any(|l| l.starts_with("AR test")), "no AR line:\n{stdout}");
    assert!(stdout.contains("search done"), "{stdout}");
    for f in ["config.toml", "policy.safetensors", "summary.json", "curves.csv", "data.safetensors"] {
        assert!(out.join(f).is_file(), "{f} missing from the run directory");
    }
    assert!(!out.join("summary.tmp").exists() && !out.join("policy.safetensors.tmp").exists(), "temporary files left behind");

    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for key in ["ar", "j", "cr", "seconds_per_epoch", "evaluation"] {
        assert!(summary.get(key).is_some(), "summary.json lacks {key}: {summary}");
    }
    let j: Vec<f64> = summary["j"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(j.len(), 4, "J for γ_0..γ_3: {j:?}");
    assert!(j[3] < j[0], "the search should improve J: {j:?}");
    assert_eq!(summary["epochs_done"], 3);
    assert_eq!(summary["steps"], 20);
    assert!(summary["seconds_per_epoch"].as_f64().unwrap() > 0.0);
    assert!(summary["ar"].is_null() || summary["ar"].as_f64().unwrap() > 0.0);
    assert_eq!(std::fs::read_to_string(out.join("curves.csv")).unwrap().lines().count(), 22, "header + T+1 rows");

    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("data_fingerprint") && config.contains("outer_lr = 0.5"), "{config}");

    // Again: the finished search is resumed (nothing to do) and evaluated again.
    let policy_before = std::fs::read(out.join("policy.safetensors")).unwrap();
    let data_before = std::fs::read(out.join("data.safetensors")).unwrap();
    let stdout = ok(&args, tmp.path());
    assert!(stdout.lines().any(|l| l.starts_with("AR test")), "{stdout}");
    assert!(!stdout.contains("generated"), "the data must not be regenerated:\n{stdout}");
    assert_eq!(std::fs::read(out.join("policy.safetensors")).unwrap(), policy_before, "the policy must not change");
    assert_eq!(std::fs::read(out.join("data.safetensors")).unwrap(), data_before);
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(again["j"].as_array().unwrap().len(), 4);

    // The same directory with other settings is refused, naming the directory.
    let mut other = args.to_vec();
    *other.last_mut().unwrap() = "0.25";
    let err = fails(&other, tmp.path());
    assert!(err.contains(o), "{err}");
}

#[test]
fn data_search_eval_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data(tmp.path(), "data.safetensors");
    let stdout = ok(&["data", "perceptron", "--out", &data, "--dim", "8", "--train", "16", "--dev", "8", "--test", "8"], tmp.path());
    assert!(stdout.contains("D=8") && stdout.contains("train 16"), "{stdout}");
    // A relative run directory, resolved against the working directory.
    ok(&["search", "--data", &data, "--out", "run", "--steps", "5", "--epochs", "1"], tmp.path());
    let run = tmp.path().join("run");
    assert!(run.join("policy.safetensors").is_file());
    assert!(run.join("summary.json").is_file());
    let stdout = ok(&["eval", run.to_str().unwrap()], tmp.path());
    assert!(stdout.contains("AR test") && stdout.contains("AUC dev"), "{stdout}");
    assert_eq!(std::fs::read_to_string(run.join("curves.csv")).unwrap().lines().count(), 7);
    // eval from another working directory with a relative data path works: the config stores it absolute.
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains(tmp.path().canonicalize().unwrap().to_str().unwrap()), "{config}");
}

#[test]
fn the_f64_backend_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data(tmp.path(), "data.safetensors");
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    ok(&["search", "--data", &data, "--out", r, "--steps", "5", "--epochs", "1", "--backend", "cpu-f64"], tmp.path());
    // Evaluating with an explicit backend works.
    let stdout = ok(&["eval", r, "--backend", "cpu-f64"], tmp.path());
    assert!(stdout.contains("AR test"), "{stdout}");
}

/// `eval` without --backend uses the backend recorded in config.toml, spelled as on the command line.
#[test]
fn eval_uses_the_f64_backend_recorded_in_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data(tmp.path(), "data.safetensors");
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    ok(&["search", "--data", &data, "--out", r, "--steps", "5", "--epochs", "1", "--backend", "cpu-f64"], tmp.path());
    ok(&["eval", r], tmp.path());
}

/// `--backend wgpu-f16` (X stored as f16) runs a search and an evaluation that reads the backend
/// back from config.toml; where no adapter (or none with SHADER_F16) exists it is a clear
/// "unavailable" error, not a panic, and the test says SKIPPED.
#[test]
fn the_wgpu_f16_backend_runs_or_is_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data(tmp.path(), "data.safetensors");
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    let args = ["search", "--data", &data, "--out", r, "--steps", "5", "--epochs", "1", "--backend", "wgpu-f16"];
    let out = learnlaw(&args, tmp.path());
    if !out.status.success() {
        let err = text(&out.stderr);
        assert!(err.contains("unavailable") && !err.contains("panicked"), "{err}");
        let _ = writeln!(std::io::stderr(), "SKIPPED: {err}");
        return;
    }
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("\"wgpu-f16\""), "{config}");
    let stdout = ok(&["eval", r], tmp.path());
    assert!(stdout.contains("AR test"), "{stdout}");
}

#[test]
fn unknown_backend_lists_the_valid_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data(tmp.path(), "data.safetensors");
    let err = fails(&["search", "--data", &data, "--out", "run", "--backend", "nope"], tmp.path());
    assert!(err.contains("nope") && err.contains("cpu") && err.contains("cpu-f64"), "{err}");
    assert!(!tmp.path().join("run").exists(), "nothing is created for a rejected command line");
}

#[test]
fn missing_data_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&["search", "--data", "/nonexistent.safetensors", "--out", "run", "--steps", "5", "--epochs", "1"], tmp.path());
    assert!(err.contains("/nonexistent.safetensors"), "{err}");
    assert!(!tmp.path().join("run").exists());
}

#[test]
fn corrupt_data_file_is_reported_as_not_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("random.safetensors");
    // Deterministic "random" bytes (an LCG), with a first u64 that is a plausible-looking length.
    let mut x = 0x2545f4914f6cdd1du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let p = path.to_str().unwrap();
    let err = fails(&["search", "--data", p, "--out", "run", "--steps", "5", "--epochs", "1"], tmp.path());
    assert!(err.contains("safetensors"), "{err}");
    assert!(err.contains(p), "{err}");
    // Also a valid file truncated in the middle.
    let data = small_data(tmp.path(), "good.safetensors");
    let good = std::fs::read(&data).unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let err = fails(&["search", "--data", p, "--out", "run2", "--steps", "5", "--epochs", "1"], tmp.path());
    assert!(err.contains("safetensors"), "{err}");
}

#[test]
fn eval_of_a_directory_that_is_not_a_run_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("empty");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let err = fails(&["eval", d], tmp.path());
    assert!(err.contains("not a run directory") && err.contains(d), "{err}");
    let err = fails(&["eval", tmp.path().join("missing").to_str().unwrap()], tmp.path());
    assert!(err.contains("not a run directory"), "{err}");
}

#[test]
fn eval_after_the_data_file_changed_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data(tmp.path(), "data.safetensors");
    ok(&["search", "--data", &data, "--out", "run", "--steps", "5", "--epochs", "1"], tmp.path());
    // Same shapes, other draws: a different file under the same name.
    ok(
        &["data", "perceptron", "--out", &data, "--dim", "8", "--train", "16", "--dev", "8", "--test", "8", "--data-seed", "21"],
        tmp.path(),
    );
    let err = fails(&["eval", "run"], tmp.path());
    assert!(err.contains("changed") && err.contains(&data), "{err}");
    // And resuming the search over it is refused too.
    let err = fails(&["search", "--data", &data, "--out", "run", "--steps", "5", "--epochs", "1"], tmp.path());
    assert!(err.contains("different search"), "{err}");
}

#[test]
fn invalid_settings_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data(tmp.path(), "data.safetensors");
    for (setting, name) in [
        ("--steps=0", "steps"),
        ("--eta=-1", "eta"),
        ("--eta=0", "eta"),
        ("--eta=NaN", "eta"),
        ("--outer-lr=-0.5", "outer_lr"),
        ("--checkpoint-every=0", "checkpoint_every"),
    ] {
        let err = fails(&["search", "--data", &data, "--out", "run", "--epochs", "1", setting], tmp.path());
        assert!(err.contains(name), "{setting}: {err}");
        assert!(!tmp.path().join("run").exists(), "{setting}: nothing is created for invalid settings");
    }
    let err = fails(&["data", "perceptron", "--out", "x.safetensors", "--dim", "0"], tmp.path());
    assert!(err.contains("dim"), "{err}");
}

#[test]
fn reproduce_into_a_run_with_other_data_options_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let base = [
        "reproduce",
        "perceptron",
        "--out",
        o,
        "--dim",
        "4",
        "--train",
        "16",
        "--dev",
        "8",
        "--test",
        "8",
        "--steps",
        "5",
        "--epochs",
        "1",
    ];
    ok(&base, tmp.path());
    let err = fails(&[&base[..], &["--label-noise", "0.1"]].concat(), tmp.path());
    assert!(err.contains("other data options"), "{err}");
}

/// Ctrl-C stops a search after the current outer epoch with its policy saved (exit status 130),
/// and the same command resumes from there: the second run stops at a later epoch.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_a_search_with_the_policy_saved_and_the_same_command_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_data(tmp.path(), "data.safetensors");
    let args = ["search", "--data", &data, "--out", "run", "--steps", "5", "--epochs", "100000000"];
    let first = interrupt(&args, tmp.path());
    assert!(first >= 1, "stopped after {first} epochs");
    assert!(tmp.path().join("run/policy.safetensors").is_file(), "the policy is saved at the stop");
    let second = interrupt(&args, tmp.path());
    assert!(second > first, "the second run resumed from epoch {first} and stopped at {second}");
}

/// `learnlaw backends` lists every backend, with cpu usable everywhere and the others either
/// usable or unavailable with a reason (never a crash).
#[test]
fn backends_lists_every_backend_and_why_one_is_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let stdout = ok(&["backends"], tmp.path());
    let lines: Vec<&str> = stdout.lines().collect();
    for name in ["cpu", "cpu-f64", "wgpu", "wgpu-f16", "cuda", "cuda-bf16", "cuda-f16"] {
        let line = lines.iter().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("no {name} line:\n{stdout}"));
        let status = line.split_whitespace().nth(1).unwrap_or("");
        assert!(status == "ok" || status == "unavailable", "{line}");
        if name.starts_with("cpu") {
            assert_eq!(status, "ok", "{line}");
        }
    }
    assert!(stdout.contains("cpu-f32, ") && stdout.contains(" threads"), "{stdout}");
}
