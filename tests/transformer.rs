//! The Transformer's derivatives against central finite differences in f64: every parameter's
//! gradient (so every layer), the γ-weighted gradient, the tangent per-example dots against
//! materialised per-example gradients, the exact HVP, and ∂J/∂γ through a whole unrolled run;
//! plus the f32 engine against the f64 one, and bad inputs.
use learnlaw::text::{TokenData, PAD};
use learnlaw::transformer::kernels::Tokens;
use learnlaw::transformer::model::{Model, Tape};
use learnlaw::transformer::CpuKernels;
use learnlaw::transformer::{init_params, AttentionScale, CpuTransformer, TransformerConfig};
use learnlaw::unroll::{Unroll, Workspace};
use learnlaw::{Engine, Set};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tiny_config() -> TransformerConfig {
    TransformerConfig { vocab_size: 9, hidden: 8, heads: 2, layers: 2, context: 6, ffn: 12, attention_scale: AttentionScale::Hidden }
}

/// `n` random sequences of `seq_len` tokens; some end in PAD runs (never the first label).
fn rows(rng: &mut ChaCha8Rng, n: usize, seq_len: usize, vocab: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(n * seq_len);
    for _ in 0..n {
        let real = rng.random_range(2..=seq_len);
        for i in 0..seq_len {
            out.push(if i < real { rng.random_range(2..vocab as u32) } else { PAD });
        }
    }
    out
}

fn tiny_data(seed: u64, n_train: usize) -> TokenData {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (vocab, seq_len) = (9, 6);
    TokenData {
        vocab_size: vocab,
        seq_len,
        train: rows(&mut rng, n_train, seq_len, vocab),
        dev: rows(&mut rng, 3, seq_len, vocab),
        test: rows(&mut rng, 3, seq_len, vocab),
        noisy: vec![false; n_train],
    }
}

/// θ_0 nudged so that norm weights and biases are not at their special init values (1 and 0).
fn theta(cfg: &TransformerConfig, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    init_params(cfg, seed).iter().map(|&x| x as f64 * 0.7 + rng.random_range(-0.2..0.2)).collect()
}

fn random_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// max_i |a_i − b_i| / max_i |b_i|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn central_difference(theta: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut th = theta.to_vec();
    (0..theta.len())
        .map(|i| {
            th[i] = theta[i] + h;
            let p = f(&th);
            th[i] = theta[i] - h;
            let m = f(&th);
            th[i] = theta[i];
            (p - m) / (2.0 * h)
        })
        .collect()
}

#[test]
fn dev_gradient_matches_finite_differences_for_every_parameter() {
    for scale in [AttentionScale::Hidden, AttentionScale::HeadDim] {
        let cfg = TransformerConfig { attention_scale: scale, ..tiny_config() };
        let mut e = CpuTransformer::<f64>::new(&cfg, &tiny_data(1, 4)).unwrap();
        let th = theta(&cfg, 1);
        let mut grad = vec![0.0; th.len()];
        e.loss_grad(Set::Dev, &th, &mut grad).unwrap();
        let fd = central_difference(&th, 1e-5, |t| e.loss(Set::Dev, &t.to_vec()).unwrap());
        let err = rel_err(&grad, &fd);
        assert!(err < 1e-6, "{scale:?}: gradient relative error {err:.2e}");
    }
}

#[test]
fn weighted_gradient_step_matches_finite_differences() {
    let cfg = tiny_config();
    let mut e = CpuTransformer::<f64>::new(&cfg, &tiny_data(2, 5)).unwrap();
    let th = theta(&cfg, 2);
    // Two rows of γ; row 1 has a zero weight (that sequence is skipped by the gradient pass).
    let gamma = vec![0.2, 0.2, 0.2, 0.2, 0.2, 0.4, 0.0, 0.1, 0.3, 0.2];
    let mut next = vec![0.0; th.len()];
    let mut curve = vec![0.0; 2];
    e.forward_step(&th, &gamma, 1, 0.5, &mut next, Some((&mut curve, 1))).unwrap();
    let grad: Vec<f64> = th.iter().zip(&next).map(|(a, b)| (a - b) / 0.5).collect();
    let weighted = |t: &[f64], e: &mut CpuTransformer<f64>| {
        let mut l = vec![0.0; 5];
        e.train_losses(&t.to_vec(), &mut l).unwrap();
        l.iter().zip(&gamma[5..]).map(|(l, g)| l * g).sum::<f64>()
    };
    let fd = central_difference(&th, 1e-5, |t| weighted(t, &mut e));
    assert!(rel_err(&grad, &fd) < 1e-6, "weighted gradient relative error {:.2e}", rel_err(&grad, &fd));
    assert_eq!(curve[1], e.loss(Set::Dev, &th).unwrap());
}

/// The tangent forward pass's ∇l_n·v against the one-example-at-a-time gradients, dotted.
#[test]
fn per_example_dots_match_materialised_per_example_gradients() {
    let cfg = tiny_config();
    let data = tiny_data(3, 6);
    let mut e = CpuTransformer::<f64>::new(&cfg, &data).unwrap();
    let th = theta(&cfg, 3);
    let v = random_vec(th.len(), 33);
    let mut dots = vec![0.0; 6];
    e.train_dots(&th, &v, &mut dots).unwrap();
    let layout = cfg.layout();
    let model = Model::<CpuKernels<f64>> { cfg: &cfg, layout: &layout, theta: &th, direction: None };
    let k = &mut CpuKernels::default();
    let want: Vec<f64> = data
        .train
        .chunks(data.seq_len)
        .map(|row| {
            let (mut g, mut tape) = (vec![0.0; th.len()], Tape::default());
            let (row, one) = (row.to_vec(), vec![1.0]);
            let tokens = Tokens { ids: &row, at: 0, seqs: 1, seq_len: data.seq_len };
            model.forward(k, tokens, &mut tape);
            model.backward(k, tokens, &mut tape, (&one, 0), Some(&mut g), None);
            g.iter().zip(&v).map(|(a, b)| a * b).sum()
        })
        .collect();
    assert!(rel_err(&dots, &want) < 1e-10, "dots {dots:?} vs {want:?}");
}

/// The exact HVP, read out of the backward step with η = 1 and no dev term (λ = v − H v), against
/// finite differences of the weighted gradient along v.
#[test]
fn hvp_matches_finite_differences_of_the_gradient() {
    let cfg = tiny_config();
    let mut e = CpuTransformer::<f64>::new(&cfg, &tiny_data(4, 5)).unwrap();
    let th = theta(&cfg, 4);
    let v = random_vec(th.len(), 44);
    let gamma = vec![0.1, 0.3, 0.0, 0.4, 0.2];
    let grad_at = |e: &mut CpuTransformer<f64>, s: f64| -> Vec<f64> {
        let t: Vec<f64> = th.iter().zip(&v).map(|(t, v)| t + s * v).collect();
        let mut next = vec![0.0; t.len()];
        e.forward_step(&t, &gamma, 0, 1.0, &mut next, None).unwrap();
        t.iter().zip(&next).map(|(a, b)| a - b).collect()
    };
    let h = 1e-5;
    let fd: Vec<f64> = grad_at(&mut e, h).iter().zip(grad_at(&mut e, -h)).map(|(p, m)| (p - m) / (2.0 * h)).collect();
    let (mut gg, mut lambda) = (vec![0.0; 5], vec![0.0; th.len()]);
    e.backward_step(&th, &gamma, 0, &v, 1.0, 0.0, &mut gg, &mut lambda).unwrap();
    let hvp: Vec<f64> = v.iter().zip(&lambda).map(|(v, l)| v - l).collect();
    assert!(rel_err(&hvp, &fd) < 1e-6, "HVP relative error {:.2e}", rel_err(&hvp, &fd));
    // The policy-gradient row is −η ∇l_n·v.
    let mut dots = vec![0.0; 5];
    e.train_dots(&th, &v, &mut dots).unwrap();
    assert!(rel_err(&gg, &dots.iter().map(|d| -d).collect::<Vec<_>>()) < 1e-12);
}

#[test]
fn policy_gradient_matches_finite_differences() {
    let cfg = tiny_config();
    let n = 4;
    let mut e = CpuTransformer::<f64>::new(&cfg, &tiny_data(5, n)).unwrap();
    let unroll = Unroll { steps: 3, eta: 0.3 };
    let th = theta(&cfg, 5);
    let mut rng = ChaCha8Rng::seed_from_u64(55);
    let gamma: Vec<f64> = (0..unroll.steps * n).map(|_| rng.random_range(0.05..0.5)).collect();
    for every in [1, 2] {
        let mut ws = Workspace::new(&mut e, unroll, every).unwrap();
        let mut grad = vec![0.0; gamma.len()];
        ws.gradient(&mut e, &th, &gamma, &mut grad).unwrap();
        let fd = central_difference(&gamma, 1e-5, |g| ws.forward(&mut e, &th, &g.to_vec()).unwrap().j);
        assert!(rel_err(&grad, &fd) < 1e-6, "every {every}: ∂J/∂γ {grad:?} vs {fd:?}");
    }
}

/// The fast f32 engine agrees with the f64 one on every engine operation.
#[test]
fn f32_engine_matches_f64() {
    let cfg = tiny_config();
    let data = tiny_data(6, 7);
    let (mut e64, mut e32) = (CpuTransformer::<f64>::new(&cfg, &data).unwrap(), CpuTransformer::<f32>::new(&cfg, &data).unwrap());
    let th = theta(&cfg, 6);
    let v = random_vec(th.len(), 66);
    let gamma: Vec<f64> = vec![1.0 / 7.0; 7];
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let close = |a: &[f32], b: &[f64], what: &str| {
        let a: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        assert!(rel_err(&a, b) < 1e-4, "{what}: relative error {:.2e}", rel_err(&a, b));
    };
    let (mut n64, mut n32) = (vec![0.0; th.len()], vec![0.0f32; th.len()]);
    e64.forward_step(&th, &gamma, 0, 0.1, &mut n64, None).unwrap();
    e32.forward_step(&f32s(&th), &f32s(&gamma), 0, 0.1, &mut n32, None).unwrap();
    close(&n32, &n64, "forward step");
    let (mut g64, mut l64, mut g32, mut l32) = (vec![0.0; 7], vec![0.0; th.len()], vec![0.0f32; 7], vec![0.0f32; th.len()]);
    e64.backward_step(&th, &gamma, 0, &v, 0.1, 0.5, &mut g64, &mut l64).unwrap();
    e32.backward_step(&f32s(&th), &f32s(&gamma), 0, &f32s(&v), 0.1, 0.5, &mut g32, &mut l32).unwrap();
    close(&g32, &g64, "policy gradient row");
    close(&l32, &l64, "adjoint");
    let (l64, l32) = (e64.loss(Set::Test, &th).unwrap(), e32.loss(Set::Test, &f32s(&th)).unwrap());
    assert!((l64 - l32).abs() < 1e-5 * l64, "test loss {l32} vs {l64}");
}

/// Results do not depend on how sequences fall into chunks and groups: the paper-sized chunk
/// loop and a one-sequence set give the same per-example losses.
#[test]
fn per_example_losses_do_not_depend_on_the_batch() {
    let cfg = tiny_config();
    let data = tiny_data(7, 40);
    let mut e = CpuTransformer::<f64>::new(&cfg, &data).unwrap();
    let th = theta(&cfg, 7);
    let mut all = vec![0.0; 40];
    e.train_losses(&th, &mut all).unwrap();
    for n in [0, 17, 39] {
        let one = TokenData { train: data.train[n * 6..(n + 1) * 6].to_vec(), noisy: vec![false], ..data.clone() };
        let mut e1 = CpuTransformer::<f64>::new(&cfg, &one).unwrap();
        let mut l = vec![0.0];
        e1.train_losses(&th, &mut l).unwrap();
        assert!((l[0] - all[n]).abs() < 1e-12, "sequence {n}: {} vs {}", l[0], all[n]);
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let cfg = tiny_config();
    let data = tiny_data(8, 3);
    let long = TransformerConfig { context: 4, ..cfg.clone() };
    let err = CpuTransformer::<f32>::new(&long, &data).err().expect("sequences longer than the context").to_string();
    assert!(err.contains("longer than the model"), "{err}");
    let small_vocab = TransformerConfig { vocab_size: 5, ..cfg.clone() };
    let err = CpuTransformer::<f32>::new(&small_vocab, &data).err().expect("vocabulary too small").to_string();
    assert!(err.contains("vocab_size"), "{err}");
    let mut e = CpuTransformer::<f32>::new(&cfg, &data).unwrap();
    assert!(e.loss(Set::Dev, &vec![0.0; 3]).is_err(), "wrong θ length");
}

/// The whole pipeline on generated stories: a search through `run` lowers J epoch after epoch,
/// records CR against the vocabulary, stops and resumes where it stopped, and evaluates.
#[test]
fn search_on_generated_stories_lowers_j_and_resumes() {
    use learnlaw::run::{self, RunConfig, RunDir};
    use learnlaw::search::{OuterOptimizer, SearchConfig};
    use learnlaw::text::TextRecipe;
    use std::ops::ControlFlow;

    let tmp = tempfile::tempdir().unwrap();
    let recipe = TextRecipe { n_train: 24, n_dev: 8, n_test: 8, seq_len: 9, vocab_size: 60, ..TextRecipe::default() };
    let (data, _) = TokenData::generate(&recipe).unwrap();
    let path = tmp.path().join("data.safetensors");
    data.save(&path).unwrap();
    let model = TransformerConfig {
        vocab_size: data.vocab_size,
        hidden: 8,
        heads: 2,
        layers: 1,
        context: 8,
        ffn: 16,
        attention_scale: AttentionScale::Hidden,
    };
    let search = SearchConfig {
        steps: 12,
        eta: 0.5,
        epochs: 3,
        outer_lr: 1.0,
        optimizer: OuterOptimizer::ExpGrad,
        checkpoint_every: Some(4),
        holdout: None,
        reg_l2: None,
        block_steps: None,
    };
    let cfg = RunConfig {
        task: "transformer".into(),
        backend: "cpu".into(),
        data: path.clone(),
        data_fingerprint: run::fingerprint(&path).unwrap(),
        init_seed: 10,
        theta0: None,
        model: Some(model.clone()),
        search,
        trained: None,
    };
    let theta0 = init_params(&model, 10);
    let dir = RunDir::new(tmp.path().join("run"));
    let mut e = CpuTransformer::<f32>::new(&model, &data).unwrap();
    // Stop after the first epoch, as a kill would, then resume.
    let first = run::search(&mut e, &dir, &cfg, &theta0, |_| ControlFlow::Break(())).unwrap();
    assert_eq!(first.epochs_done(), 1);
    let history = run::search(&mut e, &dir, &cfg, &theta0, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(history.epochs_done(), 3);
    assert_eq!(history.j[..first.j.len()], first.j[..], "resuming recomputes nothing");
    assert!(history.j.windows(2).all(|w| w[1] < w[0]), "J decreases every epoch: {:?}", history.j);
    // CR = T·log2|V| / Σ_{t=1..T} L_dev(θ_t), and T·J = Σ_{t=0..T} L_dev(θ_t).
    let l0 = e.loss(learnlaw::Set::Dev, &theta0).unwrap();
    let cr0 = 12.0 * (data.vocab_size as f64).log2() / (12.0 * history.j[0] - l0);
    assert!((history.cr[0] - cr0).abs() < 1e-5 * cr0, "CR uses log2|V|: {} vs {cr0}", history.cr[0]);
    let ev = run::evaluate(&mut e, &dir, &theta0).unwrap();
    assert!(ev.auc_dev_policy < ev.auc_dev_constant, "{ev:?}");
}
