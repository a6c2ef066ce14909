//! diffusers `unets/unet_2d_condition.py`: `UNet2DConditionModel`, the SD-family denoiser.
//! Every structural choice comes from the config (levels, block kinds, heads, layers per
//! block, mid block or none, projection kind, time-condition input), validated before the
//! model is built.

use burn::tensor::{DType, Device, Tensor};

use super::attention::TransformerConfig;
use crate::attention::EncoderStates;
use super::embeddings::{TimestepEmbedding, Timesteps};
use super::unet_blocks::{
    BlockConfig, Conditioning, DownBlock2D, DownBlockConfig, UNetMidBlock2DCrossAttn, UpBlock2D, UpBlockConfig,
};
use crate::config::{MidBlockType, UNet2DConditionConfig, UNetLevel, UpBlockType, from_json};
use crate::error::Result;
use crate::folder::join;
use crate::source::ModelSource;
use crate::nn::{Conv2d, Conv2dConfig, GroupNorm};
use crate::weights::Weights;

/// What errors name when the config's real path is not known ([`UNet2DConditionModel::load`]).
const FILE: &str = "unet/config.json";

#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock2D>,
    /// `None` for `mid_block_type: null` (block-removed distilled models).
    mid_block: Option<UNetMidBlock2DCrossAttn>,
    up_blocks: Vec<UpBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNet2DConditionConfig,
}

impl UNet2DConditionModel {
    /// Loads the U-Net in folder `dir` of `src`: `<dir>/config.json` (which config errors
    /// name) and the folder's weights, every stored tensor used (`Weights::finish`).
    pub fn from_source(src: &dyn ModelSource, dir: &str, device: &Device, dtype: DType) -> Result<Self> {
        let path = join(dir, "config.json");
        let config: UNet2DConditionConfig = from_json(&path, &src.read(&path)?)?;
        Self::load_in(&src.weights(dir, device, dtype)?, &config, &path)
    }

    /// Builds the model from `weights` after validating `config` (config errors name
    /// `unet/config.json`) and checks that every stored tensor was used, as the other loaders
    /// do: leftovers mean a checkpoint of another model.
    pub fn load(weights: &Weights, config: &UNet2DConditionConfig) -> Result<Self> {
        Self::load_in(weights, config, FILE)
    }

    /// [`Self::load`] with config errors naming `config_path`.
    fn load_in(weights: &Weights, config: &UNet2DConditionConfig, config_path: &str) -> Result<Self> {
        let unet = Self::build(weights, config, config.validated_levels(config_path)?)?;
        weights.finish()?;
        Ok(unet)
    }

    /// `levels`: the validated config's, from [`UNet2DConditionConfig::validated_levels`].
    fn build(weights: &Weights, config: &UNet2DConditionConfig, levels: Vec<UNetLevel>) -> Result<Self> {
        let n = levels.len();
        let vb = weights.root();
        let ch = &config.block_out_channels;
        let c0 = ch[0];
        let time_embed_dim = config.time_embed_dim();
        let groups = config.norm_groups();
        let blocks = BlockConfig { temb_channels: time_embed_dim, groups, eps: config.norm_eps };
        // The spatial transformer of a block at `level`'s width (heads checked by validation).
        let transformer = |level: &UNetLevel| TransformerConfig {
            channels: level.channels,
            heads: level.heads,
            layers: level.transformer_layers,
            cross_attention_dim: level.cross_attention_dim,
            norm_groups: groups,
            use_linear_projection: config.use_linear_projection,
            only_cross_attention: level.only_cross_attention,
            upcast_attention: config.upcast_attention,
        };

        // Loaded in the upstream module order, so a wrong checkpoint fails on its first tensor.
        let conv = |k: usize| Conv2dConfig { kernel: k, stride: 1, padding: (k - 1) / 2, bias: true };
        let conv_in = Conv2d::load(&vb.pp("conv_in"), config.in_channels, c0, conv(config.conv_in_kernel))?;
        let time_embedding =
            TimestepEmbedding::load(&vb.pp("time_embedding"), c0, time_embed_dim, config.time_cond_proj_dim)?;

        let mut down_blocks = Vec::with_capacity(n);
        for (i, level) in levels.iter().enumerate() {
            let block = DownBlockConfig {
                num_layers: level.layers,
                in_channels: if i == 0 { c0 } else { ch[i - 1] },
                out_channels: ch[i],
                downsample_padding: (i + 1 < n).then_some(config.downsample_padding),
                transformer: level.cross_attention.then(|| transformer(level)),
            };
            down_blocks.push(DownBlock2D::load(&vb.pp("down_blocks").pp(i), &blocks, &block)?);
        }

        let mid_block = config.mid_block_type.as_ref().map(|mid| {
            // The mid block never uses `only_cross_attention` (diffusers does not pass it).
            let t = TransformerConfig { only_cross_attention: false, ..transformer(&levels[n - 1]) };
            let t = (*mid == MidBlockType::UNetMidBlock2DCrossAttn).then_some(t);
            let scale = config.mid_block_scale_factor;
            UNetMidBlock2DCrossAttn::load(&vb.pp("mid_block"), &blocks, ch[n - 1], scale, t.as_ref())
        });
        let mid_block = mid_block.transpose()?;

        // Up block i mirrors down level n-1-i; whether it attends is its own type's say.
        let mut up_blocks = Vec::with_capacity(n);
        for (i, up_type) in config.up_block_types.iter().enumerate() {
            let r = n - 1 - i;
            let block = UpBlockConfig {
                num_layers: levels[r].layers + 1,
                in_channels: ch[r.saturating_sub(1)],
                prev_output_channel: if i == 0 { ch[n - 1] } else { ch[r + 1] },
                out_channels: ch[r],
                add_upsample: i + 1 < n,
                transformer: (*up_type == UpBlockType::CrossAttnUpBlock2D).then(|| transformer(&levels[r])),
            };
            up_blocks.push(UpBlock2D::load(&vb.pp("up_blocks").pp(i), &blocks, &block)?);
        }

        Ok(Self {
            conv_in,
            time_proj: Timesteps::new(c0, config.flip_sin_to_cos, config.freq_shift),
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), groups, c0, config.norm_eps)?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), c0, config.out_channels, conv(config.conv_out_kernel))?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// The noise (or velocity) prediction.
    ///
    /// `sample`: `[b, in_channels, h, w]`; `timesteps`: `[b]` floats (or `[1]`, broadcast);
    /// `encoder_hidden_states`: `[b, seq, cross_attention_dim]`; `timestep_cond`:
    /// `[b, time_cond_proj_dim]` for models with a guidance embedding (ignored by others).
    /// Any `h, w` work: upsamplers are sized to the skips when a side does not halve evenly.
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timesteps: Tensor<1>,
        encoder_hidden_states: Tensor<3>,
        timestep_cond: Option<Tensor<2>>,
    ) -> Tensor<4> {
        self.forward_with(sample, timesteps, &self.encoder_states(encoder_hidden_states), timestep_cond)
    }

    /// `encoder_hidden_states` held for the steps of one generation: the cross-attentions'
    /// keys and values are then projected once, not at every step ([`EncoderStates`]).
    pub fn encoder_states(&self, encoder_hidden_states: Tensor<3>) -> EncoderStates {
        EncoderStates::new(encoder_hidden_states.cast(self.dtype()))
    }

    /// [`Self::forward`] with encoder states kept across the steps of a generation.
    pub fn forward_with(
        &self,
        sample: Tensor<4>,
        timesteps: Tensor<1>,
        context: &EncoderStates,
        timestep_cond: Option<Tensor<2>>,
    ) -> Tensor<4> {
        let [b, _, h, w] = sample.dims();
        let timesteps = if timesteps.dims()[0] == 1 && b > 1 { timesteps.repeat_dim(0, b) } else { timesteps };
        // Inputs are cast to the weights' dtype (f16 on half-precision GPUs) and the result
        // back to the caller's: the sampler keeps its latents in f32 either way.
        let (out_dtype, dtype) = (sample.dtype(), self.dtype());
        let sample = sample.cast(dtype);
        let t_emb = self.time_proj.forward(timesteps).cast(dtype);
        let temb = self.time_embedding.forward(t_emb, timestep_cond.map(|c| c.cast(dtype)));
        // Every ResNet projects silu(temb): activated once here, not once per block.
        let temb = burn::tensor::activation::silu(temb);
        let cond = Conditioning { temb: &temb, context };

        let sample = if self.config.center_input_sample { sample * 2.0 - 1.0 } else { sample };
        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, cond, &mut skips);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, cond);
        }
        // diffusers forwards skip sizes to the upsamplers only when a side is not a multiple
        // of the total up factor; otherwise it scales ×2, which is the same thing then.
        let factor = 1usize << self.up_blocks.len().saturating_sub(1);
        let forward_size = h % factor != 0 || w % factor != 0;
        for block in &self.up_blocks {
            let remaining = skips.len() - block.num_skips();
            let size = match remaining.checked_sub(1) {
                Some(last) if forward_size => {
                    let [_, _, sh, sw] = skips[last].dims();
                    Some([sh, sw])
                }
                _ => None,
            };
            x = block.forward(x, cond, &mut skips, size);
        }
        self.conv_out.forward(self.conv_norm_out.forward_silu(x)).cast(out_dtype)
    }

    /// The float dtype the weights were loaded in.
    pub fn dtype(&self) -> DType {
        self.conv_in.dtype()
    }
}
