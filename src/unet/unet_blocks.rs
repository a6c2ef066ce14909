//! diffusers `unets/unet_2d_blocks.py`: `DownBlock2D`, `CrossAttnDownBlock2D`, `UpBlock2D`,
//! `CrossAttnUpBlock2D`, `UNetMidBlock2DCrossAttn`, `UNetMidBlock2D`. A plain block is a cross-attention block
//! without `attentions`, so each pair shares one struct; the stored keys are identical.

use burn::tensor::Tensor;

use super::attention::{Transformer2DModel, TransformerConfig};
use crate::attention::EncoderStates;
use crate::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use crate::error::Result;
use crate::weights::VarBuilder;

/// The resnet settings shared by every block of one U-Net (diffusers' `temb_channels`,
/// `resnet_groups`, `resnet_eps`).
#[derive(Debug, Clone, Copy)]
pub struct BlockConfig {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
}

impl BlockConfig {
    fn resnet(&self, in_channels: usize, out_channels: usize, output_scale_factor: f64) -> ResnetConfig {
        ResnetConfig {
            in_channels,
            out_channels,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
            output_scale_factor,
        }
    }
}

/// What every block is conditioned on (diffusers' `temb` and `encoder_hidden_states`): the time
/// embedding, already through SiLU, that each resnet projects, and the text states each
/// transformer attends to.
#[derive(Clone, Copy)]
pub struct Conditioning<'a> {
    pub temb: &'a Tensor<2>,
    pub context: &'a EncoderStates,
}

fn load_attentions(vb: &VarBuilder, n: usize, t: Option<&TransformerConfig>) -> Result<Vec<Transformer2DModel>> {
    match t {
        Some(t) => (0..n).map(|i| Transformer2DModel::load(&vb.pp("attentions").pp(i), t)).collect(),
        None => Ok(Vec::new()),
    }
}

/// The per-block arguments of diffusers' `get_down_block`.
#[derive(Debug, Clone, Copy)]
pub struct DownBlockConfig {
    pub num_layers: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// `Some(downsample_padding)` with `add_downsample` (every level but the last).
    pub downsample_padding: Option<usize>,
    /// `Some` for `CrossAttnDownBlock2D`.
    pub transformer: Option<TransformerConfig>,
}

/// `DownBlock2D` (`transformer: None`) or `CrossAttnDownBlock2D`: `num_layers` × (resnet
/// [→ transformer]), then an optional stride-2 conv. Every layer's output is a skip.
#[derive(Debug, Clone)]
pub struct DownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    pub fn load(vb: &VarBuilder, c: &BlockConfig, block: &DownBlockConfig) -> Result<Self> {
        let out = block.out_channels;
        let resnets = (0..block.num_layers)
            .map(|i| {
                let cin = if i == 0 { block.in_channels } else { out };
                ResnetBlock2D::load(&vb.pp("resnets").pp(i), c.resnet(cin, out, 1.0))
            })
            .collect::<Result<_>>()?;
        let downsampler = match block.downsample_padding {
            Some(p) => Some(Downsample2D::load(&vb.pp("downsamplers").pp(0), out, p)?),
            None => None,
        };
        let attentions = load_attentions(vb, block.num_layers, block.transformer.as_ref())?;
        Ok(Self { resnets, attentions, downsampler })
    }

    /// Returns the block output and appends its skip connections to `skips`.
    pub fn forward(&self, mut x: Tensor<4>, cond: Conditioning, skips: &mut Vec<Tensor<4>>) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(cond.temb));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, cond.context);
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

/// The per-block arguments of diffusers' `get_up_block`.
#[derive(Debug, Clone, Copy)]
pub struct UpBlockConfig {
    pub num_layers: usize,
    /// Width of the deepest skip this block consumes (the mirrored level's down input).
    pub in_channels: usize,
    /// Width coming from below.
    pub prev_output_channel: usize,
    pub out_channels: usize,
    /// Every level but the last (highest resolution) upsamples.
    pub add_upsample: bool,
    /// `Some` for `CrossAttnUpBlock2D`.
    pub transformer: Option<TransformerConfig>,
}

/// `UpBlock2D` or `CrossAttnUpBlock2D`: `num_layers` × (concat a skip → resnet
/// [→ transformer]), then an optional nearest ×2 (or to the next skip's size) upsampler.
#[derive(Debug, Clone)]
pub struct UpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    pub fn load(vb: &VarBuilder, c: &BlockConfig, block: &UpBlockConfig) -> Result<Self> {
        let (layers, out) = (block.num_layers, block.out_channels);
        let resnets = (0..layers)
            .map(|i| {
                let skip = if i == layers - 1 { block.in_channels } else { out };
                let cin = if i == 0 { block.prev_output_channel } else { out };
                ResnetBlock2D::load(&vb.pp("resnets").pp(i), c.resnet(cin + skip, out, 1.0))
            })
            .collect::<Result<_>>()?;
        let upsampler =
            if block.add_upsample { Some(Upsample2D::load(&vb.pp("upsamplers").pp(0), out)?) } else { None };
        let attentions = load_attentions(vb, layers, block.transformer.as_ref())?;
        Ok(Self { resnets, attentions, upsampler })
    }

    /// Skip connections this block consumes (one per resnet).
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// Pops its skips from the end of `skips`; `upsample_size` forces the upsampler's output
    /// size (the next skip's, when a side did not halve evenly on the way down).
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        cond: Conditioning,
        skips: &mut Vec<Tensor<4>>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("the down path pushes one skip per up resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(cond.temb));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, cond.context);
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(x, upsample_size),
            None => x,
        }
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then `layers` × (transformer → resnet), at constant width;
/// without a transformer it is `UNetMidBlock2D` as `get_mid_block` builds it (one resnet).
#[derive(Debug, Clone)]
pub struct UNetMidBlock2DCrossAttn {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    pub fn load(
        vb: &VarBuilder,
        c: &BlockConfig,
        channels: usize,
        output_scale_factor: f64,
        transformer: Option<&TransformerConfig>,
    ) -> Result<Self> {
        // diffusers' `num_layers`: 1 for the cross-attention block in every U-Net config, 0 for
        // `UNetMidBlock2D` (`get_mid_block`, `add_attention=False`).
        let layers = usize::from(transformer.is_some());
        let resnets = (0..=layers)
            .map(|i| ResnetBlock2D::load(&vb.pp("resnets").pp(i), c.resnet(channels, channels, output_scale_factor)))
            .collect::<Result<_>>()?;
        Ok(Self { resnets, attentions: load_attentions(vb, layers, transformer)? })
    }

    pub fn forward(&self, x: Tensor<4>, cond: Conditioning) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(cond.temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attn.forward(x, cond.context), Some(cond.temb));
        }
        x
    }
}
