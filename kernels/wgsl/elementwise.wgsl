// elementwise.wgsl — the Transformer's elementwise kernels on value/tangent pairs (crate
// learnlaw-wgpu). CPU reference: `CpuKernels` (learnlaw-core transformer/cpu_kernels.rs).
//
// Math (i < len, a = p.value; the tangent half only when p.tangent = 1):
//   fill          y_i ← a                            (zeroing accumulators)
//   scale_copy    y_{y_at+i} ← a·x_{x_at+i}           (copies; per-example results into place)
//   add           y_i ← y_i + a·x_i,  ẏ_i ← ẏ_i + a·ẋ_i   (residual adds, a = 1)
//   axpby         y_i ← x_i + a·y_i                   (θ − η·g, λ_next − η·Hλ in place)
//   relu_forward  y_i ← max(x_i, 0), ẏ_i ← ẋ_i·[x_i > 0]
//   relu_backward y_i ← y_i·[x_i > 0], ẏ_i ← ẏ_i·[x_i > 0]   (ReLU'' = 0 almost everywhere)
// Buffers (f32): x, xt, y, yt [len] from element 0 (scale_copy: from x_at, y_at); unused ones
//   get dummies.
// Geometry: 256 invocations per workgroup; workgroups stride over the elements (any len fits
//   65535 groups).
// Variants: the only one; each is a single memory-bound pass.

struct Params {
    len: u32,
    tangent: u32,
    value: f32,
    x_at: u32,
    y_at: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> x_t: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> y_t: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.len; i += nwg.x * WG) {
        y[i] = p.value;
    }
}

@compute @workgroup_size(256)
fn scale_copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.len; i += nwg.x * WG) {
        y[p.y_at + i] = p.value * x[p.x_at + i];
    }
}

@compute @workgroup_size(256)
fn axpby(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.len; i += nwg.x * WG) {
        y[i] = x[i] + p.value * y[i];
    }
}

@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.len; i += nwg.x * WG) {
        y[i] = y[i] + p.value * x[i];
        if (p.tangent == 1u) {
            y_t[i] = y_t[i] + p.value * x_t[i];
        }
    }
}

@compute @workgroup_size(256)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.len; i += nwg.x * WG) {
        let a = x[i];
        y[i] = max(a, 0.0);
        if (p.tangent == 1u) {
            y_t[i] = select(0.0, x_t[i], a > 0.0);
        }
    }
}

@compute @workgroup_size(256)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.len; i += nwg.x * WG) {
        let on = x[i] > 0.0;
        y[i] = select(0.0, y[i], on);
        if (p.tangent == 1u) {
            y_t[i] = select(0.0, y_t[i], on);
        }
    }
}
