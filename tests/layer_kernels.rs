//! Conformance of the Transformer's layer kernels (`transformer::kernels::LayerKernels`): every
//! kernel of a backend against `CpuKernels<f64>`, the reference, on random shapes that are not
//! multiples of any workgroup, with and without tangents. Outputs a kernel overwrites are
//! poisoned with NaN first; outputs it adds into start from random values. Written once,
//! instantiated per backend by `layer_kernel_tests!`.
use learnlaw::cuda_backend::CudaKernels;
use learnlaw::text::PAD;
use learnlaw::transformer::kernels::{Act, Dims, GemmShape, HostBuffers, Norm, Operand, Output, Param, ParamGrads, Tokens};
use learnlaw::transformer::CpuKernels;
use learnlaw::wgpu_backend::{Options, WgpuKernels};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{assert_close, cuda_or_skip, host_sim_or_skip, rng, uniform, wgpu_or_skip, Tol};

/// Named outputs of one run of a case, downloaded to the host.
type Outputs = Vec<(&'static str, Vec<f64>)>;

/// Random cases per kernel.
const SEEDS: u64 = 6;

/// One kernel's check: draws its shapes and inputs from `r` (the same draws on every backend),
/// runs the kernel on `k`, and returns what it wrote.
trait Case {
    fn run<K: HostBuffers>(&self, k: &mut K, r: &mut ChaCha8Rng) -> Outputs;
}

/// `case` on the backend against the reference, for several seeds.
fn check<K: HostBuffers>(k: &mut K, tol: Tol, name: &str, case: impl Case) {
    for seed in 0..SEEDS {
        let got = case.run(k, &mut rng(seed));
        let want = case.run(&mut CpuKernels::<f64>::default(), &mut rng(seed));
        for ((what, g), (_, w)) in got.iter().zip(&want) {
            assert_close(&format!("{name} (seed {seed}): {what}"), g, w, tol);
        }
    }
}

fn nan(len: usize) -> Vec<f64> {
    vec![f64::NAN; len]
}

/// A pair of buffers of `len` random values (the tangent only when `tan`).
fn random_act<K: HostBuffers>(k: &mut K, r: &mut ChaCha8Rng, len: usize, tan: bool) -> Act<K::Buf> {
    let v = k.upload(&uniform(r, len, -1.0, 1.0));
    let t = if tan { k.upload(&uniform(r, len, -1.0, 1.0)) } else { K::Buf::default() };
    Act { v, t }
}

/// A pair of NaN-filled buffers (for outputs the kernel must overwrite).
fn poisoned_act<K: HostBuffers>(k: &mut K, len: usize, tan: bool) -> Act<K::Buf> {
    Act { v: k.upload(&nan(len)), t: if tan { k.upload(&nan(len)) } else { K::Buf::default() } }
}

fn download_act<K: HostBuffers>(k: &mut K, a: &Act<K::Buf>, len: usize, tan: bool, out: &mut Outputs, v: &'static str, t: &'static str) {
    out.push((v, k.download(&a.v, len)));
    if tan {
        out.push((t, k.download(&a.t, len)));
    }
}

/// θ and a direction of `len` values with a parameter block [at, at + block) inside.
struct Params<B> {
    theta: B,
    dir: B,
    at: usize,
}

fn random_params<K: HostBuffers>(k: &mut K, r: &mut ChaCha8Rng, block: usize) -> Params<K::Buf> {
    let at = r.random_range(0..7);
    let len = at + block + r.random_range(0..5);
    Params { theta: k.upload(&uniform(r, len, -1.0, 1.0)), dir: k.upload(&uniform(r, len, -1.0, 1.0)), at }
}

impl<B> Params<B> {
    fn param(&self, offset: usize, len: usize, tan: bool) -> Param<'_, B> {
        Param { theta: &self.theta, dir: tan.then_some(&self.dir), range: self.at + offset..self.at + offset + len }
    }
}

/// Random token rows: ids in 2..vocab, some sequences ending in PAD runs, one all PAD after the
/// first token (no labels at all), placed `at` ids into the buffer.
fn random_tokens(r: &mut ChaCha8Rng, seqs: usize, seq_len: usize, vocab: usize) -> (Vec<u32>, usize) {
    let at = r.random_range(0..5) * seq_len;
    let mut ids: Vec<u32> = (0..at).map(|_| r.random_range(2..vocab as u32)).collect();
    for s in 0..seqs {
        let real = if s == 1 { 1 } else { r.random_range(2..=seq_len) };
        ids.extend((0..seq_len).map(|i| if i < real { r.random_range(2..vocab as u32) } else { PAD }));
    }
    (ids, at)
}

fn operand<B>(x: &Act<B>, at: usize, trans: bool, tan: bool) -> Operand<'_, B> {
    Operand { v: &x.v, t: tan.then_some(&x.t), at, trans }
}

struct Gemm;
impl Case for Gemm {
    /// A random product, then one of the weight gradients' layout (Aᵀ·B, one matrix, k up to
    /// 200: the shape CUDA splits over k), then a product in whole vec4 (wgpu's gemm_sg8).
    fn run<K: HostBuffers>(&self, k: &mut K, r: &mut ChaCha8Rng) -> Outputs {
        let (m, n, kk, batch) = (r.random_range(1..40), r.random_range(1..40), r.random_range(1..40), r.random_range(1..4));
        let (ta, tb) = (r.random_bool(0.5), r.random_bool(0.5));
        let mut outs = gemm_case(k, r, (m, n, kk, batch), (ta, tb), 1);
        let (m, n, kk) = (r.random_range(1..40), r.random_range(1..40), r.random_range(1..200));
        outs.extend(gemm_case(k, r, (m, n, kk, 1), (true, false), 1));
        // Sizes, starts and strides in whole vec4 (wgpu's gemm_sg8 on subgroups of 8), across
        // its 64 × 64 tiles.
        let q = |r: &mut ChaCha8Rng, hi: usize| 4 * r.random_range(1..hi);
        let (m, n, kk, batch) = (q(r, 36), q(r, 36), q(r, 30), r.random_range(1..3));
        let (ta, tb) = (r.random_bool(0.5), r.random_bool(0.5));
        outs.extend(gemm_case(k, r, (m, n, kk, batch), (ta, tb), 4));
        outs
    }
}

fn gemm_case<K: HostBuffers>(
    k: &mut K,
    r: &mut ChaCha8Rng,
    (m, n, kk, batch): (usize, usize, usize, usize),
    (ta, tb): (bool, bool),
    align: usize,
) -> Outputs {
    let (tan, accumulate) = (r.random_bool(0.5), r.random_bool(0.5));
    // Strided batches with gaps between matrices, operands at offsets that are multiples of
    // `align` (odd ones for 1).
    let gap = |r: &mut ChaCha8Rng, hi: usize| align * r.random_range(0..hi);
    let (sa, sb, sc) = (m * kk + gap(r, 3), kk * n + gap(r, 3), m * n + gap(r, 3));
    let (aa, ab, ac) = (gap(r, 5), gap(r, 5), gap(r, 5));
    let a = random_act(k, r, aa + batch * sa, tan);
    let b = random_act(k, r, ab + batch * sb, tan);
    let c_len = ac + batch * sc;
    // β = 1 adds into random values; β = 0 must overwrite NaNs everywhere it writes.
    let mut c = if accumulate { random_act(k, r, c_len, tan) } else { poisoned_act(k, c_len, tan) };
    let shape = GemmShape { m, n, k: kk, batch, stride_a: sa, stride_b: sb, stride_c: sc };
    let only_tangent = tan && r.random_bool(0.3);
    let cm = c.pair_mut(tan);
    let out = Output { v: (!only_tangent).then_some(cm.v), t: cm.t, at: ac };
    k.gemm(shape, operand(&a, aa, ta, tan), operand(&b, ab, tb, tan), if accumulate { 1.0 } else { 0.0 }, out);
    // Only the written matrices (the gaps keep whatever they held).
    let mut outs = Outputs::new();
    let pick = |full: Vec<f64>| -> Vec<f64> { (0..batch).flat_map(|i| full[ac + i * sc..ac + i * sc + m * n].to_vec()).collect() };
    if !only_tangent {
        outs.push(("C", pick(k.download(&c.v, c_len))));
    }
    if tan {
        outs.push(("Ċ", pick(k.download(&c.t, c_len))));
    }
    outs
}

struct AddRelu;
impl Case for AddRelu {
    fn run<K: HostBuffers>(&self, k: &mut K, r: &mut ChaCha8Rng) -> Outputs {
        let (len, tan) = (r.random_range(1..300), r.random_bool(0.5));
        let x = random_act(k, r, len, tan);
        let mut y = random_act(k, r, len, tan);
        k.add(x.pair(tan), y.pair_mut(tan), len);
        let mut relu = poisoned_act(k, len, tan);
        k.relu_forward(y.pair(tan), len, relu.pair_mut(tan));
        let mut g = random_act(k, r, len, tan);
        k.relu_backward(&y.v, len, g.pair_mut(tan));
        let mut outs = Outputs::new();
        download_act(k, &y, len, tan, &mut outs, "x + y", "ẋ + ẏ");
        download_act(k, &relu, len, tan, &mut outs, "relu", "relu tangent");
        download_act(k, &g, len, tan, &mut outs, "relu backward", "relu backward tangent");
        outs
    }
}

struct Embedding;
impl Case for Embedding {
    fn run<K: HostBuffers>(&self, k: &mut K, r: &mut ChaCha8Rng) -> Outputs {
        let (vocab, h, seqs, seq_len) = (r.random_range(3..20), r.random_range(1..24), r.random_range(1..6), r.random_range(2..9));
        let tan = r.random_bool(0.5);
        let (ids, at) = random_tokens(r, seqs, seq_len, vocab);
        let ids = k.upload_ids(&ids);
        let tokens = Tokens { ids: &ids, at, seqs, seq_len };
        let m = tokens.rows();
        // Token table [vocab, h], then position table [seq_len − 1 + extra, h].
        let positions = seq_len - 1 + r.random_range(0..3);
        let p = random_params(k, r, (vocab + positions) * h);
        let mut x = poisoned_act(k, m * h, tan);
        k.embed_forward(tokens, p.param(0, vocab * h, tan), p.param(vocab * h, positions * h, tan), h, x.pair_mut(tan));
        let g = random_act(k, r, m * h, tan);
        let glen = p.at + (vocab + positions) * h + 4;
        let (mut grad, mut hvp) = (k.upload(&uniform(r, glen, -1.0, 1.0)), k.upload(&uniform(r, glen, -1.0, 1.0)));
        let range = p.at..p.at + (vocab + positions) * h;
        k.embed_backward(tokens, g.pair(tan), h, vocab, ParamGrads { grad: Some(&mut grad), hvp: tan.then_some(&mut hvp), range });
        let mut outs = Outputs::new();
        download_act(k, &x, m * h, tan, &mut outs, "x", "ẋ");
        outs.push(("token/position gradients", k.download(&grad, glen)));
        if tan {
            outs.push(("their tangents", k.download(&hvp, glen)));
        }
        outs
    }
}

struct RmsNorm;
impl Case for RmsNorm {
    fn run<K: HostBuffers>(&self, k: &mut K, r: &mut ChaCha8Rng) -> Outputs {
        let (m, h, tan) = (r.random_range(1..150), r.random_range(1..70), r.random_bool(0.5));
        let mut x = random_act(k, r, m * h, tan);
        if m > 2 {
            // A zero row: r = 0, where the kernels special-case the derivative of the rms.
            let mut xv = k.download(&x.v, m * h);
            xv[h..2 * h].fill(0.0);
            x.v = k.upload(&xv);
        }
        let p = random_params(k, r, 2 * h);
        let mut saved = Norm { n: poisoned_act(k, m * h, tan), r: poisoned_act(k, m, tan), out: poisoned_act(k, m * h, tan) };
        k.rmsnorm_forward(m, h, x.pair(tan), p.param(0, h, tan), p.param(h, h, tan), &mut saved);
        let gy = random_act(k, r, m * h, tan);
        let mut gx = random_act(k, r, m * h, tan);
        let glen = p.at + 2 * h + 3;
        let (mut gw, mut hw) = (k.upload(&uniform(r, glen, -1.0, 1.0)), k.upload(&uniform(r, glen, -1.0, 1.0)));
        let wb = ParamGrads { grad: Some(&mut gw), hvp: tan.then_some(&mut hw), range: p.at..p.at + 2 * h };
        k.rmsnorm_backward(m, h, &saved, x.pair(tan), p.param(0, h, tan), gy.pair(tan), gx.pair_mut(tan), wb);
        let mut outs = Outputs::new();
        download_act(k, &saved.out, m * h, tan, &mut outs, "out", "out tangent");
        download_act(k, &gx, m * h, tan, &mut outs, "gx", "gx tangent");
        outs.push(("weight and bias gradients", k.download(&gw, glen)));
        if tan {
            outs.push(("their tangents", k.download(&hw, glen)));
        }
        outs
    }
}

struct Attention;
impl Case for Attention {
    /// Three shapes per seed: a head width up to 11 and one above 16 with opposite tangent modes
    /// (attention.cu keeps rows in registers up to 16 and runs plain loops above), and 16 or 32
    /// (the CPU's loops are compiled for those widths as constants), up to three lane sets long.
    fn run<K: HostBuffers>(&self, k: &mut K, r: &mut ChaCha8Rng) -> Outputs {
        let tan = r.random_bool(0.5);
        let (small, large, constant) = (r.random_range(1..12), r.random_range(17..24), [16, 32][r.random_range(0..2)]);
        let mut outs = attention_case(k, r, small, 20, tan);
        outs.extend(attention_case(k, r, large, 20, !tan));
        let tan = r.random_bool(0.5);
        outs.extend(attention_case(k, r, constant, 40, tan));
        outs
    }
}

/// Sequences of fewer than `max_len` positions.
fn attention_case<K: HostBuffers>(k: &mut K, r: &mut ChaCha8Rng, dh: usize, max_len: usize, tan: bool) -> Outputs {
    let heads = r.random_range(1..4);
    let d = Dims { seqs: r.random_range(1..4), len: r.random_range(1..max_len), heads, hidden: heads * dh };
    let scale = r.random_range(0.1..1.5);
    let len = d.rows() * d.hidden;
    let q = random_act(k, r, len, tan);
    let kk = random_act(k, r, len, tan);
    let v = random_act(k, r, len, tan);
    let mut saved = K::Attention::default();
    // A first call of a longer shape leaves the saved state written in another layout: the call
    // under test must write all it reads back.
    let longer = Dims { len: max_len + 5, ..d };
    let (x, mut y) = (random_act(k, r, longer.rows() * d.hidden, tan), poisoned_act(k, longer.rows() * d.hidden, tan));
    k.attention_forward(longer, scale, x.pair(tan), x.pair(tan), x.pair(tan), &mut saved, y.pair_mut(tan));
    let mut o = poisoned_act(k, len, tan);
    k.attention_forward(d, scale, q.pair(tan), kk.pair(tan), v.pair(tan), &mut saved, o.pair_mut(tan));
    let go = random_act(k, r, len, tan);
    let (mut gq, mut gk, mut gv) = (poisoned_act(k, len, tan), poisoned_act(k, len, tan), poisoned_act(k, len, tan));
    k.attention_backward(
        d,
        scale,
        q.pair(tan),
        kk.pair(tan),
        v.pair(tan),
        &saved,
        go.pair(tan),
        gq.pair_mut(tan),
        gk.pair_mut(tan),
        gv.pair_mut(tan),
    );
    let mut outs = Outputs::new();
    download_act(k, &o, len, tan, &mut outs, "O", "Ȯ");
    download_act(k, &gq, len, tan, &mut outs, "gQ", "gQ tangent");
    download_act(k, &gk, len, tan, &mut outs, "gK", "gK tangent");
    download_act(k, &gv, len, tan, &mut outs, "gV", "gV tangent");
    outs
}

struct HeadCrossEntropy;
impl Case for HeadCrossEntropy {
    fn run<K: HostBuffers>(&self, k: &mut K, r: &mut ChaCha8Rng) -> Outputs {
        let (vocab, h, seqs, seq_len) = (r.random_range(3..60), r.random_range(1..20), r.random_range(2..6), r.random_range(2..9));
        let tan = r.random_bool(0.5);
        let (ids, at) = random_tokens(r, seqs, seq_len, vocab);
        let ids = k.upload_ids(&ids);
        let tokens = Tokens { ids: &ids, at, seqs, seq_len };
        let m = tokens.rows();
        let x = random_act(k, r, m * h, tan);
        let p = random_params(k, r, h * vocab);
        let w = || p.param(0, h * vocab, tan);
        let mut saved = K::Head::default();
        let (mut losses, mut dots) = (K::Sums::default(), K::Sums::default());
        // Per-sequence weights at an offset, one of them zero.
        let w_at = r.random_range(0..4);
        let mut weights = uniform(r, w_at + seqs, 0.0, 1.0);
        weights[w_at] = 0.0;
        let weights = k.upload(&weights);
        // A pass without PAD labels first leaves every row of the head's scratch written: the
        // pass under test must write its PAD rows again, not read those back.
        let busy = k.upload_ids(&(0..seqs * seq_len).map(|_| r.random_range(2..vocab as u32)).collect::<Vec<_>>());
        let busy = Tokens { ids: &busy, at: 0, seqs, seq_len };
        let (mut scratch, mut scratch_grad) = (random_act(k, r, m * h, tan), k.upload(&vec![0.0; p.at + h * vocab]));
        k.head_forward(busy, x.pair(tan), w(), h, vocab, &mut saved, &mut losses, &mut dots);
        let out = ParamGrads { grad: Some(&mut scratch_grad), hvp: None, range: p.at..p.at + h * vocab };
        k.head_backward(busy, &mut saved, x.pair(tan), w(), h, vocab, (&weights, w_at), scratch.pair_mut(tan), out);
        k.head_forward(tokens, x.pair(tan), w(), h, vocab, &mut saved, &mut losses, &mut dots);
        let mut gx = random_act(k, r, m * h, tan);
        let glen = p.at + h * vocab + 2;
        let (mut grad, mut hvp) = (k.upload(&uniform(r, glen, -1.0, 1.0)), k.upload(&uniform(r, glen, -1.0, 1.0)));
        let out = ParamGrads { grad: Some(&mut grad), hvp: tan.then_some(&mut hvp), range: p.at..p.at + h * vocab };
        k.head_backward(tokens, &mut saved, x.pair(tan), w(), h, vocab, (&weights, w_at), gx.pair_mut(tan), out);
        let mut outs = vec![("losses", k.download_sums(&losses, seqs))];
        if tan {
            outs.push(("dots", k.download_sums(&dots, seqs)));
        }
        download_act(k, &gx, m * h, tan, &mut outs, "gx", "gx tangent");
        outs.push(("head gradient", k.download(&grad, glen)));
        if tan {
            outs.push(("head HVP", k.download(&hvp, glen)));
        }
        outs
    }
}

/// Every layer kernel's check for one backend: `$make` gives its kernels (or None after a
/// visible SKIPPED line), `$tol` the tolerance against the f64 reference.
macro_rules! layer_kernel_tests {
    ($backend:ident, $make:expr, $tol:expr) => {
        mod $backend {
            use super::*;
            fn run(name: &str, case: impl Case) {
                if let Some(mut k) = $make {
                    check(&mut k, $tol, name, case);
                }
            }
            #[test]
            fn gemm() {
                run("gemm", Gemm);
            }
            #[test]
            fn add_and_relu() {
                run("add, relu", AddRelu);
            }
            #[test]
            fn embedding() {
                run("embedding", Embedding);
            }
            #[test]
            fn rmsnorm() {
                run("rmsnorm", RmsNorm);
            }
            #[test]
            fn attention() {
                run("attention", Attention);
            }
            #[test]
            fn head_cross_entropy() {
                run("head + cross-entropy", HeadCrossEntropy);
            }
        }
    };
}

layer_kernel_tests!(cpu_f32, Some(CpuKernels::<f32>::default()), Tol::of::<f32>());
layer_kernel_tests!(wgpu, wgpu_or_skip(WgpuKernels::open(&Options::default())), Tol::of::<f32>());
// gemm.wgsl's baseline variant (every GEMM of every kernel through it).
layer_kernel_tests!(
    wgpu_baseline_gemm,
    wgpu_or_skip(WgpuKernels::open(&Options::default())).map(|k| k.with_baseline_gemm()),
    Tol::of::<f32>()
);
// gemm_sg8.wgsl's barriers on every GEMM (by default only past k = 1024, too long a sum for f32
// tolerances on random operands).
layer_kernel_tests!(
    wgpu_gemm_barriers,
    wgpu_or_skip(WgpuKernels::open(&Options::default())).map(|k| k.with_gemm_barriers()),
    Tol::of::<f32>()
);
// As on a GPU: without subgroups, gemm.wgsl's register-blocked variant for every GEMM (no
// gemm_sg8), and a workgroup per reduced row (rmsnorm, cross-entropy; CPU adapters default to
// one invocation per row).
layer_kernel_tests!(
    wgpu_no_subgroups,
    wgpu_or_skip(WgpuKernels::open(&Options { no_subgroups: true, ..Options::default() })).map(|k| k.with_workgroup_rows()),
    Tol::of::<f32>()
);
// The head in chunks of a few rows (its logits never exist for a whole set).
layer_kernel_tests!(
    wgpu_small_head_chunks,
    wgpu_or_skip(WgpuKernels::open(&Options::default())).map(|k| k.with_head_chunk_logits(100)),
    Tol::of::<f32>()
);
layer_kernel_tests!(cuda, cuda_or_skip(CudaKernels::open(0)), Tol::of::<f32>());
layer_kernel_tests!(cuda_bf16_gemm, cuda_or_skip(CudaKernels::open(0)).map(|k| k.with_bf16_gemm()), Tol { atol: 6e-2, rtol: 2e-2 });
layer_kernel_tests!(cuda_split_k, cuda_or_skip(CudaKernels::open(0)).map(|k| k.with_split_k(3)), Tol::of::<f32>());
layer_kernel_tests!(cuda_stored_attention, cuda_or_skip(CudaKernels::open(0)).map(|k| k.with_stored_attention()), Tol::of::<f32>());
layer_kernel_tests!(cuda_small_head_chunks, cuda_or_skip(CudaKernels::open(0)).map(|k| k.with_head_chunk_logits(100)), Tol::of::<f32>());
// The same CUDA C compiled for the host and run on the CPU (learnlaw_cuda::HostSim): executes
// every CUDA kernel here and in CI, where no GPU is.
layer_kernel_tests!(cuda_on_host, host_sim_or_skip(CudaKernels::on_host()), Tol::of::<f32>());
// Weight-gradient GEMMs (Aᵀ·B of few output tiles) split over k in slices of 3, and the slices summed.
layer_kernel_tests!(cuda_on_host_split_k, host_sim_or_skip(CudaKernels::on_host()).map(|k| k.with_split_k(3)), Tol::of::<f32>());
// attention.cu's kernels that store P, where the flash ones would run (head width ≤ 16).
layer_kernel_tests!(
    cuda_on_host_stored_attention,
    host_sim_or_skip(CudaKernels::on_host()).map(|k| k.with_stored_attention()),
    Tol::of::<f32>()
);
layer_kernel_tests!(
    cuda_on_host_small_head_chunks,
    host_sim_or_skip(CudaKernels::on_host()).map(|k| k.with_head_chunk_logits(100)),
    Tol::of::<f32>()
);
// gemm.cu's tensor-core entries (bf16 operands, f32 sums) under every kernel, on the host: held to
// bf16's tolerance (8 significant bits per operand: sums of 200 products of values in ±1 are off
// by up to ~0.03; a misplaced fragment is off by O(1)).
layer_kernel_tests!(
    cuda_on_host_bf16_gemm,
    host_sim_or_skip(CudaKernels::on_host()).map(|k| k.with_bf16_gemm()),
    Tol { atol: 6e-2, rtol: 2e-2 }
);
