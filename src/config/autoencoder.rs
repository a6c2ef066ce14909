//! Decoder configs: `AutoencoderTiny` (TAESD-style) and `AutoencoderKL`.

use serde::{Deserialize, Serialize};

use super::{ActFn, ensure};
use crate::error::{Error, Result};

/// Where the config lives in a pipeline folder: what errors name unless told otherwise.
const FILE: &str = "vae/config.json";

choice! {
    /// `_class_name` of `vae/config.json`: which of the two autoencoders the folder holds.
    VaeClass {
        AutoencoderTiny = "AutoencoderTiny",
        AutoencoderKL = "AutoencoderKL",
    }
}

choice! {
    /// `AutoencoderTiny.upsample_fn`.
    UpsampleFn {
        Nearest = "nearest",
    }
}

choice! {
    /// `AutoencoderKL.down_block_types` entries.
    DownEncoderBlockType {
        DownEncoderBlock2D = "DownEncoderBlock2D",
    }
}

choice! {
    /// `AutoencoderKL.up_block_types` entries.
    UpDecoderBlockType {
        UpDecoderBlock2D = "UpDecoderBlock2D",
    }
}

/// `AutoencoderTiny`. The legacy `block_out_channels` key is ignored, as diffusers does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderTinyConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub act_fn: ActFn,
    pub upsample_fn: UpsampleFn,
    pub latent_channels: usize,
    pub upsampling_scaling_factor: usize,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub latent_magnitude: f64,
    pub latent_shift: f64,
    pub force_upcast: bool,
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl Default for AutoencoderTinyConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: ActFn::Relu,
            upsample_fn: UpsampleFn::Nearest,
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            latent_magnitude: 3.0,
            latent_shift: 0.5,
            force_upcast: false,
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

impl AutoencoderTinyConfig {
    /// Rejects what the decoder does not implement; errors name `vae/config.json`.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(FILE)
    }

    /// [`Self::validate`], naming `file` (where the config was read from) in errors.
    pub fn validate_in(&self, file: &str) -> Result<()> {
        ensure(self.act_fn == ActFn::Relu, file, "act_fn", &self.act_fn)?;
        ensure(self.upsample_fn.is_supported(), file, "upsample_fn", &self.upsample_fn)?;
        ensure(
            !self.decoder_block_out_channels.is_empty()
                && self.decoder_block_out_channels.len() == self.num_decoder_blocks.len(),
            file,
            "num_decoder_blocks",
            &self.num_decoder_blocks,
        )?;
        ensure(self.upsampling_scaling_factor >= 1, file, "upsampling_scaling_factor", self.upsampling_scaling_factor)?;
        // The image size derives from it: reject what would overflow (a fuzzed config can).
        ensure(self.checked_pixels_per_latent().is_some(), file, "decoder_block_out_channels", &self.decoder_block_out_channels)?;
        uniform_width(&self.decoder_block_out_channels, file, "decoder_block_out_channels")
    }

    fn checked_pixels_per_latent(&self) -> Option<usize> {
        let upsamples = u32::try_from(self.decoder_block_out_channels.len().checked_sub(1)?).ok()?;
        self.upsampling_scaling_factor.checked_pow(upsamples)
    }

    /// The encoder half's checks, for checkpoints that have one.
    pub fn validate_encoder_in(&self, file: &str) -> Result<()> {
        let blocks = &self.num_encoder_blocks;
        ensure(self.encoder_block_out_channels.len() == blocks.len(), file, "num_encoder_blocks", blocks)?;
        uniform_width(&self.encoder_block_out_channels, file, "encoder_block_out_channels")
    }

    /// Pixels per latent along one side: every block but the last upsamples.
    ///
    /// # Panics
    /// On a config [`Self::validate_in`] rejects.
    pub fn pixels_per_latent(&self) -> usize {
        self.checked_pixels_per_latent().expect("validated config")
    }
}

/// diffusers builds every block of level `i` as `width[i] → width[i]` and feeds it the previous
/// level's output unchanged, so unequal widths cannot run there either: reject them up front.
fn uniform_width(widths: &[usize], file: &str, field: &str) -> Result<()> {
    match widths {
        [first, rest @ ..] if rest.iter().all(|w| w == first) => Ok(()),
        _ => Err(Error::UnsupportedConfig {
            file: file.into(),
            field: field.into(),
            value: format!("{widths:?}"),
            hint: Some("AutoencoderTiny passes each level's output to the next unchanged: widths must be equal".into()),
        }),
    }
}

/// `AutoencoderKL`. Only the decoder half is used for text-to-image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<DownEncoderBlockType>,
    pub up_block_types: Vec<UpDecoderBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: ActFn,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: Option<serde_json::Value>,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DownEncoderBlockType::DownEncoderBlock2D],
            up_block_types: vec![UpDecoderBlockType::UpDecoderBlock2D],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: ActFn::Silu,
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: None,
            scaling_factor: 0.18215,
            shift_factor: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKLConfig {
    /// Rejects what the decoder does not implement; errors name `vae/config.json`.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(FILE)
    }

    /// [`Self::validate`], naming `file` (where the config was read from) in errors.
    pub fn validate_in(&self, file: &str) -> Result<()> {
        ensure(self.act_fn == ActFn::Silu, file, "act_fn", &self.act_fn)?;
        ensure(!self.block_out_channels.is_empty(), file, "block_out_channels", &self.block_out_channels)?;
        ensure(self.up_block_types.len() == self.block_out_channels.len(), file, "up_block_types", &self.up_block_types)?;
        for t in &self.up_block_types {
            ensure(t.is_supported(), file, "up_block_types", t)?;
        }
        ensure(self.norm_num_groups > 0, file, "norm_num_groups", self.norm_num_groups)?;
        // The image size derives from it: reject what would overflow (a fuzzed config can).
        ensure(self.checked_pixels_per_latent().is_some(), file, "block_out_channels", &self.block_out_channels)?;
        for &c in &self.block_out_channels {
            ensure(c % self.norm_num_groups == 0, file, "norm_num_groups", self.norm_num_groups)?;
        }
        Ok(())
    }

    /// The encoder half's checks, for checkpoints that have one.
    pub fn validate_encoder_in(&self, file: &str) -> Result<()> {
        for t in &self.down_block_types {
            if !t.is_supported() {
                // Unquoted, unlike `ensure`'s values: the message this check has always given.
                return Err(Error::unsupported(file, "down_block_types", t.as_str()));
            }
        }
        Ok(())
    }

    fn checked_pixels_per_latent(&self) -> Option<usize> {
        let upsamples = u32::try_from(self.block_out_channels.len().checked_sub(1)?).ok()?;
        1usize.checked_shl(upsamples)
    }

    /// Pixels per latent along one side: every up block but the last doubles the size.
    ///
    /// # Panics
    /// On a config [`Self::validate_in`] rejects.
    pub fn pixels_per_latent(&self) -> usize {
        self.checked_pixels_per_latent().expect("validated config")
    }

    /// Values in the decoder's largest activation for an `h`×`w` latent (batch 1): each up block
    /// runs at its input width and resolution, then upsamples with its output width.
    pub fn largest_decode_activation(&self, h: usize, w: usize) -> u64 {
        let widths = &self.block_out_channels;
        let mut pixels = (h * w) as u64;
        let mut c_prev = *widths.last().unwrap_or(&0) as u64;
        let mut largest = c_prev * pixels;
        for (i, &c) in widths.iter().rev().enumerate() {
            largest = largest.max(c_prev.max(c as u64) * pixels);
            if i + 1 < widths.len() {
                pixels *= 4;
                largest = largest.max(c as u64 * pixels);
            }
            c_prev = c as u64;
        }
        largest
    }
}
