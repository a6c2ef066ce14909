//! transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`: the text tower of SD 1.x,
//! SD 2.x, SD-Turbo, SDXS, BK-SDM. Pre-LN transformer with a causal mask; field names mirror the
//! state-dict keys (`embeddings.token_embedding`, `encoder.layers.N.self_attn.q_proj`, ...).

use burn::tensor::{Int, Tensor, TensorData};

use super::multi_head_attention;
use crate::config::{ClipTextConfig, HiddenAct};
use crate::error::{Error, Result};
use crate::nn::{Embedding, LayerNorm, Linear};
use crate::weights::VarBuilder;

/// Token embedding plus learned absolute positions.
#[derive(Debug, Clone)]
pub struct ClipTextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

impl ClipTextEmbeddings {
    fn load(vb: &VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            token_embedding: Embedding::load(&vb.pp("token_embedding"), c.vocab_size, c.hidden_size)?,
            position_embedding: Embedding::load(&vb.pp("position_embedding"), c.max_position_embeddings, c.hidden_size)?,
        })
    }

    fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, seq] = ids.dims();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &ids.device()).unsqueeze::<2>();
        self.token_embedding.forward(ids) + self.position_embedding.forward(positions)
    }
}

/// Multi-head self-attention with biased q/k/v/out projections.
#[derive(Debug, Clone)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub heads: usize,
}

impl ClipAttention {
    fn load(vb: &VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            q_proj: Linear::load(&vb.pp("q_proj"), h, h, true)?,
            k_proj: Linear::load(&vb.pp("k_proj"), h, h, true)?,
            v_proj: Linear::load(&vb.pp("v_proj"), h, h, true)?,
            out_proj: Linear::load(&vb.pp("out_proj"), h, h, true)?,
            heads: c.num_attention_heads,
        })
    }

    fn forward(&self, x: Tensor<3>, bias: &Tensor<4>) -> Tensor<3> {
        let out = multi_head_attention(
            self.q_proj.forward(x.clone()),
            self.k_proj.forward(x.clone()),
            self.v_proj.forward(x),
            self.heads,
            bias,
        );
        self.out_proj.forward(out)
    }
}

#[derive(Debug, Clone)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub activation: HiddenAct,
}

impl ClipMlp {
    fn load(vb: &VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(&vb.pp("fc1"), c.hidden_size, c.intermediate_size, true)?,
            fc2: Linear::load(&vb.pp("fc2"), c.intermediate_size, c.hidden_size, true)?,
            activation: c.hidden_act.clone(),
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(self.activation.forward(self.fc1.forward(x)))
    }
}

/// Pre-LN block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug, Clone)]
pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    fn load(vb: &VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            self_attn: ClipAttention::load(&vb.pp("self_attn"), c)?,
            layer_norm1: LayerNorm::load(&vb.pp("layer_norm1"), c.hidden_size, c.layer_norm_eps)?,
            mlp: ClipMlp::load(&vb.pp("mlp"), c)?,
            layer_norm2: LayerNorm::load(&vb.pp("layer_norm2"), c.hidden_size, c.layer_norm_eps)?,
        })
    }

    fn forward(&self, x: Tensor<3>, bias: &Tensor<4>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), bias);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

#[derive(Debug, Clone)]
pub struct ClipEncoder {
    pub layers: Vec<ClipEncoderLayer>,
}

/// Everything a CLIP text tower returns that diffusers pipelines use.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// After the final layer norm: SD's `prompt_embeds`.
    pub last_hidden_state: Tensor<3>,
    /// `last_hidden_state` at each sequence's EOS position: `[batch, hidden]`.
    pub pooler_output: Tensor<2>,
    /// Output of the second-to-last layer, before the final layer norm (`hidden_states[-2]`),
    /// what `clip_skip = 1` starts from.
    pub penultimate: Tensor<3>,
    /// `text_projection(pooler_output)` for `CLIPTextModelWithProjection`.
    pub text_embeds: Option<Tensor<2>>,
}

#[derive(Debug, Clone)]
pub struct ClipTextModel {
    pub embeddings: ClipTextEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: LayerNorm,
    /// Present for `CLIPTextModelWithProjection` (no bias).
    pub text_projection: Option<Linear>,
    pub config: ClipTextConfig,
    /// The config's `use_attention_mask`: whether diffusers hands the padding mask to the tower.
    pub use_attention_mask: bool,
}

impl ClipTextModel {
    /// Validates `config` (errors name `config_path`, the file it was read from), then loads from
    /// a VarBuilder at the text-model root (the `text_model.` prefix already stripped);
    /// `text_projection.weight` is loaded when `with_projection`.
    pub fn load(vb: &VarBuilder, config: &ClipTextConfig, config_path: &str, with_projection: bool) -> Result<Self> {
        config.validate_in(config_path)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| ClipEncoderLayer::load(&vb.pp("encoder.layers").pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        let text_projection = if with_projection {
            Some(Linear::load(&vb.pp("text_projection"), config.hidden_size, config.projection_dim, false)?)
        } else {
            None
        };
        Ok(Self {
            embeddings: ClipTextEmbeddings::load(&vb.pp("embeddings"), config)?,
            encoder: ClipEncoder { layers },
            final_layer_norm: LayerNorm::load(&vb.pp("final_layer_norm"), config.hidden_size, config.layer_norm_eps)?,
            text_projection,
            config: config.clone(),
            use_attention_mask: false,
        })
    }

    /// Runs the tower. `attention_mask` (1 = token, 0 = padding) is combined with the causal
    /// mask when given; diffusers passes none for CLIP unless the config asks for it.
    pub fn forward(&self, ids: Tensor<2, Int>, attention_mask: Option<Tensor<2, Int>>) -> ClipTextOutput {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let bias = super::attention_bias(batch, seq, attention_mask, true, &device);
        let mut x = self.embeddings.forward(ids.clone());
        let mut penultimate = x.clone();
        let n = self.encoder.layers.len();
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            x = layer.forward(x, &bias);
            if i + 2 == n {
                penultimate = x.clone();
            }
        }
        let last_hidden_state = self.final_layer_norm.forward(x);
        let pooler_output = pick_rows(last_hidden_state.clone(), &self.eos_positions(&ids));
        let text_embeds = self.text_projection.as_ref().map(|p| p.forward(pooler_output.clone()));
        ClipTextOutput { last_hidden_state, pooler_output, penultimate, text_embeds }
    }

    /// `StableDiffusionPipeline.encode_prompt` with `clip_skip`: the final layer norm applied to
    /// the output `clip_skip` layers before the last (`hidden_states[-(clip_skip + 1)]`);
    /// `clip_skip = 0` is `last_hidden_state`.
    pub fn prompt_embeds(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        clip_skip: usize,
    ) -> Result<Tensor<3>> {
        let n = self.encoder.layers.len();
        if clip_skip > n {
            return Err(Error::InvalidArgument(format!("clip_skip {clip_skip} exceeds the {n} text encoder layers")));
        }
        let [batch, seq] = ids.dims();
        let bias = super::attention_bias(batch, seq, attention_mask, true, &ids.device());
        let mut x = self.embeddings.forward(ids);
        for layer in &self.encoder.layers[..n - clip_skip] {
            x = layer.forward(x, &bias);
        }
        Ok(self.final_layer_norm.forward(x))
    }

    /// transformers' pooling rule: configs with the legacy `eos_token_id == 2` take the argmax
    /// of the ids (EOS had the largest id in OpenAI's vocabulary); others the first position
    /// holding `eos_token_id` (the pad token may equal EOS, so "first" matters). A row without
    /// EOS pools position 0, as torch's argmax over an all-false row does.
    fn eos_positions(&self, ids: &Tensor<2, Int>) -> Vec<usize> {
        let [batch, seq] = ids.dims();
        let values: Vec<i64> = ids.clone().into_data().iter::<i64>().collect();
        let eos = self.config.eos_token_id.unwrap_or(2);
        values
            .chunks(seq)
            .take(batch)
            .map(|row| {
                if eos == 2 {
                    // First maximum, as torch.argmax.
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&v| v == max).unwrap_or(0)
                } else {
                    row.iter().position(|&v| v == eos).unwrap_or(0)
                }
            })
            .collect()
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
}

/// `x[b, positions[b], :]` for each batch row → `[batch, hidden]`.
fn pick_rows(x: Tensor<3>, positions: &[usize]) -> Tensor<2> {
    let [batch, seq, hidden] = x.dims();
    let flat: Vec<i64> = positions.iter().enumerate().map(|(b, &p)| (b * seq + p) as i64).collect();
    let index = Tensor::<1, Int>::from_data(TensorData::new(flat, [batch]), &x.device());
    x.reshape([batch * seq, hidden]).select(0, index)
}
