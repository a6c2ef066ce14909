//! diffusers `models/resnet.py`: `ResnetBlock2D`, `Upsample2D`, `Downsample2D`, at model level as
//! there: shared by the U-Net and the KL autoencoder (whose resnets take no time embedding).

use burn::tensor::Tensor;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, PadMode};

use crate::error::Result;
use crate::nn::{ChannelChunks, Conv2d, Conv2dConfig, GroupNorm, Linear};
use crate::weights::VarBuilder;

#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding; `None` for blocks without one (the VAE).
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

/// `ResnetBlock2D` with `time_embedding_norm="default"`: norm → SiLU → conv, plus the projected
/// time embedding, norm → SiLU → conv, then the (1×1-projected) skip, divided by the scale.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn load(vb: &VarBuilder, c: ResnetConfig) -> Result<Self> {
        let (i, o) = (c.in_channels, c.out_channels);
        let time_emb_proj = match c.temb_channels {
            Some(t) => Some(Linear::load(&vb.pp("time_emb_proj"), t, o, true)?),
            None => None,
        };
        let conv_shortcut = if i != o {
            Some(Conv2d::load(&vb.pp("conv_shortcut"), i, o, Conv2dConfig::same(1))?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::load(&vb.pp("norm1"), c.groups, i, c.eps)?,
            conv1: Conv2d::load(&vb.pp("conv1"), i, o, Conv2dConfig::same(3))?,
            time_emb_proj,
            norm2: GroupNorm::load(&vb.pp("norm2"), c.groups, o, c.eps)?,
            conv2: Conv2d::load(&vb.pp("conv2"), o, o, Conv2dConfig::same(3))?,
            conv_shortcut,
            output_scale_factor: c.output_scale_factor,
        })
    }

    /// `temb_act`: the *activated* time embedding `silu(temb)`, `[batch, temb_channels]` (the
    /// U-Net applies the SiLU once for all its blocks), required iff the block was built with
    /// one. Its projection (and bias) is added inside `norm2`'s kernels.
    pub fn forward(&self, x: Tensor<4>, temb_act: Option<&Tensor<2>>) -> Tensor<4> {
        let h = self.conv1.forward(self.norm1.forward_silu(x.clone()));
        let h = match (&self.time_emb_proj, temb_act) {
            (Some(proj), Some(temb)) => {
                let (t, bias) = proj.forward_unbiased(temb.clone());
                self.norm2.forward_silu_add(h, t, bias.as_ref())
            }
            _ => self.norm2.forward_silu(h),
        };
        let h = self.conv2.forward(h);
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = skip + h;
        if self.output_scale_factor == 1.0 { out } else { out / self.output_scale_factor }
    }
}

impl ResnetBlock2D {
    pub fn in_group_width(&self) -> usize {
        self.norm1.group_width()
    }

    pub fn out_group_width(&self) -> usize {
        self.norm2.group_width()
    }

    /// [`Self::forward`] without a time embedding over channel chunks (whole groups of `norm1`),
    /// every activation within `max_bytes`: the KL decoder at large sizes.
    pub fn forward_chunks(&self, x: ChannelChunks, max_bytes: u64) -> ChannelChunks {
        let [n, _, h, w] = x.chunks[0].dims();
        let out = ChannelChunks::ranges(self.conv2.out_channels(), n * h * w, self.norm2.group_width(), max_bytes);
        let h1 = self.conv1.forward_chunks(&self.norm1.forward_chunks(x.clone(), true), &out);
        let h2 = self.conv2.forward_chunks(&self.norm2.forward_chunks(h1, true), &out);
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward_chunks(&x, &out),
            None => x.rechunk(&out),
        };
        let sum = skip.plus(h2);
        if self.output_scale_factor == 1.0 { sum } else { sum.map(|t| t / self.output_scale_factor) }
    }
}

/// `Upsample2D(use_conv=True)`: nearest-neighbour ×2 (or to the skip connection's size, which
/// diffusers passes when a latent side does not halve evenly), then a 3×3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(vb: &VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self { conv: Conv2d::load(&vb.pp("conv"), channels, channels, Conv2dConfig::same(3))? })
    }

    pub fn forward(&self, x: Tensor<4>, output_size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let size = output_size.unwrap_or([h * 2, w * 2]);
        let opts = InterpolateOptions::new(InterpolateMode::Nearest).with_align_corners(false).with_output_size(size);
        self.conv.forward(interpolate(x, opts))
    }
}

impl Upsample2D {
    /// [`Self::forward`] (×2) over channel chunks, cut again (in multiples of `unit` channels)
    /// so that each fits `max_bytes` at the doubled size.
    pub fn forward_chunks(&self, x: ChannelChunks, unit: usize, max_bytes: u64) -> ChannelChunks {
        let [n, _, h, w] = x.chunks[0].dims();
        let ranges = ChannelChunks::ranges(x.channels(), n * h * w * 4, unit, max_bytes);
        let opts = InterpolateOptions::new(InterpolateMode::Nearest).with_align_corners(false).with_output_size([h * 2, w * 2]);
        let up = x.rechunk(&ranges).map(|t| interpolate(t, opts.clone()));
        self.conv.forward_chunks(&up, &ranges)
    }
}

/// `Downsample2D(use_conv=True)`: a 3×3 stride-2 conv with symmetric `padding`; with
/// `padding` 0 (the VAE encoder's, and a U-Net's `downsample_padding: 0`) diffusers first pads
/// right and bottom by one, so odd sizes round up as in the padded case.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    padding: usize,
}

impl Downsample2D {
    pub fn load(vb: &VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        let cfg = Conv2dConfig { kernel: 3, stride: 2, padding, bias: true };
        Ok(Self { conv: Conv2d::load(&vb.pp("conv"), channels, channels, cfg)?, padding })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self.padding {
            0 => self.conv.forward(x.pad((0, 1, 0, 1), PadMode::Constant(0.0))),
            _ => self.conv.forward(x),
        }
    }
}
