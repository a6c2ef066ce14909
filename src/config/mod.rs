//! serde mirrors of the JSON files in a diffusers-format model folder.
//!
//! Field names are the upstream ones; unknown fields are ignored (configs grow new keys all the
//! time), while a value we cannot honour is rejected by each struct's `validate` with an error
//! naming the field: a silently wrong model is worse than no model. String-valued choices are
//! enums declared with [`choice!`], so the code branches on variants, never on strings.
//!
//! The scheduler configs live with their samplers (`crate::schedulers`, one file each, as in
//! diffusers); they are re-exported here with the other configs.

/// Declares the enum of a string-valued config field, in one of two forms:
///
/// - `choice! { Name for "field" { A = "a", } }`: an unknown value fails the parse, naming the
///   field and the accepted values. For fields that are always used (the scheduler configs).
/// - `choice! { Name { A = "a", } }`: one more variant, `Unsupported`, holds any other value as
///   written, so that parsing never fails on a value and a `validate` run later can reject it
///   naming the file, the field and the value. For fields whose part may go unused: a VAE
///   whose encoder blocks we cannot build still decodes (text-to-image), and refuses only when
///   an image is encoded.
///
/// Both (de)serialise as the upstream string and show it (quoted) in `Debug`, which is how
/// errors print values.
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident for $field:literal { $($(#[$vdoc:meta])* $variant:ident = $value:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The value as written in the file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)+
                }
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                match s.as_str() {
                    $($value => Ok(Self::$variant),)+
                    other => Err(serde::de::Error::custom(format!(
                        concat!("unsupported value {:?} for `", $field, "` (expected one of: {})"),
                        other,
                        [$($value),+].join(", ")
                    ))),
                }
            }
        }
    };
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $value)] $variant,)+
            /// A value this crate does not implement, as written in the file.
            #[serde(untagged)]
            Unsupported(String),
        }

        impl $name {
            /// The value as written in the file.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $value,)+
                    Self::Unsupported(value) => value,
                }
            }

            pub fn is_supported(&self) -> bool {
                !matches!(self, Self::Unsupported(_))
            }
        }

        /// As written in the file (`"gelu"`), which is how errors show the value.
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self.as_str(), f)
            }
        }
    };
}

pub(crate) use choice;

mod autoencoder;
mod model_index;
mod text;
mod unet;

pub use autoencoder::{
    AutoencoderKLConfig, AutoencoderTinyConfig, DownEncoderBlockType, UpDecoderBlockType, UpsampleFn, VaeClass,
};
pub use model_index::{ComponentSpec, ModelIndex};
pub use crate::schedulers::{
    AlgorithmType, BetaConfig, BetaSchedule, DDIMSchedulerConfig, DDPMSchedulerConfig, DPMSolverMultistepSchedulerConfig,
    EulerAncestralDiscreteSchedulerConfig, EulerDiscreteSchedulerConfig, FinalSigmasType,
    FlowMatchEulerDiscreteSchedulerConfig, InterpolationType, LCMSchedulerConfig, PNDMSchedulerConfig, PredictionType,
    SchedulerConfig, SolverType, TimeShiftType, TimestepSpacing, TimestepType, VarianceType,
};
pub use text::{BertConfig, ClipTextConfig, HiddenAct, PositionEmbeddingType, TokenizerConfig};
pub use unet::{
    AttentionType, DownBlockType, MidBlockType, ResnetTimeScaleShift, TimeEmbeddingType, TransformerLayers,
    UNet2DConditionConfig, UNetLevel, UpBlockType,
};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

choice! {
    /// `act_fn` of the U-Net and VAE configs (diffusers' `get_activation`).
    ActFn {
        Silu = "silu",
        Relu = "relu",
    }
}

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
