//! The handful of layers the models are made of, loaded from stored tensors.
//!
//! Plain structs over burn's functional ops rather than `burn::nn` modules: those initialise
//! random parameters first (wasteful for a 0.4B model on a GPU) and keep PyTorch-incompatible
//! layouts; here every field is created once, from the checkpoint, under its upstream key.

use burn::tensor::module::{attention, conv2d, embedding, layer_norm, linear};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use burn::tensor::{DType, Int, Tensor};

use crate::error::Result;
use crate::weights::VarBuilder;

/// `torch.nn.Linear`. The weight is kept as `[in, out]` (burn's layout), transposed once at load.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor<2>,
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    pub fn load(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weight = vb.get("weight", [d_out, d_in])?.transpose();
        let bias = if bias { Some(vb.get("bias", [d_out])?) } else { None };
        Ok(Self { weight, bias })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.clone(), self.bias.clone())
    }
}

/// `torch.nn.Conv2d` with symmetric padding.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Tensor<4>,
    pub bias: Option<Tensor<1>>,
    pub stride: usize,
    pub padding: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Conv2dConfig {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

impl Conv2dConfig {
    /// A "same" convolution: k×k, stride 1, padding k/2, with bias.
    pub fn same(kernel: usize) -> Self {
        Self { kernel, stride: 1, padding: kernel / 2, bias: true }
    }
}

impl Conv2d {
    pub fn load(vb: &VarBuilder, c_in: usize, c_out: usize, cfg: Conv2dConfig) -> Result<Self> {
        let k = cfg.kernel;
        let weight = vb.get("weight", [c_out, c_in, k, k])?;
        let bias = if cfg.bias { Some(vb.get("bias", [c_out])?) } else { None };
        Ok(Self { weight, bias, stride: cfg.stride, padding: cfg.padding })
    }

    /// Computed in f32 whatever the weights' dtype: burn's GPU direct convolution accumulates
    /// in the element type, and a 3×3×1280 sum in f16 loses several bits (measured on the
    /// wgpu backend: ~5× the error of f32 accumulation). Weights stay stored in f16; only this
    /// call's copy is widened.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        let f32 = |t: &Tensor<1>| t.clone().cast(DType::F32);
        in_f32(x, |x| conv2d(x, self.weight.clone().cast(DType::F32), self.bias.as_ref().map(f32), options))
    }
}

/// `torch.nn.GroupNorm` over NCHW (or N, C, L) inputs.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn load(vb: &VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get("weight", [channels])?, bias: vb.get("bias", [channels])?, groups, eps })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        in_f32(x, |x| self.forward_f32(x))
    }

    fn forward_f32<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (n, c) = (dims[0], dims[1]);
        let grouped: Tensor<3> = x.reshape([n as i64, self.groups as i64, -1]);
        // Biased variance, as PyTorch; mean of squares of the centred values keeps f32 error low.
        let mean = grouped.clone().mean_dim(2);
        let centred = grouped - mean;
        let var = centred.clone().square().mean_dim(2);
        let normed = centred / (var + self.eps).sqrt();
        let mut affine_shape = [1usize; D];
        affine_shape[1] = c;
        let normed: Tensor<D> = normed.reshape(dims);
        let f32 = |t: &Tensor<1>| t.clone().cast(DType::F32).reshape(affine_shape);
        normed * f32(&self.weight) + f32(&self.bias)
    }
}

/// Runs `f` on `x` in f32 and casts the result back to `x`'s dtype (a no-op for f32 models).
/// Normalisation statistics over thousands of values lose too much precision, or overflow, in
/// f16; PyTorch's half-precision norm kernels accumulate in f32 for the same reason.
pub fn in_f32<const D: usize>(x: Tensor<D>, f: impl FnOnce(Tensor<D>) -> Tensor<D>) -> Tensor<D> {
    in_dtype(x, DType::F32, f)
}

/// Runs `f` on `x` cast to `dtype` and casts the result back to `x`'s dtype: how a model whose
/// weights are f16 is called with (and answers in) the caller's f32.
pub fn in_dtype<const D: usize>(x: Tensor<D>, dtype: DType, f: impl FnOnce(Tensor<D>) -> Tensor<D>) -> Tensor<D> {
    let outer = x.dtype();
    if outer == dtype {
        return f(x);
    }
    f(x.cast(dtype)).cast(outer)
}

/// `torch.nn.LayerNorm` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor<1>,
    pub bias: Option<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let bias = if vb.contains("bias") { Some(vb.get("bias", [dim])?) } else { None };
        Ok(Self { weight: vb.get("weight", [dim])?, bias, eps })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let f32 = |t: &Tensor<1>| t.clone().cast(DType::F32);
        in_f32(x, |x| layer_norm(x, f32(&self.weight), self.bias.as_ref().map(f32), self.eps))
    }
}

/// `torch.nn.Embedding`.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub weight: Tensor<2>,
}

impl Embedding {
    pub fn load(vb: &VarBuilder, count: usize, dim: usize) -> Result<Self> {
        Ok(Self { weight: vb.get("weight", [count, dim])? })
    }

    /// `[batch, seq]` ids → `[batch, seq, dim]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        embedding(self.weight.clone(), ids)
    }
}

/// Upper bound on the elements of one attention score block. WebGPU's default
/// `maxStorageBufferBindingSize` is 128 MiB; one f32 score matrix of a single head at a 64×64
/// latent (4096² tokens) is already 64 MiB, so scores are computed in query blocks of at most
/// 8M elements (32 MiB in f32). The same code path runs natively and in the browser.
pub const ATTENTION_SCORE_BUDGET: usize = 8 << 20;

/// softmax(q kᵀ · scale) v over `[batch, heads, tokens, head_dim]`, computed in query blocks so
/// that no score tensor exceeds [`ATTENTION_SCORE_BUDGET`] elements.
pub fn scaled_dot_product_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let [b, h, n_q, _] = q.dims();
    let n_kv = k.dims()[2];
    let rows = (ATTENTION_SCORE_BUDGET / (b * h * n_kv).max(1)).clamp(1, n_q);
    let flash = has_flash_attention(&q.device());
    let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: false };
    let block = |q: Tensor<4>| {
        if flash {
            attention(q, k.clone(), v.clone(), None, None, options)
        } else {
            attention_unfused(q, k.clone(), v.clone(), scale)
        }
    };
    if rows >= n_q {
        return block(q);
    }
    let outs: Vec<Tensor<4>> = (0..n_q)
        .step_by(rows)
        .map(|start| block(q.clone().slice([0..b, 0..h, start..(start + rows).min(n_q)])))
        .collect();
    Tensor::cat(outs, 2)
}

/// Whether burn's `attention` op is one fused (flash, no score tensor) kernel on `device`: on the
/// CPU backend. The cubecl (GPU) backends run it, without autotune, as their matmul → softmax →
/// matmul fallback *inside* one fusion op, so none of its ~12 kernels fuse with each other
/// (burn-cubecl `kernel/attention/base.rs`: `AttentionStrategy::default()` is `Fallback`; its
/// flash kernels are reached only through autotune, and never with an explicit scale).
fn has_flash_attention(device: &burn::tensor::Device) -> bool {
    #[cfg(feature = "cpu")]
    return *device == burn::tensor::Device::flex();
    #[cfg(not(feature = "cpu"))]
    {
        let _ = device;
        false
    }
}

/// softmax(q kᵀ · scale) v as plain tensor ops, which burn's fusion can merge: the scale into the
/// score matmul, max/sum reductions with their element-wise neighbours. No masks here, so a
/// row is never all -inf and the max shift alone keeps the softmax finite.
fn attention_unfused(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let shifted = scores.clone() - scores.max_dim(3);
    let e = shifted.exp();
    let probs = e.clone() / e.sum_dim(3);
    probs.matmul(v)
}
