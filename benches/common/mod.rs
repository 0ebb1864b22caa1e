//! Shared by the benches: reading back criterion's results to print ratio tables, and the
//! exp-grad step's device-vs-host timing.
use std::time::{Duration, Instant};

use learnlaw::engine::exp_grad_rows_on_host;
use learnlaw::Engine;

/// Median time (ns) of a benchmark, from criterion's saved estimates.
#[allow(dead_code)] // the CUDA bench keeps its own timings
pub fn median_ns(group: &str, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(criterion_home().join(format!("{group}/{id}/new/estimates.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// Where criterion writes its results, by criterion's own rule: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else the workspace's target folder under `cargo bench`, else
/// `./target/criterion` (a copied bench binary run from a scratch folder, as
/// `scripts/bench_ab.py` does).
#[allow(dead_code)]
fn criterion_home() -> std::path::PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => dir.into(),
        None if std::env::var_os("CARGO").is_some() => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        None => "target".into(),
    };
    target.join("criterion")
}

/// The CPU's model name (from /proc/cpuinfo on Linux), for the tables' header.
#[allow(dead_code)]
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()));
    format!("{}, {} threads", model.unwrap_or_else(|| std::env::consts::ARCH.to_string()), rayon::current_num_threads())
}

/// One exp-grad step implementation over (engine, γ, ∂J/∂γ, step, row length).
#[allow(dead_code)] // not every bench times the policy updates
pub type ExpGrad<E> = fn(&mut E, &mut <E as Engine>::Vec, &<E as Engine>::Vec, f64, usize) -> learnlaw::Result<()>;

/// The exp-grad step on the device and through the host (download, f64 update, upload: the
/// `Engine` default), named `{backend}_exp_grad_rows_f32` and `{backend}_exp_grad_rows_host_f32`.
#[allow(dead_code)]
pub fn exp_grad_variants<E: Engine>(backend: &str) -> [(String, ExpGrad<E>); 2] {
    [
        (format!("{backend}_exp_grad_rows_f32"), |e, g, d, s, n| e.exp_grad_rows(g, d, s, n)),
        (format!("{backend}_exp_grad_rows_host_f32"), exp_grad_rows_on_host),
    ]
}

/// Time of `iters` calls of `step` on the projected policy `raw` (copied into `rows` first,
/// untimed); each call reads a flag back, so it is synchronous.
#[allow(dead_code)]
pub fn time_exp_grad<E: Engine>(
    e: &mut E,
    step: ExpGrad<E>,
    raw: &E::Vec,
    rows: &mut E::Vec,
    grad: &E::Vec,
    n: usize,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        e.copy(raw, rows).unwrap();
        e.project_simplex_rows(rows, n).unwrap();
        let start = Instant::now();
        step(e, rows, grad, 1.0, n).unwrap();
        total += start.elapsed();
    }
    total
}
