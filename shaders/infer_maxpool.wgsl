// Max over kh x kh windows, stride kh, NHWC; a window holding a NaN gives NaN (as
// PyTorch's MaxPool2d and the CPU reference), so a wrong key's garbage stays visible.

@compute @workgroup_size(WORKGROUP)
fn maxpool_main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = flat_index(wg, groups, local);
    if (i >= params.total) {
        return;
    }
    let ch = i % params.c;
    let ox = (i / params.c) % params.ow;
    let oy = (i / (params.c * params.ow)) % params.oh;
    let b = i / (params.c * params.ow * params.oh);
    let size = params.size;
    let base = (b * params.h + oy * size) * params.w + ox * size;
    var m = src[base * params.c + ch];
    for (var u = 0u; u < size; u++) {
        for (var v = 0u; v < size; v++) {
            let a = src[(base + u * params.w + v) * params.c + ch];
            if (a > m || is_nan(a)) {
                m = a;
            }
        }
        if (is_nan(m)) {
            break;
        }
    }
    dst[i] = m;
}
