//! diffusers `attention_processor.Attention`, `attention.BasicTransformerBlock` / `FeedForward`
//! (GEGLU) and `transformers/transformer_2d.Transformer2DModel` (continuous input), the
//! spatial transformer of `CrossAttn*Block2D` and the mid block.

use std::cell::RefCell;
use std::collections::BTreeMap;

use burn::tensor::activation::gelu;
use burn::tensor::{DType, Tensor};

use crate::error::Result;
use crate::nn::{
    Conv2d, Conv2dConfig, GroupNorm, LayerNorm, Linear, StackedLinear, by_token_blocks,
    scaled_dot_product_attention,
};
use crate::weights::VarBuilder;

/// The encoder hidden states a U-Net attends to (`[b, seq, cross_attention_dim]`, in the
/// U-Net's dtype) and the keys and values each cross-attention projects from them. Those depend
/// on the prompt alone, so within one generation (one `EncoderStates` for all its steps) each is
/// computed at the first step and reused by the next ones: a matmul per cross-attention and step
/// fewer.
#[derive(Debug)]
pub struct EncoderStates {
    states: Tensor<3>,
    /// Per cross-attention (its `to_k` key): `[k, v]`, each `[b, seq, inner]`.
    keys_values: RefCell<BTreeMap<String, [Tensor<3>; 2]>>,
}

impl EncoderStates {
    pub fn new(states: Tensor<3>) -> Self {
        Self { states, keys_values: RefCell::default() }
    }

    /// The keys and values of the cross-attention named `key`: `project`'s, computed once.
    fn keys_values(&self, key: &str, project: impl FnOnce(Tensor<3>) -> [Tensor<3>; 2]) -> [Tensor<3>; 2] {
        if let Some(kv) = self.keys_values.borrow().get(key) {
            return kv.clone();
        }
        let kv = project(self.states.clone());
        self.keys_values.borrow_mut().insert(key.to_string(), kv.clone());
        kv
    }
}

/// Multi-head attention; cross-attention when `cross_attention_dim` is given (keys and values
/// then come from the encoder states). Projections without bias, output with bias, as SD. The
/// projections that read the same input run as one stacked matmul ([`StackedLinear`]):
/// `to_q`/`to_k`/`to_v` of a self-attention, `to_k`/`to_v` of a cross-attention.
#[derive(Debug, Clone)]
pub struct Attention {
    projections: Projections,
    to_out: Linear,
    heads: usize,
    upcast: bool,
}

/// The state dict's `to_q`, `to_k`, `to_v`, grouped by the input they read.
#[derive(Debug, Clone)]
enum Projections {
    /// `to_q`, `to_k`, `to_v` over the hidden states.
    SelfAttention { qkv: StackedLinear },
    /// `to_q` over the hidden states, `to_k`, `to_v` over the encoder states; `key` (the
    /// state-dict key of `to_k`) names its keys and values in [`EncoderStates`].
    Cross { to_q: Linear, kv: StackedLinear, key: String },
}

impl Attention {
    pub fn load(
        vb: &VarBuilder,
        query_dim: usize,
        cross_attention_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
        upcast: bool,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let projections = match cross_attention_dim {
            None => Projections::SelfAttention {
                qkv: StackedLinear::load(&[vb.pp("to_q"), vb.pp("to_k"), vb.pp("to_v")], query_dim, inner)?,
            },
            Some(kv_dim) => Projections::Cross {
                to_q: Linear::load(&vb.pp("to_q"), query_dim, inner, false)?,
                kv: StackedLinear::load(&[vb.pp("to_k"), vb.pp("to_v")], kv_dim, inner)?,
                key: vb.key("to_k"),
            },
        };
        Ok(Self {
            projections,
            to_out: Linear::load(&vb.pp("to_out").pp(0), inner, query_dim, true)?,
            heads,
            upcast,
        })
    }

    /// `[b, n, c]` → `[b, heads, n, c / heads]`.
    fn split_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [b, n, c] = x.dims();
        x.reshape([b, n, self.heads, c / self.heads]).swap_dims(1, 2)
    }

    /// `x`: `[b, n, query_dim]`; `context`: the encoder states for a cross-attention (ignored
    /// by a self-attention).
    pub fn forward(&self, x: Tensor<3>, context: &EncoderStates) -> Tensor<3> {
        let [q, k, v] = match &self.projections {
            Projections::SelfAttention { qkv } => three(qkv.forward(x)),
            Projections::Cross { to_q, kv, key } => {
                let [k, v] = context.keys_values(key, |states| two(kv.forward(states)));
                [to_q.forward(x), k, v]
            }
        }
        .map(|t| self.split_heads(t));
        let [b, h, n, d] = q.dims();
        let scale = (d as f64).powf(-0.5);
        let dtype = q.dtype();
        // `upcast_attention`: scores and softmax in f32 when the weights run in half precision
        // (SD 2.x overflows in f16 otherwise); a no-op for f32.
        let out = if self.upcast && dtype != DType::F32 {
            let f32 = |t: Tensor<4>| t.cast(DType::F32);
            scaled_dot_product_attention(f32(q), f32(k), f32(v), scale).cast(dtype)
        } else {
            scaled_dot_product_attention(q, k, v, scale)
        };
        self.to_out.forward(out.swap_dims(1, 2).reshape([b, n, h * d]))
    }
}

fn two(outs: Vec<Tensor<3>>) -> [Tensor<3>; 2] {
    outs.try_into().expect("two projections")
}

fn three(outs: Vec<Tensor<3>>) -> [Tensor<3>; 3] {
    outs.try_into().expect("three projections")
}

/// `FeedForward(activation_fn="geglu")`: `net.0` is GEGLU (one projection to twice the inner
/// width, split into value and gate, `value · gelu(gate)`), `net.2` the output linear.
#[derive(Debug, Clone)]
pub struct FeedForward {
    geglu_proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn load(vb: &VarBuilder, dim: usize, mult: usize) -> Result<Self> {
        let inner = dim * mult;
        Ok(Self {
            geglu_proj: Linear::load(&vb.pp("net").pp(0).pp("proj"), dim, inner * 2, true)?,
            out: Linear::load(&vb.pp("net").pp(2), inner, dim, true)?,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let widest = self.geglu_proj.d_out();
        by_token_blocks(x, widest, |x| {
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
