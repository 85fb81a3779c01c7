// im2col for a stride-1 convolution: dst is [batch * oh * ow, c * kh * kw], one row per
// output position (b, oy, ox), columns in (c, ky, kx) order: the order of a PyTorch conv
// weight [out, in, kh, kw] read as a Linear matrix [out, in * kh * kw], so the fused
// GEMM multiplies the (locked) weight bytes as they are stored and writes NHWC output.
// Taps outside the image read as zero (padding).

@compute @workgroup_size(256)
fn im2col_main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = flat_index(wg, groups, local);
    if (i >= params.total) {
        return;
    }
    let taps = params.kh * params.kw;
    let cols = params.c * taps;
    let col = i % cols;
    let row = i / cols;
    let ox = row % params.ow;
    let oy = (row / params.ow) % params.oh;
    let b = row / (params.ow * params.oh);
    let ch = col / taps;
    let t = col % taps;
    let iy = i32(oy + t / params.kw) - i32(params.pad_h);
    let ix = i32(ox + t % params.kw) - i32(params.pad_w);
    var v = 0.0;
    if (iy >= 0 && iy < i32(params.h) && ix >= 0 && ix < i32(params.w)) {
        v = src[((b * params.h + u32(iy)) * params.w + u32(ix)) * params.c + ch];
    }
    dst[i] = v;
}
