// max(x, 0), elementwise, keeping NaN (x < 0 is false for NaN).

@compute @workgroup_size(WORKGROUP)
fn relu_main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = flat_index(wg, groups, local);
    if (i >= params.total) {
        return;
    }
    let x = src[i];
    dst[i] = select(x, 0.0, x < 0.0);
}
