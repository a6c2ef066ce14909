//! diffusers `AutoencoderTiny` (TAESD and its distilled relatives): `EncoderTiny`, `DecoderTiny`
//! and `AutoencoderTinyBlock` from `models/autoencoders/vae.py` / `unets/unet_2d_blocks.py`.
//!
//! Both halves are a flat `nn.Sequential` (`decoder.layers.{i}`), so the layers are kept as a
//! list whose indices are the state-dict indices; parameter-free layers (ReLU, upsample) take an
//! index too. The original TAESD checkpoints are the same sequential with a leading clamp layer,
//! which [`load_original`] maps onto this layout.

use burn::tensor::{DType, Tensor};
use burn::tensor::activation::relu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::config::AutoencoderTinyConfig;
use crate::error::{Error, Result};
use crate::limits::DeviceLimits;
use crate::nn::{Conv2d, Conv2dConfig, in_dtype};
use crate::weights::{VarBuilder, Weights};

/// `AutoencoderTinyBlock`: relu(conv(x) + skip(x)), where `conv` is conv–ReLU–conv–ReLU–conv
/// (keys `conv.0`, `conv.2`, `conv.4`) and `skip` a bias-free 1×1 conv when the width changes.
#[derive(Debug, Clone)]
pub struct AutoencoderTinyBlock {
    conv: [Conv2d; 3],
    skip: Option<Conv2d>,
}

impl AutoencoderTinyBlock {
    pub fn load(vb: &VarBuilder, c_in: usize, c_out: usize) -> Result<Self> {
        let c = vb.pp("conv");
        let conv = [
            Conv2d::load(&c.pp(0), c_in, c_out, Conv2dConfig::same(3))?,
            Conv2d::load(&c.pp(2), c_out, c_out, Conv2dConfig::same(3))?,
            Conv2d::load(&c.pp(4), c_out, c_out, Conv2dConfig::same(3))?,
        ];
        let skip = if c_in != c_out {
            let cfg = Conv2dConfig { bias: false, ..Conv2dConfig::same(1) };
            Some(Conv2d::load(&vb.pp("skip"), c_in, c_out, cfg)?)
        } else {
            None
        };
        Ok(Self { conv, skip })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [c0, c1, c2] = &self.conv;
        let h = c2.forward(relu(c1.forward(relu(c0.forward(x.clone())))));
        let skip = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x,
        };
        relu(h + skip)
    }
}

/// One entry of the `layers` sequential.
#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Relu,
    Block(AutoencoderTinyBlock),
    /// `nn.Upsample(scale_factor, mode="nearest")`.
    Upsample(usize),
}

impl Layer {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Layer::Conv(conv) => conv.forward(x),
            Layer::Relu => relu(x),
            Layer::Block(block) => block.forward(x),
            Layer::Upsample(f) => {
                let [_, _, h, w] = x.dims();
                let opts = InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h * f, w * f]);
                interpolate(x, opts)
            }
        }
    }
}

impl Layer {
    /// Pixels of context each output pixel needs on every side (at this layer's resolution).
    fn padding(&self) -> usize {
        match self {
            Layer::Conv(conv) => conv.padding,
            Layer::Block(block) => block.conv.iter().map(|c| c.padding).sum(),
            Layer::Relu | Layer::Upsample(_) => 0,
        }
    }

    fn out_channels(&self) -> Option<usize> {
        match self {
            Layer::Conv(conv) => Some(conv.out_channels()),
            Layer::Block(block) => Some(block.conv[2].out_channels()),
            Layer::Relu | Layer::Upsample(_) => None,
        }
    }
}

/// Builds `layers.{i}` in order, so each layer's key is its position.
struct Sequential<'a> {
    vb: VarBuilder<'a>,
    layers: Vec<Layer>,
}

impl<'a> Sequential<'a> {
    fn new(vb: VarBuilder<'a>) -> Self {
        Self { vb: vb.pp("layers"), layers: Vec::new() }
    }

    fn conv(&mut self, c_in: usize, c_out: usize, stride: usize, bias: bool) -> Result<()> {
        let cfg = Conv2dConfig { kernel: 3, stride, padding: 1, bias };
        let conv = Conv2d::load(&self.vb.pp(self.layers.len()), c_in, c_out, cfg)?;
        self.layers.push(Layer::Conv(conv));
        Ok(())
    }

    fn block(&mut self, channels: usize) -> Result<()> {
        let block = AutoencoderTinyBlock::load(&self.vb.pp(self.layers.len()), channels, channels)?;
        self.layers.push(Layer::Block(block));
        Ok(())
    }

    fn forward(layers: &[Layer], x: Tensor<4>) -> Tensor<4> {
        layers.iter().fold(x, |x, layer| layer.forward(x))
    }
}

/// `DecoderTiny`: tanh clamp to ±3, conv + ReLU, then per level `num_blocks` blocks, nearest
/// upsampling (all levels but the last) and a conv (bias-free except the last, to RGB).
#[derive(Debug, Clone)]
pub struct DecoderTiny {
    layers: Vec<Layer>,
    /// Decodes run in tiles where an activation would outgrow a binding.
    limits: DeviceLimits,
}

impl DecoderTiny {
    /// `cfg` has passed `validate` (equal widths, at least one level).
    pub fn load(vb: &VarBuilder, cfg: &AutoencoderTinyConfig) -> Result<Self> {
        let width = cfg.decoder_block_out_channels[0];
        let mut seq = Sequential::new(vb.clone());
        seq.conv(cfg.latent_channels, width, 1, true)?;
        seq.layers.push(Layer::Relu);
        let levels = cfg.num_decoder_blocks.len();
        for (i, &blocks) in cfg.num_decoder_blocks.iter().enumerate() {
            let last = i + 1 == levels;
            for _ in 0..blocks {
                seq.block(width)?;
            }
            if !last {
                seq.layers.push(Layer::Upsample(cfg.upsampling_scaling_factor));
            }
            seq.conv(width, if last { cfg.out_channels } else { width }, 1, last)?;
        }
        Ok(Self { layers: seq.layers, limits: vb.limits() })
    }

    /// Latents → pixels in about [-1, 1] (the network itself outputs [0, 1]).
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let max = self.limits.max_tensor_bytes();
        self.forward_within(z, max)
    }

    /// [`Self::forward`] with activations of at most `max_bytes` each (in f32).
    pub fn forward_within(&self, z: Tensor<4>, max_bytes: u64) -> Tensor<4> {
        let z = (z / 3.0).tanh() * 3.0;
        self.forward_tiled(z, max_bytes) * 2.0 - 1.0
    }

    /// The layers over `z`, in tiles where the full-resolution activations would outgrow the
    /// device's largest binding (64 channels at 768² is 151 MB in f32). The decoder has no
    /// normalisation, so each output pixel depends only on latents within [`Self::halo`]: a tile
    /// decoded with that margin and cropped to its core equals the whole decode, with no seams.
    fn forward_tiled(&self, z: Tensor<4>, max: u64) -> Tensor<4> {
        let [b, c, h, w] = z.dims();
        let scale = self.scale();
        let per_pixel = (b * self.widest() * 4) as u64;
        if (h * w * scale * scale) as u64 * per_pixel <= max {
            return Sequential::forward(&self.layers, z);
        }
        let halo = self.halo();
        // The largest square tile (margins included) whose activations fit, in latent pixels.
        let side = ((max / per_pixel) as f64).sqrt() as usize / scale;
        let core = side.saturating_sub(2 * halo).max(1);
        let span =
            |start: usize, len: usize| (start.saturating_sub(halo), (start + core + halo).min(len));
        let rows = (0..h)
            .step_by(core)
            .map(|y0| {
                let (ya, yb) = span(y0, h);
                let tiles = (0..w)
                    .step_by(core)
                    .map(|x0| {
                        let (xa, xb) = span(x0, w);
                        let tile = Sequential::forward(
                            &self.layers,
                            z.clone().slice([0..b, 0..c, ya..yb, xa..xb]),
                        );
                        let (y, x) = ((y0 - ya) * scale, (x0 - xa) * scale);
                        let (th, tw) = (core.min(h - y0) * scale, core.min(w - x0) * scale);
                        let out_c = tile.dims()[1];
                        tile.slice([0..b, 0..out_c, y..y + th, x..x + tw])
                    })
                    .collect();
                Tensor::cat(tiles, 3)
            })
            .collect();
        Tensor::cat(rows, 2)
    }

    /// Output pixels per latent pixel (the product of the upsampling factors).
    fn scale(&self) -> usize {
        self.layers
            .iter()
            .map(|l| if let Layer::Upsample(f) = l { *f } else { 1 })
            .product()
    }

    /// The widest activation, in channels.
    fn widest(&self) -> usize {
        self.layers
            .iter()
            .filter_map(Layer::out_channels)
            .max()
            .unwrap_or(1)
    }

    /// How far, in latent pixels, an output pixel sees: each convolution widens the view by
    /// its padding at the resolution it runs at.
    fn halo(&self) -> usize {
        let mut scale = 1.0;
        let mut reach = 0.0;
        for layer in &self.layers {
            match layer {
                Layer::Upsample(f) => scale *= *f as f64,
                layer => reach += layer.padding() as f64 / scale,
            }
        }
        reach.ceil() as usize
    }
}

/// `EncoderTiny`: per level a conv (stride 2 and bias-free after the first) and `num_blocks`
/// blocks, then a conv to the latent channels. Input pixels in [-1, 1].
#[derive(Debug, Clone)]
pub struct EncoderTiny {
    layers: Vec<Layer>,
}

impl EncoderTiny {
    /// `cfg` has passed `validate_encoder_in` (equal widths, at least one level).
    pub fn load(vb: &VarBuilder, cfg: &AutoencoderTinyConfig) -> Result<Self> {
        let width = cfg.encoder_block_out_channels[0];
        let mut seq = Sequential::new(vb.clone());
        for (i, &blocks) in cfg.num_encoder_blocks.iter().enumerate() {
            if i == 0 {
                seq.conv(cfg.in_channels, width, 1, true)?;
            } else {
                seq.conv(width, width, 2, false)?;
            }
            for _ in 0..blocks {
                seq.block(width)?;
            }
        }
        seq.conv(width, cfg.latent_channels, 1, true)?;
        Ok(Self { layers: seq.layers })
    }

    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        Sequential::forward(&self.layers, (image + 1.0) / 2.0)
    }
}

/// `AutoencoderTiny`. The encoder is optional: original-layout folders ship the decoder alone.
#[derive(Debug, Clone)]
pub struct AutoencoderTiny {
    pub config: AutoencoderTinyConfig,
    pub encoder: Option<EncoderTiny>,
    pub decoder: DecoderTiny,
    /// The weights' float dtype; inputs are cast to it and results back.
    pub dtype: DType,
}

impl AutoencoderTiny {
    /// Builds from diffusers-layout weights (`encoder.layers.*`, `decoder.layers.*`) and checks
    /// that no tensor is left over. Config errors name `config_path`, the file `config` came from.
    pub fn load(weights: Weights, config: AutoencoderTinyConfig, config_path: &str) -> Result<Self> {
        config.validate_in(config_path)?;
        let vb = weights.root();
        let encoder = if vb.pp("encoder").has_prefix() {
            config.validate_encoder_in(config_path)?;
            Some(EncoderTiny::load(&vb.pp("encoder"), &config)?)
        } else {
            None
        };
        let decoder = DecoderTiny::load(&vb.pp("decoder"), &config)?;
        weights.finish()?;
        Ok(Self { config, encoder, decoder, dtype: weights.dtype() })
    }

    /// diffusers `decode(z).sample`.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        in_dtype(z, self.dtype, |z| self.decoder.forward(z))
    }

    /// [`Self::decode`] with f32 activations whatever the weights' dtype (its layers are convs,
    /// which widen their weights per call): the rerun after an f16 overflow.
    pub fn decode_f32(&self, z: Tensor<4>) -> Tensor<4> {
        in_dtype(z, DType::F32, |z| self.decoder.forward(z))
    }

    /// Builds the encoder from `weights` holding only its tensors (diffusers layout
    /// `encoder.layers.*`, or an `original` `taesd_encoder.safetensors`), for a model loaded
    /// without them (the browser uploads them at the first image). On error `self` is unchanged.
    pub fn attach_encoder(&mut self, weights: Weights, original: bool, config_path: &str) -> Result<()> {
        // On the decoder's device: its limits.
        let weights = weights.with_limits(self.decoder.limits);
        let mut config = self.config.clone();
        let encoder = if original {
            original_encoder_config(&weights, &mut config)?;
            config.validate()?;
            load_original_part(weights, "encoder", 0, |vb| EncoderTiny::load(vb, &config))?
        } else {
            config.validate_encoder_in(config_path)?;
            let encoder = EncoderTiny::load(&weights.root().pp("encoder"), &config)?;
            weights.finish()?;
            encoder
        };
        self.config = config;
        self.encoder = Some(encoder);
        Ok(())
    }

    /// diffusers `encode(image).latents`; `None` without encoder weights.
    pub fn encode(&self, image: Tensor<4>) -> Option<Tensor<4>> {
        let encoder = self.encoder.as_ref()?;
        Some(in_dtype(image, self.dtype, |x| encoder.forward(x)))
    }
}

/// The original TAESD checkpoints: `taesd_decoder.safetensors` (layer 0 there is the clamp:
/// `3.conv.0.weight` is diffusers' `decoder.layers.2.conv.0.weight`) and, optionally,
/// `taesd_encoder.safetensors` (`encoder.layers.{i}` is `{i}`). There is no config: TAESD
/// defaults, with widths, channels and blocks per level read from the stored shapes (the same
/// layout exists at other widths, e.g. 80), so only the upsampling factor is assumed (2).
pub fn load_original(decoder: Weights, encoder: Option<Weights>) -> Result<AutoencoderTiny> {
    let mut config = AutoencoderTinyConfig::default();
    original_decoder_config(&decoder, &mut config)?;
    let dtype = decoder.dtype();
    let decoder = load_original_part(decoder, "decoder", 1, |vb| DecoderTiny::load(vb, &config))?;
    let encoder = match encoder {
        Some(weights) => {
            original_encoder_config(&weights, &mut config)?;
            Some(load_original_part(weights, "encoder", 0, |vb| EncoderTiny::load(vb, &config))?)
        }
        None => None,
    };
    config.validate()?;
    Ok(AutoencoderTiny { config, encoder, decoder, dtype })
}

/// Builds one half from an original-layout file under diffusers names; errors name the keys as
/// stored in that file.
fn load_original_part<T>(
    weights: Weights,
    part: &str,
    shift: usize,
    build: impl FnOnce(&VarBuilder) -> Result<T>,
) -> Result<T> {
    let weights = weights.rename(|k| shift_layer_key(k, part, shift));
    let prefix = format!("{part}.layers.");
    let stored = |key: String| -> String {
        key.strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(i, rest)| Some(format!("{}.{rest}", i.parse::<usize>().ok()? + shift)))
            .unwrap_or(key)
    };
    let built = build(&weights.root().pp(part)).and_then(|m| weights.finish().map(|()| m));
    built.map_err(|e| match e {
        Error::MissingTensor { file, key } => Error::MissingTensor { file, key: stored(key) },
        Error::ShapeMismatch { file, key, expected, found } => {
            Error::ShapeMismatch { file, key: stored(key), expected, found }
        }
        Error::UnexpectedTensors { file, keys } => {
            Error::UnexpectedTensors { file, keys: keys.into_iter().map(stored).collect() }
        }
        e => e,
    })
}

/// `{i}.rest` → `{part}.layers.{i - shift}.rest`; keys that do not fit are kept, to be reported.
fn shift_layer_key(key: &str, part: &str, shift: usize) -> String {
    key.split_once('.')
        .and_then(|(i, rest)| Some((i.parse::<usize>().ok()?.checked_sub(shift)?, rest)))
        .map(|(i, rest)| format!("{part}.layers.{i}.{rest}"))
        .unwrap_or_else(|| key.to_string())
}

/// Reads `[out, in, ..]` of `key` from an original-layout file.
fn conv_shape(weights: &Weights, key: &str) -> Result<(usize, usize)> {
    match weights.shape(key) {
        Some(&[o, i, ..]) => Ok((o, i)),
        Some(shape) => Err(Error::unsupported(&weights.name, key, format!("shape {shape:?}"))),
        None => Err(Error::MissingTensor { file: weights.name.clone(), key: key.to_string() }),
    }
}

/// Walks layers from `first`: blocks (`{i}.conv.0.weight`) are counted per level, a bias-free
/// conv closes a level, parameter-free layers (upsample) are skipped, and the conv with a bias
/// ends the network. Returns the blocks per level (the closing convs split them) and the last
/// conv's output channels.
fn walk_levels(weights: &Weights, first: usize) -> Result<(Vec<usize>, usize)> {
    let (mut levels, mut count) = (Vec::new(), 0);
    for i in first.. {
        if weights.contains(&format!("{i}.conv.0.weight")) {
            count += 1;
        } else if weights.contains(&format!("{i}.weight")) {
            levels.push(count);
            count = 0;
            if weights.contains(&format!("{i}.bias")) {
                return Ok((levels, conv_shape(weights, &format!("{i}.weight"))?.0));
            }
        } else if !weights.keys().any(|k| k.split_once('.').and_then(|(j, _)| j.parse::<usize>().ok()) > Some(i)) {
            // Nothing further: the output conv (with a bias) is missing.
            return Err(Error::MissingTensor { file: weights.name.clone(), key: format!("{i}.bias") });
        }
    }
    unreachable!()
}

fn original_decoder_config(weights: &Weights, config: &mut AutoencoderTinyConfig) -> Result<()> {
    // 1: conv from the latents, 2: ReLU; then per level blocks, [upsample,] conv.
    let (width, latent_channels) = conv_shape(weights, "1.weight")?;
    let (blocks, out_channels) = walk_levels(weights, 3)?;
    config.decoder_block_out_channels = vec![width; blocks.len()];
    config.num_decoder_blocks = blocks;
    config.latent_channels = latent_channels;
    config.out_channels = out_channels;
    Ok(())
}

fn original_encoder_config(weights: &Weights, config: &mut AutoencoderTinyConfig) -> Result<()> {
    // 0: conv from RGB; then blocks, and a stride-2 bias-free conv opening each further level.
    let (width, in_channels) = conv_shape(weights, "0.weight")?;
    // The output conv's width is checked against the decoder's latent channels at load.
    let (blocks, _) = walk_levels(weights, 1)?;
    config.encoder_block_out_channels = vec![width; blocks.len()];
    config.num_encoder_blocks = blocks;
    config.in_channels = in_channels;
    Ok(())
}
