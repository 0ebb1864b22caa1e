//! Conformance of the Transformer's engines: every engine operation against `CpuTransformer<f64>`
//! (random token data with PAD runs, a policy with zero weights, outputs poisoned first), and a
//! short search whose J history must match the cpu backend's. Written once, instantiated per
//! backend by `transformer_engine_tests!`; the GPU instances also run with chunks of a few
//! sequences, so sums over chunks and per-example results placed by chunk are exercised.
use learnlaw::cuda_backend::CudaTransformer;
use learnlaw::search::{OuterOptimizer, Search, SearchConfig};
use learnlaw::text::{TokenData, PAD};
use learnlaw::transformer::{init_params, AttentionScale, CpuTransformer, TransformerConfig};
use learnlaw::wgpu_backend::WgpuTransformer;
use learnlaw::{Engine, Real, Set};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{assert_close, cuda_or_skip, from_f64, host_sim_or_skip, random_policy, rng, to_f64, uniform, wgpu_or_skip, Tol};

type Make<E> = fn(&TransformerConfig, &TokenData) -> Option<E>;

fn config(vocab: usize, context: usize) -> TransformerConfig {
    TransformerConfig { vocab_size: vocab, hidden: 12, heads: 3, layers: 2, context, ffn: 20, attention_scale: AttentionScale::Hidden }
}

fn rows(r: &mut ChaCha8Rng, n: usize, seq_len: usize, vocab: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for _ in 0..n {
        let real = r.random_range(2..=seq_len);
        out.extend((0..seq_len).map(|i| if i < real { r.random_range(2..vocab as u32) } else { PAD }));
    }
    out
}

fn data(r: &mut ChaCha8Rng, n: usize, seq_len: usize, vocab: usize) -> TokenData {
    TokenData {
        vocab_size: vocab,
        seq_len,
        train: rows(r, n, seq_len, vocab),
        dev: rows(r, 9, seq_len, vocab),
        test: rows(r, 5, seq_len, vocab),
        noisy: vec![false; n],
    }
}

fn poisoned<E: Engine>(e: &mut E, len: usize) -> E::Vec {
    e.upload(&vec![<E::Real as Real>::of(f64::NAN); len]).unwrap()
}

fn down<E: Engine>(e: &mut E, v: &E::Vec) -> Vec<f64> {
    to_f64(&e.download(v).unwrap())
}

/// Every engine operation against the f64 engine, on two problems (one of 23 sequences).
pub fn operations<E: Engine>(make: Make<E>) {
    for (seed, n, seq_len, vocab) in [(1u64, 6, 5, 11), (2, 23, 9, 37)] {
        let mut r = rng(seed);
        let d = data(&mut r, n, seq_len, vocab);
        let cfg = config(vocab, seq_len - 1);
        let Some(mut e) = make(&cfg, &d) else { return };
        let mut reference = CpuTransformer::<f64>::new(&cfg, &d).unwrap();
        let p = e.num_params();
        let theta: Vec<f64> = init_params(&cfg, seed).iter().map(|&x| x as f64 * 0.8 + 0.01).collect();
        let v = uniform(&mut r, p, -0.5, 0.5);
        let steps = 3;
        let gamma = random_policy(&mut r, steps, n);
        let tol = Tol::of::<E::Real>();
        let (th, vd, gd) = (e.upload(&from_f64(&theta)).unwrap(), e.upload(&from_f64(&v)).unwrap(), e.upload(&from_f64(&gamma)).unwrap());
        let t = 1;
        let what = |s: &str| format!("{s} (N = {n}, L = {})", seq_len - 1);

        // forward_step, with the dev loss into slot 2 of a curve of sentinels.
        let (mut next, mut curve) = (poisoned(&mut e, p), e.upload(&from_f64(&[7.0; 4])).unwrap());
        e.forward_step(&th, &gd, t, 0.3, &mut next, Some((&mut curve, 2))).unwrap();
        let (mut want_next, mut want_curve) = (vec![0.0; p], vec![7.0; 4]);
        reference.forward_step(&theta, &gamma, t, 0.3, &mut want_next, Some((&mut want_curve, 2))).unwrap();
        assert_close(&what("forward_step θ_next"), &down(&mut e, &next), &want_next, tol);
        assert_close(&what("forward_step dev loss"), &down(&mut e, &curve), &want_curve, tol);

        // backward_step: only row t of ∂J/∂γ is written.
        let (mut gg, mut lambda) = (e.upload(&from_f64(&vec![7.0; steps * n])).unwrap(), poisoned(&mut e, p));
        e.backward_step(&th, &gd, t, &vd, 0.3, 0.25, &mut gg, &mut lambda).unwrap();
        let (mut want_gg, mut want_lambda) = (vec![7.0; steps * n], vec![0.0; p]);
        reference.backward_step(&theta, &gamma, t, &v, 0.3, 0.25, &mut want_gg, &mut want_lambda).unwrap();
        assert_close(&what("backward_step ∂J/∂γ"), &down(&mut e, &gg), &want_gg, tol);
        assert_close(&what("backward_step λ"), &down(&mut e, &lambda), &want_lambda, tol);

        // Per-example losses and dots, and the sets' losses and gradients.
        let mut out = poisoned(&mut e, n);
        let mut want = vec![0.0; n];
        e.train_losses(&th, &mut out).unwrap();
        reference.train_losses(&theta, &mut want).unwrap();
        assert_close(&what("train_losses"), &down(&mut e, &out), &want, tol);
        let mut out = poisoned(&mut e, n);
        e.train_dots(&th, &vd, &mut out).unwrap();
        reference.train_dots(&theta, &v, &mut want).unwrap();
        assert_close(&what("train_dots"), &down(&mut e, &out), &want, tol);
        for set in [Set::Dev, Set::Test] {
            let mut g = poisoned(&mut e, p);
            let mut want_g = vec![0.0; p];
            let l = e.loss_grad(set, &th, &mut g).unwrap();
            let want_l = reference.loss_grad(set, &theta, &mut want_g).unwrap();
            assert_close(&what(&format!("loss_grad {set:?}")), &[l, e.loss(set, &th).unwrap()], &[want_l, want_l], tol);
            assert_close(&what(&format!("loss_grad {set:?} gradient")), &down(&mut e, &g), &want_g, tol);
        }
    }
}

/// Three outer epochs of the paper's search (SGD, projection): J per epoch as the cpu backend's.
pub fn search_matches_cpu<E: Engine>(make: Make<E>) {
    let mut r = rng(3);
    let (n, seq_len, vocab) = (14, 8, 29);
    let d = data(&mut r, n, seq_len, vocab);
    let cfg = config(vocab, seq_len - 1);
    let Some(mut e) = make(&cfg, &d) else { return };
    let mut cpu = CpuTransformer::<f32>::new(&cfg, &d).unwrap();
    let search = SearchConfig {
        steps: 10,
        eta: 0.5,
        epochs: 3,
        outer_lr: 2.0,
        optimizer: OuterOptimizer::Sgd,
        checkpoint_every: Some(3),
        holdout: None,
        reg_l2: None,
        block_steps: None,
    };
    let theta0: Vec<f32> = init_params(&cfg, 4);
    let gamma = vec![1.0 / n as f32; search.steps * n];
    let history = |j: &mut dyn FnMut() -> f64| (0..search.epochs).map(|_| j()).collect::<Vec<f64>>();
    let (theta0_e, gamma_e): (Vec<E::Real>, Vec<E::Real>) = (from_f64(&to_f64(&theta0)), from_f64(&to_f64(&gamma)));
    let mut s = Search::new(&mut e, &search, &theta0_e, &gamma_e, 0).unwrap();
    let got = history(&mut || s.step(&mut e).unwrap().j);
    let mut s = Search::new(&mut cpu, &search, &theta0, &gamma, 0).unwrap();
    let want = history(&mut || s.step(&mut cpu).unwrap().j);
    assert!(want.windows(2).all(|w| w[1] < w[0]), "the search moves: J {want:?}");
    assert_close("J per outer epoch", &got, &want, Tol { atol: 0.0, rtol: 1e-4 });
}

macro_rules! transformer_engine_tests {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            #[test]
            fn operations() {
                super::operations($make);
            }
            #[test]
            fn search_matches_cpu() {
                super::search_matches_cpu($make);
            }
        }
    };
}

transformer_engine_tests!(cpu_f32, |cfg, d| Some(CpuTransformer::<f32>::new(cfg, d).unwrap()));
transformer_engine_tests!(wgpu, |cfg, d| wgpu_or_skip(WgpuTransformer::new(cfg, d)));
transformer_engine_tests!(wgpu_chunks_of_4, |cfg, d| wgpu_or_skip(WgpuTransformer::new(cfg, d)).map(|e| e.with_chunk_seqs(4)));
transformer_engine_tests!(cuda, |cfg, d| cuda_or_skip(CudaTransformer::new(cfg, d)));
transformer_engine_tests!(cuda_chunks_of_4, |cfg, d| cuda_or_skip(CudaTransformer::new(cfg, d)).map(|e| e.with_chunk_seqs(4)));
// The CUDA engine on the CPU (learnlaw_cuda::HostSim): its kernels, vector and policy operations
// executed here and in CI, the search's J against the cpu backend's.
transformer_engine_tests!(cuda_on_host, |cfg, d| host_sim_or_skip(CudaTransformer::on_host(cfg, d)).map(|e| e.with_chunk_seqs(4)));
