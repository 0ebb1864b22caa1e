// simplex.wgsl — exact Euclidean projection of every row of a [rows, N] buffer onto the
// probability simplex Δ = {p : Σp = 1, p ≥ 0} (crate learnlaw-wgpu; CPU reference:
// learnlaw_core::simplex::project_sorted).
//
// Math: p_i = max(v_i − τ, 0) with τ the unique root of f(τ) = Σ_i max(v_i − τ, 0) = 1. f is
// continuous, decreasing and piecewise linear, f(max v − 1) ≥ 1 and f(max v) = 0, so τ ∈ [m − 1, m).
// On any interval that contains no v_i, f is linear: once the support S = {i : v_i > τ} is known,
// τ = (Σ_S v_i − 1)/|S| exactly. Each pass over the row evaluates, in one sweep, (Σ (v − t), #{v > t})
// at two thresholds: the current lower bound lo and the bisection midpoint mid of [lo, hi]:
//   * Michelot's step from a lower bound t with support S_t ⊇ S: t' = t + (Σ_{S_t}(v − t) − 1)/|S_t|
//     is again a lower bound, t ≤ t' ≤ τ; when |S_{t'}| = |S_t| the support is final and t' = τ;
//   * bisection: f(mid) ≥ 1 ⇒ mid is a lower bound (take Michelot's step from it too), else hi = mid.
// Michelot usually finishes in a handful of passes; the bisection bounds the worst case (the
// interval halves every pass). Sums are taken relative to the threshold (terms ≈ p_i), in f32.
//
// Kernels:
//   check_finite — one invocation per element of a window [len]: any NaN/±Inf (exponent bits all
//     ones; WGSL may assume floats are finite, so the test is on the bits) sets flag[0] = 1 and
//     flag[1] = min(flag[1], index). Workgroups of 256, ceil(len/256) workgroups.
//   project_rows — one workgroup of 64 invocations per row (≤ 65535 rows per dispatch); rows sit
//     `shift` elements into the bound window. Does nothing when flag[0] ≠ 0, so a non-finite policy
//     is reported (Error::Numerical) and left untouched, like the CPU engine.
// Buffers: v [rows·N] f32 (read_write), flag [2] u32 (atomic / read), params uniform.
// Precision: f32 sums, so τ (and every p_i) is known to about ε_f32·max|v|, like the CPU f32 path.
// Variants: v1 ran 256 invocations per row with tree reductions (9 barriers per reduction); this
//   one runs 64 with two-stage reductions (3 barriers), ~2× faster on lavapipe where barriers are
//   coroutine switches. A sort-based version would need N-sized workgroup scratch.
//
// The exponentiated-gradient (mirror-descent) step keeps rows on Δ without a projection (CPU
// reference: the default `Engine::exp_grad_rows`, in f64; the CUDA twin is in simplex.cu):
//   γ_{r,i} ← γ_{r,i} e^{−a (g_{r,i} − m_r)} / Σ_j γ_{r,j} e^{−a (g_{r,j} − m_r)},  m_r = min_j g_{r,j}
// (subtracting m_r keeps every exponent ≤ 0). The engine first runs check_finite on g (a
// non-finite gradient sets flag[0] = 1 and its index), then:
//   exp_grad_sums — one workgroup of 64 per row (rows sit `shift`/`shift_g` elements into the
//     bound windows of γ and g; row r of the dispatch is row row0 + r of the policy): m_r and the
//     f32 sum (two-stage fixed-order reduction) into stats[2(row0 + r)], stats[2(row0 + r) + 1];
//     a sum that is not a positive finite number sets status[0] = 1 and
//     status[1] = min(status[1], row). Does nothing when g was flagged.
//   exp_grad_apply — same geometry; nothing when flag[0] ≠ 0 or status[0] ≠ 0 (γ left untouched:
//     Error::Numerical), else the update.
// Every "does nothing" decision reads words written by an *earlier* dispatch through a read-only
// binding, so all invocations of a workgroup take it alike and the barriers after it stay in
// uniform control flow (a flag that other workgroups of the same dispatch may be setting could be
// seen differently by two invocations of one workgroup).
// Buffers: γ [rows·N] f32, g [rows·N] f32, stats [2·T] f32, flag [2] u32 (check_finite's),
//   status [2] u32, params uniform.

const WG: u32 = 256u;
const MAX_PASSES: u32 = 200u;

struct Params {
    len: u32,        // check_finite: elements in this window; project_rows: N (row length)
    rows: u32,       // project_rows: rows in this dispatch
    shift: u32,      // element offset of the first element inside the bound window
    base_index: u32, // check_finite: global index of the window's first element (for the message)
}

@group(0) @binding(0) var<storage, read> v: array<f32>;
@group(0) @binding(1) var<storage, read_write> flag: array<atomic<u32>, 2>;
@group(0) @binding(2) var<uniform> pp: Params;

@compute @workgroup_size(256)
fn check_finite(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= pp.len) {
        return;
    }
    let bits = bitcast<u32>(v[pp.shift + i]);
    if ((bits & 0x7f800000u) == 0x7f800000u) {
        atomicStore(&flag[0], 1u);
        atomicMin(&flag[1], pp.base_index + i);
    }
}

@group(0) @binding(3) var<storage, read_write> pv: array<f32>;
@group(0) @binding(4) var<storage, read> pflag: array<u32, 2>;
@group(0) @binding(5) var<uniform> pr: Params;

// project_rows runs PWG = PG·PG invocations per row; reductions go PWG → PG → 1 in two fixed-order
// sequential stages (3 barriers instead of log2(PWG) + 1 for a tree: barriers dominate on lavapipe).
const PG: u32 = 8u;
const PWG: u32 = 64u;

var<workgroup> s_a: array<f32, PWG>;
var<workgroup> s_b: array<f32, PWG>;
var<workgroup> c_a: array<u32, PWG>;
var<workgroup> c_b: array<u32, PWG>;
struct Sums {
    sa: f32,  // Σ_{v > lo} (v − lo)
    sb: f32,  // Σ_{v > mid} (v − mid)
    ca: u32,  // #{v > lo}
    cb: u32,  // #{v > mid}
}
var<workgroup> u_sums: Sums;
var<workgroup> u_top: f32;

// Sums the four per-invocation partials (s_a, s_b, c_a, c_b) into u_sums.
fn reduce4(lid: u32) {
    workgroupBarrier();
    if (lid < PG) {
        var sa = 0.0;
        var sb = 0.0;
        var ca = 0u;
        var cb = 0u;
        for (var i = 0u; i < PG; i++) {
            sa += s_a[lid * PG + i];
            sb += s_b[lid * PG + i];
            ca += c_a[lid * PG + i];
            cb += c_b[lid * PG + i];
        }
        s_a[lid * PG] = sa;
        s_b[lid * PG] = sb;
        c_a[lid * PG] = ca;
        c_b[lid * PG] = cb;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var sa = 0.0;
        var sb = 0.0;
        var ca = 0u;
        var cb = 0u;
        for (var i = 0u; i < PG; i++) {
            sa += s_a[i * PG];
            sb += s_b[i * PG];
            ca += c_a[i * PG];
            cb += c_b[i * PG];
        }
        u_sums = Sums(sa, sb, ca, cb);
    }
}

const OP_SUM: u32 = 0u;
const OP_MIN: u32 = 1u;
const OP_MAX: u32 = 2u;

fn combine(op: u32, a: f32, b: f32) -> f32 {
    if (op == OP_MIN) {
        return min(a, b);
    }
    if (op == OP_MAX) {
        return max(a, b);
    }
    return a + b;
}

// The two-stage fixed-order reduction of s_a (PWG values, one per invocation) by `op`; every
// invocation gets the result (through u_top).
fn reduce_s_a(lid: u32, op: u32) -> f32 {
    workgroupBarrier();
    if (lid < PG) {
        var r = s_a[lid * PG];
        for (var i = 1u; i < PG; i++) {
            r = combine(op, r, s_a[lid * PG + i]);
        }
        s_a[lid * PG] = r;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var r = s_a[0];
        for (var i = 1u; i < PG; i++) {
            r = combine(op, r, s_a[i * PG]);
        }
        u_top = r;
    }
    return workgroupUniformLoad(&u_top);
}

@compute @workgroup_size(64)
fn project_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (pflag[0] != 0u || wid.x >= pr.rows) {
        return;
    }
    let n = pr.len;
    let base = pr.shift + wid.x * n;

    // The row maximum (s_a doubles as the max scratch).
    var m = -3.4028235e38;
    for (var i = lid; i < n; i += PWG) {
        m = max(m, pv[base + i]);
    }
    s_a[lid] = m;
    let top = reduce_s_a(lid, OP_MAX);

    var lo = top - 1.0;   // f(lo) ≥ 1
    var hi = top;         // f(hi) < 1 (or the interval is exhausted)
    var c_src = 0xffffffffu; // support size at the threshold lo was derived from (none yet)
    var tau = lo;
    for (var it = 0u; it < MAX_PASSES; it++) {
        let mid = lo + 0.5 * (hi - lo);
        var sa = 0.0;
        var sb = 0.0;
        var ca = 0u;
        var cb = 0u;
        for (var i = lid; i < n; i += PWG) {
            let x = pv[base + i];
            if (x > lo) {
                sa += x - lo;
                ca += 1u;
            }
            if (x > mid) {
                sb += x - mid;
                cb += 1u;
            }
        }
        s_a[lid] = sa;
        s_b[lid] = sb;
        c_a[lid] = ca;
        c_b[lid] = cb;
        reduce4(lid);
        let sums = workgroupUniformLoad(&u_sums);
        let fa = sums.sa;
        let fb = sums.sb;
        let na = sums.ca;
        let nb = sums.cb;
        // Michelot's step from lo (na ≥ 1: the maximum always exceeds lo).
        let ta = lo + (fa - 1.0) / f32(max(na, 1u));
        tau = ta;
        if (na == c_src) {
            break; // the support did not change: ta is exact
        }
        var new_lo = ta;
        var new_src = na;
        if (fb >= 1.0 && nb > 0u) {
            let tb = mid + (fb - 1.0) / f32(nb);
            if (tb > new_lo) {
                new_lo = tb;
                new_src = nb;
            }
        } else {
            hi = min(hi, mid);
        }
        if (!(new_lo > lo) || !(new_lo < hi)) {
            // No progress is possible in f32 (the interval is down to rounding): ta stands.
            break;
        }
        lo = new_lo;
        c_src = new_src;
    }

    for (var i = lid; i < n; i += PWG) {
        pv[base + i] = max(pv[base + i] - tau, 0.0);
    }
}

struct ExpGradParams {
    len: u32,     // N (row length)
    rows: u32,    // rows in this dispatch
    shift: u32,   // element offset of the first row inside γ's window
    shift_g: u32, // the same inside g's window
    row0: u32,    // policy row of the dispatch's first row
    a: f32,       // the step
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(6) var<storage, read> eg_gamma: array<f32>;
@group(0) @binding(7) var<storage, read> eg_g: array<f32>;
@group(0) @binding(8) var<storage, read_write> eg_stats: array<f32>;
@group(0) @binding(9) var<storage, read> eg_flag: array<u32, 2>;
@group(0) @binding(10) var<storage, read_write> eg_status: array<atomic<u32>, 2>;
@group(0) @binding(11) var<uniform> egp: ExpGradParams;

@compute @workgroup_size(64)
fn exp_grad_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (eg_flag[0] != 0u || wid.x >= egp.rows) {
        return;
    }
    let n = egp.len;
    let base = egp.shift + wid.x * n;
    let base_g = egp.shift_g + wid.x * n;
    var m = 3.4028235e38;
    for (var i = lid; i < n; i += PWG) {
        m = min(m, eg_g[base_g + i]);
    }
    s_a[lid] = m;
    m = reduce_s_a(lid, OP_MIN);
    var sum = 0.0;
    for (var i = lid; i < n; i += PWG) {
        sum += eg_gamma[base + i] * exp(-egp.a * (eg_g[base_g + i] - m));
    }
    s_a[lid] = sum;
    sum = reduce_s_a(lid, OP_SUM);
    if (lid == 0u) {
        let row = egp.row0 + wid.x;
        eg_stats[2u * row] = m;
        eg_stats[2u * row + 1u] = sum;
        // WGSL may assume floats are finite: test the bits.
        if (!(sum > 0.0) || (bitcast<u32>(sum) & 0x7f800000u) == 0x7f800000u) {
            atomicStore(&eg_status[0], 1u);
            atomicMin(&eg_status[1], row);
        }
    }
}

@group(0) @binding(12) var<storage, read_write> ea_gamma: array<f32>;
@group(0) @binding(13) var<storage, read> ea_g: array<f32>;
@group(0) @binding(14) var<storage, read> ea_stats: array<f32>;
@group(0) @binding(15) var<storage, read> ea_flag: array<u32, 2>;
@group(0) @binding(16) var<storage, read> ea_status: array<u32, 2>;
@group(0) @binding(17) var<uniform> eap: ExpGradParams;

@compute @workgroup_size(64)
fn exp_grad_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (ea_flag[0] != 0u || ea_status[0] != 0u || wid.x >= eap.rows) {
        return;
    }
    let n = eap.len;
    let base = eap.shift + wid.x * n;
    let base_g = eap.shift_g + wid.x * n;
    let row = eap.row0 + wid.x;
    let m = ea_stats[2u * row];
    let sum = ea_stats[2u * row + 1u];
    for (var i = lid; i < n; i += PWG) {
        ea_gamma[base + i] = ea_gamma[base + i] * exp(-eap.a * (ea_g[base_g + i] - m)) / sum;
    }
}
