//! LoRA adapters for SD-1.x/2.x U-Nets and their text encoders, in the `.safetensors` layouts
//! diffusers' `load_lora_weights` accepts, fused into the weights at load:
//! `W ← W + scale · (alpha / rank) · up · down` (a convolution's factors flattened to
//! `[out, rank]` · `[rank, in·kh·kw]`, as peft merges them).
//!
//! - [`diffusers`]: diffusers/PEFT keys (`unet.….to_q.lora_A.weight`), and the older
//!   attention-processor keys (`….processor.to_q_lora.down.weight`);
//! - [`kohya`]: kohya / A1111 keys (`lora_unet_…`, `lora_te_…`, `.lora_down.weight`,
//!   `.lora_up.weight`, `.alpha`), convolution layers (LoCon) included. LCM-LoRA ships in it.
//!
//! LyCORIS LoHa/LoKr, DoRA and SDXL LoRAs are refused by name. Which module a layer targets is
//! resolved against the loaded model's own keys ([`fuse`]), so a LoRA for another architecture
//! fails there, naming its first key and the module it expected.

pub mod diffusers;
pub mod fuse;
pub mod kohya;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::weights::{SafetensorsFile, to_f32};

pub use fuse::{LoraInfo, LoraState};

/// The layout a LoRA file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// diffusers/PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight`.
    Peft,
    /// diffusers' older attention-processor layout: `….processor.to_q_lora.down.weight`.
    DiffusersOld,
    /// kohya-ss / A1111: `lora_unet_<module with _>.lora_down.weight`, `.alpha`.
    Kohya,
}

impl LoraFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Peft => "peft",
            Self::DiffusersOld => "diffusers-old",
            Self::Kohya => "kohya",
        }
    }
}

/// The model component a layer belongs to (the pipeline's folder names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Unet,
    TextEncoder,
}

impl Component {
    pub fn dir(self) -> &'static str {
        match self {
            Self::Unet => "unet",
            Self::TextEncoder => "text_encoder",
        }
    }
}

/// Which module of the component a layer adapts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A module path in diffusers/transformers naming: `down_blocks.0.attentions.0.proj_in`.
    Module(String),
    /// kohya's flattened path, every `.` written `_`: `down_blocks_0_attentions_0_proj_in`,
    /// matched against the model's module paths the same way (which is what diffusers'
    /// `_convert_unet_lora_key` string rewriting reconstructs for the SD-1.x U-Net).
    Flat(String),
}

impl Target {
    pub fn describe(&self) -> &str {
        match self {
            Self::Module(m) | Self::Flat(m) => m,
        }
    }
}

/// One low-rank pair of a LoRA file.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    pub component: Component,
    pub target: Target,
    /// Keys of the factors in the file: `down` is `[rank, in(, kh, kw)]`, `up` `[out, rank(, 1, 1)]`.
    pub down: String,
    pub up: String,
    /// The stored `alpha` (scaling `alpha / rank`); `None` scales by 1, as diffusers does
    /// for files without one.
    pub alpha: Option<f32>,
}

/// A parsed LoRA file: its layers and the bytes of their factors.
#[derive(Clone)]
pub struct LoraFile {
    pub name: String,
    pub format: LoraFormat,
    pub layers: Vec<LoraLayer>,
    file: SafetensorsFile,
}

impl LoraFile {
    /// Parses and validates a LoRA `.safetensors` file named `name` (used in errors). A
    /// truncated or corrupt file fails with the same errors as model files.
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Result<Self> {
        let file = SafetensorsFile::from_bytes(name, bytes)?;
        let name = file.name.clone();
        let keys: Vec<&str> = file.header.tensors.keys().map(String::as_str).collect();
        refuse_unsupported(&name, &keys)?;
        let (format, layers) = if keys.iter().any(|k| k.starts_with("lora_unet_") || k.starts_with("lora_te_")) {
            (LoraFormat::Kohya, kohya::layers(&file)?)
        } else {
            diffusers::layers(&file)?
        };
        if layers.is_empty() {
            return Err(invalid(&name, None, "no LoRA layers in this file".into()));
        }
        Ok(Self { name, format, layers, file })
    }

    /// Shape of a factor.
    pub fn shape(&self, key: &str) -> &[usize] {
        &self.file.header.tensors[key].shape
    }

    /// A factor's values as f32 (row-major).
    pub fn values(&self, key: &str) -> Result<Vec<f32>> {
        let info = &self.file.header.tensors[key];
        to_f32(&self.name, key, info.dtype, self.file.raw(info))
    }
}

/// An error about a LoRA file, naming it (and the key where there is one).
pub(crate) fn invalid(file: &str, key: Option<&str>, reason: String) -> Error {
    Error::InvalidLora { file: file.to_string(), key: key.map(str::to_string), reason }
}

/// What the file is when it is a kind of adapter we do not fuse: said by name, before any
/// key-by-key error.
fn refuse_unsupported(file: &str, keys: &[&str]) -> Result<()> {
    let has = |pat: &str| keys.iter().find(|k| k.contains(pat)).copied();
    let refuse = |key: &str, what: &str| Err(invalid(file, Some(key), what.to_string()));
    if let Some(k) = has(".hada_w1_").or(has(".hada_t1")) {
        return refuse(k, "this is a LyCORIS LoHa (Hadamard product) adapter; only LoRA/LoCon files are supported");
    }
    if let Some(k) = has(".lokr_w1").or(has(".lokr_t2")) {
        return refuse(k, "this is a LyCORIS LoKr (Kronecker product) adapter; only LoRA/LoCon files are supported");
    }
    if let Some(k) = has(".lora_mid.") {
        return refuse(k, "this is a LyCORIS LoCon with a Tucker core (`lora_mid`); only plain LoRA/LoCon factors are supported");
    }
    if let Some(k) = has("dora_scale").or(has("lora_magnitude_vector")) {
        return refuse(k, "this is a DoRA adapter (weight-decomposed); only LoRA/LoCon files are supported");
    }
    let sdxl = |k: &&&str| {
        ["lora_te1_", "lora_te2_", "text_encoder_2."].iter().any(|p| k.starts_with(p))
            || ["add_embedding", "label_emb"].iter().any(|p| k.contains(p))
    };
    if let Some(k) = keys.iter().find(sdxl) {
        return refuse(k, "this is an SDXL LoRA (two text encoders / added-conditioning embedding); only SD-1.x/2.x-class models are supported");
    }
    Ok(())
}

/// A scalar `alpha` tensor's value.
pub(crate) fn scalar(file: &SafetensorsFile, key: &str) -> Result<f32> {
    let info = &file.header.tensors[key];
    if info.shape.iter().product::<usize>() != 1 {
        return Err(invalid(&file.name, Some(key), format!("alpha must be a scalar, has shape {:?}", info.shape)));
    }
    Ok(to_f32(&file.name, key, info.dtype, file.raw(info))?[0])
}
