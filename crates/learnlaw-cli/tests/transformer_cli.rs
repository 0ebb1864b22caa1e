//! End-to-end test of the Transformer commands on a tiny model: `data text`, `reproduce
//! transformer` (search + evaluation, then a second call that resumes nothing; on wgpu the same
//! J as on cpu), and clear errors for data of the wrong task or a backend the task lacks.
mod common;

use common::{fails, ok};

const TINY: [&str; 18] = [
    "--train",
    "24",
    "--dev",
    "8",
    "--test",
    "8",
    "--context",
    "8",
    "--vocab",
    "60",
    "--hidden",
    "8",
    "--heads",
    "2",
    "--layers",
    "1",
    "--steps",
    "10",
];

#[test]
fn reproduce_transformer_searches_evaluates_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["reproduce", "transformer", "--out", "run", "--epochs", "2", "--optimizer", "exp-grad"];
    args.extend(TINY);
    let out = ok(&args, tmp.path());
    assert!(out.contains("AR test"), "{out}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("run/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["task"], "transformer");
    let j: Vec<f64> = summary["j"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(j.len(), 3, "{j:?}");
    assert!(j[2] < j[0], "J decreases: {j:?}");
    assert!(tmp.path().join("run/tokenizer.json").exists());
    let config = std::fs::read_to_string(tmp.path().join("run/config.toml")).unwrap();
    assert!(config.contains("[model]") && config.contains("hidden = 8"), "{config}");
    // The same command again finds the search done and only re-evaluates.
    let again = ok(&args, tmp.path());
    assert!(again.contains("search done"), "{again}");
    // Changed data options on the same run directory are refused, not silently ignored.
    let err = fails(&[&args[..], &["--data-seed", "21"]].concat(), tmp.path());
    assert!(err.contains("other data options"), "{err}");
}

/// The same reproduction on the wgpu backend (lavapipe in CI) gives the cpu backend's J history.
#[test]
fn reproduce_transformer_on_wgpu_matches_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let j = |backend: &str| -> Option<Vec<f64>> {
        let mut args = vec!["reproduce", "transformer", "--out", backend, "--epochs", "2", "--backend", backend];
        args.extend(TINY);
        let out = common::learnlaw(&args, tmp.path());
        let stderr = common::text(&out.stderr);
        if !out.status.success() && stderr.contains("no adapter") && std::env::var("LEARNLAW_REQUIRE_WGPU").is_err() {
            eprintln!("SKIPPED: no wgpu adapter");
            return None;
        }
        assert!(out.status.success(), "{backend}: {stderr}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join(backend).join("summary.json")).unwrap()).unwrap();
        Some(summary["j"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
    };
    let Some(gpu) = j("wgpu") else { return };
    let cpu = j("cpu").unwrap();
    assert_eq!(gpu.len(), cpu.len());
    for (g, c) in gpu.iter().zip(&cpu) {
        assert!((g - c).abs() <= 1e-4 * c.abs(), "J on wgpu {gpu:?} vs cpu {cpu:?}");
    }
}

#[test]
fn wrong_data_and_missing_backends_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    ok(&["data", "perceptron", "--out", "p/data.safetensors", "--dim", "4", "--train", "8", "--dev", "4", "--test", "4"], tmp.path());
    let err = fails(&["search", "--task", "transformer", "--data", "p/data.safetensors", "--out", "r"], tmp.path());
    assert!(err.contains("loading transformer data") && err.contains("use --task perceptron"), "{err}");
    let mut args = vec!["data", "text", "--out", "t/tokens.safetensors"];
    args.extend(&TINY[..10]);
    let out = ok(&args, tmp.path());
    assert!(out.contains("tokenizer.json"), "{out}");
    let err = fails(&["search", "--data", "t/tokens.safetensors", "--out", "r"], tmp.path());
    assert!(err.contains("loading perceptron data") && err.contains("use --task transformer"), "{err}");
    let err = fails(
        &[
            "search",
            "--task",
            "transformer",
            "--data",
            "t/tokens.safetensors",
            "--out",
            "r",
            "--backend",
            "cuda-f16",
            "--hidden",
            "8",
            "--heads",
            "2",
        ],
        tmp.path(),
    );
    assert!(err.contains("cpu, cpu-f64, wgpu, cuda and cuda-bf16 backends, not cuda-f16"), "{err}");
}

/// A user corpus (one story per line) instead of generated stories: its last dev + test stories
/// become the dev and test sets; too small a corpus is a clear error.
#[test]
fn data_text_reads_a_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let stories: Vec<String> =
        (0..40).map(|i| format!("Once upon a time, a cat named Tom{} found a red ball. He was happy.", i % 7)).collect();
    std::fs::write(tmp.path().join("stories.txt"), stories.join("\n")).unwrap();
    let out = ok(
        &[
            "data",
            "text",
            "--out",
            "c.safetensors",
            "--corpus",
            "stories.txt",
            "--train",
            "30",
            "--dev",
            "5",
            "--test",
            "5",
            "--context",
            "8",
            "--vocab",
            "80",
        ],
        tmp.path(),
    );
    assert!(out.contains("train 30, dev 5, test 5"), "{out}");
    let err = fails(
        &["data", "text", "--out", "d.safetensors", "--corpus", "stories.txt", "--train", "30", "--dev", "20", "--test", "20"],
        tmp.path(),
    );
    assert!(err.contains("dev + test alone need 40"), "{err}");
}
