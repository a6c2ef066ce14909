//! Fusing LoRA adapters into a loaded pipeline's U-Net and text encoder, and re-fusing when
//! the set or the scales change, without reading the base model's files again.
//!
//! **Why unfuse-by-subtraction, not a rebuild from kept base weights.** The load keeps each
//! adapted component's tensors as device handles ([`Weights::resident`]); the model built from
//! them shares their memory, so this costs nothing. A re-fuse could rebuild from untouched base
//! copies, but then every adapted weight would exist twice on the GPU for as long as an adapter
//! is applied — and an LCM-LoRA adapts nearly every linear and convolution of the U-Net
//! (SD-1.5's U-Net is 1.72 GB in f16: 3.4 GB with the copies), which a phone-class GPU cannot
//! hold. Instead the fused weights replace the base ones and each applied adapter keeps only its
//! factors on the device (the published SD-1.5 LCM-LoRA file is 135 MB); a change computes
//! `W − Σ old deltas + Σ new deltas` in f32 and rounds once to the working dtype, only for the
//! weights whose adapters or scales changed (what peft's `unmerge` does too). The price: each
//! change of a weight rounds it once more (≤ ½ ulp of the working dtype: negligible in f32, an
//! f16 ulp after two changes in f16), so after many changes in f16 the base is not restored
//! bit for bit. While a change runs, the old model holds its weights until the new one is
//! built: the adapted weights exist twice for that moment only.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor, TensorData};

use super::{Component, LoraFile, Target, invalid};
use crate::error::{Error, Result};
use crate::limits::DeviceLimits;
use crate::pipeline::Pipeline;
use crate::source::{MemorySource, ModelSource};
use crate::text::TextEncoder;
use crate::unet::UNet2DConditionModel;
use crate::weights::{Uploaded, Weights};

/// What [`Pipeline::set_loras`] applied, per adapter (JS `gen.info.loras`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoraInfo {
    pub file: String,
    /// `peft`, `diffusers-old` or `kohya`.
    pub format: &'static str,
    #[serde(serialize_with = "shortest_decimal")]
    pub scale: f32,
    /// Modules (weights) adapted in all, and per component.
    pub modules: usize,
    pub unet_modules: usize,
    pub text_encoder_modules: usize,
}

/// An f32 as the f64 of its shortest decimal, the number the caller wrote (`0.7`, where
/// widening the bits gives 0.699999988 to a serializer without a text step, e.g. into JS).
fn shortest_decimal<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.to_string().parse().unwrap_or(f64::from(*v)))
}

/// A component's tensors as the model was built from them (fused with the applied adapters).
#[derive(Clone)]
struct Resident {
    name: String,
    tensors: BTreeMap<String, Uploaded>,
}

/// One low-rank delta on the device: `factor · up · down`, `up` `[out, rank]`, `down`
/// `[rank, in·kh·kw]`, in the working dtype.
#[derive(Clone)]
struct Delta {
    component: Component,
    key: String,
    up: Tensor<2>,
    down: Tensor<2>,
    /// `alpha / rank`.
    factor: f32,
}

#[derive(Clone)]
struct Applied {
    file: Arc<LoraFile>,
    scale: f32,
    deltas: Vec<Delta>,
}

impl Applied {
    fn info(&self) -> LoraInfo {
        let count = |c| self.deltas.iter().filter(|d| d.component == c).count();
        LoraInfo {
            file: self.file.name.clone(),
            format: self.file.format.name(),
            scale: self.scale,
            modules: self.deltas.len(),
            unet_modules: count(Component::Unet),
            text_encoder_modules: count(Component::TextEncoder),
        }
    }
}

/// What a pipeline keeps to fuse adapters: the adapted components' configs and resident
/// tensors, and the adapters applied now.
#[derive(Default)]
pub struct LoraState {
    configs: MemorySource,
    components: BTreeMap<Component, Resident>,
    /// The device's, for the rebuilt models.
    limits: DeviceLimits,
    applied: Vec<Applied>,
}

impl LoraState {
    pub fn applied(&self) -> Vec<LoraInfo> {
        self.applied.iter().map(Applied::info).collect()
    }

    /// The U-Net's `layers_per_block` (a single number in SD-1.x/2.x), for LDM/SGM block names.
    fn layers_per_block(&self) -> Option<usize> {
        let bytes = self.configs.files.get("unet/config.json")?;
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        v.get("layers_per_block")?.as_u64().map(|n| n as usize)
    }
}

/// The load's source, handing out every component's weights with the device's limits and
/// keeping the U-Net's and the text encoder's tensors as the model is built from them (see the
/// module docs).
pub(crate) struct Keep<'a> {
    inner: &'a dyn ModelSource,
    limits: DeviceLimits,
    kept: RefCell<BTreeMap<Component, Resident>>,
}

impl<'a> Keep<'a> {
    pub(crate) fn new(inner: &'a dyn ModelSource, limits: DeviceLimits) -> Self {
        Self { inner, limits, kept: RefCell::default() }
    }

    /// The state after a successful load: the kept tensors and the configs to rebuild from.
    pub(crate) fn into_state(self) -> Result<LoraState> {
        let mut configs = MemorySource { name: self.inner.describe(), ..Default::default() };
        let components = self.kept.into_inner();
        for c in components.keys() {
            let path = format!("{}/config.json", c.dir());
            configs.files.insert(path.clone(), self.inner.read(&path)?);
        }
        Ok(LoraState { configs, components, limits: self.limits, applied: Vec::new() })
    }
}

fn component_of(dir: &str) -> Option<Component> {
    match dir {
        "unet" => Some(Component::Unet),
        "text_encoder" => Some(Component::TextEncoder),
        _ => None,
    }
}

/// The [`ModelSource`] methods that answer with the files of the source in field `$files`:
/// [`Keep`] and [`Rebuild`] differ from their sources only in the weights they hand out.
macro_rules! files_from {
    ($files:ident) => {
        fn read(&self, path: &str) -> Result<Arc<[u8]>> {
            self.$files.read(path)
        }
        fn exists(&self, path: &str) -> bool {
            self.$files.exists(path)
        }
        fn describe(&self) -> String {
            self.$files.describe()
        }
        fn read_range(&self, path: &str, start: u64, len: u64) -> Result<Vec<u8>> {
            self.$files.read_range(path, start, len)
        }
        fn size(&self, path: &str) -> Result<u64> {
            self.$files.size(path)
        }
        fn probe(&self, paths: &[String]) -> Result<Vec<Option<u64>>> {
            self.$files.probe(paths)
        }
    };
}

impl ModelSource for Keep<'_> {
    files_from!(inner);
    fn weights(&self, component: &str, device: &Device, dtype: DType) -> Result<Weights> {
        let weights = self.inner.weights(component, device, dtype)?.with_limits(self.limits);
        // Generated weights (tools/random_model.rs) have no stored tensors to keep: no LoRA there.
        let Some(c) = component_of(component).filter(|_| !weights.is_generated()) else { return Ok(weights) };
        let resident = Resident { name: weights.name.clone(), tensors: weights.resident(component)? };
        drop(weights);
        let out = Weights::from_tensors(resident.name.clone(), resident.tensors.clone(), device)?
            .with_dtype(dtype)
            .with_limits(self.limits);
        self.kept.borrow_mut().insert(c, resident);
        Ok(out)
    }
    fn weights_file(&self, path: &str, device: &Device, dtype: DType) -> Result<Weights> {
        Ok(self.inner.weights_file(path, device, dtype)?.with_limits(self.limits))
    }
}

/// Serves the kept configs and tensors to the components' own loaders for a rebuild.
struct Rebuild<'a> {
    configs: &'a MemorySource,
    components: &'a BTreeMap<Component, Resident>,
    limits: DeviceLimits,
}

impl ModelSource for Rebuild<'_> {
    files_from!(configs);
    fn weights(&self, component: &str, device: &Device, dtype: DType) -> Result<Weights> {
        let r = component_of(component).and_then(|c| self.components.get(&c)).ok_or_else(|| Error::MissingFile {
            path: format!("{}/{component}", self.configs.name),
            hint: Some("not kept for LoRA fusion".into()),
        })?;
        Ok(Weights::from_tensors(r.name.clone(), r.tensors.clone(), device)?.with_dtype(dtype).with_limits(self.limits))
    }
}

/// Module path → stored weight key of a component, under the names a LoRA may use for it:
/// the dotted path and kohya's flattened one, both without the text tower's `text_model.`.
fn module_index(component: Component, tensors: &BTreeMap<String, Uploaded>) -> BTreeMap<String, String> {
    let mut index = BTreeMap::new();
    for (key, (shape, _)) in tensors {
        let Some(module) = key.strip_suffix(".weight") else { continue };
        if !matches!(shape.len(), 2 | 4) {
            continue;
        }
        let module = normalize(component, module);
        index.insert(format!("flat:{}", module.replace('.', "_")), key.clone());
        index.insert(format!("dot:{module}"), key.clone());
    }
    index
}

fn normalize(component: Component, module: &str) -> &str {
    match component {
        Component::TextEncoder => module
            .strip_prefix("text_model.")
            .or_else(|| module.strip_prefix("text_model_"))
            .unwrap_or(module),
        Component::Unet => module,
    }
}

/// Resolves and checks every layer of `file` against the model and puts its factors on the
/// device; the first layer that fits no module is the error.
fn prepare(
    state: &LoraState,
    file: &Arc<LoraFile>,
    scale: f32,
    device: &Device,
    dtype: DType,
) -> Result<Applied> {
    let mut indexes = BTreeMap::new();
    let mut deltas: Vec<Delta> = Vec::new();
    let layers_per_block = state.layers_per_block();
    for layer in &file.layers {
        let c = layer.component;
        let resident = state.components.get(&c).ok_or_else(|| {
            invalid(&file.name, Some(&layer.down), format!("this model's {} cannot take a LoRA", c.dir()))
        })?;
        let index = indexes.entry(c).or_insert_with(|| module_index(c, &resident.tensors));
        let lookup = match &layer.target {
            Target::Module(m) => format!("dot:{}", normalize(c, m)),
            Target::Flat(m) => match (c, layers_per_block.and_then(|l| super::kohya::sgm_to_diffusers(m, l))) {
                (Component::Unet, Some(renamed)) => format!("flat:{renamed}"),
                _ => format!("flat:{}", normalize(c, m)),
            },
        };
        let key = index.get(&lookup).ok_or_else(|| {
            invalid(
                &file.name,
                Some(&layer.down),
                format!(
                    "expected {} module `{}`, which this model does not have (a LoRA for another architecture?)",
                    c.dir(),
                    layer.target.describe()
                ),
            )
        })?;
        if deltas.iter().any(|d| d.component == c && &d.key == key) {
            return Err(invalid(&file.name, Some(&layer.down), format!("a second layer for {} `{key}`", c.dir())));
        }
        let shape = &resident.tensors[key].0;
        let (down_shape, up_shape) = (file.shape(&layer.down), file.shape(&layer.up));
        let (out, width) = (shape[0], shape[1..].iter().product::<usize>());
        let rank = down_shape.first().copied().unwrap_or(0);
        let fits = rank > 0
            && down_shape[1..].iter().product::<usize>() == width
            && (down_shape.len() == shape.len() || down_shape.len() == 2)
            && (down_shape.len() < 4 || down_shape[2..] == shape[2..])
            && up_shape.first() == Some(&out)
            && up_shape.get(1) == Some(&rank)
            && up_shape[2..].iter().all(|&d| d == 1);
        if !fits {
            return Err(invalid(
                &file.name,
                Some(&layer.down),
                format!(
                    "factors {down_shape:?} (down) and {up_shape:?} (up) do not fit {} module `{}` of weight shape {shape:?} \
                     (a LoRA for another architecture?)",
                    c.dir(),
                    key.strip_suffix(".weight").unwrap_or(key)
                ),
            ));
        }
        let upload = |k: &str, dims: [usize; 2]| -> Result<Tensor<2>> {
            Ok(Tensor::<2>::from_data(TensorData::new(file.values(k)?, dims), device).cast(dtype))
        };
        deltas.push(Delta {
            component: c,
            key: key.clone(),
            up: upload(&layer.up, [out, rank])?,
            down: upload(&layer.down, [rank, width])?,
            factor: layer.alpha.map_or(1.0, |a| a / rank as f32),
        });
    }
    Ok(Applied { file: file.clone(), scale, deltas })
}

/// `(adapter, scale)` per weight key: what a weight's fused value depends on.
fn contributions(applied: &[Applied]) -> BTreeMap<(Component, String), Vec<(usize, &Delta, f32)>> {
    let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for a in applied {
        for d in &a.deltas {
            out.entry((d.component, d.key.clone())).or_default().push((Arc::as_ptr(&a.file) as usize, d, a.scale));
        }
    }
    out
}

/// `pieces` (row pieces of a weight of `shape`) with `sign · scale · factor · up · down` added
/// per term, in f32, rounded once to `dtype`.
fn fused(pieces: &[Tensor<1>], shape: &[usize], terms: &[(f32, &Delta, f32)], dtype: DType) -> Vec<Tensor<1>> {
    let width: usize = shape[1..].iter().product();
    let mut start = 0;
    pieces
        .iter()
        .map(|piece| {
            let rows = piece.dims()[0] / width;
            let mut w: Tensor<2> = piece.clone().reshape([rows, width]).cast(DType::F32);
            for &(sign, d, scale) in terms {
                let up = d.up.clone().slice(start..start + rows).cast(DType::F32);
                w = w + up.matmul(d.down.clone().cast(DType::F32)) * (sign * scale * d.factor);
            }
            start += rows;
            w.cast(dtype).reshape([rows * width])
        })
        .collect()
}

impl Pipeline {
    /// The adapters fused into the weights now.
    pub fn loras(&self) -> Vec<LoraInfo> {
        self.lora.applied()
    }

    /// Fuses exactly `loras` (each file with its scale), replacing what was applied before:
    /// only the weights whose adapters or scales change are recomputed, from the device
    /// tensors (no file of the base model is read). `&[]` removes every adapter. On any error
    /// (a key matching no module, factors of the wrong shape, a non-finite scale) nothing
    /// changes and the pipeline stays usable as it was.
    pub fn set_loras(&mut self, loras: &[(Arc<LoraFile>, f32)]) -> Result<Vec<LoraInfo>> {
        let (device, dtype) = (self.device().clone(), self.dtype());
        if let Some((file, scale)) = loras.iter().find(|(_, s)| !s.is_finite()) {
            return Err(invalid(&file.name, None, format!("scale must be a finite number, got {scale}")));
        }
        let new = loras
            .iter()
            .map(|(file, scale)| match self.lora.applied.iter().find(|a| Arc::ptr_eq(&a.file, file)) {
                // Already on the device: only the scale changes.
                Some(a) => Ok(Applied { scale: *scale, ..a.clone() }),
                None => prepare(&self.lora, file, *scale, &device, dtype),
            })
            .collect::<Result<Vec<_>>>()?;
        if new.iter().enumerate().any(|(i, a)| new[..i].iter().any(|b| Arc::ptr_eq(&a.file, &b.file))) {
            return Err(Error::InvalidArgument("the same LoRA file given twice: give it once, with one scale".into()));
        }

        let (old_terms, new_terms) = (contributions(&self.lora.applied), contributions(&new));
        let key = |(p, _, s): &(usize, &Delta, f32)| (*p, s.to_bits());
        let mut components = self.lora.components.clone();
        let mut changed = [false; 2];
        let touched: std::collections::BTreeSet<_> = old_terms.keys().chain(new_terms.keys()).collect();
        for ck in touched {
            let (old, new) = (old_terms.get(ck), new_terms.get(ck));
            let ids = |t: Option<&Vec<(usize, &Delta, f32)>>| t.map(|v| v.iter().map(key).collect::<Vec<_>>());
            if ids(old) == ids(new) {
                continue;
            }
            let terms: Vec<(f32, &Delta, f32)> = old
                .into_iter()
                .flatten()
                .map(|&(_, d, s)| (-1.0, d, s))
                .chain(new.into_iter().flatten().map(|&(_, d, s)| (1.0, d, s)))
                .collect();
            let resident = components.get_mut(&ck.0).expect("prepared against it");
            let (shape, pieces) = resident.tensors.get_mut(&ck.1).expect("resolved against it");
            *pieces = fused(pieces, shape, &terms, dtype);
            changed[ck.0 as usize] = true;
        }

        let src = Rebuild { configs: &self.lora.configs, components: &components, limits: self.lora.limits };
        let text_encoder = if changed[Component::TextEncoder as usize] {
            Some(TextEncoder::load(&src, "text_encoder", &device, dtype)?)
        } else {
            None
        };
        let unet = if changed[Component::Unet as usize] {
            Some(UNet2DConditionModel::from_source(&src, "unet", &device, dtype)?)
        } else {
            None
        };
        if let Some(t) = text_encoder {
            self.text_encoder = t;
        }
        if let Some(u) = unet {
            self.unet = u;
        }
        self.lora.components = components;
        self.lora.applied = new;
        Ok(self.loras())
    }
}
