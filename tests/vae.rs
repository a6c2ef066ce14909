//! Decoder/encoder parity with diffusers (`tools/reference/vae.py`) at f32: `AutoencoderTiny` in
//! the diffusers layout (default and non-default configs) and the original TAESD key layout, and
//! `AutoencoderKL` (the tiny SD pipeline's VAE and a variant without quant convs or attention).

use crate::common;

use std::sync::Arc;

use burn::tensor::DType;

use common::{assert_close, device, filter_keys, fixture, reference, tiny_sd};
use inkstone::Error;
use inkstone::source::{DirSource, MemorySource, ModelSource};
use inkstone::vae::{Autoencoder, EncoderOutput};

const TOL: f32 = 1e-4;

fn fixtures() -> DirSource {
    DirSource::new(fixture("")).unwrap()
}

fn load(dir: &str) -> Autoencoder {
    Autoencoder::load(&fixtures(), dir, &device(), DType::F32).unwrap_or_else(|e| panic!("{dir}: {e}"))
}

/// Decodes the case's latents and, when the encoder is there, encodes its image.
fn check_tiny(what: &str, vae: &Autoencoder, case: &str, with_encoder: bool) {
    let r = reference(case);
    assert_close(&format!("{what} decode"), vae.decode(r.tensor::<4>("latents")), r.tensor::<4>("decoded"), TOL);
    match vae.encode(r.tensor::<4>("image")) {
        Some(EncoderOutput::Latents(latents)) => {
            assert!(with_encoder, "{what}: unexpected encoder");
            assert_close(&format!("{what} encode"), latents, r.tensor::<4>("encoded"), TOL);
        }
        Some(EncoderOutput::Dist(_)) => panic!("{what}: a tiny encoder returned a distribution"),
        None => assert!(!with_encoder, "{what}: encoder weights were not loaded"),
    }
}

#[test]
fn taesd_default_layout_matches_diffusers() {
    let vae = load("tiny-taesd");
    assert!(matches!(vae, Autoencoder::Tiny(_)));
    assert_eq!((vae.pixels_per_latent(), vae.latent_channels()), (8, 4));
    assert_eq!((vae.latent_scaling_factor(), vae.latent_shift_factor()), (1.0, 0.0));
    check_tiny("tiny-taesd", &vae, "vae_taesd", true);
}

#[test]
fn taesd_non_default_config_matches_diffusers() {
    // Width 24, blocks (2, 1, 1), ×3 upsampling, 16 latent channels, SD3-style factors.
    let vae = load("tiny-taesd-alt");
    assert_eq!((vae.pixels_per_latent(), vae.latent_channels()), (9, 16));
    assert_eq!((vae.latent_scaling_factor(), vae.latent_shift_factor()), (1.5305, 0.0609));
    check_tiny("tiny-taesd-alt", &vae, "vae_taesd_alt", true);
}

#[test]
fn taesd_original_key_layout_matches_diffusers() {
    // Only `taesd_decoder.safetensors` (layer 0 = clamp, keys shifted by one); no config.json.
    let vae = load("tiny-taesd-original");
    assert_eq!((vae.pixels_per_latent(), vae.latent_channels()), (8, 4));
    check_tiny("tiny-taesd-original", &vae, "vae_taesd", false);
}

#[test]
fn taesd_original_encoder_and_decoder_pair_matches_diffusers() {
    // taesd_encoder.safetensors next to the decoder (encoder keys are not shifted).
    let vae = load("tiny-taesd-original-pair");
    check_tiny("tiny-taesd-original-pair", &vae, "vae_taesd", true);
}

#[test]
fn taesd_original_layout_errors_name_file_and_tensor() {
    let src = fixtures();
    let read = |name: &str| {
        let path = format!("tiny-taesd-original-pair/{name}");
        inkstone::weights::SafetensorsFile::from_bytes(path.clone(), src.read(&path).unwrap()).unwrap()
    };
    let (dec, enc) = (read("taesd_decoder.safetensors"), read("taesd_encoder.safetensors"));
    let output_conv = |f: &inkstone::weights::SafetensorsFile| {
        (0..100).rev().find(|i| f.header.tensors.contains_key(&format!("{i}.bias"))).unwrap()
    };
    let hide = |f, layer: usize| Arc::from(rewrite_keys(f, |k| if k.starts_with(&format!("{layer}.")) { format!("x{k}") } else { k.into() }));
    let pair = |dec: Arc<[u8]>, enc: Arc<[u8]>| {
        let mut mem = MemorySource { name: "orig".into(), ..Default::default() };
        mem.files.insert("vae/taesd_decoder.safetensors".into(), dec);
        mem.files.insert("vae/taesd_encoder.safetensors".into(), enc);
        mem
    };
    let whole = |f: &inkstone::weights::SafetensorsFile| Arc::from(rewrite_keys(f, |k| k.into()));

    // Sanity: the untouched pair loads.
    Autoencoder::load(&pair(whole(&dec), whole(&enc)), "vae", &device(), DType::F32).unwrap();
    // Without its output conv the decoder cannot be laid out.
    let last = output_conv(&dec);
    let err = load_err(&pair(hide(&dec, last), whole(&enc)));
    assert_eq!(err, format!("vae/taesd_decoder.safetensors: missing tensor `{last}.bias`"));
    // An encoder missing its last block: the output conv is one layer late.
    let last = output_conv(&enc);
    let err = load_err(&pair(whole(&dec), hide(&enc, last - 1)));
    assert_eq!(err, format!("vae/taesd_encoder.safetensors: missing tensor `{}.weight`", last - 1));
    // Errors use the stored names: `1.bias` (stored as `0.bias` here), not `decoder.layers.0.bias`.
    let moved = rewrite_keys(&dec, |k| if k == "1.bias" { "0.bias".into() } else { k.into() });
    let err = load_err(&pair(Arc::from(moved), whole(&enc)));
    assert_eq!(err, "vae/taesd_decoder.safetensors: missing tensor `1.bias`");
}

#[test]
fn taesd_original_relatives_are_found_by_name() {
    // SDXL/SD3/FLUX variants ship as taesdxl_decoder.safetensors and the like.
    let src = fixtures();
    let mut mem = MemorySource { name: "taesdxl".into(), ..Default::default() };
    for (from, to) in [("taesd_decoder", "taesdxl_decoder"), ("taesd_encoder", "taesdxl_encoder")] {
        let bytes = src.read(&format!("tiny-taesd-original-pair/{from}.safetensors")).unwrap();
        mem.files.insert(format!("vae/{to}.safetensors"), bytes);
    }
    let vae = Autoencoder::load(&mem, "vae", &device(), DType::F32).unwrap();
    check_tiny("taesdxl-named pair", &vae, "vae_taesd", true);
}

/// A copy of `folder` (diffusers layout) under `vae/` without the tensors whose key starts with
/// one of `drop`.
fn without_tensors(folder: &str, drop: &[&str]) -> MemorySource {
    let mut mem = edited(folder, |_| {});
    let path = "vae/diffusion_pytorch_model.safetensors";
    let file = inkstone::weights::SafetensorsFile::from_bytes(path, mem.files[path].clone()).unwrap();
    let kept = filter_keys(&file, |k| (!drop.iter().any(|d| k.starts_with(d))).then(|| k.to_string()));
    mem.files.insert(path.into(), Arc::from(kept));
    mem
}

#[test]
fn decoder_only_checkpoints_load_without_encoder() {
    let vae = Autoencoder::load(&without_tensors("tiny-sd/vae", &["encoder.", "quant_conv."]), "vae", &device(), DType::F32).unwrap();
    let r = reference("vae_kl");
    assert_close("tiny-sd/vae (decoder only) decode", vae.decode(r.tensor::<4>("latents")), r.tensor::<4>("decoded"), TOL);
    assert!(vae.encode(r.tensor::<4>("image")).is_none());
    let vae = Autoencoder::load(&without_tensors("tiny-taesd", &["encoder."]), "vae", &device(), DType::F32).unwrap();
    check_tiny("tiny-taesd (decoder only)", &vae, "vae_taesd", false);
    // An encoder without its quant_conv is incomplete, not decoder-only.
    let err = load_err(&without_tensors("tiny-sd/vae", &["quant_conv."]));
    assert!(err.ends_with("missing tensor `quant_conv.weight`"), "{err}");
}

#[test]
fn kl_tiny_sd_matches_diffusers() {
    let vae = Autoencoder::load(&tiny_sd(), "vae", &device(), DType::F32).unwrap();
    assert!(matches!(vae, Autoencoder::Kl(_)));
    assert_eq!((vae.pixels_per_latent(), vae.latent_channels()), (8, 4));
    assert_eq!((vae.latent_scaling_factor(), vae.latent_shift_factor()), (0.18215, 0.0));
    check_kl("tiny-sd/vae", &vae, "vae_kl");
}

#[test]
fn kl_without_quant_convs_or_attention_matches_diffusers() {
    let vae = load("tiny-kl-variant");
    assert_eq!((vae.pixels_per_latent(), vae.latent_channels()), (2, 16));
    assert_eq!((vae.latent_scaling_factor(), vae.latent_shift_factor()), (0.3611, 0.1159));
    check_kl("tiny-kl-variant", &vae, "vae_kl_variant");
}

fn check_kl(what: &str, vae: &Autoencoder, case: &str) {
    let r = reference(case);
    assert_close(&format!("{what} decode"), vae.decode(r.tensor::<4>("latents")), r.tensor::<4>("decoded"), TOL);
    let Some(EncoderOutput::Dist(dist)) = vae.encode(r.tensor::<4>("image")) else { panic!("{what}: no KL encoder") };
    assert_close(&format!("{what} encode mean"), dist.mean.clone(), r.tensor::<4>("mean"), TOL);
    assert_close(&format!("{what} encode logvar"), dist.logvar.clone(), r.tensor::<4>("logvar"), TOL);
    // A draw with zero noise is the mean.
    let zeros = dist.mean.zeros_like();
    assert_close(&format!("{what} sample(0)"), dist.sample(zeros), r.tensor::<4>("mean"), TOL);
}

/// A copy of a fixture folder in memory, under `vae/`, with `edit` applied to config.json.
fn edited(folder: &str, edit: impl Fn(&mut serde_json::Value)) -> MemorySource {
    let src = fixtures();
    let mut mem = MemorySource { name: format!("edited {folder}"), ..Default::default() };
    for name in src.list(folder) {
        let mut bytes = src.read(&format!("{folder}/{name}")).unwrap();
        if name == "config.json" {
            let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            edit(&mut json);
            bytes = Arc::from(serde_json::to_vec(&json).unwrap());
        }
        mem.files.insert(format!("vae/{name}"), bytes);
    }
    mem
}

fn load_err(src: &dyn ModelSource) -> String {
    match Autoencoder::load(src, "vae", &device(), DType::F32) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// `src` with its `vae/` files under `dir/` instead.
fn moved(src: MemorySource, dir: &str) -> MemorySource {
    let files = src.files.into_iter().map(|(k, v)| (k.replacen("vae/", &format!("{dir}/"), 1), v)).collect();
    MemorySource { files, ..src }
}

#[test]
fn config_errors_name_the_file_they_were_read_from() {
    let tiny = moved(edited("tiny-taesd", |c| c["act_fn"] = "gelu".into()), "vae_b");
    let err = Autoencoder::load(&tiny, "vae_b", &device(), DType::F32).unwrap_err().to_string();
    assert_eq!(err, "vae_b/config.json: unsupported value \"gelu\" for `act_fn`");
    let kl = moved(edited("tiny-sd/vae", |c| c["down_block_types"][0] = "KDownEncoderBlock2D".into()), "vae_b");
    let err = Autoencoder::load(&kl, "vae_b", &device(), DType::F32).unwrap_err().to_string();
    assert_eq!(err, "vae_b/config.json: unsupported value KDownEncoderBlock2D for `down_block_types`");
}

#[test]
fn wrong_taesd_width_names_the_tensor() {
    let src = edited("tiny-taesd", |c| c["decoder_block_out_channels"] = serde_json::json!([32, 32, 32, 32]));
    let err = Autoencoder::load(&src, "vae", &device(), DType::F32).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "vae/diffusion_pytorch_model.safetensors: tensor `decoder.layers.0.weight` has shape [16, 4, 3, 3], expected [32, 4, 3, 3]"
    );
}

#[test]
fn legacy_block_out_channels_key_is_ignored() {
    // diffusers writes `block_out_channels` (a copy of the decoder widths) and never reads it.
    let src = edited("tiny-taesd", |c| c["block_out_channels"] = serde_json::json!([7, 7]));
    let vae = Autoencoder::load(&src, "vae", &device(), DType::F32).unwrap();
    check_tiny("tiny-taesd (legacy key edited)", &vae, "vae_taesd", true);
}

#[test]
fn unequal_taesd_widths_are_rejected() {
    let src = edited("tiny-taesd", |c| c["decoder_block_out_channels"] = serde_json::json!([16, 16, 32, 16]));
    let err = load_err(&src);
    assert!(err.contains("`decoder_block_out_channels`") && err.contains("[16, 16, 32, 16]"), "{err}");
}

#[test]
fn kl_leftover_or_missing_tensors_are_errors() {
    // Turning the mid-block attention off leaves its weights unused: reported, not dropped.
    let src = edited("tiny-sd/vae", |c| c["mid_block_add_attention"] = serde_json::json!(false));
    let err = load_err(&src);
    assert!(err.contains("unexpected tensors") && err.contains("attentions.0.group_norm.bias"), "{err}");
    // Asking for a post-quant conv the variant does not have names the missing tensor.
    let src = edited("tiny-kl-variant", |c| c["use_post_quant_conv"] = serde_json::json!(true));
    let err = load_err(&src);
    assert!(err.contains("missing tensor `post_quant_conv.weight`"), "{err}");
}

#[test]
fn kl_legacy_attention_names_load() {
    // Older diffusers VAEs name the mid attention query/key/value/proj_attn.
    let src = edited("tiny-sd/vae", |_| {});
    let path = "vae/diffusion_pytorch_model.safetensors";
    let file = inkstone::weights::SafetensorsFile::from_bytes(path, src.files[path].clone()).unwrap();
    let renamed = rewrite_keys(&file, |k| {
        k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.").replace(".to_out.0.", ".proj_attn.")
    });
    let mut src = src;
    src.files.insert(path.into(), Arc::from(renamed));
    let vae = Autoencoder::load(&src, "vae", &device(), DType::F32).unwrap();
    check_kl("tiny-sd/vae (legacy attention keys)", &vae, "vae_kl");
}

#[test]
fn unknown_class_and_missing_files_are_reported() {
    let src = edited("tiny-taesd", |c| c["_class_name"] = serde_json::json!("VQModel"));
    let err = load_err(&src);
    assert!(err.contains("`_class_name`") && err.contains("VQModel"), "{err}");
    // The class is checked before any weight file is looked for.
    let mut src = src;
    src.files.retain(|k, _| k.ends_with("config.json"));
    let err = load_err(&src);
    assert!(err.contains("`_class_name`") && err.contains("VQModel"), "{err}");
    let err = load_err(&MemorySource { name: "empty".into(), ..Default::default() });
    assert!(err.contains("empty/vae/config.json: not found"), "{err}");
}

/// Re-serialises a safetensors file with renamed keys (same dtypes, shapes and bytes).
fn rewrite_keys(file: &inkstone::weights::SafetensorsFile, rename: impl Fn(&str) -> String) -> Vec<u8> {
    filter_keys(file, |k| Some(rename(k)))
}


/// A decode in tiles (activations capped at 64 KiB) equals the whole decode: each tile carries
/// the decoder's full receptive field as margin, so there are no seams to blend.
#[test]
fn taesd_tiled_decode_equals_the_whole() {
    // One block per level: each pixel sees 8 latents around it.
    let Autoencoder::Tiny(vae) = load("tiny-flow/vae") else {
        panic!("tiny-flow's vae is an AutoencoderTiny")
    };
    // 30×22 latents: 240×176 pixels, 1.35 MB of 8-channel f32 activations; 1 MiB allows tiles
    // of 22×22 latents with 8 of margin on each side, i.e. cores of 6×6: 5×4 tiles.
    let z = common::patterned([1, 4, 22, 30], 3, 2.0);
    let whole = vae.decoder.forward_within(z.clone(), u64::MAX);
    assert_eq!(whole.dims(), [1, 3, 176, 240]);
    assert_close(
        "tiled decode",
        vae.decoder.forward_within(z, 1 << 20),
        whole,
        1e-6,
    );
}

/// The KL decoder over channel chunks (activations capped at 256 KiB: chunks of 4 channels, one
/// norm group each here) equals the whole decode up to the convolutions' summation order.
#[test]
fn kl_decode_in_channel_chunks_equals_the_whole() {
    let Autoencoder::Kl(vae) = load("tiny-sd/vae") else { panic!("tiny-sd's vae is an AutoencoderKL") };
    // 16×12 latents: 128×96 pixels, 16 channels × 12288 pixels = 768 KiB per activation.
    let z = common::patterned([1, 4, 12, 16], 5, 2.0);
    let whole = vae.decode_within(z.clone(), u64::MAX);
    assert_eq!(whole.dims(), [1, 3, 96, 128]);
    assert_close("chunked KL decode", vae.decode_within(z, 256 << 10), whole, 1e-5);
}
