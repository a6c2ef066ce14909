//! diffusers `models/embeddings.py`: the sinusoidal timestep projection (`Timesteps`), the
//! time MLP (`TimestepEmbedding`, with the LCM/DMD `cond_proj` guidance input) and
//! `get_guidance_scale_embedding` of the LCM pipelines.

use burn::tensor::activation::silu;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::error::Result;
use crate::nn::Linear;
use crate::weights::VarBuilder;

/// `Timesteps`: `[b]` float timesteps → `[b, num_channels]` sinusoids. Parameter-free.
///
/// Timesteps are floats: rectified-flow models are called with `t = sigma * 1000`.
#[derive(Debug, Clone)]
pub struct Timesteps {
    num_channels: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
}

impl Timesteps {
    pub fn new(num_channels: usize, flip_sin_to_cos: bool, downscale_freq_shift: f64) -> Self {
        Self { num_channels, flip_sin_to_cos, downscale_freq_shift }
    }

    /// `exp(-ln(10000) · i / (half - shift))`, rounded step by step in f32 as torch does, so the
    /// phases `t · freq` (up to ~1000 rad) match the reference to the last bit.
    fn frequencies(&self) -> Vec<f32> {
        let half = self.num_channels / 2;
        let denom = (half as f64 - self.downscale_freq_shift) as f32;
        let neg_log = -(10000f64.ln() as f32);
        (0..half).map(|i| ((neg_log * i as f32 / denom) as f64).exp() as f32).collect()
    }

    /// Always computed in f32 (phases of large timesteps need it); the caller casts.
    pub fn forward(&self, timesteps: Tensor<1>) -> Tensor<2> {
        let device = timesteps.device();
        let freqs = self.frequencies();
        let half = freqs.len();
        let freqs: Tensor<2> = Tensor::from_data(TensorData::new(freqs, [1, half]), (&device, DType::F32));
        let phases = timesteps.cast(DType::F32).unsqueeze_dim::<2>(1) * freqs;
        let (sin, cos) = (phases.clone().sin(), phases.cos());
        let mut emb =
            if self.flip_sin_to_cos { Tensor::cat(vec![cos, sin], 1) } else { Tensor::cat(vec![sin, cos], 1) };
        if self.num_channels % 2 == 1 {
            let b = emb.dims()[0];
            emb = Tensor::cat(vec![emb, Tensor::zeros([b, 1], (&device, DType::F32))], 1);
        }
        emb
    }
}

/// `TimestepEmbedding`: linear → SiLU → linear, with an optional bias-free `cond_proj` adding
/// an extra condition (the guidance-scale embedding of LCM/DMD-distilled models) to its input.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    cond_proj: Option<Linear>,
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(
        vb: &VarBuilder,
        in_channels: usize,
        time_embed_dim: usize,
        cond_proj_dim: Option<usize>,
    ) -> Result<Self> {
        let cond_proj = match cond_proj_dim {
            Some(d) => Some(Linear::load(&vb.pp("cond_proj"), d, in_channels, false)?),
            None => None,
        };
        Ok(Self {
            cond_proj,
            linear_1: Linear::load(&vb.pp("linear_1"), in_channels, time_embed_dim, true)?,
            linear_2: Linear::load(&vb.pp("linear_2"), time_embed_dim, time_embed_dim, true)?,
        })
    }

    /// Width of the optional condition input (`time_cond_proj_dim`).
    pub fn cond_dim(&self) -> Option<usize> {
        self.cond_proj.as_ref().map(|p| p.d_in())
    }

    /// Without a condition a `cond_proj` model runs unconditioned, as in diffusers; a model
    /// without `cond_proj` ignores one (diffusers would raise).
    pub fn forward(&self, sample: Tensor<2>, condition: Option<Tensor<2>>) -> Tensor<2> {
        let sample = match (&self.cond_proj, condition) {
            (Some(proj), Some(c)) => sample + proj.forward(c),
            _ => sample,
        };
        self.linear_2.forward(silu(self.linear_1.forward(sample)))
    }
}

/// diffusers' `get_guidance_scale_embedding` (LCM pipelines): sinusoids of `w · 1000` with
/// frequencies `exp(-ln(10000) · i / (half - 1))`, `[sin, cos]` order, zero-padded to an odd
/// `dim`. Computed on the host in f32 step by step as torch does; sines in f64, then rounded.
pub fn guidance_scale_embedding(w: &[f32], dim: usize, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let freqs: Vec<f32> = (0..half).map(|i| ((i as f32 * -step) as f64).exp() as f32).collect();
    let mut data = Vec::with_capacity(w.len() * dim);
    for &w in w {
        let phases: Vec<f64> = freqs.iter().map(|&f| ((w * 1000.0) * f) as f64).collect();
        data.extend(phases.iter().map(|p| p.sin() as f32));
        data.extend(phases.iter().map(|p| p.cos() as f32));
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(data, [w.len(), dim]), (device, DType::F32))
}
