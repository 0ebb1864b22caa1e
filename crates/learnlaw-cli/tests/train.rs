//! `learnlaw train`: online policies, the constant policy and a searched policy written as run
//! directories that `eval` and `report` read like a search's.
use std::path::Path;

mod common;

use common::{fails, ok};

fn data(dir: &Path) -> String {
    let p = dir.join("data.safetensors").to_str().unwrap().to_string();
    let args = ["data", "perceptron", "--out", &p, "--dim", "8", "--train", "64", "--dev", "32", "--test", "32", "--label-noise", "0.05"];
    ok(&args, dir);
    p
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn train_online_constant_and_searched_policies_write_evaluable_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let run = |name: &str, policy: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let o = out.to_str().unwrap().to_string();
        let mut args = vec!["train", "--data", &d, "--out", &o, "--policy", policy, "--steps", "30", "--eta", "0.3"];
        args.extend_from_slice(extra);
        (ok(&args, tmp.path()), out)
    };
    for rule in ["lookahead", "law", "greats"] {
        let extra: &[&str] = if rule == "greats" { &["--batch", "16", "--rounds", "2"] } else { &[] };
        let (stdout, out) = run(rule, &format!("online:{rule}"), extra);
        assert!(stdout.contains("trained with online") && stdout.lines().any(|l| l.starts_with("AR test")), "{stdout}");
        for f in ["config.toml", "policy.safetensors", "summary.json", "curves.csv"] {
            assert!(out.join(f).is_file(), "{rule}: {f} missing");
        }
        let s = summary(&out);
        let j: Vec<f64> = s["j"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(j.len(), 2, "J of the constant policy and of the online one: {j:?}");
        assert!(j[1] < j[0], "{rule}: the online rule lowers the dev AUC: {j:?}");
        let ev = &s["evaluation"];
        assert!((ev["auc_dev_policy"].as_f64().unwrap() - j[1]).abs() < 1e-5 * j[1], "{s}");
        let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
        assert!(
            config.contains("[trained]") && config.contains("source = \"online\"") && config.contains(&format!("kind = \"{rule}\"")),
            "{config}"
        );
        // eval and report read it unchanged.
        let o = out.to_str().unwrap();
        assert!(ok(&["eval", o], tmp.path()).lines().any(|l| l.starts_with("AR test")));
        ok(&["report", o], tmp.path());
        assert!(out.join("report").join("report.md").is_file());
    }

    // The constant policy: J equal to epoch 0's, AR 1.
    let (_, out) = run("constant", "constant", &[]);
    let s = summary(&out);
    assert_eq!(s["j"][0], s["j"][1]);
    assert_eq!(s["ar"].as_f64(), Some(1.0));

    // A searched policy from a run directory (T and η come from it).
    let search = tmp.path().join("search");
    let so = search.to_str().unwrap();
    ok(&["search", "--data", &d, "--out", so, "--steps", "30", "--eta", "0.3", "--epochs", "2", "--outer-lr", "0.5"], tmp.path());
    let out = tmp.path().join("from-run");
    let o = out.to_str().unwrap();
    let stdout = ok(&["train", "--data", &d, "--out", o, "--policy", so], tmp.path());
    assert!(stdout.contains("trained with the policy of"), "{stdout}");
    let searched: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(search.join("summary.json")).unwrap()).unwrap();
    let j_search = searched["j"].as_array().unwrap().last().unwrap().as_f64().unwrap();
    let j_train = summary(&out)["j"][1].as_f64().unwrap();
    assert!((j_search - j_train).abs() < 1e-5, "retraining the searched policy gives its J: {j_search} vs {j_train}");

    // The same folder with other settings is refused; a search there too.
    let lookahead = tmp.path().join("lookahead");
    let lo = lookahead.to_str().unwrap();
    let err = fails(
        &["train", "--data", &d, "--out", lo, "--policy", "online:lookahead", "--steps", "30", "--eta", "0.3", "--mix", "0.5"],
        tmp.path(),
    );
    assert!(err.contains("holds another run") && err.contains("mix"), "{err}");
    let err = fails(&["search", "--data", &d, "--out", lo, "--steps", "30", "--eta", "0.3", "--epochs", "2"], tmp.path());
    assert!(err.contains(lo), "{err}");
}

#[test]
fn train_refuses_bad_policies_and_options() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let base = ["train", "--data", &d, "--out", o, "--steps", "10"];
    let with = |extra: &[&'static str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let err = fails(&strs(&with(&["--policy", "online:nope"])), tmp.path());
    assert!(err.contains("lookahead, law, greats"), "{err}");
    let err = fails(&strs(&with(&["--policy", "somewhere"])), tmp.path());
    assert!(err.contains("online:<lookahead|law|greats>") && err.contains("run directory"), "{err}");
    let err = fails(&strs(&with(&["--policy", "online:lookahead", "--mix", "2"])), tmp.path());
    assert!(err.contains("mix"), "{err}");
    let err = fails(&strs(&with(&["--policy", "online:greats", "--batch", "65"])), tmp.path());
    assert!(err.contains("batch") && err.contains("64"), "{err}");
    let err = fails(&strs(&with(&["--policy", "constant", "--gate-holdout", "0.5"])), tmp.path());
    assert!(err.contains("--gate-holdout"), "{err}");
    // The gate: it runs, and says how often it fell back to the constant policy.
    let stdout = ok(&strs(&with(&["--policy", "online:law", "--gate-holdout", "0.5"])), tmp.path());
    assert!(stdout.contains("held-out gate chose the constant policy at"), "{stdout}");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
