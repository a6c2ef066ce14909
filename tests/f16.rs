//! The half-precision path (what the browser runs on GPUs with `shader-f16`), on the CPU
//! backend: weights created as F16, activations in F16 (norm statistics and the text towers'
//! softmax in f32), compared with the same f32 diffusers/transformers references as the f32
//! tests. f16 keeps 11 significant bits (relative rounding 4.9e-4 per operation), so the
//! tolerances are a stated multiple of the output's magnitude rather than 1e-4; each test
//! also checks the model really held F16 weights, so an f32 run cannot pass for it.

use crate::common;

use burn::tensor::{DType, Tensor};
use common::{case_options, device, err_of, fixture, load_unet, map_f32, max_abs_diff, memory, patterned, reference, tiny_sd};
use inkstone::pipeline::Pipeline;
use inkstone::source::{DirSource, MemorySource, ModelSource, load_weights};
use inkstone::text::TextEncoder;
use inkstone::vae::Autoencoder;

/// Max |x| of a reference tensor.
fn magnitude<const D: usize>(t: &Tensor<D>) -> f32 {
    t.clone().abs().max().into_scalar()
}

/// Asserts max abs error ≤ `rel` × max |want| and prints both figures.
fn assert_close_rel<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>, rel: f32) {
    assert_eq!(got.dtype(), DType::F32, "{what}: results come back in the caller's f32");
    let scale = magnitude(&want);
    let err = max_abs_diff(got, want);
    println!("{what} (f16): max abs error {err:.3e} = {:.2e} × max |ref| {scale:.3} (tolerance {rel:.0e} ×)", err / scale);
    assert!(err <= rel * scale, "{what}: max abs error {err:e} > {rel:e} × {scale}");
}

/// tiny-sd (BF16 stored, rounded to F16), three levels (upcast attention, guidance input) and
/// no mid block: f32 inputs in, f32 out, F16 inside.
#[test]
fn unet_in_f16_matches_diffusers_f32() {
    let unets = DirSource::new(fixture("unets")).unwrap();
    let sd = tiny_sd();
    for (src, component, case) in [(&sd, "unet", "tiny_sd"), (&unets, "three-level", "three_level"), (&unets, "no-mid", "no_mid")] {
        let unet = load_unet(src, component, DType::F16);
        assert_eq!(unet.dtype(), DType::F16, "{case}: weights handed out as F16");
        let r = reference(&format!("unet_{case}"));
        let cond = r.has("timestep_cond").then(|| r.tensor::<2>("timestep_cond"));
        let out = unet.forward(r.tensor("sample"), r.tensor("timesteps"), r.tensor("encoder_hidden_states"), cond);
        assert_close_rel(&format!("unet_{case}"), out, r.tensor("out"), 5e-3);
    }
}

#[test]
fn text_encoders_in_f16_match_transformers_f32() {
    let bert = DirSource::new(fixture("tiny-bert")).unwrap();
    for (src, case) in [(&tiny_sd() as &dyn ModelSource, "text_encoder_clip"), (&bert, "text_encoder_bert")] {
        let encoder = TextEncoder::load(src, "text_encoder", &device(), DType::F16).unwrap();
        let r = reference(case);
        let ids = r.int_tensor::<2>("ids");
        let embeds = encoder.encode(ids.clone(), ids.ones_like());
        assert_eq!(embeds.dtype(), DType::F16, "{case}: the tower runs in f16");
        assert_close_rel(case, embeds.cast(DType::F32), r.tensor("last_hidden_state"), 5e-3);
    }
}

#[test]
fn decoders_in_f16_match_diffusers_f32() {
    let fixtures = DirSource::new(fixture("")).unwrap();
    // The original-layout pair is loaded per file (`ModelSource::weights_file`).
    for (dir, case) in [("tiny-sd/vae", "vae_kl"), ("tiny-taesd", "vae_taesd"), ("tiny-taesd-original-pair", "vae_taesd")] {
        let vae = Autoencoder::load(&fixtures, dir, &device(), DType::F16).unwrap();
        // tiny-sd's AutoencoderKL config sets `force_upcast` (as every SD VAE does): it runs in
        // f32 in an f16 load, like diffusers; the test below runs it in f16 with the flag off.
        let want = if case == "vae_kl" { DType::F32 } else { DType::F16 };
        assert_eq!(decoder_dtype(&vae), want, "{case}");
        let r = reference(case);
        assert_close_rel(&format!("{case} decode"), vae.decode(r.tensor("latents")), r.tensor("decoded"), 5e-3);
        let encoded = vae.encode(r.tensor("image")).unwrap().mode();
        let want = if r.has("mean") { r.tensor("mean") } else { r.tensor("encoded") };
        assert_close_rel(&format!("{case} encode"), encoded, want, 5e-3);
    }
}

fn decoder_dtype(vae: &Autoencoder) -> DType {
    match vae {
        Autoencoder::Kl(m) => m.dtype,
        Autoencoder::Tiny(m) => m.dtype,
    }
}

#[test]
fn kl_decoder_without_force_upcast_runs_in_f16() {
    let mut src = MemorySource { name: "tiny-sd".into(), ..Default::default() };
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        let bytes = std::fs::read(fixture("tiny-sd/vae").join(file)).unwrap();
        let bytes = if file == "config.json" {
            String::from_utf8(bytes).unwrap().replace("\"force_upcast\": true", "\"force_upcast\": false").into_bytes()
        } else {
            bytes
        };
        src.files.insert(format!("vae/{file}"), bytes.into());
    }
    let vae = Autoencoder::load(&src, "vae", &device(), DType::F16).unwrap();
    assert_eq!(decoder_dtype(&vae), DType::F16);
    let r = reference("vae_kl");
    assert_close_rel("vae_kl decode (f16, no upcast)", vae.decode(r.tensor("latents")), r.tensor("decoded"), 5e-3);
}

/// diffusers' whole `StableDiffusionPipeline.__call__` (f32) against our pipeline in f16,
/// from the same latents: the [0, 1] image within 1e-2 (2.6 of 255 levels).
#[test]
fn pipelines_in_f16_match_diffusers_f32() {
    for (model, case) in [("tiny-sd", "pipeline_sd"), ("tiny-flow", "pipeline_flow")] {
        let src = DirSource::new(fixture(model)).unwrap();
        let pipe = Pipeline::load_with_dtype(&src, &device(), DType::F16).unwrap();
        assert_eq!(pipe.dtype(), DType::F16);
        let opts = case_options(case);
        let image = pipe.generate(&opts, |_, _| true).unwrap();
        let want = reference(case).tensor::<4>("image");
        let err = max_abs_diff(image.clone(), want.clone());
        println!("{case} (f16 pipeline): image max abs error {err:.3e} (tolerance 1e-2)");
        assert!(err <= 1e-2, "{case}: {err:e}");
        // It did run in half precision: the f32 pipeline gives a different image.
        let f32_image = Pipeline::load(&src, &device()).unwrap().generate(&opts, |_, _| true).unwrap();
        assert!(max_abs_diff(image, f32_image) > 0.0, "{case}: f16 and f32 images are identical");
    }
}

/// Weights handed out as F16 whatever the stored dtype (tiny-sd's U-Net is stored BF16), and
/// a dtype the pipeline does not compute in is refused.
#[test]
fn weights_come_in_the_working_dtype_and_other_dtypes_are_refused() {
    let weights = load_weights(&tiny_sd(), "unet", &device()).unwrap().with_dtype(DType::F16);
    let w = weights.tensor::<1>("conv_in.bias", [32]).unwrap();
    assert_eq!(w.dtype(), DType::F16);
    let f32s = load_weights(&tiny_sd(), "unet", &device()).unwrap().tensor::<1>("conv_in.bias", [32]).unwrap();
    // BF16 → F16 is exact for these small values: only the exponent range differs.
    assert_eq!(max_abs_diff(w.cast(DType::F32), f32s), 0.0);
    let err = Pipeline::load_with_dtype(&tiny_sd(), &device(), DType::F64).err().unwrap().to_string();
    assert!(err.contains("F64") && err.contains("F32 or F16"), "{err}");
}

/// Stored F16 bytes become F16 values bit for bit; F32 is rounded to nearest.
#[test]
fn f16_conversion_is_exact_for_f16_and_rounds_f32() {
    use inkstone::weights::{StoredDtype, to_f16};
    let values = [0.1f32, -2.5, 65504.0, 1e-8];
    let halves: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
    let raw: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
    assert_eq!(to_f16("f", "k", StoredDtype::F16, &raw).unwrap(), halves);
    let raw32: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(to_f16("f", "k", StoredDtype::F32, &raw32).unwrap(), halves);
}

/// Attention over a 64×64 latent's 4096 tokens in f16 (query-blocked, as on WebGPU) stays near
/// the f32 result: the softmax denominator sums 4096 terms, which f16 alone could not hold to
/// better than 4 units; the backends accumulate reductions in f32.
#[test]
fn attention_over_4096_tokens_in_f16_stays_near_f32() {
    use inkstone::limits::DeviceLimits;
    use inkstone::nn::scaled_dot_product_attention;
    let shape = [1, 2, 4096, 40];
    let (q, k, v) = (patterned(shape, 1, 2.0), patterned(shape, 2, 2.0), patterned(shape, 3, 2.0));
    let scale = (40f64).powf(-0.5);
    let want = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), scale, DeviceLimits::NONE);
    let half = |t: Tensor<4>| t.cast(DType::F16);
    let got = scaled_dot_product_attention(half(q), half(k), half(v), scale, DeviceLimits::NONE);
    assert_eq!(got.dtype(), DType::F16);
    assert_close_rel("attention, 4096 tokens", got.cast(DType::F32), want, 5e-3);
}

/// tiny-flow-hub (TAESD, no force_upcast) whose decoder's first conv is scaled up 1.5e5 and the
/// next scaled down as much: activations past f16's range (inf in f16, fine in f32). Every VAE
/// value is stored rounded to f16, so an f32 load and an f16 load hold the same weights.
fn overflowing_taesd() -> MemorySource {
    let mut m = memory("tiny-flow-hub");
    // Only the f32 file, so an f16 load converts it (and sees the scaled weights).
    m.files.remove("vae/diffusion_pytorch_model.fp16.safetensors");
    // decoder.layers: 0 = conv(latent -> w), 1 = ReLU, 2 = block (conv.0, conv.2, conv.4).
    let scales = [("decoder.layers.0.weight", 1.5e5), ("decoder.layers.0.bias", 1.5e5), ("decoder.layers.2.conv.0.weight", 1.0 / 1.5e5)];
    map_f32(&mut m, "vae/diffusion_pytorch_model.safetensors", |key, v| {
        let by = scales.iter().find(|(k, _)| *k == key).map_or(1.0, |(_, s)| *s);
        half::f16::from_f32(v * by).to_f32()
    });
    m
}

/// A generation of `pipe` with every step run, ready to decode.
fn run_to_the_end<'a>(pipe: &'a Pipeline, opts: &inkstone::pipeline::GenerateOptions) -> inkstone::pipeline::Generation<'a> {
    let mut run = pipe.start(opts).unwrap();
    while !run.is_done() {
        run.step().unwrap();
    }
    run
}

/// A U-Net that overflows in f16 is named, with the advice to load in f32; in f32 the advice
/// points at the weights and settings instead (f16 is not the cause there).
#[test]
fn a_unet_overflow_names_the_dtype_it_ran_in() {
    let mut src = memory("tiny-flow-hub");
    src.files.remove("unet/diffusion_pytorch_model.fp16.safetensors");
    // Past f16's range (65504) but well within f32's.
    map_f32(&mut src, "unet/diffusion_pytorch_model.safetensors", |k, v| if k == "conv_out.bias" { 1e6 } else { v });
    let opts = case_options("hub_flow");
    let f16 = err_of(Pipeline::load_with_dtype(&src, &device(), DType::F16).unwrap().generate(&opts, |_, _| true));
    assert!(f16.starts_with("the unet produced non-finite values") && f16.contains("it ran in f16") && f16.contains("load the model in f32"), "{f16}");
    // The same latents stay finite in f32 (1e6 is a fine f32 value): the f16 advice is right.
    let pipe = Pipeline::load(&src, &device()).unwrap();
    pipe.generate(&opts, |_, _| true).unwrap();
    let mut nan = src.clone();
    map_f32(&mut nan, "unet/diffusion_pytorch_model.safetensors", |k, v| if k == "conv_out.bias" { f32::NAN } else { v });
    let f32 = err_of(Pipeline::load(&nan, &device()).unwrap().generate(&opts, |_, _| true));
    assert!(f32.contains("it ran in f32") && !f32.contains("load the model in f32"), "{f32}");
}

/// A tiny decoder that is non-finite in f16 and again in its f32 rerun: the error says so
/// instead of returning the rerun's NaN image.
#[test]
fn a_tiny_decoder_that_fails_again_when_rerun_in_f32_is_an_error() {
    let mut src = overflowing_taesd();
    map_f32(&mut src, "vae/diffusion_pytorch_model.safetensors", |k, v| if k == "decoder.layers.0.bias" { f32::NAN } else { v });
    let pipe = Pipeline::load_with_dtype(&src, &device(), DType::F16).unwrap();
    let e = err_of(run_to_the_end(&pipe, &case_options("hub_flow")).decode_checked());
    assert!(e.starts_with("the vae produced non-finite values") && e.contains("again when rerun in f32"), "{e}");
}

#[test]
fn a_tiny_decoder_that_overflows_in_f16_is_rerun_in_f32() {
    let src = overflowing_taesd();
    let opts = case_options("hub_flow");
    let pipe = Pipeline::load_with_dtype(&src, &device(), DType::F16).unwrap();
    assert_eq!(pipe.vae.dtype(), DType::F16);
    let latents = || run_to_the_end(&pipe, &opts);
    // The plain f16 decode does overflow: without the rerun this would be an inf/NaN image.
    let decoded = latents().finish();
    assert_eq!(decoded.latents_finite.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(), vec![1.0]);
    assert_eq!(decoded.pixels_finite.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(), vec![0.0]);
    // The rerun equals the f32 model's decoder (the same f16-representable weights) on the
    // same latents.
    let image = latents().decode_checked().unwrap();
    let f32_pipe = Pipeline::load(&src, &device()).unwrap();
    let want = f32_pipe.decode_flagged(decoded.latents, false).unwrap().image;
    let err = max_abs_diff(image, want);
    println!("overflowing TAESD: f32 rerun vs the f32 decoder on the same latents {err:.3e}");
    assert!(err <= 1e-5, "{err:e}");
}
