//! diffusers `AutoencoderKL`: `Encoder` / `Decoder` (`models/autoencoders/vae.py`), their
//! blocks `DownEncoderBlock2D`, `UpDecoderBlock2D`, `UNetMidBlock2D` (`unets/unet_2d_blocks.py`)
//! (the mid block's attention is [`crate::attention::Attention::spatial`]).

use burn::tensor::{DType, Tensor};

use crate::config::AutoencoderKLConfig;
use crate::error::Result;
use crate::attention::Attention;
use crate::limits::DeviceLimits;
use crate::nn::{ChannelChunks, Conv2d, Conv2dConfig, GroupNorm, in_dtype};
use crate::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use crate::weights::{VarBuilder, Weights};

/// Every norm of the KL autoencoder uses this epsilon (hard-coded upstream).
const EPS: f64 = 1e-6;

fn resnet(vb: &VarBuilder, c_in: usize, c_out: usize, groups: usize) -> Result<ResnetBlock2D> {
    let cfg = ResnetConfig {
        in_channels: c_in,
        out_channels: c_out,
        temb_channels: None,
        groups,
        eps: EPS,
        output_scale_factor: 1.0,
    };
    ResnetBlock2D::load(vb, cfg)
}

/// The `resnets` of an encoder or decoder block: `layers` of them, `c_in → c_out` then
/// `c_out → c_out`.
fn block_resnets(vb: &VarBuilder, c_in: usize, c_out: usize, layers: usize, groups: usize) -> Result<Vec<ResnetBlock2D>> {
    (0..layers).map(|j| resnet(&vb.pp("resnets").pp(j), if j == 0 { c_in } else { c_out }, c_out, groups)).collect()
}

/// diffusers' `_convert_deprecated_attention_blocks`: older VAE checkpoints name the mid-block
/// attention `query`/`key`/`value`/`proj_attn`.
pub fn legacy_attention_key(key: &str) -> String {
    const RENAMES: [(&str, &str); 4] =
        [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")];
    if key.contains(".attentions.") {
        for (old, new) in RENAMES {
            if key.contains(old) {
                return key.replacen(old, new, 1);
            }
        }
    }
    key.to_string()
}

/// `UNetMidBlock2D` as the VAE builds it: resnet, (attention,) resnet; no time embedding.
#[derive(Debug, Clone)]
pub struct UNetMidBlock2D {
    resnets: [ResnetBlock2D; 2],
    attention: Option<Attention>,
}

impl UNetMidBlock2D {
    pub fn load(vb: &VarBuilder, channels: usize, groups: usize, add_attention: bool) -> Result<Self> {
        let r = vb.pp("resnets");
        let attention =
            add_attention.then(|| Attention::spatial(&vb.pp("attentions").pp(0), channels, groups, EPS)).transpose()?;
        Ok(Self {
            resnets: [resnet(&r.pp(0), channels, channels, groups)?, resnet(&r.pp(1), channels, channels, groups)?],
            attention,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        if let Some(attn) = &self.attention {
            x = attn.forward_spatial(x);
        }
        self.resnets[1].forward(x, None)
    }
}

/// `UpDecoderBlock2D`: resnets, then a nearest ×2 upsample + conv on all but the last level.
#[derive(Debug, Clone)]
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn load(vb: &VarBuilder, c_in: usize, c_out: usize, layers: usize, groups: usize, upsample: bool) -> Result<Self> {
        let resnets = block_resnets(vb, c_in, c_out, layers, groups)?;
        let upsampler = if upsample { Some(Upsample2D::load(&vb.pp("upsamplers").pp(0), c_out)?) } else { None };
        Ok(Self { resnets, upsampler })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnets.iter().fold(x, |x, r| r.forward(x, None));
        match &self.upsampler {
            Some(up) => up.forward(x, None),
            None => x,
        }
    }
}

impl UpDecoderBlock2D {
    fn forward_chunks(&self, x: ChannelChunks, max_bytes: u64) -> ChannelChunks {
        let x = self.resnets.iter().fold(x, |x, r| r.forward_chunks(x, max_bytes));
        match &self.upsampler {
            Some(up) => {
                let unit = self.resnets.last().map_or(1, |r| r.out_group_width());
                up.forward_chunks(x, unit, max_bytes)
            }
            None => x,
        }
    }
}

/// `DownEncoderBlock2D`: resnets, then a stride-2 downsample on all but the last level.
#[derive(Debug, Clone)]
pub struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    pub fn load(vb: &VarBuilder, c_in: usize, c_out: usize, layers: usize, groups: usize, down: bool) -> Result<Self> {
        let resnets = block_resnets(vb, c_in, c_out, layers, groups)?;
        let downsampler = if down { Some(Downsample2D::load(&vb.pp("downsamplers").pp(0), c_out, 0)?) } else { None };
        Ok(Self { resnets, downsampler })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnets.iter().fold(x, |x, r| r.forward(x, None));
        match &self.downsampler {
            Some(down) => down.forward(x),
            None => x,
        }
    }
}

/// Group norm → SiLU → 3×3 conv: the output head of both halves.
#[derive(Debug, Clone)]
struct OutHead {
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl OutHead {
    fn load(vb: &VarBuilder, c_in: usize, c_out: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), groups, c_in, EPS)?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), c_in, c_out, Conv2dConfig::same(3))?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv_out.forward(self.conv_norm_out.forward_silu(x))
    }

    /// To RGB from channel chunks: the output (3 channels) is one tensor.
    fn forward_chunks(&self, x: ChannelChunks) -> Tensor<4> {
        let rgb = [(0, self.conv_out.out_channels())];
        let mut out = self.conv_out.forward_chunks(&self.conv_norm_out.forward_chunks(x, true), &rgb);
        out.chunks.pop().expect("one chunk")
    }
}

/// The KL `Decoder`: conv_in → mid block → up blocks (widths reversed) → norm, SiLU, conv_out.
#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    head: OutHead,
}

impl Decoder {
    pub fn load(vb: &VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let (widths, g) = (&cfg.block_out_channels, cfg.norm_num_groups);
        let top = *widths.last().expect("validated: at least one level");
        let mut c_prev = top;
        let mut up_blocks = Vec::new();
        for (i, &c) in widths.iter().rev().enumerate() {
            let upsample = i + 1 < widths.len();
            up_blocks.push(UpDecoderBlock2D::load(&vb.pp("up_blocks").pp(i), c_prev, c, cfg.layers_per_block + 1, g, upsample)?);
            c_prev = c;
        }
        Ok(Self {
            conv_in: Conv2d::load(&vb.pp("conv_in"), cfg.latent_channels, top, Conv2dConfig::same(3))?,
            mid_block: UNetMidBlock2D::load(&vb.pp("mid_block"), top, g, cfg.mid_block_add_attention)?,
            up_blocks,
            head: OutHead::load(vb, widths[0], cfg.out_channels, g)?,
        })
    }

    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let x = self.mid_block.forward(self.conv_in.forward(z));
        self.head.forward(self.up_blocks.iter().fold(x, |x, b| b.forward(x)))
    }

    /// [`Self::forward`] with every activation within `max_bytes`: after the mid block (at latent
    /// size, whole), the up blocks run over channel chunks of whole norm groups. GroupNorm is
    /// exact per chunk; convolutions sum per-chunk partial results (only the summation order
    /// differs). Needs one group's channels at the output size to fit.
    pub fn forward_within(&self, z: Tensor<4>, max_bytes: u64) -> Tensor<4> {
        let x = self.mid_block.forward(self.conv_in.forward(z));
        let [n, c, h, w] = x.dims();
        let unit = self.up_blocks.first().and_then(|b| b.resnets.first()).map_or(1, |r| r.in_group_width());
        let x = ChannelChunks { chunks: vec![x] }.rechunk(&ChannelChunks::ranges(c, n * h * w, unit, max_bytes));
        let x = self.up_blocks.iter().fold(x, |x, b| b.forward_chunks(x, max_bytes));
        self.head.forward_chunks(x)
    }
}

/// The KL `Encoder` (`double_z=True`): conv_in → down blocks → mid block → norm, SiLU, conv_out
/// to mean and log-variance.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    head: OutHead,
}

impl Encoder {
    pub fn load(vb: &VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let (widths, g) = (&cfg.block_out_channels, cfg.norm_num_groups);
        let top = *widths.last().expect("validated: at least one level");
        let mut c_prev = widths[0];
        let mut down_blocks = Vec::new();
        for (i, &c) in widths.iter().enumerate() {
            let down = i + 1 < widths.len();
            down_blocks.push(DownEncoderBlock2D::load(&vb.pp("down_blocks").pp(i), c_prev, c, cfg.layers_per_block, g, down)?);
            c_prev = c;
        }
        Ok(Self {
            conv_in: Conv2d::load(&vb.pp("conv_in"), cfg.in_channels, widths[0], Conv2dConfig::same(3))?,
            down_blocks,
            mid_block: UNetMidBlock2D::load(&vb.pp("mid_block"), top, g, cfg.mid_block_add_attention)?,
            head: OutHead::load(vb, top, 2 * cfg.latent_channels, g)?,
        })
    }

    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        let x = self.down_blocks.iter().fold(self.conv_in.forward(image), |x, b| b.forward(x));
        self.head.forward(self.mid_block.forward(x))
    }
}

/// diffusers `DiagonalGaussianDistribution`: the encoder's posterior over latents.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    pub mean: Tensor<4>,
    /// Clamped to [-30, 20] as upstream.
    pub logvar: Tensor<4>,
}

impl DiagonalGaussian {
    /// Splits `[b, 2·c, h, w]` encoder moments into mean and log-variance.
    pub fn from_moments(moments: Tensor<4>) -> Self {
        let mut halves = moments.chunk(2, 1).into_iter();
        let (mean, logvar) = (halves.next().unwrap(), halves.next().unwrap());
        Self { mean, logvar: logvar.clamp(-30.0, 20.0) }
    }

    /// `mean + std · noise`, with `noise` standard normal of the mean's shape (drawn by the
    /// caller so that seeding stays in one place).
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + (self.logvar.clone() * 0.5).exp() * noise
    }
}

/// `AutoencoderKL`. The encoder half (with `quant_conv`) is built when its weights are present.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    pub config: AutoencoderKLConfig,
    pub encoder: Option<Encoder>,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    pub decoder: Decoder,
    /// The weights' float dtype; inputs are cast to it and results back.
    pub dtype: DType,
    /// Decodes run over channel chunks where an activation would outgrow a binding.
    pub limits: DeviceLimits,
}

impl AutoencoderKL {
    /// Builds from diffusers-layout weights and checks that no tensor is left over. Older
    /// checkpoints' attention names (`query`, `proj_attn`, ...) are accepted. Config errors name
    /// `config_path`, the file `config` came from.
    pub fn load(weights: Weights, config: AutoencoderKLConfig, config_path: &str) -> Result<Self> {
        config.validate_in(config_path)?;
        let weights = weights.rename(legacy_attention_key);
        let vb = weights.root();
        let latent = config.latent_channels;
        let quant = |name: &str, c: usize| Conv2d::load(&vb.pp(name), c, c, Conv2dConfig::same(1));
        let (encoder, quant_conv) = if vb.pp("encoder").has_prefix() {
            config.validate_encoder_in(config_path)?;
            let quant_conv = if config.use_quant_conv { Some(quant("quant_conv", 2 * latent)?) } else { None };
            (Some(Encoder::load(&vb.pp("encoder"), &config)?), quant_conv)
        } else {
            (None, None)
        };
        let post_quant_conv = if config.use_post_quant_conv { Some(quant("post_quant_conv", latent)?) } else { None };
        let decoder = Decoder::load(&vb.pp("decoder"), &config)?;
        weights.finish()?;
        Ok(Self { config, encoder, quant_conv, post_quant_conv, decoder, dtype: weights.dtype(), limits: weights.limits() })
    }

    /// Builds the encoder half (and `quant_conv`) from `weights` holding only those tensors,
    /// for a model loaded without them (the browser uploads them at the first image). All of
    /// `weights` must be used; on error `self` is unchanged.
    pub fn attach_encoder(&mut self, weights: Weights, config_path: &str) -> Result<()> {
        self.config.validate_encoder_in(config_path)?;
        // On the decoder's device: its limits.
        let weights = weights.rename(legacy_attention_key).with_limits(self.limits);
        let vb = weights.root();
        let c = 2 * self.config.latent_channels;
        let quant_conv = if self.config.use_quant_conv {
            Some(Conv2d::load(&vb.pp("quant_conv"), c, c, Conv2dConfig::same(1))?)
        } else {
            None
        };
        let encoder = Encoder::load(&vb.pp("encoder"), &self.config)?;
        weights.finish()?;
        self.encoder = Some(encoder);
        self.quant_conv = quant_conv;
        Ok(())
    }

    /// diffusers `decode(z).sample`; over channel chunks where one activation would outgrow the
    /// device's largest binding ([`Decoder::forward_within`]).
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        self.decode_within(z, self.limits.max_tensor_bytes())
    }

    /// [`Self::decode`] with every activation within `max_bytes` (in f32).
    pub fn decode_within(&self, z: Tensor<4>, max_bytes: u64) -> Tensor<4> {
        let [_, _, h, w] = z.dims();
        let whole = self.config.largest_decode_activation(h, w) * 4 <= max_bytes;
        in_dtype(z, self.dtype, |z| {
            let z = match &self.post_quant_conv {
                Some(conv) => conv.forward(z),
                None => z,
            };
            if whole { self.decoder.forward(z) } else { self.decoder.forward_within(z, max_bytes) }
        })
    }

    /// diffusers `encode(image).latent_dist`; `None` without encoder weights.
    pub fn encode(&self, image: Tensor<4>) -> Option<DiagonalGaussian> {
        let encoder = self.encoder.as_ref()?;
        let moments = in_dtype(image, self.dtype, |x| {
            let moments = encoder.forward(x);
            match &self.quant_conv {
                Some(conv) => conv.forward(moments),
                None => moments,
            }
        });
        Some(DiagonalGaussian::from_moments(moments))
    }
}
