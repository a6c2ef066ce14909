//! The text side of a pipeline: prompt tokenizers (CLIP BPE, BERT WordPiece) and text encoders
//! (`CLIPTextModel[WithProjection]`, `BertModel`), matching transformers id for id and to f32
//! rounding for the hidden states.

pub mod bert;
pub mod clip;
pub mod tokenizer;

use burn::tensor::activation::{gelu, gelu_approximate, relu, sigmoid, softmax};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

pub use bert::{BertModel, BertOutput};
pub use clip::{ClipTextModel, ClipTextOutput};
pub use tokenizer::{Encoded, PromptTokenizer, TokenizerKind};

use crate::config::{BertConfig, ClipTextConfig, HiddenAct, from_json};
use crate::error::{Error, Result};
use crate::folder;
use crate::source::ModelSource;
use crate::weights::Weights;

/// A loaded text tower, as the pipeline's `text_encoder` component.
#[derive(Debug, Clone)]
pub enum TextEncoder {
    Clip(ClipTextModel),
    Bert(BertModel),
}

/// The config keys that pick the tower and how diffusers calls it.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ConfigHead {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    use_attention_mask: Option<bool>,
}

impl TextEncoder {
    /// Reads `<dir>/config.json` (architectures / model_type picks the kind), validates, loads
    /// weights with full coverage (`weights.finish()`). Config errors name that file.
    pub fn load(src: &dyn ModelSource, dir: &str, device: &Device, dtype: DType) -> Result<Self> {
        let path = format!("{dir}/config.json");
        let bytes = src.read(&path)?;
        let head: ConfigHead = from_json(&path, &bytes)?;
        let arch = head.architectures.as_ref().and_then(|a| a.first()).map(String::as_str);
        let clip = matches!(arch, Some("CLIPTextModel" | "CLIPTextModelWithProjection"))
            || (arch.is_none() && head.model_type.as_deref() == Some("clip_text_model"));
        let bert = arch == Some("BertModel") || (arch.is_none() && head.model_type.as_deref() == Some("bert"));
        if clip {
            let config: ClipTextConfig = from_json(&path, &bytes)?;
            let weights = src.weights(dir, device, dtype)?.strip_prefix("text_model.");
            // The pipeline never runs the projection: loaded when stored, fine when absent.
            let projection = weights.contains("text_projection.weight");
            let mut model = ClipTextModel::load(&weights.root(), &config, &path, projection)?;
            model.use_attention_mask = head.use_attention_mask.unwrap_or(false);
            finish(&weights)?;
            Ok(Self::Clip(model))
        } else if bert {
            let config: BertConfig = from_json(&path, &bytes)?;
            let weights = src.weights(dir, device, dtype)?.strip_prefix("bert.");
            let model = BertModel::load(&weights.root(), &config, &path)?;
            finish(&weights)?;
            Ok(Self::Bert(model))
        } else {
            let value = arch.or(head.model_type.as_deref()).unwrap_or("none");
            Err(Error::UnsupportedConfig {
                file: path,
                field: "architectures".into(),
                value: format!("{value:?}"),
                hint: Some("text encoders: CLIPTextModel, CLIPTextModelWithProjection, BertModel".into()),
            })
        }
    }

    /// What `StableDiffusionPipeline.encode_prompt` returns as prompt_embeds for a batch:
    /// [batch, seq, hidden]; the mask is used only if the config says `use_attention_mask`.
    pub fn encode(&self, ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<3> {
        match self {
            Self::Clip(m) => {
                let mask = m.use_attention_mask.then_some(attention_mask);
                // Not `forward`: its pooled output reads the ids back to the host, which the
                // browser cannot do synchronously, and the pipeline does not need it.
                m.prompt_embeds(ids, mask, 0).expect("clip_skip 0 is always in range")
            }
            Self::Bert(m) => {
                let mask = m.config.use_attention_mask.unwrap_or(false).then_some(attention_mask);
                m.forward(ids, mask).last_hidden_state
            }
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Clip(m) => m.hidden_size(),
            Self::Bert(m) => m.hidden_size(),
        }
    }

    /// The longest token sequence its position table covers (`max_position_embeddings`).
    pub fn max_positions(&self) -> usize {
        match self {
            Self::Clip(m) => m.config.max_position_embeddings,
            Self::Bert(m) => m.config.max_position_embeddings,
        }
    }
}

/// [`Weights::finish`] minus the index buffers ([`folder::is_index_buffer`]).
fn finish(weights: &Weights) -> Result<()> {
    match weights.finish() {
        Err(Error::UnexpectedTensors { file, keys }) => {
            // The index buffers of transformers-4 checkpoints (I64 `arange` / zeros) carry no
            // learned values; every other leftover key is still an error.
            let keys: Vec<String> = keys.into_iter().filter(|k| !folder::is_index_buffer(k)).collect();
            if keys.is_empty() { Ok(()) } else { Err(Error::UnexpectedTensors { file, keys }) }
        }
        other => other,
    }
}

impl HiddenAct {
    /// Applies the activation. Only validated configs build a tower, and `validate` rejects
    /// `Unsupported`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Gelu => gelu(x),
            Self::GeluNew => gelu_approximate(x),
            Self::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Self::Relu => relu(x),
            Self::Unsupported(name) => unreachable!("hidden_act {name:?} passed validation"),
        }
    }
}

/// Additive attention bias `[batch or 1, 1, seq, seq]`: 0 where a query may see a key,
/// `f32::MIN` (transformers' `finfo.min`) where the causal mask or a padding key hides it.
/// Built on the device: the browser cannot read the mask back synchronously.
pub(crate) fn attention_bias(
    batch: usize,
    seq: usize,
    attention_mask: Option<Tensor<2, Int>>,
    causal: bool,
    device: &Device,
) -> Tensor<4> {
    let mut bias = vec![0f32; seq * seq];
    if causal {
        for q in 0..seq {
            for k in q + 1..seq {
                bias[q * seq + k] = f32::MIN;
            }
        }
    }
    let bias = Tensor::<4>::from_data(TensorData::new(bias, [1, 1, seq, seq]), (device, DType::F32));
    match attention_mask {
        None => bias,
        Some(mask) => {
            // min, not sum: a key both causal-masked and padded stays at f32::MIN, not -inf.
            let padding = mask.equal_elem(0).float().cast(DType::F32).mul_scalar(f32::MIN).reshape([batch, 1, 1, seq]);
            bias.expand([batch, 1, seq, seq]).min_pair(padding.expand([batch, 1, seq, seq]))
        }
    }
}

/// The text towers' multi-head self-attention core: softmax(q kᵀ / √d + bias) v over
/// `[batch, seq, heads·d]` projections. Text sequences are short (77–512 tokens), so the whole
/// score matrix is formed at once (unlike [`crate::nn::scaled_dot_product_attention`]). The
/// bias and softmax are in f32 whatever the model's dtype: the f32 bias minimum has no f16
/// counterpart.
pub(crate) fn multi_head_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    bias: &Tensor<4>,
) -> Tensor<3> {
    let [batch, seq, hidden] = q.dims();
    let dtype = q.dtype();
    let d = hidden / heads;
    let split = |x: Tensor<3>| x.reshape([batch, seq, heads, d]).swap_dims(1, 2);
    let scores = split(q).matmul(split(k).swap_dims(2, 3)).cast(DType::F32) * (1.0 / (d as f64).sqrt()) + bias.clone();
    softmax(scores, 3).cast(dtype).matmul(split(v)).swap_dims(1, 2).reshape([batch, seq, hidden])
}
