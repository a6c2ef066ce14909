//! The model-folder rules, in one place: which components of a diffusers-format folder a
//! pipeline runs, which file each of them is read from (single file, shards, `.fp16` variant,
//! original TAESD names), and which files are never touched (`safety_checker/`,
//! `feature_extractor/`, `*.bin`, ...).
//!
//! Both shells use these rules. Natively the loaders ask a [`ModelSource`] directly. The
//! browser cannot block on the network, so it asks for a [`plan`] over a [`KnownFiles`] source:
//! every question the rules ask about a file it has not been told of yet comes back as
//! [`Error::NotYetKnown`], the worker probes those paths (HTTP HEAD, or the picked folder) and
//! asks again, until the plan is complete. A round asks all the paths one step of the rules
//! needs at once, so a plan takes 2–4 rounds, and a path is only asked about when the rules
//! would read it (a `.bin` is probed only when no safetensors exist, to say so clearly).

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::config::{ModelIndex, VaeClass, from_json};
use crate::error::{Error, Result};
use crate::source::{in_folder, ModelSource};
use crate::weights::Header;

/// Pipelines whose `model_index.json` we load.
pub const PIPELINES: [&str; 1] = ["StableDiffusionPipeline"];

/// The components a text-to-image pipeline runs; any other entry of `model_index.json`
/// (`safety_checker`, `feature_extractor`, `image_encoder`, ...) is never read.
pub const RUN: [&str; 5] = ["tokenizer", "text_encoder", "unet", "vae", "scheduler"];

pub const MODEL_INDEX: &str = "model_index.json";
pub const SCHEDULER_CONFIG: &str = "scheduler/scheduler_config.json";

/// Weight file stems in order of preference: diffusers, then transformers naming.
const STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];

/// Pickle checkpoints we never read; probed only to explain why a component has no weights.
const PICKLE_EXTENSIONS: [&str; 2] = ["bin", "ckpt"];

/// Original TAESD checkpoints and their relatives (SDXL, SD3, FLUX latents), by file name.
pub const TAESD_PREFIXES: [&str; 4] = ["taesd", "taesdxl", "taesd3", "taef1"];

/// Tokenizer files a loader may read, besides the vocabulary ([`TokenizerFiles`]).
const TOKENIZER_CONFIGS: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// Checks `model_index.json`: a supported pipeline class with every component it runs.
pub fn read_index(src: &dyn ModelSource) -> Result<ModelIndex> {
    let index = ModelIndex::from_json(&src.read(MODEL_INDEX)?)?;
    if !PIPELINES.contains(&index.class_name.as_str()) {
        return Err(Error::UnsupportedConfig {
            file: MODEL_INDEX.into(),
            field: "_class_name".into(),
            value: format!("{:?}", index.class_name),
            hint: Some(format!("supported: {}", PIPELINES.join(", "))),
        });
    }
    for name in RUN {
        index.component(name)?;
    }
    Ok(index)
}

/// `<dir>/<file>`, or `file` for the folder root.
pub fn join(dir: &str, file: &str) -> String {
    if dir.is_empty() { file.to_string() } else { format!("{dir}/{file}") }
}

/// The first of `candidates` that exists, with its size.
fn first_existing<S: ModelSource + ?Sized>(src: &S, candidates: &[String]) -> Result<Option<(String, u64)>> {
    let sizes = src.probe(candidates)?;
    Ok(candidates.iter().zip(sizes).find_map(|(p, s)| s.map(|s| (p.clone(), s))))
}

/// Which files hold a component's weights, preferring the variant stored in the working
/// `dtype` (F16 → `.fp16` first; otherwise the full-precision file first) so nothing is
/// downloaded twice as large as needed, and converting from the other one when it is all there
/// is. Each as a single file or as the shards of `<name>.safetensors.index.json`.
pub fn weight_files<S: ModelSource + ?Sized>(src: &S, component: &str, dtype: DType) -> Result<Vec<String>> {
    Ok(weight_layout(src, component, dtype)?.1)
}

/// [`weight_files`] with the `*.index.json` that named the shards, if any.
fn weight_layout<S: ModelSource + ?Sized>(src: &S, component: &str, dtype: DType) -> Result<(Option<String>, Vec<String>)> {
    let variants: [&str; 2] = if dtype == DType::F16 { [".fp16", ""] } else { ["", ".fp16"] };
    let mut candidates = Vec::new();
    for variant in variants {
        for stem in STEMS {
            let single = format!("{component}/{stem}{variant}.safetensors");
            candidates.push(format!("{single}.index.json"));
            candidates.push(single);
        }
    }
    // Per name the index comes first: a sharded folder may also keep a stale single file.
    match first_existing(src, &candidates)? {
        Some((path, _)) if path.ends_with(".index.json") => {
            let shards = shard_files(src, component, &path)?;
            Ok((Some(path), shards))
        }
        Some((path, _)) => Ok((None, vec![path])),
        None => Err(no_safetensors(src, component)?),
    }
}

/// The error for a component without safetensors weights, naming pickle files if there are.
fn no_safetensors<S: ModelSource + ?Sized>(src: &S, component: &str) -> Result<Error> {
    let pickles: Vec<String> = STEMS
        .iter()
        .flat_map(|stem| ["", ".fp16"].map(|v| (stem, v)))
        .flat_map(|(stem, v)| PICKLE_EXTENSIONS.map(|ext| format!("{component}/{stem}{v}.{ext}")))
        .collect();
    let found: Vec<String> =
        pickles.iter().zip(src.probe(&pickles)?).filter(|(_, s)| s.is_some()).map(|(p, _)| p.clone()).collect();
    let hint = if found.is_empty() {
        format!("no {} weights (.safetensors, .fp16.safetensors or .safetensors.index.json)", STEMS.join(" / "))
    } else {
        format!(
            "only pickle weights ({}); Inkstone reads safetensors only: convert them (diffusers/transformers \
             `save_pretrained(..., safe_serialization=True)`) or use a revision of the repo with .safetensors files",
            found.join(", ")
        )
    };
    Ok(Error::MissingFile { path: format!("{}/{component}", src.describe()), hint: Some(hint) })
}

/// The distinct shard files named by an `*.index.json` `weight_map`, in first-use order.
fn shard_files<S: ModelSource + ?Sized>(src: &S, component: &str, index: &str) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let parsed: Index = from_json(index, &src.read(index)?)?;
    let mut files: Vec<String> = Vec::new();
    for shard in parsed.weight_map.values() {
        if shard.contains('/') || shard.contains('\\') || !shard.ends_with(".safetensors") {
            return Err(Error::unsupported(index, "weight_map", format!("shard file name {shard:?}")));
        }
        let path = format!("{component}/{shard}");
        if !files.contains(&path) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::unsupported(index, "weight_map", "an empty map"));
    }
    Ok(files)
}

/// How a VAE folder is laid out.
#[derive(Debug, Clone, PartialEq)]
pub enum VaeFiles {
    /// `config.json` (AutoencoderKL / AutoencoderTiny) plus weight files.
    Diffusers,
    /// No config: an original TAESD checkpoint (`taesd_decoder.safetensors`, ...), each file
    /// loaded on its own because its keys clash with the sibling encoder's.
    OriginalTaesd { decoder: String, encoder: Option<String> },
}

pub fn vae_files(src: &dyn ModelSource, dir: &str) -> Result<VaeFiles> {
    let config = join(dir, "config.json");
    if src.probe(std::slice::from_ref(&config))?[0].is_some() {
        return Ok(VaeFiles::Diffusers);
    }
    let decoders: Vec<String> = TAESD_PREFIXES.iter().map(|p| join(dir, &format!("{p}_decoder.safetensors"))).collect();
    let Some((decoder, _)) = first_existing(src, &decoders)? else {
        return Err(Error::MissingFile {
            path: format!("{}/{config}", src.describe()),
            hint: Some("a VAE folder needs config.json (or an original-layout taesd_decoder.safetensors)".into()),
        });
    };
    let encoder = decoder.replace("_decoder.safetensors", "_encoder.safetensors");
    let encoder = src.probe(std::slice::from_ref(&encoder))?[0].map(|_| encoder);
    Ok(VaeFiles::OriginalTaesd { decoder, encoder })
}

/// The float dtype component folder `dir` runs in for a load in `dtype`: a VAE whose config sets
/// `force_upcast` (the default of every `AutoencoderKL`: the SD 1.x/2.x VAEs overflow in f16)
/// runs in f32 even in an f16 load, as diffusers upcasts it before decoding.
pub fn component_dtype(src: &dyn ModelSource, dir: &str, dtype: DType) -> Result<DType> {
    if dtype == DType::F32 {
        return Ok(dtype);
    }
    let path = join(dir, "config.json");
    if src.probe(std::slice::from_ref(&path))?[0].is_none() {
        return Ok(dtype);
    }
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "_class_name")]
        class_name: Option<VaeClass>,
        force_upcast: Option<bool>,
    }
    let head: Head = from_json(&path, &src.read(&path)?)?;
    let upcast = match head.class_name {
        Some(VaeClass::AutoencoderKL) => head.force_upcast.unwrap_or(true),
        Some(VaeClass::AutoencoderTiny) => head.force_upcast.unwrap_or(false),
        // Not a VAE (the U-Net's config, a text encoder's without the key), or one
        // `Autoencoder::load` refuses: nothing to upcast.
        Some(VaeClass::Unsupported(_)) | None => false,
    };
    Ok(if upcast { DType::F32 } else { dtype })
}

/// The vocabulary of a tokenizer folder, in the order transformers' fast tokenizers prefer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenizerFiles {
    /// `tokenizer.json` (a serialised `tokenizers` pipeline).
    Json,
    /// `vocab.json` + `merges.txt` (CLIP BPE).
    ClipVocab,
    /// `vocab.txt` (BERT WordPiece).
    BertVocab,
}

impl TokenizerFiles {
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Self::Json => &["tokenizer.json"],
            Self::ClipVocab => &["vocab.json", "merges.txt"],
            Self::BertVocab => &["vocab.txt"],
        }
    }
}

/// Which vocabulary a tokenizer folder has, and which of its optional config files exist.
pub fn tokenizer_files(src: &dyn ModelSource, dir: &str) -> Result<(TokenizerFiles, Vec<String>)> {
    let names = ["tokenizer.json", "vocab.json", "merges.txt", "vocab.txt"];
    let paths: Vec<String> = names.iter().chain(TOKENIZER_CONFIGS.iter()).map(|n| join(dir, n)).collect();
    let sizes = src.probe(&paths)?;
    let has = |i: usize| sizes[i].is_some();
    let kind = if has(0) {
        TokenizerFiles::Json
    } else if has(1) && has(2) {
        TokenizerFiles::ClipVocab
    } else if has(3) {
        TokenizerFiles::BertVocab
    } else {
        return Err(Error::MissingFile {
            path: format!("{}/{dir}", src.describe()),
            hint: Some(
                "no tokenizer found: looked for tokenizer.json, vocab.json + merges.txt (CLIP BPE) and vocab.txt \
                 (BERT WordPiece)"
                    .into(),
            ),
        });
    };
    let configs = paths[names.len()..].iter().zip(&sizes[names.len()..]).filter(|(_, s)| s.is_some());
    Ok((kind, configs.map(|(p, _)| p.clone()).collect()))
}

/// Stored tensors the pipeline never runs, which checkpoints may or may not carry: the I64
/// index buffers of transformers-4 text encoders (`position_ids`, `token_type_ids`: always
/// `arange` / zeros), BERT's pooler and CLIP's text projection (diffusers uses neither).
/// The browser skips them at upload; natively they are loaded when present and allowed to be
/// absent, and no other leftover tensor is tolerated.
pub fn is_unused_extra(component: &str, key: &str) -> bool {
    if component != "text_encoder" {
        return false;
    }
    let key = key.strip_prefix("text_model.").or_else(|| key.strip_prefix("bert.")).unwrap_or(key);
    is_index_buffer(key) || key.starts_with("pooler.") || key.starts_with("text_projection.")
}

/// Bytes the tensors of one weight file of `component` take on the GPU in a load in `dtype`
/// (the component's own dtype: f32 for a `force_upcast` VAE), the ones never uploaded left
/// out: what the load will allocate for them, known from the header alone, before a download.
pub fn gpu_bytes(src: &dyn ModelSource, component: &str, header: &Header, dtype: DType) -> Result<u64> {
    let elem = component_dtype(src, component, dtype)?.size() as u64;
    Ok(header
        .tensors
        .iter()
        .filter(|(key, _)| !is_unused_extra(component, key))
        .map(|(_, info)| info.shape.iter().product::<usize>() as u64 * elem)
        .sum())
}

/// The non-parameter index buffers of older text-encoder checkpoints (keys without prefix).
pub fn is_index_buffer(key: &str) -> bool {
    matches!(key, "embeddings.position_ids" | "embeddings.token_type_ids")
}

/// What a file of the plan is: a small file handed over whole (configs, vocabularies), or a
/// safetensors file streamed tensor by tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Weights,
}

/// One file the pipeline reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedFile {
    pub path: String,
    /// The unit its tensors are grouped in: the component folder (`unet`), or the file path for
    /// files loaded on their own (`vae/taesd_decoder.safetensors`); `""` for `model_index.json`.
    pub component: String,
    pub kind: FileKind,
    /// Bytes, when the source knows (a server may not say).
    pub size: Option<u64>,
}

/// Every file a load reads, in order, and the listed components it never touches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub files: Vec<PlannedFile>,
    pub skipped: Vec<String>,
}

impl Plan {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().filter_map(|f| f.size).sum()
    }
}

/// The files a load in `dtype` reads from `src`. Components are planned independently, so a
/// [`KnownFiles`] source learns every unknown path of one round at once.
pub fn plan(src: &dyn ModelSource, dtype: DType) -> Result<Plan> {
    let index = read_index(src)?;
    let skipped = index.components.keys().filter(|k| !RUN.contains(&k.as_str())).cloned().collect();
    let mut files = vec![file(src, MODEL_INDEX, "", FileKind::File)?];
    let mut pending = Vec::new();
    for component in RUN {
        match plan_component(src, component, dtype) {
            Ok(mut f) => files.append(&mut f),
            Err(Error::NotYetKnown { paths }) => pending.extend(paths),
            Err(e) => return Err(e),
        }
    }
    if !pending.is_empty() {
        return Err(Error::NotYetKnown { paths: pending });
    }
    Ok(Plan { files, skipped })
}

/// Both results, or the first real error, or every path either is waiting for.
fn both<A, B>(a: Result<A>, b: Result<B>) -> Result<(A, B)> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(Error::NotYetKnown { mut paths }), Err(Error::NotYetKnown { paths: more })) => {
            paths.extend(more);
            Err(Error::NotYetKnown { paths })
        }
        // A definite error wins over a question: the plan cannot succeed anyway.
        (Err(e), Err(Error::NotYetKnown { .. })) | (Err(Error::NotYetKnown { .. }), Err(e)) => Err(e),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

fn file(src: &dyn ModelSource, path: &str, component: &str, kind: FileKind) -> Result<PlannedFile> {
    let size = src.probe(&[path.to_string()])?[0];
    if size.is_none() {
        return Err(Error::MissingFile { path: in_folder(&src.describe(), path), hint: None });
    }
    Ok(PlannedFile { path: path.into(), component: component.into(), kind, size })
}

fn plan_component(src: &dyn ModelSource, component: &str, dtype: DType) -> Result<Vec<PlannedFile>> {
    let small = |path: &str| file(src, path, component, FileKind::File);
    let weights = |path: &str, unit: &str| file(src, path, unit, FileKind::Weights);
    let mut out = Vec::new();
    match component {
        "scheduler" => out.push(small(SCHEDULER_CONFIG)?),
        "tokenizer" => {
            let (vocab, configs) = tokenizer_files(src, component)?;
            for path in configs {
                out.push(small(&path)?);
            }
            for name in vocab.names() {
                out.push(small(&join(component, name))?);
            }
        }
        "vae" => match vae_files(src, component)? {
            VaeFiles::Diffusers => {
                out.push(small(&join(component, "config.json"))?);
                // A force_upcast VAE runs in f32: its full-precision file is the one to fetch.
                let dtype = component_dtype(src, component, dtype)?;
                let (index, paths) = weight_layout(src, component, dtype)?;
                out.extend(index.map(|i| small(&i)).transpose()?);
                for path in paths {
                    out.push(weights(&path, component)?);
                }
            }
            VaeFiles::OriginalTaesd { decoder, encoder } => {
                for path in std::iter::once(decoder).chain(encoder) {
                    out.push(weights(&path, &path)?);
                }
            }
        },
        _ => {
            // Asked together: the config and the weight candidates are probed in one round.
            let (config, (index, paths)) =
                both(small(&join(component, "config.json")), weight_layout(src, component, dtype))?;
            out.push(config);
            out.extend(index.map(|i| small(&i)).transpose()?);
            for path in paths {
                out.push(weights(&path, component)?);
            }
        }
    }
    Ok(out)
}

/// A model folder known only by what the caller has been told: file sizes (`None`: absent)
/// and the bytes of the few JSON files the rules read (`model_index.json`, `*.index.json`).
/// Anything else is answered with [`Error::NotYetKnown`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KnownFiles {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub sizes: BTreeMap<String, Option<u64>>,
    /// UTF-8 text of the JSON files read so far.
    #[serde(default)]
    pub texts: BTreeMap<String, String>,
}

impl ModelSource for KnownFiles {
    fn read(&self, path: &str) -> Result<Arc<[u8]>> {
        if let Some(text) = self.texts.get(path) {
            return Ok(Arc::from(text.as_bytes()));
        }
        match self.sizes.get(path) {
            Some(None) => Err(Error::MissingFile { path: in_folder(&self.name, path), hint: None }),
            _ => Err(Error::NotYetKnown { paths: vec![path.to_string()] }),
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.texts.contains_key(path) || matches!(self.sizes.get(path), Some(Some(_)))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn size(&self, path: &str) -> Result<u64> {
        match (self.texts.get(path), self.sizes.get(path)) {
            (Some(t), _) => Ok(t.len() as u64),
            (_, Some(Some(n))) => Ok(*n),
            (_, Some(None)) => Err(Error::MissingFile { path: in_folder(&self.name, path), hint: None }),
            _ => Err(Error::NotYetKnown { paths: vec![path.to_string()] }),
        }
    }

    fn probe(&self, paths: &[String]) -> Result<Vec<Option<u64>>> {
        let unknown: Vec<String> =
            paths.iter().filter(|p| !self.texts.contains_key(*p) && !self.sizes.contains_key(*p)).cloned().collect();
        if !unknown.is_empty() {
            return Err(Error::NotYetKnown { paths: unknown });
        }
        Ok(paths.iter().map(|p| self.texts.get(p).map(|t| t.len() as u64).or_else(|| self.sizes[p])).collect())
    }
}

/// What the browser's worker does next: fetch these paths (sizes by HEAD; `read` ones whole),
/// or go ahead with a finished plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum PlanStep {
    Probe { probe: Vec<String>, read: Vec<String> },
    Done { plan: Plan },
}

/// One round of planning over what is known so far. A path the rules want to read whole is one
/// whose size is known but whose text is not (`model_index.json`, `*.index.json`).
pub fn plan_step(known: &KnownFiles, dtype: DType) -> Result<PlanStep> {
    match plan(known, dtype) {
        Ok(plan) => Ok(PlanStep::Done { plan }),
        Err(Error::NotYetKnown { paths }) => {
            // `read` only asks for files whose size a probe already gave.
            let (read, probe) = dedup(paths).into_iter().partition(|p| known.sizes.contains_key(p));
            Ok(PlanStep::Probe { probe, read })
        }
        Err(e) => Err(e),
    }
}

fn dedup(paths: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}
