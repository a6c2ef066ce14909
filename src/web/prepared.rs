//! The browser's way into the pipeline, on every target (the native tests drive it too): the
//! configs and tokenizer files in memory, and each component's weights already on the device,
//! streamed there tensor by tensor by the worker (`super::wasm`), never a whole file in the wasm
//! heap.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::{DType, Device};

use crate::error::{Error, Result};
use crate::limits::DeviceLimits;
use crate::pipeline::Pipeline;
use crate::source::{MemorySource, ModelSource};
use crate::weights::Weights;

/// Loads the pipeline from `files` and the uploaded `weights`, keyed by component (`unet`), or
/// by file path for files loaded on their own (`vae/taesd_decoder.safetensors`), in `dtype`, on a
/// device granted `limits` (the cut the weights were uploaded in).
pub fn from_parts(
    files: &MemorySource,
    weights: BTreeMap<String, Weights>,
    device: &Device,
    dtype: DType,
    limits: DeviceLimits,
) -> Result<Pipeline> {
    Pipeline::load_with(&Prepared { files, weights: RefCell::new(weights) }, device, dtype, limits)
}

/// A [`ModelSource`] whose components' weights were prepared elsewhere.
struct Prepared<'a> {
    files: &'a MemorySource,
    weights: RefCell<BTreeMap<String, Weights>>,
}

impl ModelSource for Prepared<'_> {
    fn read(&self, path: &str) -> Result<Arc<[u8]>> {
        self.files.read(path)
    }

    fn exists(&self, path: &str) -> bool {
        self.files.exists(path) || self.weights.borrow().contains_key(path)
    }

    fn describe(&self) -> String {
        self.files.describe()
    }

    fn probe(&self, paths: &[String]) -> Result<Vec<Option<u64>>> {
        let weights = self.weights.borrow();
        Ok(paths
            .iter()
            .map(|p| self.files.files.get(p).map(|b| b.len() as u64).or(weights.contains_key(p).then_some(0)))
            .collect())
    }

    /// The uploaded tensors are in the load's dtype already (the worker converted them).
    fn weights(&self, component: &str, _device: &Device, dtype: DType) -> Result<Weights> {
        let weights = self.weights.borrow_mut().remove(component).ok_or_else(|| Error::MissingFile {
            path: format!("{}/{component}", self.files.name),
            hint: Some("no weights were uploaded for this component".into()),
        })?;
        Ok(weights.with_dtype(dtype))
    }

    fn weights_file(&self, path: &str, device: &Device, dtype: DType) -> Result<Weights> {
        self.weights(path, device, dtype)
    }
}
