//! diffusers `models/attention_processor.py`: `Attention` at model level, as there, serving the
//! U-Net's multi-head self- and cross-attentions and the KL autoencoder's mid-block attention
//! (which diffusers builds `_from_deprecated_attn_block`: one head as wide as the channels, a
//! group norm first, biased projections, a residual).

use std::cell::RefCell;
use std::collections::BTreeMap;

use burn::tensor::{DType, Tensor};

use crate::error::Result;
use crate::limits::DeviceLimits;
use crate::nn::{GroupNorm, Linear, StackedLinear, scaled_dot_product_attention};
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
/// then come from the encoder states). The projections that read the same input run as one
/// stacked matmul where they have no bias ([`StackedLinear`]): `to_q`/`to_k`/`to_v` of a
/// self-attention, `to_k`/`to_v` of a cross-attention.
#[derive(Debug, Clone)]
pub struct Attention {
    /// The spatial form's norm over the feature map ([`Self::spatial`]).
    group_norm: Option<GroupNorm>,
    projections: Projections,
    to_out: Linear,
    heads: usize,
    upcast: bool,
    /// Score blocks stay within the device's largest binding.
    limits: DeviceLimits,
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
    /// The U-Net's: projections without bias, output with bias, as SD.
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
                qkv: StackedLinear::load(&[vb.pp("to_q"), vb.pp("to_k"), vb.pp("to_v")], query_dim, inner, false)?,
            },
            Some(kv_dim) => Projections::Cross {
                to_q: Linear::load(&vb.pp("to_q"), query_dim, inner, false)?,
                kv: StackedLinear::load(&[vb.pp("to_k"), vb.pp("to_v")], kv_dim, inner, false)?,
                key: vb.key("to_k"),
            },
        };
        let to_out = Linear::load(&vb.pp("to_out").pp(0), inner, query_dim, true)?;
        Ok(Self { group_norm: None, projections, to_out, heads, upcast, limits: vb.limits() })
    }

    /// The VAE mid block's spatial self-attention (diffusers' former `AttentionBlock`): a group
    /// norm, one head as wide as the `channels` over all pixels, biased projections.
    pub fn spatial(vb: &VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        let qkv = StackedLinear::load(&[vb.pp("to_q"), vb.pp("to_k"), vb.pp("to_v")], channels, channels, true)?;
        Ok(Self {
            group_norm: Some(GroupNorm::load(&vb.pp("group_norm"), groups, channels, eps)?),
            projections: Projections::SelfAttention { qkv },
            to_out: Linear::load(&vb.pp("to_out").pp(0), channels, channels, true)?,
            heads: 1,
            upcast: false,
            limits: vb.limits(),
        })
    }

    /// `x`: `[b, n, query_dim]`; `context`: the encoder states for a cross-attention (ignored
    /// by a self-attention).
    pub fn forward(&self, x: Tensor<3>, context: &EncoderStates) -> Tensor<3> {
        let qkv = match &self.projections {
            Projections::SelfAttention { qkv } => three(qkv.forward(x)),
            Projections::Cross { to_q, kv, key } => {
                let [k, v] = context.keys_values(key, |states| two(kv.forward(states)));
                [to_q.forward(x), k, v]
            }
        };
        self.attend(qkv)
    }

    /// The spatial form over a feature map `[b, c, h, w]`: group norm, self-attention over the
    /// h·w pixels as tokens, residual.
    pub fn forward_spatial(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let normed = self.group_norm.as_ref().map_or_else(|| x.clone(), |norm| norm.forward(x.clone()));
        let tokens: Tensor<3> = normed.reshape([b, c, h * w]).swap_dims(1, 2);
        // `spatial` builds a self-attention; a cross-attention has no feature map to attend from.
        let Projections::SelfAttention { qkv } = &self.projections else { unreachable!("spatial cross-attention") };
        let out = self.attend(three(qkv.forward(tokens)));
        out.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }

    /// softmax(q kᵀ / √d) v per head over `[b, n, heads·d]` projections, then `to_out`.
    fn attend(&self, qkv: [Tensor<3>; 3]) -> Tensor<3> {
        let [q, k, v] = qkv.map(|t| self.split_heads(t));
        let [b, h, n, d] = q.dims();
        let scale = (d as f64).powf(-0.5);
        let dtype = q.dtype();
        // `upcast_attention`: scores and softmax in f32 when the weights run in half precision
        // (SD 2.x overflows in f16 otherwise); a no-op for f32.
        let out = if self.upcast && dtype != DType::F32 {
            let f32 = |t: Tensor<4>| t.cast(DType::F32);
            scaled_dot_product_attention(f32(q), f32(k), f32(v), scale, self.limits).cast(dtype)
        } else {
            scaled_dot_product_attention(q, k, v, scale, self.limits)
        };
        self.to_out.forward(out.swap_dims(1, 2).reshape([b, n, h * d]))
    }

    /// `[b, n, c]` → `[b, heads, n, c / heads]`.
    fn split_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [b, n, c] = x.dims();
        x.reshape([b, n, self.heads, c / self.heads]).swap_dims(1, 2)
    }
}

fn two(outs: Vec<Tensor<3>>) -> [Tensor<3>; 2] {
    outs.try_into().expect("two projections")
}

fn three(outs: Vec<Tensor<3>>) -> [Tensor<3>; 3] {
    outs.try_into().expect("three projections")
}
