//! diffusers `unets/unet_2d_blocks.py`: `DownBlock2D`, `CrossAttnDownBlock2D`, `UpBlock2D`,
//! `CrossAttnUpBlock2D`, `UNetMidBlock2DCrossAttn`. A plain block is a cross-attention block
//! without `attentions`, so each pair shares one struct; the stored keys are identical.

use burn::tensor::Tensor;

use super::attention::{Transformer2DModel, TransformerConfig};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use crate::error::Result;
use crate::weights::VarBuilder;

/// Shared by every block of one U-Net.
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

fn load_attentions(vb: &VarBuilder, n: usize, t: Option<&TransformerConfig>) -> Result<Vec<Transformer2DModel>> {
    match t {
        Some(t) => (0..n).map(|i| Transformer2DModel::load(&vb.pp("attentions").pp(i), t)).collect(),
        None => Ok(Vec::new()),
    }
}

/// `DownBlock2D` (`transformer: None`) or `CrossAttnDownBlock2D`: `layers` × (resnet
/// [→ transformer]), then an optional stride-2 conv. Every layer's output is a skip.
#[derive(Debug, Clone)]
pub struct DownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: &VarBuilder,
        c: &BlockConfig,
        in_channels: usize,
        out_channels: usize,
        layers: usize,
        transformer: Option<&TransformerConfig>,
        downsample_padding: Option<usize>,
    ) -> Result<Self> {
        let resnets = (0..layers)
            .map(|i| {
                let cin = if i == 0 { in_channels } else { out_channels };
                ResnetBlock2D::load(&vb.pp("resnets").pp(i), c.resnet(cin, out_channels, 1.0))
            })
            .collect::<Result<_>>()?;
        let downsampler = match downsample_padding {
            Some(p) => Some(Downsample2D::load(&vb.pp("downsamplers").pp(0), out_channels, p)?),
            None => None,
        };
        Ok(Self { resnets, attentions: load_attentions(vb, layers, transformer)?, downsampler })
    }

    /// Returns the block output and appends its skip connections to `skips`.
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context);
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

/// `UpBlock2D` or `CrossAttnUpBlock2D`: `layers` × (concat a skip → resnet [→ transformer]),
/// then an optional nearest ×2 (or to the next skip's size) upsampler.
#[derive(Debug, Clone)]
pub struct UpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    /// `prev_output_channels`: width coming from below; `in_channels`: width of the deepest
    /// skip this block consumes (the level's down input), as diffusers names them.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: &VarBuilder,
        c: &BlockConfig,
        in_channels: usize,
        prev_output_channels: usize,
        out_channels: usize,
        layers: usize,
        transformer: Option<&TransformerConfig>,
        add_upsample: bool,
    ) -> Result<Self> {
        let resnets = (0..layers)
            .map(|i| {
                let skip = if i == layers - 1 { in_channels } else { out_channels };
                let cin = if i == 0 { prev_output_channels } else { out_channels };
                ResnetBlock2D::load(&vb.pp("resnets").pp(i), c.resnet(cin + skip, out_channels, 1.0))
            })
            .collect::<Result<_>>()?;
        let upsampler =
            if add_upsample { Some(Upsample2D::load(&vb.pp("upsamplers").pp(0), out_channels)?) } else { None };
        Ok(Self { resnets, attentions: load_attentions(vb, layers, transformer)?, upsampler })
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
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("the down path pushes one skip per up resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context);
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(x, upsample_size),
            None => x,
        }
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then `layers` × (transformer → resnet), at constant width.
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
        transformer: &TransformerConfig,
    ) -> Result<Self> {
        // diffusers' `num_layers` is 1 for this block in every U-Net config.
        let layers = 1;
        let resnets = (0..=layers)
            .map(|i| ResnetBlock2D::load(&vb.pp("resnets").pp(i), c.resnet(channels, channels, output_scale_factor)))
            .collect::<Result<_>>()?;
        Ok(Self { resnets, attentions: load_attentions(vb, layers, Some(transformer))? })
    }

    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attn.forward(x, context), Some(temb));
        }
        x
    }
}
