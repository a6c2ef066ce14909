//! transformers' `BertModel`: the text tower of Chinese pipelines (Taiyi-SD-Chinese, Chinese-CLIP
//! based models). Post-LN encoder; field names mirror the state-dict keys
//! (`embeddings.word_embeddings`, `encoder.layer.N.attention.self.query`, `pooler.dense`, ...).

use burn::tensor::{Int, Tensor};

use super::{attention_bias, multi_head_attention};
use crate::config::{BertConfig, HiddenAct};
use crate::error::Result;
use crate::nn::{Embedding, LayerNorm, Linear};
use crate::weights::VarBuilder;

#[derive(Debug, Clone)]
#[allow(non_snake_case)] // `LayerNorm` is the state-dict key
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub LayerNorm: LayerNorm,
}

impl BertEmbeddings {
    fn load(vb: &VarBuilder, c: &BertConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            word_embeddings: Embedding::load(&vb.pp("word_embeddings"), c.vocab_size, h)?,
            position_embeddings: Embedding::load(&vb.pp("position_embeddings"), c.max_position_embeddings, h)?,
            token_type_embeddings: Embedding::load(&vb.pp("token_type_embeddings"), c.type_vocab_size, h)?,
            LayerNorm: LayerNorm::load(&vb.pp("LayerNorm"), h, c.layer_norm_eps)?,
        })
    }

    /// Single-segment prompts: every token type is 0 (transformers' default `token_type_ids`).
    fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device).unsqueeze::<2>();
        let types = Tensor::<2, Int>::zeros([batch, seq], &device);
        let x = self.word_embeddings.forward(ids)
            + self.token_type_embeddings.forward(types)
            + self.position_embeddings.forward(positions);
        self.LayerNorm.forward(x)
    }
}

/// `attention.self`: the q/k/v projections.
#[derive(Debug, Clone)]
pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub heads: usize,
}

/// `dense` + residual + `LayerNorm` (both `attention.output` and `output` have this shape).
#[derive(Debug, Clone)]
#[allow(non_snake_case)] // `LayerNorm` is the state-dict key
pub struct BertResidualOutput {
    pub dense: Linear,
    pub LayerNorm: LayerNorm,
}

impl BertResidualOutput {
    fn load(vb: &VarBuilder, d_in: usize, c: &BertConfig) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(&vb.pp("dense"), d_in, c.hidden_size, true)?,
            LayerNorm: LayerNorm::load(&vb.pp("LayerNorm"), c.hidden_size, c.layer_norm_eps)?,
        })
    }

    fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.LayerNorm.forward(self.dense.forward(x) + residual)
    }
}

#[derive(Debug, Clone)]
pub struct BertAttention {
    pub self_: BertSelfAttention,
    pub output: BertResidualOutput,
}

#[derive(Debug, Clone)]
pub struct BertIntermediate {
    pub dense: Linear,
    pub activation: HiddenAct,
}

/// Post-LN block: `ln(x + attn(x))`, then `ln(h + ffn(h))`.
#[derive(Debug, Clone)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertResidualOutput,
}

impl BertLayer {
    fn load(vb: &VarBuilder, c: &BertConfig) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let sa = vb.pp("attention").pp("self");
        Ok(Self {
            attention: BertAttention {
                self_: BertSelfAttention {
                    query: Linear::load(&sa.pp("query"), h, h, true)?,
                    key: Linear::load(&sa.pp("key"), h, h, true)?,
                    value: Linear::load(&sa.pp("value"), h, h, true)?,
                    heads: c.num_attention_heads,
                },
                output: BertResidualOutput::load(&vb.pp("attention").pp("output"), h, c)?,
            },
            intermediate: BertIntermediate {
                dense: Linear::load(&vb.pp("intermediate").pp("dense"), h, i, true)?,
                activation: c.hidden_act.clone(),
            },
            output: BertResidualOutput::load(&vb.pp("output"), i, c)?,
        })
    }

    fn forward(&self, x: Tensor<3>, bias: &Tensor<4>) -> Tensor<3> {
        let sa = &self.attention.self_;
        let (q, k, v) = (sa.query.forward(x.clone()), sa.key.forward(x.clone()), sa.value.forward(x.clone()));
        let ctx = multi_head_attention(q, k, v, sa.heads, bias);
        let h = self.attention.output.forward(ctx, x);
        let ffn = self.intermediate.activation.forward(self.intermediate.dense.forward(h.clone()));
        self.output.forward(ffn, h)
    }
}

#[derive(Debug, Clone)]
pub struct BertEncoder {
    pub layer: Vec<BertLayer>,
}

/// `tanh(dense(h[:, 0]))`: the [CLS] summary.
#[derive(Debug, Clone)]
pub struct BertPooler {
    pub dense: Linear,
}

#[derive(Debug, Clone)]
pub struct BertOutput {
    pub last_hidden_state: Tensor<3>,
    /// `None` for a checkpoint saved without its pooler (`add_pooling_layer=False`).
    pub pooler_output: Option<Tensor<2>>,
}

#[derive(Debug, Clone)]
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder,
    /// Absent in checkpoints saved with `add_pooling_layer=False`; pipelines never run it.
    pub pooler: Option<BertPooler>,
    pub config: BertConfig,
}

impl BertModel {
    /// Validates `config` (errors name `config_path`, the file it was read from), then loads
    /// from a VarBuilder at the model root (the `bert.` prefix already stripped).
    pub fn load(vb: &VarBuilder, config: &BertConfig, config_path: &str) -> Result<Self> {
        config.validate_in(config_path)?;
        let layer = (0..config.num_hidden_layers)
            .map(|i| BertLayer::load(&vb.pp("encoder.layer").pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        let h = config.hidden_size;
        Ok(Self {
            embeddings: BertEmbeddings::load(&vb.pp("embeddings"), config)?,
            encoder: BertEncoder { layer },
            pooler: if vb.pp("pooler").has_prefix() {
                Some(BertPooler { dense: Linear::load(&vb.pp("pooler").pp("dense"), h, h, true)? })
            } else {
                None
            },
            config: config.clone(),
        })
    }

    /// `attention_mask` (1 = token, 0 = padding) hides padded keys; without it every position
    /// attends to every other, padding included (what diffusers does for Taiyi).
    pub fn forward(&self, ids: Tensor<2, Int>, attention_mask: Option<Tensor<2, Int>>) -> BertOutput {
        let [batch, seq] = ids.dims();
        let bias = attention_bias(batch, seq, attention_mask, false, &ids.device());
        let mut x = self.embeddings.forward(ids);
        for layer in &self.encoder.layer {
            x = layer.forward(x, &bias);
        }
        let hidden = x.dims()[2];
        let pooler_output = self.pooler.as_ref().map(|p| {
            let cls: Tensor<2> = x.clone().slice([0..batch, 0..1, 0..hidden]).reshape([batch, hidden]);
            p.dense.forward(cls).tanh()
        });
        BertOutput { last_hidden_state: x, pooler_output }
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
}
