// gemm.wgsl — GEMM on value/tangent pairs, strided-batched, either operand transposed (crate
// learnlaw-wgpu, the Transformer's linear layers, LM head and their backward).
//
// Math (per batch matrix b, op(X) = X or Xᵀ as stored):
//   value    C ← op(A)·op(B) + β·C                     (flags & 1)
//   tangent  Ċ ← op(Ȧ)·op(B) + op(A)·op(Ḃ) + β·Ċ       (flags & 2)
//   β = 0 overwrites C (a NaN there does not propagate). The CPU reference is
//   `CpuKernels::gemm` (learnlaw-core transformer/cpu_kernels.rs).
// Buffers (f32): a, at [aa + batch·sa], b, bt [ab + batch·sb], c, ct [ac + batch·sc]. A is stored
//   [m, k] row-major (ta = 0) or [k, m] (ta = 1); B [k, n] or [n, k]; C [m, n]; matrix b of an
//   operand starts `s·b` elements after its first. Unused tangent bindings get dummies.
// Geometry and variants (workgroups stride over the batch's output tiles, tiles_m × tiles_n per
//   matrix, so any size fits 65535 groups):
//   gemm          the baseline: 16×16 invocations, one C element (and its tangent) each, k walked
//                 in tiles of 16 through workgroup memory (A, B and, for the tangent, Ȧ and Ḃ).
//   gemm_blocked  the default where gemm_sg8.wgsl does not run (subgroups not exactly 8 lanes, as
//                 on GPUs, or `Options::no_subgroups`; sizes, starts or strides not in whole vec4):
//                 64 invocations, each 4×4 elements of C in registers (a workgroup covers 32×32,
//                 rows and columns interleaved by 8), A and B read straight from memory with the
//                 reuse left to the caches: no workgroup memory, no barriers. On lavapipe (Mesa's
//                 Vulkan on the CPU) it is 2–5× the baseline, whose barriers split every k tile
//                 into separate loops over the invocations, but its scalar loads (0.5 per FMA)
//                 cap it near 1 GFLOP/s there (gemm_sg8.wgsl: ~10); on a GPU the next step is
//                 workgroup-memory tiles of 64×64 feeding these register blocks.
// Summation: each element adds its k products in order, in f32 (deterministic).

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

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> a_t: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> b_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read_write> c_t: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

const T: u32 = 16u;

var<workgroup> ta_v: array<f32, 256>;
var<workgroup> ta_t: array<f32, 256>;
var<workgroup> tb_v: array<f32, 256>;
var<workgroup> tb_t: array<f32, 256>;

// Index of op(A)[i, kk] of batch matrix bi in its buffer.
fn a_index(bi: u32, i: u32, kk: u32) -> u32 {
    if (p.ta == 1u) {
        return p.aa + bi * p.sa + kk * p.m + i;
    }
    return p.aa + bi * p.sa + i * p.k + kk;
}

// Index of op(B)[kk, j].
fn b_index(bi: u32, kk: u32, j: u32) -> u32 {
    if (p.tb == 1u) {
        return p.ab + bi * p.sb + j * p.k + kk;
    }
    return p.ab + bi * p.sb + kk * p.n + j;
}

@compute @workgroup_size(16, 16)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let value = (p.flags & 1u) != 0u;
    let tangent = (p.flags & 2u) != 0u;
    let per_batch = p.tiles_m * p.tiles_n;
    let total = p.batch * per_batch;
    for (var tile = wg.x; tile < total; tile += nwg.x) {
        let bi = tile / per_batch;
        let r = tile % per_batch;
        let i = (r / p.tiles_n) * T + lid.y;
        let j = (r % p.tiles_n) * T + lid.x;
        var acc = 0.0;
        var acc_t = 0.0;
        for (var k0 = 0u; k0 < p.k; k0 += T) {
            // This invocation loads A[i, k0 + lid.x] and B[k0 + lid.y, j] (zero outside).
            let ka = k0 + lid.x;
            let kb = k0 + lid.y;
            let slot = lid.y * T + lid.x;
            var av = 0.0;
            var at = 0.0;
            if (i < p.m && ka < p.k) {
                let ix = a_index(bi, i, ka);
                av = a[ix];
                if (tangent) {
                    at = a_t[ix];
                }
            }
            var bv = 0.0;
            var bt = 0.0;
            if (kb < p.k && j < p.n) {
                let ix = b_index(bi, kb, j);
                bv = b[ix];
                if (tangent) {
                    bt = b_t[ix];
                }
            }
            ta_v[slot] = av;
            ta_t[slot] = at;
            tb_v[slot] = bv;
            tb_t[slot] = bt;
            workgroupBarrier();
            let kn = min(T, p.k - k0);
            for (var q = 0u; q < kn; q++) {
                let x = ta_v[lid.y * T + q];
                let y = tb_v[q * T + lid.x];
                acc = acc + x * y;
                if (tangent) {
                    acc_t = acc_t + ta_t[lid.y * T + q] * y + x * tb_t[q * T + lid.x];
                }
            }
            workgroupBarrier();
        }
        if (i < p.m && j < p.n) {
            let ix = p.ac + bi * p.sc + i * p.n + j;
            if (value) {
                c[ix] = select(acc, acc + p.beta * c[ix], p.beta != 0.0);
            }
            if (tangent) {
                c_t[ix] = select(acc_t, acc_t + p.beta * c_t[ix], p.beta != 0.0);
            }
        }
    }
}

// gemm_blocked: invocation (r, c) of the 8×8 workgroup owns rows i0 + r + 8q and columns
// j0 + c + 8e (q, e < 4) of the 32×32 tile: neighbouring invocations read neighbouring columns of
// B (coalesced on a GPU, one vector load per 8 lanes on lavapipe) and share A's row.
@compute @workgroup_size(64)
fn gemm_blocked(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let value = (p.flags & 1u) != 0u;
    let tangent = (p.flags & 2u) != 0u;
    let per_batch = p.tiles_m * p.tiles_n;
    let total = p.batch * per_batch;
    // Strides of op(A)[i, kk] and op(B)[kk, j] in their buffers.
    let a_rs = select(p.k, 1u, p.ta == 1u);
    let a_cs = select(1u, p.m, p.ta == 1u);
    let b_rs = select(p.n, 1u, p.tb == 1u);
    let b_cs = select(1u, p.k, p.tb == 1u);
    for (var tile = wg.x; tile < total; tile += nwg.x) {
        let bi = tile / per_batch;
        let r = tile % per_batch;
        let i0 = (r / p.tiles_n) * 32u + lid / 8u;
        let j0 = (r % p.tiles_n) * 32u + lid % 8u;
        // Rows and columns past the matrix read its last row or column; they are not written.
        var a_row: array<u32, 4>;
        var b_col: array<u32, 4>;
        for (var q = 0u; q < 4u; q++) {
            a_row[q] = p.aa + bi * p.sa + min(i0 + 8u * q, p.m - 1u) * a_rs;
            b_col[q] = p.ab + bi * p.sb + min(j0 + 8u * q, p.n - 1u) * b_cs;
        }
        var acc: array<vec4<f32>, 4>;
        var acc_t: array<vec4<f32>, 4>;
        for (var q = 0u; q < 4u; q++) {
            acc[q] = vec4<f32>(0.0);
            acc_t[q] = vec4<f32>(0.0);
        }
        for (var kk = 0u; kk < p.k; kk++) {
            let ko_a = kk * a_cs;
            let ko_b = kk * b_rs;
            let bv = vec4<f32>(b[b_col[0] + ko_b], b[b_col[1] + ko_b], b[b_col[2] + ko_b], b[b_col[3] + ko_b]);
            if (tangent) {
                let bt = vec4<f32>(b_t[b_col[0] + ko_b], b_t[b_col[1] + ko_b], b_t[b_col[2] + ko_b], b_t[b_col[3] + ko_b]);
                for (var q = 0u; q < 4u; q++) {
                    let x = a[a_row[q] + ko_a];
                    acc[q] = acc[q] + x * bv;
                    acc_t[q] = acc_t[q] + a_t[a_row[q] + ko_a] * bv + x * bt;
                }
            } else {
                for (var q = 0u; q < 4u; q++) {
                    acc[q] = acc[q] + a[a_row[q] + ko_a] * bv;
                }
            }
        }
        for (var q = 0u; q < 4u; q++) {
            for (var e = 0u; e < 4u; e++) {
                let i = i0 + 8u * q;
                let j = j0 + 8u * e;
                if (i < p.m && j < p.n) {
                    let ix = p.ac + bi * p.sc + i * p.n + j;
                    if (value) {
                        c[ix] = select(acc[q][e], acc[q][e] + p.beta * c[ix], p.beta != 0.0);
                    }
                    if (tangent) {
                        c_t[ix] = select(acc_t[q][e], acc_t[q][e] + p.beta * c_t[ix], p.beta != 0.0);
                    }
                }
            }
        }
    }
}
