// vector.wgsl — elementwise vector updates on device buffers (crate learnlaw-wgpu).
//
// Math:  axpy     y_i ← y_i + a·x_i      (the outer gradient step on γ, among others)
//        scale    x_i ← a·x_i
//        max_abs  out ← max_i |x_i|, NaN ignored (exp-grad's normaliser max |∂J/∂γ|): for
//          non-negative floats the bit patterns order like the values, so each workgroup's
//          maximum (a tree over its 256 invocations) goes into out[0] (a u32, 0 before the first
//          dispatch) by an integer atomicMax on its bits.
//        tie_rows v[r, i] ← Σ_{r' ∈ block(r)} v[r', i] for rows of length n in blocks of B rows
//          (the last block may be shorter): block policies' gradient. One invocation per (block,
//          column) of a window of whole blocks; it adds the block's rows in row order in f32, the
//          CPU engine's order. A policy larger than a binding is processed window by window.
// (copy is a plain copy_buffer_to_buffer on the queue; zeros are freshly created buffers, which
// wgpu zero-initialises.)
// Buffers: x, y [len] f32, bound as windows: element i of the call is element `shift_x + i` /
//   `shift_y + i` of the binding, so a vector larger than one storage binding is processed in
//   several dispatches over aligned windows.
// Geometry: one invocation per element, workgroups of 256, ceil(len/256) workgroups (≤ 65535).
// Variants: the only one; both kernels are memory-bound single passes.

struct Params {
    len: u32,
    shift_x: u32,
    shift_y: u32,
    a: f32,
}

@group(0) @binding(0) var<storage, read> ax: array<f32>;
@group(0) @binding(1) var<storage, read_write> ay: array<f32>;
@group(0) @binding(2) var<uniform> ap: Params;

@compute @workgroup_size(256)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < ap.len) {
        ay[ap.shift_y + i] = ay[ap.shift_y + i] + ap.a * ax[ap.shift_x + i];
    }
}

@group(0) @binding(3) var<storage, read_write> sx: array<f32>;
@group(0) @binding(4) var<uniform> sp: Params;

@compute @workgroup_size(256)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < sp.len) {
        sx[sp.shift_x + i] = sp.a * sx[sp.shift_x + i];
    }
}

@group(0) @binding(5) var<storage, read> mx: array<f32>;
@group(0) @binding(6) var<storage, read_write> mout: array<atomic<u32>, 2>;
@group(0) @binding(7) var<uniform> mp: Params;

var<workgroup> s_max: array<u32, 256>;

@compute @workgroup_size(256)
fn max_abs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var bits = 0u;
    if (gid.x < mp.len) {
        // |x| as bits; WGSL may assume floats are finite, so NaN is recognised (and skipped) by them.
        bits = bitcast<u32>(mx[mp.shift_x + gid.x]) & 0x7fffffffu;
        if (bits > 0x7f800000u) {
            bits = 0u;
        }
    }
    s_max[lid] = bits;
    for (var half = 128u; half > 0u; half >>= 1u) {
        workgroupBarrier();
        if (lid < half) {
            s_max[lid] = max(s_max[lid], s_max[lid + half]);
        }
    }
    if (lid == 0u && s_max[0] > 0u) {
        atomicMax(&mout[0], s_max[0]);
    }
}

struct TieParams {
    n: u32,     // row length
    rows: u32,  // rows in this window (whole blocks, but for the policy's last)
    block: u32, // B
    shift: u32, // element offset of the window's first row inside the binding
}

@group(0) @binding(8) var<storage, read_write> tv: array<f32>;
@group(0) @binding(9) var<uniform> tp: TieParams;

@compute @workgroup_size(256)
fn tie_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let blocks = (tp.rows + tp.block - 1u) / tp.block;
    let k = gid.x;
    if (k >= blocks * tp.n) {
        return;
    }
    let b = k / tp.n;
    let i = k % tp.n;
    let r0 = b * tp.block;
    let r1 = min(r0 + tp.block, tp.rows);
    var s = 0.0;
    for (var r = r0; r < r1; r++) {
        s += tv[tp.shift + r * tp.n + i];
    }
    for (var r = r0; r < r1; r++) {
        tv[tp.shift + r * tp.n + i] = s;
    }
}
