//! The layer-kernel interface: the operations the Transformer's passes are written over
//! (`model`), implemented once per backend (`cpu_kernels` for the CPU, the reference).
//!
//! Every operation works on value/tangent pairs: in tangent mode each activation carries its
//! derivative along a direction v of parameter space, and a kernel computes both halves (a fused
//! kernel reads its inputs once for both). Operations only enqueue work on buffers the caller owns
//! and never return a host value, so a GPU backend can record a whole step and replay it.
//!
//! Accumulation semantics are part of the interface, since they fix the summation order (and so
//! the CPU's bits): where a method says "adds into", it adds to what its output holds (β = 1);
//! gradients of parameters always add into the caller's gradient buffers.
use std::ops::Range;

/// A value buffer and, in tangent mode, its tangent buffer (same length).
pub struct Act<B> {
    pub v: B,
    pub t: B,
}

impl<B: Default> Default for Act<B> {
    fn default() -> Self {
        Act { v: B::default(), t: B::default() }
    }
}

impl<B> Act<B> {
    /// Read view; `tan` says whether the tangent half is live.
    pub fn pair(&self, tan: bool) -> Pair<'_, B> {
        Pair { v: &self.v, t: tan.then_some(&self.t) }
    }
    pub fn pair_mut(&mut self, tan: bool) -> PairMut<'_, B> {
        PairMut { v: &mut self.v, t: if tan { Some(&mut self.t) } else { None } }
    }
}

/// Read access to a value and, in tangent mode, its tangent.
pub struct Pair<'a, B> {
    pub v: &'a B,
    pub t: Option<&'a B>,
}

impl<B> Clone for Pair<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Pair<'_, B> {}

/// Write access to a value and, in tangent mode, its tangent.
pub struct PairMut<'a, B> {
    pub v: &'a mut B,
    pub t: Option<&'a mut B>,
}

/// A parameter block: `range` of θ and, in tangent mode, of the direction v.
pub struct Param<'a, B> {
    pub theta: &'a B,
    pub dir: Option<&'a B>,
    pub range: Range<usize>,
}

impl<B> Clone for Param<'_, B> {
    fn clone(&self) -> Self {
        Param { theta: self.theta, dir: self.dir, range: self.range.clone() }
    }
}

/// Where a parameter block's gradient (and its tangent, the HVP) are added: `range` of each
/// buffer. Either may be absent (a pass that wants only the HVP, or only the gradient).
pub struct ParamGrads<'a, B> {
    pub grad: Option<&'a mut B>,
    pub hvp: Option<&'a mut B>,
    pub range: Range<usize>,
}

/// A GEMM operand: a row-major matrix from element `at` of a value buffer (and, in tangent mode,
/// of its tangent buffer at the same offset), read transposed when `trans`.
pub struct Operand<'a, B> {
    pub v: &'a B,
    pub t: Option<&'a B>,
    pub at: usize,
    pub trans: bool,
}

/// A GEMM result: from element `at`, the value and/or the tangent half.
pub struct Output<'a, B> {
    pub v: Option<&'a mut B>,
    pub t: Option<&'a mut B>,
    pub at: usize,
}

/// The shape of a (strided-batched) GEMM: `batch` products op(A)[m, k]·op(B)[k, n] → C[m, n],
/// matrix i of each operand `stride` elements after matrix i − 1 (all matrices contiguous).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl GemmShape {
    /// One product of contiguous matrices.
    pub fn single(m: usize, n: usize, k: usize) -> Self {
        GemmShape { m, n, k, batch: 1, stride_a: 0, stride_b: 0, stride_c: 0 }
    }
}

/// The attention's shape: sequences, positions, heads, hidden width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub seqs: usize,
    pub len: usize,
    pub heads: usize,
    pub hidden: usize,
}

impl Dims {
    pub fn rows(&self) -> usize {
        self.seqs * self.len
    }
}

/// A chunk's token rows: `seqs` sequences of `seq_len` ids from element `at` of `ids`. Position
/// i of sequence s reads input ids[s·seq_len + i] and predicts label ids[s·seq_len + i + 1], for
/// i < seq_len − 1.
pub struct Tokens<'a, I> {
    pub ids: &'a I,
    pub at: usize,
    pub seqs: usize,
    pub seq_len: usize,
}

impl<I> Clone for Tokens<'_, I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I> Copy for Tokens<'_, I> {}

impl<I> Tokens<'_, I> {
    /// Predicted positions per sequence (L).
    pub fn len(&self) -> usize {
        self.seq_len - 1
    }
    /// Rows of the activations (M = B·L).
    pub fn rows(&self) -> usize {
        self.seqs * self.len()
    }
    pub fn is_empty(&self) -> bool {
        self.seqs == 0
    }
}

/// RMSNorm's saved forward quantities: n = x/(r + ε) and r = rms(x) per row, and the output.
pub struct Norm<B> {
    pub n: Act<B>,
    pub r: Act<B>,
    pub out: Act<B>,
}

impl<B: Default> Default for Norm<B> {
    fn default() -> Self {
        Norm { n: Act::default(), r: Act::default(), out: Act::default() }
    }
}

/// The layer kernels one backend implements. Lengths are in elements of `Real`.
pub trait LayerKernels {
    /// A buffer of reals (activations, θ, gradients).
    type Buf: Default;
    /// A buffer of token ids.
    type Ids;
    /// Per-sequence sums (losses, dots), in the backend's accumulation precision.
    type Sums: Default;
    /// What attention saves for its backward (probabilities, or per-row statistics).
    type Attention: Default;
    /// What the LM head + cross-entropy saves for its backward.
    type Head: Default;

    /// Sizes `b` for `len` values (contents unspecified: callers overwrite them).
    fn resize(&mut self, b: &mut Self::Buf, len: usize);
    /// Sizes `b` for `len` values, all zero.
    fn zero(&mut self, b: &mut Self::Buf, len: usize);
    /// dst[..len] ← src[..len].
    fn copy(&mut self, src: &Self::Buf, dst: &mut Self::Buf, len: usize);
    /// y ← y + x over `len` values, both halves.
    fn add(&mut self, x: Pair<Self::Buf>, y: PairMut<Self::Buf>, len: usize);

    /// C ← op(A)·op(B) + β·C on pairs: the value half C ← A·B + β·C and the tangent half
    /// Ċ ← Ȧ·B + β·Ċ, then Ċ ← Ċ + A·Ḃ (that order). Each half of C is written when present;
    /// the tangent half needs both operands' tangents. β = 0 overwrites C (NaNs do not propagate).
    fn gemm(&mut self, shape: GemmShape, a: Operand<Self::Buf>, b: Operand<Self::Buf>, beta: f64, c: Output<Self::Buf>);

    /// `x[row] = tok[input id] + pos[position]`, for every row of the chunk (width `hidden`).
    fn embed_forward(
        &mut self,
        tokens: Tokens<Self::Ids>,
        tok: Param<Self::Buf>,
        pos: Param<Self::Buf>,
        hidden: usize,
        x: PairMut<Self::Buf>,
    );
    /// Adds each row's gradient `g` to the token-embedding row it read and to its position's
    /// row, in row order (deterministic). `out` spans both tables, adjacent in θ: the token
    /// embedding [vocab, hidden] first, then the position embedding.
    fn embed_backward(&mut self, tokens: Tokens<Self::Ids>, g: Pair<Self::Buf>, hidden: usize, vocab: usize, out: ParamGrads<Self::Buf>);

    /// RMSNorm over `rows` rows of width `hidden`: r = √(mean x²), n = x/(r + ε),
    /// out = w ⊙ n + b, with tangents; into `saved` (sized by the caller).
    fn rmsnorm_forward(
        &mut self,
        rows: usize,
        hidden: usize,
        x: Pair<Self::Buf>,
        w: Param<Self::Buf>,
        b: Param<Self::Buf>,
        saved: &mut Norm<Self::Buf>,
    );
    /// Backward of RMSNorm given gy: adds into gx; adds the gradients of w and b, which are
    /// adjacent in θ (w first), into `wb`.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &mut self,
        rows: usize,
        hidden: usize,
        saved: &Norm<Self::Buf>,
        x: Pair<Self::Buf>,
        w: Param<Self::Buf>,
        gy: Pair<Self::Buf>,
        gx: PairMut<Self::Buf>,
        wb: ParamGrads<Self::Buf>,
    );

    /// y = max(x, 0) and ẏ = ẋ ⊙ \[x > 0\] over `len` values.
    fn relu_forward(&mut self, x: Pair<Self::Buf>, len: usize, y: PairMut<Self::Buf>);
    /// g ← g ⊙ \[x > 0\] in place, both halves (ReLU's second derivative is zero almost everywhere).
    fn relu_backward(&mut self, x: &Self::Buf, len: usize, g: PairMut<Self::Buf>);

    /// Causal multi-head attention per sequence and head over [M, hidden] activations:
    /// S = scale·Q Kᵀ, P = softmax over j ≤ i, O = P V; with tangents. Overwrites `o`.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &mut self,
        d: Dims,
        scale: f64,
        q: Pair<Self::Buf>,
        k: Pair<Self::Buf>,
        v: Pair<Self::Buf>,
        saved: &mut Self::Attention,
        o: PairMut<Self::Buf>,
    );
    /// Backward of attention given gO: overwrites gQ, gK, gV (and their tangents).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &mut self,
        d: Dims,
        scale: f64,
        q: Pair<Self::Buf>,
        k: Pair<Self::Buf>,
        v: Pair<Self::Buf>,
        saved: &Self::Attention,
        go: Pair<Self::Buf>,
        gq: PairMut<Self::Buf>,
        gk: PairMut<Self::Buf>,
        gv: PairMut<Self::Buf>,
    );

    /// The LM head z = x·W (W [hidden, vocab]) fused with the per-token cross-entropy against the
    /// chunk's labels (PAD labels excluded): writes per sequence the mean token loss l_n to
    /// `losses` and, in tangent mode, its derivative along the direction l̇_n = ∇l_n·v to `dots`;
    /// keeps in `saved` what the backward needs.
    #[allow(clippy::too_many_arguments)]
    fn head_forward(
        &mut self,
        tokens: Tokens<Self::Ids>,
        x: Pair<Self::Buf>,
        w: Param<Self::Buf>,
        hidden: usize,
        vocab: usize,
        saved: &mut Self::Head,
        losses: &mut Self::Sums,
        dots: &mut Self::Sums,
    );
    /// Backward of Σ_n γ_n l_n through the head (γ_n = weights[at + n]): adds into gx (which the
    /// caller zeroed) and into the head's gradient and HVP.
    #[allow(clippy::too_many_arguments)]
    fn head_backward(
        &mut self,
        tokens: Tokens<Self::Ids>,
        saved: &mut Self::Head,
        x: Pair<Self::Buf>,
        w: Param<Self::Buf>,
        hidden: usize,
        vocab: usize,
        weights: (&Self::Buf, usize),
        gx: PairMut<Self::Buf>,
        out: ParamGrads<Self::Buf>,
    );
}

/// The backward of the linear layer y = x·W (x [m, n_in], W [n_in, n_out] at `w`) on pairs,
/// through `gemm`: gx ← gx + gy·Wᵀ, and the weight's gradient xᵀ·gy (and its tangent, the HVP)
/// added into `out`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<K: LayerKernels + ?Sized>(
    k: &mut K,
    m: usize,
    x: Pair<K::Buf>,
    w: Param<K::Buf>,
    gy: Pair<K::Buf>,
    (n_in, n_out): (usize, usize),
    gx: PairMut<K::Buf>,
    out: ParamGrads<K::Buf>,
) {
    let gyo = Operand { v: gy.v, t: gy.t, at: 0, trans: false };
    let wo = Operand { v: w.theta, t: w.dir, at: w.range.start, trans: true };
    k.gemm(GemmShape::single(m, n_in, n_out), gyo, wo, 1.0, Output { v: Some(gx.v), t: gx.t, at: 0 });
    if out.grad.is_some() || out.hvp.is_some() {
        let xo = Operand { v: x.v, t: x.t, at: 0, trans: true };
        let gyo = Operand { v: gy.v, t: gy.t, at: 0, trans: false };
        k.gemm(GemmShape::single(n_in, n_out, m), xo, gyo, 1.0, Output { v: out.grad, t: out.hvp, at: out.range.start });
    }
}

/// Host transfers of a kernel backend's buffers: what tests and tools use to put inputs on the
/// device and read results back (the model's passes never do).
pub trait HostBuffers: LayerKernels {
    fn upload(&mut self, host: &[f64]) -> Self::Buf;
    fn download(&mut self, b: &Self::Buf, len: usize) -> Vec<f64>;
    fn upload_ids(&mut self, host: &[u32]) -> Self::Ids;
    fn download_sums(&mut self, s: &Self::Sums, len: usize) -> Vec<f64>;
}

/// The CSR index of `ids` that GPU embedding backwards sum in row order with (no float atomics):
/// `start` \[max id + 2\] and `pos`, where `pos[start[u]..start[u + 1]]` are the positions of id u,
/// ascending.
pub fn positions_by_id(ids: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let vocab = ids.iter().map(|&i| i as usize + 1).max().unwrap_or(0);
    let mut start = vec![0u32; vocab + 1];
    for &i in ids {
        start[i as usize + 1] += 1;
    }
    for u in 0..vocab {
        start[u + 1] += start[u];
    }
    let mut next = start.clone();
    let mut pos = vec![0u32; ids.len()];
    for (p, &i) in ids.iter().enumerate() {
        pos[next[i as usize] as usize] = p as u32;
        next[i as usize] += 1;
    }
    (start, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_lists_each_ids_positions_in_order() {
        let (start, pos) = positions_by_id(&[3, 1, 3, 0, 1, 3]);
        assert_eq!(start, vec![0, 1, 3, 3, 6]);
        assert_eq!(pos, vec![3, 1, 4, 0, 2, 5]);
    }
}
