//! safetensors parsing and loading: dtypes, sharding, and every way a file can be wrong.
//! Each error test asserts on the message: the user must learn which file and which tensor.

mod common;

use std::sync::Arc;

use common::device;
use inkstone::Error;
use inkstone::nn::{Conv2d, Conv2dConfig, Linear};
use burn::tensor::DType;
use inkstone::folder::weight_files;
use inkstone::source::{MemorySource, load_weights};
use inkstone::weights::{Header, SafetensorsFile, Weights};

/// Builds a safetensors file from (key, dtype, shape, raw bytes); offsets are laid out in order.
fn build(entries: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (key, dtype, shape, bytes) in entries {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            key.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    wrap(&serde_json::to_string(&header).unwrap(), &data)
}

fn wrap(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn linear_file() -> Vec<u8> {
    build(&[
        ("proj.weight", "F32", vec![3, 2], f32_bytes(&[1., 2., 3., 4., 5., 6.])),
        ("proj.bias", "F32", vec![3], f32_bytes(&[0.5, -0.5, 1.0])),
    ])
}

fn err_of<T>(r: Result<T, Error>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loads_f32_f16_bf16_to_the_same_values() {
    let values = [1.5f32, -2.25, 0.0, 1024.0];
    let f16: Vec<u8> = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let bf16: Vec<u8> = values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let bytes = build(&[
        ("a", "F32", vec![2, 2], f32_bytes(&values)),
        ("b", "F16", vec![2, 2], f16),
        ("c", "BF16", vec![2, 2], bf16),
    ]);
    let w = Weights::from_bytes("mixed.safetensors", bytes, &device()).unwrap();
    for key in ["a", "b", "c"] {
        let t = w.tensor(key, [2, 2]).unwrap();
        assert_eq!(t.into_data().try_to_vec::<f32>().unwrap(), values, "{key}");
    }
    w.finish().unwrap();
}

#[test]
fn linear_matches_torch_semantics() {
    // torch: y = x @ W^T + b with W stored [out, in].
    let w = Weights::from_bytes("lin.safetensors", linear_file(), &device()).unwrap();
    let lin = Linear::load(&w.root().pp("proj"), 2, 3, true).unwrap();
    w.finish().unwrap();
    let x = burn::tensor::Tensor::<2>::from_data([[1.0f32, 1.0]], &device());
    let y = lin.forward(x).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(y, vec![3.5, 6.5, 12.0]);
}

#[test]
fn truncated_file_is_an_error_naming_the_file() {
    let mut bytes = linear_file();
    bytes.truncate(bytes.len() - 5);
    let msg = err_of(SafetensorsFile::from_bytes("unet/diffusion_pytorch_model.safetensors", bytes));
    assert!(msg.contains("unet/diffusion_pytorch_model.safetensors"), "{msg}");
    assert!(msg.contains("proj.") && msg.contains("truncated"), "{msg}");
}

#[test]
fn header_length_beyond_file_is_an_error() {
    let mut bytes = linear_file();
    bytes[..8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let msg = err_of(SafetensorsFile::from_bytes("x.safetensors", bytes));
    assert!(msg.contains("x.safetensors") && msg.contains("header length 1048576 runs past the end"), "{msg}");
}

#[test]
fn absurd_header_length_is_rejected_before_allocating() {
    let mut bytes = linear_file();
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let msg = err_of(SafetensorsFile::from_bytes("x.safetensors", bytes));
    assert!(msg.contains("exceeds the"), "{msg}");
}

#[test]
fn tiny_or_empty_file_is_an_error() {
    for bytes in [vec![], vec![1, 2, 3]] {
        let msg = err_of(SafetensorsFile::from_bytes("empty.safetensors", bytes));
        assert!(msg.contains("empty.safetensors") && msg.contains("too short"), "{msg}");
    }
}

#[test]
fn header_that_is_not_json_is_an_error() {
    let msg = err_of(SafetensorsFile::from_bytes("x.safetensors", wrap("{not json", &[])));
    assert!(msg.contains("not a JSON object"), "{msg}");
}

#[test]
fn offsets_out_of_range_name_the_tensor() {
    let header = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"v":{"dtype":"F32","shape":[4],"data_offsets":[16,64]}}"#;
    let msg = err_of(SafetensorsFile::from_bytes("x.safetensors", wrap(header, &[0u8; 32])));
    assert!(msg.contains("tensor `v`") && msg.contains("outside the data section"), "{msg}");
}

#[test]
fn size_disagreeing_with_shape_names_the_tensor() {
    let header = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
    let msg = err_of(SafetensorsFile::from_bytes("x.safetensors", wrap(header, &[0u8; 16])));
    assert!(msg.contains("tensor `w`") && msg.contains("12 bytes for shape [3]"), "{msg}");
}

#[test]
fn overlapping_tensors_are_an_error() {
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#;
    let msg = err_of(SafetensorsFile::from_bytes("x.safetensors", wrap(header, &[0u8; 24])));
    assert!(msg.contains("`a` and `b` overlap"), "{msg}");
}

#[test]
fn unknown_dtype_is_an_error() {
    let header = r#"{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}"#;
    let msg = err_of(SafetensorsFile::from_bytes("x.safetensors", wrap(header, &[0u8; 1])));
    assert!(msg.contains("tensor `a`") && msg.contains("unknown dtype F7"), "{msg}");
}

#[test]
fn integer_tensor_where_floats_are_needed_is_an_error() {
    let bytes = build(&[("w", "I64", vec![1], vec![0u8; 8])]);
    let w = Weights::from_bytes("x.safetensors", bytes, &device()).unwrap();
    let msg = err_of(w.tensor("w", [1]));
    assert!(msg.contains("x.safetensors") && msg.contains("`w`") && msg.contains("I64"), "{msg}");
}

#[test]
fn missing_tensor_names_file_and_key() {
    let bytes = build(&[("proj.weight", "F32", vec![3, 2], f32_bytes(&[0.0; 6]))]);
    let w = Weights::from_bytes("text_encoder/model.safetensors", bytes, &device()).unwrap();
    let msg = err_of(Linear::load(&w.root().pp("proj"), 2, 3, true));
    assert_eq!(msg, "text_encoder/model.safetensors: missing tensor `proj.bias`");
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let w = Weights::from_bytes("vae.safetensors", linear_file(), &device()).unwrap();
    let msg = err_of(Conv2d::load(&w.root().pp("proj"), 2, 3, Conv2dConfig::same(1)));
    assert_eq!(msg, "vae.safetensors: tensor `proj.weight` has shape [3, 2], expected [3, 2, 1, 1]");
}

#[test]
fn leftover_tensors_are_reported() {
    let w = Weights::from_bytes("unet.safetensors", linear_file(), &device()).unwrap();
    w.tensor("proj.weight", [3, 2]).unwrap();
    let msg = err_of(w.finish());
    assert_eq!(msg, "unet.safetensors: unexpected tensor `proj.bias`");
}

#[test]
fn strip_prefix_accepts_both_key_layouts() {
    let with = build(&[("text_model.proj.weight", "F32", vec![3, 2], f32_bytes(&[0.0; 6]))]);
    let without = build(&[("proj.weight", "F32", vec![3, 2], f32_bytes(&[0.0; 6]))]);
    for bytes in [with, without] {
        let w = Weights::from_bytes("m.safetensors", bytes, &device()).unwrap().strip_prefix("text_model.");
        w.tensor("proj.weight", [3, 2]).unwrap();
        w.finish().unwrap();
    }
}

#[test]
fn header_parses_from_a_prefix_of_the_file() {
    // The browser parses the header from the first chunk, before the rest has arrived.
    let bytes = linear_file();
    let needed = Header::needed_len(&bytes).unwrap() as usize;
    let header = Header::parse("x", &bytes[..needed], bytes.len() as u64).unwrap();
    assert_eq!(header.tensors["proj.bias"].shape, vec![3]);
    assert_eq!(header.tensors["proj.bias"].end, bytes.len());
}

#[test]
fn sharded_weights_load_through_the_index() {
    let shard1 = build(&[("proj.weight", "F32", vec![3, 2], f32_bytes(&[0.0; 6]))]);
    let shard2 = build(&[("proj.bias", "F32", vec![3], f32_bytes(&[0.0; 3]))]);
    let index = r#"{"metadata":{},"weight_map":{"proj.weight":"model-00001-of-00002.safetensors","proj.bias":"model-00002-of-00002.safetensors"}}"#;
    let mut src = MemorySource { name: "mem".into(), ..Default::default() };
    src.files.insert("text_encoder/model.safetensors.index.json".into(), Arc::from(index.as_bytes()));
    src.files.insert("text_encoder/model-00001-of-00002.safetensors".into(), Arc::from(shard1));
    src.files.insert("text_encoder/model-00002-of-00002.safetensors".into(), Arc::from(shard2));
    assert_eq!(weight_files(&src, "text_encoder", DType::F32).unwrap().len(), 2);
    let w = load_weights(&src, "text_encoder", &device()).unwrap();
    Linear::load(&w.root().pp("proj"), 2, 3, true).unwrap();
    w.finish().unwrap();
}

#[test]
fn fp16_variant_is_found_when_it_is_the_only_file() {
    let mut src = MemorySource { name: "mem".into(), ..Default::default() };
    src.files.insert("unet/diffusion_pytorch_model.fp16.safetensors".into(), Arc::from(linear_file()));
    assert_eq!(weight_files(&src, "unet", DType::F32).unwrap(), vec!["unet/diffusion_pytorch_model.fp16.safetensors"]);
}

#[test]
fn component_without_weights_names_the_folder() {
    let src = MemorySource { name: "my-model".into(), ..Default::default() };
    let msg = err_of(weight_files(&src, "vae", DType::F32));
    assert!(msg.starts_with("my-model/vae: not found"), "{msg}");
}
