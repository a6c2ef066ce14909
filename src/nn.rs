//! The handful of layers the models are made of, loaded from stored tensors.
//!
//! Plain structs over burn's functional ops rather than `burn::nn` modules: those initialise
//! random parameters first (wasteful for a 0.4B model on a GPU) and keep PyTorch-incompatible
//! layouts; here every field is created once, from the checkpoint, under its upstream key.

use burn::tensor::activation::silu;
use burn::tensor::module::{attention, conv2d, embedding, layer_norm, linear};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use burn::tensor::{DType, Int, Tensor};

use crate::error::Result;
use crate::limits::{self, DeviceLimits};
use crate::weights::VarBuilder;

/// `torch.nn.Linear`. The weight is kept as `[in, out]` (burn's layout), transposed once at
/// load, in pieces of output columns where the whole would not fit one binding on the device
/// ([`crate::limits`]); the pieces' outputs are concatenated.
#[derive(Debug, Clone)]
pub struct Linear {
    pieces: Vec<(Tensor<2>, Option<Tensor<1>>)>,
    d_in: usize,
    d_out: usize,
    /// Outputs over the binding limit are computed in blocks of tokens.
    limits: DeviceLimits,
}

impl Linear {
    pub fn load(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weights = vb.get_rows("weight", [d_out, d_in])?;
        let biases = split_like(
            if bias {
                Some(vb.get("bias", [d_out])?)
            } else {
                None
            },
            &weights,
        );
        let pieces = weights
            .into_iter()
            .map(|w| w.transpose())
            .zip(biases)
            .collect();
        Ok(Self { pieces, d_in, d_out, limits: vb.limits() })
    }

    /// A linear of one `[in, out]` weight piece without bias.
    fn unbiased(weight: Tensor<2>, limits: DeviceLimits) -> Self {
        let [d_in, d_out] = weight.dims();
        Self { pieces: vec![(weight, None)], d_in, d_out, limits }
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    pub fn d_out(&self) -> usize {
        self.d_out
    }

    pub fn dtype(&self) -> DType {
        self.pieces[0].0.dtype()
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut dims = x.dims();
        dims[D - 1] = self.d_out;
        let rows = dims[..D - 1].iter().product::<usize>();
        let limits = self.limits;
        if (rows * self.d_out) as u64 * 4 <= limits.max_tensor_bytes() {
            return self.forward_whole(x);
        }
        // The output would outgrow a binding: blocks of rows (tokens), each within it.
        let flat: Tensor<2> = x.reshape([rows as i64, self.d_in as i64]);
        let per = (limits.max_elems(4) / self.d_out.max(self.d_in)).max(1);
        let outs: Vec<Tensor<2>> = (0..rows)
            .step_by(per)
            .map(|s| self.forward_whole(flat.clone().slice(s..(s + per).min(rows))))
            .collect();
        Tensor::cat(outs, 0).reshape(dims)
    }

    /// `x · W` and the bias apart, for a caller that adds the bias inside its own kernel; with
    /// several pieces (a weight over the binding limit), the whole output and no bias.
    pub fn forward_unbiased(&self, x: Tensor<2>) -> (Tensor<2>, Option<Tensor<1>>) {
        match &self.pieces[..] {
            [(w, b)] => (x.matmul(w.clone()), b.clone()),
            _ => (self.forward(x), None),
        }
    }

    fn forward_whole<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let outs: Vec<Tensor<D>> = self
            .pieces
            .iter()
            .map(|(w, b)| linear(x.clone(), w.clone(), b.clone()))
            .collect();
        limits::join_pieces(outs, D - 1)
    }
}

/// Linears that read the same input (an attention's `to_q`/`to_k`/`to_v`, or the
/// `to_k`/`to_v` of a cross-attention), their `[in, out]` weights stacked at load as
/// `[k, in, out]`: one batched matmul `[1, rows, in] · [k, in, out]` computes all k outputs,
/// two or three dispatches fewer per attention on the GPU than one matmul each, and each
/// output is a slice of it (read in place by the flash kernel where the slice's offset is
/// aligned). Kept apart where they have biases, a weight is in pieces or the stack would not
/// fit one binding.
#[derive(Debug, Clone)]
pub enum StackedLinear {
    Stacked { weight: Tensor<3>, limits: DeviceLimits },
    Apart(Vec<Linear>),
}

impl StackedLinear {
    /// The linears at `vbs` (each `.weight` `[d_out, d_in]`), stacked where they fit and have no
    /// bias; apart with `bias` (the VAE's attention: three dispatches once per decode).
    pub fn load(vbs: &[VarBuilder], d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let parts = vbs.iter().map(|vb| Linear::load(vb, d_in, d_out, bias)).collect::<Result<Vec<_>>>()?;
        let Some(vb) = vbs.first() else { return Ok(Self::Apart(parts)) };
        let limits = vb.limits();
        let whole = parts.iter().all(|p| p.pieces.len() == 1);
        if bias || !whole || parts.len() * d_in * d_out > limits.max_elems(4) {
            return Ok(Self::Apart(parts));
        }
        Ok(Self::Stacked { weight: Tensor::stack(parts.into_iter().map(|p| p.pieces[0].0.clone()).collect(), 0), limits })
    }

    /// `x` (`[b, n, d_in]`) through each linear: `[b, n, d_out]` per linear, in load order.
    pub fn forward(&self, x: Tensor<3>) -> Vec<Tensor<3>> {
        let (parts, limits) = match self {
            Self::Apart(parts) => return parts.iter().map(|p| p.forward(x.clone())).collect(),
            Self::Stacked { weight, limits } => (weight, *limits),
        };
        let [k, d_in, d_out] = parts.dims();
        let [b, n, _] = x.dims();
        let stacked_bytes = (k * b * n * d_out) as u64 * 4;
        if stacked_bytes > limits.max_tensor_bytes() {
            // The stacked output would outgrow a binding: each linear alone (in token blocks).
            let one = |i: usize| Linear::unbiased(parts.clone().slice(i..i + 1).reshape([d_in, d_out]), limits);
            return (0..k).map(|i| one(i).forward(x.clone())).collect();
        }
        let out = x.reshape([1, b * n, d_in]).matmul(parts.clone());
        (0..k).map(|i| out.clone().slice(i..i + 1).reshape([b, n, d_out])).collect()
    }
}

/// `bias` cut into the row counts of `pieces` (a no-op for one piece); `None`s without a bias.
fn split_like<const D: usize>(
    bias: Option<Tensor<1>>,
    pieces: &[Tensor<D>],
) -> Vec<Option<Tensor<1>>> {
    let Some(bias) = bias else {
        return vec![None; pieces.len()];
    };
    if pieces.len() == 1 {
        return vec![Some(bias)];
    }
    let mut start = 0;
    pieces
        .iter()
        .map(|p| {
            let n = p.dims()[0];
            start += n;
            Some(bias.clone().slice(start - n..start))
        })
        .collect()
}

/// `torch.nn.Conv2d` with symmetric padding. The weight is in pieces of output channels where
/// the whole (in f32, see `forward`) would not fit one binding on the device.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pieces: Vec<(Tensor<4>, Option<Tensor<1>>)>,
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
        Self {
            kernel,
            stride: 1,
            padding: kernel / 2,
            bias: true,
        }
    }
}

impl Conv2d {
    pub fn load(vb: &VarBuilder, c_in: usize, c_out: usize, cfg: Conv2dConfig) -> Result<Self> {
        let k = cfg.kernel;
        let weights = vb.get_rows("weight", [c_out, c_in, k, k])?;
        let biases = split_like(
            if cfg.bias {
                Some(vb.get("bias", [c_out])?)
            } else {
                None
            },
            &weights,
        );
        // On the GPU the weights are kept channels-last, the layout burn's direct convolution
        // reads: NCHW weights are copied into it on every call otherwise. (A 1×1 weight is both.)
        #[cfg(feature = "gpu-kernels")]
        let weights: Vec<Tensor<4>> = weights
            .into_iter()
            .map(|w| if k > 1 && crate::gpu::on_gpu(&w.device()) { crate::gpu::channels_last(w) } else { w })
            .collect();
        Ok(Self {
            pieces: weights.into_iter().zip(biases).collect(),
            stride: cfg.stride,
            padding: cfg.padding,
        })
    }

    pub fn dtype(&self) -> DType {
        self.pieces[0].0.dtype()
    }

    pub fn out_channels(&self) -> usize {
        self.pieces.iter().map(|(w, _)| w.dims()[0]).sum()
    }

    /// Computed in f32 whatever the weights' dtype: burn's GPU direct convolution accumulates
    /// in the element type, and a 3×3×1280 sum in f16 loses several bits (measured on the
    /// wgpu backend: ~5× the error of f32 accumulation). Weights stay stored in f16; only this
    /// call's copy is widened.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        let f32 = |t: &Tensor<1>| t.clone().cast(DType::F32);
        in_f32(x, |x| {
            let outs: Vec<Tensor<4>> = self
                .pieces
                .iter()
                .map(|(w, b)| conv2d(x.clone(), w.clone().cast(DType::F32), b.as_ref().map(f32), options.clone()))
                .collect();
            limits::join_pieces(outs, 1)
        })
    }
}

/// An activation as consecutive channel chunks, for layers whose whole activation would
/// outgrow the device's largest binding (the KL decoder at 512²: 256 channels × 512² in f32 is
/// 256 MiB). Each chunk holds whole norm groups of `unit` channels, so a GroupNorm is exact per
/// chunk; a convolution sums its per-chunk partial results.
#[derive(Debug, Clone)]
pub struct ChannelChunks {
    pub chunks: Vec<Tensor<4>>,
}

impl ChannelChunks {
    /// Channel ranges for `channels` at `pixels` per channel: multiples of `unit` channels, each
    /// within `max_bytes` in f32 (at least one unit).
    pub fn ranges(channels: usize, pixels: usize, unit: usize, max_bytes: u64) -> Vec<(usize, usize)> {
        let unit = unit.max(1);
        let per = ((max_bytes / (pixels as u64 * 4).max(1)) as usize / unit).max(1) * unit;
        (0..channels).step_by(per).map(|c| (c, (c + per).min(channels))).collect()
    }

    pub fn channels(&self) -> usize {
        self.chunks.iter().map(|t| t.dims()[1]).sum()
    }

    fn bounds(&self) -> Vec<(usize, usize)> {
        let mut start = 0;
        self.chunks
            .iter()
            .map(|t| {
                start += t.dims()[1];
                (start - t.dims()[1], start)
            })
            .collect()
    }

    /// The same values cut at `ranges` (slices and small concatenations of the current chunks).
    pub fn rechunk(self, ranges: &[(usize, usize)]) -> Self {
        let have = self.bounds();
        if have == ranges {
            return self;
        }
        let chunks = ranges
            .iter()
            .map(|&(a, b)| {
                let parts: Vec<Tensor<4>> = have
                    .iter()
                    .zip(&self.chunks)
                    .filter(|((s, e), _)| *s < b && *e > a)
                    .map(|(&(s, e), t)| {
                        let [n, _, h, w] = t.dims();
                        t.clone().slice([0..n, a.max(s) - s..b.min(e) - s, 0..h, 0..w])
                    })
                    .collect();
                limits::join_pieces(parts, 1)
            })
            .collect();
        Self { chunks }
    }

    pub fn map(self, f: impl FnMut(Tensor<4>) -> Tensor<4>) -> Self {
        Self { chunks: self.chunks.into_iter().map(f).collect() }
    }

    /// Chunk-wise sum of two activations cut alike.
    pub fn plus(self, other: Self) -> Self {
        Self { chunks: self.chunks.into_iter().zip(other.chunks).map(|(a, b)| a + b).collect() }
    }
}

impl Conv2d {
    /// [`Self::forward`] over channel chunks, giving chunks cut at `out` (output channel
    /// ranges): each output chunk is the sum over input chunks of the convolution with the
    /// matching weight block. Only the summation order differs from the whole convolution.
    pub fn forward_chunks(&self, x: &ChannelChunks, out: &[(usize, usize)]) -> ChannelChunks {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        let weight = self.whole_weight();
        let bias = self.whole_bias();
        let inputs = x.bounds();
        let chunks = out
            .iter()
            .map(|&(o0, o1)| {
                let [_, _, k, _] = weight.dims();
                let mut sum: Option<Tensor<4>> = None;
                for (&(i0, i1), x) in inputs.iter().zip(&x.chunks) {
                    let w = weight.clone().slice([o0..o1, i0..i1, 0..k, 0..k]);
                    let part = conv2d(x.clone().cast(DType::F32), w, None, options.clone());
                    sum = Some(match sum {
                        Some(s) => s + part,
                        None => part,
                    });
                }
                let sum = sum.expect("at least one input chunk");
                let sum = match &bias {
                    Some(b) => sum + b.clone().slice(o0..o1).reshape([1, o1 - o0, 1, 1]),
                    None => sum,
                };
                sum.cast(x.chunks[0].dtype())
            })
            .collect();
        ChannelChunks { chunks }
    }

    /// The weight in f32 as one tensor (the chunked path slices it per block).
    fn whole_weight(&self) -> Tensor<4> {
        limits::join_pieces(self.pieces.iter().map(|(w, _)| w.clone().cast(DType::F32)).collect(), 0)
    }

    fn whole_bias(&self) -> Option<Tensor<1>> {
        let parts: Option<Vec<Tensor<1>>> = self.pieces.iter().map(|(_, b)| b.clone().map(|b| b.cast(DType::F32))).collect();
        parts.map(|p| limits::join_pieces(p, 0))
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
        self.forward_act(x, false)
    }

    /// `silu(self.forward(x))`: on the GPU the activation is part of the normalising kernel.
    pub fn forward_silu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_act(x, true)
    }

    /// `silu(self.forward(x + (add + add_bias)[n, c]))` for `add`: `[N, C]`: a ResNet's time
    /// embedding, added inside the normalising kernels on the GPU.
    pub fn forward_silu_add(&self, x: Tensor<4>, add: Tensor<2>, add_bias: Option<&Tensor<1>>) -> Tensor<4> {
        #[cfg(feature = "gpu-kernels")]
        if crate::gpu::on_gpu(&x.device()) {
            let zeros;
            let bias = match add_bias {
                Some(b) => b,
                None => {
                    zeros = self.weight.zeros_like();
                    &zeros
                }
            };
            return crate::gpu::group_norm(x, &self.weight, &self.bias, Some((add, bias)), self.groups, self.eps, true);
        }
        let dtype = add.dtype();
        let add = match add_bias {
            Some(b) => add + b.clone().cast(dtype).unsqueeze(),
            None => add,
        };
        let dtype = x.dtype();
        self.forward_silu(x + add.cast(dtype).unsqueeze_dims::<4>(&[2, 3]))
    }

    fn forward_act<const D: usize>(&self, x: Tensor<D>, act: bool) -> Tensor<D> {
        #[cfg(feature = "gpu-kernels")]
        if crate::gpu::on_gpu(&x.device()) {
            // Two dispatches (f32 statistics, then normalise + affine + SiLU in x's dtype).
            return crate::gpu::group_norm(x, &self.weight, &self.bias, None, self.groups, self.eps, act);
        }
        let y = in_f32(x, |x| self.forward_f32(x));
        if act { silu(y) } else { y }
    }

    /// Channels per group: chunks of an activation must hold whole groups.
    pub fn group_width(&self) -> usize {
        self.weight.dims()[0] / self.groups
    }

    /// [`Self::forward`] (with SiLU when `act`) chunk by chunk: exact, as each chunk holds whole
    /// groups (cut at multiples of [`Self::group_width`]).
    pub fn forward_chunks(&self, x: ChannelChunks, act: bool) -> ChannelChunks {
        let unit = self.group_width();
        let mut start = 0;
        x.map(|t| {
            let c = t.dims()[1];
            let part = Self {
                weight: self.weight.clone().slice(start..start + c),
                bias: self.bias.clone().slice(start..start + c),
                groups: c / unit,
                eps: self.eps,
            };
            start += c;
            part.forward_act(t, act)
        })
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
        #[cfg(feature = "gpu-kernels")]
        if crate::gpu::on_gpu(&x.device()) {
            // One dispatch; statistics in f32 whatever x's dtype.
            return crate::gpu::layer_norm(x, &self.weight, self.bias.as_ref(), self.eps);
        }
        let f32 = |t: &Tensor<1>| t.clone().cast(DType::F32);
        in_f32(x, |x| layer_norm(x, f32(&self.weight), self.bias.as_ref().map(f32), self.eps))
    }
}

/// `torch.nn.Embedding`. The table is in pieces of rows where the whole would not fit one
/// binding on the device (CLIP-L's 49408×768 table is 152 MB in f32; WebGPU's default binding
/// limit is 128 MiB).
#[derive(Debug, Clone)]
pub struct Embedding {
    pieces: Vec<Tensor<2>>,
}

impl Embedding {
    pub fn load(vb: &VarBuilder, count: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            pieces: vb.get_rows("weight", [count, dim])?,
        })
    }

    /// `[batch, seq]` ids → `[batch, seq, dim]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        if let [table] = &self.pieces[..] {
            return embedding(table.clone(), ids);
        }
        // Each id is in exactly one piece: look it up there (clamped elsewhere) and keep it
        // with a 0/1 mask, so the sum over pieces is the row itself, bit for bit.
        let mut start = 0i64;
        let mut out: Option<Tensor<3>> = None;
        for table in &self.pieces {
            let rows = table.dims()[0] as i64;
            let local = ids.clone() - start;
            let inside = local
                .clone()
                .greater_equal_elem(0)
                .bool_and(local.clone().lower_elem(rows));
            let found = embedding(table.clone(), local.clamp(0, rows - 1));
            let kept = found.clone() * inside.float().cast(found.dtype()).unsqueeze_dim::<3>(2);
            out = Some(match out {
                Some(sum) => sum + kept,
                None => kept,
            });
            start += rows;
        }
        out.expect("at least one piece")
    }
}

/// Runs `f` over `x` (`[b, n, c]`) in blocks of rows (of the b·n tokens) so that no
/// intermediate of `widest` values per row exceeds the device's largest binding (`limits`); in
/// one call where it fits. For per-token work (a feed-forward) whose inner width outgrows the limit at
/// large images (GEGLU at 768²: 2 × 9216 tokens × 2560 values is 189 MB in f32).
pub fn by_token_blocks(
    x: Tensor<3>,
    widest: usize,
    limits: DeviceLimits,
    f: impl Fn(Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let [b, n, _] = x.dims();
    let per = limits.max_elems(4) / widest.max(1);
    if per >= b * n {
        return f(x);
    }
    let c = x.dims()[2];
    let flat: Tensor<3> = x.reshape([1, b * n, c]);
    let per = per.max(1);
    let outs: Vec<Tensor<3>> = (0..b * n)
        .step_by(per)
        .map(|s| f(flat.clone().slice([0..1, s..(s + per).min(b * n)])))
        .collect();
    let out = Tensor::cat(outs, 1);
    let c_out = out.dims()[2];
    out.reshape([b, n, c_out])
}

/// Upper bound on the elements of one attention score block on the CPU: 8M (32 MiB in f32), or
/// less where the device's largest binding is smaller still. One f32 score matrix of a single
/// head at a 64×64 latent (4096² tokens) is already 64 MiB, so scores are computed in query
/// blocks there.
pub const ATTENTION_SCORE_BUDGET: usize = 8 << 20;

/// softmax(q kᵀ · scale) v over `[batch, heads, tokens, head_dim]`: one flash kernel on the GPU
/// ([`crate::gpu::flash_attention`]), burn-flex's own attention in query blocks of at most
/// [`ATTENTION_SCORE_BUDGET`] scores (and within `limits`) on the CPU.
pub fn scaled_dot_product_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, limits: DeviceLimits) -> Tensor<4> {
    // The GPU kernel keeps no score tensor, so it needs no query blocks.
    #[cfg(feature = "gpu-kernels")]
    if crate::gpu::on_gpu(&q.device()) {
        return crate::gpu::flash_attention(q, k, v, scale);
    }
    let [b, h, n_q, _] = q.dims();
    let n_kv = k.dims()[2];
    let budget = ATTENTION_SCORE_BUDGET.min(limits.max_elems(4));
    let rows = (budget / (b * h * n_kv).max(1)).clamp(1, n_q);
    let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: false };
    let block = |q: Tensor<4>| attention(q, k.clone(), v.clone(), None, None, options);
    if rows >= n_q {
        return block(q);
    }
    let outs: Vec<Tensor<4>> = (0..n_q)
        .step_by(rows)
        .map(|start| block(q.clone().slice([0..b, 0..h, start..(start + rows).min(n_q)])))
        .collect();
    Tensor::cat(outs, 2)
}
