//! Helpers shared by the parity tests: fixture paths, reference tensors written by
//! tools/reference (f32, or I64 for token ids), and max-abs-error assertions.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use inkstone::pipeline::GenerateOptions;
use inkstone::source::{DirSource, MemorySource, ModelSource};
use inkstone::unet::UNet2DConditionModel;
use inkstone::weights::{SafetensorsFile, StoredDtype, to_f32};

/// Native tests run on burn's pure-Rust CPU backend; built with `--features wgpu` and run with
/// `INKSTONE_DEVICE=wgpu`, the same tests run on the GPU (Vulkan/Metal/DX12, or lavapipe).
pub fn device() -> Device {
    #[cfg(feature = "wgpu")]
    if std::env::var("INKSTONE_DEVICE").as_deref() == Ok("wgpu") {
        return inkstone::limits::wgpu_device().expect("wgpu device").0;
    }
    Device::flex()
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// The diffusers-format tiny StableDiffusionPipeline folder.
pub fn tiny_sd() -> DirSource {
    DirSource::new(fixture("tiny-sd")).unwrap()
}

/// Tensors of one reference case, `tests/fixtures/ref/<name>.safetensors`.
pub struct RefTensors {
    file: SafetensorsFile,
}

pub fn reference(name: &str) -> RefTensors {
    RefTensors::open(&fixture(&format!("ref/{name}.safetensors")))
}

impl RefTensors {
    /// Any safetensors file of f32 tensors (e.g. the CLI's `--out-tensor`).
    pub fn open(path: &std::path::Path) -> RefTensors {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        RefTensors { file: SafetensorsFile::from_bytes(path.display().to_string(), bytes).unwrap() }
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.info(key).shape.clone()
    }

    /// The reference case's settings, written by tools/reference as JSON under `note`.
    pub fn note(&self) -> serde_json::Value {
        let note = self.file.header.metadata.get("note").expect("no `note` metadata");
        serde_json::from_str(note).expect("note is JSON")
    }

    pub fn has(&self, key: &str) -> bool {
        self.file.header.tensors.contains_key(key)
    }

    pub fn f32s(&self, key: &str) -> Vec<f32> {
        let info = self.info(key);
        to_f32(&self.file.name, key, info.dtype, self.file.raw(info)).unwrap()
    }

    pub fn tensor<const D: usize>(&self, key: &str) -> Tensor<D> {
        let shape: [usize; D] = self.shape(key).try_into().unwrap_or_else(|s| panic!("{key}: rank of {s:?} != {D}"));
        Tensor::from_data(TensorData::new(self.f32s(key), shape), &device())
    }

    /// Integer tensors (token ids, masks) stored as I64 or I32.
    pub fn i64s(&self, key: &str) -> Vec<i64> {
        let info = self.info(key);
        let raw = self.file.raw(info);
        match info.dtype {
            StoredDtype::Other("I64", _) => raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
            StoredDtype::Other("I32", _) => raw.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
            d => panic!("{key}: {d:?} is not an integer dtype"),
        }
    }

    /// U8 tensors (8-bit images) as stored.
    pub fn u8s(&self, key: &str) -> Vec<u8> {
        let info = self.info(key);
        assert!(matches!(info.dtype, StoredDtype::Other("U8", _)), "{key}: {:?} is not U8", info.dtype);
        self.file.raw(info).to_vec()
    }

    pub fn int_tensor<const D: usize>(&self, key: &str) -> Tensor<D, Int> {
        let shape: [usize; D] = self.shape(key).try_into().unwrap();
        Tensor::from_data(TensorData::new(self.i64s(key), shape), &device())
    }

    fn info(&self, key: &str) -> &inkstone::weights::TensorInfo {
        self.file.header.tensors.get(key).unwrap_or_else(|| panic!("{}: no tensor `{key}`", self.file.name))
    }
}

/// Max |a - b| after checking the shapes agree.
pub fn max_abs_diff<const D: usize>(got: Tensor<D>, want: Tensor<D>) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let a = got.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let b = want.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

/// Asserts max abs error ≤ `tol` and prints the figure (tests are run with --nocapture in CI
/// logs, so the measured error is visible, not just pass/fail).
pub fn assert_close<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>, tol: f32) {
    let err = max_abs_diff(got, want);
    println!("{what}: max abs error {err:.3e} (tolerance {tol:.0e})");
    assert!(err <= tol, "{what}: max abs error {err:e} > {tol:e}");
}

/// A safetensors file made of `file`'s tensors under new keys, dropping the tensors `rename`
/// maps to `None` (other checkpoint layouts, files missing tensors).
pub fn filter_keys(file: &inkstone::weights::SafetensorsFile, rename: impl Fn(&str) -> Option<String>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (key, info) in &file.header.tensors {
        let Some(new_key) = rename(key) else { continue };
        let start = data.len();
        data.extend_from_slice(file.raw(info));
        header.insert(
            new_key,
            serde_json::json!({"dtype": info.dtype.name(), "shape": info.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_string(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// The generation options of a reference pipeline case, read from the settings it was made
/// with (its `note`), with its initial latents.
pub fn case_options(case: &str) -> GenerateOptions {
    let r = reference(case);
    let note = r.note();
    GenerateOptions {
        prompt: note["prompt"].as_str().unwrap().into(),
        negative_prompt: note["negative_prompt"].as_str().unwrap().into(),
        steps: Some(note["steps"].as_u64().unwrap() as usize),
        guidance: Some(note["guidance"].as_f64().unwrap() as f32),
        seed: 0,
        width: note["width"].as_u64().unwrap() as usize,
        height: note["height"].as_u64().unwrap() as usize,
        latents: Some(r.f32s("latents")),
        scheduler: note["scheduler"].as_str().map(String::from),
        timesteps: None,
        sigmas: None,
        ..GenerateOptions::default()
    }
}

/// Loads the `component` U-Net of `src` in `dtype` and checks that
/// every stored tensor was used.
pub fn load_unet(src: &dyn ModelSource, component: &str, dtype: burn::tensor::DType) -> UNet2DConditionModel {
    UNet2DConditionModel::from_source(src, component, &device(), dtype).unwrap()
}

/// A deterministic, irregular f32 tensor with values in [-amplitude, amplitude): test inputs
/// larger than any stored reference (e.g. attention over 4096 tokens).
pub fn patterned<const D: usize>(shape: [usize; D], seed: u32, amplitude: f32) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0) * amplitude)
        .collect();
    Tensor::from_data(TensorData::new(v, shape), &device())
}

/// A fixture folder wholly in memory, to remove, replace or alter files.
pub fn memory(name: &str) -> MemorySource {
    let root = fixture(name);
    let mut files = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
                files.insert(rel, Arc::from(std::fs::read(&p).unwrap()));
            }
        }
    }
    MemorySource { name: name.into(), files }
}

/// Rewrites every value of the f32 tensors of `file` in `src`: `f(key, value)`.
pub fn map_f32(src: &mut MemorySource, file: &str, f: impl Fn(&str, f32) -> f32) {
    let mut bytes = src.files[file].to_vec();
    let header = inkstone::weights::Header::parse(file, &bytes, bytes.len() as u64).unwrap();
    for (key, t) in &header.tensors {
        for w in bytes[t.start..t.end].chunks_exact_mut(4) {
            let v = f(key, f32::from_le_bytes(w.try_into().unwrap()));
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
    src.files.insert(file.into(), Arc::from(bytes));
}

/// `model` with the f32 tensor `key` of `file` set to NaN.
pub fn poisoned(model: &str, file: &str, key: &str) -> MemorySource {
    let mut m = memory(model);
    map_f32(&mut m, file, |k, v| if k == key { f32::NAN } else { v });
    m
}

/// The message of an error result (panics on success, naming what was expected to fail).
pub fn err_of<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Runs the `inkstone` CLI built with these tests.
pub fn inkstone(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_inkstone")).args(args).output().unwrap()
}

/// A scratch path under the test target dir, in a folder per test file.
pub fn tmp(folder: &str, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
