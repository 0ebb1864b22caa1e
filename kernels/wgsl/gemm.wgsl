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
// Geometry: 16×16 invocations per workgroup, one C element (and its tangent) each; a workgroup
//   walks k in tiles of 16 through workgroup memory (A, B and, for the tangent, Ȧ and Ḃ tiles).
//   Workgroups stride over batch × ⌈m/16⌉ × ⌈n/16⌉ output tiles (so any size fits 65535 groups).
// Summation: each element adds its k products in order, in f32 (deterministic).
// Variants: naive one-element-per-invocation (kept as the baseline here); next: 64×64 tiles with
//   a 4×4 register block per invocation, vec4 loads, and subgroup shuffles where available.

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
