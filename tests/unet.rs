//! U-Net parity with diffusers' `UNet2DConditionModel` (tools/reference/unet.py) at f32:
//! the tiny-sd U-Net (BF16 stored), a three-level config (per-level heads, linear projections,
//! guidance-embedding input, upcast, an odd 9×7 latent), a block-removed config (no mid
//! block, two transformer layers, only_cross_attention) and the one-resnet `UNetMidBlock2D`
//! mid block, plus config and weight errors.

use crate::common;
#[path = "../benches/random_weights.rs"]
mod random_weights;

use burn::tensor::{DType, Tensor, TensorData};
use common::{assert_close, device, fixture, load_unet, patterned, reference, tiny_sd};
use inkstone::Error;
use inkstone::config::{DownBlockType, MidBlockType, UNet2DConditionConfig, UpBlockType, from_json};
use inkstone::limits::DeviceLimits;
use inkstone::nn::{ATTENTION_SCORE_BUDGET, scaled_dot_product_attention};
use inkstone::source::{DirSource, MemorySource, ModelSource, load_weights};
use inkstone::unet::embeddings::{TimestepEmbedding, Timesteps};
use inkstone::unet::{UNet2DConditionModel, guidance_scale_embedding};

const TOL: f32 = 1e-4;

fn config(src: &DirSource, component: &str) -> UNet2DConditionConfig {
    let file = format!("{component}/config.json");
    from_json(&file, &src.read(&file).unwrap()).unwrap()
}

/// tests/fixtures/unets/: one diffusers `save_pretrained` U-Net folder per config.
fn unets() -> DirSource {
    DirSource::new(fixture("unets")).unwrap()
}

/// Runs the reference case `unet_<case>` through `unet`.
fn check(unet: &UNet2DConditionModel, case: &str) {
    let r = reference(&format!("unet_{case}"));
    let cond = r.has("timestep_cond").then(|| r.tensor::<2>("timestep_cond"));
    let out = unet.forward(r.tensor("sample"), r.tensor("timesteps"), r.tensor("encoder_hidden_states"), cond);
    assert_close(&format!("unet_{case} out"), out, r.tensor("out"), TOL);
}

#[test]
fn tiny_sd_unet_matches_diffusers() {
    let unet = load_unet(&tiny_sd(), "unet", DType::F32);
    check(&unet, "tiny_sd");
}

/// Sinusoids (flip/shift variants) and the time MLP, with the guidance `cond_proj` input.
#[test]
fn time_embedding_matches_diffusers() {
    let cases = [(tiny_sd(), "unet", "tiny_sd"), (unets(), "three-level", "three_level")];
    for (src, component, case) in cases {
        let cfg = config(&src, component);
        let r = reference(&format!("unet_{case}"));
        let c0 = cfg.block_out_channels[0];
        let t_emb = Timesteps::new(c0, cfg.flip_sin_to_cos, cfg.freq_shift).forward(r.tensor("timesteps"));
        assert_close(&format!("unet_{case} t_emb"), t_emb, r.tensor("t_emb"), 1e-5);

        let weights = load_weights(&src, component, &device()).unwrap();
        let vb = weights.root().pp("time_embedding");
        let mlp = TimestepEmbedding::load(&vb, c0, cfg.time_embed_dim(), cfg.time_cond_proj_dim).unwrap();
        assert_eq!(mlp.cond_dim(), cfg.time_cond_proj_dim);
        let cond = r.has("timestep_cond").then(|| r.tensor::<2>("timestep_cond"));
        assert_close(&format!("unet_{case} emb"), mlp.forward(r.tensor("t_emb"), cond), r.tensor("emb"), TOL);
    }
}

#[test]
fn three_level_unet_with_guidance_embedding_matches_diffusers() {
    let unet = load_unet(&unets(), "three-level", DType::F32);
    check(&unet, "three_level");
    // 9×7 does not halve evenly: upsamplers are sized to the skips (9→5→3, 7→4→2 and back).
    check(&unet, "three_level_odd");
}

#[test]
fn block_removed_unet_matches_diffusers() {
    let unet = load_unet(&unets(), "no-mid", DType::F32);
    assert!(unet.config().mid_block_type.is_none());
    check(&unet, "no_mid");
}

/// `mid_block_type: "UNetMidBlock2D"`: one resnet (scaled by `mid_block_scale_factor`), and only
/// its tensors are read (`load_unet` fails on unused ones).
#[test]
fn one_resnet_mid_block_unet_matches_diffusers() {
    let unet = load_unet(&unets(), "mid-resnet", DType::F32);
    assert_eq!(unet.config().mid_block_type, Some(MidBlockType::UNetMidBlock2D));
    check(&unet, "mid_resnet");
}

#[test]
fn guidance_scale_embedding_matches_diffusers() {
    let r = reference("unet_guidance_embedding");
    let w = r.f32s("w");
    for dim in [16, 15, 512] {
        let got = guidance_scale_embedding(&w, dim, &device());
        // Phases reach w·1000 = 6500 rad: torch's vectorised f32 `exp` is one ulp off on a few
        // frequencies (ours is correctly rounded), which moves those phases by up to ~4e-4 rad
        // and the sines by ~6e-5; within the module tolerance.
        assert_close(&format!("guidance embedding dim {dim}"), got, r.tensor(&format!("w_{dim}")), TOL);
    }
}

/// The time-condition input feeds the embedding: the same call without it must differ.
#[test]
fn timestep_cond_changes_the_output() {
    let unet = load_unet(&unets(), "three-level", DType::F32);
    let r = reference("unet_three_level");
    let run = |cond| unet.forward(r.tensor("sample"), r.tensor("timesteps"), r.tensor("encoder_hidden_states"), cond);
    let diff = common::max_abs_diff(run(Some(r.tensor::<2>("timestep_cond"))), run(None));
    assert!(diff > 1e-3, "timestep_cond had no effect ({diff:e})");
}

/// A single timestep is broadcast over the batch, as diffusers does.
#[test]
fn single_timestep_broadcasts_over_the_batch() {
    let unet = load_unet(&tiny_sd(), "unet", DType::F32);
    let r = reference("unet_tiny_sd");
    let t = r.f32s("timesteps");
    let sample: Tensor<4> = r.tensor("sample");
    let ehs: Tensor<3> = r.tensor("encoder_hidden_states");
    let one = Tensor::<1>::from_data(TensorData::new(vec![t[0]], [1]), &device());
    let both = Tensor::<1>::from_data(TensorData::new(vec![t[0], t[0]], [2]), &device());
    let a = unet.forward(sample.clone(), one, ehs.clone(), None);
    let b = unet.forward(sample, both, ehs, None);
    assert_close("broadcast timestep", a, b, 0.0);
}

fn unsupported(err: Error) -> (String, String) {
    match err {
        Error::UnsupportedConfig { ref field, ref value, .. } => (field.clone(), value.clone()),
        other => panic!("expected UnsupportedConfig, got {other}"),
    }
}

#[test]
fn unsupported_block_types_are_rejected_by_name() {
    let src = tiny_sd();
    let weights = load_weights(&src, "unet", &device()).unwrap();
    let cases = [("down_block_types", 0, "SimpleCrossAttnDownBlock2D"), ("up_block_types", 1, "AttnUpBlock2D")];
    for (field, i, value) in cases {
        let mut cfg = config(&src, "unet");
        match field {
            "down_block_types" => cfg.down_block_types[i] = DownBlockType::Unsupported(value.into()),
            _ => cfg.up_block_types[i] = UpBlockType::Unsupported(value.into()),
        }
        let err = UNet2DConditionModel::load(&weights, &cfg).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unet/config.json") && msg.contains(field) && msg.contains(value), "{msg}");
        assert_eq!(unsupported(err).0, field);
    }
    let mut cfg = config(&src, "unet");
    cfg.mid_block_type = Some(MidBlockType::Unsupported("UNetMidBlock2DSimpleCrossAttn".into()));
    let msg = UNet2DConditionModel::load(&weights, &cfg).unwrap_err().to_string();
    assert!(msg.contains("mid_block_type") && msg.contains("UNetMidBlock2DSimpleCrossAttn"), "{msg}");
}

#[test]
fn config_from_json_with_unknown_block_type_names_field_and_value() {
    let src = tiny_sd();
    let text = String::from_utf8(src.read("unet/config.json").unwrap().to_vec()).unwrap();
    let text = text.replace("\"DownBlock2D\"", "\"KDownBlock2D\"");
    let cfg: UNet2DConditionConfig = from_json("unet/config.json", text.as_bytes()).unwrap();
    let weights = load_weights(&src, "unet", &device()).unwrap();
    let err = UNet2DConditionModel::load(&weights, &cfg).unwrap_err();
    assert_eq!(err.to_string(), "unet/config.json: unsupported value \"KDownBlock2D\" for `down_block_types`");
}

/// A U-Net read from another folder names that folder's config in its errors.
#[test]
fn config_errors_name_the_file_they_were_read_from() {
    let disk = unets();
    let mut src = MemorySource { name: "three-level (memory)".into(), ..Default::default() };
    for file in disk.list("three-level") {
        let path = format!("three-level/{file}");
        src.files.insert(path.clone(), disk.read(&path).unwrap());
    }
    let mut config: serde_json::Value = serde_json::from_slice(&src.files["three-level/config.json"]).unwrap();
    config["act_fn"] = "gelu".into();
    src.files.insert("three-level/config.json".into(), serde_json::to_vec(&config).unwrap().into());
    let msg = UNet2DConditionModel::from_source(&src, "three-level", &device(), DType::F32).unwrap_err().to_string();
    assert_eq!(msg, "three-level/config.json: unsupported value \"gelu\" for `act_fn`");
}

/// Weights of another config: the first tensor whose shape disagrees is named.
#[test]
fn mismatched_weights_name_the_tensor() {
    let weights = load_weights(&tiny_sd(), "unet", &device()).unwrap();
    let cfg = config(&unets(), "no-mid");
    let msg = UNet2DConditionModel::load(&weights, &cfg).unwrap_err().to_string();
    assert!(msg.contains("unet/diffusion_pytorch_model.safetensors") && msg.contains("conv_in.weight"), "{msg}");

    // The tiny-sd config without its mid block leaves the mid-block tensors unused: `load`
    // itself reports them (and `finish` again after it).
    let mut cfg = config(&tiny_sd(), "unet");
    cfg.mid_block_type = None;
    let msg = UNet2DConditionModel::load(&weights, &cfg).unwrap_err().to_string();
    assert!(msg.contains("unexpected tensors") && msg.contains("`mid_block."), "{msg}");
    let msg = weights.finish().unwrap_err().to_string();
    assert!(msg.contains("unexpected tensors") && msg.contains("`mid_block."), "{msg}");
}

/// At a 64×64 latent (4096 tokens) one head's scores are 16M elements, over the WebGPU-sized
/// budget: attention runs in query blocks and must equal the one-shot softmax(q kᵀ) v (up to
/// the summation order of the CPU backend's fused online softmax).
#[test]
fn chunked_attention_at_4096_tokens_equals_one_shot() {
    let (b, h, n, d) = (1, 1, 4096, 8);
    assert!(b * h * n * n > ATTENTION_SCORE_BUDGET);
    let shape = [b, h, n, d];
    let (q, k, v) = (patterned(shape, 1, 1.0), patterned(shape, 2, 1.0), patterned(shape, 3, 1.0));
    let scale = (d as f64).powf(-0.5);
    let chunked = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), scale, DeviceLimits::NONE);
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let one_shot = burn::tensor::activation::softmax(scores, 3).matmul(v);
    assert_close("chunked attention", chunked, one_shot, 1e-5);
}

/// Half-precision weights (what `shader-f16` GPUs get): the three-level U-Net has
/// `upcast_attention`, so its scores and softmax run in f32; the output stays near the f32
/// reference (f16 has ~3 significant digits).
#[test]
fn three_level_unet_runs_in_f16_with_upcast_attention() {
    let src = unets();
    let weights = load_weights(&src, "three-level", &device()).unwrap().with_dtype(DType::F16);
    let unet = UNet2DConditionModel::load(&weights, &config(&src, "three-level")).unwrap();
    weights.finish().unwrap();
    let r = reference("unet_three_level");
    let f16 = |t: Tensor<4>| t.cast(DType::F16);
    let out = unet.forward(
        f16(r.tensor("sample")),
        r.tensor("timesteps"),
        r.tensor::<3>("encoder_hidden_states").cast(DType::F16),
        Some(r.tensor::<2>("timestep_cond").cast(DType::F16)),
    );
    assert_eq!(out.dtype(), DType::F16);
    assert_close("unet_three_level out (f16 weights)", out.cast(DType::F32), r.tensor("out"), 1e-2);
}

/// Heads must divide the width of every attending block, including up and mid blocks, whose
/// levels need not attend on the way down.
#[test]
fn mid_block_heads_that_do_not_divide_the_width_are_rejected() {
    let src = tiny_sd();
    let weights = load_weights(&src, "unet", &device()).unwrap();
    let mut cfg = config(&src, "unet");
    cfg.attention_head_dim = inkstone::config::OneOrMany::Many(vec![2, 7]); // level 1 (64 wide) has no attention
    let msg = UNet2DConditionModel::load(&weights, &cfg).unwrap_err().to_string();
    assert_eq!(msg, "unet/config.json: unsupported value 7 for `attention heads of the mid block`");
}

/// The benchmarks' random weights (`benches/random_weights.rs`): every tensor the model asks for is generated, seeded by key,
/// so the same seed gives the same model and a different seed another.
#[test]
fn random_weights_build_a_deterministic_model() {
    let cfg = config(&tiny_sd(), "unet");
    let r = reference("unet_tiny_sd");
    let run = |seed| {
        let weights = random_weights::random_weights("random", seed, &device());
        let unet = UNet2DConditionModel::load(&weights, &cfg).unwrap();
        weights.finish().unwrap();
        unet.forward(r.tensor("sample"), r.tensor("timesteps"), r.tensor("encoder_hidden_states"), None)
    };
    let (a, b, c) = (run(0), run(0), run(1));
    assert!(a.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
    assert_close("same seed", a.clone(), b, 0.0);
    assert!(common::max_abs_diff(a, c) > 1e-3, "seeds 0 and 1 gave the same model");
}
