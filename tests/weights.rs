//! safetensors parsing and loading: dtypes, sharding, and every way a file can be wrong.
//! Each error test asserts on the message: the user must learn which file and which tensor.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{device, err_of};
use inkstone::Error;
use inkstone::nn::{Conv2d, Conv2dConfig, Linear};
use burn::tensor::DType;
use inkstone::folder::weight_files;
use inkstone::source::{MemorySource, load_weights};
use inkstone::weights::{Header, SafetensorsFile, TensorStream, Weights};

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

// ---------------------------------------------------------------------------------------------
// Exact coverage of the data section (the safetensors rule): no hole, no overlap, nothing after
// the last tensor, the first tensor at offset 0. Each case is checked on the whole file and on
// the streaming path (header parsed from a prefix, bytes fed in random pieces).

/// A two-tensor file whose header JSON is padded with spaces to a multiple of 8, as the
/// `safetensors` writers do: that padding is why a length one byte short still parses.
fn padded_file() -> Vec<u8> {
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]}}"#;
    let padded = format!("{header:<width$}", width = header.len().div_ceil(8) * 8 + 8);
    wrap(&padded, &(1u8..=14).collect::<Vec<u8>>())
}

/// Streams `bytes` as the browser does: header from the first `needed_len` bytes, then the
/// whole file in pieces whose sizes a xorshift generator seeded with `seed` picks.
fn stream_random(name: &str, bytes: &[u8], seed: u64) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let needed = (Header::needed_len(bytes).unwrap() as usize).min(bytes.len());
    let header = Header::parse(name, &bytes[..needed], bytes.len() as u64)?;
    let mut stream = TensorStream::new(name, &header, bytes.len() as u64)?;
    let (mut state, mut at, mut got) = (seed | 1, 0, BTreeMap::new());
    while at < bytes.len() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state as usize % 9).min(bytes.len() - at);
        stream.feed(&bytes[at..at + n], |k, _, raw| {
            got.insert(k.to_string(), raw.to_vec());
            Ok(())
        })?;
        at += n;
    }
    stream.finish()?;
    Ok(got)
}

/// Asserts that the whole-file parse and the streaming path (for several chunkings) both fail
/// with the same message, which names the file and contains `want`.
fn rejected_both_ways(bytes: &[u8], want: &str) {
    let name = "unet/diffusion_pytorch_model.safetensors";
    let whole = err_of(SafetensorsFile::from_bytes(name, bytes.to_vec()));
    assert!(whole.starts_with(name) && whole.contains(want), "{whole}");
    for seed in 1..=5 {
        assert_eq!(err_of(stream_random(name, bytes, seed)), whole, "seed {seed}");
    }
}

#[test]
fn padded_file_is_valid_whole_and_streamed() {
    // The control for the cases below: the unmodified file passes both ways, byte-exact.
    let bytes = padded_file();
    let file = SafetensorsFile::from_bytes("x", bytes.clone()).unwrap();
    assert_eq!(file.raw(&file.header.tensors["b"]), &(9u8..=14).collect::<Vec<u8>>()[..]);
    for seed in 1..=5 {
        let got = stream_random("x", &bytes, seed).unwrap();
        assert_eq!(got["a"], (1u8..=8).collect::<Vec<u8>>());
        assert_eq!(got["b"], (9u8..=14).collect::<Vec<u8>>());
    }
}

#[test]
fn header_length_one_byte_short_is_rejected() {
    // The JSON still parses (it ends in spaces) but every tensor would be read one byte early.
    let mut bytes = padded_file();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes[..8].copy_from_slice(&(n - 1).to_le_bytes());
    rejected_both_ways(&bytes, "1 byte left over after the last tensor `b`; header length off");
}

#[test]
fn header_length_one_byte_long_is_rejected() {
    let mut bytes = padded_file();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes[..8].copy_from_slice(&(n + 1).to_le_bytes());
    rejected_both_ways(&bytes, "header is not a JSON object");
    // Even when the swallowed data byte is whitespace the JSON parses: the offsets catch it.
    let data_start = 8 + n as usize;
    bytes[data_start] = b' ';
    rejected_both_ways(&bytes, "tensor `b`: data offsets [8, 14] outside the data section of 13 bytes");
}

#[test]
fn hole_between_tensors_is_rejected() {
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[20,36]}}"#;
    rejected_both_ways(&wrap(header, &[0u8; 36]), "a hole of 4 bytes between tensors `a` and `b`");
}

#[test]
fn bytes_after_the_last_tensor_are_rejected() {
    let mut bytes = linear_file();
    bytes.extend_from_slice(&[0, 0, 0]);
    rejected_both_ways(&bytes, "3 bytes left over after the last tensor `proj.bias`");
    // A header that lists no tensors must be followed by nothing.
    rejected_both_ways(&wrap("{}", &[7]), "1 byte left over after a header that lists no tensors");
}

#[test]
fn first_tensor_not_at_offset_zero_is_rejected() {
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}}"#;
    rejected_both_ways(&wrap(header, &[0u8; 20]), "tensor `a` starts at data offset 4, not 0: a hole of 4 bytes");
}

#[test]
fn overlapping_tensors_are_rejected_both_ways() {
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#;
    rejected_both_ways(&wrap(header, &[0u8; 24]), "tensors `a` and `b` overlap");
    // A zero-length tensor inside another one overlaps it too (as the safetensors crate says).
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}}"#;
    rejected_both_ways(&wrap(header, &[0u8; 16]), "tensors `a` and `z` overlap");
}

#[test]
fn zero_length_tensors_between_others_are_valid() {
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#;
    let bytes = wrap(header, &[1, 2, 3, 4, 5, 6]);
    SafetensorsFile::from_bytes("x", bytes.clone()).unwrap();
    let got = stream_random("x", &bytes, 3).unwrap();
    assert_eq!((got["a"].len(), got["z"].len(), got["b"].clone()), (4, 0, vec![5, 6]));
}

#[test]
fn stream_of_another_length_than_the_header_was_checked_for_is_rejected() {
    let bytes = linear_file();
    let header = Header::parse("x.safetensors", &bytes, bytes.len() as u64).unwrap();
    let longer = err_of(TensorStream::new("x.safetensors", &header, bytes.len() as u64 + 1));
    assert!(longer.contains("x.safetensors") && longer.contains("1 byte left over after the last tensor"), "{longer}");
    let shorter = err_of(TensorStream::new("x.safetensors", &header, bytes.len() as u64 - 1));
    assert!(shorter.contains("past the end of the file"), "{shorter}");
}

#[test]
fn every_committed_safetensors_fixture_is_valid() {
    // The stricter rule must not reject what diffusers/transformers wrote.
    let mut n = 0;
    let mut dirs = vec![common::fixture("")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                let bytes = std::fs::read(&path).unwrap();
                SafetensorsFile::from_bytes(path.display().to_string(), bytes.clone()).unwrap();
                assert!(safetensors::SafeTensors::deserialize(&bytes).is_ok(), "{}", path.display());
                n += 1;
            }
        }
    }
    println!("{n} committed safetensors files valid");
    assert!(n > 40, "only {n} fixtures found");
}

#[test]
fn null_metadata_is_no_metadata_as_in_the_safetensors_crate() {
    let bytes = wrap(r#"{"__metadata__":null,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, &[9]);
    assert!(safetensors::SafeTensors::deserialize(&bytes).is_ok());
    let file = SafetensorsFile::from_bytes("x", bytes).unwrap();
    assert!(file.header.metadata.is_empty());
    let msg = err_of(SafetensorsFile::from_bytes("x", wrap(r#"{"__metadata__":{"a":1}}"#, &[])));
    assert!(msg.contains("`__metadata__` is not a string map"), "{msg}");
}

#[test]
fn a_key_given_twice_is_an_error() {
    // A JSON map would keep the last entry silently; the fuzzer found the crate and a
    // map-based parse disagreeing on such a header. Both offsets are valid here.
    let entry = r#"{"dtype":"U8","shape":[1],"data_offsets":[0,1]}"#;
    let msg = err_of(SafetensorsFile::from_bytes("x", wrap(&format!(r#"{{"a":{entry},"a":{entry}}}"#), &[1])));
    assert!(msg.starts_with("x: ") && msg.contains("`a` appears twice in the header"), "{msg}");
    let msg = err_of(SafetensorsFile::from_bytes("x", wrap(r#"{"__metadata__":{},"__metadata__":{}}"#, &[])));
    assert!(msg.contains("`__metadata__` appears twice"), "{msg}");
    // A field given twice inside an entry is an error too (as in the crate).
    let header = r#"{"a":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}}"#;
    let msg = err_of(SafetensorsFile::from_bytes("x", wrap(header, &[1])));
    assert!(msg.contains("tensor `a`: bad header entry: duplicate field `dtype`"), "{msg}");
    assert!(safetensors::SafeTensors::deserialize(&wrap(header, &[1])).is_err());
}
