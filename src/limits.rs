//! The device limits every tensor must respect.
//!
//! A WebGPU kernel binds each tensor as one storage buffer, and a buffer bigger than the device's
//! `maxStorageBufferBindingSize` (128 MiB on many phones and Windows adapters: WebGPU's default)
//! cannot be bound: the dispatch is rejected and the result is silently wrong. So weights larger
//! than the limit are kept in pieces along their first dimension (rows of an embedding table,
//! output channels of a linear or conv), and activations that would outgrow it are computed in
//! blocks (tokens of a feed-forward, query rows of attention, tiles of a decode).
//!
//! The limits come from the device: the shell that creates it reads what was granted and hands
//! it to the load ([`crate::pipeline::Pipeline::load_with`], [`crate::weights::Weights::with_limits`]);
//! every layer that must respect them gets them from its load context and keeps them. A device
//! with none (the CPU backend) is loaded with [`DeviceLimits::NONE`].

/// What one buffer may hold on a device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// `maxStorageBufferBindingSize`: the largest tensor one kernel can read or write.
    pub max_binding: u64,
    /// `maxBufferSize`: the largest buffer that can be created at all.
    pub max_buffer: u64,
}

/// [`DeviceLimits::NONE`]: what the CPU backends have.
impl Default for DeviceLimits {
    fn default() -> Self {
        Self::NONE
    }
}

impl DeviceLimits {
    /// No limit (CPU backends).
    pub const NONE: Self = Self {
        max_binding: u64::MAX,
        max_buffer: u64::MAX,
    };

    /// The largest tensor, in bytes, any kernel may touch.
    pub fn max_tensor_bytes(&self) -> u64 {
        self.max_binding.min(self.max_buffer)
    }

    /// The largest tensor in elements when every element takes `elem_bytes`.
    pub fn max_elems(&self, elem_bytes: usize) -> usize {
        usize::try_from(self.max_tensor_bytes() / elem_bytes.max(1) as u64).unwrap_or(usize::MAX)
    }

    /// Pieces of at most `max_elems(4)` elements covering `rows` rows of `row_elems` each:
    /// `(first row, rows)` per piece. Sized for f32 (4 bytes) whatever the storage dtype, because
    /// convolutions widen their weights to f32 per call ([`crate::nn::Conv2d`]) and the pieces must
    /// fit then too; one rule for every dtype keeps upload and use agreeing on the pieces.
    pub fn row_pieces(&self, rows: usize, row_elems: usize) -> Vec<(usize, usize)> {
        let per = (self.max_elems(4) / row_elems.max(1)).clamp(1, rows.max(1));
        (0..rows)
            .step_by(per)
            .map(|start| (start, per.min(rows - start)))
            .collect()
    }
}

/// The tensor the pieces `parts` (along `dim`) make: the one piece itself, with no copy, or
/// their concatenation.
pub fn join_pieces<const D: usize>(mut parts: Vec<burn::tensor::Tensor<D>>, dim: usize) -> burn::tensor::Tensor<D> {
    if parts.len() == 1 { parts.pop().unwrap() } else { burn::tensor::Tensor::cat(parts, dim) }
}

/// What a wgpu device was granted (`maxStorageBufferBindingSize`, `maxBufferSize`).
#[cfg(any(feature = "wgpu", feature = "webgpu"))]
pub fn from_wgpu(limits: &burn::tensor::wgpu::wgpu::Limits) -> DeviceLimits {
    DeviceLimits { max_binding: limits.max_storage_buffer_binding_size as u64, max_buffer: limits.max_buffer_size }
}

/// The native wgpu device (Vulkan/Metal/DX12; lavapipe on a machine without a GPU), created once
/// per process as burn allows, with the limits it was granted.
#[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
pub fn wgpu_device() -> crate::Result<(burn::tensor::Device, DeviceLimits)> {
    use burn::tensor::Device;
    use std::sync::Mutex;
    // Held while initialising: a second concurrent init would fail in burn (parallel tests).
    static DEVICE: Mutex<Option<(Device, DeviceLimits)>> = Mutex::new(None);
    let mut slot = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(device) = slot.as_ref() {
        return Ok(device.clone());
    }
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|e| crate::Error::InvalidArgument(format!("wgpu initialisation failed: {e}")))?;
    Ok(slot.insert((device, from_wgpu(&setup.device.limits()))).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_all_rows_within_the_limit() {
        let l = DeviceLimits {
            max_binding: 1000,
            max_buffer: 4000,
        };
        // 250 f32 elements per piece: 10-element rows → 25 rows per piece.
        assert_eq!(l.row_pieces(60, 10), vec![(0, 25), (25, 25), (50, 10)]);
        assert_eq!(DeviceLimits::NONE.row_pieces(60, 10), vec![(0, 60)]);
        // A row bigger than the limit still gets a piece of its own (the caller reports it).
        assert_eq!(l.row_pieces(2, 1000), vec![(0, 1), (1, 1)]);
    }
}
