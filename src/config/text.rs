//! transformers configs of the text towers and their tokenizers.

use serde::{Deserialize, Serialize};

use super::ensure;
use crate::error::Result;

/// Where the text configs live in a pipeline folder: what errors name unless told otherwise.
const FILE: &str = "text_encoder/config.json";

choice! {
    /// `hidden_act` of the text configs (transformers' `ACT2FN`), applied by the text towers.
    HiddenAct {
        /// Exact (erf) GELU.
        Gelu = "gelu",
        /// The tanh approximation.
        GeluNew = "gelu_new",
        /// `x * sigmoid(1.702 x)`: OpenAI CLIP's activation.
        QuickGelu = "quick_gelu",
        Relu = "relu",
    }
}

choice! {
    /// `BertConfig.position_embedding_type`.
    PositionEmbeddingType {
        Absolute = "absolute",
    }
}

/// `CLIPTextConfig` (`CLIPTextModel`, `CLIPTextModelWithProjection`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub architectures: Option<Vec<String>>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub projection_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<i64>,
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<i64>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            architectures: None,
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
        }
    }
}

impl ClipTextConfig {
    /// Rejects what the tower does not implement; errors name `text_encoder/config.json`.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(FILE)
    }

    /// [`Self::validate`], naming `file` (where the config was read from) in errors.
    pub fn validate_in(&self, file: &str) -> Result<()> {
        let act = &self.hidden_act;
        ensure(matches!(act, HiddenAct::QuickGelu | HiddenAct::Gelu), file, "hidden_act", act)?;
        ensure(
            self.num_attention_heads > 0 && self.hidden_size.is_multiple_of(self.num_attention_heads),
            file,
            "num_attention_heads",
            self.num_attention_heads,
        )
    }
}

/// `BertConfig` (`BertModel`; Taiyi and Chinese-CLIP text towers).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub architectures: Option<Vec<String>>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    pub position_embedding_type: PositionEmbeddingType,
    /// diffusers passes the attention mask to the text encoder only when this is true.
    pub use_attention_mask: Option<bool>,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self {
            architectures: None,
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: HiddenAct::Gelu,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: PositionEmbeddingType::Absolute,
            use_attention_mask: None,
        }
    }
}

impl BertConfig {
    /// Rejects what the tower does not implement; errors name `text_encoder/config.json`.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(FILE)
    }

    /// [`Self::validate`], naming `file` (where the config was read from) in errors.
    pub fn validate_in(&self, file: &str) -> Result<()> {
        ensure(self.hidden_act.is_supported(), file, "hidden_act", &self.hidden_act)?;
        let positions = &self.position_embedding_type;
        ensure(*positions == PositionEmbeddingType::Absolute, file, "position_embedding_type", positions)?;
        ensure(
            self.num_attention_heads > 0 && self.hidden_size.is_multiple_of(self.num_attention_heads),
            file,
            "num_attention_heads",
            self.num_attention_heads,
        )
    }
}

/// A special token written either as a string or as an `AddedToken` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    pub fn content(&self) -> &str {
        match self {
            Self::Text(s) | Self::Added { content: s } => s,
        }
    }
}

/// `tokenizer/tokenizer_config.json` (and the same keys of `special_tokens_map.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenizerConfig {
    pub tokenizer_class: Option<String>,
    /// Some repos write absurd values (1e30) for "no limit": read as f64, clamp when used.
    pub model_max_length: Option<f64>,
    pub pad_token: Option<SpecialToken>,
    pub bos_token: Option<SpecialToken>,
    pub eos_token: Option<SpecialToken>,
    pub unk_token: Option<SpecialToken>,
    pub cls_token: Option<SpecialToken>,
    pub sep_token: Option<SpecialToken>,
    pub do_lower_case: Option<bool>,
    pub tokenize_chinese_chars: Option<bool>,
    pub strip_accents: Option<bool>,
}

impl TokenizerConfig {
    /// Fills fields this config leaves unset from `other` (special_tokens_map.json).
    pub fn merge(mut self, other: TokenizerConfig) -> Self {
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = other.$f; } )* };
        }
        fill!(
            tokenizer_class,
            model_max_length,
            pad_token,
            bos_token,
            eos_token,
            unk_token,
            cls_token,
            sep_token,
            do_lower_case,
            tokenize_chinese_chars,
            strip_accents
        );
        self
    }
}
