// Flatten: NHWC activations to per-image vectors in PyTorch's NCHW order (c, y, x), the
// order the first dense layer's weights were trained on. dst[i] is written in output order.

@compute @workgroup_size(WORKGROUP)
fn flatten_main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = flat_index(wg, groups, local);
    if (i >= params.total) {
        return;
    }
    let x = i % params.w;
    let y = (i / params.w) % params.h;
    let ch = (i / (params.w * params.h)) % params.c;
    let b = i / (params.w * params.h * params.c);
    dst[i] = src[((b * params.h + y) * params.w + x) * params.c + ch];
}
