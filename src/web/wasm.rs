//! Browser entry points (wasm32 only): the `Inkstone` object the JS worker drives.
//!
//! The worker (pkg/worker.js) does the networking and IndexedDB caching in JS and hands bytes
//! over: small files (configs, tokenizer) whole via [`Inkstone::add_file`], weight files as a
//! stream of pieces via [`Inkstone::begin_weights`] / [`Inkstone::feed`] /
//! [`Inkstone::end_weights`]. Each tensor is converted and created on the GPU as soon as its
//! bytes are complete, so a model file is never whole in the wasm heap.
//!
//! Two builds of this shell exist (build.sh): `--features webgpu` (inkstone_core.wasm, burn on
//! WebGPU) and `--features cpu` (inkstone_cpu.wasm, burn-flex with SIMD128 in the wasm's own
//! memory, for browsers without WebGPU). They differ only in [`init_device`]; the worker picks
//! which one to load.

mod generate;
mod lora;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

#[cfg(feature = "webgpu")]
use burn::tensor::wgpu::{WgpuBackend, wgpu};
use burn::tensor::{DType, Device, Tensor};
use wasm_bindgen::prelude::*;

use crate::source::MemorySource;
use crate::limits::DeviceLimits;
use crate::weights::{Header, TensorInfo, TensorStream, Weights, tensor_data};

/// Kernels cubecl records before it submits a command buffer (its default is 32: ~20 submits per
/// U-Net step). Above one step's dispatches, so a step is one submit: the generation loop
/// flushes after each step, and uploads flush on their own.
#[cfg(feature = "webgpu")]
const TASKS_PER_SUBMIT: usize = 4096;

/// Flattened device tensors of one component (in row pieces within the binding limit), with
/// their stored shapes.
type UploadedTensors = BTreeMap<String, crate::weights::Uploaded>;

/// The vae's encoder tensors as stored (bytes in the wasm heap, not on the GPU): image-to-image
/// alone runs them, so they are uploaded at the first `generate({ image })`
/// ([`crate::vae::Autoencoder::attach_encoder`]) and text-to-image sessions never pay for them.
struct HeldEncoder {
    /// `vae`, or the path of an original `taesd_encoder.safetensors` (loaded on its own).
    component: String,
    file: String,
    dtype: DType,
    tensors: Vec<(String, TensorInfo, Vec<u8>)>,
}

/// A weight file being streamed in.
struct Incoming {
    component: String,
    file: String,
    stream: TensorStream,
    /// The dtype its tensors are created in (f32 for a `force_upcast` VAE in an f16 load).
    dtype: DType,
}

pub(crate) struct State {
    device: Device,
    /// The working float dtype of the model being loaded: F16 on `shader-f16` GPUs.
    dtype: DType,
    /// Configs, tokenizer files and `*.index.json`: everything but weights.
    files: MemorySource,
    uploaded: BTreeMap<String, UploadedTensors>,
    /// Weight file paths per component, for error messages.
    weight_files: BTreeMap<String, Vec<String>>,
    incoming: Option<Incoming>,
    pipeline: Option<generate::Loaded>,
    /// LoRA files added by the worker, by its id for them (`wasm/lora.rs`).
    loras: BTreeMap<String, std::sync::Arc<crate::lora::LoraFile>>,
    /// What the device was granted: no tensor piece may be bigger.
    limits: DeviceLimits,
    held_encoder: Option<HeldEncoder>,
    /// GPU bytes of each component's weights (`vae.encoder` once uploaded), for `gen.info`.
    gpu_bytes: BTreeMap<String, usize>,
}

/// One device (WebGPU, or the CPU in the CPU build) plus the model loaded onto it.
#[wasm_bindgen]
pub struct Inkstone {
    state: Rc<RefCell<State>>,
    gpu: AdapterReport,
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// `v` as the plain JS value `JSON.parse` would give for its JSON (maps as objects, `None` as
/// null): what every export returns, built by serde-wasm-bindgen with no JSON text between.
pub(crate) fn to_js<T: serde::Serialize + ?Sized>(v: &T) -> Result<JsValue, JsError> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| js_err(format!("to JS: {e}")))
}

/// A JS value read as `T` (`what` names it in errors).
fn from_js<T: serde::de::DeserializeOwned>(what: &str, v: JsValue) -> Result<T, JsError> {
    serde_wasm_bindgen::from_value(v).map_err(|e| js_err(format!("{what}: {}", e.to_string().replace("Error: ", ""))))
}

/// What [`Inkstone::build`] reports (`info.components`, `dtype`, `gpuBytes`, `deferred` of a load).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Built {
    /// Tensors that arrived per component: on the GPU, or held until image-to-image.
    components: BTreeMap<String, usize>,
    dtype: &'static str,
    gpu_bytes: BTreeMap<String, usize>,
    /// Tensors kept off the GPU until image-to-image needs them (`vae.encoder`).
    deferred: BTreeMap<String, usize>,
}

/// A load's float dtype as the worker names it (`"f16"` or `"f32"`, what
/// [`Inkstone::resolve_dtype`] returns), parsed once at the boundary; anything else is an error.
fn load_dtype(name: &str) -> Result<DType, JsError> {
    match name {
        "f16" => Ok(DType::F16),
        "f32" => Ok(DType::F32),
        other => Err(js_err(format!("load dtype {other:?}: expected 'f16' or 'f32'"))),
    }
}

/// What `dtype: 'auto'` runs in on `device`: see [`Inkstone::resolve_dtype`]. The page shows it
/// (download sizes) as the adapter report's `autoDtype`.
fn auto_dtype(device: &Device) -> DType {
    if cfg!(feature = "webgpu") && device.supports_dtype(DType::F16) { DType::F16 } else { DType::F32 }
}

/// The worker's name of a load dtype (a load is only ever in F16 or F32: [`load_dtype`]).
fn dtype_name(dtype: DType) -> &'static str {
    if dtype == DType::F16 { "f16" } else { "f32" }
}

#[wasm_bindgen]
impl Inkstone {
    /// Creates the device of this build's backend ([`init_device`]: WebGPU, initialised
    /// asynchronously as the browser has no blocking adapter request; or the CPU) and keeps the
    /// one device every tensor will live on.
    pub async fn init() -> Result<Inkstone, JsError> {
        console_error_panic_hook::set_once();
        let (device, mut gpu, limits) = init_device().await?;
        gpu.auto_dtype = dtype_name(auto_dtype(&device));
        let state = State {
            device,
            dtype: DType::F32,
            files: MemorySource { name: "model".into(), files: BTreeMap::new() },
            uploaded: BTreeMap::new(),
            weight_files: BTreeMap::new(),
            incoming: None,
            pipeline: None,
            loras: BTreeMap::new(),
            limits,
            held_encoder: None,
            gpu_bytes: BTreeMap::new(),
        };
        Ok(Inkstone { state: Rc::new(RefCell::new(state)), gpu })
    }

    /// The adapter's name, limits and `shader-f16` support (the CPU build: SIMD128, thread
    /// count, memory cap): `GpuInfo` / `CpuInfo` of `pkg/index.d.ts` (a fresh object each call).
    #[wasm_bindgen(getter)]
    pub fn gpu(&self) -> Result<JsValue, JsError> {
        to_js(&self.gpu)
    }

    /// The float dtype a load with `requested` (`"auto"`, `"f16"` or `"f32"`) runs in: auto is
    /// f16 where the GPU has `shader-f16` (half the memory and bandwidth), f32 otherwise and on
    /// the CPU build (CPUs have no f16 arithmetic to gain from; f32 is the native CLI's default).
    /// Asking for f16 on a GPU without it is an error, before anything is downloaded.
    #[wasm_bindgen(js_name = resolveDtype)]
    pub fn resolve_dtype(&self, requested: &str) -> Result<String, JsError> {
        self.resolve(requested).map(|dtype| dtype_name(dtype).into())
    }

    fn resolve(&self, requested: &str) -> Result<DType, JsError> {
        let state = self.state.borrow();
        let f16 = state.device.supports_dtype(DType::F16);
        match requested {
            "auto" => Ok(auto_dtype(&state.device)),
            "f16" if !f16 => Err(js_err(
                "dtype 'f16' needs a GPU with the WebGPU feature shader-f16, which this adapter lacks; \
                 load with dtype 'f32' (or 'auto', which picks f32 here)",
            )),
            "f16" | "f32" => load_dtype(requested),
            other => Err(js_err(format!("dtype {other:?}: expected 'auto', 'f16' or 'f32'"))),
        }
    }

    /// Forgets the loaded model (before loading another one) and sets the dtype the next one is
    /// uploaded in (`dtype` as [`Inkstone::resolve_dtype`] takes it).
    pub fn reset(&self, name: &str, dtype: &str) -> Result<(), JsError> {
        let dtype = self.resolve(dtype)?;
        let mut s = self.state.borrow_mut();
        s.dtype = dtype;
        s.files = MemorySource { name: name.into(), files: BTreeMap::new() };
        s.uploaded.clear();
        s.weight_files.clear();
        s.incoming = None;
        s.pipeline = None;
        s.held_encoder = None;
        s.gpu_bytes.clear();
        Ok(())
    }

    /// A small non-weight file of the model folder (`unet/config.json`, `tokenizer/vocab.json`).
    #[wasm_bindgen(js_name = addFile)]
    pub fn add_file(&self, path: &str, bytes: Vec<u8>) {
        self.state.borrow_mut().files.files.insert(path.to_string(), bytes.into());
    }

    /// Starts streaming weight file `path` of `component`, given at least its first
    /// [`header_length`] bytes and its total length. Validates the header (the error names the file).
    #[wasm_bindgen(js_name = beginWeights)]
    pub fn begin_weights(&self, component: &str, path: &str, prefix: &[u8], file_len: f64) -> Result<(), JsError> {
        let header = Header::parse(path, prefix, file_len as u64).map_err(js_err)?;
        let stream = TensorStream::new(path, &header, file_len as u64).map_err(js_err)?;
        let mut s = self.state.borrow_mut();
        // Configs come first in the plan, so the component's config.json is here already.
        let dtype = crate::folder::component_dtype(&s.files, component, s.dtype).map_err(js_err)?;
        if is_vae(component) && crate::vae::is_encoder_tensor(path, "") {
            // An original `taesd_encoder.safetensors`: held whole, no component of its own yet.
            s.held_encoder = Some(HeldEncoder { component: component.into(), file: path.into(), dtype, tensors: vec![] });
            s.incoming = Some(Incoming { component: component.to_string(), file: path.to_string(), stream, dtype });
            return Ok(());
        }
        s.uploaded.entry(component.to_string()).or_default();
        s.weight_files.entry(component.to_string()).or_default().push(path.to_string());
        s.incoming = Some(Incoming { component: component.to_string(), file: path.to_string(), stream, dtype });
        Ok(())
    }

    /// The next bytes of the current weight file, in order, from its first byte.
    pub fn feed(&self, bytes: &[u8]) -> Result<(), JsError> {
        let mut guard = self.state.borrow_mut();
        let State {
            device,
            uploaded,
            incoming,
            limits,
            held_encoder,
            ..
        } = &mut *guard;
        let incoming = incoming
            .as_mut()
            .ok_or_else(|| js_err("feed() without beginWeights()"))?;
        let mut target = uploaded.get_mut(&incoming.component);
        let file = incoming.file.clone();
        incoming
            .stream
            .feed(bytes, |key, info, raw| {
                // Never run by the pipeline (and I64 in transformers-4 files): not uploaded.
                if crate::folder::is_unused_extra(&incoming.component, key) {
                    return Ok(());
                }
                if is_vae(&incoming.component) && crate::vae::is_encoder_tensor(&file, key) {
                    let held = held_encoder.get_or_insert_with(|| HeldEncoder {
                        component: incoming.component.clone(),
                        file: file.clone(),
                        dtype: incoming.dtype,
                        tensors: vec![],
                    });
                    held.tensors.push((key.to_string(), info.clone(), raw.to_vec()));
                    return Ok(());
                }
                let Some(target) = target.as_mut() else { return Ok(()) };
                let pieces = upload(
                    (&incoming.component, key),
                    info,
                    raw,
                    incoming.dtype,
                    device,
                    *limits,
                )?;
                target.insert(key.to_string(), (info.shape.clone(), pieces));
                Ok(())
            })
            .map_err(js_err)
    }

    /// Ends the current weight file; errors if it was incomplete.
    #[wasm_bindgen(js_name = endWeights)]
    pub fn end_weights(&self) -> Result<(), JsError> {
        let incoming = self.state.borrow_mut().incoming.take().ok_or_else(|| js_err("no weight file open"))?;
        incoming.stream.finish().map_err(js_err)
    }

    /// Builds the pipeline from the added files and uploaded tensors. Errors name the file and
    /// tensor (missing, wrong shape, leftover).
    pub fn build(&self) -> Result<JsValue, JsError> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        // What each component's weights hold on the GPU (row pieces included).
        let gpu_bytes: BTreeMap<String, usize> = s
            .uploaded
            .iter()
            .map(|(component, tensors)| (component.clone(), resident_bytes(tensors)))
            .collect();
        s.gpu_bytes = gpu_bytes.clone();
        let weights = std::mem::take(&mut s.uploaded)
            .into_iter()
            .map(|(component, tensors)| {
                let name = s.weight_files.get(&component).map(|f| f.join(", ")).unwrap_or_default();
                Ok((component, Weights::from_tensors(name, tensors, &s.device)?))
            })
            .collect::<crate::Result<BTreeMap<String, Weights>>>()
            .map_err(js_err)?;
        let held: usize = s.held_encoder.as_ref().map_or(0, |h| h.tensors.len());
        // Tensors that arrived per component: on the GPU, or held until image-to-image.
        let mut components: BTreeMap<String, usize> = weights.iter().map(|(k, w)| (k.clone(), w.keys().count())).collect();
        if let Some(h) = &s.held_encoder {
            *components.entry(h.component.clone()).or_default() += held;
        }
        let deferred = if held > 0 { BTreeMap::from([("vae.encoder".to_string(), held)]) } else { BTreeMap::new() };
        let built = Built { components, dtype: dtype_name(s.dtype), gpu_bytes, deferred };
        s.pipeline = Some(generate::Loaded::build(&s.files, weights, &s.device, s.dtype, s.limits).map_err(js_err)?);
        to_js(&built)
    }

    /// `[width, height]` of the warm-up: on WebGPU (unless `load()` is given `warmUp: false`) the
    /// worker runs one 1-step generation at this size right after [`Inkstone::build`]
    /// (pkg/worker.js `warmUp`), so the pipelines are compiled at load
    /// ([`crate::pipeline::Pipeline::warm_up_size`]: the default size, capped at
    /// [`crate::pipeline::WARM_UP_LATENT_SIDE`] latent pixels a side). The CPU build skips it.
    #[wasm_bindgen(js_name = warmUpSize)]
    pub fn warm_up_size(&self) -> Result<Vec<u32>, JsError> {
        let s = self.state.borrow();
        let loaded = s.pipeline.as_ref().ok_or_else(|| js_err("no model loaded"))?;
        let (w, h) = loaded.warm_up_size();
        Ok(vec![w as u32, h as u32])
    }

    /// Runs one generation. `options` is the JS options object (the fields of
    /// `generate::JsOptions`: prompt, negativePrompt, steps, guidance, seed, width, height,
    /// latents, scheduler, timesteps, sigmas, and image and strength for image-to-image);
    /// `on_step(i, total, preview)` is called after each step and may return a Promise (the
    /// worker yields there so a cancel message can arrive); `is_cancelled()` is checked between
    /// steps. Resolves to a [`generate::Generated`]: `{ width, height, rgba, pixels, seed,
    /// warnings, gpuBytes }`; `on_step` gets previews as `{ width, height, rgba }`.
    pub fn generate(
        &self,
        options: JsValue,
        on_step: js_sys::Function,
        is_cancelled: js_sys::Function,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (f, size) = state
                .borrow()
                .pipeline
                .as_ref()
                .map_or((8, (512, 512)), |l| (l.0.vae.pixels_per_latent(), l.0.default_size()));
            let opts = generate::options_from_js(&options, f, size).map_err(|e| JsValue::from(js_err(e)))?;
            if opts.init_image.is_some() {
                // Checked first: a call refused for its options uploads nothing.
                if let Some(l) = state.borrow().pipeline.as_ref() {
                    l.0.check(&opts).map_err(|e| JsValue::from(js_err(e)))?;
                }
                ensure_encoder(&state).map_err(|e| JsValue::from(js_err(e)))?;
            }
            let gpu_bytes = state.borrow().gpu_bytes.clone();
            let mut out = generate::run(state, opts, on_step, is_cancelled).await.map_err(JsValue::from)?;
            out.gpu_bytes = gpu_bytes;
            Ok(to_js(&out)?)
        })
    }
}

fn is_vae(component: &str) -> bool {
    component == "vae" || component.starts_with("vae/")
}

fn resident_bytes(tensors: &UploadedTensors) -> usize {
    tensors.values().flat_map(|(_, pieces)| pieces).map(|t| t.dims()[0] * t.dtype().size()).sum()
}

/// Before an image-to-image generation: uploads the held encoder tensors and adds the encoder
/// to the loaded vae (once; later calls find it resident). On error the tensors stay held and
/// nothing is kept on the GPU.
pub(crate) fn ensure_encoder(state: &Rc<RefCell<State>>) -> crate::Result<()> {
    let mut guard = state.borrow_mut();
    let s = &mut *guard;
    let Some(held) = s.held_encoder.as_ref() else { return Ok(()) };
    let mut tensors = UploadedTensors::new();
    for (key, info, raw) in &held.tensors {
        let pieces = upload((&held.component, key), info, raw, held.dtype, &s.device, s.limits)?;
        tensors.insert(key.clone(), (info.shape.clone(), pieces));
    }
    let bytes = resident_bytes(&tensors);
    let weights = Weights::from_tensors(held.file.clone(), tensors, &s.device)?.with_dtype(held.dtype);
    let original = crate::vae::is_encoder_tensor(&held.file, "");
    let loaded = s.pipeline.as_mut().ok_or_else(|| crate::Error::InvalidArgument("no model loaded".into()))?;
    let pipe = Rc::get_mut(&mut loaded.0)
        .ok_or_else(|| crate::Error::InvalidArgument("another generation is running".into()))?;
    pipe.vae.attach_encoder(weights, original)?;
    s.gpu_bytes.insert("vae.encoder".into(), bytes);
    s.held_encoder = None;
    Ok(())
}

/// The adapter report of the WebGPU build: `GpuInfo` of `pkg/index.d.ts` (less `jsFeatures`,
/// which the worker adds from the browser's own adapter).
#[cfg(feature = "webgpu")]
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AdapterReport {
    adapter: String,
    vendor: u32,
    architecture: String,
    backend: String,
    shader_f16: bool,
    max_buffer_size: u64,
    max_storage_buffer_binding_size: u64,
    max_compute_workgroup_storage_size: u32,
    max_compute_invocations_per_workgroup: u32,
    /// The dtype a load with `dtype: 'auto'` runs in here ([`auto_dtype`]).
    auto_dtype: &'static str,
}

/// The report of the CPU build: `CpuInfo` of `pkg/index.d.ts` (less `fallback`, the worker's).
#[cfg(all(feature = "cpu", not(feature = "webgpu")))]
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AdapterReport {
    adapter: &'static str,
    backend: &'static str,
    simd128: bool,
    threads: u32,
    shader_f16: bool,
    max_memory_bytes: u64,
    /// The dtype a load with `dtype: 'auto'` runs in here ([`auto_dtype`]).
    auto_dtype: &'static str,
}

/// The WebGPU device, with its adapter's report and the limits it was granted.
#[cfg(feature = "webgpu")]
async fn init_device() -> Result<(Device, AdapterReport, DeviceLimits), JsError> {
    let (device, setup) = Device::wgpu_options()
        .graphics_api(WgpuBackend::WebGpu)
        .tasks_max(TASKS_PER_SUBMIT)
        .init_with_setup_async()
        .await
        .map_err(|e| js_err(format!("WebGPU initialisation failed: {e}")))?;
    // cubecl requests the adapter's own limits (not WebGPU's defaults) for the device.
    let limits = setup.device.limits();
    let info = setup.adapter.get_info();
    let gpu = AdapterReport {
        adapter: info.name,
        vendor: info.vendor,
        architecture: info.driver,
        backend: format!("{:?}", setup.backend),
        shader_f16: setup.adapter.features().contains(wgpu::Features::SHADER_F16),
        max_buffer_size: limits.max_buffer_size,
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        auto_dtype: "f32", // set by `Inkstone::init` from the device
    };
    Ok((device, gpu, crate::limits::from_wgpu(&limits)))
}

/// The CPU build: burn-flex, the native CLI's CPU backend, in this wasm's linear memory (at
/// most 4 GiB on wasm32). Single-threaded: rayon runs its work on the calling thread when the
/// target cannot spawn threads (wasm32 without `atomics`, which needs a std rebuilt with
/// `-Z build-std`, i.e. a nightly toolchain and rust-src; docs/performance.md).
#[cfg(all(feature = "cpu", not(feature = "webgpu")))]
async fn init_device() -> Result<(Device, AdapterReport, DeviceLimits), JsError> {
    let gpu = AdapterReport {
        adapter: "CPU (WebAssembly)",
        backend: "flex",
        simd128: cfg!(target_feature = "simd128"),
        threads: 1,
        shader_f16: false,
        max_memory_bytes: CPU_MAX_MEMORY,
        auto_dtype: "f32", // set by `Inkstone::init` from the device
    };
    Ok((Device::flex(), gpu, DeviceLimits::NONE))
}

/// wasm32's address space: 65536 pages of 64 KiB, every browser's cap for one wasm memory.
#[cfg(all(feature = "cpu", not(feature = "webgpu")))]
const CPU_MAX_MEMORY: u64 = 4 << 30;

/// The most converted bytes held in the wasm heap at once during an upload.
const CONVERT_BYTES: usize = 16 << 20;

/// Creates one stored tensor on the device, converted to `dtype`, in the row pieces the
/// device's binding limit allows ([`DeviceLimits::row_pieces`], the cut `Weights` expects).
fn upload(
    (component, key): (&str, &str),
    info: &TensorInfo,
    raw: &[u8],
    dtype: DType,
    device: &Device,
    limits: DeviceLimits,
) -> crate::Result<Vec<Tensor<1>>> {
    let (shape, stored) = (&info.shape, info.dtype);
    let rows = shape.first().copied().unwrap_or(1);
    let row: usize = shape.iter().skip(1).product();
    if row as u64 * 4 > limits.max_tensor_bytes() {
        return Err(crate::weights::too_large(
            component,
            key,
            row as u64 * 4,
            DType::F32,
            limits,
        ));
    }
    let elem = stored.size();
    // Converted (f16 -> f32, ...) a few MiB at a time and joined on the GPU, so the wasm heap
    // holds the stored bytes plus one small conversion, not a converted copy of a 152 MB table.
    let convert_rows = (CONVERT_BYTES / (row * 4).max(1)).max(1);
    limits
        .row_pieces(rows, row)
        .into_iter()
        .map(|(start, n)| {
            let parts = (start..start + n)
                .step_by(convert_rows)
                .map(|s| {
                    let e = (s + convert_rows).min(start + n);
                    let data = tensor_data(component, key, stored, &raw[s * row * elem..e * row * elem], vec![(e - s) * row], dtype)?;
                    Ok(Tensor::<1>::from_data(data, (device, dtype)))
                })
                .collect::<crate::Result<Vec<_>>>()?;
            let piece = crate::limits::join_pieces(parts, 0);
            // The fusion backend queues uploads with their host data until it runs them: run
            // them now, or the wasm heap holds every converted tensor of the file at once.
            device.flush().map_err(|e| crate::Error::InvalidArgument(format!("{component}: uploading `{key}`: {e:?}")))?;
            Ok(piece)
        })
        .collect()
}

/// One round of the model-folder plan ([`crate::folder::plan_step`]): `known` is a
/// [`crate::folder::KnownFiles`] (sizes probed so far, texts of the JSON files read), `dtype`
/// the load's (`"f16"` / `"f32"`). Returns a [`crate::folder::PlanStep`]: the paths to probe
/// and read next, or the finished plan (files in load order, skipped components).
#[wasm_bindgen(js_name = planModel)]
pub fn plan_model(known: JsValue, dtype: &str) -> Result<JsValue, JsError> {
    let dtype = load_dtype(dtype)?;
    let known: crate::folder::KnownFiles = from_js("planModel: known files", known)?;
    let step = crate::folder::plan_step(&known, dtype).map_err(js_err)?;
    to_js(&step)
}

/// The option names `generate()` takes (the one list in Rust), for the test that holds
/// `pkg/index.d.ts`'s `GenerateOptions` to it.
#[wasm_bindgen(js_name = generateOptions)]
pub fn generate_options() -> Vec<String> {
    generate::OPTIONS.iter().map(|s| s.to_string()).collect()
}

/// GPU bytes weight file `path` of `component` will take in a load in `dtype` (`"f16"`/`"f32"`),
/// from its header (`prefix`: at least [`header_length`] bytes) and the planning round's
/// `known` files (the component's config decides its dtype): [`crate::folder::gpu_bytes`].
#[wasm_bindgen(js_name = weightsGpuBytes)]
pub fn weights_gpu_bytes(known: JsValue, component: &str, path: &str, prefix: &[u8], file_len: f64, dtype: &str) -> Result<f64, JsError> {
    let known: crate::folder::KnownFiles = from_js("weightsGpuBytes: known files", known)?;
    let header = Header::parse(path, prefix, file_len as u64).map_err(js_err)?;
    let dtype = load_dtype(dtype)?;
    crate::folder::gpu_bytes(&known, component, &header, dtype).map(|b| b as f64).map_err(js_err)
}

/// Bytes needed from the start of safetensors file `path` (`file_len` bytes) to parse its header,
/// from its first 8 (`prefix`): [`Header::checked_len`], whose errors name the file (too short,
/// header over the limit or past the end), so the worker never reads a bogus length's worth.
#[wasm_bindgen(js_name = headerLength)]
pub fn header_length(path: &str, prefix: &[u8], file_len: f64) -> Result<f64, JsError> {
    Header::checked_len(path, prefix, file_len as u64).map(|n| n as f64).map_err(js_err)
}

/// Validates a safetensors header without a device (the worker checks every download before
/// caching it). Errors name the file.
#[wasm_bindgen(js_name = checkSafetensors)]
pub fn check_safetensors(path: &str, prefix: &[u8], file_len: f64) -> Result<u32, JsError> {
    Header::parse(path, prefix, file_len as u64).map(|h| h.tensors.len() as u32).map_err(js_err)
}
