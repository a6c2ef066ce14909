//! End to end against diffusers' own `StableDiffusionPipeline.__call__` (tools/reference/
//! pipelines.py), from the same initial latents: tolerance 1e-3 on the [0, 1] image.

mod common;

use common::{assert_close, case_options, device, fixture, reference};
use inkstone::Error;
use inkstone::pipeline::{GenerateOptions, Pipeline};
use inkstone::source::DirSource;

fn load(model: &str) -> Pipeline {
    Pipeline::load(&DirSource::new(fixture(model)).unwrap(), &device()).unwrap()
}

fn check_case(model: &str, case: &str) {
    let pipe = load(model);
    let mut steps_seen = Vec::new();
    let image = pipe
        .generate(&case_options(case), |done, total| {
            steps_seen.push((done, total));
            true
        })
        .unwrap();
    let total = steps_seen[0].1;
    assert_eq!(steps_seen, (1..=total).map(|d| (d, total)).collect::<Vec<_>>());
    assert_close(case, image, reference(case).tensor::<4>("image"), 1e-3);
}

#[test]
fn stable_diffusion_clip_kl_euler_cfg_matches_diffusers() {
    check_case("tiny-sd", "pipeline_sd");
}

#[test]
fn odd_latent_size_and_chinese_emoji_prompt_match_diffusers() {
    check_case("tiny-sd", "pipeline_sd_odd");
}

#[test]
fn flow_matching_bert_chinese_taesd_cfg_matches_diffusers() {
    check_case("tiny-flow", "pipeline_flow");
}

fn small(seed: u64) -> GenerateOptions {
    GenerateOptions { prompt: "a red house".into(), steps: Some(2), seed, width: 64, height: 64, ..Default::default() }
}

#[test]
fn same_seed_same_image_other_seed_other_image() {
    let pipe = load("tiny-sd");
    let a = pipe.generate(&small(5), |_, _| true).unwrap().into_data();
    let b = pipe.generate(&small(5), |_, _| true).unwrap().into_data();
    let c = pipe.generate(&small(6), |_, _| true).unwrap().into_data();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn size_not_a_multiple_of_the_scale_factor_is_an_error() {
    let pipe = load("tiny-sd");
    let opts = GenerateOptions { width: 60, ..small(0) };
    let msg = pipe.start(&opts).err().expect("error").to_string();
    assert_eq!(msg, "width 60 is not a positive multiple of 8 (the decoder's scale factor)");
}

#[test]
fn wrong_latent_count_is_an_error() {
    let pipe = load("tiny-sd");
    let opts = GenerateOptions { latents: Some(vec![0.0; 10]), ..small(0) };
    let msg = pipe.start(&opts).err().expect("error").to_string();
    assert!(msg.contains("latents have 10 values, expected 256"), "{msg}");
}

#[test]
fn cancel_between_steps() {
    let pipe = load("tiny-sd");
    let mut calls = 0;
    let r = pipe.generate(&GenerateOptions { steps: Some(5), ..small(1) }, |_, _| {
        calls += 1;
        calls < 2
    });
    assert!(matches!(r, Err(Error::Cancelled)));
    assert_eq!(calls, 2);
}

#[test]
fn previews_come_from_the_tiny_decoder_only() {
    let flow = load("tiny-flow");
    let mut run = flow.start(&GenerateOptions { steps: Some(2), ..small(0) }).unwrap();
    run.step().unwrap();
    let preview = run.preview().expect("tiny decoder gives previews");
    assert_eq!(preview.dims(), [1, 3, 64, 64]);
    let sd = load("tiny-sd");
    let run = sd.start(&small(0)).unwrap();
    assert!(run.preview().is_none());
}

/// The browser's way in (`Pipeline::from_parts`): configs in memory, weights handed over per
/// component, and a decoder in the original TAESD layout handed over per file
/// (`vae/taesd_decoder.safetensors` + `vae/taesd_encoder.safetensors`, no `vae/config.json`):
/// the same image as diffusers with the diffusers-layout decoder.
#[test]
fn from_parts_with_an_original_layout_taesd_matches_diffusers() {
    use std::collections::BTreeMap;
    use burn::tensor::DType;
    use inkstone::source::{MemorySource, ModelSource, load_weights};
    use inkstone::weights::{SafetensorsFile, Weights};

    let disk = DirSource::new(fixture("tiny-flow")).unwrap();
    let mut files = MemorySource { name: "tiny-flow (parts)".into(), ..Default::default() };
    for dir in ["", "scheduler", "tokenizer", "text_encoder", "unet"] {
        for name in disk.list(dir).into_iter().filter(|n| !n.ends_with(".safetensors")) {
            let path = if dir.is_empty() { name } else { format!("{dir}/{name}") };
            files.files.insert(path.clone(), disk.read(&path).unwrap());
        }
    }
    assert!(files.exists("model_index.json") && files.exists("unet/config.json") && !files.exists("vae/config.json"));

    let vae = SafetensorsFile::from_bytes("vae", disk.read("vae/diffusion_pytorch_model.safetensors").unwrap()).unwrap();
    // diffusers `decoder.layers.{i}` is the original `{i + 1}`; `encoder.layers.{i}` is `{i}`.
    let original = |part: &str, shift: usize| {
        common::filter_keys(&vae, |k| {
            let rest = k.strip_prefix(&format!("{part}.layers."))?;
            let (i, rest) = rest.split_once('.')?;
            Some(format!("{}.{rest}", i.parse::<usize>().ok()? + shift))
        })
    };
    let mut weights = BTreeMap::new();
    for c in ["text_encoder", "unet"] {
        weights.insert(c.to_string(), load_weights(&disk, c, &device()).unwrap());
    }
    for (file, part, shift) in [("vae/taesd_decoder.safetensors", "decoder", 1), ("vae/taesd_encoder.safetensors", "encoder", 0)] {
        let w = Weights::new(vec![SafetensorsFile::from_bytes(file, original(part, shift)).unwrap()], &device()).unwrap();
        weights.insert(file.to_string(), w);
    }
    let pipe = Pipeline::from_parts(&files, weights, &device(), DType::F32).unwrap();
    let inkstone::vae::Autoencoder::Tiny(tiny) = &pipe.decoder else { panic!("expected the tiny decoder") };
    assert!(tiny.encoder.is_some(), "the encoder file was used");
    let image = pipe.generate(&case_options("pipeline_flow"), |_, _| true).unwrap();
    assert_close("from_parts + original TAESD", image, reference("pipeline_flow").tensor::<4>("image"), 1e-3);
}
