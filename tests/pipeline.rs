//! End to end against diffusers' own `StableDiffusionPipeline.__call__` (tools/reference/
//! pipelines.py), from the same initial latents: tolerance 1e-3 on the [0, 1] image.

use crate::common;

use common::{assert_close, case_options, device, fixture, reference};
use inkstone::Error;
use inkstone::limits::DeviceLimits;
use inkstone::pipeline::{GenerateOptions, Pipeline};
use inkstone::schedulers::Sampler;
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

/// A folder laid out like the SD-1.x repos (BK-SDM, Taiyi): `PNDMScheduler` with
/// skip_prk_steps, 4 steps (5 U-Net evaluations) under CFG.
#[test]
fn sd1_pndm_layout_matches_diffusers() {
    let pipe = load("tiny-sd-pndm");
    assert_eq!(pipe.scheduler().class_name(), "PNDMScheduler");
    check_case("tiny-sd-pndm", "pipeline_sd_pndm");
}

/// `--scheduler dpm++2m-karras` on the PNDM folder is diffusers'
/// `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)`.
#[test]
fn dpm_2m_karras_override_matches_diffusers() {
    assert_eq!(case_options("pipeline_sd_dpm_karras").scheduler.as_deref(), Some("dpm++2m-karras"));
    check_case("tiny-sd-pndm", "pipeline_sd_dpm_karras");
}

/// Every named sampler runs on the model family it fits, deterministically for a seed
/// (stochastic ones draw from the seeded RNG), and differs from the others.
#[test]
fn every_sampler_runs_and_is_deterministic() {
    let pipe = load("tiny-sd-pndm");
    let mut images: Vec<(String, Vec<f32>)> = Vec::new();
    for (name, _) in Sampler::NAMES.iter().filter(|(n, _)| *n != "flow-euler") {
        let opts = GenerateOptions { scheduler: Some(name.to_string()), steps: Some(3), guidance: Some(1.0), ..small(9) };
        let run = |o: &GenerateOptions| pipe.generate(o, |_, _| true).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let a = run(&opts);
        assert_eq!(a, run(&opts), "{name}: same seed, same image");
        assert!(a.iter().all(|v| v.is_finite()), "{name}: non-finite pixels");
        let mut scheduler = pipe.scheduler_named(Some(name)).unwrap();
        scheduler.set_timesteps(3, None).unwrap();
        if scheduler.needs_noise(0) {
            assert_ne!(a, run(&GenerateOptions { seed: 10, ..opts.clone() }), "{name}: the seed drives the noise");
        }
        for (other, b) in &images {
            assert_ne!(&a, b, "{name} and {other} gave the same image");
        }
        images.push((name.to_string(), a));
    }
    let flow = load("tiny-flow");
    let opts = GenerateOptions { scheduler: Some("flow-euler".into()), steps: Some(2), ..small(1) };
    flow.generate(&opts, |_, _| true).unwrap();
}

#[test]
fn sampler_family_mismatch_is_an_error() {
    let flow = load("tiny-flow");
    let msg = flow.start(&GenerateOptions { scheduler: Some("euler".into()), ..small(0) }).err().expect("error").to_string();
    assert!(msg.contains("flow-matching") && msg.contains("only flow-euler"), "{msg}");
    let sd = load("tiny-sd");
    let msg = sd.start(&GenerateOptions { scheduler: Some("flow-euler".into()), ..small(0) }).err().expect("error").to_string();
    assert!(msg.contains("flow-euler samples flow-matching models only") && msg.contains("EulerDiscreteScheduler"), "{msg}");
    let msg = sd.start(&GenerateOptions { scheduler: Some("heun".into()), ..small(0) }).err().expect("error").to_string();
    assert!(msg.starts_with("unknown scheduler \"heun\" (one of: euler, euler-a, dpm++2m"), "{msg}");
}

/// The override keeps the model's betas, spacing and offsets (diffusers' from_config): DDIM
/// built from the SD-1.x PNDM file steps by N/steps from steps_offset 1, with clip_sample false.
#[test]
fn override_carries_the_models_config() {
    let pipe = load("tiny-sd-pndm");
    let mut ddim = pipe.scheduler_named(Some("ddim")).unwrap();
    ddim.set_timesteps(4, None).unwrap();
    assert_eq!(ddim.timesteps(), [751.0, 501.0, 251.0, 1.0]);
    let inkstone::schedulers::Scheduler::Ddim(d) = &ddim else { panic!("DDIM") };
    // scaled_linear 0.00085..0.012: alphas_cumprod[0] = 1 - 0.00085.
    assert!((d.alphas_cumprod()[0] - (1.0 - 0.00085)).abs() < 1e-7);
}

/// Custom timesteps (SDXS-style one step at 999, DMD2's four) and sigmas, with diffusers'
/// rules for which samplers take them.
#[test]
fn custom_timesteps_and_sigmas() {
    let pipe = load("tiny-sd");
    let with = |scheduler: Option<&str>, timesteps: Option<Vec<f64>>, sigmas: Option<Vec<f64>>| GenerateOptions {
        scheduler: scheduler.map(String::from),
        timesteps,
        sigmas,
        steps: None,
        guidance: Some(1.0),
        ..small(2)
    };
    let run = pipe.start(&with(None, Some(vec![999.0]), None)).unwrap();
    assert_eq!(run.total_steps(), 1);
    for name in ["lcm", "ddpm", "dpm++2m", "euler"] {
        let mut run = pipe.start(&with(Some(name), Some(vec![999.0, 749.0, 499.0, 249.0]), None)).unwrap();
        assert_eq!(run.total_steps(), 4, "{name}");
        while !run.is_done() {
            run.step().unwrap();
        }
    }
    for name in ["ddim", "pndm", "euler-a"] {
        let msg = pipe.start(&with(Some(name), Some(vec![999.0]), None)).err().expect("error").to_string();
        assert!(msg.starts_with("custom timesteps are not supported by"), "{name}: {msg}");
    }
    let msg = pipe.start(&with(Some("dpm++2m-karras"), Some(vec![999.0]), None)).err().expect("error").to_string();
    assert!(msg.contains("cannot be used with use_karras_sigmas"), "{msg}");
    let run = pipe.start(&with(None, None, Some(vec![14.6, 3.0, 0.0]))).unwrap();
    assert_eq!(run.total_steps(), 2);
    let msg = pipe.start(&with(Some("dpm++2m"), None, Some(vec![14.6, 0.0]))).err().expect("error").to_string();
    assert_eq!(msg, "custom sigmas are not supported by DPMSolverMultistepScheduler");
    let msg = pipe.start(&with(None, Some(vec![999.0]), Some(vec![1.0, 0.0]))).err().expect("error").to_string();
    assert_eq!(msg, "give timesteps or sigmas, not both");
    let msg = pipe
        .start(&GenerateOptions { steps: Some(3), ..with(None, Some(vec![999.0, 499.0]), None) })
        .err()
        .expect("error")
        .to_string();
    assert_eq!(msg, "steps 3 does not match the 2 steps of the given timesteps");
    let flow = load("tiny-flow");
    let run = flow.start(&with(None, None, Some(vec![1.0, 0.5]))).unwrap();
    assert_eq!(run.total_steps(), 2);
}

#[test]
fn non_finite_guidance_is_an_error() {
    let pipe = load("tiny-sd");
    let msg = pipe.start(&GenerateOptions { guidance: Some(f32::NAN), ..small(0) }).err().expect("error").to_string();
    assert_eq!(msg, "guidance must be a finite number, got NaN");
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

/// The browser's way in (`inkstone::web::from_parts`): configs in memory, weights handed over per
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
    let pipe = inkstone::web::from_parts(&files, weights, &device(), DType::F32, DeviceLimits::NONE).unwrap();
    let inkstone::vae::Autoencoder::Tiny(tiny) = &pipe.vae else { panic!("expected the tiny decoder") };
    assert!(tiny.encoder.is_some(), "the encoder file was used");
    let image = pipe.generate(&case_options("pipeline_flow"), |_, _| true).unwrap();
    assert_close("from_parts + original TAESD", image, reference("pipeline_flow").tensor::<4>("image"), 1e-3);
}
