//! serde mirrors of the JSON files in a diffusers-format model folder.
//!
//! Field names are the upstream ones; unknown fields are ignored (configs grow new keys all the
//! time), while a value we cannot honour is rejected by each struct's `validate` with an error
//! naming the field: a silently wrong model is worse than no model.

mod autoencoder;
mod model_index;
mod scheduler;
mod text;
mod unet;

pub use autoencoder::{AutoencoderKLConfig, AutoencoderTinyConfig};
pub use model_index::{ComponentSpec, ModelIndex};
pub use scheduler::{
    BetaSchedule, DDIMSchedulerConfig, DDPMSchedulerConfig, DPMSolverMultistepSchedulerConfig,
    EulerAncestralDiscreteSchedulerConfig, EulerDiscreteSchedulerConfig, FlowMatchEulerDiscreteSchedulerConfig,
    LCMSchedulerConfig, PNDMSchedulerConfig, PredictionType, SchedulerConfig, TimestepSpacing,
};
pub use text::{BertConfig, ClipTextConfig, TokenizerConfig};
pub use unet::{TransformerLayers, UNet2DConditionConfig};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A config value given either once for all levels or once per level
/// (`attention_head_dim: 8` or `attention_head_dim: [5, 10, 20]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The value for `level`, or an error naming `field` if a list is too short.
    pub fn at(&self, level: usize, file: &str, field: &str) -> Result<T> {
        match self {
            Self::One(v) => Ok(v.clone()),
            Self::Many(v) => v.get(level).cloned().ok_or_else(|| {
                Error::unsupported(file, field, format!("a list of {} entries (level {level} has none)", v.len()))
            }),
        }
    }

    /// Expands to one value per level, checking a list has exactly `levels` entries.
    pub fn per_level(&self, levels: usize, file: &str, field: &str) -> Result<Vec<T>> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); levels]),
            Self::Many(v) if v.len() == levels => Ok(v.clone()),
            Self::Many(v) => Err(Error::unsupported(
                file,
                field,
                format!("a list of {} entries for {levels} levels", v.len()),
            )),
        }
    }
}

/// Parses `text` as the JSON of `T`, naming `file` in the error.
pub fn from_json<T: DeserializeOwned>(file: &str, text: &[u8]) -> Result<T> {
    serde_json::from_slice(text).map_err(|e| Error::InvalidConfig { file: file.to_string(), reason: e.to_string() })
}

/// Rejects `value` for `field` unless `ok`.
pub(crate) fn ensure(ok: bool, file: &str, field: &str, value: impl std::fmt::Debug) -> Result<()> {
    if ok { Ok(()) } else { Err(Error::unsupported(file, field, format!("{value:?}"))) }
}
