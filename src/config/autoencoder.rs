//! Decoder configs: `AutoencoderTiny` (TAESD-style) and `AutoencoderKL`.

use serde::{Deserialize, Serialize};

use super::ensure;
use crate::error::Result;

const FILE: &str = "vae/config.json";

/// `AutoencoderTiny`. The legacy `block_out_channels` key is ignored, as diffusers does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderTinyConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub act_fn: String,
    pub upsample_fn: String,
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
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
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
    pub fn validate(&self) -> Result<()> {
        ensure(self.act_fn == "relu", FILE, "act_fn", &self.act_fn)?;
        ensure(self.upsample_fn == "nearest", FILE, "upsample_fn", &self.upsample_fn)?;
        ensure(
            !self.decoder_block_out_channels.is_empty()
                && self.decoder_block_out_channels.len() == self.num_decoder_blocks.len(),
            FILE,
            "num_decoder_blocks",
            &self.num_decoder_blocks,
        )?;
        ensure(self.upsampling_scaling_factor >= 1, FILE, "upsampling_scaling_factor", self.upsampling_scaling_factor)?;
        // The image size derives from it: reject what would overflow (a fuzzed config can).
        ensure(self.checked_scale_factor().is_some(), FILE, "decoder_block_out_channels", &self.decoder_block_out_channels)
    }

    fn checked_scale_factor(&self) -> Option<usize> {
        let upsamples = u32::try_from(self.decoder_block_out_channels.len().checked_sub(1)?).ok()?;
        self.upsampling_scaling_factor.checked_pow(upsamples)
    }

    /// Pixels per latent along one side: every block but the last upsamples.
    ///
    /// # Panics
    /// On a config [`Self::validate`] rejects.
    pub fn scale_factor(&self) -> usize {
        self.checked_scale_factor().expect("validated config")
    }
}

/// `AutoencoderKL`. Only the decoder half is used for text-to-image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
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
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
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
    pub fn validate(&self) -> Result<()> {
        ensure(self.act_fn == "silu", FILE, "act_fn", &self.act_fn)?;
        ensure(!self.block_out_channels.is_empty(), FILE, "block_out_channels", &self.block_out_channels)?;
        ensure(self.up_block_types.len() == self.block_out_channels.len(), FILE, "up_block_types", &self.up_block_types)?;
        for t in &self.up_block_types {
            ensure(t == "UpDecoderBlock2D", FILE, "up_block_types", t)?;
        }
        ensure(self.norm_num_groups > 0, FILE, "norm_num_groups", self.norm_num_groups)?;
        for &c in &self.block_out_channels {
            ensure(c % self.norm_num_groups == 0, FILE, "norm_num_groups", self.norm_num_groups)?;
        }
        // The image size derives from it: reject what would overflow (a fuzzed config can).
        ensure(self.checked_scale_factor().is_some(), FILE, "block_out_channels", &self.block_out_channels)
    }

    fn checked_scale_factor(&self) -> Option<usize> {
        let upsamples = u32::try_from(self.block_out_channels.len().checked_sub(1)?).ok()?;
        1usize.checked_shl(upsamples)
    }

    /// Pixels per latent along one side: every up block but the last doubles the size.
    ///
    /// # Panics
    /// On a config [`Self::validate`] rejects.
    pub fn scale_factor(&self) -> usize {
        self.checked_scale_factor().expect("validated config")
    }
}
