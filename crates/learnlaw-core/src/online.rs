//! Online policies: γ_t set from the state at step t only, while training, without an unroll.
//!
//! The search (`search`) differentiates J through the whole run: E outer epochs of a forward
//! unroll and an adjoint. An online rule instead looks at step t's contributions
//! CT_{n,t} = ∇l_n(θ_t)·∇L_dev(θ_t) — one dev gradient (`Engine::loss_grad`) and one per-example
//! dot pass (`Engine::train_dots`), no per-example gradients — and sets γ_t from them, at a few
//! times the cost of plain training. To first order one step with weights γ lowers the desired
//! loss by η Σ_n γ_n CT_n (L_dev(θ_{t+1}) ≈ L_dev(θ_t) − η γ·CT), so the rules differ in how they
//! trade that first-order gain against staying near the constant policy u = 1/N:
//!
//! - `Lookahead` (entropy-regularised one-step lookahead): γ = argmax_{γ ∈ Δ} γ·ĈT − τ·KL(γ‖u) =
//!   softmax(ĈT/τ), with ĈT = CT / rms(CT) (scale-free: CT shrinks by orders of magnitude over a
//!   run, so a fixed τ on raw CT would mean a greedy rule early and the constant policy late). The
//!   KL to the constant policy is the regulariser: the plain first-order problem is linear and its
//!   solution a vertex (all weight on argmax CT, one example per step), which overfits the desired
//!   set and forgets the rest; τ → ∞ gives the constant policy, τ → 0 the greedy vertex.
//!   Every weight stays positive, so an example with CT ≤ 0 still gets e^{ĈT/τ}/Z.
//! - `Law` (a Learning-Law rule): zero weight where CT ≤ 0 (Property 4.1), and on the helpful set
//!   S = {CT > 0} the L2-regularised lookahead γ_S = argmax_{γ ∈ Δ(S)} γ·ĈT − (λ/2)·|S|·‖γ − u_S‖²
//!   = Π_Δ(u_S + ĈT_S/(λ|S|)), with ĈT = CT / mean_S(CT). Its weights are linear in CT above a
//!   threshold (water-filling): the examples of largest contribution get the most weight, so
//!   they are fitted fastest and their CT falls toward the others', which drives the weighted
//!   examples' contributions toward the equality the Learning Law states for the optimum; examples
//!   below the threshold wait until the leaders come down to them. λ → ∞ gives uniform weight on S
//!   (the "greedy rule" of issue 14's caution), λ → 0 the single best example.
//! - `Greats`: GREATS-style greedy batch selection (Wang, Wu, Song, Jia, Liu, Wang: "GREATS: Online
//!   Selection of High-Quality Data for LLM Training", NeurIPS 2024). It picks a batch B of k
//!   examples maximising the Taylor-expanded one-step gain of L_dev, with the Hessian replaced by
//!   the identity: gain(n | B) ∝ CT_n − η·∇l_n·Σ_{m∈B}∇l_m / k. GREATS needs the pairwise
//!   ∇l_n·∇l_m (the "ghost inner product"); through `Engine` we get ∇l_n·v for any v, so the
//!   selection runs in `rounds`: each round takes the best k/rounds examples by the current gain,
//!   then one weighted-gradient pass gives v = Σ_{m∈B}∇l_m and one dot pass updates the gains.
//!   γ is uniform on B (GREATS' batch). The ‖∇l_n‖² self-term is left out (it needs per-example
//!   norms, which `Engine` does not expose).
//!
//! Every rule is then mixed with the constant policy, γ ← (1 − α)·γ + α·u (`mix` α ∈ [0, 1]):
//! α = 1 is the constant policy, and every example keeps at least α/N (with α > 0 the `Law` rule's
//! zeros become α/N). A step whose contributions are all ≤ 0 (or all zero) falls back to u.
//!
//! The rules use whatever desired set the engine holds; `train_online` can also take a second
//! engine holding a held-out part of the desired set and then *gates* each step: it keeps the
//! rule's γ only when its first-order gain on the held-out part, γ·CT_held, is at least the
//! constant policy's, u·CT_held, and uses u otherwise — the online form of early stopping on
//! held-out desired data.
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Set};
use crate::{simplex, Error, Real, Result};

/// Which online rule sets γ_t.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnlineKind {
    /// Entropy-regularised one-step lookahead: softmax of the normalised contributions.
    Lookahead,
    /// Zero weight where CT ≤ 0; L2-regularised lookahead (water-filling) on CT > 0.
    Law,
    /// GREATS-style greedy selection of a batch of k examples, uniform weight on it.
    Greats,
}

impl OnlineKind {
    pub const ALL: [OnlineKind; 3] = [OnlineKind::Lookahead, OnlineKind::Law, OnlineKind::Greats];

    pub fn name(self) -> &'static str {
        match self {
            OnlineKind::Lookahead => "lookahead",
            OnlineKind::Law => "law",
            OnlineKind::Greats => "greats",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::config("online policy", name, format!("unknown rule; one of {}", Self::ALL.map(|k| k.name()).join(", "))))
    }
}

/// An online rule and its regularisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineConfig {
    pub kind: OnlineKind,
    /// `Lookahead`: the temperature τ on CT/rms(CT) (∞: constant policy, → 0: greedy).
    pub temperature: f64,
    /// `Law`: the L2 strength λ on |S|·‖γ − u_S‖² (∞: uniform on CT > 0, → 0: the best example).
    pub strength: f64,
    /// `Greats`: the batch size k (at most N).
    pub batch: usize,
    /// `Greats`: selection rounds (1: top-k by CT, no interaction term; at most k).
    pub rounds: usize,
    /// α: the weight of the constant policy in the final mix (0: the rule alone, 1: constant).
    pub mix: f64,
}

impl OnlineConfig {
    /// The defaults (from the perceptron sweeps of docs/EXPERIMENTS.md, clean and 3%-label-noise
    /// data): τ = 0.5, λ = 10, k = 1024, one round, no mix.
    pub fn new(kind: OnlineKind) -> Self {
        OnlineConfig { kind, temperature: 0.5, strength: 10.0, batch: 1024, rounds: 1, mix: 0.0 }
    }

    /// A short description for logs and benchmark tables, e.g. `lookahead τ=1 α=0`.
    pub fn label(&self) -> String {
        let main = match self.kind {
            OnlineKind::Lookahead => format!("τ={}", self.temperature),
            OnlineKind::Law => format!("λ={}", self.strength),
            OnlineKind::Greats => format!("k={} r={}", self.batch, self.rounds),
        };
        format!("{} {main} α={}", self.kind.name(), self.mix)
    }

    pub fn validate(&self, n: usize) -> Result<()> {
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(Error::config("temperature", self.temperature, "must be > 0 (use a large value for the constant policy)"));
        }
        if self.strength.is_nan() || self.strength <= 0.0 {
            return Err(Error::config("strength", self.strength, "must be > 0 (use a large value for uniform weight on CT > 0)"));
        }
        if !(0.0..=1.0).contains(&self.mix) {
            return Err(Error::config("mix", self.mix, "must be between 0 and 1"));
        }
        if self.kind == OnlineKind::Greats {
            if self.batch == 0 || self.batch > n {
                return Err(Error::config("batch", self.batch, format!("must be between 1 and the training examples N = {n}")));
            }
            if self.rounds == 0 || self.rounds > self.batch {
                return Err(Error::config("rounds", self.rounds, format!("must be between 1 and the batch size {}", self.batch)));
            }
        }
        Ok(())
    }
}

/// `Lookahead`: softmax(CT/(τ·rms CT)); the constant policy when CT is all zero or not finite.
pub fn lookahead_weights(ct: &[f64], temperature: f64) -> Vec<f64> {
    let n = ct.len();
    let rms = (ct.iter().map(|c| c * c).sum::<f64>() / n as f64).sqrt();
    if !(rms.is_finite() && rms > 0.0) {
        return vec![1.0 / n as f64; n];
    }
    let z: Vec<f64> = ct.iter().map(|c| c / (rms * temperature)).collect();
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let w: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|v| v / sum).collect()
}

/// `Law`: 0 where CT ≤ 0, Π_Δ(1/|S| + (CT/mean_S CT)/(λ|S|)) on S = {CT > 0}; the constant
/// policy when no contribution is positive.
pub fn law_weights(ct: &[f64], strength: f64) -> Vec<f64> {
    let n = ct.len();
    let support: Vec<usize> = (0..n).filter(|&i| ct[i] > 0.0 && ct[i].is_finite()).collect();
    if support.is_empty() {
        return vec![1.0 / n as f64; n];
    }
    let s = support.len() as f64;
    let mean = support.iter().map(|&i| ct[i]).sum::<f64>() / s;
    let mut v: Vec<f64> = support.iter().map(|&i| 1.0 / s + ct[i] / (mean * strength * s)).collect();
    simplex::project(&mut v);
    let mut w = vec![0.0; n];
    for (&i, &x) in support.iter().zip(&v) {
        w[i] = x;
    }
    w
}

/// (1 − α)·w + α/N, in place.
pub fn mix_with_constant(w: &mut [f64], mix: f64) {
    let u = 1.0 / w.len() as f64;
    w.iter_mut().for_each(|x| *x = (1.0 - mix) * *x + mix * u);
}

/// The indices of the `k` largest values (ties by index), excluding `taken`.
fn top_k(score: &[f64], taken: &[bool], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..score.len()).filter(|&i| !taken[i]).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// What one online step measured (host side).
#[derive(Clone, Debug, Default)]
pub struct StepInfo {
    /// L_dev(θ_t) on the engine's desired set.
    pub dev_loss: f64,
    /// The first-order gain γ·CT of the weights chosen, and of the constant policy (u·CT).
    pub gain: f64,
    pub gain_constant: f64,
    /// Whether the held-out gate replaced the rule's weights by the constant policy.
    pub gated: bool,
}

/// An online policy's buffers on one engine: call `weights` at every step.
pub struct OnlinePolicy<E: Engine> {
    pub config: OnlineConfig,
    g_dev: E::Vec,
    ct: E::Vec,
    // Greats: the selected batch's indicator weights, θ − η∇ and its gradient.
    sel: E::Vec,
    stepped: E::Vec,
    diff: E::Vec,
    inter: E::Vec,
}

impl<E: Engine> OnlinePolicy<E> {
    pub fn new(e: &mut E, config: OnlineConfig) -> Result<Self> {
        let (p, n) = (e.num_params(), e.num_train());
        config.validate(n)?;
        let greats = config.kind == OnlineKind::Greats;
        let small = |e: &mut E, len: usize| e.zeros(if greats { len } else { 1 });
        Ok(OnlinePolicy {
            config,
            g_dev: e.zeros(p)?,
            ct: e.zeros(n)?,
            sel: small(e, n)?,
            stepped: small(e, p)?,
            diff: small(e, p)?,
            inter: small(e, n)?,
        })
    }

    /// The contributions CT_n = ∇l_n(θ)·∇L_dev(θ) and L_dev(θ), on the host.
    pub fn contributions(&mut self, e: &mut E, theta: &E::Vec) -> Result<(Vec<f64>, f64)> {
        let dev = e.loss_grad(Set::Dev, theta, &mut self.g_dev)?;
        e.train_dots(theta, &self.g_dev, &mut self.ct)?;
        let ct: Vec<f64> = e.download(&self.ct)?.iter().map(|c| c.f64()).collect();
        if let Some(i) = ct.iter().position(|c| !c.is_finite()) {
            return Err(Error::Numerical(format!("contribution CT[{i}] = {} (training diverged?)", ct[i])));
        }
        Ok((ct, dev))
    }

    /// γ_t for θ_t (on the simplex, length N) and L_dev(θ_t). `eta` is the inner learning rate
    /// (GREATS' interaction term).
    pub fn weights(&mut self, e: &mut E, theta: &E::Vec, eta: f64) -> Result<(Vec<f64>, StepInfo)> {
        let (ct, dev) = self.contributions(e, theta)?;
        let mut w = match self.config.kind {
            OnlineKind::Lookahead => lookahead_weights(&ct, self.config.temperature),
            OnlineKind::Law => law_weights(&ct, self.config.strength),
            OnlineKind::Greats => self.greats(e, theta, &ct, eta)?,
        };
        mix_with_constant(&mut w, self.config.mix);
        let n = ct.len() as f64;
        let gain = w.iter().zip(&ct).map(|(g, c)| g * c).sum();
        let info = StepInfo { dev_loss: dev, gain, gain_constant: ct.iter().sum::<f64>() / n, gated: false };
        Ok((w, info))
    }

    fn greats(&mut self, e: &mut E, theta: &E::Vec, ct: &[f64], eta: f64) -> Result<Vec<f64>> {
        let n = ct.len();
        let (k, rounds) = (self.config.batch, self.config.rounds);
        let mut taken = vec![false; n];
        let mut score = ct.to_vec();
        let mut chosen = 0;
        for r in 0..rounds {
            let take = k * (r + 1) / rounds - chosen;
            for i in top_k(&score, &taken, take) {
                taken[i] = true;
            }
            chosen += take;
            if r + 1 == rounds {
                break;
            }
            // v = Σ_{m∈B} ∇l_m = (θ − θ') / η' for θ' = θ − η'∇Σ_m 1[m∈B] l_m (η' = 1), then ∇l_n·v.
            let ind: Vec<E::Real> = taken.iter().map(|&t| E::Real::of(if t { 1.0 } else { 0.0 })).collect();
            let ind = e.upload(&ind)?;
            e.copy(&ind, &mut self.sel)?;
            e.forward_step(theta, &self.sel, 0, 1.0, &mut self.stepped, None)?;
            e.copy(theta, &mut self.diff)?;
            e.axpy(-1.0, &self.stepped, &mut self.diff)?;
            e.train_dots(theta, &self.diff, &mut self.inter)?;
            let inter = e.download(&self.inter)?;
            for i in 0..n {
                score[i] = ct[i] - eta * inter[i].f64() / k as f64;
            }
        }
        Ok(taken.iter().map(|&t| if t { 1.0 / k as f64 } else { 0.0 }).collect())
    }
}

/// Analytic FLOPs of one online step, from the engine's `StepFlops` (the same on every backend):
/// the training step itself (`forward`), plus the dev gradient and the per-example dots, counted as
/// one adjoint step (`backward`, which also holds an HVP the rules do not need: an upper bound),
/// plus for `Greats` (rounds − 1) × (a weighted-gradient step + a dot pass), counted as
/// forward + backward each. A held-out gate (`train_online`) adds one adjoint step's count of the
/// held-out engine (its dev gradient and N dots).
pub fn step_flops(config: &OnlineConfig, sf: crate::StepFlops) -> f64 {
    let extra = if config.kind == OnlineKind::Greats { (config.rounds - 1) as f64 * (sf.forward + sf.backward) } else { 0.0 };
    sf.forward + sf.backward + extra
}

/// The outcome of a run with an online policy.
#[derive(Clone, Debug, Default)]
pub struct OnlineRun {
    /// The γ used, [T, N] row-major.
    pub gamma: Vec<f32>,
    /// L_dev(θ_t) on the engine's desired set, t = 0..T.
    pub dev: Vec<f64>,
    /// Steps at which the held-out gate chose the constant policy.
    pub gated_steps: usize,
    pub seconds: f64,
}

/// Trains T steps from θ_0 with the online policy of `config`, recording the γ it used. With
/// `heldout` (an engine with the same training set whose desired set is a held-out part), each
/// step's γ is gated on it (module docs). `step_done` is called after every step.
pub fn train_online<E: Engine>(
    e: &mut E,
    mut heldout: Option<&mut E>,
    theta0: &[E::Real],
    unroll: crate::unroll::Unroll,
    config: &OnlineConfig,
    step_done: &mut dyn FnMut(usize, &StepInfo),
) -> Result<OnlineRun> {
    unroll.validate()?;
    let (p, n) = (e.num_params(), e.num_train());
    if theta0.len() != p {
        return Err(Error::shape("θ_0", p, theta0.len()));
    }
    if let Some(h) = heldout.as_deref() {
        if (h.num_train(), h.num_params()) != (n, p) {
            return Err(Error::shape(
                "held-out engine (examples, parameters)",
                format!("({n}, {p})"),
                format!("({}, {})", h.num_train(), h.num_params()),
            ));
        }
    }
    let start = Instant::now();
    let mut policy = OnlinePolicy::new(e, config.clone())?;
    let mut gate = match heldout.as_deref_mut() {
        Some(h) => Some(OnlinePolicy::new(h, OnlineConfig { kind: OnlineKind::Lookahead, ..config.clone() })?),
        None => None,
    };
    let mut theta = e.upload(theta0)?;
    let mut next = e.zeros(p)?;
    let mut gamma_dev = e.zeros(n)?;
    let mut run = OnlineRun { gamma: Vec::with_capacity(unroll.steps * n), ..OnlineRun::default() };
    for t in 0..unroll.steps {
        let (mut w, mut info) = policy.weights(e, &theta, unroll.eta)?;
        if let (Some(h), Some(g)) = (heldout.as_deref_mut(), gate.as_mut()) {
            // The held-out engine's θ is this one's, through the host (engines do not share buffers).
            let th = h.upload(&e.download(&theta)?)?;
            let (ct, _) = g.contributions(h, &th)?;
            let gain: f64 = w.iter().zip(&ct).map(|(g, c)| g * c).sum();
            if gain < ct.iter().sum::<f64>() / n as f64 {
                w.fill(1.0 / n as f64);
                info.gated = true;
                run.gated_steps += 1;
            }
        }
        let row: Vec<E::Real> = w.iter().map(|&x| E::Real::of(x)).collect();
        let up = e.upload(&row)?;
        e.copy(&up, &mut gamma_dev)?;
        e.forward_step(&theta, &gamma_dev, 0, unroll.eta, &mut next, None)?;
        std::mem::swap(&mut theta, &mut next);
        run.gamma.extend(w.iter().map(|&x| x as f32));
        run.dev.push(info.dev_loss);
        step_done(t, &info);
    }
    run.dev.push(e.loss(Set::Dev, &theta)?);
    if let Some(t) = run.dev.iter().position(|l| !l.is_finite()) {
        return Err(Error::Numerical(format!("training with the online policy diverged: L_dev {} at step {t}", run.dev[t])));
    }
    run.seconds = start.elapsed().as_secs_f64();
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{init_theta, PerceptronData, PerceptronRecipe};
    use crate::eval::retrain;
    use crate::perceptron::CpuPerceptron;
    use crate::policy::Policy;
    use crate::unroll::Unroll;

    fn on_simplex(w: &[f64]) {
        assert!(w.iter().all(|&x| x >= 0.0 && x.is_finite()), "{w:?}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "sum {}", w.iter().sum::<f64>());
    }

    const CT: [f64; 6] = [0.3, -0.2, 1.5, 0.0, 0.7, -3.0];

    #[test]
    fn lookahead_is_on_the_simplex_orders_by_contribution_and_tends_to_constant() {
        let w = lookahead_weights(&CT, 0.5);
        on_simplex(&w);
        assert!(w[2] > w[4] && w[4] > w[0] && w[0] > w[3] && w[3] > w[1] && w[1] > w[5], "{w:?}");
        let hot = lookahead_weights(&CT, 1e9);
        assert!(hot.iter().all(|&x| (x - 1.0 / 6.0).abs() < 1e-8), "τ → ∞: constant, got {hot:?}");
        let cold = lookahead_weights(&CT, 1e-3);
        assert!(cold[2] > 1.0 - 1e-9, "τ → 0: all on argmax CT, got {cold:?}");
        // Scale-free: the same weights for CT scaled by 1e-6.
        let small: Vec<f64> = CT.iter().map(|c| c * 1e-6).collect();
        let ws = lookahead_weights(&small, 0.5);
        assert!(w.iter().zip(&ws).all(|(a, b)| (a - b).abs() < 1e-12));
        assert_eq!(lookahead_weights(&[0.0; 4], 1.0), vec![0.25; 4]);
    }

    #[test]
    fn law_zeroes_harmful_examples_and_tends_to_uniform_on_the_helpful_ones() {
        for strength in [0.01, 0.3, 1.0, 10.0] {
            let w = law_weights(&CT, strength);
            on_simplex(&w);
            for (i, &c) in CT.iter().enumerate() {
                if c <= 0.0 {
                    assert_eq!(w[i], 0.0, "CT {c} ≤ 0 must get no weight (λ = {strength}): {w:?}");
                }
            }
            assert!(w[2] >= w[4] && w[4] >= w[0], "larger contributions get more weight: {w:?}");
        }
        let uniform = law_weights(&CT, 1e9);
        for i in [0, 2, 4] {
            assert!((uniform[i] - 1.0 / 3.0).abs() < 1e-6, "λ → ∞: uniform on CT > 0, got {uniform:?}");
        }
        let sharp = law_weights(&CT, 1e-3);
        assert!(sharp[2] > 1.0 - 1e-9, "λ → 0: the best example, got {sharp:?}");
        assert_eq!(law_weights(&[-1.0, 0.0], 1.0), vec![0.5, 0.5], "nothing helps: constant");
    }

    #[test]
    fn the_mix_reaches_the_constant_policy() {
        for w in [lookahead_weights(&CT, 0.1), law_weights(&CT, 0.5)] {
            let mut m = w.clone();
            mix_with_constant(&mut m, 1.0);
            assert!(m.iter().all(|&x| (x - 1.0 / 6.0).abs() < 1e-15));
            let mut h = w.clone();
            mix_with_constant(&mut h, 0.25);
            on_simplex(&h);
            assert!(h.iter().all(|&x| x >= 0.25 / 6.0 - 1e-15));
        }
    }

    #[test]
    fn config_is_checked() {
        let bad = |f: fn(&mut OnlineConfig)| {
            let mut c = OnlineConfig { batch: 50, ..OnlineConfig::new(OnlineKind::Greats) };
            f(&mut c);
            c.validate(100).unwrap_err().to_string()
        };
        assert!(bad(|c| c.mix = 1.5).contains("mix"));
        assert!(bad(|c| c.temperature = 0.0).contains("temperature"));
        assert!(bad(|c| c.strength = f64::NAN).contains("strength"));
        assert!(bad(|c| c.batch = 101).contains("batch"));
        assert!(bad(|c| c.rounds = 0).contains("rounds"));
        assert!(OnlineKind::parse("nope").unwrap_err().to_string().contains("lookahead, law, greats"));
        assert_eq!(OnlineKind::parse("LAW").unwrap(), OnlineKind::Law);
    }

    fn problem() -> (PerceptronData, Vec<f64>, Unroll) {
        let recipe =
            PerceptronRecipe { dim: 16, n_train: 256, n_dev: 64, n_test: 64, train_label_noise: 0.05, ..PerceptronRecipe::default() };
        let data = PerceptronData::generate(&recipe).unwrap();
        let theta0 = init_theta(data.dim, 10).iter().map(|&x| x as f64).collect();
        (data, theta0, Unroll { steps: 200, eta: 0.1 })
    }

    #[test]
    fn online_policies_lower_the_dev_auc_of_a_small_perceptron_run() {
        let (data, theta0, unroll) = problem();
        let mut e = CpuPerceptron::<f64>::new(&data).unwrap();
        let n = data.train.len();
        let constant = Policy::constant(unroll.steps, n).gamma.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (c, _) = retrain(&mut e, &theta0, &constant, unroll, false).unwrap();
        let auc = |v: &[f64]| v.iter().sum::<f64>() / unroll.steps as f64;
        let greats = OnlineConfig { batch: 64, rounds: 4, ..OnlineConfig::new(OnlineKind::Greats) };
        for cfg in [OnlineConfig::new(OnlineKind::Lookahead), OnlineConfig::new(OnlineKind::Law), greats] {
            let run = train_online(&mut e, None, &theta0, unroll, &cfg, &mut |_, _| {}).unwrap();
            assert_eq!(run.gamma.len(), unroll.steps * n);
            for row in run.gamma.chunks(n) {
                assert!((row.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs() < 1e-5);
            }
            // The γ it recorded retrains to the same curve (the run directory's policy is the one used).
            let gamma: Vec<f64> = run.gamma.iter().map(|&x| x as f64).collect();
            let (p, _) = retrain(&mut e, &theta0, &gamma, unroll, false).unwrap();
            assert!((auc(&p.dev) - auc(&run.dev)).abs() < 1e-5, "{} vs {}", auc(&p.dev), auc(&run.dev));
            assert!(
                auc(&run.dev) < 0.97 * auc(&c.dev),
                "{}: dev AUC {} not below the constant policy's {}",
                cfg.label(),
                auc(&run.dev),
                auc(&c.dev)
            );
        }
        // α = 1 is the constant policy, step for step.
        let run =
            train_online(&mut e, None, &theta0, unroll, &OnlineConfig { mix: 1.0, ..OnlineConfig::new(OnlineKind::Law) }, &mut |_, _| {})
                .unwrap();
        assert!(run.dev.iter().zip(&c.dev).all(|(a, b)| (a - b).abs() < 1e-12));
    }

    #[test]
    fn the_law_rule_gives_harmful_examples_no_weight_during_training() {
        let (data, theta0, unroll) = problem();
        let mut e = CpuPerceptron::<f64>::new(&data).unwrap();
        let cfg = OnlineConfig::new(OnlineKind::Law);
        let mut policy = OnlinePolicy::new(&mut e, cfg).unwrap();
        let theta = e.upload(&theta0).unwrap();
        let (ct, _) = policy.contributions(&mut e, &theta).unwrap();
        let (w, info) = policy.weights(&mut e, &theta, unroll.eta).unwrap();
        assert!(ct.iter().any(|&c| c <= 0.0), "the noisy data has harmful examples");
        assert!(ct.iter().zip(&w).all(|(&c, &g)| c > 0.0 || g == 0.0));
        assert!(info.gain > info.gain_constant, "the rule's first-order gain beats the constant policy's");
    }

    #[test]
    fn the_heldout_gate_falls_back_to_constant_when_the_rule_does_not_help_there() {
        let (data, theta0, unroll) = problem();
        let (search, held) = data.split_dev(0.5).unwrap();
        let mut e = CpuPerceptron::<f64>::new(&search).unwrap();
        let mut h = CpuPerceptron::<f64>::new(&held).unwrap();
        let cfg = OnlineConfig::new(OnlineKind::Law);
        let run = train_online(&mut e, Some(&mut h), &theta0, unroll, &cfg, &mut |_, _| {}).unwrap();
        let n = data.train.len();
        let constant_rows = run.gamma.chunks(n).filter(|r| r.iter().all(|&x| (x - 1.0 / n as f32).abs() < 1e-9)).count();
        assert_eq!(constant_rows, run.gated_steps, "a gated step uses the constant policy");
        assert!(run.gated_steps < unroll.steps, "the rule helps on held-out data at some steps");
    }
}
