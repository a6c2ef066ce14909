//! `inkstone info`: what a model folder holds, read from configs and safetensors headers only
//! (no weights are loaded, so it is instant even for large models).

use std::collections::BTreeMap;

use crate::config::ModelIndex;
use crate::error::Result;
use crate::folder::weight_files;
use crate::source::{ModelSource, read_header};

#[derive(Debug, Clone)]
pub struct ComponentInfo {
    pub name: String,
    pub library: String,
    pub class_name: String,
    /// Weight files, parameter count and element count per stored dtype; empty for
    /// weightless components (tokenizer, scheduler).
    pub files: Vec<String>,
    pub parameters: usize,
    pub dtypes: BTreeMap<String, usize>,
}

pub fn inspect(src: &dyn ModelSource) -> Result<(ModelIndex, Vec<ComponentInfo>)> {
    let index = ModelIndex::from_json(&src.read("model_index.json")?)?;
    let mut out = Vec::new();
    for (name, spec) in &index.components {
        let mut info = ComponentInfo {
            name: name.clone(),
            library: spec.library.clone(),
            class_name: spec.class_name.clone(),
            files: Vec::new(),
            parameters: 0,
            dtypes: BTreeMap::new(),
        };
        if !matches!(name.as_str(), "tokenizer" | "scheduler" | "feature_extractor") {
            for file in weight_files(src, name, burn::tensor::DType::F32)? {
                let header = read_header(src, &file)?;
                for t in header.tensors.values() {
                    let n: usize = t.shape.iter().product();
                    info.parameters += n;
                    *info.dtypes.entry(t.dtype.name().to_string()).or_default() += n;
                }
                info.files.push(file);
            }
        }
        out.push(info);
    }
    Ok((index, out))
}
