//! `inkstone generate --init-image FILE --strength S`: diffusers' img2img image from a PNG,
//! JPEG decoding, the documented PNG conversions, and one-line errors for bad input.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use burn::tensor::{Tensor, TensorData};
use common::{inkstone, stderr, assert_close, device, fixture, reference};
use inkstone::image::decode_init_image;
use inkstone::weights::{SafetensorsFile, to_f32};

fn tmp(name: &str) -> PathBuf {
    common::tmp("cli-img2img", name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A PNG of `channels` (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) and `depth` from interleaved samples.
fn write_png(path: &Path, w: usize, h: usize, color: png::ColorType, depth: png::BitDepth, data: &[u8]) {
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, w as u32, h as u32);
    enc.set_color(color);
    enc.set_depth(depth);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The case's 8-bit init image as an RGB PNG, and its noise as a `--latents` file.
fn case_files(case: &str) -> (PathBuf, PathBuf) {
    let r = reference(case);
    let note = r.note();
    let [w, h] = [0, 1].map(|i| note["image"][i].as_u64().unwrap() as usize);
    let planar = r.u8s("init_image");
    let rgb: Vec<u8> = (0..w * h).flat_map(|i| (0..3).map(move |c| (c, i))).map(|(c, i)| planar[c * w * h + i]).collect();
    let png = tmp(&format!("{case}.png"));
    write_png(&png, w, h, png::ColorType::Rgb, png::BitDepth::Eight, &rgb);
    let noise = r.f32s("noise");
    let bytes: Vec<u8> = noise.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, r.shape("noise"), &bytes).unwrap();
    let latents = tmp(&format!("{case}-noise.safetensors"));
    safetensors::serialize_to_file([("latents", view)], None, &latents).unwrap();
    (png, latents)
}

fn read_tensor(path: &Path) -> Tensor<4> {
    let file = SafetensorsFile::from_bytes("out", std::fs::read(path).unwrap()).unwrap();
    let info = &file.header.tensors["image"];
    let shape: [usize; 4] = info.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(to_f32("out", "image", info.dtype, file.raw(info)).unwrap(), shape), &device())
}

/// Runs a reference case through the CLI (size from the image itself, or `--width/--height`).
fn run_case(case: &str, size_flags: bool) -> Output {
    let note = reference(case).note();
    let (png, latents) = case_files(case);
    let out = tmp(&format!("{case}-out.safetensors"));
    let mut args: Vec<String> = [
        "generate", "--model", s(&fixture(note["model"].as_str().unwrap())), "--prompt", note["prompt"].as_str().unwrap(),
        "--negative-prompt", note["negative_prompt"].as_str().unwrap(), "--steps", &note["steps"].to_string(),
        "--guidance", &note["guidance"].to_string(), "--init-image", s(&png), "--strength", &note["strength"].to_string(),
        "--latents", s(&latents), "--out-tensor", s(&out),
    ]
    .map(String::from)
    .to_vec();
    if let Some(name) = note["scheduler"].as_str() {
        args.extend(["--scheduler".into(), name.into()]);
    }
    if size_flags {
        args.extend(["--width".into(), note["width"].to_string(), "--height".into(), note["height"].to_string()]);
    }
    let o = inkstone(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{case}: {}", stderr(&o));
    assert_close(&format!("cli {case}"), read_tensor(&out), reference(case).tensor::<4>("image"), 1e-3);
    o
}

#[test]
fn png_init_image_kl_encoder_matches_diffusers() {
    let o = run_case("img2img_sd_euler", false);
    assert!(stderr(&o).contains("3 steps"), "{}", stderr(&o));
}

#[test]
fn png_init_image_tiny_encoder_flow_matches_diffusers() {
    run_case("img2img_flow", false);
}

/// A 41×29 PNG for 32×24: resized, with a warning on stderr.
#[test]
fn other_size_png_is_resized_with_a_warning() {
    let o = run_case("img2img_sd_resized", true);
    assert!(stderr(&o).contains("warning: the init image is 41x29: resized to 32x24"), "{}", stderr(&o));
}

/// PIL's decode of the committed JPEG (4:4:4, quality 95) within IDCT rounding.
#[test]
fn jpeg_decodes_like_pil() {
    let r = reference("img2img_jpeg");
    let bytes = std::fs::read(fixture("img2img/init.jpg")).unwrap();
    let img = decode_init_image("init.jpg", &bytes).unwrap();
    assert_eq!((img.width, img.height), (40, 24));
    let want = r.u8s("decoded");
    let worst = img.pixels.iter().zip(&want).map(|(a, &b)| (a * 255.0 - b as f32).abs()).fold(0.0f32, f32::max);
    println!("jpeg vs PIL: max {worst:.2} levels");
    assert!(worst <= 2.0, "jpeg differs from PIL by {worst} levels");
}

/// Grayscale → R = G = B; alpha dropped; palette expanded; 16-bit kept as v / 65535.
#[test]
fn png_conversions_are_the_documented_ones() {
    let gray = tmp("gray.png");
    write_png(&gray, 2, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[0, 51]);
    let img = decode_init_image("gray.png", &std::fs::read(&gray).unwrap()).unwrap();
    assert_eq!(img.pixels, [0.0, 0.2, 0.0, 0.2, 0.0, 0.2]);

    let rgba = tmp("rgba.png");
    write_png(&rgba, 1, 1, png::ColorType::Rgba, png::BitDepth::Eight, &[255, 0, 51, 0]);
    let img = decode_init_image("rgba.png", &std::fs::read(&rgba).unwrap()).unwrap();
    assert_eq!(img.pixels, [1.0, 0.0, 0.2]);

    let gray_alpha = tmp("gray-alpha.png");
    write_png(&gray_alpha, 1, 1, png::ColorType::GrayscaleAlpha, png::BitDepth::Eight, &[102, 9]);
    let img = decode_init_image("ga.png", &std::fs::read(&gray_alpha).unwrap()).unwrap();
    assert_eq!(img.pixels, [0.4, 0.4, 0.4]);

    let deep = tmp("rgb16.png");
    write_png(&deep, 1, 1, png::ColorType::Rgb, png::BitDepth::Sixteen, &[0xff, 0xff, 0x00, 0x01, 0x80, 0x00]);
    let img = decode_init_image("rgb16.png", &std::fs::read(&deep).unwrap()).unwrap();
    assert_eq!(img.pixels, [1.0, 1.0 / 65535.0, 32768.0 / 65535.0]);

    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, 2, 1);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(vec![255, 0, 0, 0, 0, 255]);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(&[1, 0]).unwrap();
    writer.finish().unwrap();
    let img = decode_init_image("palette.png", &bytes).unwrap();
    assert_eq!(img.pixels, [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
}

fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert!(!o.status.success());
    let err = stderr(o);
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "{err}");
    for n in needles {
        assert!(last.contains(n), "{n:?} not in {last:?}");
    }
}

#[test]
fn bad_init_images_and_strengths_are_one_line_errors() {
    let model = fixture("tiny-sd");
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", s(&model), "--prompt", "x", "--steps", "2", "--out-tensor"];
        let out = tmp("unused.safetensors");
        args.push(s(&out));
        args.extend_from_slice(extra);
        inkstone(&args)
    };
    let text = tmp("notes.txt");
    std::fs::write(&text, "not a picture").unwrap();
    assert_one_line_error(&run(&["--init-image", s(&text)]), &["notes.txt", "not a PNG or JPEG image"]);

    let broken = tmp("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    assert_one_line_error(&run(&["--init-image", s(&broken)]), &["broken.png", "not a readable PNG image"]);

    let missing = tmp("missing.png");
    assert_one_line_error(&run(&["--init-image", s(&missing)]), &["missing.png"]);

    let (png, _) = case_files("img2img_sd_euler");
    assert_one_line_error(&run(&["--init-image", s(&png), "--strength", "1.5"]), &["strength 1.5", "(0, 1]"]);
    assert_one_line_error(&run(&["--init-image", s(&png), "--strength", "0.2"]), &["steps 2", "strength 0.2"]);
    // --strength without an image is a usage error.
    let o = run(&["--strength", "0.5"]);
    assert!(!o.status.success() && stderr(&o).contains("--init-image"), "{}", stderr(&o));

    let decoder_only = fixture("tiny-sd-taesd-decoder-only");
    let o = inkstone(&["generate", "--model", s(&decoder_only), "--prompt", "x", "--init-image", s(&png), "--steps", "2"]);
    assert_one_line_error(&o, &["encoder", "text-to-image still works"]);
}
