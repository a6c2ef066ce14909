//! `Weights::from_tensors`: the browser backing (tensors pre-uploaded to the device one by one)
//! must behave exactly like the file backing: same values, same errors.

use crate::common;

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};
use inkstone::nn::Linear;
use inkstone::source::load_weights;
use inkstone::weights::{TensorStream, Weights, to_f32};

/// Every tensor of a component file, flattened and created on the device, as src/web does.
fn uploaded(component: &str) -> (Weights, Weights) {
    let dev = common::device();
    let src = common::tiny_sd();
    let from_files = load_weights(&src, component, &dev).unwrap();
    let path = inkstone::folder::weight_files(&src, component, burn::tensor::DType::F32).unwrap().remove(0);
    let file = inkstone::weights::SafetensorsFile::from_bytes(
        path.clone(),
        std::fs::read(common::fixture(&format!("tiny-sd/{path}"))).unwrap(),
    )
    .unwrap();
    let mut map = BTreeMap::new();
    for (key, info) in &file.header.tensors {
        let values = to_f32(&path, key, info.dtype, file.raw(info)).unwrap();
        let n = values.len();
        map.insert(key.clone(), (info.shape.clone(), vec![Tensor::<1>::from_data(TensorData::new(values, [n]), &dev)]));
    }
    (from_files, Weights::from_tensors(path, map, &dev).unwrap())
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn uploaded_tensors_equal_file_tensors_and_cover_the_component() {
    let (files, tensors) = uploaded("vae");
    let keys: Vec<String> = files.keys().map(String::from).collect();
    assert!(keys.len() > 10, "vae has {} tensors", keys.len());
    assert_eq!(keys, tensors.keys().map(String::from).collect::<Vec<_>>());
    let key = "decoder.conv_in.weight";
    let shape: [usize; 4] = files.shape(key).unwrap().try_into().unwrap();
    assert_eq!(tensors.shape(key).unwrap(), &shape);
    let (a, b) = (values(files.tensor(key, shape).unwrap()), values(tensors.tensor(key, shape).unwrap()));
    assert_eq!(a, b);
    assert!(a.iter().any(|v| *v != 0.0));
    // Every tensor equals its file counterpart; afterwards nothing is left over.
    for k in &keys {
        let shape = tensors.shape(k).unwrap().to_vec();
        let (a, b) = match shape.len() {
            1 => {
                (values(files.tensor::<1>(k, [shape[0]]).unwrap()), values(tensors.tensor::<1>(k, [shape[0]]).unwrap()))
            }
            2 => {
                let s: [usize; 2] = shape.clone().try_into().unwrap();
                (values(files.tensor(k, s).unwrap()), values(tensors.tensor(k, s).unwrap()))
            }
            4 => {
                let s: [usize; 4] = shape.clone().try_into().unwrap();
                (values(files.tensor(k, s).unwrap()), values(tensors.tensor(k, s).unwrap()))
            }
            r => panic!("{k}: unexpected rank {r}"),
        };
        assert_eq!(a, b, "{k}");
    }
    tensors.finish().unwrap();
    files.finish().unwrap();
}

#[test]
fn uploaded_linear_matches_file_linear() {
    let (files, tensors) = uploaded("text_encoder");
    let files = files.strip_prefix("text_model.");
    let tensors = tensors.strip_prefix("text_model.");
    let key = files.keys().find(|k| k.ends_with("q_proj.weight")).unwrap().trim_end_matches(".weight").to_string();
    let [o, i]: [usize; 2] = files.shape(&format!("{key}.weight")).unwrap().try_into().unwrap();
    let mut vb_f = files.root();
    let mut vb_t = tensors.root();
    for part in key.split('.') {
        vb_f = vb_f.pp(part);
        vb_t = vb_t.pp(part);
    }
    let a = Linear::load(&vb_f, i, o, true).unwrap();
    let b = Linear::load(&vb_t, i, o, true).unwrap();
    let x = Tensor::<2>::from_data(
        TensorData::new((0..2 * i).map(|v| (v as f32 * 0.37).sin()).collect::<Vec<_>>(), [2, i]),
        &common::device(),
    );
    common::assert_close("linear from uploaded tensors", b.forward(x.clone()), a.forward(x), 0.0);
}

#[test]
fn errors_are_the_same_as_with_files() {
    let (files, tensors) = uploaded("vae");
    let err = |r: inkstone::Result<Tensor<4>>| r.expect_err("must fail").to_string();
    // Missing key: names the component and the key.
    let e = err(tensors.tensor("decoder.nope.weight", [1, 1, 1, 1]));
    assert!(e.contains("decoder.nope.weight") && e.contains("vae/"), "{e}");
    // Wrong shape: names key, expected and found.
    let key = "decoder.conv_in.weight";
    let shape = files.shape(key).unwrap().to_vec();
    let e = err(tensors.tensor(key, [1, 2, 3, 4]));
    assert!(e.contains(key) && e.contains("[1, 2, 3, 4]") && e.contains(&format!("{shape:?}")), "{e}");
    assert_eq!(e, err(files.tensor(key, [1, 2, 3, 4])).replace(&files.name, &tensors.name));
    // Leftovers: everything unused is listed.
    let e = tensors.finish().unwrap_err().to_string();
    assert!(e.contains(&tensors.name) && e.contains("decoder.conv_in.bias"), "{e}");
    assert_eq!(e, files.finish().unwrap_err().to_string().replace(&files.name, &tensors.name));
}

#[test]
fn length_disagreeing_with_shape_is_rejected() {
    let dev = common::device();
    let mut map = BTreeMap::new();
    map.insert("w".to_string(), (vec![2, 3], vec![Tensor::<1>::from_data(TensorData::new(vec![0f32; 5], [5]), &dev)]));
    let e = Weights::from_tensors("unet/x.safetensors", map, &dev).err().unwrap().to_string();
    assert!(e.contains("unet/x.safetensors") && e.contains("`w`") && e.contains("[2, 3]"), "{e}");
}

/// Feeds `bytes` to a `TensorStream` in pieces of `piece` bytes; returns key → raw bytes.
fn stream(name: &str, bytes: &[u8], piece: usize) -> inkstone::Result<BTreeMap<String, Vec<u8>>> {
    let header = inkstone::weights::Header::parse(name, bytes, bytes.len() as u64)?;
    let mut s = TensorStream::new(name, &header, bytes.len() as u64)?;
    let mut got = BTreeMap::new();
    for chunk in bytes.chunks(piece) {
        s.feed(chunk, |k, _, raw| {
            assert!(got.insert(k.to_string(), raw.to_vec()).is_none(), "{k} delivered twice");
            Ok(())
        })?;
    }
    s.finish()?;
    Ok(got)
}

#[test]
fn tensor_stream_delivers_every_tensor_for_any_piece_size() {
    let path = "unet/diffusion_pytorch_model.safetensors";
    let bytes = std::fs::read(common::fixture(&format!("tiny-sd/{path}"))).unwrap();
    let file = inkstone::weights::SafetensorsFile::from_bytes(path, bytes.clone()).unwrap();
    for piece in [1usize, 7, 4096, 65_537, bytes.len()] {
        let got = stream(path, &bytes, piece).unwrap();
        assert_eq!(got.len(), file.header.tensors.len(), "piece {piece}");
        for (k, info) in &file.header.tensors {
            assert_eq!(got[k], file.raw(info), "piece {piece}: {k}");
        }
    }
}

#[test]
fn tensor_stream_rejects_a_truncated_stream() {
    let path = "vae/diffusion_pytorch_model.safetensors";
    let bytes = std::fs::read(common::fixture(&format!("tiny-sd/{path}"))).unwrap();
    let header = inkstone::weights::Header::parse(path, &bytes, bytes.len() as u64).unwrap();
    let mut s = TensorStream::new(path, &header, bytes.len() as u64).unwrap();
    let mut n = 0;
    s.feed(&bytes[..bytes.len() - 10], |_, _, _| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, header.tensors.len() - 1);
    let e = s.finish().unwrap_err().to_string();
    assert!(e.contains(path) && e.contains(&format!("of {}", bytes.len())), "{e}");
    // More bytes than announced is an error too.
    let e = s.feed(&[0u8; 11], |_, _, _| Ok(())).unwrap_err().to_string();
    assert!(e.contains(path) && e.contains("more than"), "{e}");
}
