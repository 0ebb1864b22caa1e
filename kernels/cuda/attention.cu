// attention.cu — causal multi-head attention, forward and backward, each with its forward-mode
// tangent (crate learnlaw-cuda; the CUDA twin of kernels/wgsl/attention.wgsl, entry for entry).
// CPU reference: `CpuKernels::attention_forward` and `attention_backward` (learnlaw-core
// transformer/cpu_kernels.rs).
//
// Math, per sequence and head (rows i, j < L, head_dim dh, scale c, j ≤ i):
//   forward   S = c·Q Kᵀ, P = softmax_j(S), O = P V
//             Ṡ = c(Q̇ Kᵀ + Q K̇ᵀ), Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)), Ȯ = Ṗ V + P V̇
//   backward  gP = gO Vᵀ, ρ = rowsum(gP ⊙ P), gS = P ⊙ (gP − ρ)            (`backward_rows`)
//             gQ = c·gS K;                                                   (`backward_rows`)
//             gK = c·gSᵀ Q, gV = Pᵀ gO                                        (`backward_cols`)
//             and the tangent of each product by the product rule.
// Buffers (f32): Q, K, V, O, gO, gQ, gK, gV [M = B·L, H] with head h in columns h·dh..(h+1)·dh;
//   P, Ṗ, gS, ġS [B, heads, L, L] (only j ≤ i is written or read), kept by the engine.
//   Parameters: the entry's storage buffers in the WGSL's binding order, then AttentionParams by
//   value (the WGSL's Params, 32 bytes). A tangent buffer is only touched when tangent == 1 (the
//   engine passes null for it otherwise); with tangent == 1 every tangent buffer must be real.
// Geometry: blocks of 64 threads (BLOCK, the WGSL's workgroup), grid = the wgpu dispatch's
//   workgroup count (⌈B·heads·L / 64⌉, at most 65535); one thread per (sequence, head, row) — of
//   a query row i (forward, backward_rows) or of a key row j (backward_cols, so gK and gV are
//   sums over i in order, no atomics), grid-striding like the WGSL. Indices as in the WGSL, except
//   that each item's base offsets are 64-bit (P has B·heads·L² elements); offsets inside one
//   (sequence, head) are 32-bit.
// Arithmetic: every sum is the WGSL's, term for term in the same order (d ascending in a dot, j
//   or i ascending over rows), so results are bit-reproducible run to run. NVRTC contracts a·b + c
//   into FMAs (its default --fmad=true, like every kernel of this crate); naga/lavapipe may not, so
//   CUDA and wgpu agree to rounding (both are checked against the f64 reference), not bit for bit.
// Variants:
//   generic (any dh) — the WGSL's loops, with the head's row bases hoisted out of the inner loops
//     and read-only inputs through the non-coherent cache (const __restrict__), and, in
//     backward_rows, gP[i, j] and ġP[i, j] computed once per (i, j) (parked in the gS/ġS row, which
//     this thread owns, until gS replaces them) instead of 4 and 2 times.
//   registers (dh ≤ DH_REG = 16: the paper's 128/8, and the conformance tests' shapes) — the same
//     sums with the thread's own rows (Q, Q̇; gO, ġO) and its output rows' accumulators held in
//     registers (fully unrolled dh loops), so the other operand's row (K_j, V_j, …) is the only
//     load per term and is the same address for every lane of a warp (one broadcast transaction
//     instead of 32 scattered ones). The forward normalises P inside the O loop and forms Ṗ inside
//     the Ȯ loop (same values stored, one pass over the row less each); backward_cols lets all lanes
//     of a warp walk i from lane 0's j (a lane adds only its terms i ≥ j, in order), so those
//     loads are broadcasts too.
//   Not yet: the flash-style tiled kernel that keeps only the row statistics instead of P.

#define BLOCK 64
// Head widths up to this run the register variant.
#define DH_REG 16

// Mirrors the WGSL's Params (and `AttentionParams` of the Rust side, #[repr(C)], 32 bytes).
struct AttentionParams {
    unsigned int seqs;
    unsigned int len;
    unsigned int heads;
    unsigned int hidden;
    float scale;
    unsigned int tangent;
    unsigned int _pad0;
    unsigned int _pad1;
};

// One thread's item: WGSL `item_of`, with the head's offsets as 64-bit bases.
struct Item {
    unsigned int row;    // i (forward, backward_rows) or j (backward_cols)
    size_t head;         // element of (row 0 of this sequence, column 0 of this head) in [M, H]
    size_t pblock;       // first element of this (sequence, head) block [L, L] of P
};

__device__ __forceinline__ Item item_of(const AttentionParams& q, unsigned int item) {
    const unsigned int l = q.len, dh = q.hidden / q.heads, sh = item / l;
    Item it;
    it.row = item % l;
    // WGSL ix(r, d) = (seq_row0 + r)·hidden + col0 + d = head + r·hidden + d.
    it.head = (size_t)(sh / q.heads) * l * q.hidden + (size_t)(sh % q.heads) * dh;
    it.pblock = (size_t)sh * l * l;
    return it;
}

// ---------------------------------------------------------------------------------------------
// forward: P (and Ṗ) rows and O (and Ȯ), per query row i.

// The WGSL's loops (any dh).
__device__ __forceinline__ void forward_generic(const float* __restrict__ fq, const float* __restrict__ fq_t,
                                                const float* __restrict__ fk, const float* __restrict__ fk_t,
                                                const float* __restrict__ fv, const float* __restrict__ fv_t, float* fp,
                                                float* fp_t, float* fo, float* fo_t, const AttentionParams& par,
                                                const Item& it, unsigned int dh, bool tan) {
    const unsigned int i = it.row, hs = par.hidden;
    const size_t qi = it.head + (size_t)i * hs;  // ix(i, 0)
    const size_t pr = it.pblock + (size_t)i * par.len;
    float mx = -3.0e38f;
    for (unsigned int j = 0; j <= i; j++) {
        const float* kj = fk + it.head + j * hs;
        float s = 0.0f;
        for (unsigned int d = 0; d < dh; d++) s = s + fq[qi + d] * kj[d];
        s = par.scale * s;
        fp[pr + j] = s;
        mx = fmaxf(mx, s);
    }
    float sum = 0.0f;
    for (unsigned int j = 0; j <= i; j++) {
        const float e = expf(fp[pr + j] - mx);
        fp[pr + j] = e;
        sum = sum + e;
    }
    const float inv = 1.0f / sum;
    for (unsigned int j = 0; j <= i; j++) fp[pr + j] = fp[pr + j] * inv;
    for (unsigned int d = 0; d < dh; d++) {
        float acc = 0.0f;
        for (unsigned int j = 0; j <= i; j++) acc = acc + fp[pr + j] * fv[it.head + j * hs + d];
        fo[qi + d] = acc;
    }
    if (tan) {
        float mean = 0.0f;
        for (unsigned int j = 0; j <= i; j++) {
            const size_t kj = it.head + j * hs;
            float st = 0.0f;
            for (unsigned int d = 0; d < dh; d++) st = st + fq_t[qi + d] * fk[kj + d] + fq[qi + d] * fk_t[kj + d];
            st = par.scale * st;
            fp_t[pr + j] = st;
            mean = mean + fp[pr + j] * st;
        }
        for (unsigned int j = 0; j <= i; j++) fp_t[pr + j] = fp[pr + j] * (fp_t[pr + j] - mean);
        for (unsigned int d = 0; d < dh; d++) {
            float acc = 0.0f;
            for (unsigned int j = 0; j <= i; j++) {
                const size_t vj = it.head + j * hs + d;
                acc = acc + fp_t[pr + j] * fv[vj] + fp[pr + j] * fv_t[vj];
            }
            fo_t[qi + d] = acc;
        }
    }
}

// dh ≤ DH_REG: the same sums with Q_i, Q̇_i and the O/Ȯ accumulators in registers.
__device__ __forceinline__ void forward_reg(const float* __restrict__ fq, const float* __restrict__ fq_t,
                                            const float* __restrict__ fk, const float* __restrict__ fk_t,
                                            const float* __restrict__ fv, const float* __restrict__ fv_t, float* fp,
                                            float* fp_t, float* fo, float* fo_t, const AttentionParams& par,
                                            const Item& it, unsigned int dh, bool tan) {
    const unsigned int i = it.row, hs = par.hidden;
    const size_t qi = it.head + (size_t)i * hs;
    float* pr = fp + it.pblock + (size_t)i * par.len;
    float qv[DH_REG], acc[DH_REG];
#pragma unroll
    for (unsigned int d = 0; d < DH_REG; d++) qv[d] = d < dh ? fq[qi + d] : 0.0f;
    float mx = -3.0e38f;
    for (unsigned int j = 0; j <= i; j++) {
        const float* kj = fk + it.head + j * hs;
        float s = 0.0f;
#pragma unroll
        for (unsigned int d = 0; d < DH_REG; d++)
            if (d < dh) s = s + qv[d] * kj[d];
        s = par.scale * s;
        pr[j] = s;
        mx = fmaxf(mx, s);
    }
    float sum = 0.0f;
    for (unsigned int j = 0; j <= i; j++) {
        const float e = expf(pr[j] - mx);
        pr[j] = e;
        sum = sum + e;
    }
    const float inv = 1.0f / sum;
    // WGSL: P_j = e_j·inv stored in one pass, then O[d] = Σ_j P_j V_j[d] per d; here both in one
    // pass over j (each O[d] still sums j = 0..i in order).
#pragma unroll
    for (unsigned int d = 0; d < DH_REG; d++) acc[d] = 0.0f;
    for (unsigned int j = 0; j <= i; j++) {
        const float pj = pr[j] * inv;
        pr[j] = pj;
        const float* vj = fv + it.head + j * hs;
#pragma unroll
        for (unsigned int d = 0; d < DH_REG; d++)
            if (d < dh) acc[d] = acc[d] + pj * vj[d];
    }
#pragma unroll
    for (unsigned int d = 0; d < DH_REG; d++)
        if (d < dh) fo[qi + d] = acc[d];
    if (tan) {
        float* pt = fp_t + it.pblock + (size_t)i * par.len;
        float qt[DH_REG];
#pragma unroll
        for (unsigned int d = 0; d < DH_REG; d++) qt[d] = d < dh ? fq_t[qi + d] : 0.0f;
        float mean = 0.0f;
        for (unsigned int j = 0; j <= i; j++) {
            const float* kj = fk + it.head + j * hs;
            const float* ktj = fk_t + it.head + j * hs;
            float st = 0.0f;
#pragma unroll
            for (unsigned int d = 0; d < DH_REG; d++)
                if (d < dh) st = st + qt[d] * kj[d] + qv[d] * ktj[d];
            st = par.scale * st;
            pt[j] = st;
            mean = mean + pr[j] * st;
        }
        // WGSL: Ṗ_j = P_j (Ṡ_j − mean) stored in one pass, then Ȯ per d; here in one pass.
#pragma unroll
        for (unsigned int d = 0; d < DH_REG; d++) acc[d] = 0.0f;
        for (unsigned int j = 0; j <= i; j++) {
            const float pj = pr[j];
            const float ptj = pj * (pt[j] - mean);
            pt[j] = ptj;
            const float* vj = fv + it.head + j * hs;
            const float* vtj = fv_t + it.head + j * hs;
#pragma unroll
            for (unsigned int d = 0; d < DH_REG; d++)
                if (d < dh) acc[d] = acc[d] + ptj * vj[d] + pj * vtj[d];
        }
#pragma unroll
        for (unsigned int d = 0; d < DH_REG; d++)
            if (d < dh) fo_t[qi + d] = acc[d];
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK) forward(const float* __restrict__ fq, const float* __restrict__ fq_t,
                                                            const float* __restrict__ fk, const float* __restrict__ fk_t,
                                                            const float* __restrict__ fv, const float* __restrict__ fv_t,
                                                            float* fp, float* fp_t, float* fo, float* fo_t,
                                                            AttentionParams par) {
    const unsigned int dh = par.hidden / par.heads;
    const unsigned int total = par.seqs * par.heads * par.len;
    const bool tan = par.tangent == 1u;
    for (unsigned int item = blockIdx.x * BLOCK + threadIdx.x; item < total; item += gridDim.x * BLOCK) {
        const Item it = item_of(par, item);
        if (dh <= DH_REG) {
            forward_reg(fq, fq_t, fk, fk_t, fv, fv_t, fp, fp_t, fo, fo_t, par, it, dh, tan);
        } else {
            forward_generic(fq, fq_t, fk, fk_t, fv, fv_t, fp, fp_t, fo, fo_t, par, it, dh, tan);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// backward_rows: per query row i: gS (and ġS) into rs, rs_t; gQ (and its tangent) overwritten.
//
// The WGSL evaluates gP[i, j] = gO_i·V_j (its grad_p) 2 times per (i, j), 4 in tangent mode, and
// ġP[i, j] = ġO_i·V_j + gO_i·V̇_j (grad_p_t) 2 times. Here each is computed once, with the WGSL's
// summation, and parked in this thread's row of gS (ġS) until gS (ġS) overwrites it; every
// expression that used them is the WGSL's, in its order, so the results are the same.

__device__ __forceinline__ void rows_generic(const float* __restrict__ rk, const float* __restrict__ rk_t,
                                             const float* __restrict__ rv, const float* __restrict__ rv_t,
                                             const float* __restrict__ rp, const float* __restrict__ rp_t,
                                             const float* __restrict__ rgo, const float* __restrict__ rgo_t, float* rs,
                                             float* rs_t, float* rgq, float* rgq_t, const AttentionParams& par,
                                             const Item& it, unsigned int dh, bool tan) {
    const unsigned int i = it.row, hs = par.hidden;
    const float c = par.scale;
    const size_t gi = it.head + (size_t)i * hs;  // ix(i, 0)
    const size_t pr = it.pblock + (size_t)i * par.len;
    // gP[i, j] into rs[pr + j]; ρ.
    float rho = 0.0f;
    for (unsigned int j = 0; j <= i; j++) {
        const float* vj = rv + it.head + j * hs;
        float s = 0.0f;
        for (unsigned int d = 0; d < dh; d++) s = s + rgo[gi + d] * vj[d];
        rs[pr + j] = s;
        rho = rho + rp[pr + j] * s;
    }
    float rho_t = 0.0f;
    if (tan) {
        // ġP[i, j] into rs_t[pr + j]; ρ̇.
        for (unsigned int j = 0; j <= i; j++) {
            const size_t vj = it.head + j * hs;
            float s = 0.0f;
            for (unsigned int d = 0; d < dh; d++) s = s + rgo_t[gi + d] * rv[vj + d] + rgo[gi + d] * rv_t[vj + d];
            rs_t[pr + j] = s;
            rho_t = rho_t + s * rp[pr + j] + rs[pr + j] * rp_t[pr + j];
        }
    }
    // gS (and ġS, which needs gP before gS replaces it).
    for (unsigned int j = 0; j <= i; j++) {
        const float gp = rs[pr + j];
        if (tan) rs_t[pr + j] = rp_t[pr + j] * (gp - rho) + rp[pr + j] * (rs_t[pr + j] - rho_t);
        rs[pr + j] = rp[pr + j] * (gp - rho);
    }
    for (unsigned int d = 0; d < dh; d++) {
        float acc = 0.0f;
        for (unsigned int j = 0; j <= i; j++) acc = acc + rs[pr + j] * rk[it.head + j * hs + d];
        rgq[gi + d] = c * acc;
    }
    if (tan) {
        for (unsigned int d = 0; d < dh; d++) {
            float acc = 0.0f;
            for (unsigned int j = 0; j <= i; j++) {
                const size_t kj = it.head + j * hs + d;
                acc = acc + rs_t[pr + j] * rk[kj] + rs[pr + j] * rk_t[kj];
            }
            rgq_t[gi + d] = c * acc;
        }
    }
}

__device__ __forceinline__ void rows_reg(const float* __restrict__ rk, const float* __restrict__ rk_t,
                                         const float* __restrict__ rv, const float* __restrict__ rv_t,
                                         const float* __restrict__ rp, const float* __restrict__ rp_t,
                                         const float* __restrict__ rgo, const float* __restrict__ rgo_t, float* rs,
                                         float* rs_t, float* rgq, float* rgq_t, const AttentionParams& par,
                                         const Item& it, unsigned int dh, bool tan) {
    const unsigned int i = it.row, hs = par.hidden;
    const float c = par.scale;
    const size_t gi = it.head + (size_t)i * hs;
    const size_t pr = it.pblock + (size_t)i * par.len;
    float go[DH_REG], got[DH_REG], acc[DH_REG], acct[DH_REG];
#pragma unroll
    for (unsigned int d = 0; d < DH_REG; d++) go[d] = d < dh ? rgo[gi + d] : 0.0f;
    float rho = 0.0f;
    for (unsigned int j = 0; j <= i; j++) {
        const float* vj = rv + it.head + j * hs;
        float s = 0.0f;
#pragma unroll
        for (unsigned int d = 0; d < DH_REG; d++)
            if (d < dh) s = s + go[d] * vj[d];
        rs[pr + j] = s;
        rho = rho + rp[pr + j] * s;
    }
    float rho_t = 0.0f;
    if (tan) {
#pragma unroll
        for (unsigned int d = 0; d < DH_REG; d++) got[d] = d < dh ? rgo_t[gi + d] : 0.0f;
        for (unsigned int j = 0; j <= i; j++) {
            const float* vj = rv + it.head + j * hs;
            const float* vtj = rv_t + it.head + j * hs;
            float s = 0.0f;
#pragma unroll
            for (unsigned int d = 0; d < DH_REG; d++)
                if (d < dh) s = s + got[d] * vj[d] + go[d] * vtj[d];
            rs_t[pr + j] = s;
            rho_t = rho_t + s * rp[pr + j] + rs[pr + j] * rp_t[pr + j];
        }
    }
    // gS, ġS and gQ, ġQ in one pass over j (each gQ[d] still sums j = 0..i in order).
#pragma unroll
    for (unsigned int d = 0; d < DH_REG; d++) {
        acc[d] = 0.0f;
        acct[d] = 0.0f;
    }
    for (unsigned int j = 0; j <= i; j++) {
        const float pj = rp[pr + j];
        const float gp = rs[pr + j];
        const float gs = pj * (gp - rho);
        rs[pr + j] = gs;
        const float* kj = rk + it.head + j * hs;
        if (tan) {
            const float gst = rp_t[pr + j] * (gp - rho) + pj * (rs_t[pr + j] - rho_t);
            rs_t[pr + j] = gst;
            const float* ktj = rk_t + it.head + j * hs;
#pragma unroll
            for (unsigned int d = 0; d < DH_REG; d++)
                if (d < dh) {
                    acc[d] = acc[d] + gs * kj[d];
                    acct[d] = acct[d] + gst * kj[d] + gs * ktj[d];
                }
        } else {
#pragma unroll
            for (unsigned int d = 0; d < DH_REG; d++)
                if (d < dh) acc[d] = acc[d] + gs * kj[d];
        }
    }
#pragma unroll
    for (unsigned int d = 0; d < DH_REG; d++)
        if (d < dh) {
            rgq[gi + d] = c * acc[d];
            if (tan) rgq_t[gi + d] = c * acct[d];
        }
}

extern "C" __global__ void __launch_bounds__(BLOCK) backward_rows(
    const float* __restrict__ rk, const float* __restrict__ rk_t, const float* __restrict__ rv,
    const float* __restrict__ rv_t, const float* __restrict__ rp, const float* __restrict__ rp_t,
    const float* __restrict__ rgo, const float* __restrict__ rgo_t, float* rs, float* rs_t, float* rgq, float* rgq_t,
    AttentionParams par) {
    const unsigned int dh = par.hidden / par.heads;
    const unsigned int total = par.seqs * par.heads * par.len;
    const bool tan = par.tangent == 1u;
    for (unsigned int item = blockIdx.x * BLOCK + threadIdx.x; item < total; item += gridDim.x * BLOCK) {
        const Item it = item_of(par, item);
        if (dh <= DH_REG) {
            rows_reg(rk, rk_t, rv, rv_t, rp, rp_t, rgo, rgo_t, rs, rs_t, rgq, rgq_t, par, it, dh, tan);
        } else {
            rows_generic(rk, rk_t, rv, rv_t, rp, rp_t, rgo, rgo_t, rs, rs_t, rgq, rgq_t, par, it, dh, tan);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// backward_cols: per key row j: gK = c Σ_{i ≥ j} gS[i, j] Q_i, gV = Σ_{i ≥ j} P[i, j] gO_i, and
// their tangents; overwritten.

__device__ __forceinline__ void cols_generic(const float* __restrict__ cq, const float* __restrict__ cq_t,
                                             const float* __restrict__ cs, const float* __restrict__ cs_t,
                                             const float* __restrict__ cp, const float* __restrict__ cp_t,
                                             const float* __restrict__ cgo, const float* __restrict__ cgo_t, float* cgk,
                                             float* cgk_t, float* cgv, float* cgv_t, const AttentionParams& par,
                                             const Item& it, unsigned int dh, bool tan) {
    const unsigned int j = it.row, l = par.len, hs = par.hidden;
    const float c = par.scale;
    const size_t gj = it.head + (size_t)j * hs;  // ix(j, 0)
    for (unsigned int d = 0; d < dh; d++) {
        float gk = 0.0f, gv = 0.0f, gk_t = 0.0f, gv_t = 0.0f;
        for (unsigned int i = j; i < l; i++) {
            const size_t ij = it.pblock + (size_t)i * l + j;
            const size_t id = it.head + i * hs + d;  // ix(i, d)
            gk = gk + cs[ij] * cq[id];
            gv = gv + cp[ij] * cgo[id];
            if (tan) {
                gk_t = gk_t + cs_t[ij] * cq[id] + cs[ij] * cq_t[id];
                gv_t = gv_t + cp_t[ij] * cgo[id] + cp[ij] * cgo_t[id];
            }
        }
        cgk[gj + d] = c * gk;
        cgv[gj + d] = gv;
        if (tan) {
            cgk_t[gj + d] = c * gk_t;
            cgv_t[gj + d] = gv_t;
        }
    }
}

// dh ≤ DH_REG: all dh columns at once, i outer. The lanes of a warp walk i from a common start
// i0 ≤ j (lane 0's j), each adding only its own terms i ≥ j, in order (a skipped term adds
// nothing, not a zero), so the loads of Q_i, gO_i are the same address across the warp.
__device__ __forceinline__ void cols_reg(const float* __restrict__ cq, const float* __restrict__ cq_t,
                                         const float* __restrict__ cs, const float* __restrict__ cs_t,
                                         const float* __restrict__ cp, const float* __restrict__ cp_t,
                                         const float* __restrict__ cgo, const float* __restrict__ cgo_t, float* cgk,
                                         float* cgk_t, float* cgv, float* cgv_t, const AttentionParams& par,
                                         const Item& it, unsigned int dh, bool tan) {
    const unsigned int j = it.row, l = par.len, hs = par.hidden;
    const float c = par.scale;
    const size_t gj = it.head + (size_t)j * hs;
    // Any i0 ≤ j is correct. Lanes hold consecutive items, so when lane 0's item is in this
    // (sequence, head), j − lane is its j, the same for all such lanes; lanes past a (sequence,
    // head) boundary start at 0. (No warp collective: lanes may have left the grid-stride loop.)
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int i0 = j >= lane ? j - lane : 0u;
    float gk[DH_REG], gv[DH_REG], gkt[DH_REG], gvt[DH_REG];
#pragma unroll
    for (unsigned int d = 0; d < DH_REG; d++) {
        gk[d] = 0.0f;
        gv[d] = 0.0f;
        gkt[d] = 0.0f;
        gvt[d] = 0.0f;
    }
    for (unsigned int i = i0; i < l; i++) {
        if (i < j) continue;
        const size_t ij = it.pblock + (size_t)i * l + j;
        const float s = cs[ij], pij = cp[ij];
        const float* qi = cq + it.head + i * hs;
        const float* goi = cgo + it.head + i * hs;
        if (tan) {
            const float st = cs_t[ij], ptij = cp_t[ij];
            const float* qti = cq_t + it.head + i * hs;
            const float* goti = cgo_t + it.head + i * hs;
#pragma unroll
            for (unsigned int d = 0; d < DH_REG; d++)
                if (d < dh) {
                    gk[d] = gk[d] + s * qi[d];
                    gv[d] = gv[d] + pij * goi[d];
                    gkt[d] = gkt[d] + st * qi[d] + s * qti[d];
                    gvt[d] = gvt[d] + ptij * goi[d] + pij * goti[d];
                }
        } else {
#pragma unroll
            for (unsigned int d = 0; d < DH_REG; d++)
                if (d < dh) {
                    gk[d] = gk[d] + s * qi[d];
                    gv[d] = gv[d] + pij * goi[d];
                }
        }
    }
#pragma unroll
    for (unsigned int d = 0; d < DH_REG; d++)
        if (d < dh) {
            cgk[gj + d] = c * gk[d];
            cgv[gj + d] = gv[d];
            if (tan) {
                cgk_t[gj + d] = c * gkt[d];
                cgv_t[gj + d] = gvt[d];
            }
        }
}

extern "C" __global__ void __launch_bounds__(BLOCK) backward_cols(
    const float* __restrict__ cq, const float* __restrict__ cq_t, const float* __restrict__ cs,
    const float* __restrict__ cs_t, const float* __restrict__ cp, const float* __restrict__ cp_t,
    const float* __restrict__ cgo, const float* __restrict__ cgo_t, float* cgk, float* cgk_t, float* cgv, float* cgv_t,
    AttentionParams par) {
    const unsigned int dh = par.hidden / par.heads;
    const unsigned int total = par.seqs * par.heads * par.len;
    const bool tan = par.tangent == 1u;
    for (unsigned int item = blockIdx.x * BLOCK + threadIdx.x; item < total; item += gridDim.x * BLOCK) {
        const Item it = item_of(par, item);
        if (dh <= DH_REG) {
            cols_reg(cq, cq_t, cs, cs_t, cp, cp_t, cgo, cgo_t, cgk, cgk_t, cgv, cgv_t, par, it, dh, tan);
        } else {
            cols_generic(cq, cq_t, cs, cs_t, cp, cp_t, cgo, cgo_t, cgk, cgk_t, cgv, cgv_t, par, it, dh, tan);
        }
    }
}
