//! Config parsing as published on the hub: int-or-list fields, unknown fields ignored, and a
//! value we cannot honour rejected with an error naming the field and the value.

use crate::common;

use common::err_of;
use inkstone::config::{
    AutoencoderKLConfig, AutoencoderTinyConfig, BertConfig, ClipTextConfig, ModelIndex, OneOrMany,
    MidBlockType, SchedulerConfig, TransformerLayers, UNet2DConditionConfig, from_json,
};

fn unet(json: &str) -> UNet2DConditionConfig {
    from_json("unet/config.json", json.as_bytes()).unwrap()
}

/// The SD 1.5 U-Net config as published (trimmed of nothing: unknown keys must be ignored).
const SD15_UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0",
  "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false, "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
  "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "some_future_key": {"nested": true}
}"#;

#[test]
fn sd15_unet_config_parses_and_resolves_levels() {
    let c = unet(SD15_UNET);
    c.validate().unwrap();
    let levels = c.levels().unwrap();
    assert_eq!(levels.len(), 4);
    // SD 1.x: attention_head_dim is the number of heads.
    assert!(levels.iter().all(|l| l.heads == 8 && l.layers == 2 && l.cross_attention_dim == 768));
    assert_eq!(levels.iter().map(|l| l.cross_attention).collect::<Vec<_>>(), [true, true, true, false]);
    assert_eq!(c.time_embed_dim(), 1280);
}

#[test]
fn per_level_lists_and_num_attention_heads() {
    // SD 2.x style per-level head list, plus num_attention_heads overriding it.
    let mut c = unet(r#"{"attention_head_dim": [5, 10, 20, 20], "transformer_layers_per_block": [1, 2, 2, 1],
                        "use_linear_projection": true, "layers_per_block": [1, 2, 2, 2]}"#);
    c.validate().unwrap();
    let heads: Vec<usize> = c.levels().unwrap().iter().map(|l| l.heads).collect();
    assert_eq!(heads, [5, 10, 20, 20]);
    assert_eq!(c.transformer_layers_per_block, TransformerLayers::PerLevel(vec![1, 2, 2, 1]));
    c.num_attention_heads = Some(OneOrMany::One(4));
    assert!(c.levels().unwrap().iter().all(|l| l.heads == 4));
}

#[test]
fn null_mid_block_means_none() {
    let c = unet(r#"{"mid_block_type": null}"#);
    c.validate().unwrap();
    assert_eq!(c.mid_block_type, None);
    assert_eq!(unet("{}").mid_block_type.as_ref().map(MidBlockType::as_str), Some("UNetMidBlock2DCrossAttn"));
}

#[test]
fn unsupported_unet_values_name_field_and_value() {
    let cases = [
        (r#"{"class_embed_type": "timestep"}"#, "`class_embed_type`", "\"timestep\""),
        (r#"{"addition_embed_type": "text_time"}"#, "`addition_embed_type`", "\"text_time\""),
        (r#"{"down_block_types": ["SimpleCrossAttnDownBlock2D","DownBlock2D","DownBlock2D","DownBlock2D"]}"#,
         "`down_block_types`", "SimpleCrossAttnDownBlock2D"),
        (r#"{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}"#, "`mid_block_type`", "UNetMidBlock2DSimpleCrossAttn"),
        (r#"{"resnet_time_scale_shift": "scale_shift"}"#, "`resnet_time_scale_shift`", "scale_shift"),
        (r#"{"attention_head_dim": [8, 8]}"#, "`attention_head_dim`", "a list of 2 entries for 4 levels"),
        (r#"{"transformer_layers_per_block": [[1, 2], [2, 2], [1, 1], [1, 1]]}"#, "`transformer_layers_per_block`", "[[1, 2]"),
    ];
    for (json, field, value) in cases {
        let msg = err_of(unet(json).validate());
        assert!(msg.starts_with("unet/config.json: unsupported value"), "{msg}");
        assert!(msg.contains(field) && msg.contains(value), "{json}: {msg}");
    }
}

#[test]
fn malformed_json_names_the_file() {
    let e = from_json::<UNet2DConditionConfig>("unet/config.json", b"{\"in_channels\": \"four\"}").unwrap_err();
    assert!(e.to_string().starts_with("unet/config.json: invalid JSON config"), "{e}");
}

#[test]
fn autoencoder_tiny_ignores_legacy_block_out_channels() {
    let c: AutoencoderTinyConfig = from_json(
        "vae/config.json",
        br#"{"_class_name": "AutoencoderTiny", "block_out_channels": [64, 64, 64, 64],
             "decoder_block_out_channels": [80, 80, 80, 80], "num_decoder_blocks": [3, 3, 3, 1]}"#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.decoder_block_out_channels, [80; 4]);
    assert_eq!(c.pixels_per_latent(), 8);
    let bad: AutoencoderTinyConfig = from_json("vae/config.json", br#"{"act_fn": "gelu"}"#).unwrap();
    assert!(err_of(bad.validate()).contains("`act_fn`"));
}

#[test]
fn autoencoder_kl_reads_scaling_and_shift() {
    let c: AutoencoderKLConfig = from_json(
        "vae/config.json",
        br#"{"block_out_channels": [128, 256, 512, 512], "up_block_types": ["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"],
             "scaling_factor": 0.13025, "shift_factor": 0.0609, "layers_per_block": 2}"#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!((c.pixels_per_latent(), c.scaling_factor, c.shift_factor), (8, 0.13025, Some(0.0609)));
}

#[test]
fn text_configs_validate() {
    let clip: ClipTextConfig = from_json("c", br#"{"hidden_act": "gelu", "hidden_size": 1024, "num_attention_heads": 16}"#).unwrap();
    clip.validate().unwrap();
    let bad: ClipTextConfig = from_json("c", br#"{"hidden_act": "swish"}"#).unwrap();
    assert!(err_of(bad.validate()).contains("`hidden_act`"));
    let bert: BertConfig = from_json("b", br#"{"position_embedding_type": "relative_key"}"#).unwrap();
    assert!(err_of(bert.validate()).contains("relative_key"));
}

#[test]
fn scheduler_class_name_dispatches_and_rejects_unknown() {
    let s = SchedulerConfig::from_json(br#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}"#).unwrap();
    assert!(matches!(s, SchedulerConfig::FlowMatchEulerDiscrete(ref c) if c.shift == 3.0));
    let e = SchedulerConfig::from_json(br#"{"_class_name": "KDPM2DiscreteScheduler"}"#).unwrap_err().to_string();
    assert!(e.contains("`_class_name`") && e.contains("KDPM2DiscreteScheduler") && e.contains("PNDMScheduler"), "{e}");
    let e = SchedulerConfig::from_json(br#"{"_class_name": "EulerDiscreteScheduler", "prediction_type": "sample"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`prediction_type`") && e.contains("sample"), "{e}");
}

#[test]
fn model_index_lists_present_components_only() {
    let idx = ModelIndex::from_json(
        br#"{"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.8.0",
             "safety_checker": [null, null], "requires_safety_checker": false,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderTiny"]}"#,
    )
    .unwrap();
    assert_eq!(idx.components.keys().collect::<Vec<_>>(), ["unet", "vae"]);
    assert_eq!(idx.components["vae"].class_name, "AutoencoderTiny");
    let e = idx.component("text_encoder").unwrap_err().to_string();
    assert!(e.contains("text_encoder"), "{e}");
}

#[test]
fn committed_fixture_configs_parse() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd");
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    let u: UNet2DConditionConfig = from_json("unet/config.json", &read("unet/config.json")).unwrap();
    u.validate().unwrap();
    let v: AutoencoderKLConfig = from_json("vae/config.json", &read("vae/config.json")).unwrap();
    v.validate().unwrap();
    let t: ClipTextConfig = from_json("text_encoder/config.json", &read("text_encoder/config.json")).unwrap();
    t.validate().unwrap();
    SchedulerConfig::from_json(&read("scheduler/scheduler_config.json")).unwrap();
    ModelIndex::from_json(&read("model_index.json")).unwrap();
}

#[test]
fn a_huge_num_train_timesteps_is_rejected_before_any_table_is_built() {
    let text = br#"{"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 100000000000}"#;
    let msg = inkstone::config::SchedulerConfig::from_json(text).expect_err("rejected").to_string();
    assert!(msg.contains("num_train_timesteps"), "{msg}");
}
