//! The Transformer's CPU engine: `model`'s passes over chunks of sequences, run in parallel.
//!
//! Sums over chunks are deterministic whatever the thread count: chunk c adds into accumulator
//! c mod GROUPS, and the accumulators are summed in order. Sequences of weight γ_{t,n} = 0 add
//! nothing to a weighted gradient or HVP, so they are left out of those passes (they still get
//! their per-example dot, from a tangent forward pass alone).
use rayon::prelude::*;

use std::sync::Mutex;

use super::cpu_kernels::CpuKernels;
use super::kernels::Tokens;
use super::model::{Model, Tape};
use super::{check_task, step_flops, Layout, TransformerConfig};
use crate::engine::{Engine, Set, StepFlops};
use crate::text::TokenData;
use crate::{host, Real, Result};

/// Accumulators a pass sums into (the sum's order depends on this, never on the threads).
const GROUPS: usize = 8;
/// Rows (tokens) per chunk: large enough for efficient GEMMs, small enough to stay in cache.
const CHUNK_TOKENS: usize = 1024;

pub struct CpuTransformer<R: Real> {
    cfg: TransformerConfig,
    layout: Layout,
    seq_len: usize,
    train: Vec<u32>,
    dev: Vec<u32>,
    test: Vec<u32>,
    /// Tapes of finished passes, reused so that steps allocate nothing (one per busy thread).
    tapes: Mutex<Vec<Tape<CpuKernels<R>>>>,
}

/// What a pass over a set computes for each chunk.
#[derive(Clone, Copy)]
enum Pass<'a, R> {
    /// Per-sequence losses.
    Loss,
    /// Per-sequence losses and the gradient of Σ_n w_n l_n.
    Grad { weights: &'a [R] },
    /// Per-sequence dots ∇l_n·v.
    Dots { v: &'a Vec<R> },
    /// Per-sequence dots ∇l_n·v and the HVP of Σ_n w_n l_n along v.
    DotsHvp { v: &'a Vec<R>, weights: &'a [R] },
}

impl<R: Real> CpuTransformer<R> {
    pub fn new(cfg: &TransformerConfig, data: &TokenData) -> Result<Self> {
        check_task(cfg, data)?;
        Ok(CpuTransformer {
            cfg: cfg.clone(),
            layout: cfg.layout(),
            seq_len: data.seq_len,
            train: data.train.clone(),
            dev: data.dev.clone(),
            test: data.test.clone(),
            tapes: Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    fn set(&self, set: Set) -> &[u32] {
        match set {
            Set::Dev => &self.dev,
            Set::Test => &self.test,
        }
    }

    fn seqs(&self, rows: &[u32]) -> usize {
        rows.len() / self.seq_len
    }

    /// Runs `pass` at θ over every sequence of `rows`: returns the per-sequence losses (or dots)
    /// and, for passes with weights, the summed gradient (or HVP) written into `acc_out`.
    fn run(&self, theta: &Vec<R>, rows: &[u32], pass: Pass<R>, acc_out: Option<&mut [R]>) -> Vec<f64> {
        let (p, len) = (self.layout.len, self.seq_len);
        let per_chunk = (CHUNK_TOKENS / (len - 1)).max(1);
        let n = self.seqs(rows);
        let chunks = n.div_ceil(per_chunk);
        let groups = GROUPS.min(chunks.max(1));
        let direction = match pass {
            Pass::Dots { v } | Pass::DotsHvp { v, .. } => Some(v),
            _ => None,
        };
        let model = Model::<CpuKernels<R>> { cfg: &self.cfg, layout: &self.layout, theta, direction };
        let wants_acc = matches!(pass, Pass::Grad { .. } | Pass::DotsHvp { .. });
        // Per group: its accumulator and, per chunk, (first sequence, per-sequence values).
        type GroupOut<R> = (Vec<R>, Vec<(usize, Vec<f64>)>);
        let results: Vec<GroupOut<R>> = (0..groups)
            .into_par_iter()
            .map(|g| {
                let mut acc = vec![R::zero(); if wants_acc { p } else { 0 }];
                let mut outs = Vec::new();
                let mut tape = self.tapes.lock().ok().and_then(|mut t| t.pop()).unwrap_or_default();
                for c in (g..chunks).step_by(groups) {
                    let (s0, s1) = (c * per_chunk, ((c + 1) * per_chunk).min(n));
                    let chunk = &rows[s0 * len..s1 * len];
                    outs.push((s0, self.chunk(&model, chunk, s0, pass, &mut acc, &mut tape)));
                }
                if let Ok(mut t) = self.tapes.lock() {
                    t.push(tape);
                }
                (acc, outs)
            })
            .collect();
        let mut per_seq = vec![0.0; n];
        let mut total = acc_out;
        if let Some(t) = total.as_deref_mut() {
            t.fill(R::zero());
        }
        for (acc, outs) in results {
            for (s0, vals) in outs {
                per_seq[s0..s0 + vals.len()].copy_from_slice(&vals);
            }
            if let (Some(t), false) = (total.as_deref_mut(), acc.is_empty()) {
                t.iter_mut().zip(&acc).for_each(|(t, &a)| *t = *t + a);
            }
        }
        per_seq
    }

    /// One chunk of `run`: sequences s0.. of the set; weighted passes skip γ = 0 sequences.
    fn chunk(
        &self,
        model: &Model<CpuKernels<R>>,
        rows: &[u32],
        s0: usize,
        pass: Pass<R>,
        acc: &mut Vec<R>,
        tape: &mut Tape<CpuKernels<R>>,
    ) -> Vec<f64> {
        let len = self.seq_len;
        let b = rows.len() / len;
        let weights = match pass {
            Pass::Grad { weights } | Pass::DotsHvp { weights, .. } => Some(&weights[s0..s0 + b]),
            _ => None,
        };
        // Split into the sequences that carry weight (forward + backward) and the rest (forward only).
        let (active, idle): (Vec<usize>, Vec<usize>) = match weights {
            Some(w) => (0..b).partition(|&i| w[i] != R::zero()),
            None => (Vec::new(), (0..b).collect()),
        };
        let active_weights: Vec<R> = weights.map_or_else(Vec::new, |w| active.iter().map(|&i| w[i]).collect());
        let gather = |ids: &[usize]| -> Vec<u32> { ids.iter().flat_map(|&i| rows[i * len..(i + 1) * len].iter().copied()).collect() };
        let dots = matches!(pass, Pass::Dots { .. } | Pass::DotsHvp { .. });
        let mut out = vec![0.0; b];
        let mut record = |ids: &[usize], tape: &Tape<CpuKernels<R>>| {
            let vals = if dots { tape.dots() } else { tape.losses() };
            ids.iter().zip(vals).for_each(|(&i, &v)| out[i] = v);
        };
        let k = &mut CpuKernels::default();
        if !active.is_empty() {
            let ids = gather(&active);
            let tokens = Tokens { ids: &ids, at: 0, seqs: active.len(), seq_len: len };
            model.forward(k, tokens, tape);
            match pass {
                Pass::Grad { .. } => model.backward(k, tokens, tape, (&active_weights, 0), Some(acc), None),
                _ => model.backward(k, tokens, tape, (&active_weights, 0), None, Some(acc)),
            }
            record(&active, tape);
        }
        if !idle.is_empty() && (dots || !matches!(pass, Pass::Grad { .. })) {
            let ids = gather(&idle);
            model.forward(k, Tokens { ids: &ids, at: 0, seqs: idle.len(), seq_len: len }, tape);
            record(&idle, tape);
        }
        out
    }

    /// Mean loss of a set and, with `grad`, its gradient.
    fn mean_loss(&self, set: Set, theta: &Vec<R>, grad: Option<&mut [R]>) -> f64 {
        let rows = self.set(set);
        let k = self.seqs(rows);
        let losses = match grad {
            Some(g) => {
                let w = vec![R::of(1.0 / k as f64); k];
                self.run(theta, rows, Pass::Grad { weights: &w }, Some(g))
            }
            None => self.run(theta, rows, Pass::Loss, None),
        };
        losses.iter().sum::<f64>() / k as f64
    }
}

impl<R: Real> Engine for CpuTransformer<R> {
    type Real = R;
    type Vec = Vec<R>;

    fn name(&self) -> String {
        format!("cpu-{}", std::any::type_name::<R>())
    }
    fn num_params(&self) -> usize {
        self.layout.len
    }
    fn num_train(&self) -> usize {
        self.seqs(&self.train)
    }
    fn num_classes(&self) -> usize {
        self.cfg.vocab_size
    }
    fn step_flops(&self) -> StepFlops {
        let l = self.seq_len - 1;
        step_flops(&self.cfg, self.num_train() * l, self.seqs(&self.dev) * l, l)
    }

    host::host_vector_methods!();

    fn forward_step(
        &mut self,
        theta: &Vec<R>,
        gamma: &Vec<R>,
        t: usize,
        eta: f64,
        theta_next: &mut Vec<R>,
        dev_loss: Option<(&mut Vec<R>, usize)>,
    ) -> Result<()> {
        let (p, n) = (self.layout.len, self.num_train());
        host::check_len("theta", theta, p)?;
        host::check_len("theta_next", theta_next, p)?;
        let row = host::policy_row(gamma, t, n)?;
        if let Some((curve, i)) = dev_loss {
            host::set_curve_entry(curve, i, self.mean_loss(Set::Dev, theta, None))?;
        }
        self.run(theta, &self.train, Pass::Grad { weights: row }, Some(theta_next));
        // θ_next holds the gradient; turn it into θ − η·gradient.
        let eta = R::of(eta);
        theta_next.par_iter_mut().zip(theta.par_iter()).for_each(|(g, &th)| *g = th - eta * *g);
        Ok(())
    }

    fn backward_step(
        &mut self,
        theta: &Vec<R>,
        gamma: &Vec<R>,
        t: usize,
        lambda_next: &Vec<R>,
        eta: f64,
        dev_weight: f64,
        grad_gamma: &mut Vec<R>,
        lambda: &mut Vec<R>,
    ) -> Result<()> {
        let (p, n) = (self.layout.len, self.num_train());
        for (what, v) in [("theta", theta), ("lambda_next", lambda_next), ("lambda", &*lambda)] {
            host::check_len(what, v, p)?;
        }
        host::check_len("grad_gamma", grad_gamma, gamma.len())?;
        let row = host::policy_row(gamma, t, n)?;
        // λ ← H λ_next (Σ_n γ_n ∇²l_n), with the dots ∇l_n·λ_next from the same tangent pass.
        let dots = self.run(theta, &self.train, Pass::DotsHvp { v: lambda_next, weights: row }, Some(lambda));
        for (g, d) in grad_gamma[t * n..(t + 1) * n].iter_mut().zip(&dots) {
            *g = R::of(-eta * d);
        }
        let mut dev_grad = vec![R::zero(); p];
        super::check_finite("the desired loss", self.mean_loss(Set::Dev, theta, Some(&mut dev_grad)))?;
        // λ = dev_weight·∇L_dev + λ_next − η·Hλ_next.
        let (w, eta) = (R::of(dev_weight), R::of(eta));
        lambda.par_iter_mut().zip(dev_grad.par_iter().zip(lambda_next.par_iter())).for_each(|(l, (&g, &ln))| *l = w * g + ln - eta * *l);
        Ok(())
    }

    fn loss(&mut self, set: Set, theta: &Vec<R>) -> Result<f64> {
        host::check_len("theta", theta, self.layout.len)?;
        Ok(self.mean_loss(set, theta, None))
    }
    fn loss_grad(&mut self, set: Set, theta: &Vec<R>, grad: &mut Vec<R>) -> Result<f64> {
        host::check_len("theta", theta, self.layout.len)?;
        host::check_len("grad", grad, self.layout.len)?;
        Ok(self.mean_loss(set, theta, Some(grad)))
    }
    fn train_losses(&mut self, theta: &Vec<R>, out: &mut Vec<R>) -> Result<()> {
        host::check_len("theta", theta, self.layout.len)?;
        host::check_len("losses", out, self.num_train())?;
        let losses = self.run(theta, &self.train, Pass::Loss, None);
        out.iter_mut().zip(losses).for_each(|(o, l)| *o = R::of(l));
        Ok(())
    }
    fn train_dots(&mut self, theta: &Vec<R>, v: &Vec<R>, out: &mut Vec<R>) -> Result<()> {
        host::check_len("theta", theta, self.layout.len)?;
        host::check_len("v", v, self.layout.len)?;
        host::check_len("dots", out, self.num_train())?;
        let dots = self.run(theta, &self.train, Pass::Dots { v }, None);
        out.iter_mut().zip(dots).for_each(|(o, d)| *o = R::of(d));
        Ok(())
    }
}
