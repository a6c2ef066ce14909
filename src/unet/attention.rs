//! diffusers `attention.BasicTransformerBlock` / `FeedForward` (GEGLU) and
//! `transformers/transformer_2d.Transformer2DModel` (continuous input), the spatial transformer
//! of `CrossAttn*Block2D` and the mid block. Their `Attention` is [`crate::attention`]'s.

use burn::tensor::Tensor;
use burn::tensor::activation::gelu;

use crate::attention::{Attention, EncoderStates};
use crate::error::Result;
use crate::limits::DeviceLimits;
use crate::nn::{Conv2d, Conv2dConfig, GroupNorm, LayerNorm, Linear, by_token_blocks};
use crate::weights::VarBuilder;

/// `FeedForward(activation_fn="geglu")`: `net.0` is GEGLU (one projection to twice the inner
/// width, split into value and gate, `value · gelu(gate)`), `net.2` the output linear.
#[derive(Debug, Clone)]
pub struct FeedForward {
    geglu_proj: Linear,
    out: Linear,
    /// GEGLU's inner activation runs in token blocks where it would outgrow a binding.
    limits: DeviceLimits,
}

impl FeedForward {
    pub fn load(vb: &VarBuilder, dim: usize, mult: usize) -> Result<Self> {
        let inner = dim * mult;
        Ok(Self {
            geglu_proj: Linear::load(&vb.pp("net").pp(0).pp("proj"), dim, inner * 2, true)?,
            out: Linear::load(&vb.pp("net").pp(2), inner, dim, true)?,
            limits: vb.limits(),
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let widest = self.geglu_proj.d_out();
        by_token_blocks(x, widest, self.limits, |x| {
            let mut halves = self.geglu_proj.forward(x).chunk(2, 2);
            let gate = halves.pop().unwrap();
            let value = halves.pop().unwrap();
            self.out.forward(value * gelu(gate))
        })
    }
}

/// `BasicTransformerBlock` (pre-LayerNorm): self-attention (or, with `only_cross_attention`,
/// a first cross-attention), cross-attention, GEGLU feed-forward, each residual.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

/// What one spatial transformer needs from the config.
#[derive(Debug, Clone, Copy)]
pub struct TransformerConfig {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub cross_attention_dim: usize,
    pub norm_groups: usize,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
    pub upcast_attention: bool,
}

impl BasicTransformerBlock {
    pub fn load(vb: &VarBuilder, c: &TransformerConfig) -> Result<Self> {
        let (dim, heads) = (c.channels, c.heads);
        let dim_head = dim / heads;
        let attn1_context = c.only_cross_attention.then_some(c.cross_attention_dim);
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::load(&vb.pp("attn1"), dim, attn1_context, heads, dim_head, c.upcast_attention)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::load(
                &vb.pp("attn2"),
                dim,
                Some(c.cross_attention_dim),
                heads,
                dim_head,
                c.upcast_attention,
            )?,
            norm3: LayerNorm::load(&vb.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::load(&vb.pp("ff"), dim, 4)?,
        })
    }

    pub fn forward(&self, x: Tensor<3>, context: &EncoderStates) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), context) + x;
        let x = self.attn2.forward(self.norm2.forward(x.clone()), context) + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// `Transformer2DModel` on a feature map: GroupNorm (eps 1e-6) → `proj_in` (1×1 conv, or a
/// linear after flattening when `use_linear_projection`) → transformer blocks over the h·w
/// tokens → `proj_out` → residual.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

/// SD 1.x uses 1×1 convs; SD 2.x and most distilled models use linears (same maths, different
/// stored shape and place in the flatten order).
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn load(vb: &VarBuilder, d_in: usize, d_out: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Self::Linear(Linear::load(vb, d_in, d_out, true)?)
        } else {
            Self::Conv(Conv2d::load(vb, d_in, d_out, Conv2dConfig::same(1))?)
        })
    }
}

impl Transformer2DModel {
    pub fn load(vb: &VarBuilder, c: &TransformerConfig) -> Result<Self> {
        let dim = c.channels;
        let transformer_blocks = (0..c.layers)
            .map(|i| BasicTransformerBlock::load(&vb.pp("transformer_blocks").pp(i), c))
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: GroupNorm::load(&vb.pp("norm"), c.norm_groups, dim, 1e-6)?,
            proj_in: Projection::load(&vb.pp("proj_in"), dim, dim, c.use_linear_projection)?,
            transformer_blocks,
            proj_out: Projection::load(&vb.pp("proj_out"), dim, dim, c.use_linear_projection)?,
        })
    }

    /// `x`: `[b, c, h, w]`; `context`: the encoder hidden states.
    pub fn forward(&self, x: Tensor<4>, context: &EncoderStates) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let x = self.norm.forward(x);
        let to_tokens = |x: Tensor<4>| -> Tensor<3> { x.permute([0, 2, 3, 1]).reshape([b, h * w, c]) };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(x)),
            Projection::Linear(linear) => linear.forward(to_tokens(x)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context);
        }
        let to_map = |t: Tensor<3>| -> Tensor<4> { t.reshape([b, h, w, c]).permute([0, 3, 1, 2]) };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_map(tokens)),
            Projection::Linear(linear) => to_map(linear.forward(tokens)),
        };
        out + residual
    }
}
