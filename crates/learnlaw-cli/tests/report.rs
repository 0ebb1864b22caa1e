//! End-to-end test of `learnlaw report` on a tiny run: the figures exist as valid SVG and PNG,
//! report.md links them, analysis.json holds the fits; a run that was not evaluated is refused.
mod common;

use common::{learnlaw, ok};

const FIGURES: [&str; 6] = ["search", "loss_curves", "sim", "zero_share", "well_learned_cdf", "policy_heatmap"];

/// Width and height from a PNG's signature and IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 33, "a PNG of {} bytes", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn report_writes_figures_markdown_and_analysis() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    ok(&["data", "perceptron", "--out", "d.safetensors", "--dim", "8", "--train", "64", "--dev", "32", "--test", "32"], cwd);
    ok(&["search", "--data", "d.safetensors", "--out", "run", "--steps", "120", "--eta", "0.3", "--epochs", "3", "--outer-lr", "2"], cwd);

    // Searched but not evaluated: a clear error, no panic, nothing written.
    let out = learnlaw(&["report", "run"], cwd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("learnlaw eval") && !stderr.contains("panicked"), "{stderr}");
    assert!(!cwd.join("run/report").exists());

    ok(&["eval", "run"], cwd);
    let stdout = ok(&["report", "run"], cwd);
    assert!(stdout.contains("report in") && stdout.contains("fit (test)"), "{stdout}");
    let report = cwd.join("run/report");
    for name in FIGURES {
        let svg = std::fs::read_to_string(report.join(format!("{name}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{name}.svg is not an SVG document");
        assert!(svg.contains("<text"), "{name}.svg has no text");
        let png = std::fs::read(report.join(format!("{name}.png"))).unwrap();
        let (w, h) = png_size(&png);
        assert!(w >= 800 && h >= 500, "{name}.png is {w}×{h}");
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("| quantity | constant policy | optimised policy |"), "{md}");
    assert!(md.contains("fit (test): B") && md.contains("γ < 0.2·max γ"), "{md}");
    for name in FIGURES {
        assert!(md.contains(&format!("]({name}.png)")) && md.contains(&format!("({name}.svg)")), "{name} not linked:\n{md}");
    }
    let analysis: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report.join("analysis.json")).unwrap()).unwrap();
    assert_eq!(analysis["steps"], 120);
    let fit = &analysis["fit_test"];
    assert!(fit["constant"]["beta"].as_f64().is_some() && fit["policy"]["r2"].as_f64().is_some(), "{analysis}");
    assert!(fit["ar_from_fits"].as_f64().is_some());

    // --out elsewhere; the run directory's summary is left as it was.
    let summary = std::fs::read(cwd.join("run/summary.json")).unwrap();
    ok(&["report", "run", "--out", "elsewhere"], cwd);
    assert!(cwd.join("elsewhere/report.md").exists() && cwd.join("elsewhere/policy_heatmap.png").exists());
    assert_eq!(std::fs::read(cwd.join("run/summary.json")).unwrap(), summary);
}
