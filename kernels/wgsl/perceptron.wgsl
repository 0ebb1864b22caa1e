// perceptron.wgsl — the perceptron's fused per-step kernels (crate learnlaw-wgpu).
//
// Math (per example n, logit z_n = x_n·θ, p_n = σ(z_n), labels y_n ∈ {0, 1}):
//   l_n = softplus(z_n) − y_n z_n = max(z,0) − z y + log1p(exp(−|z|))   (stable BCE with logits)
//   ∇l_n = (p_n − y_n) x_n,   ∇²l_n = p_n(1 − p_n) x_n x_nᵀ
// Every quantity the search needs is Σ_n c_n x_n for a per-row coefficient c_n, and/or a per-row
// scalar. `rows` computes c_n for a chunk of 256 rows and that chunk's partial Σ c_n x_n; `combine`
// reduces the partials in chunk order and applies the update; `reduce_loss` sums per-chunk losses.
// Every reduction has a fixed order, so results are bit-for-bit reproducible run to run.
//
//   mode  name         c_n / per-row output                                  reduction
//   0     FORWARD      c = γ_n (p − y)        (0 where γ_n = 0)               partials
//   1     BACKWARD     c = γ_n p(1−p) u, u = x_n·λ_next (0 where γ_n = 0);     partials (the HVP)
//                      out[n] = coef·(p − y) u   (coef = −η: row t of ∂J/∂γ)
//   2     LOSS         loss = l_n                                              loss partials
//   3     GRAD         c = p − y, loss = l_n                                   partials + loss partials
//   4     TRAIN_LOSS   out[n] = l_n
//   5     TRAIN_DOT    out[n] = (p − y)(x_n·v)                                 (∇l_n·v, never materialised)
//
// A forward step is: rows(FORWARD) per train shard → combine(θ_next = θ − η Σ partials)
//                    → rows(LOSS) per dev shard → reduce_loss (L_dev(θ) into slot i of the caller's
//                    dev-loss curve, read back once per unroll; nothing is read back per step).
// A backward step:   rows(BACKWARD) per train shard → rows(GRAD) per dev shard
//                    → combine(λ = λ_next − η Σ hvp partials + (w/K) Σ dev partials). No readback.
//
// Buffers (all f32 except X, row-major; accumulation in f32 like the CPU engine's f32):
//   x [rows, ceil(D/4)] vec4<xelem>: one shard of a data set, each row zero-padded to a multiple of 4
//     values so every load of X is a vec4 (each shard is its own buffer, at most one storage
//     binding; a set of several GiB is several shards), y [rows].
//   θ, λ_next / v [D]; partials [chunks, D] (chunk = 256 consecutive rows of the whole set, the
//     shard's first chunk is chunk0); loss_partials [chunks].
//   γ and out are *windows*: the binding starts at an aligned offset and the shard's first element
//     sits `gamma_shift` / `out_shift` elements in, so row t of a [T, N] policy larger than one
//     binding can still be bound.
// Geometry: rows — one workgroup of 256 invocations per chunk of 256 rows (ceil(rows/256)
//   workgroups, ≤ 65535 per shard); invocation i computes row i's dots (vec4 loads along the row),
//   then invocation k accumulates the column block 4k..4k+3 (a vec4) over the chunk's rows
//   (coalesced over k). combine — one invocation per column, workgroups of 64. reduce_loss — one
//   workgroup of 256.
// Variants: v1 (scalar loads, one column per invocation) was replaced by this vec4 version, which
//   is ~1.5× faster per step on lavapipe with the same reduction structure. Not written yet: tiling X
//   through workgroup memory for coalesced row dots on GPUs, subgroup reductions.
// Storage of X: `xelem` below is f32 in this file. For f16 storage the engine compiles the same
//   source with that one alias replaced by f16 and `enable f16;` prepended (needs SHADER_F16);
//   every load of X goes through `xload`, which widens to vec4<f32>, so all arithmetic and every
//   accumulator stay f32 and the f16 variant differs from the f32 one only in the bytes read.

const WG: u32 = 256u;

// The element type of X (the only one the f16 variant changes; see the header).
alias xelem = f32;

const MODE_FORWARD: u32 = 0u;
const MODE_BACKWARD: u32 = 1u;
const MODE_LOSS: u32 = 2u;
const MODE_GRAD: u32 = 3u;
const MODE_TRAIN_LOSS: u32 = 4u;
const MODE_TRAIN_DOT: u32 = 5u;

fn sigmoid(z: f32) -> f32 {
    if (z >= 0.0) {
        return 1.0 / (1.0 + exp(-z));
    }
    let e = exp(z);
    return e / (1.0 + e);
}

// log(1 + e) for e in [0, 1], accurate for small e (WGSL has no log1p).
fn log1p_small(e: f32) -> f32 {
    if (e < 1e-2) {
        // Alternating series; the first omitted term is below e^6/6 < 2e-13.
        return e * (1.0 - e * (0.5 - e * (1.0 / 3.0 - e * (0.25 - e * 0.2))));
    }
    return log(1.0 + e);
}

fn bce_with_logits(z: f32, y: f32) -> f32 {
    return max(z, 0.0) - z * y + log1p_small(exp(-abs(z)));
}

struct RowParams {
    rows: u32,         // rows in this shard
    dim: u32,          // D
    stride4: u32,      // vec4s per stored row: ceil(D/4) (rows are zero-padded to a multiple of 4)
    mode: u32,         // MODE_*
    chunk0: u32,       // global chunk index of the shard's first row (row of `partials`)
    gamma_shift: u32,  // element offset of the shard's first γ value inside the γ window
    out_shift: u32,    // element offset of the shard's first output inside the out window
    coef: f32,         // BACKWARD: the factor of ∂J/∂γ (−η)
}

@group(0) @binding(0) var<storage, read> x: array<vec4<xelem>>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> theta: array<f32>;
@group(0) @binding(3) var<storage, read> vecb: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
@group(0) @binding(7) var<storage, read_write> loss_partials: array<f32>;
@group(0) @binding(8) var<uniform> rp: RowParams;

// Element i of x (a vec4 of one row), widened to f32.
fn xload(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i]);
}

// θ[4k..4k+4) as a vec4, zero past D (X's padding is zero too).
fn load4_theta(k: u32, dim: u32) -> vec4<f32> {
    let j = 4u * k;
    if (j + 3u < dim) {
        return vec4<f32>(theta[j], theta[j + 1u], theta[j + 2u], theta[j + 3u]);
    }
    var v = vec4<f32>(0.0);
    for (var q = 0u; q < 3u; q++) {
        if (j + q < dim) {
            v[q] = theta[j + q];
        }
    }
    return v;
}

fn load4_vecb(k: u32, dim: u32) -> vec4<f32> {
    let j = 4u * k;
    if (j + 3u < dim) {
        return vec4<f32>(vecb[j], vecb[j + 1u], vecb[j + 2u], vecb[j + 3u]);
    }
    var v = vec4<f32>(0.0);
    for (var q = 0u; q < 3u; q++) {
        if (j + q < dim) {
            v[q] = vecb[j + q];
        }
    }
    return v;
}

var<workgroup> coef_s: array<f32, WG>;
var<workgroup> loss_s: array<f32, WG>;

@compute @workgroup_size(256)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let mode = rp.mode;
    let dim = rp.dim;
    let r0 = wid.x * WG;
    let r = r0 + lid;
    var c = 0.0;
    var l = 0.0;
    if (r < rp.rows) {
        let base = r * rp.stride4;
        let yr = y[r];
        var z = 0.0;
        var u = 0.0;
        if (mode == MODE_BACKWARD || mode == MODE_TRAIN_DOT) {
            for (var k = 0u; k < rp.stride4; k++) {
                let xv = xload(base + k);
                z += dot(xv, load4_theta(k, dim));
                u += dot(xv, load4_vecb(k, dim));
            }
        } else {
            for (var k = 0u; k < rp.stride4; k++) {
                z += dot(xload(base + k), load4_theta(k, dim));
            }
        }
        switch mode {
            case MODE_FORWARD: {
                let g = gamma[rp.gamma_shift + r];
                if (g != 0.0) {
                    c = g * (sigmoid(z) - yr);
                }
            }
            case MODE_BACKWARD: {
                let p = sigmoid(z);
                out[rp.out_shift + r] = rp.coef * (p - yr) * u;
                let g = gamma[rp.gamma_shift + r];
                if (g != 0.0) {
                    c = g * p * (1.0 - p) * u;
                }
            }
            case MODE_LOSS: {
                l = bce_with_logits(z, yr);
            }
            case MODE_GRAD: {
                c = sigmoid(z) - yr;
                l = bce_with_logits(z, yr);
            }
            case MODE_TRAIN_LOSS: {
                out[rp.out_shift + r] = bce_with_logits(z, yr);
            }
            case MODE_TRAIN_DOT: {
                out[rp.out_shift + r] = (sigmoid(z) - yr) * u;
            }
            default: {}
        }
    }
    coef_s[lid] = c;
    loss_s[lid] = l;
    workgroupBarrier();
    let chunk = rp.chunk0 + wid.x;
    if (mode == MODE_FORWARD || mode == MODE_BACKWARD || mode == MODE_GRAD) {
        let n = min(WG, rp.rows - r0);
        for (var k = lid; k < rp.stride4; k += WG) {
            var acc = vec4<f32>(0.0);
            for (var i = 0u; i < n; i++) {
                acc += coef_s[i] * xload((r0 + i) * rp.stride4 + k);
            }
            let j = 4u * k;
            for (var q = 0u; q < 4u; q++) {
                if (j + q < dim) {
                    partials[chunk * dim + j + q] = acc[q];
                }
            }
        }
    }
    if (mode == MODE_LOSS || mode == MODE_GRAD) {
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                loss_s[lid] += loss_s[lid + s];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            loss_partials[chunk] = loss_s[0];
        }
    }
}

// combine: out[j] = (use_v ? v[j] : 0) + beta·Σ_c p1[c, j] + delta·Σ_c p2[c, j], sums in chunk order.
//   forward:   θ_next = θ − η Σ train partials                (v = θ, beta = −η, no p2)
//   backward:  λ = λ_next − η Σ hvp partials + (w/K) Σ dev partials
//   loss_grad: ∇L = (1/K) Σ partials                          (no v)
struct CombineParams {
    dim: u32,
    chunks1: u32,
    chunks2: u32,
    use_v: u32,
    beta: f32,
    delta: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(10) var<storage, read> cv: array<f32>;
@group(0) @binding(11) var<storage, read> p1: array<f32>;
@group(0) @binding(12) var<storage, read> p2: array<f32>;
@group(0) @binding(13) var<storage, read_write> cout: array<f32>;
@group(0) @binding(14) var<uniform> cp: CombineParams;

@compute @workgroup_size(64)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let dim = cp.dim;
    if (j >= dim) {
        return;
    }
    var s1 = 0.0;
    for (var c = 0u; c < cp.chunks1; c++) {
        s1 += p1[c * dim + j];
    }
    var s2 = 0.0;
    for (var c = 0u; c < cp.chunks2; c++) {
        s2 += p2[c * dim + j];
    }
    var o = cp.beta * s1;
    if (cp.chunks2 > 0u) {
        o = cp.delta * s2 + o;
    }
    if (cp.use_v != 0u) {
        o = cv[j] + o;
    }
    cout[j] = o;
}

// reduce_loss: scalars[out_index] = scale · Σ_i lp[i] (strided per invocation, then a tree).
//   `scalars` is the engine's scalar buffer (loss/loss_grad, read back) or an aligned window of a
//   dev-loss curve with out_index the slot's offset inside it (forward step, not read back).
struct ScalarParams {
    count: u32,
    out_index: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(20) var<storage, read> lp: array<f32>;
@group(0) @binding(21) var<storage, read_write> scalars: array<f32>;
@group(0) @binding(22) var<uniform> sp: ScalarParams;

var<workgroup> red_s: array<f32, WG>;

@compute @workgroup_size(256)
fn reduce_loss(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < sp.count; i += WG) {
        s += lp[i];
    }
    red_s[lid] = s;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (lid < h) {
            red_s[lid] += red_s[lid + h];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        scalars[sp.out_index] = red_s[0] * sp.scale;
    }
}
