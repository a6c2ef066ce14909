//! `model_index.json`: which component lives in which folder, and its class.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Result};

/// One `"name": ["library", "ClassName"]` entry; `[null, null]` means the component is absent.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentSpec {
    pub library: String,
    pub class_name: String,
}

#[derive(Debug, Clone)]
pub struct ModelIndex {
    /// `_class_name`, e.g. `StableDiffusionPipeline`.
    pub class_name: String,
    pub diffusers_version: Option<String>,
    /// Present components by folder name (`unet`, `vae`, `text_encoder`, ...).
    pub components: BTreeMap<String, ComponentSpec>,
    /// Non-component settings such as `requires_safety_checker`.
    pub extra: BTreeMap<String, Value>,
}

pub const FILE: &str = "model_index.json";

impl ModelIndex {
    pub fn from_json(text: &[u8]) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidConfig { file: FILE.into(), reason };
        let map: BTreeMap<String, Value> =
            serde_json::from_slice(text).map_err(|e| invalid(e.to_string()))?;
        let class_name = map
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no `_class_name`".into()))?
            .to_string();
        let diffusers_version = map.get("_diffusers_version").and_then(Value::as_str).map(String::from);
        let mut components = BTreeMap::new();
        let mut extra = BTreeMap::new();
        for (key, value) in map {
            if key.starts_with('_') {
                continue;
            }
            match &value {
                Value::Array(pair) if pair.len() == 2 => {
                    if let (Some(library), Some(class)) = (pair[0].as_str(), pair[1].as_str()) {
                        components.insert(key, ComponentSpec { library: library.into(), class_name: class.into() });
                    }
                }
                _ => {
                    extra.insert(key, value);
                }
            }
        }
        Ok(Self { class_name, diffusers_version, components, extra })
    }

    /// The component in folder `name`, or an error saying the model has none.
    pub fn component(&self, name: &str) -> Result<&ComponentSpec> {
        self.components.get(name).ok_or_else(|| Error::MissingFile {
            path: format!("{FILE}: component `{name}`"),
            hint: Some(format!("the {} has no {name}", self.class_name)),
        })
    }
}
