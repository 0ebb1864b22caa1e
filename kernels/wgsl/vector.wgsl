// vector.wgsl — elementwise vector updates on device buffers (crate learnlaw-wgpu).
//
// Math:  axpy   y_i ← y_i + a·x_i      (the outer gradient step on γ, among others)
//        scale  x_i ← a·x_i
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
