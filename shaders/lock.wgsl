// deeplock lock / unlock kernels. Composed after aes_ctr.wgsl (which owns group 0).
//
// One dispatch transforms one byte range [byte_lo, byte_hi) of the bound window of a
// buffer, all of it from one tensor. The window is cut into 16-byte groups from its start;
// each invocation transforms one group (4 words) at a time, in a grid-stride loop so that
// any number of groups fits a capped 1-D dispatch and each workgroup's table load is
// amortised over many groups. Bytes of a group outside [byte_lo, byte_hi) are left as
// they were (partial words are merged under a byte mask; words wholly outside are never
// touched).

// Invocations per workgroup: a pipeline constant, the host's `WORKGROUP_SIZE`
// (src/gpu/plan.rs).
override WORKGROUP_SIZE: u32;

struct LockParams {
    // Keystream block of the tensor byte that falls on the first byte of the group holding
    // byte_lo (wrapping: that byte may precede the tensor), as (low, high).
    first_block: vec2<u32>,
    // Its position within that block, 0..16: the same for every group of the dispatch.
    shift: u32,
    // Window-relative byte range to transform.
    byte_lo: u32,
    byte_hi: u32,
}

@group(1) @binding(0) var<storage, read_write> data: array<u32>;
@group(1) @binding(1) var<uniform> params: LockParams;

// Bytes 0..n of a word (n in 0..=4) as a mask.
fn low_bytes_mask(n: u32) -> u32 {
    return select((1u << (8u * n)) - 1u, 0xffffffffu, n >= 4u);
}

// The mask of the bytes of the word at window byte `at` that lie in [byte_lo, byte_hi).
fn region_mask(at: u32) -> u32 {
    let start = select(0u, min(params.byte_lo - at, 4u), params.byte_lo > at);
    let end = select(0u, min(params.byte_hi - at, 4u), params.byte_hi > at);
    return low_bytes_mask(end) & ~low_bytes_mask(start);
}

// Transforms the word `index` of the window with its keystream word `ks`, keeping its
// bytes outside the region.
fn transform_word(index: u32, ks: u32, unlock: bool) {
    let mask = region_mask(index * 4u);
    if (mask == 0u) {
        return;
    }
    let old = data[index];
    var new_word: u32;
    if (unlock) {
        new_word = aes_unlock_word(old, ks);
    } else {
        new_word = aes_lock_word(old, ks);
    }
    data[index] = (new_word & mask) | (old & ~mask);
}

fn transform(local_index: u32, workgroup: u32, workgroups: u32, unlock: bool) {
    aes_load_tables(local_index, WORKGROUP_SIZE);
    let group0 = params.byte_lo / 16u;
    let groups = (params.byte_hi + 15u) / 16u - group0;
    let stride = workgroups * WORKGROUP_SIZE;
    for (var g = workgroup * WORKGROUP_SIZE + local_index; g < groups; g += stride) {
        let ks = aes_keystream_at(aes_block_add(params.first_block, g), params.shift);
        let word0 = (group0 + g) * 4u;
        transform_word(word0, ks.x, unlock);
        transform_word(word0 + 1u, ks.y, unlock);
        transform_word(word0 + 2u, ks.z, unlock);
        transform_word(word0 + 3u, ks.w, unlock);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn lock_main(
    @builtin(local_invocation_index) local_index: u32,
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
) {
    transform(local_index, workgroup.x, workgroups.x, false);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn unlock_main(
    @builtin(local_invocation_index) local_index: u32,
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
) {
    transform(local_index, workgroup.x, workgroups.x, true);
}
