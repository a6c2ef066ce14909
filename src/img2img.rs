//! Image-to-image: the parts of diffusers' `StableDiffusionImg2ImgPipeline` that differ from
//! text-to-image — the init image's preprocessing (`VaeImageProcessor.preprocess`), and the
//! starting step `strength` picks (`get_timesteps`). The encoding and the noising live in
//! [`crate::pipeline::Pipeline::start`], the per-sampler noise in each scheduler's `add_noise`.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};

/// diffusers' default `strength`.
pub const DEFAULT_STRENGTH: f64 = 0.8;

/// An init image: `pixels` is `[3, height, width]` row-major, RGB in [0, 1] (what diffusers
/// takes as a float tensor image).
#[derive(Debug, Clone, PartialEq)]
pub struct InitImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

impl InitImage {
    /// Checks the length against the size and that every value is a number in [0, 1].
    pub fn new(width: usize, height: usize, pixels: Vec<f32>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidArgument(format!("init image: size {width}x{height} is empty")));
        }
        if pixels.len() != 3 * width * height {
            return Err(Error::InvalidArgument(format!(
                "init image: {} values, expected 3 x {height} x {width} = {} ([3, H, W] RGB)",
                pixels.len(),
                3 * width * height
            )));
        }
        if let Some((i, v)) = pixels.iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
            return Err(Error::InvalidArgument(format!(
                "init image: value {v} at index {i} is outside [0, 1] (pixels are RGB in [0, 1])"
            )));
        }
        Ok(Self { width, height, pixels })
    }

    /// From interleaved 8-bit RGBA (a canvas' `ImageData`, a decoded PNG): alpha is dropped,
    /// as PIL's `convert("RGB")` does (no compositing onto a background), and each channel
    /// becomes `v / 255`, as `VaeImageProcessor.pil_to_numpy`.
    pub fn from_rgba8(width: usize, height: usize, rgba: &[u8]) -> Result<Self> {
        if rgba.len() != 4 * width * height {
            return Err(Error::InvalidArgument(format!(
                "init image: {} RGBA bytes, expected 4 x {width} x {height}",
                rgba.len()
            )));
        }
        let plane = width * height;
        let mut pixels = vec![0f32; 3 * plane];
        for (i, px) in rgba.chunks_exact(4).enumerate() {
            for c in 0..3 {
                pixels[c * plane + i] = px[c] as f32 / 255.0;
            }
        }
        Self::new(width, height, pixels)
    }

    /// The size diffusers' img2img makes of an image when no size is asked for
    /// (`get_default_height_width`): each side rounded down to a multiple of `f`.
    pub fn default_size(&self, f: usize) -> (usize, usize) {
        (self.width - self.width % f, self.height - self.height % f)
    }

    /// Resized to `width`×`height` as `VaeImageProcessor.resize` does for tensor images:
    /// `torch.nn.functional.interpolate(mode="nearest")`, i.e. source index
    /// `min(floor(i · (in / out)), in - 1)` with the scale in f32.
    pub fn resized(&self, width: usize, height: usize) -> Self {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        let index = |out: usize, inp: usize| -> Vec<usize> {
            let scale = inp as f32 / out as f32;
            (0..out).map(|i| ((i as f32 * scale).floor() as usize).min(inp - 1)).collect()
        };
        let (xs, ys) = (index(width, self.width), index(height, self.height));
        let mut pixels = Vec::with_capacity(3 * width * height);
        for c in 0..3 {
            let plane = &self.pixels[c * self.width * self.height..(c + 1) * self.width * self.height];
            for &y in &ys {
                pixels.extend(xs.iter().map(|&x| plane[y * self.width + x]));
            }
        }
        Self { width, height, pixels }
    }

    /// `[1, 3, H, W]` in [-1, 1] (`VaeImageProcessor.normalize`: `2x - 1`).
    pub fn to_tensor(&self, device: &Device) -> Tensor<4> {
        let t = Tensor::<4>::from_data(TensorData::new(self.pixels.clone(), [1, 3, self.height, self.width]), device);
        t * 2.0 - 1.0
    }
}

/// `strength` must be a number in (0, 1] (diffusers' `check_inputs`: 1 ignores the image's
/// content apart from its size, near 0 keeps it).
pub fn check_strength(strength: f64) -> Result<()> {
    if strength > 0.0 && strength <= 1.0 {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!("strength {strength} is outside (0, 1]")))
}

/// diffusers' `get_timesteps`: of `steps` inference steps, img2img runs the last
/// `init_timestep = min(int(steps · strength), steps)`; returns the first step's index
/// `t_start = steps - init_timestep` (times the scheduler's order, 1 for all samplers here).
pub fn start_step(steps: usize, strength: f64) -> Result<usize> {
    check_strength(strength)?;
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    if init_timestep < 1 {
        return Err(Error::InvalidArgument(format!(
            "steps {steps} × strength {strength} is below 1: no step would run (give more steps or a higher strength)"
        )));
    }
    Ok(steps - init_timestep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_step_follows_get_timesteps() {
        assert_eq!(start_step(10, 0.75).unwrap(), 3); // int(7.5) = 7 steps run
        assert_eq!(start_step(10, 0.7).unwrap(), 3); // 7.000000000000001 in f64
        assert_eq!(start_step(4, 1.0).unwrap(), 0);
        assert_eq!(start_step(2, 0.5).unwrap(), 1);
        let e = start_step(3, 0.3).unwrap_err().to_string();
        assert!(e.contains("steps 3") && e.contains("strength 0.3"), "{e}");
        for s in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(start_step(10, s).is_err(), "{s}");
        }
    }

    #[test]
    fn nearest_resize_matches_torch_indices() {
        // torch: F.interpolate(arange(5).view(1,1,1,5), size=(1,3)) -> [0, 1, 3]; to 8 -> [0,0,1,1,2,3,3,4]
        let img = InitImage::new(5, 1, (0..15).map(|v| v as f32 / 15.0).collect()).unwrap();
        let r = img.resized(3, 1);
        assert_eq!(r.pixels[..3], [0.0, 1.0 / 15.0, 3.0 / 15.0]);
        let r = img.resized(8, 1);
        let idx: Vec<usize> = r.pixels[..8].iter().map(|v| (v * 15.0).round() as usize).collect();
        assert_eq!(idx, [0, 0, 1, 1, 2, 3, 3, 4]);
    }

    #[test]
    fn rgba_drops_alpha_and_checks_range() {
        let img = InitImage::from_rgba8(1, 1, &[255, 0, 51, 7]).unwrap();
        assert_eq!(img.pixels, [1.0, 0.0, 0.2]);
        assert!(InitImage::new(1, 1, vec![0.0, 1.5, 0.0]).unwrap_err().to_string().contains("1.5"));
        assert!(InitImage::new(2, 1, vec![0.0; 3]).is_err());
    }
}
