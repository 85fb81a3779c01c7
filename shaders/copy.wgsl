// The memory yardstick of `deeplock bench`: copies a buffer 16 bytes per invocation per
// step, in the same grid-stride shape as the lock kernel, so lock throughput over copy
// throughput says how close locking runs to the device's memory limit.

// Invocations per workgroup: a pipeline constant, the host's `COPY_WORKGROUP_SIZE`
// (src/bench/gpu.rs).
override WORKGROUP_SIZE: u32;

@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn copy_main(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
) {
    let n = arrayLength(&src);
    let stride = workgroups.x * WORKGROUP_SIZE;
    for (var i = id.x; i < n; i += stride) {
        dst[i] = src[i];
    }
}
