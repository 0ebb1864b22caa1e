//! θ in and out (`learnlaw export`, `--theta0`) and token files without a test set, end to end on
//! tiny models: the official state dict's names and shapes, export → `--theta0` → the same J,
//! f64 θ_0 kept exact on cpu-f64, θ_0 recorded for resumes and evaluations, clear refusals.
mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok};
use serde_json::Value;

/// Data and model of a tiny Transformer run (2 layers, so block indices are checked).
const TINY_DATA: [&str; 10] = ["--train", "24", "--dev", "8", "--test", "8", "--context", "8", "--vocab", "60"];
const TINY_MODEL: [&str; 8] = ["--hidden", "8", "--heads", "2", "--layers", "2", "--steps", "10"];

/// A safetensors file's header: {name: {dtype, shape, data_offsets}, "__metadata__": {…}}.
fn header(path: &Path) -> serde_json::Map<String, Value> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&b[8..8 + n]).unwrap()
}

/// A tensor's values (F32 or F64) and its dtype.
fn tensor(path: &Path, name: &str) -> (Vec<f64>, String) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h = header(path);
    let t = &h[name];
    let (s, e) = (t["data_offsets"][0].as_u64().unwrap() as usize, t["data_offsets"][1].as_u64().unwrap() as usize);
    let data = &b[8 + n + s..8 + n + e];
    let dtype = t["dtype"].as_str().unwrap().to_string();
    let values = match dtype.as_str() {
        "F32" => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        "F64" => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        d => panic!("dtype {d}"),
    };
    (values, dtype)
}

/// Writes a safetensors file of F32/F64 tensors (name, dtype, shape, values).
fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<f64>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, values) in tensors {
        let start = data.len();
        for &v in values {
            match *dtype {
                "F32" => data.extend((v as f32).to_le_bytes()),
                _ => data.extend(v.to_le_bytes()),
            }
        }
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

fn j_history(run: &Path) -> Vec<f64> {
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    summary["j"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

/// The official `transformer_model.Transformer`'s state dict for hidden 8, 2 layers, context 8 and
/// vocabulary `v`, written out from the official `modeling.py`: `nn.Linear(in, out)` stores its
/// weight as [out, in], embeddings are [rows, hidden], RMSLayerNorm has a weight and a bias, and the
/// causal mask is a non-persistent buffer (not in the state dict).
fn official_keys(v: u64) -> Vec<(String, Vec<u64>)> {
    let mut keys = vec![
        ("base_model.word_embed.weight".to_string(), vec![v, 8]),
        ("base_model.pos_embed.weight".into(), vec![8, 8]),
        ("base_model.lm_head.weight".into(), vec![v, 8]),
        ("base_model.ln_end.weight".into(), vec![8]),
        ("base_model.ln_end.bias".into(), vec![8]),
    ];
    for l in 0..2 {
        for w in ["w_q", "w_k", "w_v", "w_o"] {
            keys.push((format!("base_model.blocks.{l}.attn.{w}.weight"), vec![8, 8]));
        }
        keys.push((format!("base_model.blocks.{l}.ffn.mlp_1.weight"), vec![32, 8]));
        keys.push((format!("base_model.blocks.{l}.ffn.mlp_2.weight"), vec![8, 32]));
        for n in ["ln_1", "ln_2"] {
            keys.push((format!("base_model.blocks.{l}.{n}.weight"), vec![8]));
            keys.push((format!("base_model.blocks.{l}.{n}.bias"), vec![8]));
        }
    }
    keys.sort();
    keys
}

/// Runs scripts/check_export.py on an export (torch when importable, else the script's
/// pure-Python reference of the official forward pass); skipped, visibly, without python3.
fn python_check(export: &Path, data: &Path) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_export.py");
    let out = match std::process::Command::new("python3").arg(&script).arg(export).arg("--data").arg(data).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED: scripts/check_export.py (no python3: {e})");
            return;
        }
    };
    let (stdout, stderr) = (common::text(&out.stdout), common::text(&out.stderr));
    eprintln!("{stdout}");
    assert!(out.status.success() && stdout.contains("OK"), "check_export.py failed:\n{stdout}\n{stderr}");
}

#[test]
fn transformer_export_has_the_official_state_dict_and_theta0_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["reproduce", "transformer", "--out", "run", "--epochs", "2"];
    args.extend(TINY_DATA);
    args.extend(TINY_MODEL);
    ok(&args, tmp.path());
    let out = ok(&["export", "run", "--steps", "4,2"], tmp.path());
    assert!(out.contains("t = 0, 2, 4, 10") && out.contains("theta_final.safetensors"), "{out}");
    let export = tmp.path().join("run/export");
    let vocab: u64 = header(&tmp.path().join("run/data.safetensors"))["__metadata__"]["vocab_size"].as_str().unwrap().parse().unwrap();
    for stem in ["theta_0", "theta_2", "theta_4", "theta_final"] {
        let h = header(&export.join(format!("{stem}.safetensors")));
        let mut got: Vec<(String, Vec<u64>)> = h
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, t)| {
                assert_eq!(t["dtype"], "F32", "{stem} {k}");
                (k.clone(), t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect())
            })
            .collect();
        got.sort();
        assert_eq!(got, official_keys(vocab), "{stem}");
        let meta = &h["__metadata__"];
        let config: Value = serde_json::from_str(meta["config"].as_str().unwrap()).unwrap();
        assert_eq!(config, serde_json::json!({"vocab_size": vocab, "max_len": 8, "hidden_size": 8, "num_head": 2, "num_layers": 2}));
        assert_eq!(meta["learnlaw_format"], "official");
    }
    // θ moves during training, and the losses file has one [N] vector per θ.
    assert_ne!(
        tensor(&export.join("theta_0.safetensors"), "base_model.lm_head.weight").0,
        tensor(&export.join("theta_final.safetensors"), "base_model.lm_head.weight").0
    );
    assert_eq!(tensor(&export.join("train_losses.safetensors"), "theta_4").0.len(), 24);
    python_check(&export, &tmp.path().join("run/data.safetensors"));

    // export → --theta0 → the same J as the original run (it started from the same θ_0).
    let mut again = vec!["search", "--task", "transformer", "--data", "run/data.safetensors", "--out", "from-export", "--epochs", "2"];
    again.extend(TINY_MODEL);
    again.extend(["--theta0", "run/export/theta_0.safetensors"]);
    ok(&again, tmp.path());
    assert_eq!(j_history(&tmp.path().join("from-export")), j_history(&tmp.path().join("run")));
    let config = std::fs::read_to_string(tmp.path().join("from-export/config.toml")).unwrap();
    assert!(config.contains("[theta0]") && config.contains("theta_0.safetensors") && config.contains("fingerprint"), "{config}");
    // …and from another θ_0 (the trained one) another J.
    let mut other = again.clone();
    other[6] = "from-final";
    *other.last_mut().unwrap() = "run/export/theta_final.safetensors";
    ok(&other, tmp.path());
    assert_ne!(j_history(&tmp.path().join("from-final"))[0], j_history(&tmp.path().join("run"))[0]);
    // learnlaw's own format round-trips too.
    ok(&["export", "run", "--format", "learnlaw", "--out", "flat"], tmp.path());
    let (flat, dtype) = tensor(&tmp.path().join("flat/theta_0.safetensors"), "theta");
    // Embeddings and head (vocabulary × 8 each), positions 8 × 8, per block 4 attention matrices, the
    // FFN's 2 × 8 × 32 and two norms, and the final norm.
    let params = 2 * vocab as usize * 8 + 8 * 8 + 2 * (4 * 64 + 2 * 8 * 32 + 4 * 8) + 16;
    assert_eq!((flat.len(), dtype.as_str()), (params, "F32"));
    let mut flat_run = again.clone();
    flat_run[6] = "from-flat";
    *flat_run.last_mut().unwrap() = "flat/theta_0.safetensors";
    ok(&flat_run, tmp.path());
    assert_eq!(j_history(&tmp.path().join("from-flat")), j_history(&tmp.path().join("run")));
    // An export never replaces a file it did not write.
    std::fs::write(tmp.path().join("flat/theta_final.safetensors"), "mine").unwrap();
    let err = fails(&["export", "run", "--format", "learnlaw", "--out", "flat"], tmp.path());
    assert!(err.contains("not written by learnlaw") && err.contains("theta_final.safetensors"), "{err}");
    let err = fails(&["export", "run", "--steps", "11"], tmp.path());
    assert!(err.contains("T = 10"), "{err}");
}

#[test]
fn perceptron_export_and_f64_theta0() {
    let tmp = tempfile::tempdir().unwrap();
    let data = ["--dim", "4", "--train", "16", "--dev", "8", "--test", "8", "--label-noise", "0.1"];
    let search = ["--steps", "12", "--epochs", "2", "--outer-lr", "0.01"];
    ok(&[&["reproduce", "perceptron", "--out", "p"][..], &data, &search].concat(), tmp.path());
    ok(&["export", "p", "--steps", "5"], tmp.path());
    let h = header(&tmp.path().join("p/export/theta_0.safetensors"));
    let keys: Vec<&String> = h.keys().filter(|k| *k != "__metadata__").collect();
    assert_eq!(keys, ["linear.weight"]);
    assert_eq!(h["linear.weight"]["shape"], serde_json::json!([1, 4]));
    python_check(&tmp.path().join("p/export"), &tmp.path().join("p/data.safetensors"));
    let mut from = vec!["search", "--data", "p/data.safetensors", "--out", "p2", "--theta0", "p/export/theta_0.safetensors"];
    from.extend(search);
    ok(&from, tmp.path());
    assert_eq!(j_history(&tmp.path().join("p2")), j_history(&tmp.path().join("p")));

    // A θ_0 in f64 stays f64 on cpu-f64: the run's exported θ_0 is the file's, bit for bit.
    let theta0 = vec![0.1, -0.2 + 1e-13, 0.3, 1.0 / 3.0];
    assert!(theta0.iter().any(|&v| (v as f32) as f64 != v), "values f32 cannot hold");
    write_safetensors(&tmp.path().join("t64.safetensors"), &[("theta", "F64", vec![4], theta0.clone())]);
    let mut f64_run = vec!["search", "--data", "p/data.safetensors", "--out", "p64", "--backend", "cpu-f64", "--theta0", "t64.safetensors"];
    f64_run.extend(search);
    ok(&f64_run, tmp.path());
    ok(&["export", "p64", "--format", "learnlaw"], tmp.path());
    assert_eq!(tensor(&tmp.path().join("p64/export/theta_0.safetensors"), "theta"), (theta0.clone(), "F64".to_string()));
    // The official format is f32, as the official module.
    ok(&["export", "p64", "--out", "p64/official"], tmp.path());
    assert_eq!(tensor(&tmp.path().join("p64/official/theta_0.safetensors"), "linear.weight").1, "F32");
}

#[test]
fn the_run_records_its_theta0_for_resumes_and_evaluations() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    ok(&["data", "perceptron", "--out", "d.safetensors", "--dim", "3", "--train", "12", "--dev", "6", "--test", "6"], p);
    write_safetensors(&p.join("a.safetensors"), &[("linear.weight", "F32", vec![1, 3], vec![0.5, -0.5, 0.25])]);
    write_safetensors(&p.join("b.safetensors"), &[("linear.weight", "F32", vec![1, 3], vec![0.1, 0.2, 0.3])]);
    let search = |out: &str, theta0: Option<&str>| {
        let mut a = vec!["search", "--data", "d.safetensors", "--out", out, "--steps", "8", "--epochs", "2"];
        if let Some(t) = theta0 {
            a.extend(["--theta0", t]);
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: &[String]| ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), p);
    let refused = |args: &[String]| fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), p);
    run(&search("r", Some("a.safetensors")));
    // A resume from another θ_0, or from none, is another search.
    let err = refused(&search("r", Some("b.safetensors")));
    assert!(err.contains("--theta0 file's contents"), "{err}");
    let err = refused(&search("r", None));
    assert!(err.contains("none (θ_0 from --init-seed or the data) now"), "{err}");
    // eval starts from the recorded θ_0: the same numbers as the search's.
    run(&["eval".into(), "r".into()]);
    let summary =
        |dir: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(p.join(dir).join("summary.json")).unwrap()).unwrap() };
    let evaluation = summary("r")["evaluation"].clone();
    let (auc, j) = (evaluation["auc_dev_policy"].as_f64().unwrap(), *j_history(&p.join("r")).last().unwrap());
    assert!((auc - j).abs() <= 1e-6 * j, "eval's AUC {auc} vs the search's J {j}");
    // A moved θ_0 file: eval says so, and takes its new place when the contents are the same.
    std::fs::rename(p.join("a.safetensors"), p.join("moved.safetensors")).unwrap();
    let err = fails(&["eval", "r"], p);
    assert!(err.contains("a.safetensors is gone") && err.contains("--theta0"), "{err}");
    let err = fails(&["eval", "r", "--theta0", "b.safetensors"], p);
    assert!(err.contains("is not the θ_0 the search started from"), "{err}");
    ok(&["eval", "r", "--theta0", "moved.safetensors"], p);
    assert_eq!(summary("r")["evaluation"], evaluation);
    let out = run(&search("r", Some("moved.safetensors")));
    assert!(out.contains("resuming with --theta0") && out.contains("the file moved"), "{out}");
    // A θ_0 file changed in place is refused, like changed data.
    write_safetensors(&p.join("moved.safetensors"), &[("linear.weight", "F32", vec![1, 3], vec![9.0, 9.0, 9.0])]);
    let err = fails(&["eval", "r"], p);
    assert!(err.contains("changed since the search ran"), "{err}");
    // A run without a θ_0 file has nothing to relocate.
    run(&search("seeded", None));
    let err = fails(&["eval", "seeded", "--theta0", "b.safetensors"], p);
    assert!(err.contains("--init-seed 10"), "{err}");
}

#[test]
fn bad_theta0_files_and_unexpressible_exports_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let mut data = vec!["data", "text", "--out", "t.safetensors"];
    data.extend(TINY_DATA);
    ok(&data, p);
    let search = |out: &'static str, extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = vec!["search", "--task", "transformer", "--data", "t.safetensors", "--out", out, "--epochs", "1"];
        a.extend(TINY_MODEL);
        a.extend(extra);
        a
    };
    // The official module has an FFN of 4 × hidden and scores scaled by 1/√hidden.
    ok(&search("ffn", &["--ffn", "24"]), p);
    let err = fails(&["export", "ffn"], p);
    assert!(err.contains("cannot express") && err.contains("4 × hidden = 32") && err.contains("--format learnlaw"), "{err}");
    assert!(!p.join("ffn/export/theta_0.safetensors").exists());
    ok(&["export", "ffn", "--format", "learnlaw"], p);
    ok(&search("scale", &["--attention-scale", "head-dim"]), p);
    let err = fails(&["export", "scale"], p);
    assert!(err.contains("1/√hidden"), "{err}");

    // θ_0 files: a NaN, an unknown key, another model's shapes; each refused before the run starts.
    ok(&["export", "ffn", "--format", "learnlaw", "--out", "e"], p);
    let (theta, _) = tensor(&p.join("e/theta_0.safetensors"), "theta");
    let mut nan = theta.clone();
    nan[7] = f64::NAN;
    write_safetensors(&p.join("nan.safetensors"), &[("theta", "F32", vec![nan.len()], nan)]);
    let err = fails(&search("bad", &["--ffn", "24", "--theta0", "nan.safetensors"]), p);
    assert!(err.contains("non-finite value NaN at flat index 7") && err.contains("nan.safetensors"), "{err}");
    write_safetensors(
        &p.join("two.safetensors"),
        &[("theta", "F32", vec![theta.len()], theta.clone()), ("step", "F32", vec![1], vec![0.0])],
    );
    let err = fails(&search("bad", &["--ffn", "24", "--theta0", "two.safetensors"]), p);
    assert!(err.contains("other tensors too (step)"), "{err}");
    let err = fails(&search("bad", &["--theta0", "e/theta_0.safetensors"]), p);
    assert!(err.contains("shape mismatch in theta"), "{err}");
    ok(&search("official", &[]), p);
    ok(&["export", "official"], p);
    let wider =
        ["search", "--task", "transformer", "--data", "t.safetensors", "--out", "bad", "--hidden", "16", "--heads", "2", "--layers", "2"];
    let err = fails(&[&wider[..], &["--theta0", "official/export/theta_0.safetensors"]].concat(), p);
    assert!(err.contains("base_model.word_embed.weight") && err.contains("the file holds") && err.contains("hidden 8"), "{err}");
    assert!(!p.join("bad").exists(), "a refused θ_0 leaves no run behind");
}

#[test]
fn a_token_file_without_a_test_set_is_for_searching() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let mut data = vec!["data", "text", "--out", "s.safetensors"];
    data.extend(TINY_DATA);
    assert_eq!(data[8], "--test");
    data[9] = "0";
    let out = ok(&data, p);
    assert!(out.contains("test 0"), "{out}");
    assert_eq!(header(&p.join("s.safetensors"))["test"]["shape"], serde_json::json!([0, 9]));
    let mut search = vec!["search", "--task", "transformer", "--data", "s.safetensors", "--epochs", "2"];
    search.extend(TINY_MODEL);
    let out = ok(&[&search[..], &["--out", "r"]].concat(), p);
    assert!(out.contains("search done"), "{out}");
    assert_eq!(j_history(&p.join("r")).len(), 3);
    ok(&["export", "r"], p);
    // The wgpu engine takes an empty set too (lavapipe in CI).
    let on_wgpu = common::learnlaw(&[&search[..], &["--out", "rw", "--backend", "wgpu"]].concat(), p);
    let stderr = common::text(&on_wgpu.stderr);
    if !on_wgpu.status.success() && stderr.contains("no adapter") && std::env::var("LEARNLAW_REQUIRE_WGPU").is_err() {
        eprintln!("SKIPPED: no wgpu adapter");
    } else {
        assert!(on_wgpu.status.success(), "{stderr}");
        let (gpu, cpu) = (j_history(&p.join("rw")), j_history(&p.join("r")));
        assert!(gpu.iter().zip(&cpu).all(|(g, c)| (g - c).abs() <= 1e-4 * c.abs()), "wgpu {gpu:?} vs cpu {cpu:?}");
    }
    let err = fails(&["eval", "r"], p);
    assert!(err.contains("no test set") && err.contains("search-only"), "{err}");
    let mut reproduce = vec!["reproduce", "transformer", "--data", "s.safetensors", "--out", "rr", "--epochs", "2"];
    reproduce.extend(TINY_MODEL);
    let err = fails(&reproduce, p);
    assert!(err.contains("no test set"), "{err}");
    assert!(!p.join("rr/policy.safetensors").exists(), "refused before the search");
}

/// scripts/convert_official_data.py on files laid out like the official data (written by
/// torch.save when torch is importable, else by the test's stand-in for its zip format), and
/// `learnlaw search`/`eval` on what it writes; skipped, visibly, without python3.
#[test]
fn the_official_data_converts_to_files_learnlaw_reads() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test_convert_official_data.py");
    let out = match std::process::Command::new("python3").arg(&script).args(["--learnlaw", env!("CARGO_BIN_EXE_learnlaw")]).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED: scripts/test_convert_official_data.py (no python3: {e})");
            return;
        }
    };
    let (stdout, stderr) = (common::text(&out.stdout), common::text(&out.stderr));
    assert!(out.status.success() && stdout.contains("OK: convert_official_data.py"), "{stdout}\n{stderr}");
    assert!(stdout.contains("learnlaw searched the converted files"), "{stdout}");
}
