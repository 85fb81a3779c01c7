//! Bind group layout entries and bindings of buffers, as every deeplock kernel declares
//! them: compute-only, explicit, with a minimum binding size where the kernel has one.

/// A storage buffer at `binding`; `min_size` bytes at least (0: no minimum).
pub(crate) fn storage_layout(
    binding: u32,
    read_only: bool,
    min_size: u64,
) -> wgpu::BindGroupLayoutEntry {
    buffer_layout(
        binding,
        wgpu::BufferBindingType::Storage { read_only },
        false,
        min_size,
    )
}

/// A uniform buffer at `binding` of `size` bytes, bound at a dynamic offset if `dynamic`.
pub(crate) fn uniform_layout(binding: u32, dynamic: bool, size: u64) -> wgpu::BindGroupLayoutEntry {
    buffer_layout(binding, wgpu::BufferBindingType::Uniform, dynamic, size)
}

fn buffer_layout(
    binding: u32,
    ty: wgpu::BufferBindingType,
    has_dynamic_offset: bool,
    min_size: u64,
) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset,
            min_binding_size: wgpu::BufferSize::new(min_size),
        },
        count: None,
    }
}

/// `size` bytes of `buffer` from `offset`, bound at `binding`.
pub(crate) fn buffer_entry(
    binding: u32,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset,
            size: wgpu::BufferSize::new(size),
        }),
    }
}
