//! The GPU context: one device and queue, opened once, either from an adapter of our own
//! or from a caller that already has a device (an inference runtime that unlocks weights
//! straight into its own buffers).

use crate::error::{Error, Result};

/// A wgpu device and queue, with what is known about the adapter behind them.
/// Cheap to clone: wgpu handles are reference-counted.
#[derive(Clone, Debug)]
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
}

impl GpuContext {
    /// Opens the best adapter available: `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`,
    /// `gl`) restricts the backends, `WGPU_POWER_PREF` (`low`, `high`) picks among several,
    /// high-performance by default. Software adapters (lavapipe, WARP) count: they are
    /// slow but correct, which is what tests on machines without a GPU need.
    pub fn new() -> Result<Self> {
        let pref =
            wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance);
        match request_adapter(pref) {
            Some(adapter) => Self::from_adapter(&adapter),
            None => Err(no_adapter()),
        }
    }

    /// Like [`GpuContext::new`], but only a hardware GPU will do: `Ok(None)` when the best
    /// adapter is a software one (device type `Cpu`), because the CPU fast path beats a
    /// GPU emulated on the same CPU.
    pub fn new_hardware() -> Result<Option<Self>> {
        // High-performance order ranks every hardware type before `Cpu`, so a software
        // adapter here means there is no hardware one.
        match request_adapter(wgpu::PowerPreference::HighPerformance) {
            Some(adapter) if adapter.get_info().device_type != wgpu::DeviceType::Cpu => {
                Self::from_adapter(&adapter).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Opens a device on `adapter` with the adapter's own limits (not WebGPU's defaults:
    /// bigger storage bindings mean fewer windows) and timestamp queries where supported.
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let wanted =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let desc = wgpu::DeviceDescriptor {
            label: Some("deeplock device"),
            required_features: adapter.features() & wanted,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::Gpu(format!(
                "could not open a device on {} ({:?}): {e}",
                info.name, info.backend
            ))
        })?;
        Ok(GpuContext {
            device,
            queue,
            info,
        })
    }

    /// Wraps a caller's existing device and queue; work is recorded on them, so it can
    /// share buffers and command encoders with the caller's own.
    pub fn from_device(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        GpuContext {
            device: device.clone(),
            queue: queue.clone(),
            info: device.adapter_info(),
        }
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter: name, vendor, device type, backend, driver and driver info.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Whether kernels can be timed with timestamp queries (see
    /// [`super::KernelTimer`]): the adapter supports them and the device enabled them.
    pub fn has_timestamps(&self) -> bool {
        self.device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Waits until `submission` (or, with `None`, all submitted work) has run.
    pub fn wait(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: submission,
                timeout: None,
            })
            .map(drop)
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))
    }

    /// Runs `f`, which creates GPU objects or records work, and reports what the device
    /// refused meanwhile (out of memory, a validation error) as [`Error::Gpu`], naming
    /// `what` was being done, instead of the device's default of panicking. An error of
    /// `f`'s own comes first.
    pub(crate) fn catch<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let invalid = pollster::block_on(validation.pop());
        let oom = pollster::block_on(memory.pop());
        let value = value?;
        match oom.or(invalid) {
            Some(e) => Err(Error::Gpu(format!("{what} failed: {e}"))),
            None => Ok(value),
        }
    }

    /// One line for logs: adapter, device type, backend, driver, and for a software
    /// adapter (lavapipe, llvmpipe, WARP) that it is one, so that its speed is not read
    /// as a GPU's.
    pub fn describe(&self) -> String {
        let i = &self.info;
        let driver = [i.driver.as_str(), i.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "GPU {} ({:?}, {:?} backend, driver {})",
            i.name,
            i.device_type,
            i.backend,
            if driver.is_empty() {
                "unknown"
            } else {
                &driver
            }
        ) + if i.device_type == wgpu::DeviceType::Cpu {
            "; a software adapter, running on the CPU: its speed says nothing of a real GPU's"
        } else {
            ""
        }
    }
}

/// The first adapter in `pref` order among the backends `WGPU_BACKEND` allows.
fn request_adapter(pref: wgpu::PowerPreference) -> Option<wgpu::Adapter> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let options = wgpu::RequestAdapterOptions {
        power_preference: pref,
        ..Default::default()
    };
    pollster::block_on(instance.request_adapter(&options)).ok()
}

fn no_adapter() -> Error {
    Error::Gpu(
        "no GPU adapter found; install a GPU driver with Vulkan, Metal or DX12 support (on \
         Linux without a GPU, Mesa's lavapipe provides a software one)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    /// The library says what is wrong; naming a CLI flag is the CLI's business.
    #[test]
    fn errors_name_no_cli_flag() {
        let e = super::no_adapter().to_string();
        assert!(e.contains("no GPU adapter") && !e.contains("--"), "{e}");
    }
}
