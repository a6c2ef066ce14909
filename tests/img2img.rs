//! Image-to-image against diffusers' own `StableDiffusionImg2ImgPipeline.__call__`
//! (tools/reference/img2img.py): the same 8-bit init image and the same noise, tolerance 1e-3
//! on the [0, 1] image. Both encoders: tiny-sd's AutoencoderKL (posterior mode), tiny-flow's
//! AutoencoderTiny, and an original-layout `taesd_encoder.safetensors`.

use crate::common;

use common::{assert_close, device, fixture, reference};
use inkstone::img2img::InitImage;
use inkstone::limits::DeviceLimits;
use inkstone::pipeline::{GenerateOptions, Pipeline};
use inkstone::source::DirSource;

fn load(model: &str) -> Pipeline {
    Pipeline::load(&DirSource::new(fixture(model)).unwrap(), &device()).unwrap()
}

/// A case's options from its `note`, with its init image and its noise as `latents`.
fn case_options(case: &str) -> (String, GenerateOptions) {
    let r = reference(case);
    let note = r.note();
    let [w, h] = [0, 1].map(|i| note["image"][i].as_u64().unwrap() as usize);
    let u8s = r.u8s("init_image");
    let pixels = u8s.iter().map(|&v| v as f32 / 255.0).collect();
    let opts = GenerateOptions {
        prompt: note["prompt"].as_str().unwrap().into(),
        negative_prompt: note["negative_prompt"].as_str().unwrap().into(),
        steps: Some(note["steps"].as_u64().unwrap() as usize),
        guidance: Some(note["guidance"].as_f64().unwrap() as f32),
        width: note["width"].as_u64().unwrap() as usize,
        height: note["height"].as_u64().unwrap() as usize,
        latents: Some(r.f32s("noise")),
        scheduler: note["scheduler"].as_str().map(String::from),
        init_image: Some(InitImage::new(w, h, pixels).unwrap()),
        strength: note["strength"].as_f64().unwrap(),
        ..GenerateOptions::default()
    };
    (note["model"].as_str().unwrap().to_string(), opts)
}

/// Runs a case; returns (steps run, warnings).
fn check_case(case: &str) -> (usize, Vec<String>) {
    let (model, opts) = case_options(case);
    let pipe = load(&model);
    let mut run = pipe.start(&opts).unwrap();
    let warnings = run.warnings().to_vec();
    let total = run.total_steps();
    let mut seen = Vec::new();
    while !run.is_done() {
        run.step().unwrap();
        seen.push((run.current_step(), run.total_steps()));
    }
    assert_eq!(seen, (1..=total).map(|d| (d, total)).collect::<Vec<_>>(), "{case}: progress");
    assert_close(case, run.decode_checked().unwrap(), reference(case).tensor::<4>("image"), 1e-3);
    (total, warnings)
}

/// `init_timestep = min(int(steps × strength), steps)` steps run.
#[test]
fn kl_encoder_euler_matches_diffusers() {
    assert_eq!(check_case("img2img_sd_euler").0, 3); // 4 × 0.75
}

#[test]
fn kl_encoder_ddim_matches_diffusers() {
    assert_eq!(check_case("img2img_sd_ddim").0, 3); // 5 × 0.6
}

/// DPM-Solver++ 2M starts first-order at the begin index (diffusers' `set_begin_index`).
#[test]
fn kl_encoder_dpm_2m_matches_diffusers() {
    assert_eq!(check_case("img2img_sd_dpm").0, 3); // 6 × 0.5
}

/// One LCM step (2 × 0.5): deterministic, the SDXS/Turbo-style single-step img2img.
#[test]
fn kl_encoder_lcm_one_step_matches_diffusers() {
    assert_eq!(check_case("img2img_sd_lcm").0, 1);
}

/// PLMS: the timesteps (with PLMS' repeated one) sliced at t_start, its warm-up counter from 0.
#[test]
fn kl_encoder_pndm_matches_diffusers() {
    assert_eq!(check_case("img2img_sd_pndm").0, 3); // 4 × 0.7 = 2.8 → 2 of the 5 PLMS timesteps skipped
}

/// A 41×29 image for a 32×24 output: resized as diffusers resizes tensor images (nearest),
/// with a warning (5 × 0.6 = 3 steps).
#[test]
fn other_size_is_resized_with_a_warning() {
    let (steps, warnings) = check_case("img2img_sd_resized");
    assert_eq!(steps, 3);
    assert!(warnings.iter().any(|w| w.contains("41x29") && w.contains("32x24")), "{warnings:?}");
}

/// AutoencoderTiny's encoder (diffusers layout) with flow matching's `scale_noise`.
#[test]
fn tiny_encoder_flow_match_matches_diffusers() {
    assert_eq!(check_case("img2img_flow").0, 4); // 8 × 0.6
}

/// The original TAESD layout: `taesd_encoder.safetensors` next to the decoder.
#[test]
fn original_taesd_encoder_matches_diffusers() {
    assert_eq!(check_case("img2img_taesd_original").0, 2);
}

fn small_img2img(strength: f64, steps: usize) -> GenerateOptions {
    GenerateOptions {
        prompt: "a red house".into(),
        steps: Some(steps),
        width: 32,
        height: 32,
        init_image: Some(InitImage::new(32, 32, vec![0.5; 3 * 32 * 32]).unwrap()),
        strength,
        ..Default::default()
    }
}

#[test]
fn bad_strength_and_too_few_steps_are_errors_naming_them() {
    let pipe = load("tiny-sd");
    for s in [0.0, -0.5, 1.5, f64::NAN] {
        let msg = pipe.start(&small_img2img(s, 4)).err().expect("error").to_string();
        assert!(msg.contains("strength") && msg.contains("(0, 1]"), "{s}: {msg}");
    }
    let msg = pipe.start(&small_img2img(0.2, 4)).err().expect("error").to_string();
    assert!(msg.contains("steps 4") && msg.contains("strength 0.2"), "{msg}");
    // Without an image, strength is not used (text-to-image as before).
    let opts = GenerateOptions { init_image: None, ..small_img2img(5.0, 1) };
    assert!(pipe.start(&opts).is_ok());
}

/// A VAE without encoder weights refuses img2img with a clear message; text-to-image works.
#[test]
fn vae_without_encoder_refuses_img2img_only() {
    let pipe = load("tiny-sd-taesd-decoder-only");
    let msg = pipe.start(&small_img2img(0.5, 2)).err().expect("error").to_string();
    assert!(msg.contains("encoder") && msg.contains("vae") && msg.contains("text-to-image still works"), "{msg}");
    let t2i = GenerateOptions { init_image: None, ..small_img2img(0.5, 1) };
    let image = pipe.generate(&t2i, |_, _| true).unwrap();
    assert_eq!(image.dims(), [1, 3, 32, 32]);
}

/// Without `latents`, the seeded RNG gives the noise (the first draw of the stream), so one
/// seed is one image and another seed another.
#[test]
fn seeded_noise_is_reproducible() {
    let pipe = load("tiny-sd");
    let run = |seed| {
        let opts = GenerateOptions { seed, ..small_img2img(0.5, 2) };
        pipe.generate(&opts, |_, _| true).unwrap().into_data().try_to_vec::<f32>().unwrap()
    };
    let a = run(3);
    assert_eq!(a, run(3));
    assert_ne!(a, run(4));
}

/// The browser's way: the vae built without its encoder tensors (they stay off the GPU), img2img
/// refused until the encoder is attached from them, then diffusers' image (KL, diffusers-layout
/// tiny, original-layout tiny).
#[test]
fn encoder_attached_after_the_load_matches_diffusers() {
    use burn::tensor::DType;
    use inkstone::source::{MemorySource, ModelSource, load_weights};
    use inkstone::vae::is_encoder_tensor;
    use inkstone::weights::{SafetensorsFile, Weights};
    use std::collections::BTreeMap;

    for case in ["img2img_sd_dpm", "img2img_flow", "img2img_taesd_original"] {
        let (model, opts) = case_options(case);
        let disk = DirSource::new(fixture(&model)).unwrap();
        let mut files = MemorySource { name: model.clone(), ..Default::default() };
        for dir in ["", "scheduler", "tokenizer", "text_encoder", "unet", "vae"] {
            for name in disk.list(dir).into_iter().filter(|n| !n.ends_with(".safetensors")) {
                let path = if dir.is_empty() { name } else { format!("{dir}/{name}") };
                files.files.insert(path.clone(), disk.read(&path).unwrap());
            }
        }
        let mut weights = BTreeMap::new();
        for c in ["text_encoder", "unet"] {
            weights.insert(c.to_string(), load_weights(&disk, c, &device()).unwrap());
        }
        let (encoder, original) = if files.exists("vae/config.json") {
            let path = "vae/diffusion_pytorch_model.safetensors";
            let vae = SafetensorsFile::from_bytes(path, disk.read(path).unwrap()).unwrap();
            let part = |enc: bool| {
                let bytes = common::filter_keys(&vae, |k| (is_encoder_tensor(path, k) == enc).then(|| k.to_string()));
                Weights::new(vec![SafetensorsFile::from_bytes(path, bytes).unwrap()], &device()).unwrap()
            };
            weights.insert("vae".to_string(), part(false));
            (part(true), false)
        } else {
            let file = |name: &str| {
                let path = format!("vae/{name}");
                Weights::new(vec![SafetensorsFile::from_bytes(path.clone(), disk.read(&path).unwrap()).unwrap()], &device())
                    .unwrap()
            };
            assert!(is_encoder_tensor("vae/taesd_encoder.safetensors", "0.weight"));
            weights.insert("vae/taesd_decoder.safetensors".to_string(), file("taesd_decoder.safetensors"));
            (file("taesd_encoder.safetensors"), true)
        };
        let mut pipe = inkstone::web::from_parts(&files, weights, &device(), DType::F32, DeviceLimits::NONE).unwrap();
        assert!(!pipe.vae.has_encoder(), "{case}");
        let msg = pipe.start(&opts).err().expect("no encoder yet").to_string();
        assert!(msg.contains("encoder"), "{msg}");
        pipe.vae.attach_encoder(encoder, original).unwrap();
        assert!(pipe.vae.has_encoder());
        let image = pipe.generate(&opts, |_, _| true).unwrap();
        assert_close(&format!("{case} (encoder attached later)"), image, reference(case).tensor::<4>("image"), 1e-3);
    }
}

/// A wrong tensor for the encoder is an error naming it, and the vae stays without encoder.
#[test]
fn attaching_a_wrong_encoder_fails_and_changes_nothing() {
    use inkstone::weights::{SafetensorsFile, Weights};
    let mut pipe = load("tiny-sd-taesd-decoder-only");
    let bytes = std::fs::read(fixture("tiny-sd/vae/diffusion_pytorch_model.safetensors")).unwrap();
    let kl = SafetensorsFile::from_bytes("vae/diffusion_pytorch_model.safetensors", bytes).unwrap();
    let only_encoder = common::filter_keys(&kl, |k| k.starts_with("encoder.").then(|| k.to_string()));
    let w = Weights::new(vec![SafetensorsFile::from_bytes("kl-encoder", only_encoder).unwrap()], &device()).unwrap();
    let msg = pipe.vae.attach_encoder(w, false).expect_err("a KL encoder for a tiny decoder").to_string();
    assert!(msg.contains("kl-encoder"), "{msg}");
    assert!(!pipe.vae.has_encoder());
}
