//! LoRA adapters fused at load, against diffusers' `load_lora_weights` + `fuse_lora(lora_scale)`
//! (tools/reference/lora.py): random-weight adapters in each layout, end to end ≤ 1e-3 at f32;
//! re-fusing after a change of set or scale; bad files; the base model usable after any error.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::{assert_close, case_options, device, fixture, max_abs_diff, reference};
use burn::tensor::{DType, Tensor};
use inkstone::Error;
use inkstone::lora::{LoraFile, LoraFormat};
use inkstone::pipeline::{GenerateOptions, Pipeline, gaussian};
use inkstone::source::DirSource;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn load(model: &str, dtype: DType) -> Pipeline {
    Pipeline::load_with_dtype(&DirSource::new(fixture(model)).unwrap(), &device(), dtype).unwrap()
}

fn lora(name: &str) -> Arc<LoraFile> {
    let path = fixture(&format!("loras/{name}"));
    Arc::new(LoraFile::from_bytes(name, std::fs::read(&path).unwrap()).unwrap())
}

/// The case's adapters (file, scale) and options, from the settings the reference was made with.
fn case(name: &str) -> (Vec<(Arc<LoraFile>, f32)>, GenerateOptions) {
    let case = format!("lora_{name}");
    let note = reference(&case).note();
    let loras = note["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (lora(l[0].as_str().unwrap()), l[1].as_f64().unwrap() as f32))
        .collect();
    // The seed drives the noise of stochastic samplers (LCM), replayed by the reference.
    let opts = GenerateOptions { seed: note["seed"].as_u64().unwrap(), ..case_options(&case) };
    (loras, opts)
}

fn image(pipe: &Pipeline, opts: &GenerateOptions) -> Tensor<4> {
    pipe.generate(opts, |_, _| true).unwrap()
}

fn check(model: &str, name: &str) -> Pipeline {
    let mut pipe = load(model, DType::F32);
    let (loras, opts) = case(name);
    let applied = pipe.set_loras(&loras).unwrap();
    assert_eq!(applied.len(), loras.len());
    assert_eq!(pipe.loras(), applied);
    let got = image(&pipe, &opts);
    assert_close(&format!("lora_{name}"), got, reference(&format!("lora_{name}")).tensor::<4>("image"), 1e-3);
    pipe
}

#[test]
fn peft_lora_matches_diffusers() {
    let pipe = check("tiny-sd", "peft");
    let info = &pipe.loras()[0];
    assert_eq!((info.format, info.scale, info.text_encoder_modules), ("peft", 0.8, 0));
    // 4 transformer blocks (down, mid, 2 up) × 2 attentions × 4 projections, one convolution.
    assert_eq!(info.unet_modules, 4 * 2 * 4 + 1);
}

#[test]
fn kohya_locon_lora_with_text_encoder_layers_matches_diffusers() {
    let pipe = check("tiny-sd", "kohya");
    let info = &pipe.loras()[0];
    assert_eq!(info.format, "kohya");
    assert!(info.unet_modules > 30 && info.text_encoder_modules == 2 * 6, "{info:?}");
}

/// kohya keys in the original LDM/SGM U-Net layout (`input_blocks_1_1_…`), renamed by the
/// U-Net's `layers_per_block` as diffusers' `_maybe_map_sgm_blocks_to_diffusers` does.
#[test]
fn kohya_lora_with_ldm_block_names_matches_diffusers() {
    let pipe = check("tiny-sd", "kohya_sgm");
    assert_eq!(pipe.loras()[0].unet_modules, lora("kohya_sgm.safetensors").layers.len() - 12);
}

#[test]
fn two_adapters_at_once_match_diffusers() {
    check("tiny-sd", "two");
}

#[test]
fn text_encoder_lora_matches_diffusers() {
    let pipe = check("tiny-sd", "text_encoder");
    assert_eq!(pipe.loras()[0].unet_modules, 0);
}

#[test]
fn old_attention_processor_lora_matches_diffusers() {
    let pipe = check("tiny-sd", "old_processor");
    assert_eq!(pipe.loras()[0].format, "diffusers-old");
}

/// LCM-LoRA on a BK-SDM-Tiny-shaped U-Net (no mid block, one layer per block), LCMScheduler
/// from the model's PNDM config, 4 steps, guidance 1; the reference replays our RNG's noise.
#[test]
fn lcm_lora_on_bk_sdm_shape_matches_diffusers() {
    assert_eq!(case("lcm").1.seed, LCM_SEED);
    let pipe = check("tiny-bk", "lcm");
    assert_eq!(pipe.loras()[0].format, "kohya");
}

/// The noise the LCM reference replays is exactly what the pipeline draws for that seed (three
/// `[1, 4, 8, 8]` draws after given latents: every LCM step but the last).
/// `INKSTONE_WRITE_LCM_NOISE=1` (re)writes the file for tools/reference/lora.py.
#[test]
fn lcm_noise_fixture() {
    let mut rng = StdRng::seed_from_u64(LCM_SEED);
    let draws: Vec<Vec<f32>> = (0..3)
        .map(|_| gaussian(&mut rng, [1, 4, 8, 8], &device()).into_data().try_to_vec::<f32>().unwrap())
        .collect();
    let path = fixture("ref/lora_lcm_noise.safetensors");
    if std::env::var_os("INKSTONE_WRITE_LCM_NOISE").is_some() {
        let bytes: Vec<Vec<u8>> = draws.iter().map(|d| d.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("noise{i}"), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 4, 8, 8], b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &path).unwrap();
    }
    let r = common::reference("lora_lcm_noise");
    for (i, d) in draws.iter().enumerate() {
        assert_eq!(&r.f32s(&format!("noise{i}")), d, "noise{i}");
    }
}

/// The LCM case's seed, as tools/reference/lora.py writes it (checked against its note).
const LCM_SEED: u64 = 47;

/// Changing the set or the scales re-fuses from the device tensors: kohya, then PEFT at 0.8
/// (the kohya delta subtracted), gives PEFT's reference; removing every adapter gives the base
/// image back (f32: one rounding per change).
#[test]
fn switching_adapters_and_scales_refuses_without_reloading() {
    let mut pipe = load("tiny-sd", DType::F32);
    let (_, base_opts) = case("peft");
    let base = image(&pipe, &base_opts);
    let (kohya, _) = case("kohya");
    pipe.set_loras(&kohya).unwrap();
    let (peft, opts) = case("peft");
    pipe.set_loras(&[(peft[0].0.clone(), 0.3)]).unwrap();
    let applied = pipe.set_loras(&peft).unwrap();
    assert_eq!((applied.len(), applied[0].scale), (1, 0.8));
    assert_close("lora_peft after kohya and a scale change", image(&pipe, &opts), reference("lora_peft").tensor::<4>("image"), 1e-3);
    assert!(pipe.set_loras(&[]).unwrap().is_empty());
    let back = image(&pipe, &base_opts);
    let err = max_abs_diff(back, base);
    println!("base after removing every adapter: max abs diff {err:.2e}");
    assert!(err < 1e-5, "{err}");
}

/// A LoRA for another architecture fails on its first key, naming the module it expected;
/// nothing changes, and the model generates the same image as before.
#[test]
fn lora_for_another_architecture_names_first_key_and_module_and_changes_nothing() {
    let mut pipe = load("tiny-sd", DType::F32);
    let (peft, opts) = case("peft");
    pipe.set_loras(&peft).unwrap();
    let before = image(&pipe, &opts);

    // Made for tiny-bk: its third level does not exist in tiny-sd.
    let err = pipe.set_loras(&[(lora("lcm_kohya.safetensors"), 1.0)]).unwrap_err().to_string();
    assert!(err.starts_with("lcm_kohya.safetensors: `lora_unet_down_blocks_"), "{err}");
    assert!(err.contains("expected unet module `down_blocks_") || err.contains("do not fit unet module `down_blocks."), "{err}");
    // tiny-sd's kohya file on tiny-bk: same names, other widths.
    let mut bk = load("tiny-bk", DType::F32);
    let err = bk.set_loras(&[(lora("kohya_locon.safetensors"), 1.0)]).unwrap_err().to_string();
    assert!(err.contains("do not fit unet module `") || err.contains("expected unet module `"), "{err}");
    assert!(err.contains("(a LoRA for another architecture?)"), "{err}");
    assert!(bk.loras().is_empty());

    assert_eq!(pipe.loras()[0].file, "peft_unet.safetensors");
    assert_eq!(max_abs_diff(image(&pipe, &opts), before), 0.0);
    // A non-finite scale, the same file twice: refused, nothing changed either.
    assert!(pipe.set_loras(&[(peft[0].0.clone(), f32::NAN)]).is_err());
    assert!(pipe.set_loras(&[peft[0].clone(), peft[0].clone()]).is_err());
    assert_eq!(pipe.loras()[0].scale, 0.8);
}

fn safetensors_bytes(keys: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let data: Vec<Vec<u8>> = keys.iter().map(|(_, s)| vec![0u8; s.iter().product::<usize>() * 4]).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = keys
        .iter()
        .zip(&data)
        .map(|((k, s), d)| (k.to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn parse_err(keys: &[(&str, Vec<usize>)]) -> String {
    match LoraFile::from_bytes("x.safetensors", safetensors_bytes(keys)) {
        Ok(_) => panic!("parsed"),
        Err(e) => e.to_string(),
    }
}

/// LyCORIS LoHa/LoKr, DoRA and SDXL files are refused saying what they are; stray keys are
/// named; a truncated file fails like a truncated model file.
#[test]
fn unsupported_kinds_and_corrupt_files_are_refused_by_name() {
    let e = parse_err(&[("lora_unet_a_b.hada_w1_a", vec![2, 2]), ("lora_unet_a_b.hada_w1_b", vec![2, 2])]);
    assert!(e.contains("LoHa"), "{e}");
    assert!(parse_err(&[("lora_unet_a.lokr_w1", vec![2, 2])]).contains("LoKr"));
    assert!(parse_err(&[("lora_te2_a.lora_down.weight", vec![2, 2])]).contains("SDXL LoRA"));
    assert!(parse_err(&[("unet.add_embedding.linear_1.lora_A.weight", vec![2, 2])]).contains("SDXL LoRA"));
    assert!(parse_err(&[("unet.a.lora_A.weight", vec![2, 2]), ("unet.a.lora_magnitude_vector", vec![2])]).contains("DoRA"));
    let e = parse_err(&[("unet.a.lora_A.weight", vec![2, 2]), ("unet.a.lora_B.weight", vec![2, 2]), ("unet.a.bias", vec![2])]);
    assert_eq!(e, "x.safetensors: `unet.a.bias`: not a LoRA factor in any layout diffusers loads (PEFT `lora_A`/`lora_B`, `lora.down`/`lora.up`, `processor.to_q_lora.down`, kohya `lora_unet_…`)");
    let e = parse_err(&[("lora_unet_a.lora_down.weight", vec![2, 2])]);
    assert_eq!(e, "x.safetensors: `lora_unet_a.lora_down.weight`: no matching `lora_unet_a.lora_up.weight`");

    let bytes = std::fs::read(fixture("loras/peft_unet.safetensors")).unwrap();
    let err = LoraFile::from_bytes("peft_unet.safetensors", bytes[..bytes.len() - 10].to_vec()).err().unwrap();
    assert!(matches!(err, Error::CorruptSafetensors { .. }), "{err}");
    assert!(err.to_string().starts_with("peft_unet.safetensors: corrupt safetensors file:"), "{err}");
}

#[test]
fn formats_are_detected() {
    assert_eq!(lora("peft_unet.safetensors").format, LoraFormat::Peft);
    assert_eq!(lora("kohya_locon.safetensors").format, LoraFormat::Kohya);
    assert_eq!(lora("old_processor.safetensors").format, LoraFormat::DiffusersOld);
    assert_eq!(lora("peft_text_encoder.safetensors").format, LoraFormat::Peft);
}

/// In f16 the fused weights are rounded once to f16: the image stays within the f16
/// pipelines' tolerance (tests/f16.rs) of diffusers' f32 one.
#[test]
fn kohya_lora_in_f16_stays_near_diffusers_f32() {
    let mut pipe = load("tiny-sd", DType::F16);
    let (loras, opts) = case("kohya");
    pipe.set_loras(&loras).unwrap();
    let err = max_abs_diff(image(&pipe, &opts), reference("lora_kohya").tensor::<4>("image"));
    println!("lora_kohya (f16): max abs error {err:.3e} (tolerance 1e-2)");
    assert!(err < 1e-2, "{err}");
}

/// `inkstone generate --lora FILE[:SCALE]` (repeatable) makes the two-adapter reference.
#[test]
fn cli_lora_flags_match_diffusers() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lora-cli.safetensors");
    let (_, opts) = case("two");
    let refpath = fixture("ref/lora_two.safetensors");
    let arg = |name: &str, scale: &str| format!("{}:{scale}", fixture(&format!("loras/{name}")).display());
    let o = Command::new(env!("CARGO_BIN_EXE_inkstone"))
        .args(["generate", "--model"])
        .arg(fixture("tiny-sd"))
        .args(["--prompt", &opts.prompt, "--negative-prompt", &opts.negative_prompt, "--steps", "4", "--guidance", "7.5"])
        .arg("--latents")
        .arg(&refpath)
        .args(["--lora", &arg("peft_unet.safetensors", "0.7"), "--lora", &arg("kohya_locon.safetensors", "-0.5")])
        .arg("--out-tensor")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("(kohya, scale -0.5)"), "{stderr}");
    let got = inkstone::weights::SafetensorsFile::from_bytes("out", std::fs::read(&out).unwrap()).unwrap();
    let info = &got.header.tensors["image"];
    let values = inkstone::weights::to_f32("out", "image", info.dtype, got.raw(info)).unwrap();
    let got = Tensor::<4>::from_data(burn::tensor::TensorData::new(values, [1, 3, 64, 64]), &device());
    assert_close("cli lora_two", got, reference("lora_two").tensor::<4>("image"), 1e-3);

    let o = Command::new(env!("CARGO_BIN_EXE_inkstone"))
        .args(["generate", "--model"])
        .arg(fixture("tiny-sd"))
        .args(["--prompt", "x", "--steps", "1", "--lora", "/nonexistent/a.safetensors:0.5"])
        .arg("--out-tensor")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error: /nonexistent/a.safetensors:"));
}

/// The LCM-LoRA case through the CLI: `--lora` on the BK-SDM-shaped folder, `--scheduler lcm`,
/// the case's seed for the step noise.
#[test]
fn cli_lcm_lora_matches_diffusers() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lora-cli-lcm.safetensors");
    let (_, opts) = case("lcm");
    let refpath = fixture("ref/lora_lcm.safetensors");
    let lora = format!("{}:1", fixture("loras/lcm_kohya.safetensors").display());
    let seed = LCM_SEED.to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_inkstone"))
        .args(["generate", "--model"])
        .arg(fixture("tiny-bk"))
        .args(["--prompt", &opts.prompt, "--steps", "4", "--guidance", "1", "--scheduler", "lcm", "--seed", &seed])
        .arg("--latents")
        .arg(&refpath)
        .args(["--lora", &lora, "--out-tensor"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = inkstone::weights::SafetensorsFile::from_bytes("out", std::fs::read(&out).unwrap()).unwrap();
    let info = &got.header.tensors["image"];
    let values = inkstone::weights::to_f32("out", "image", info.dtype, got.raw(info)).unwrap();
    let got = Tensor::<4>::from_data(burn::tensor::TensorData::new(values, [1, 3, 64, 64]), &device());
    assert_close("cli lora_lcm", got, reference("lora_lcm").tensor::<4>("image"), 1e-3);
}
