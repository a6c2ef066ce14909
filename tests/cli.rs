//! The CLI contract: flags, outputs, exit codes and one-line errors.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{inkstone, stderr, assert_close, device, fixture, reference};
use burn::tensor::{Tensor, TensorData};
use inkstone::weights::{SafetensorsFile, to_f32};

fn tmp(name: &str) -> PathBuf {
    common::tmp("cli", name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn generate_from_latents_matches_diffusers_and_writes_png_and_tensor() {
    let model = fixture("tiny-sd");
    let case = fixture("ref/pipeline_sd.safetensors");
    let (png, tensor) = (tmp("sd.png"), tmp("sd.safetensors"));
    let o = inkstone(&[
        "generate", "--model", s(&model), "--prompt", "a photo of a cat", "--negative-prompt", "blurry, low quality",
        "--steps", "4", "--guidance", "7.5", "--latents", s(&case), "--out", s(&png), "--out-tensor", s(&tensor),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let file = SafetensorsFile::from_bytes("out", std::fs::read(&tensor).unwrap()).unwrap();
    let info = &file.header.tensors["image"];
    assert_eq!(info.shape, [1, 3, 64, 64]);
    let values = to_f32("out", "image", info.dtype, file.raw(info)).unwrap();
    let got = Tensor::<4>::from_data(TensorData::new(values, [1, 3, 64, 64]), &device());
    assert_close("cli image", got, reference("pipeline_sd").tensor::<4>("image"), 1e-3);

    let decoder = png::Decoder::new(std::io::Cursor::new(std::fs::read(&png).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert_eq!((info.width, info.height), (64, 64));
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
}

/// `--dtype f16`: the whole model in half precision, within 1e-2 of diffusers' f32 image.
#[test]
fn generate_in_f16_stays_close_to_diffusers_f32() {
    let model = fixture("tiny-flow");
    let case = fixture("ref/pipeline_flow.safetensors");
    let tensor = tmp("flow-f16.safetensors");
    let note = reference("pipeline_flow").note();
    let o = inkstone(&[
        "generate", "--model", s(&model), "--prompt", note["prompt"].as_str().unwrap(),
        "--negative-prompt", note["negative_prompt"].as_str().unwrap(),
        "--steps", &note["steps"].to_string(), "--guidance", &note["guidance"].to_string(),
        "--latents", s(&case), "--out-tensor", s(&tensor), "--dtype", "f16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("(F16)"), "{}", stderr(&o));
    let file = SafetensorsFile::from_bytes("out", std::fs::read(&tensor).unwrap()).unwrap();
    let info = &file.header.tensors["image"];
    let values = to_f32("out", "image", info.dtype, file.raw(info)).unwrap();
    let got = Tensor::<4>::from_data(TensorData::new(values, [1, 3, 48, 64]), &device());
    assert_close("cli image (f16)", got, reference("pipeline_flow").tensor::<4>("image"), 1e-2);
}

#[test]
fn same_seed_gives_the_same_png() {
    let model = fixture("tiny-sd");
    let run = |out: &Path| {
        let o = inkstone(&["generate", "--model", s(&model), "--prompt", "sea", "--steps", "2", "--seed", "9",
                           "--width", "32", "--height", "32", "--out", s(out)]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(out).unwrap()
    };
    assert_eq!(run(&tmp("a.png")), run(&tmp("b.png")));
}

fn read_image(path: &Path, w: usize, h: usize) -> Tensor<4> {
    let file = SafetensorsFile::from_bytes("out", std::fs::read(path).unwrap()).unwrap();
    let info = &file.header.tensors["image"];
    let values = to_f32("out", "image", info.dtype, file.raw(info)).unwrap();
    Tensor::<4>::from_data(TensorData::new(values, [1, 3, h, w]), &device())
}

/// `--scheduler dpm++2m-karras` on a folder laid out like SD 1.x (PNDM): diffusers' image.
#[test]
fn scheduler_override_matches_diffusers() {
    let case = fixture("ref/pipeline_sd_dpm_karras.safetensors");
    let note = reference("pipeline_sd_dpm_karras").note();
    let tensor = tmp("dpm-karras.safetensors");
    let o = inkstone(&[
        "generate", "--model", s(&fixture("tiny-sd-pndm")), "--prompt", note["prompt"].as_str().unwrap(),
        "--negative-prompt", note["negative_prompt"].as_str().unwrap(), "--steps", &note["steps"].to_string(),
        "--guidance", &note["guidance"].to_string(), "--scheduler", "dpm++2m-karras", "--latents", s(&case),
        "--out-tensor", s(&tensor),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_close("cli dpm++2m-karras", read_image(&tensor, 64, 64), reference("pipeline_sd_dpm_karras").tensor::<4>("image"), 1e-3);
}

/// `--timesteps 999` (one step, SDXS-style) and `--sigmas` run; the sampler's rules apply.
#[test]
fn custom_timesteps_and_sigmas() {
    let model = fixture("tiny-sd");
    let base = ["generate", "--model", s(&model), "--prompt", "sea", "--seed", "3", "--width", "32", "--height", "32"];
    let run = |extra: &[&str], out: &Path| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out-tensor", s(out)]);
        inkstone(&args)
    };
    let (one, four, sigmas) = (tmp("ts-one.safetensors"), tmp("ts-four.safetensors"), tmp("sigmas.safetensors"));
    let o = run(&["--timesteps", "999"], &one);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--scheduler", "lcm", "--timesteps", "999,749,499,249", "--guidance", "1"], &four);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--sigmas", "14.6,3,0"], &sigmas);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (read_image(&one, 32, 32), read_image(&four, 32, 32));
    assert!(common::max_abs_diff(a, b) > 1e-3, "one and four steps gave the same image");

    let o = inkstone(&[&base[..], &["--scheduler", "ddim", "--timesteps", "999"]].concat());
    assert_one_line_error(&o, "custom timesteps are not supported by DDIMScheduler");
    let o = inkstone(&[&base[..], &["--scheduler", "heun"]].concat());
    assert_one_line_error(&o, "unknown scheduler \"heun\"");
    let o = inkstone(&[&base[..], &["--timesteps", "999", "--sigmas", "1,0"]].concat());
    assert!(!o.status.success() && stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

#[test]
fn non_finite_guidance_is_refused() {
    for bad in ["nan", "inf", "-inf"] {
        let o = inkstone(&["generate", "--model", s(&fixture("tiny-sd")), "--prompt", "x", &format!("--guidance={bad}")]);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains("--guidance") && err.contains("is not a finite number"), "{err}");
    }
}

/// A failing run ends with exactly one `error: ...` line (progress lines may precede it).
fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success());
    let err = stderr(o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(err.trim_end().lines().last(), Some(errors[0]), "{err}");
    assert!(errors[0].starts_with("error: ") && errors[0].contains(needle), "{err}");
}

#[test]
fn missing_model_folder() {
    let o = inkstone(&["generate", "--model", "/nonexistent/model", "--prompt", "x"]);
    assert_one_line_error(&o, "/nonexistent/model: not found");
}

#[test]
fn bad_size() {
    let o = inkstone(&["generate", "--model", s(&fixture("tiny-sd")), "--prompt", "x", "--width", "100", "--steps", "1"]);
    assert_one_line_error(&o, "width 100 is not a positive multiple of 8");
}

#[test]
fn unsupported_component_config() {
    let dir = tmp("unsupported-model");
    copy_dir(&fixture("tiny-sd"), &dir);
    let cfg = dir.join("unet/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(r#""class_embed_type": null"#));
    let text = text.replace(r#""class_embed_type": null"#, r#""class_embed_type": "timestep""#);
    std::fs::write(&cfg, text).unwrap();
    let o = inkstone(&["generate", "--model", s(&dir), "--prompt", "x"]);
    assert_one_line_error(&o, "unet/config.json: unsupported value \"timestep\" for `class_embed_type`");
}

#[test]
fn truncated_weights_name_the_file() {
    let dir = tmp("truncated-model");
    copy_dir(&fixture("tiny-sd"), &dir);
    let w = dir.join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let o = inkstone(&["generate", "--model", s(&dir), "--prompt", "x"]);
    assert_one_line_error(&o, "vae/diffusion_pytorch_model.safetensors: corrupt safetensors file");
}

#[test]
fn info_lists_components_with_parameter_counts() {
    let o = inkstone(&["info", "--model", s(&fixture("tiny-flow"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for needle in ["StableDiffusionPipeline", "transformers.BertModel", "diffusers.AutoencoderTiny", "F16", "BF16",
                   "diffusers.FlowMatchEulerDiscreteScheduler", "transformers.BertTokenizer"] {
        assert!(out.contains(needle), "{needle} missing in:\n{out}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::create_dir_all(to).unwrap();
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// The sampler names exist once, in `Sampler::NAMES`; every list users read must be that list,
/// in that order: the CLI's help, the README's table, the package's `.d.ts` and the page's picker.
#[test]
fn sampler_names_are_the_same_everywhere() {
    use inkstone::schedulers::Sampler;
    let names: Vec<&str> = Sampler::NAMES.iter().map(|(n, _)| *n).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    // The strings quoted by `q`, in order, between `start` and `end` of `text`.
    let listed = |text: &str, start: &str, end: &str, q: char| -> Vec<String> {
        let from = text.find(start).unwrap_or_else(|| panic!("no {start:?}")) + start.len();
        let part = &text[from..from + text[from..].find(end).unwrap()];
        part.split(q).skip(1).step_by(2).filter(|s| !s.is_empty()).map(String::from).collect()
    };
    let dts = listed(&read("pkg/index.d.ts"), "export type SchedulerName =", ";", '\'');
    let page = listed(&read("www/index.html"), "<select id=\"scheduler\">", "</select>", '"');
    let readme = listed(&read("README.md"), "| name | diffusers class and settings |", "\n\n", '`');
    let readme: Vec<String> = readme.into_iter().filter(|n| names.contains(&n.as_str())).collect();
    for (what, got) in [("pkg/index.d.ts", dts), ("www/index.html", page), ("README.md", readme)] {
        assert_eq!(got, names, "{what} lists other sampler names than Sampler::NAMES");
    }
    let help = String::from_utf8(inkstone(&["generate", "--help"]).stdout).unwrap().replace(char::is_whitespace, "");
    for n in &names {
        assert!(help.contains(n), "`inkstone generate --help` does not name {n}");
    }
}
