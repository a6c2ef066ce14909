//! Folders laid out like the real hub repos (tools/reference/hub_layouts.py): the model-folder
//! rules (`inkstone::folder`) pick exactly the files the pipeline runs, natively and through the
//! browser's round-by-round plan, and the images match diffusers' from the same folder.

use crate::common;

use std::cell::RefCell;
use std::sync::Arc;

use burn::tensor::DType;
use common::{assert_close, case_options, device, fixture, memory, poisoned, reference};
use inkstone::folder::{self, FileKind, KnownFiles, Plan, PlanStep};
use inkstone::pipeline::Pipeline;
use inkstone::source::{DirSource, MemorySource, ModelSource};

fn dir(name: &str) -> DirSource {
    DirSource::new(fixture(name)).unwrap()
}

/// A source that records every path asked about (probed, tested or read).
struct Recording<'a> {
    inner: &'a dyn ModelSource,
    asked: RefCell<Vec<String>>,
    /// The paths read whole.
    reads: RefCell<Vec<String>>,
}

impl<'a> Recording<'a> {
    fn new(inner: &'a dyn ModelSource) -> Self {
        Self { inner, asked: RefCell::default(), reads: RefCell::default() }
    }

    fn note(&self, path: &str) {
        self.asked.borrow_mut().push(path.to_string());
    }

    /// Fails if anything outside what the pipeline runs was touched.
    fn assert_untouched(&self, what: &str) {
        for p in self.asked.borrow().iter() {
            assert!(!p.starts_with("safety_checker/") && !p.starts_with("feature_extractor/"), "{what}: asked for {p}");
            assert!(!p.ends_with(".bin") && !p.ends_with(".ckpt"), "{what}: asked for pickle {p}");
        }
    }
}

impl ModelSource for Recording<'_> {
    fn read(&self, path: &str) -> inkstone::Result<Arc<[u8]>> {
        self.note(path);
        self.reads.borrow_mut().push(path.to_string());
        self.inner.read(path)
    }
    fn exists(&self, path: &str) -> bool {
        self.note(path);
        self.inner.exists(path)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn size(&self, path: &str) -> inkstone::Result<u64> {
        self.note(path);
        self.inner.size(path)
    }
    fn probe(&self, paths: &[String]) -> inkstone::Result<Vec<Option<u64>>> {
        paths.iter().for_each(|p| self.note(p));
        self.inner.probe(paths)
    }
}

fn paths(plan: &Plan, kind: FileKind) -> Vec<&str> {
    plan.files.iter().filter(|f| f.kind == kind).map(|f| f.path.as_str()).collect()
}

#[test]
fn sd1_era_repo_plan_reads_only_what_the_pipeline_runs() {
    let src = dir("tiny-sd1-hub");
    let rec = Recording::new(&src);
    let plan = folder::plan(&rec, DType::F32).unwrap();
    rec.assert_untouched("plan f32");
    assert_eq!(plan.skipped, ["feature_extractor", "safety_checker"]);
    assert_eq!(
        paths(&plan, FileKind::Weights),
        [
            "text_encoder/model.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors"
        ]
    );
    assert_eq!(
        paths(&plan, FileKind::File),
        [
            "model_index.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/special_tokens_map.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "text_encoder/config.json",
            "unet/config.json",
            "vae/config.json",
            "scheduler/scheduler_config.json",
        ]
    );
    let on_disk: u64 =
        plan.files.iter().map(|f| std::fs::metadata(fixture("tiny-sd1-hub").join(&f.path)).unwrap().len()).sum();
    assert_eq!(plan.total_bytes(), on_disk);
}

#[test]
fn f16_loads_take_the_fp16_variant_f32_loads_the_full_file() {
    let plan = folder::plan(&dir("tiny-sd1-hub"), DType::F16).unwrap();
    assert_eq!(
        paths(&plan, FileKind::Weights),
        [
            "text_encoder/model.fp16.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            // AutoencoderKL's `force_upcast` (default true): it runs in f32, so its f32 file.
            "vae/diffusion_pytorch_model.safetensors"
        ]
    );
    // A VAE that may run in f16 takes its fp16 file too.
    let mut no_upcast = memory("tiny-sd1-hub");
    let config = String::from_utf8(no_upcast.files["vae/config.json"].to_vec()).unwrap();
    let config = config.replace("\"force_upcast\": true", "\"force_upcast\": false");
    no_upcast.files.insert("vae/config.json".into(), Arc::from(config.as_bytes()));
    let plan = folder::plan(&no_upcast, DType::F16).unwrap();
    assert!(paths(&plan, FileKind::Weights).contains(&"vae/diffusion_pytorch_model.fp16.safetensors"));
    // Only one variant present: it is used whatever the dtype (converted at load).
    let mut only_fp16 = memory("tiny-sd1-hub");
    only_fp16.files.remove("unet/diffusion_pytorch_model.safetensors");
    let f32_plan = folder::plan(&only_fp16, DType::F32).unwrap();
    assert!(paths(&f32_plan, FileKind::Weights).contains(&"unet/diffusion_pytorch_model.fp16.safetensors"));
    let mut only_full = memory("tiny-sd1-hub");
    only_full.files.remove("unet/diffusion_pytorch_model.fp16.safetensors");
    let f16_plan = folder::plan(&only_full, DType::F16).unwrap();
    assert!(paths(&f16_plan, FileKind::Weights).contains(&"unet/diffusion_pytorch_model.safetensors"));
}

/// What the browser's worker does: answer each round's probes and reads from `src`.
fn plan_in_rounds(src: &dyn ModelSource, dtype: DType) -> (inkstone::Result<Plan>, usize, Vec<String>) {
    let mut known = KnownFiles { name: src.describe(), ..Default::default() };
    let index = String::from_utf8(src.read("model_index.json").unwrap().to_vec()).unwrap();
    known.sizes.insert("model_index.json".into(), Some(index.len() as u64));
    known.texts.insert("model_index.json".into(), index);
    let mut asked = Vec::new();
    for round in 1..=12 {
        match folder::plan_step(&known, dtype) {
            Err(e) => return (Err(e), round, asked),
            Ok(PlanStep::Done { plan }) => return (Ok(plan), round, asked),
            Ok(PlanStep::Probe { probe, read }) => {
                assert!(!probe.is_empty() || !read.is_empty(), "round {round} asks for nothing");
                for p in probe {
                    assert!(!known.sizes.contains_key(&p), "{p} probed twice");
                    let size = src.probe(std::slice::from_ref(&p)).unwrap()[0];
                    known.sizes.insert(p.clone(), size);
                    asked.push(p);
                }
                for p in read {
                    known.texts.insert(p.clone(), String::from_utf8(src.read(&p).unwrap().to_vec()).unwrap());
                    asked.push(p);
                }
            }
        }
    }
    panic!("the plan did not settle in 12 rounds");
}

#[test]
fn the_browser_plan_in_rounds_equals_the_native_plan() {
    for (name, dtype) in [("tiny-sd1-hub", DType::F32), ("tiny-sd1-hub", DType::F16), ("tiny-flow-hub", DType::F32),
        ("tiny-sd", DType::F32), ("tiny-taesd-original-pair", DType::F32)]
    {
        let src = if name == "tiny-taesd-original-pair" { taesd_pair_model() } else { memory(name) };
        let (plan, rounds, asked) = plan_in_rounds(&src, dtype);
        let plan = plan.unwrap();
        assert_eq!(plan, folder::plan(&src, dtype).unwrap(), "{name} {dtype:?}");
        assert!(rounds <= 4, "{name}: {rounds} rounds");
        let rec = Recording::new(&src);
        rec.asked.replace(asked);
        rec.assert_untouched(name);
    }
}

/// tiny-sd with its vae/ replaced by the original-layout TAESD pair (no config.json).
fn taesd_pair_model() -> MemorySource {
    let mut m = memory("tiny-sd");
    m.files.retain(|k, _| !k.starts_with("vae/"));
    for (k, v) in memory("tiny-taesd-original-pair").files {
        m.files.insert(format!("vae/{k}"), v);
    }
    m
}

#[test]
fn original_taesd_files_are_planned_per_file() {
    let plan = folder::plan(&taesd_pair_model(), DType::F32).unwrap();
    let vae: Vec<(&str, &str)> = plan
        .files
        .iter()
        .filter(|f| f.path.starts_with("vae/"))
        .map(|f| (f.path.as_str(), f.component.as_str()))
        .collect();
    assert_eq!(
        vae,
        [
            ("vae/taesd_decoder.safetensors", "vae/taesd_decoder.safetensors"),
            ("vae/taesd_encoder.safetensors", "vae/taesd_encoder.safetensors")
        ]
    );
}

#[test]
fn sharded_weights_are_planned_through_their_index() {
    let mut m = memory("tiny-sd1-hub");
    let unet = m.files.remove("unet/diffusion_pytorch_model.safetensors").unwrap();
    m.files.remove("unet/diffusion_pytorch_model.fp16.safetensors");
    let index = r#"{"metadata": {}, "weight_map": {"conv_in.weight": "diffusion_pytorch_model-00001-of-00001.safetensors"}}"#;
    m.files.insert("unet/diffusion_pytorch_model.safetensors.index.json".into(), Arc::from(index.as_bytes()));
    m.files.insert("unet/diffusion_pytorch_model-00001-of-00001.safetensors".into(), unet);
    let (plan, rounds, _) = plan_in_rounds(&m, DType::F32);
    let plan = plan.unwrap();
    assert!(paths(&plan, FileKind::Weights).contains(&"unet/diffusion_pytorch_model-00001-of-00001.safetensors"));
    assert!(paths(&plan, FileKind::File).contains(&"unet/diffusion_pytorch_model.safetensors.index.json"));
    assert!(rounds <= 4, "{rounds} rounds");
    assert_eq!(plan, folder::plan(&m, DType::F32).unwrap());
}

#[test]
fn pickle_only_weights_say_that_inkstone_reads_safetensors_only() {
    let mut m = memory("tiny-sd1-hub");
    m.files.remove("unet/diffusion_pytorch_model.safetensors");
    m.files.remove("unet/diffusion_pytorch_model.fp16.safetensors");
    for result in [folder::plan(&m, DType::F32), plan_in_rounds(&m, DType::F32).0] {
        let msg = result.unwrap_err().to_string();
        assert!(msg.contains("tiny-sd1-hub/unet"), "{msg}");
        assert!(msg.contains("only pickle weights (unet/diffusion_pytorch_model.bin)"), "{msg}");
        assert!(msg.contains("Inkstone reads safetensors only"), "{msg}");
    }
    let msg = Pipeline::load(&m, &device()).err().unwrap().to_string();
    assert!(msg.contains("only pickle weights"), "{msg}");
}

#[test]
fn a_component_the_pipeline_runs_must_be_listed() {
    let mut m = memory("tiny-sd1-hub");
    let index = String::from_utf8(m.files["model_index.json"].to_vec()).unwrap().replace("\"unet\"", "\"unet_x\"");
    m.files.insert("model_index.json".into(), Arc::from(index.as_bytes()));
    let msg = folder::plan(&m, DType::F32).unwrap_err().to_string();
    assert!(msg.contains("model_index.json: component `unet`"), "{msg}");
}

#[test]
fn sd1_era_repo_generates_diffusers_image_with_its_own_pndm() {
    let src = memory("tiny-sd1-hub");
    let rec = Recording::new(&src);
    let pipe = Pipeline::load(&rec, &device()).unwrap();
    rec.assert_untouched("Pipeline::load");
    assert!(rec.reads.borrow().contains(&"unet/diffusion_pytorch_model.safetensors".to_string()));
    assert!(!rec.reads.borrow().iter().any(|p| p.contains(".fp16.")), "an f32 load read an fp16 file");
    let image = pipe.generate(&case_options("hub_sd1_pndm"), |_, _| true).unwrap();
    assert_close("hub_sd1_pndm", image, reference("hub_sd1_pndm").tensor::<4>("image"), 1e-3);
}

/// `--scheduler euler` on the PNDM repo is diffusers' `EulerDiscreteScheduler.from_config`.
fn euler_options() -> inkstone::pipeline::GenerateOptions {
    inkstone::pipeline::GenerateOptions { scheduler: Some("euler".into()), ..case_options("hub_sd1_euler") }
}

#[test]
fn sd1_era_repo_with_the_euler_override_generates_diffusers_image() {
    let pipe = Pipeline::load(&dir("tiny-sd1-hub"), &device()).unwrap();
    let image = pipe.generate(&euler_options(), |_, _| true).unwrap();
    assert_close("hub_sd1_euler", image, reference("hub_sd1_euler").tensor::<4>("image"), 1e-3);
}

#[test]
fn sd1_era_repo_in_f16_reads_the_fp16_files() {
    let src = dir("tiny-sd1-hub");
    let rec = Recording::new(&src);
    let pipe = Pipeline::load_with_dtype(&rec, &device(), DType::F16).unwrap();
    assert_eq!(pipe.dtype(), DType::F16);
    let reads = rec.reads.borrow().clone();
    for c in ["text_encoder/model", "unet/diffusion_pytorch_model"] {
        assert!(reads.contains(&format!("{c}.fp16.safetensors")), "{c}: fp16 variant not read: {reads:?}");
        assert!(!reads.contains(&format!("{c}.safetensors")), "{c}: the f32 file was read too");
    }
    // The VAE upcasts (force_upcast): f32 weights from the f32 file.
    assert!(reads.contains(&"vae/diffusion_pytorch_model.safetensors".to_string()));
    assert!(!reads.contains(&"vae/diffusion_pytorch_model.fp16.safetensors".to_string()));
    let image = pipe.generate(&euler_options(), |_, _| true).unwrap();
    assert_close("hub_sd1_euler f16", image, reference("hub_sd1_euler").tensor::<4>("image"), 1e-2);
}

#[test]
fn bert_tower_without_pooler_and_with_index_buffers_generates_diffusers_image() {
    let src = dir("tiny-flow-hub");
    let pipe = Pipeline::load(&src, &device()).unwrap();
    let image = pipe.generate(&case_options("hub_flow"), |_, _| true).unwrap();
    assert_close("hub_flow", image, reference("hub_flow").tensor::<4>("image"), 1e-3);
}

#[test]
fn a_stored_tensor_nothing_claims_is_still_an_error() {
    use inkstone::weights::Header;
    let mut m = memory("tiny-flow-hub");
    let path = "text_encoder/model.safetensors";
    let bytes = m.files[path].to_vec();
    let header = Header::parse(path, &bytes, bytes.len() as u64).unwrap();
    // Re-write the file with one extra tensor, `encoder.extra.weight`.
    let mut entries: Vec<(String, serde_json::Value, Vec<u8>)> = header
        .tensors
        .iter()
        .map(|(k, t)| {
            let v = serde_json::json!({ "dtype": t.dtype.name(), "shape": t.shape });
            (k.clone(), v, bytes[t.start..t.end].to_vec())
        })
        .collect();
    entries.push(("encoder.extra.weight".into(), serde_json::json!({ "dtype": "F32", "shape": [1] }), vec![0; 4]));
    m.files.insert(path.into(), Arc::from(write_safetensors(entries)));
    let msg = Pipeline::load(&m, &device()).err().unwrap().to_string();
    assert_eq!(msg, format!("{path}: unexpected tensor `encoder.extra.weight`"));
}

fn write_safetensors(entries: Vec<(String, serde_json::Value, Vec<u8>)>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (k, mut v, bytes) in entries {
        v["data_offsets"] = serde_json::json!([data.len(), data.len() + bytes.len()]);
        data.extend(bytes);
        header.insert(k, v);
    }
    let mut json = serde_json::to_string(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json.as_bytes());
    out.extend(data);
    out
}

#[test]
fn unused_extras_are_known_by_component_and_key() {
    for key in ["text_model.embeddings.position_ids", "embeddings.token_type_ids", "pooler.dense.weight",
        "bert.pooler.dense.bias", "text_projection.weight"]
    {
        assert!(folder::is_unused_extra("text_encoder", key), "{key}");
    }
    for (component, key) in [("text_encoder", "embeddings.word_embeddings.weight"), ("unet", "pooler.dense.weight"),
        ("text_encoder", "encoder.layer.0.output.dense.weight")]
    {
        assert!(!folder::is_unused_extra(component, key), "{component} {key}");
    }
}

#[test]
fn a_nan_image_is_an_error_naming_the_component() {
    let opts = case_options("hub_sd1_pndm");
    let unet = poisoned("tiny-sd1-hub", "unet/diffusion_pytorch_model.safetensors", "conv_out.bias");
    let msg = Pipeline::load(&unet, &device()).unwrap().generate(&opts, |_, _| true).err().unwrap().to_string();
    assert!(msg.starts_with("the unet produced non-finite values (NaN or infinity), so there is no image"), "{msg}");
    let vae = poisoned("tiny-sd1-hub", "vae/diffusion_pytorch_model.safetensors", "decoder.conv_out.bias");
    let msg = Pipeline::load(&vae, &device()).unwrap().generate(&opts, |_, _| true).err().unwrap().to_string();
    assert!(msg.starts_with("the vae produced non-finite values"), "{msg}");
    assert!(msg.contains("it ran in f32"), "{msg}");
    // Finite weights, finite image: no false alarm (the other tests generate the same way).
}

#[test]
fn a_prompt_over_the_token_limit_is_cut_with_a_warning() {
    let pipe = Pipeline::load(&dir("tiny-sd1-hub"), &device()).unwrap();
    let long = "a watercolor painting of a lighthouse at dawn, ".repeat(12);
    let opts = inkstone::pipeline::GenerateOptions { prompt: long, steps: Some(1), width: 64, height: 64, ..Default::default() };
    let run = pipe.start(&opts).unwrap();
    assert_eq!(run.warnings().len(), 1, "{:?}", run.warnings());
    assert!(run.warnings()[0].starts_with("the prompt is longer than the text encoder's 77 tokens: its last "), "{:?}", run.warnings());
    let short = inkstone::pipeline::GenerateOptions { prompt: "a cat".into(), ..opts };
    assert!(pipe.start(&short).unwrap().warnings().is_empty());
}

#[test]
fn a_tokenizer_longer_than_the_position_table_is_rejected_at_load() {
    let mut m = memory("tiny-sd1-hub");
    let config = String::from_utf8(m.files["tokenizer/tokenizer_config.json"].to_vec()).unwrap();
    let config = config.replace("\"model_max_length\": 77", "\"model_max_length\": 1000000");
    assert!(config.contains("1000000"));
    m.files.insert("tokenizer/tokenizer_config.json".into(), Arc::from(config.as_bytes()));
    let msg = Pipeline::load(&m, &device()).err().unwrap().to_string();
    assert!(msg.contains("model_max_length") && msg.contains("at most 77 positions"), "{msg}");
}
