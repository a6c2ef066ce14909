//! transformers configs of the text towers and their tokenizers.

use serde::{Deserialize, Serialize};

use super::ensure;
use crate::error::Result;

const CLIP_FILE: &str = "text_encoder/config.json";
const BERT_FILE: &str = "text_encoder/config.json";

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
    pub hidden_act: String,
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
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
        }
    }
}

impl ClipTextConfig {
    pub fn validate(&self) -> Result<()> {
        ensure(
            matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu"),
            CLIP_FILE,
            "hidden_act",
            &self.hidden_act,
        )?;
        ensure(
            self.num_attention_heads > 0 && self.hidden_size % self.num_attention_heads == 0,
            CLIP_FILE,
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
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    pub position_embedding_type: String,
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
            hidden_act: "gelu".into(),
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            use_attention_mask: None,
        }
    }
}

impl BertConfig {
    pub fn validate(&self) -> Result<()> {
        ensure(
            matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "relu" | "quick_gelu"),
            BERT_FILE,
            "hidden_act",
            &self.hidden_act,
        )?;
        ensure(
            self.position_embedding_type == "absolute",
            BERT_FILE,
            "position_embedding_type",
            &self.position_embedding_type,
        )?;
        ensure(
            self.num_attention_heads > 0 && self.hidden_size % self.num_attention_heads == 0,
            BERT_FILE,
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
