//! `UNet2DConditionModel` config, as in diffusers' `unet/config.json`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{OneOrMany, ensure};
use crate::error::{Error, Result};

const FILE: &str = "unet/config.json";

/// `transformer_layers_per_block`: an int, one int per level, or (SDXL-style) one list per
/// level; the last form is parsed so that the error can name it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TransformerLayers {
    One(usize),
    PerLevel(Vec<usize>),
    PerLayer(Vec<Vec<usize>>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    pub sample_size: Option<OneOrMany<usize>>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    /// `null` in block-removed distilled models (BK-SDM): no mid block at all.
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: OneOrMany<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: OneOrMany<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub cross_attention_dim: OneOrMany<usize>,
    pub transformer_layers_per_block: TransformerLayers,
    pub reverse_transformer_layers_per_block: Option<Value>,
    pub encoder_hid_dim: Option<Value>,
    pub encoder_hid_dim_type: Option<Value>,
    /// In SD 1.x/2.x configs this is really the number of heads (a known diffusers misnomer).
    pub attention_head_dim: OneOrMany<usize>,
    /// The real number of heads; wins over `attention_head_dim` when set.
    pub num_attention_heads: Option<OneOrMany<usize>>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<Value>,
    pub addition_embed_type: Option<Value>,
    pub num_class_embeds: Option<Value>,
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: f64,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<Value>,
    pub timestep_post_act: Option<Value>,
    /// LCM/DMD-style guidance embedding input size (`time_cond_proj_dim`).
    pub time_cond_proj_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub attention_type: String,
    pub class_embeddings_concat: bool,
    pub cross_attention_norm: Option<Value>,
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
                .map(String::from)
                .to_vec(),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
                .map(String::from)
                .to_vec(),
            only_cross_attention: OneOrMany::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: OneOrMany::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: OneOrMany::One(1280),
            transformer_layers_per_block: TransformerLayers::One(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: OneOrMany::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".into(),
            class_embeddings_concat: false,
            cross_attention_norm: None,
        }
    }
}

/// Everything one down level (and its mirrored up level) needs, resolved from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetLevel {
    pub channels: usize,
    /// Resnet layers in the down block (the up block has one more).
    pub layers: usize,
    /// `true` for `CrossAttn*Block2D`.
    pub cross_attention: bool,
    pub heads: usize,
    pub transformer_layers: usize,
    pub cross_attention_dim: usize,
    pub only_cross_attention: bool,
}

impl UNet2DConditionConfig {
    /// Rejects every value the implementation does not honour, naming the field.
    pub fn validate(&self) -> Result<()> {
        let levels = self.block_out_channels.len();
        ensure(levels > 0, FILE, "block_out_channels", &self.block_out_channels)?;
        ensure(self.down_block_types.len() == levels, FILE, "down_block_types", &self.down_block_types)?;
        ensure(self.up_block_types.len() == levels, FILE, "up_block_types", &self.up_block_types)?;
        for t in &self.down_block_types {
            ensure(matches!(t.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D"), FILE, "down_block_types", t)?;
        }
        for t in &self.up_block_types {
            ensure(matches!(t.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D"), FILE, "up_block_types", t)?;
        }
        if let Some(mid) = &self.mid_block_type {
            ensure(mid == "UNetMidBlock2DCrossAttn", FILE, "mid_block_type", mid)?;
        }
        let must_be_null = [
            ("class_embed_type", &self.class_embed_type),
            ("addition_embed_type", &self.addition_embed_type),
            ("num_class_embeds", &self.num_class_embeds),
            ("encoder_hid_dim", &self.encoder_hid_dim),
            ("encoder_hid_dim_type", &self.encoder_hid_dim_type),
            ("time_embedding_act_fn", &self.time_embedding_act_fn),
            ("timestep_post_act", &self.timestep_post_act),
            ("cross_attention_norm", &self.cross_attention_norm),
            ("reverse_transformer_layers_per_block", &self.reverse_transformer_layers_per_block),
        ];
        for (field, value) in must_be_null {
            if let Some(v) = value.as_ref().filter(|v| !v.is_null()) {
                return Err(Error::unsupported(FILE, field, v));
            }
        }
        ensure(self.act_fn == "silu", FILE, "act_fn", &self.act_fn)?;
        ensure(self.resnet_time_scale_shift == "default", FILE, "resnet_time_scale_shift", &self.resnet_time_scale_shift)?;
        ensure(self.time_embedding_type == "positional", FILE, "time_embedding_type", &self.time_embedding_type)?;
        ensure(self.attention_type == "default", FILE, "attention_type", &self.attention_type)?;
        ensure(!self.dual_cross_attention, FILE, "dual_cross_attention", self.dual_cross_attention)?;
        ensure(!self.resnet_skip_time_act, FILE, "resnet_skip_time_act", self.resnet_skip_time_act)?;
        ensure(!self.class_embeddings_concat, FILE, "class_embeddings_concat", self.class_embeddings_concat)?;
        ensure(self.norm_num_groups.is_some_and(|g| g > 0), FILE, "norm_num_groups", self.norm_num_groups)?;
        ensure(self.conv_in_kernel % 2 == 1, FILE, "conv_in_kernel", self.conv_in_kernel)?;
        ensure(self.conv_out_kernel % 2 == 1, FILE, "conv_out_kernel", self.conv_out_kernel)?;
        if let TransformerLayers::PerLayer(v) = &self.transformer_layers_per_block {
            return Err(Error::unsupported(FILE, "transformer_layers_per_block", format!("{v:?}")));
        }
        // The timestep embedding is 4x the first level's width: reject what would overflow.
        ensure(self.block_out_channels[0].checked_mul(4).is_some(), FILE, "block_out_channels", &self.block_out_channels)?;
        let resolved = self.levels()?;
        for (i, level) in resolved.iter().enumerate() {
            let groups = self.norm_groups();
            ensure(level.channels % groups == 0, FILE, "norm_num_groups", groups)?;
            if level.cross_attention {
                ensure(
                    level.heads > 0 && level.channels % level.heads == 0,
                    FILE,
                    &format!("attention heads of level {i}"),
                    level.heads,
                )?;
            }
        }
        Ok(())
    }

    pub fn norm_groups(&self) -> usize {
        self.norm_num_groups.unwrap_or(32)
    }

    /// Width of the timestep embedding MLP output.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(self.block_out_channels[0] * 4)
    }

    /// Resolves the int-or-list fields into one record per down level (index 0 = highest
    /// resolution). Up level `i` mirrors down level `levels - 1 - i`, as in diffusers.
    pub fn levels(&self) -> Result<Vec<UNetLevel>> {
        let n = self.block_out_channels.len();
        let heads = self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim);
        let heads_field = if self.num_attention_heads.is_some() { "num_attention_heads" } else { "attention_head_dim" };
        let heads = heads.per_level(n, FILE, heads_field)?;
        let layers = self.layers_per_block.per_level(n, FILE, "layers_per_block")?;
        let cross_dims = self.cross_attention_dim.per_level(n, FILE, "cross_attention_dim")?;
        let only_cross = self.only_cross_attention.per_level(n, FILE, "only_cross_attention")?;
        let transformer_layers = match &self.transformer_layers_per_block {
            TransformerLayers::One(v) => vec![*v; n],
            TransformerLayers::PerLevel(v) => OneOrMany::Many(v.clone()).per_level(n, FILE, "transformer_layers_per_block")?,
            TransformerLayers::PerLayer(v) => {
                return Err(Error::unsupported(FILE, "transformer_layers_per_block", format!("{v:?}")));
            }
        };
        Ok((0..n)
            .map(|i| UNetLevel {
                channels: self.block_out_channels[i],
                layers: layers[i],
                cross_attention: self.down_block_types[i] == "CrossAttnDownBlock2D",
                heads: heads[i],
                transformer_layers: transformer_layers[i],
                cross_attention_dim: cross_dims[i],
                only_cross_attention: only_cross[i],
            })
            .collect())
    }
}
