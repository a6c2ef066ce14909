//! `UNet2DConditionModel` config, as in diffusers' `unet/config.json`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ActFn, OneOrMany, ensure};
use crate::error::{Error, Result};

/// Where the config lives in a pipeline folder: what errors name unless told otherwise.
const FILE: &str = "unet/config.json";

choice! {
    /// `down_block_types` entries (diffusers' `get_down_block`).
    DownBlockType {
        CrossAttnDownBlock2D = "CrossAttnDownBlock2D",
        DownBlock2D = "DownBlock2D",
    }
}

choice! {
    /// `up_block_types` entries (diffusers' `get_up_block`).
    UpBlockType {
        CrossAttnUpBlock2D = "CrossAttnUpBlock2D",
        UpBlock2D = "UpBlock2D",
    }
}

choice! {
    /// `mid_block_type` (diffusers' `get_mid_block`).
    MidBlockType {
        UNetMidBlock2DCrossAttn = "UNetMidBlock2DCrossAttn",
        /// One resnet, no attention (`get_mid_block` builds it with `num_layers=0`).
        UNetMidBlock2D = "UNetMidBlock2D",
    }
}

choice! {
    /// `resnet_time_scale_shift`: how resnets take the time embedding.
    ResnetTimeScaleShift {
        /// Added to the features.
        Default = "default",
    }
}

choice! {
    /// `time_embedding_type`.
    TimeEmbeddingType {
        /// Sinusoids (`Timesteps`).
        Positional = "positional",
    }
}

choice! {
    /// `attention_type` of the transformer blocks.
    AttentionType {
        Default = "default",
    }
}

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
    pub down_block_types: Vec<DownBlockType>,
    /// `null` in block-removed distilled models (BK-SDM): no mid block at all.
    pub mid_block_type: Option<MidBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub only_cross_attention: OneOrMany<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: OneOrMany<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: ActFn,
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
    pub resnet_time_scale_shift: ResnetTimeScaleShift,
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: f64,
    pub time_embedding_type: TimeEmbeddingType,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<Value>,
    pub timestep_post_act: Option<Value>,
    /// LCM/DMD-style guidance embedding input size (`time_cond_proj_dim`).
    pub time_cond_proj_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub attention_type: AttentionType,
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
            down_block_types: vec![
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::DownBlock2D,
            ],
            mid_block_type: Some(MidBlockType::UNetMidBlock2DCrossAttn),
            up_block_types: vec![
                UpBlockType::UpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
            ],
            only_cross_attention: OneOrMany::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: OneOrMany::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: ActFn::Silu,
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
            resnet_time_scale_shift: ResnetTimeScaleShift::Default,
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: TimeEmbeddingType::Positional,
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: AttentionType::Default,
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
    /// Rejects every value the implementation does not honour, naming the field; errors name
    /// `unet/config.json`.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(FILE)
    }

    /// [`Self::validate`], naming `file` (where the config was read from) in errors.
    pub fn validate_in(&self, file: &str) -> Result<()> {
        self.validated_levels(file).map(drop)
    }

    /// Validates the config and resolves its levels, once: what the model is built from.
    pub(crate) fn validated_levels(&self, file: &str) -> Result<Vec<UNetLevel>> {
        let levels = self.block_out_channels.len();
        ensure(levels > 0, file, "block_out_channels", &self.block_out_channels)?;
        ensure(self.down_block_types.len() == levels, file, "down_block_types", &self.down_block_types)?;
        ensure(self.up_block_types.len() == levels, file, "up_block_types", &self.up_block_types)?;
        for t in &self.down_block_types {
            ensure(t.is_supported(), file, "down_block_types", t)?;
        }
        for t in &self.up_block_types {
            ensure(t.is_supported(), file, "up_block_types", t)?;
        }
        if let Some(mid) = &self.mid_block_type {
            ensure(mid.is_supported(), file, "mid_block_type", mid)?;
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
                return Err(Error::unsupported(file, field, v));
            }
        }
        ensure(self.act_fn == ActFn::Silu, file, "act_fn", &self.act_fn)?;
        let shift = &self.resnet_time_scale_shift;
        ensure(shift.is_supported(), file, "resnet_time_scale_shift", shift)?;
        ensure(self.time_embedding_type.is_supported(), file, "time_embedding_type", &self.time_embedding_type)?;
        ensure(self.attention_type.is_supported(), file, "attention_type", &self.attention_type)?;
        ensure(!self.dual_cross_attention, file, "dual_cross_attention", self.dual_cross_attention)?;
        ensure(!self.resnet_skip_time_act, file, "resnet_skip_time_act", self.resnet_skip_time_act)?;
        ensure(!self.class_embeddings_concat, file, "class_embeddings_concat", self.class_embeddings_concat)?;
        ensure(self.norm_num_groups.is_some_and(|g| g > 0), file, "norm_num_groups", self.norm_num_groups)?;
        // The timestep embedding is 4x the first level's width: reject what would overflow.
        let first = self.block_out_channels.first().copied().unwrap_or(0);
        ensure(first.checked_mul(4).is_some(), file, "block_out_channels", &self.block_out_channels)?;
        ensure(self.conv_in_kernel % 2 == 1, file, "conv_in_kernel", self.conv_in_kernel)?;
        ensure(self.conv_out_kernel % 2 == 1, file, "conv_out_kernel", self.conv_out_kernel)?;
        let resolved = self.levels_in(file)?;
        let groups = self.norm_groups();
        // Heads must divide the width of every block that attends: cross-attention down levels,
        // the mid block (at the deepest level) and cross-attention up blocks (mirrored levels).
        let heads = |level: &UNetLevel, what: &str| {
            let ok = level.heads > 0 && level.channels.is_multiple_of(level.heads);
            ensure(ok, file, &format!("attention heads of {what}"), level.heads)
        };
        for (i, level) in resolved.iter().enumerate() {
            ensure(level.channels % groups == 0, file, "norm_num_groups", groups)?;
            if level.cross_attention {
                heads(level, &format!("level {i}"))?;
            }
        }
        if self.mid_block_type == Some(MidBlockType::UNetMidBlock2DCrossAttn) {
            heads(&resolved[levels - 1], "the mid block")?;
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            if *t == UpBlockType::CrossAttnUpBlock2D {
                heads(&resolved[levels - 1 - i], &format!("up block {i}"))?;
            }
        }
        Ok(resolved)
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
        self.levels_in(FILE)
    }

    fn levels_in(&self, file: &str) -> Result<Vec<UNetLevel>> {
        let n = self.block_out_channels.len();
        let transformer_layers = match &self.transformer_layers_per_block {
            TransformerLayers::One(v) => vec![*v; n],
            TransformerLayers::PerLevel(v) => {
                OneOrMany::Many(v.clone()).per_level(n, file, "transformer_layers_per_block")?
            }
            TransformerLayers::PerLayer(v) => {
                return Err(Error::unsupported(file, "transformer_layers_per_block", format!("{v:?}")));
            }
        };
        let heads = self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim);
        let heads_field = if self.num_attention_heads.is_some() { "num_attention_heads" } else { "attention_head_dim" };
        let heads = heads.per_level(n, file, heads_field)?;
        let layers = self.layers_per_block.per_level(n, file, "layers_per_block")?;
        let cross_dims = self.cross_attention_dim.per_level(n, file, "cross_attention_dim")?;
        let only_cross = self.only_cross_attention.per_level(n, file, "only_cross_attention")?;
        Ok((0..n)
            .map(|i| UNetLevel {
                channels: self.block_out_channels[i],
                layers: layers[i],
                cross_attention: self.down_block_types[i] == DownBlockType::CrossAttnDownBlock2D,
                heads: heads[i],
                transformer_layers: transformer_layers[i],
                cross_attention_dim: cross_dims[i],
                only_cross_attention: only_cross[i],
            })
            .collect())
    }
}
