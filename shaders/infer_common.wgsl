// Shared by the inference layer kernels (infer_*.wgsl, each appended to this file):
// one source activation, one destination, and the layer's dimensions. Activations are
// f32, NHWC ([batch, height, width, channels], channels fastest) except where a kernel
// says otherwise. Dispatches are 2-D (x up to the device's limit of workgroups, then rows of them) so a
// large batch fits; `flat_index` turns the grid back into one element index.

struct Params {
    // Elements the kernel writes (invocations doing work); the rest return at once.
    total: u32,
    // Input height, width, channels.
    h: u32,
    w: u32,
    c: u32,
    // Output height and width.
    oh: u32,
    ow: u32,
    // Pool window side (maxpool).
    size: u32,
    unused: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

// Invocations per workgroup: a pipeline constant, set from the host's `WORKGROUP`
// (src/infer/gpu.rs).
override WORKGROUP: u32;

fn flat_index(wg: vec3<u32>, groups: vec3<u32>, local: u32) -> u32 {
    return (wg.y * groups.x + wg.x) * WORKGROUP + local;
}

// NaN test on the bits: no reliance on how the compiler treats NaN comparisons.
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}
