//! Writes a diffusers-format model folder with seeded random weights at real tensor sizes, so
//! real-size checks (the browser under WebGPU's default limits, `scripts/scale-check.sh`) need
//! no checkpoint and no big committed file:
//!
//! `cargo run --example random-model -- <preset> <out-dir> [f16|f32]`
//!
//! Presets (configs from the published repos, see docs/models.md and tools/hub-configs/):
//! - `worst-case`: few layers, but the family's largest weights: CLIP-L's 49408×768 token table
//!   (152 MB in f32, over the 128 MiB default binding), 1280-channel 3×3 convs (2560→1280 in the
//!   up block: 118 MB in f32), attention at the first level (4096 tokens at 512², 9216 at 768²)
//!   and a 64-channel TAESD (151 MB activations at 768²); levels 0-1 only 32/64 channels wide.
//! - `sdxs`: IDKiro/sdxs-512-dreamshaper's shapes (CLIP-L, 0.32B U-Net without mid block, TAESD).
//! - `bk-sdm-tiny`: nota-ai/bk-sdm-tiny's U-Net config with CLIP-L and the SD KL VAE.
//! - `three-level`: SD-1.5's U-Net without its last level (320/640/1280, two layers per block,
//!   the cross-attention mid block: 17 ResNets, 11 transformer blocks, 0.45B), CLIP-L, TAESD:
//!   the dispatch-count model of docs/performance.md.
//!
//! The tensors written are exactly those the loaders ask for: the pipeline is built once over
//! generated weights ([`Weights::generated`]) that record every request.

#[path = "../benches/random_weights.rs"]
#[allow(dead_code)] // random_weights(): the benches use it, this tool writes files
mod random_weights;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use burn::tensor::{DType, Device};
use inkstone::pipeline::Pipeline;
use inkstone::source::{DirSource, MemorySource, ModelSource};
use inkstone::weights::Weights;
use serde_json::{Value, json};

type Requests = Rc<RefCell<Vec<(String, Vec<usize>)>>>;

/// The configs in memory; every component's weights generated and recorded.
struct Recording {
    files: MemorySource,
    requests: RefCell<BTreeMap<String, Requests>>,
}

impl ModelSource for Recording {
    fn read(&self, path: &str) -> inkstone::Result<Arc<[u8]>> {
        self.files.read(path)
    }
    fn exists(&self, path: &str) -> bool {
        self.files.exists(path)
    }
    fn describe(&self) -> String {
        self.files.describe()
    }
    fn weights(&self, component: &str, device: &Device, dtype: DType) -> inkstone::Result<Weights> {
        let seen: Requests = Rc::default();
        self.requests.borrow_mut().insert(component.to_string(), seen.clone());
        let record = move |key: &str, shape: &[usize]| {
            seen.borrow_mut().push((key.to_string(), shape.to_vec()));
            vec![0.0; shape.iter().product()]
        };
        Ok(Weights::generated(component, Box::new(record), device).with_dtype(dtype))
    }
}

fn clip_l(layers: usize) -> Value {
    json!({
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_act": "quick_gelu",
        "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": layers,
        "max_position_embeddings": 77, "vocab_size": 49408, "layer_norm_eps": 1e-5, "projection_dim": 768,
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1
    })
}

fn unet(blocks: [&[&str]; 2], layers: usize, mid: Option<&str>, heads: usize) -> Value {
    json!({
        "_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": 4, "out_channels": 4,
        "block_out_channels": [320, 640, 1280], "down_block_types": blocks[0], "up_block_types": blocks[1],
        "layers_per_block": layers, "mid_block_type": mid, "attention_head_dim": heads,
        "cross_attention_dim": 768, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
        "flip_sin_to_cos": true, "freq_shift": 0, "use_linear_projection": false
    })
}

fn taesd() -> Value {
    json!({
        "_class_name": "AutoencoderTiny", "act_fn": "relu", "in_channels": 3, "out_channels": 3,
        "encoder_block_out_channels": [64, 64, 64, 64], "decoder_block_out_channels": [64, 64, 64, 64],
        "num_encoder_blocks": [1, 3, 3, 3], "num_decoder_blocks": [3, 3, 3, 1], "latent_channels": 4,
        "upsampling_scaling_factor": 2, "latent_magnitude": 3, "latent_shift": 0.5,
        "scaling_factor": 1.0, "force_upcast": false
    })
}

fn sd_kl() -> Value {
    json!({
        "_class_name": "AutoencoderKL", "act_fn": "silu", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "sample_size": 512, "scaling_factor": 0.18215, "force_upcast": true
    })
}

/// (text encoder, U-Net, VAE) configs of a preset.
fn preset(name: &str) -> Option<(Value, Value, Value)> {
    Some(match name {
        "worst-case" => {
            // Narrow first levels keep the arithmetic small enough for a CPU-emulated GPU
            // (SwiftShader); the weights are the real sizes.
            let mut unet = unet(
                [&["CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"], &["UpBlock2D", "UpBlock2D", "UpBlock2D"]],
                1,
                None,
                8,
            );
            unet["block_out_channels"] = json!([32, 64, 1280]);
            (clip_l(1), unet, taesd())
        }
        "sdxs" => (
            clip_l(12),
            unet(
                [
                    &["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                    &["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                ],
                1,
                None,
                8,
            ),
            taesd(),
        ),
        "three-level" => (
            clip_l(12),
            unet(
                [
                    &["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                    &["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                ],
                2,
                Some("UNetMidBlock2DCrossAttn"),
                8,
            ),
            taesd(),
        ),
        "bk-sdm-tiny" => {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/hub-configs/nota-ai__bk-sdm-tiny/unet/config.json");
            (clip_l(12), serde_json::from_slice(&std::fs::read(path).ok()?).ok()?, sd_kl())
        }
        _ => return None,
    })
}

/// The model folder's small files: configs, a CLIP tokenizer (the tiny-sd fixture's: the real
/// 49408-entry vocabulary), Euler.
fn folder_files(text: &Value, unet: &Value, vae: &Value) -> BTreeMap<String, Arc<[u8]>> {
    let vae_class = vae["_class_name"].as_str().unwrap();
    let index = json!({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.27.0",
        "tokenizer": ["transformers", "CLIPTokenizer"], "text_encoder": ["transformers", "CLIPTextModel"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", vae_class],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "safety_checker": [null, null], "feature_extractor": [null, null]
    });
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd");
    let fixture = DirSource::new(&fixture).expect("tests/fixtures/tiny-sd");
    let mut files: BTreeMap<String, Arc<[u8]>> = BTreeMap::new();
    let mut put = |path: &str, v: &Value| files.insert(path.into(), serde_json::to_vec_pretty(v).unwrap().into());
    put("model_index.json", &index);
    put("text_encoder/config.json", text);
    put("unet/config.json", unet);
    put("vae/config.json", vae);
    for f in ["scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"] {
        files.insert(f.into(), fixture.read(f).expect("fixture file"));
    }
    files
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: random-model <worst-case|sdxs|bk-sdm-tiny|three-level> <out-dir> [f16|f32]";
    let (Some(name), Some(out)) = (args.first(), args.get(1)) else { panic!("{usage}") };
    let f16 = args.get(2).is_none_or(|d| d == "f16");
    let (text, unet, vae) = preset(name).unwrap_or_else(|| panic!("unknown preset {name:?}; {usage}"));
    let files = folder_files(&text, &unet, &vae);
    let src = Recording { files: MemorySource { name: name.clone(), files: files.clone() }, requests: RefCell::default() };
    // Built once on the CPU: the loaders ask for every tensor the folder must hold.
    Pipeline::load(&src, &Device::flex()).unwrap_or_else(|e| panic!("{name}: {e}"));

    let out = Path::new(out);
    for (path, bytes) in &files {
        let file = out.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
    let mut total = 0usize;
    for (component, requests) in src.requests.borrow().iter() {
        let file = if component == "text_encoder" { "model.safetensors" } else { "diffusion_pytorch_model.safetensors" };
        // CLIPTextModel checkpoints carry no projection (only ...WithProjection ones do); the
        // generated weights offer every optional tensor, so it is left out here.
        let mut requests = requests.borrow().clone();
        requests.retain(|(key, _)| key != "text_projection.weight");
        let bytes = safetensors_file(component, &requests, f16);
        total += bytes.len();
        std::fs::write(out.join(component).join(file), bytes).unwrap();
    }
    eprintln!("{name}: wrote {} ({:.1} MB of weights, {})", out.display(), total as f64 / 1e6, if f16 { "f16" } else { "f32" });
}

/// One safetensors file of `tensors` with [`random_weights::random_values`] (seeded by
/// component and key), stored in f16 or f32.
fn safetensors_file(component: &str, tensors: &[(String, Vec<usize>)], f16: bool) -> Vec<u8> {
    let seed = component.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let elem = if f16 { 2 } else { 4 };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (key, shape) in tensors {
        let n = shape.iter().product::<usize>() * elem;
        header.insert(key.clone(), json!({ "dtype": if f16 { "F16" } else { "F32" }, "shape": shape, "data_offsets": [offset, offset + n] }));
        offset += n;
    }
    let mut head = serde_json::to_vec(&header).unwrap();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (key, shape) in tensors {
        for v in random_weights::random_values(seed, key, shape) {
            if f16 {
                out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
            } else {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    out
}
