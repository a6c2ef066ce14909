//! Latents ↔ pixels: the TAESD-style `AutoencoderTiny` or the full `AutoencoderKL`, chosen by
//! the folder's `config.json` (`_class_name`), or an original-layout `taesd_decoder.safetensors`.

pub mod kl;
pub mod taesd;

use burn::tensor::{DType, Device, Tensor};

pub use kl::{AutoencoderKL, DiagonalGaussian};
pub use taesd::AutoencoderTiny;

use crate::config::{AutoencoderKLConfig, AutoencoderTinyConfig, VaeClass, from_json};
use crate::error::{Error, Result};
use crate::folder::{self, VaeFiles, join};
use crate::source::ModelSource;
use crate::weights::Weights;

/// Whether tensor `key` of the vae's weight file `file` belongs to the encoder half, which only
/// image-to-image runs: the whole of an original `*_encoder.safetensors`, else `encoder.*` and
/// (KL) `quant_conv.*` (not `post_quant_conv.*`, the decoder's).
pub fn is_encoder_tensor(file: &str, key: &str) -> bool {
    file.rsplit('/').next().is_some_and(|f| f.ends_with("_encoder.safetensors"))
        || key.starts_with("encoder.")
        || key.starts_with("quant_conv.")
}

/// The pipeline's `vae` component: decodes latents to pixels and, when the checkpoint has its
/// encoder, encodes pixels to latents.
#[derive(Debug, Clone)]
pub enum Autoencoder {
    Tiny(AutoencoderTiny),
    Kl(AutoencoderKL),
}

/// What an encoder makes of an image: a posterior (KL) or the latents themselves (tiny).
#[derive(Debug, Clone)]
pub enum EncoderOutput {
    Dist(DiagonalGaussian),
    Latents(Tensor<4>),
}

impl EncoderOutput {
    /// The most likely latents (diffusers `retrieve_latents(sample_mode="argmax")`).
    pub fn mode(&self) -> Tensor<4> {
        match self {
            EncoderOutput::Dist(d) => d.mean.clone(),
            EncoderOutput::Latents(l) => l.clone(),
        }
    }

    /// A draw from the posterior with standard-normal `noise` (tiny encoders are deterministic).
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        match self {
            EncoderOutput::Dist(d) => d.sample(noise),
            EncoderOutput::Latents(l) => l.clone(),
        }
    }
}

impl Autoencoder {
    /// Reads `<dir>/config.json` (`_class_name` AutoencoderTiny / AutoencoderKL), or a folder with
    /// only `taesd_decoder.safetensors` (original layout, default TAESD config; also its
    /// relatives such as `taesdxl_decoder.safetensors`, and the `*_encoder` file next to it).
    /// Its weights are created in `dtype`, or in f32 when the config sets `force_upcast`.
    pub fn load(src: &dyn ModelSource, dir: &str, device: &Device, dtype: DType) -> Result<Self> {
        if let VaeFiles::OriginalTaesd { decoder, encoder } = folder::vae_files(src, dir)? {
            let weights = |file: &str| src.weights_file(file, device, dtype);
            let encoder = encoder.as_deref().map(weights).transpose()?;
            return Ok(Self::Tiny(taesd::load_original(weights(&decoder)?, encoder)?));
        }
        let config_path = join(dir, "config.json");
        let dtype = folder::component_dtype(src, dir, dtype)?;
        let bytes = src.read(&config_path)?;
        #[derive(serde::Deserialize)]
        struct ClassName {
            #[serde(rename = "_class_name")]
            class_name: Option<VaeClass>,
        }
        match from_json::<ClassName>(&config_path, &bytes)?.class_name {
            Some(VaeClass::AutoencoderTiny) => {
                let config: AutoencoderTinyConfig = from_json(&config_path, &bytes)?;
                Ok(Self::Tiny(AutoencoderTiny::load(src.weights(dir, device, dtype)?, config, &config_path)?))
            }
            Some(VaeClass::AutoencoderKL) => {
                let config: AutoencoderKLConfig = from_json(&config_path, &bytes)?;
                Ok(Self::Kl(AutoencoderKL::load(src.weights(dir, device, dtype)?, config, &config_path)?))
            }
            other => Err(Error::UnsupportedConfig {
                file: config_path,
                field: "_class_name".into(),
                value: format!("{:?}", other.as_ref().map_or("", VaeClass::as_str)),
                hint: Some("expected AutoencoderTiny or AutoencoderKL".into()),
            }),
        }
    }

    /// Equivalent of diffusers `vae.decode(z).sample` (pixel range about [-1, 1]); `z` is the
    /// unscaled latent (`latents / latent_scaling_factor + latent_shift_factor`).
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Tiny(m) => m.decode(z),
            Self::Kl(m) => m.decode(z),
        }
    }

    /// Whether decoding a `h`×`w` latent fits the device's largest binding. The tiny decoder
    /// always does (it decodes in tiles). The KL decoder's GroupNorms see the whole image, so at
    /// large sizes it runs over channel chunks of whole norm groups; it needs one group's
    /// channels at the output size in one binding, else a silently wrong image would follow: an
    /// error naming the size, before any step runs.
    pub fn check_fits(&self, h: usize, w: usize) -> Result<()> {
        let Self::Kl(m) = self else { return Ok(()) };
        let limits = m.limits;
        let f = m.config.pixels_per_latent();
        let widest = m.config.block_out_channels.iter().copied().max().unwrap_or(1);
        let need = (widest / m.config.norm_num_groups.max(1)).max(1) as u64 * (h * w * f * f) as u64 * 4;
        if need <= limits.max_tensor_bytes() {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "the vae (AutoencoderKL) needs {:.0} MiB for one norm group of one activation to decode {}x{}, more than \
             this GPU's largest buffer binding ({:.0} MiB); pick a smaller image, a model with a tiny decoder \
             (AutoencoderTiny), or a GPU/browser with higher WebGPU limits",
            need as f64 / (1 << 20) as f64,
            w * f,
            h * f,
            limits.max_tensor_bytes() as f64 / (1 << 20) as f64
        )))
    }

    /// The decode again in f32, after non-finite pixels in f16, where this decoder can (the tiny
    /// one: only convolutions, which widen their weights per call); `None` otherwise.
    pub fn decode_f32(&self, z: Tensor<4>) -> Option<Tensor<4>> {
        match self {
            Self::Tiny(m) if m.dtype != DType::F32 => Some(m.decode_f32(z)),
            _ => None,
        }
    }

    /// Adds the encoder half to a vae loaded without it, from `weights` holding only the
    /// tensors [`is_encoder_tensor`] picks (`original`: an original `taesd_encoder.safetensors`).
    /// The browser keeps them off the GPU until the first image-to-image call, so text-to-image
    /// users pay nothing for the encoder. Errors name the file and tensor; on error nothing changes.
    pub fn attach_encoder(&mut self, weights: Weights, original: bool) -> Result<()> {
        let config_path = "vae/config.json";
        match self {
            Self::Tiny(m) => m.attach_encoder(weights, original, config_path),
            Self::Kl(_) if original => Err(Error::InvalidArgument(format!(
                "{}: an original-layout TAESD encoder cannot serve an AutoencoderKL decoder",
                weights.name
            ))),
            Self::Kl(m) => m.attach_encoder(weights, config_path),
        }
    }

    /// Whether the checkpoint has its encoder (image-to-image needs it).
    pub fn has_encoder(&self) -> bool {
        match self {
            Self::Tiny(m) => m.encoder.is_some(),
            Self::Kl(m) => m.encoder.is_some(),
        }
    }

    /// diffusers `vae.encode(image)` for pixels in [-1, 1]; `None` when the checkpoint has no
    /// encoder weights.
    pub fn encode(&self, image: Tensor<4>) -> Option<EncoderOutput> {
        match self {
            Self::Tiny(m) => m.encode(image).map(EncoderOutput::Latents),
            Self::Kl(m) => m.encode(image).map(EncoderOutput::Dist),
        }
    }

    /// The config's `scaling_factor` (0.18215 for SD 1.x): the sampler works on
    /// `(z - latent_shift_factor) · latent_scaling_factor` of the autoencoder's latents `z`.
    pub fn latent_scaling_factor(&self) -> f64 {
        match self {
            Self::Tiny(m) => m.config.scaling_factor,
            Self::Kl(m) => m.config.scaling_factor,
        }
    }

    /// The config's `shift_factor`; 0 when it has none (SD 1.x/2.x).
    pub fn latent_shift_factor(&self) -> f64 {
        match self {
            Self::Tiny(m) => m.config.shift_factor,
            Self::Kl(m) => m.config.shift_factor.unwrap_or(0.0),
        }
    }

    /// Pixels per latent along one side (8 for SD; diffusers' `vae_scale_factor`).
    pub fn pixels_per_latent(&self) -> usize {
        match self {
            Self::Tiny(m) => m.config.pixels_per_latent(),
            Self::Kl(m) => m.config.pixels_per_latent(),
        }
    }

    pub fn latent_channels(&self) -> usize {
        match self {
            Self::Tiny(m) => m.config.latent_channels,
            Self::Kl(m) => m.config.latent_channels,
        }
    }

    /// The float dtype it computes in (f32 for a `force_upcast` VAE in an f16 load).
    pub fn dtype(&self) -> DType {
        match self {
            Self::Tiny(m) => m.dtype,
            Self::Kl(m) => m.dtype,
        }
    }
}
