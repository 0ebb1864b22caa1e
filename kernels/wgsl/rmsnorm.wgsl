// rmsnorm.wgsl — RMSNorm (weight and bias, divides by rms + ε) forward and backward on
// value/tangent pairs (crate learnlaw-wgpu). CPU reference: `CpuKernels::rmsnorm_forward` and
// `rmsnorm_backward` (learnlaw-core transformer/cpu_kernels.rs).
//
// Math, per row of width H (ε = 1e-8, s = r + ε):
//   stats     r = √(Σx²/H), n = x/s;  ṙ = (x·ẋ)/(H r) (0 if r = 0), ṅ = (ẋ − n ṙ)/s
//   affine    out = w ⊙ n + b;         ȯut = ẇ ⊙ n + w ⊙ ṅ + ḃ
//   backward  gn = gy ⊙ w, a = gn·n, q = x/(H r) = n s/(H r), gx += (gn − a q)/s; tangent
//             ġn = ġy ⊙ w + gy ⊙ ẇ, ȧ = ġn·n + gn·ṅ, ẋ = ṅ s + n ṙ, q̇ = ẋ/(H r) − q ṙ/r,
//             ġx += (ġn − ȧ q − a q̇ − gx_row ṙ)/s  (x is rebuilt from n and r: no x binding)
//   params    ∇w += Σ_rows gy ⊙ n, ∇b += Σ_rows gy; their tangents Σ (ġy ⊙ n + gy ⊙ ṅ), Σ ġy:
//             `param_partials` sums blocks of 64 rows in row order into partials [blocks, 4, H],
//             `param_reduce` adds the blocks in block order into the gradient and the HVP
//             (deterministic: no float atomics).
// Buffers (f32): x, n, out, gy, gx [rows, H] (+ tangents); r [rows]; θ and the direction hold
//   w at pw and b at pw + H; gradient and HVP likewise.
// Geometry: stats/affine/backward: one workgroup of 64 per row (workgroups stride over rows),
//   row sums by a tree in workgroup memory; param_partials: a workgroup per 64-row block, one
//   invocation per column; param_reduce: one invocation per column.
// Variants: stats and backward (H ≤ a few hundred, so a row fits one workgroup's pass) as above,
//   the default on GPUs; stats_per_row and backward_per_row, one invocation per row summing its H
//   columns in order, no workgroup memory or barriers: the default on CPU adapters (lavapipe),
//   which run a workgroup's invocations as SIMD lanes and split the shader at every barrier, so
//   the tree's six barriers per row cost ~5 µs a row there; per row it is ~10× faster.

struct Params {
    rows: u32,
    h: u32,
    pw: u32,
    pb: u32,
    tangent: u32,
    want_grad: u32,
    want_hvp: u32,
    blocks: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> x_t: array<f32>;
@group(0) @binding(2) var<storage, read> theta: array<f32>;
@group(0) @binding(3) var<storage, read> dir: array<f32>;
@group(0) @binding(4) var<storage, read> gy: array<f32>;
@group(0) @binding(5) var<storage, read> gy_t: array<f32>;
@group(0) @binding(6) var<storage, read> r_in: array<f32>;
@group(0) @binding(7) var<storage, read> r_in_t: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
@group(0) @binding(9) var<storage, read_write> out_t: array<f32>;
@group(0) @binding(10) var<storage, read_write> out2: array<f32>;
@group(0) @binding(11) var<storage, read_write> out2_t: array<f32>;
@group(0) @binding(12) var<uniform> p: Params;

const WG: u32 = 64u;
const EPS: f32 = 1e-8;

var<workgroup> red: array<f32, 64>;
var<workgroup> red_t: array<f32, 64>;

// Tree sums of this invocation's `v` and `t` over the workgroup (fixed order); every invocation
// gets the totals.
fn row_sums(lid: u32, v: f32, t: f32) -> vec2<f32> {
    red[lid] = v;
    red_t[lid] = t;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w /= 2u) {
        if (lid < w) {
            red[lid] = red[lid] + red[lid + w];
            red_t[lid] = red_t[lid] + red_t[lid + w];
        }
        workgroupBarrier();
    }
    let s = vec2<f32>(red[0], red_t[0]);
    workgroupBarrier();
    return s;
}

// x (binding 0, + x_t) → n (out, + out_t) and r (out2, + out2_t).
@compute @workgroup_size(64)
fn stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = p.h;
    let tan = p.tangent == 1u;
    for (var row = wg.x; row < p.rows; row += nwg.x) {
        var s2 = 0.0;
        var sxt = 0.0;
        for (var c = lid; c < h; c += WG) {
            let v = x[row * h + c];
            s2 = s2 + v * v;
            if (tan) {
                sxt = sxt + v * x_t[row * h + c];
            }
        }
        let sums = row_sums(lid, s2, sxt);
        let hr = f32(h);
        let r = sqrt(sums.x / hr);
        let s = r + EPS;
        let rt = select(0.0, sums.y / (hr * r), r > 0.0);
        if (lid == 0u) {
            out2[row] = r;
            if (tan) {
                out2_t[row] = rt;
            }
        }
        for (var c = lid; c < h; c += WG) {
            let n = x[row * h + c] / s;
            out[row * h + c] = n;
            if (tan) {
                out_t[row * h + c] = (x_t[row * h + c] - n * rt) / s;
            }
        }
    }
}

// stats, one invocation per row (columns summed in order).
@compute @workgroup_size(64)
fn stats_per_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let h = p.h;
    let tan = p.tangent == 1u;
    for (var row = gid.x; row < p.rows; row += nwg.x * WG) {
        var s2 = 0.0;
        var sxt = 0.0;
        for (var c = 0u; c < h; c++) {
            let v = x[row * h + c];
            s2 = s2 + v * v;
            if (tan) {
                sxt = sxt + v * x_t[row * h + c];
            }
        }
        let hr = f32(h);
        let r = sqrt(s2 / hr);
        let s = r + EPS;
        let rt = select(0.0, sxt / (hr * r), r > 0.0);
        out2[row] = r;
        if (tan) {
            out2_t[row] = rt;
        }
        for (var c = 0u; c < h; c++) {
            let n = x[row * h + c] / s;
            out[row * h + c] = n;
            if (tan) {
                out_t[row * h + c] = (x_t[row * h + c] - n * rt) / s;
            }
        }
    }
}

// n (binding 0, + x_t) → out = w ⊙ n + b (out, + out_t).
@compute @workgroup_size(256)
fn affine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = p.rows * p.h;
    for (var i = gid.x; i < total; i += nwg.x * 256u) {
        let c = i % p.h;
        let n = x[i];
        let w = theta[p.pw + c];
        out[i] = w * n + theta[p.pb + c];
        if (p.tangent == 1u) {
            out_t[i] = dir[p.pw + c] * n + w * x_t[i] + dir[p.pb + c];
        }
    }
}

// Column c's terms of backward's row sums: (gn·n, ġn·n + gn·ṅ), gn = gy ⊙ w (both variants below).
fn backward_terms(row: u32, c: u32, tan: bool) -> vec2<f32> {
    let i = row * p.h + c;
    let gn = gy[i] * theta[p.pw + c];
    if (!tan) {
        return vec2<f32>(gn * x[i], 0.0);
    }
    let gnt = gy_t[i] * theta[p.pw + c] + gy[i] * dir[p.pw + c];
    return vec2<f32>(gn * x[i], gnt * x[i] + gn * x_t[i]);
}

// Column c of row `row` of backward: gx (and its tangent) added, from the row's r, ṙ and the
// sums a, ȧ.
fn backward_element(row: u32, c: u32, r: f32, rt: f32, a: f32, at: f32, tan: bool) {
    let h = p.h;
    let hr = f32(h);
    let s = r + EPS;
    let i = row * h + c;
    let n = x[i];
    let gn = gy[i] * theta[p.pw + c];
    let q = select(0.0, n * s / (hr * r), r > 0.0);
    let gxc = (gn - a * q) / s;
    out[i] = out[i] + gxc;
    if (tan) {
        let nt = x_t[i];
        let gnt = gy_t[i] * theta[p.pw + c] + gy[i] * dir[p.pw + c];
        let xt = nt * s + n * rt;
        let qt = select(0.0, xt / (hr * r) - q * rt / r, r > 0.0);
        out_t[i] = out_t[i] + (gnt - at * q - a * qt - gxc * rt) / s;
    }
}

// Input gradient: n (binding 0, + x_t), r (r_in, + r_in_t), gy (+ gy_t) → gx (out, + out_t), added.
@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = p.h;
    let tan = p.tangent == 1u;
    for (var row = wg.x; row < p.rows; row += nwg.x) {
        let r = r_in[row];
        var a = 0.0;
        var at = 0.0;
        for (var c = lid; c < h; c += WG) {
            let t = backward_terms(row, c, tan);
            a = a + t.x;
            at = at + t.y;
        }
        let sums = row_sums(lid, a, at);
        a = sums.x;
        at = sums.y;
        let rt = select(0.0, r_in_t[row], tan);
        for (var c = lid; c < h; c += WG) {
            backward_element(row, c, r, rt, a, at, tan);
        }
    }
}

// backward, one invocation per row (columns summed in order).
@compute @workgroup_size(64)
fn backward_per_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let h = p.h;
    let tan = p.tangent == 1u;
    for (var row = gid.x; row < p.rows; row += nwg.x * WG) {
        let r = r_in[row];
        var a = 0.0;
        var at = 0.0;
        for (var c = 0u; c < h; c++) {
            let t = backward_terms(row, c, tan);
            a = a + t.x;
            at = at + t.y;
        }
        let rt = select(0.0, r_in_t[row], tan);
        for (var c = 0u; c < h; c++) {
            backward_element(row, c, r, rt, a, at, tan);
        }
    }
}

const BLOCK_ROWS: u32 = 64u;

// Per 64-row block and column: Σ gy n, Σ gy, Σ (ġy n + gy ṅ), Σ ġy in row order, into
// out [blocks, 4, H]. n is binding 0 (+ x_t).
@compute @workgroup_size(64)
fn param_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = p.h;
    let tan = p.tangent == 1u;
    for (var blk = wg.x; blk < p.blocks; blk += nwg.x) {
        let r0 = blk * BLOCK_ROWS;
        let r1 = min(r0 + BLOCK_ROWS, p.rows);
        for (var c = lid; c < h; c += WG) {
            var s0 = 0.0;
            var s1 = 0.0;
            var s2 = 0.0;
            var s3 = 0.0;
            for (var row = r0; row < r1; row++) {
                let i = row * h + c;
                s0 = s0 + gy[i] * x[i];
                s1 = s1 + gy[i];
                if (tan) {
                    s2 = s2 + gy_t[i] * x[i] + gy[i] * x_t[i];
                    s3 = s3 + gy_t[i];
                }
            }
            let o = blk * 4u * h + c;
            out[o] = s0;
            out[o + h] = s1;
            out[o + 2u * h] = s2;
            out[o + 3u * h] = s3;
        }
    }
}

// Partials (binding 0, [blocks, 4, H]) summed in block order and added into the gradient (out)
// and the HVP (out_t) at pw (w) and pw + H (b).
@compute @workgroup_size(64)
fn param_reduce(@builtin(global_invocation_id) gid: vec3<u32>) {
    let h = p.h;
    let c = gid.x;
    if (c >= 2u * h) {
        return;
    }
    // Column c < H: the weight (quantities 0 and 2); c ≥ H: the bias (quantities 1 and 3).
    let col = c % h;
    let q = c / h;
    var g = 0.0;
    var t = 0.0;
    for (var blk = 0u; blk < p.blocks; blk++) {
        let o = blk * 4u * h + col;
        g = g + x[o + q * h];
        t = t + x[o + (q + 2u) * h];
    }
    if (p.want_grad == 1u) {
        out[p.pw + c] = out[p.pw + c] + g;
    }
    if (p.want_hvp == 1u) {
        out_t[p.pw + c] = out_t[p.pw + c] + t;
    }
}
