// gemm_sg8.wgsl — gemm.wgsl's product for subgroups of 8 lanes (crate learnlaw-wgpu, the
// Transformer's linear layers, LM head and their backward): the default where the adapter's
// subgroups are exactly 8 lanes (lavapipe on AVX2: one invocation per lane of a 256-bit vector)
// and the shapes allow whole vec4 accesses; gemm.wgsl's `gemm_blocked` everywhere else.
//
// Math: gemm.wgsl's (per batch matrix, op(X) = X or Xᵀ as stored)
//   value    C ← op(A)·op(B) + β·C                     (flags & 1)
//   tangent  Ċ ← op(Ȧ)·op(B) + op(A)·op(Ḃ) + β·Ċ       (override TAN)
//   β = 0 overwrites C (a NaN there does not propagate). CPU reference: `CpuKernels::gemm`.
// Buffers: gemm.wgsl's bindings, read as vec4<f32>: the host uses this kernel only when every
//   start (aa, ab, ac) and batch stride is a multiple of 4 floats, k and n are, and so is m when A
//   is transposed (then every row this kernel reads or writes is whole vec4).
// Specialisation: overrides TA, TB (operand stored transposed), TAN (tangent pairs) and SHARE
//   (barriers for long k): up to 16 pipelines, compiled on first use.
// Geometry: 64 invocations = 8 subgroups; a workgroup covers 64 × 64 of C: subgroup s rows
//   8s..8s+8, lane l columns 8l..8l+8, all 8 rows (two vec4 per row) in registers. Per 4 k a lane
//   loads one vec4 of A (lane r: row r over the 4 k; transposed: k row r / 2, rows 4(r % 2)..+4)
//   and the subgroup broadcasts the eight to every lane (subgroupBroadcast: a register shuffle on
//   lavapipe), and it loads its 8 vec4 of B (4 k rows × 8 columns, or 8 columns × 4 k).
//   Lavapipe runs a workgroup's subgroups one after the other up to each barrier: with k in the
//   thousands (weight gradients, k = tokens) the operands stream from memory once per subgroup
//   unless a barrier every SHARE = 16 blocks (64 k) keeps the subgroups in step on the same rows
//   of A and B; the host sets it for k > 1024 (2–3× there; it costs ~25–30% on short k).
// Why (lavapipe, Mesa 22.3): every storage-buffer load is a loop over the 8 lanes with a bounds
//   check per element (even for an address uniform across the subgroup), about 25 FMAs' worth per
//   float loaded one at a time and 10 per float of a vec4: `gemm_blocked` (4 × 4 per invocation,
//   scalar loads) does 0.5 loads per FMA and reaches ~1 GFLOP/s. Here a lane does 1/32 + 1/8
//   vec4 loads per FMA. The inner step is written out (no loops or arrays indexed by a counter
//   inside the k loop): NIR does not always unroll them and lavapipe then keeps them in memory
//   (4× slower with tangents).
// Measured (one run, 2-core EPYC, 2026-12-02, other jobs beside it), GFLOP/s of gemm_sg8 /
//   gemm_blocked / the baseline: [32768, 64]·[64, 256] 12 / 1.6 / 0.24; with tangents 14.5 / 4.2;
//   gy·Wᵀ ([32768, 256]·[64, 256]ᵀ, tangents) 22 / 5.0; the weight gradient xᵀ·gy ([32768, 64]ᵀ·
//   [32768, 256], tangents) 6.6–13 with the barriers (3.4–4.7 without) / 0.8.
// Summation: each element adds its k products in order, 4 at a time, in f32 (deterministic); the
//   tangent adds op(Ȧ)·op(B) then op(A)·op(Ḃ) per block of 4 k.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    sa: u32,
    sb: u32,
    sc: u32,
    aa: u32,
    ab: u32,
    ac: u32,
    ta: u32,
    tb: u32,
    beta: f32,
    flags: u32,
    tiles_m: u32,
    tiles_n: u32,
}

@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> a_t: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b_t: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> c_t: array<vec4<f32>>;
@group(0) @binding(6) var<uniform> p: Params;

override TA: bool = false;
override TB: bool = false;
override TAN: bool = false;
// k blocks (of 4) between workgroup barriers; 0: none (see Geometry).
override SHARE: u32 = 0u;

// Eight columns of a row: two vec4.
struct Row8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The subgroup's 8 rows of op(A) over 4 k (vec4 over k per row) from the vec4 each lane loaded:
// lane r's row r (ta = 0), or lane v's k row v / 2, rows 4(v % 2)..+4 (ta = 1, transposed here).
fn a_rows(own: vec4<f32>) -> array<vec4<f32>, 8> {
    let v = array<vec4<f32>, 8>(
        subgroupBroadcast(own, 0u), subgroupBroadcast(own, 1u), subgroupBroadcast(own, 2u), subgroupBroadcast(own, 3u),
        subgroupBroadcast(own, 4u), subgroupBroadcast(own, 5u), subgroupBroadcast(own, 6u), subgroupBroadcast(own, 7u),
    );
    if (!TA) {
        return v;
    }
    return array<vec4<f32>, 8>(
        vec4(v[0].x, v[2].x, v[4].x, v[6].x), vec4(v[0].y, v[2].y, v[4].y, v[6].y),
        vec4(v[0].z, v[2].z, v[4].z, v[6].z), vec4(v[0].w, v[2].w, v[4].w, v[6].w),
        vec4(v[1].x, v[3].x, v[5].x, v[7].x), vec4(v[1].y, v[3].y, v[5].y, v[7].y),
        vec4(v[1].z, v[3].z, v[5].z, v[7].z), vec4(v[1].w, v[3].w, v[5].w, v[7].w),
    );
}

// op(B)[4kb + q, j0..j0 + 8] for q < 4 from the lane's 8 loads: rows (tb = 0: load 2q + h is
// row q, columns 4h..) or columns (tb = 1: load e is column e over 4 k, transposed here).
fn b_rows(v: array<vec4<f32>, 8>) -> array<Row8, 4> {
    if (!TB) {
        return array<Row8, 4>(Row8(v[0], v[1]), Row8(v[2], v[3]), Row8(v[4], v[5]), Row8(v[6], v[7]));
    }
    return array<Row8, 4>(
        Row8(vec4(v[0].x, v[1].x, v[2].x, v[3].x), vec4(v[4].x, v[5].x, v[6].x, v[7].x)),
        Row8(vec4(v[0].y, v[1].y, v[2].y, v[3].y), vec4(v[4].y, v[5].y, v[6].y, v[7].y)),
        Row8(vec4(v[0].z, v[1].z, v[2].z, v[3].z), vec4(v[4].z, v[5].z, v[6].z, v[7].z)),
        Row8(vec4(v[0].w, v[1].w, v[2].w, v[3].w), vec4(v[4].w, v[5].w, v[6].w, v[7].w)),
    );
}

// acc + Σ_q x[q]·y[q], q in order (written out: loops and arrays indexed by loop counters inside
// the k loop are not always unrolled, and lavapipe then keeps them in memory).
fn fma_row(acc: Row8, x: vec4<f32>, y: array<Row8, 4>) -> Row8 {
    let lo = acc.lo + x.x * y[0].lo + x.y * y[1].lo + x.z * y[2].lo + x.w * y[3].lo;
    let hi = acc.hi + x.x * y[0].hi + x.y * y[1].hi + x.z * y[2].hi + x.w * y[3].hi;
    return Row8(lo, hi);
}

// The 8 rows × 8 columns of C an invocation owns.
struct Block {
    r0: Row8,
    r1: Row8,
    r2: Row8,
    r3: Row8,
    r4: Row8,
    r5: Row8,
    r6: Row8,
    r7: Row8,
}

fn fma_block(acc: Block, x: array<vec4<f32>, 8>, y: array<Row8, 4>) -> Block {
    return Block(
        fma_row(acc.r0, x[0], y), fma_row(acc.r1, x[1], y), fma_row(acc.r2, x[2], y), fma_row(acc.r3, x[3], y),
        fma_row(acc.r4, x[4], y), fma_row(acc.r5, x[5], y), fma_row(acc.r6, x[6], y), fma_row(acc.r7, x[7], y),
    );
}

// Offset of this lane's B load e (of 8) in the first k block.
fn b_start(bbase: u32, j0: u32, e: u32) -> u32 {
    if (TB) {
        return bbase + min(j0 + e, p.n - 1u) * (p.k / 4u);
    }
    return bbase + (e / 2u) * (p.n / 4u) + min(j0 / 4u + e % 2u, p.n / 4u - 1u);
}

// Row i (< m) of the block into C and Ċ, columns j0.. (< n) as two vec4.
fn store(i: u32, j0: u32, cbase: u32, s: Row8, st: Row8) {
    if (i >= p.m) {
        return;
    }
    let value = (p.flags & 1u) != 0u;
    let keep = p.beta != 0.0;
    let ix = cbase + i * (p.n / 4u) + j0 / 4u;
    if (j0 < p.n) {
        if (value) {
            c[ix] = select(s.lo, s.lo + p.beta * c[ix], keep);
        }
        if (TAN) {
            c_t[ix] = select(st.lo, st.lo + p.beta * c_t[ix], keep);
        }
    }
    if (j0 + 4u < p.n) {
        if (value) {
            c[ix + 1u] = select(s.hi, s.hi + p.beta * c[ix + 1u], keep);
        }
        if (TAN) {
            c_t[ix + 1u] = select(st.hi, st.hi + p.beta * c_t[ix + 1u], keep);
        }
    }
}

@compute @workgroup_size(64)
fn gemm_sg8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let per_batch = p.tiles_m * p.tiles_n;
    let total = p.batch * per_batch;
    let k4 = p.k / 4u;
    let m4 = p.m / 4u;
    let n4 = p.n / 4u;
    let lane = lid % 8u;
    for (var tile = wg.x; tile < total; tile += nwg.x) {
        let bi = tile / per_batch;
        let r = tile % per_batch;
        let i0 = (r / p.tiles_n) * 64u + (lid / 8u) * 8u;
        let j0 = (r % p.tiles_n) * 64u + lane * 8u;
        // This lane's vec4 of A per k block, and its 8 of B (rows or columns past the matrix read
        // its last one; they are not written).
        let abase = (p.aa + bi * p.sa) / 4u;
        let a_at = select(abase + min(i0 + lane, p.m - 1u) * k4, abase + (lane / 2u) * m4 + min(i0 / 4u + lane % 2u, m4 - 1u), TA);
        let a_step = select(1u, 4u * m4, TA);
        let bbase = (p.ab + bi * p.sb) / 4u;
        let bs = array<u32, 8>(
            b_start(bbase, j0, 0u), b_start(bbase, j0, 1u), b_start(bbase, j0, 2u), b_start(bbase, j0, 3u),
            b_start(bbase, j0, 4u), b_start(bbase, j0, 5u), b_start(bbase, j0, 6u), b_start(bbase, j0, 7u),
        );
        let b_step = select(4u * n4, 1u, TB);
        let zero = Row8(vec4<f32>(0.0), vec4<f32>(0.0));
        var acc = Block(zero, zero, zero, zero, zero, zero, zero, zero);
        var acc_t = acc;
        for (var kb = 0u; kb < k4; kb++) {
            let ao = a_at + kb * a_step;
            let bo = kb * b_step;
            let x = a_rows(a[ao]);
            let y = b_rows(array<vec4<f32>, 8>(
                b[bs[0] + bo], b[bs[1] + bo], b[bs[2] + bo], b[bs[3] + bo], b[bs[4] + bo], b[bs[5] + bo], b[bs[6] + bo], b[bs[7] + bo],
            ));
            acc = fma_block(acc, x, y);
            if (TAN) {
                let xt = a_rows(a_t[ao]);
                let yt = b_rows(array<vec4<f32>, 8>(
                    b_t[bs[0] + bo], b_t[bs[1] + bo], b_t[bs[2] + bo], b_t[bs[3] + bo],
                    b_t[bs[4] + bo], b_t[bs[5] + bo], b_t[bs[6] + bo], b_t[bs[7] + bo],
                ));
                acc_t = fma_block(fma_block(acc_t, xt, y), x, yt);
            }
            if (SHARE != 0u && kb % max(SHARE, 1u) == SHARE - 1u) {
                workgroupBarrier();
            }
        }
        let cbase = (p.ac + bi * p.sc) / 4u;
        store(i0, j0, cbase, acc.r0, acc_t.r0);
        store(i0 + 1u, j0, cbase, acc.r1, acc_t.r1);
        store(i0 + 2u, j0, cbase, acc.r2, acc_t.r2);
        store(i0 + 3u, j0, cbase, acc.r3, acc_t.r3);
        store(i0 + 4u, j0, cbase, acc.r4, acc_t.r4);
        store(i0 + 5u, j0, cbase, acc.r5, acc_t.r5);
        store(i0 + 6u, j0, cbase, acc.r6, acc_t.r6);
        store(i0 + 7u, j0, cbase, acc.r7, acc_t.r7);
    }
}
