//! AUC saved per FLOP of the perceptron policy search, per outer optimiser and backend (issue 5).
//!
//! For each outer optimiser (SGD at the paper's lr, SGD at a larger lr, exponentiated gradient,
//! Adam) and each backend found (cpu f32 always; wgpu and cuda when a device exists, else a
//! SKIPPED line), it runs E outer epochs of `Search` and after every epoch retrains from θ_0 with
//! the current policy to record J (dev AUC), the AUC saved vs the constant policy (J_0 − J_e), the
//! FLOPs spent so far and AR on dev and test. The retraining always runs on the CPU f32 engine, so
//! the evaluation is identical across backends and stays out of the search's timing.
//!
//! FLOPs are analytic (`Engine::step_flops`, the same on every backend): per epoch
//! T·(forward + backward) for the unroll and its adjoint (all θ_t are kept at these sizes, so
//! nothing is recomputed), plus the outer update's per-entry count on the [T, N] policy (below).
//!
//! Beside the searches, the online policies (`learnlaw::online`, issue 14): one training run each,
//! γ_t set from step t's contributions, on the CPU f32 engine (the rules are written once over
//! `Engine`, so the FLOP count is the same on every backend). Their FLOPs: T × `online::step_flops`
//! (the training step, plus the dev gradient and per-example dots counted as one adjoint step;
//! with a held-out gate one more adjoint step's count on the held-out engine),
//! and the table gives them as a share of each search's FLOPs.
//!
//! `cargo bench --bench auc_per_flop`. Settings by environment (defaults: the paper's size):
//! LEARNLAW_BENCH_EPOCHS (50), LEARNLAW_BENCH_STEPS (T, 2000), LEARNLAW_BENCH_BACKENDS
//! ("cpu,wgpu,cuda"; "none" for the online table only), LEARNLAW_BENCH_LABEL_NOISE (0: the recipe
//! as printed), LEARNLAW_BENCH_ONLINE (the online rules, `;`-separated, each
//! `rule[,key=value…]` with keys t (τ), l (λ), k, r, a (α), gate (held-out fraction); default:
//! `ONLINE_DEFAULT`; "none" to skip).
use std::time::Instant;

use learnlaw::cuda_backend::CudaPerceptron;
use learnlaw::data::{init_theta, PerceptronData, PerceptronRecipe};
use learnlaw::eval::{acceleration_ratio, retrain, Curves};
use learnlaw::online::{self, OnlineConfig, OnlineKind};
use learnlaw::perceptron::CpuPerceptron;
use learnlaw::policy::Policy;
use learnlaw::search::{OuterOptimizer, Search, SearchConfig};
use learnlaw::unroll::Unroll;
use learnlaw::wgpu_backend::WgpuPerceptron;
use learnlaw::{Engine, Error, Real, Result};

/// AR levels on the desired (dev) set whose first epoch is reported.
const AR_LEVELS: [f64; 4] = [1.5, 2.0, 3.0, 5.0];

/// The exact projection, counted at its floor: one pass of multiply, subtract, compare per entry,
/// then the clip max(v − τ, 0). The further passes that find τ (`simplex::project`: about five
/// Newton passes over the row, in cache) are left out; the `policy` benches time them.
const PROJECTION_PER_ENTRY: f64 = 5.0;

/// Analytic FLOPs per policy entry of one outer update after the gradient (exp counted as 1).
fn update_flops_per_entry(opt: OuterOptimizer) -> f64 {
    match opt {
        // γ − lr·g (2), then the projection.
        OuterOptimizer::Sgd => 2.0 + PROJECTION_PER_ENTRY,
        // max|g| (1), then γ·exp(−s(g − min)) (4), row sum (1), divide (1).
        OuterOptimizer::ExpGrad => 7.0,
        // Moments (3 + 4), bias-corrected step (sqrt, add, divide, multiply: 4), max √v (1),
        // γ − δ (1), then the projection.
        OuterOptimizer::Adam => 13.0 + PROJECTION_PER_ENTRY,
    }
}

struct Case {
    name: &'static str,
    optimizer: OuterOptimizer,
    lr: f64,
}

fn cases() -> [Case; 4] {
    [
        Case { name: "sgd (paper lr)", optimizer: OuterOptimizer::Sgd, lr: OuterOptimizer::Sgd.default_lr() },
        Case { name: "sgd (50× lr)", optimizer: OuterOptimizer::Sgd, lr: 50.0 * OuterOptimizer::Sgd.default_lr() },
        Case { name: "exp-grad", optimizer: OuterOptimizer::ExpGrad, lr: OuterOptimizer::ExpGrad.default_lr() },
        Case { name: "adam", optimizer: OuterOptimizer::Adam, lr: OuterOptimizer::Adam.default_lr() },
    ]
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The retraining side: a CPU f32 engine, θ_0 and the constant policy's curves.
struct Evaluator {
    cpu: CpuPerceptron<f32>,
    theta0: Vec<f32>,
    unroll: Unroll,
    constant: Curves,
}

impl Evaluator {
    /// (J, AR dev, AR test) of a policy, J = (1/T) Σ_{t=0..T} L_dev(θ_t) as the search defines it.
    fn measure(&mut self, gamma: &[f32]) -> Result<(f64, Option<f64>, Option<f64>)> {
        let (c, _) = retrain(&mut self.cpu, &self.theta0, gamma, self.unroll, false)?;
        let t = self.unroll.steps;
        let j = c.dev.iter().sum::<f64>() / t as f64;
        Ok((j, acceleration_ratio(&c.dev, self.constant.dev[t]), acceleration_ratio(&c.test, self.constant.test[t])))
    }
}

/// One optimiser's run: per epoch e = 0..E, J_e, AR of γ_e, FLOPs and seconds spent up to it.
struct Outcome {
    j: Vec<f64>,
    ar_dev: Vec<Option<f64>>,
    ar_test: Vec<Option<f64>>,
    flops: Vec<f64>,
    seconds: Vec<f64>,
}

fn run_case<E: Engine>(e: &mut E, ev: &mut Evaluator, case: &Case, epochs: usize) -> Result<Outcome> {
    let (t, n) = (ev.unroll.steps, e.num_train());
    let cfg = SearchConfig { steps: t, epochs, outer_lr: case.lr, optimizer: case.optimizer, ..SearchConfig::paper_perceptron() };
    let to_e = |v: &[f32]| v.iter().map(|&x| E::Real::of(x as f64)).collect::<Vec<_>>();
    let constant = Policy::constant(t, n).gamma;
    let mut search = Search::new(e, &cfg, &to_e(&ev.theta0), &to_e(&constant), 0)?;
    let sf = e.step_flops();
    let epoch_flops = t as f64 * (sf.forward + sf.backward) + (t * n) as f64 * update_flops_per_entry(case.optimizer);
    let (j0, ar_dev0, ar_test0) = ev.measure(&constant)?;
    let mut out = Outcome { j: vec![j0], ar_dev: vec![ar_dev0], ar_test: vec![ar_test0], flops: vec![0.0], seconds: vec![0.0] };
    for epoch in 1..=epochs {
        let start = Instant::now();
        search.step(e)?; // reads J back: the device is idle when it returns
        let secs = start.elapsed().as_secs_f64();
        let gamma: Vec<f32> = search.policy(e)?.iter().map(|x| x.f64() as f32).collect();
        let (j, ar_dev, ar_test) = ev.measure(&gamma)?;
        out.j.push(j);
        out.ar_dev.push(ar_dev);
        out.ar_test.push(ar_test);
        out.flops.push(epoch as f64 * epoch_flops);
        out.seconds.push(out.seconds[epoch - 1] + secs);
        if epoch % 10 == 0 || epoch == epochs {
            eprintln!("  {} epoch {epoch}/{epochs}: J {j:.5}, AR dev {ar_dev:?}, {secs:.2} s", case.name);
        }
    }
    Ok(out)
}

fn fmt_ar(a: Option<f64>) -> String {
    a.map_or("-".into(), |a| format!("{a:.2}"))
}

/// The online rules measured by default (`LEARNLAW_BENCH_ONLINE`).
const ONLINE_DEFAULT: &str = "lookahead;lookahead,a=0.3;lookahead,gate=0.5;law;law,a=0.3;law,gate=0.5;greats;greats,r=4,a=0.3;\
                              greats,gate=0.5";

/// An online rule of `LEARNLAW_BENCH_ONLINE` and its held-out gate fraction.
fn parse_online(spec: &str) -> (OnlineConfig, Option<f64>) {
    let mut parts = spec.split(',').map(str::trim);
    let kind = OnlineKind::parse(parts.next().unwrap_or_default()).unwrap_or_else(|e| panic!("LEARNLAW_BENCH_ONLINE {spec:?}: {e}"));
    let mut cfg = OnlineConfig::new(kind);
    let mut gate = None;
    for kv in parts {
        let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("LEARNLAW_BENCH_ONLINE {spec:?}: {kv:?} is not key=value"));
        let x: f64 = v.parse().unwrap_or_else(|_| panic!("LEARNLAW_BENCH_ONLINE {spec:?}: {v:?} is not a number"));
        match k {
            "t" => cfg.temperature = x,
            "l" => cfg.strength = x,
            "k" => cfg.batch = x as usize,
            "r" => cfg.rounds = x as usize,
            "a" => cfg.mix = x,
            "gate" => gate = Some(x),
            other => panic!("LEARNLAW_BENCH_ONLINE {spec:?}: unknown key {other:?} (t, l, k, r, a, gate)"),
        }
    }
    (cfg, gate)
}

/// FLOPs of E epochs of each search case (for the online rules' share).
fn search_flops(sf: learnlaw::StepFlops, t: usize, n: usize, epochs: usize) -> Vec<(&'static str, f64)> {
    cases()
        .iter()
        .map(|c| (c.name, epochs as f64 * (t as f64 * (sf.forward + sf.backward) + (t * n) as f64 * update_flops_per_entry(c.optimizer))))
        .collect()
}

/// One training run per online rule (CPU f32), and its table.
fn run_online(data: &PerceptronData, ev: &mut Evaluator, specs: &str, epochs: usize) -> Result<()> {
    let mut e = CpuPerceptron::<f32>::new(data)?;
    let (t, n) = (ev.unroll.steps, e.num_train());
    let searches = search_flops(e.step_flops(), t, n, epochs);
    let j0 = ev.measure(&Policy::constant(t, n).gamma)?.0;
    println!("\n## online policies on {} (T = {t}, N = {n}; FLOP shares against the searches' E = {epochs} epochs)", e.name());
    println!(
        "| rule | J (dev AUC) | AUC saved | GFLOPs | AUC saved / GFLOP | % of {} FLOPs | s | AR dev | AR test | final test (const {:.5}) | gated steps |",
        searches.iter().map(|s| s.0).collect::<Vec<_>>().join(" / "),
        ev.constant.test[t]
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for spec in specs.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (cfg, gate) = parse_online(spec);
        let mut held = match gate {
            Some(f) => {
                let (search, held) = data.split_dev(f)?;
                e = CpuPerceptron::<f32>::new(&search)?;
                Some(CpuPerceptron::<f32>::new(&held)?)
            }
            None => {
                e = CpuPerceptron::<f32>::new(data)?;
                None
            }
        };
        let run = online::train_online(&mut e, held.as_mut(), &ev.theta0, ev.unroll, &cfg, &mut |_, _| {})?;
        let (j, ar_dev, ar_test) = ev.measure(&run.gamma)?;
        let (curves, _) = retrain(&mut ev.cpu, &ev.theta0, &run.gamma, ev.unroll, false)?;
        // The gate's dev gradient and N dots on the held-out engine: one more adjoint step's count.
        let gate_flops = held.as_ref().map_or(0.0, |h| h.step_flops().backward);
        let flops = t as f64 * (online::step_flops(&cfg, e.step_flops()) + gate_flops);
        let shares: Vec<String> = searches.iter().map(|s| format!("{:.2}", 100.0 * flops / s.1)).collect();
        let saved = j0 - j;
        println!(
            "| {}{} | {j:.5} | {saved:.5} | {:.2} | {:.2e} | {} | {:.2} | {} | {} | {:.5} | {} |",
            cfg.label(),
            gate.map_or(String::new(), |f| format!(" gate={f}")),
            flops / 1e9,
            saved / (flops / 1e9),
            shares.join(" / "),
            run.seconds,
            fmt_ar(ar_dev),
            fmt_ar(ar_test),
            curves.test[t],
            if gate.is_some() { run.gated_steps.to_string() } else { "-".into() }
        );
    }
    Ok(())
}

/// Runs every case on one backend's engine and prints its table.
fn run_backend<E: Engine>(mut e: E, ev: &mut Evaluator, epochs: usize) -> Result<()> {
    println!("\n## {} (T = {}, N = {}, E = {epochs})", e.name(), ev.unroll.steps, e.num_train());
    println!(
        "| optimiser | lr | J final | AUC saved | GFLOPs | AUC saved / GFLOP | s/epoch | AR dev | AR test | epochs to AR dev {} |",
        AR_LEVELS.map(|a| a.to_string()).join(" / ")
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for case in cases() {
        let o = run_case(&mut e, ev, &case, epochs)?;
        let saved = o.j[0] - o.j[epochs];
        let gflops = o.flops[epochs] / 1e9;
        let reach: Vec<String> = AR_LEVELS
            .iter()
            .map(|&level| o.ar_dev.iter().position(|a| a.is_some_and(|a| a >= level)).map_or("-".into(), |ep| ep.to_string()))
            .collect();
        println!(
            "| {} | {} | {:.5} | {:.5} | {:.1} | {:.2e} | {:.3} | {} | {} | {} |",
            case.name,
            case.lr,
            o.j[epochs],
            saved,
            gflops,
            saved / gflops,
            o.seconds[epochs] / epochs as f64,
            fmt_ar(o.ar_dev[epochs]),
            fmt_ar(o.ar_test[epochs]),
            reach.join(" / ")
        );
    }
    Ok(())
}

/// The engine, or None (with a SKIPPED line) when the backend has no device here.
fn available<E>(backend: &str, made: Result<E>) -> Option<E> {
    match made {
        Ok(e) => Some(e),
        Err(Error::Unavailable { reason, .. }) => {
            println!("\nSKIPPED {backend}: {reason}");
            None
        }
        Err(err) => panic!("{backend} engine: {err}"),
    }
}

fn main() -> Result<()> {
    let epochs: usize = env("LEARNLAW_BENCH_EPOCHS", 50);
    let steps: usize = env("LEARNLAW_BENCH_STEPS", 2000);
    let backends: String = env("LEARNLAW_BENCH_BACKENDS", "cpu,wgpu,cuda".to_string());
    let recipe = PerceptronRecipe { train_label_noise: env("LEARNLAW_BENCH_LABEL_NOISE", 0.0), ..PerceptronRecipe::default() };
    let data = PerceptronData::generate(&recipe)?;
    let unroll = Unroll { steps, eta: SearchConfig::paper_perceptron().eta };
    let theta0 = init_theta(data.dim, 10);
    let mut cpu = CpuPerceptron::<f32>::new(&data)?;
    let (constant, _) = retrain(&mut cpu, &theta0, &Policy::constant(steps, data.train.len()).gamma, unroll, false)?;
    let mut ev = Evaluator { cpu, theta0, unroll, constant };
    println!(
        "AUC per FLOP: perceptron D = {}, N = {}, K = {}, label noise {}, T = {steps}, η = {}, E = {epochs}",
        data.dim,
        data.train.len(),
        data.dev.len(),
        recipe.train_label_noise,
        unroll.eta
    );
    let specs: String = env("LEARNLAW_BENCH_ONLINE", ONLINE_DEFAULT.to_string());
    if specs != "none" {
        run_online(&data, &mut ev, &specs, epochs)?;
    }
    for backend in backends.split(',').map(str::trim) {
        match backend {
            "none" => {}
            "cpu" => run_backend(CpuPerceptron::<f32>::new(&data)?, &mut ev, epochs)?,
            "wgpu" => {
                if let Some(e) = available("wgpu", WgpuPerceptron::new(&data)) {
                    run_backend(e, &mut ev, epochs)?
                }
            }
            "cuda" => {
                if let Some(e) = available("cuda", CudaPerceptron::new(&data)) {
                    run_backend(e, &mut ev, epochs)?
                }
            }
            other => panic!("LEARNLAW_BENCH_BACKENDS: unknown backend {other:?} (cpu, wgpu, cuda)"),
        }
    }
    Ok(())
}
