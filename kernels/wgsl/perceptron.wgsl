// perceptron.wgsl — the perceptron's fused per-step kernels (crate learnlaw-wgpu).
//
// Math (per example n, logit z_n = x_n·θ, p_n = σ(z_n), labels y_n ∈ {0, 1}):
//   l_n = softplus(z_n) − y_n z_n = max(z,0) − z y + log1p(exp(−|z|))   (stable BCE with logits)
//   ∇l_n = (p_n − y_n) x_n,   ∇²l_n = p_n(1 − p_n) x_n x_nᵀ
// Every quantity the search needs is Σ_n c_n x_n for a per-row coefficient c_n, and/or a per-row
// scalar. `rows` computes c_n for a chunk of 256 rows and that chunk's partial Σ c_n x_n; `finish`
// reduces the partials in chunk order and applies the update, and sums the per-chunk losses.
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
// One `rows` dispatch runs two *parts*, each a range of rows of one data set in the bound buffer
// with its own mode: part a (the training set: γ and out) and part b (an evaluation set: loss
// partials). Workgroups [0, a.groups) do part a, the rest part b; both only read θ, so the training
// and the dev pass of a step share a dispatch. `finish` likewise runs the combine (workgroups
// [0, col_groups)) beside the loss reduction (one more workgroup). So:
// A forward step is: rows(a: train FORWARD, b: dev LOSS) → finish(θ_next = θ − η Σ train partials;
//                    L_dev(θ) into slot i of the caller's dev-loss curve, read back once per unroll).
// A backward step:   rows(a: train BACKWARD, b: dev GRAD)
//                    → finish(λ = λ_next − η Σ hvp partials + (w/K) Σ dev partials).
// Nothing is read back per step.
//
// Buffers (all f32 except X, row-major; accumulation in f32 like the CPU engine's f32):
//   x [rows, ceil(D/4)] vec4<xelem>: one buffer of rows holding consecutive pieces of the data sets
//     (train, dev, test: usually all of them in one buffer; a set of several GiB spans several
//     buffers, each at most one storage binding), each row zero-padded to a multiple of 4 values
//     so every load of X is a vec4; y [rows]. A part's rows start at row x0 of the buffer.
//   θ, λ_next / v [D].
//   sums: the partial sums [chunks, D] of the training set at offset 0, of an evaluation set at
//     offset `sums` of its part, and the evaluation set's per-chunk losses [chunks] at `loss`
//     (chunk = 256 consecutive rows of a set; the part's first chunk is chunk0).
//   γ and out are *windows*: the binding starts at an aligned offset and the part's first element
//     sits `gamma_shift` / `out_shift` elements in, so row t of a [T, N] policy larger than one
//     binding can still be bound.
// Geometry: rows — one workgroup of 256 invocations per chunk of 256 rows (≤ 65535 per dispatch).
//   Row phase: teams of TEAM = 8 lanes take one row at a time (rows team, team + 32, …): lane l
//   loads the vec4s l, l + 8, … of the row, so a team reads 128 contiguous bytes per load
//   (coalesced), and the team's 8 partial dots are added by a butterfly; after 8 rounds each
//   invocation holds one row's dots and does that row's math (σ, the loss, the outputs). Column phase: all 256
//   invocations; invocation (p, k) accumulates column block k (a vec4) over row slice p of the
//   chunk, sequentially, then the slices' partials of each column are added in slice order
//   (slices = the largest power of two with slices·ceil(D/4) ≤ 256, at least 1). The chunk's
//   loss: 16 sums of 16 rows, then their sum. Barriers: one after the row phase, one per column
//   pass (a single pass for D ≤ 1024), one for the loss (lavapipe runs each as a coroutine switch
//   of every group of invocations). finish — workgroups of 64: one invocation per column summing
//   the chunks in order; the loss workgroup's first invocation sums the chunk losses in order.
// Variants (naive → tuned): v1 scalar loads, one column per invocation. v2 vec4 loads; one row per
//   invocation in the row phase (each invocation walks a whole row: uncoalesced on a GPU), one
//   column block per invocation over all 256 rows in the column phase (ceil(D/4) of the 256
//   invocations busy: 32 at D = 128); a kernel per set and per reduction, so 4 dispatches per
//   forward step and 3 per backward. v3 (this file): teams per row, all invocations in the column
//   phase, two sets per `rows` dispatch and the reductions fused into `finish`: 2 dispatches per
//   step. The team sum comes in two variants, the sections at the end of this file (the engine
//   compiles the common part with one of them): "subgroup" — subgroupShuffleXor 4, 2, 1 (wgpu
//   Features::SUBGROUP on adapters whose subgroups have ≥ 8 lanes; naga takes the builtins
//   without an `enable subgroups;` directive, which it rejects) — and "workgroup", through
//   workgroup memory, for adapters without subgroups. Both add in the same order: same bits.
// Storage of X: `xelem` below is f32 in this file. For f16 storage the engine compiles the same
//   source with that one alias replaced by f16 and `enable f16;` prepended (needs SHADER_F16);
//   every load of X goes through `xload`, which widens to vec4<f32>, so all arithmetic and every
//   accumulator stay f32 and the f16 variant differs from the f32 one only in the bytes read.

const WG: u32 = 256u;
const TEAM: u32 = 8u;
const TEAMS: u32 = WG / TEAM;

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

struct Part {
    rows: u32,         // rows of the part (0: no such part)
    x0: u32,           // buffer row of the part's first row
    chunk0: u32,       // the set's chunk index of the part's first row
    groups: u32,       // workgroups of the part: ceil(rows / 256)
    mode: u32,         // MODE_*
    gamma_shift: u32,  // element offset of the part's first γ value inside the γ window
    out_shift: u32,    // element offset of the part's first output inside the out window
    sums: u32,         // element offset of the set's partial sums [chunks, D] in `sums`
    loss: u32,         // element offset of the set's loss partials [chunks] in `sums`
    coef: f32,         // BACKWARD: the factor of ∂J/∂γ (−η)
    _pad0: u32,
    _pad1: u32,
}

struct RowParams {
    dim: u32,          // D
    stride4: u32,      // vec4s per stored row: ceil(D/4) (rows are zero-padded to a multiple of 4)
    slices: u32,       // row slices of the column phase (a power of two)
    _pad: u32,
    a: Part,
    b: Part,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<xelem>>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> theta: array<f32>;
@group(0) @binding(3) var<storage, read> vecb: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> sums: array<f32>;
@group(0) @binding(7) var<uniform> rp: RowParams;

// Element i of x (a vec4 of one row), widened to f32.
fn xload(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i]);
}

// θ[4k..4k+4) and vecb[4k..4k+4) as vec4s, zero past D (X's padding is zero too).
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
var<workgroup> col_s: array<vec4<f32>, WG>;

// Row r of the part (r < part.rows) with logit z and u = x_r·vecb: its per-row output, and its
// coefficient and loss into coef_s[i], loss_s[i].
fn row_outputs(part: Part, r: u32, i: u32, z: f32, u: f32) {
    let yr = y[part.x0 + r];
    var c = 0.0;
    var l = 0.0;
    switch part.mode {
        case MODE_FORWARD: {
            let g = gamma[part.gamma_shift + r];
            if (g != 0.0) {
                c = g * (sigmoid(z) - yr);
            }
        }
        case MODE_BACKWARD: {
            let p = sigmoid(z);
            out[part.out_shift + r] = part.coef * (p - yr) * u;
            let g = gamma[part.gamma_shift + r];
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
            out[part.out_shift + r] = bce_with_logits(z, yr);
        }
        case MODE_TRAIN_DOT: {
            out[part.out_shift + r] = (sigmoid(z) - yr) * u;
        }
        default: {}
    }
    coef_s[i] = c;
    loss_s[i] = l;
}

@compute @workgroup_size(256)
fn rows(ids: Ids) {
    let lid = ids.lid;
    var part = rp.b;
    var g = ids.wid.x - rp.a.groups;
    if (ids.wid.x < rp.a.groups) {
        part = rp.a;
        g = ids.wid.x;
    }
    let mode = part.mode;
    let dim = rp.dim;
    let s4 = rp.stride4;
    let r0 = g * WG;                   // the chunk's first row in the part
    let n = min(WG, part.rows - r0);   // rows in the chunk
    let row0 = part.x0 + r0;           // the chunk's first row in the buffer
    let two = mode == MODE_BACKWARD || mode == MODE_TRAIN_DOT;

    // Row phase: in round q every team sums the dots of row q·TEAMS + team (the same number of
    // rounds for all, so the team sum's barriers, if any, are in uniform control flow), and lane
    // q keeps them: afterwards invocation (team, lane) holds row lane·TEAMS + team, and the
    // per-row math runs on all invocations at once (TEAM rounds = WG / TEAMS).
    let lane = lane_of(ids);
    let team = team_of(ids);
    var dots = vec2<f32>(0.0);
    for (var q = 0u; q < TEAM; q++) {
        let i = q * TEAMS + team;
        var zu = vec2<f32>(0.0);
        let base = (row0 + i) * s4;
        // Two loops rather than a test inside one: a CPU SIMD backend (lavapipe) runs both sides
        // of a branch under a mask, but leaves a loop no lane enters at once.
        if (two) {
            for (var k = lane; i < n && k < s4; k += TEAM) {
                let xv = xload(base + k);
                zu += vec2<f32>(dot(xv, load4_theta(k, dim)), dot(xv, load4_vecb(k, dim)));
            }
        } else {
            for (var k = lane; i < n && k < s4; k += TEAM) {
                zu.x += dot(xload(base + k), load4_theta(k, dim));
            }
        }
        zu = team_sum(zu, ids);
        if (lane == q) {
            dots = zu;
        }
    }
    let i = lane * TEAMS + team;
    if (i < n) {
        row_outputs(part, r0 + i, i, dots.x, dots.y);
    } else {
        coef_s[i] = 0.0;
        loss_s[i] = 0.0;
    }
    workgroupBarrier();

    let chunk = part.chunk0 + g;
    let has_loss = mode == MODE_LOSS || mode == MODE_GRAD;
    if (has_loss && lid < 16u) {
        // The chunk's loss, first stage: 16 sums of 16 rows in place (a lane reads and writes
        // only its own 16 entries).
        var l = 0.0;
        for (var j = 0u; j < 16u; j++) {
            l += loss_s[16u * lid + j];
        }
        loss_s[16u * lid] = l;
    }
    if (mode == MODE_FORWARD || mode == MODE_BACKWARD || mode == MODE_GRAD) {
        // Column phase: `span` = 256 / slices column blocks at a time and as many rows per slice;
        // invocation (p, kk) = (lid / span, lid % span) adds rows [p·span, (p + 1)·span) of
        // column block k0 + kk, then the slices' sums are added in slice order. Few barriers:
        // cheap on a GPU, coroutine switches on lavapipe.
        let slices = rp.slices;
        let span = WG / slices;
        let p = lid / span;
        let kk = lid % span;
        for (var k0 = 0u; k0 < s4; k0 += span) {
            let k = k0 + kk;
            var acc = vec4<f32>(0.0);
            if (k < s4) {
                let end = min(span * (p + 1u), n);
                for (var i = span * p; i < end; i++) {
                    acc += coef_s[i] * xload((row0 + i) * s4 + k);
                }
            }
            col_s[lid] = acc;
            workgroupBarrier();
            if (p == 0u && k < s4) {
                for (var q = 1u; q < slices; q++) {
                    acc += col_s[q * span + kk];
                }
                let j = 4u * k;
                for (var c = 0u; c < 4u; c++) {
                    if (j + c < dim) {
                        sums[part.sums + chunk * dim + j + c] = acc[c];
                    }
                }
            }
            if (k0 + span < s4) {
                workgroupBarrier(); // the next pass rewrites col_s
            }
        }
    }
    if (has_loss) {
        workgroupBarrier();
        if (lid == 0u) {
            var l = 0.0;
            for (var j = 0u; j < 16u; j++) {
                l += loss_s[16u * j];
            }
            sums[part.loss + chunk] = l;
        }
    }
}

// finish: workgroups [0, col_groups): out[j] = (use_v ? v[j] : 0) + beta·Σ_c p1[c, j] + delta·Σ_c p2[c, j],
//   sums in chunk order (p1, p2: [chunks, D] regions of `sums` at off1, off2);
//   forward:   θ_next = θ − η Σ train partials                (v = θ, beta = −η, no p2)
//   backward:  λ = λ_next − η Σ hvp partials + (w/K) Σ dev partials
//   loss_grad: ∇L = (1/K) Σ partials                          (no v)
// and, when loss_count > 0, one more workgroup: scalars[out_index] = scale · Σ_i loss partials
//   (one invocation, in chunk order: a set has few chunks). `scalars` is the engine's scalar buffer (loss,
//   loss_grad: read back) or an aligned window of a dev-loss curve with out_index the slot's
//   offset inside it (forward step: not read back).
struct FinishParams {
    dim: u32,
    col_groups: u32,
    chunks1: u32,
    off1: u32,
    chunks2: u32,
    off2: u32,
    use_v: u32,
    beta: f32,
    delta: f32,
    loss_count: u32,
    loss_off: u32,
    out_index: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const FWG: u32 = 64u;

@group(0) @binding(10) var<storage, read> cv: array<f32>;
@group(0) @binding(11) var<storage, read> fsums: array<f32>;
@group(0) @binding(12) var<storage, read_write> cout: array<f32>;
@group(0) @binding(13) var<storage, read_write> scalars: array<f32>;
@group(0) @binding(14) var<uniform> fp: FinishParams;

@compute @workgroup_size(64)
fn finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (wid.x >= fp.col_groups) {
        if (lid == 0u) {
            var s = 0.0;
            for (var i = 0u; i < fp.loss_count; i++) {
                s += fsums[fp.loss_off + i];
            }
            scalars[fp.out_index] = s * fp.scale;
        }
        return;
    }
    let j = wid.x * FWG + lid;
    let dim = fp.dim;
    if (j >= dim) {
        return;
    }
    let chunks1 = fp.chunks1;
    let off1 = fp.off1;
    let chunks2 = fp.chunks2;
    let off2 = fp.off2;
    var s1 = 0.0;
    for (var c = 0u; c < chunks1; c++) {
        s1 += fsums[off1 + c * dim + j];
    }
    var s2 = 0.0;
    for (var c = 0u; c < chunks2; c++) {
        s2 += fsums[off2 + c * dim + j];
    }
    var o = fp.beta * s1;
    if (fp.chunks2 > 0u) {
        o = fp.delta * s2 + o;
    }
    if (fp.use_v != 0u) {
        o = cv[j] + o;
    }
    cout[j] = o;
}

// @variant subgroup
// A team is TEAM consecutive lanes of one subgroup (subgroups of ≥ TEAM lanes, all full: the
// engine checks the adapter's subgroup sizes). The butterfly leaves every lane with the sum
// ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)) in lane order (a + b = b + a exactly).

struct Ids {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
}

fn lane_of(ids: Ids) -> u32 {
    return ids.sg_lane % TEAM;
}

fn team_of(ids: Ids) -> u32 {
    return ids.sg_id * (ids.sg_size / TEAM) + ids.sg_lane / TEAM;
}

fn team_sum(v: vec2<f32>, ids: Ids) -> vec2<f32> {
    var s = v;
    for (var m = TEAM / 2u; m > 0u; m >>= 1u) {
        s += subgroupShuffleXor(s, m);
    }
    return s;
}

// @variant workgroup
// A team is TEAM consecutive invocations; its partial sums meet in workgroup memory and each lane
// adds them in the subgroup variant's order.

struct Ids {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
}

fn lane_of(ids: Ids) -> u32 {
    return ids.lid % TEAM;
}

fn team_of(ids: Ids) -> u32 {
    return ids.lid / TEAM;
}

var<workgroup> team_s: array<vec2<f32>, WG>;

fn team_sum(v: vec2<f32>, ids: Ids) -> vec2<f32> {
    team_s[ids.lid] = v;
    workgroupBarrier();
    let first = ids.lid - ids.lid % TEAM;
    var t: array<vec2<f32>, TEAM>;
    for (var i = 0u; i < TEAM; i++) {
        t[i] = team_s[first + i];
    }
    workgroupBarrier(); // the next round rewrites team_s
    for (var m = TEAM / 2u; m > 0u; m >>= 1u) {
        for (var i = 0u; i < m; i++) {
            t[i] += t[i + m];
        }
    }
    return t[0];
}
