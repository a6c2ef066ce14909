//! The one place the browser calls the generation API (`crate::pipeline`): building the
//! pipeline from uploaded weights, and the step loop that yields to JS between steps for
//! cancellation and previews.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use burn::tensor::{DType, Device, Tensor};
use js_sys::{Float32Array, Function, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use super::State;
use crate::error::Result;
use crate::img2img::InitImage;
use crate::pipeline::{GenerateOptions, Pipeline};
use crate::source::MemorySource;
use crate::weights::Weights;

/// The options of `generate()`, each once: its field, its type and its JS name. From this one
/// list come [`JsOptions`], its deserializer (every error names its option) and [`OPTIONS`]
/// (the strictness check, and `generateOptions()`, which a test holds `index.d.ts` to).
macro_rules! js_options {
    ($($(#[$doc:meta])* $field:ident: $t:ty = $js:literal,)*) => {
        /// `generate()`'s options as JS passes them (null and undefined mean "not given").
        /// Strict: an unknown option, a wrong type, a number that is not a finite integer in
        /// range (steps, sizes, seed) or not finite (guidance, timesteps, sigmas) is an error
        /// naming the option.
        #[derive(Default)]
        struct JsOptions {
            $($(#[$doc])* $field: $t,)*
        }

        /// The option names `generate()` takes (camelCase, as JS passes them).
        pub(super) const OPTIONS: &[&str] = &[$($js),*];

        impl<'de> serde::Deserialize<'de> for JsOptions {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                struct Fields;
                impl<'de> serde::de::Visitor<'de> for Fields {
                    type Value = JsOptions;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("an options object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<JsOptions, A::Error> {
                        let mut out = JsOptions::default();
                        while let Some(key) = map.next_key::<String>()? {
                            match key.as_str() {
                                $($js => out.$field = map.next_value_seed(Named::<$t>($js, std::marker::PhantomData))?,)*
                                other => return Err(serde::de::Error::unknown_field(other, OPTIONS)),
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_struct("JsOptions", OPTIONS, Fields)
            }
        }
    };
}

js_options! {
    prompt: Option<String> = "prompt",
    negative_prompt: Option<String> = "negativePrompt",
    steps: Option<f64> = "steps",
    guidance: Option<f64> = "guidance",
    seed: Option<f64> = "seed",
    width: Option<f64> = "width",
    height: Option<f64> = "height",
    /// A `Float32Array`, kept as the JS object (no element-wise conversion).
    latents: JsValue = "latents",
    scheduler: Option<String> = "scheduler",
    timesteps: Option<Vec<f64>> = "timesteps",
    sigmas: Option<Vec<f64>> = "sigmas",
    /// img2img: a `Float32Array` `[3, height, width]` in [0, 1], or `{ width, height, data }`
    /// with 8-bit RGBA `data` (an `ImageData`; pkg/index.js makes one of the other kinds).
    image: JsValue = "image",
    strength: Option<f64> = "strength",
}

/// How one option's value is read: plain values through serde, JS objects kept as they are.
trait FromJs: Sized {
    fn from_js<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error>;
}

impl<T: serde::de::DeserializeOwned> FromJs for Option<T> {
    fn from_js<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        <Option<T> as serde::Deserialize<'de>>::deserialize(d)
    }
}

impl FromJs for JsValue {
    fn from_js<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        serde_wasm_bindgen::preserve::deserialize(d)
    }
}

/// One option's value. serde's type errors do not say which field failed: this prefixes the
/// option's JS name.
struct Named<T>(&'static str, std::marker::PhantomData<T>);

impl<'de, T: FromJs> serde::de::DeserializeSeed<'de> for Named<T> {
    type Value = T;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<T, D::Error> {
        T::from_js(d).map_err(|e| serde::de::Error::custom(format!("`{}`: {e}", self.0)))
    }
}

/// `v` as an integer in `lo..=hi`, or an error naming option `name`.
fn integer(name: &str, v: f64, lo: f64, hi: f64) -> std::result::Result<f64, String> {
    if v.is_finite() && v.fract() == 0.0 && (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("generate(): `{name}` must be an integer in {lo}..={hi}, got {v}"))
    }
}

fn finite_list(name: &str, values: Option<Vec<f64>>) -> std::result::Result<Option<Vec<f64>>, String> {
    match values {
        Some(v) if v.iter().any(|x| !x.is_finite()) => {
            Err(format!("generate(): `{name}` must hold finite numbers, got {v:?}"))
        }
        v => Ok(v),
    }
}

/// serde-wasm-bindgen reads a struct's fields by name and never sees other keys, so
/// `deny_unknown_fields` alone would let a misspelt option (`step: 2`) pass silently.
fn reject_unknown_options(o: &JsValue) -> std::result::Result<(), String> {
    if !o.is_object() {
        return Ok(()); // serde names the wrong type
    }
    for key in js_sys::Object::keys(o.unchecked_ref::<js_sys::Object>()).iter().filter_map(|k| k.as_string()) {
        if !OPTIONS.contains(&key.as_str()) {
            return Err(format!("generate(): unknown field `{key}`, expected one of {}", OPTIONS.join(", ")));
        }
    }
    Ok(())
}

/// The largest integer a JS number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// The `image` option: a `Float32Array` `[3, H, W]` (its size is `width` × `height`, which must
/// then be given) or an `ImageData`-like `{ width, height, data }` (RGBA bytes; alpha dropped by
/// [`InitImage::from_rgba8`]).
fn image_from_js(image: &JsValue, width: Option<f64>, height: Option<f64>) -> std::result::Result<Option<InitImage>, String> {
    if image.is_undefined() || image.is_null() {
        return Ok(None);
    }
    let err = |e: crate::Error| format!("generate(): `image`: {e}");
    if let Some(array) = image.dyn_ref::<Float32Array>() {
        let (Some(w), Some(h)) = (width, height) else {
            return Err("generate(): `image` as a Float32Array [3, H, W] needs `width` and `height` (its size)".into());
        };
        let (w, h) = (integer("width", w, 1.0, 16384.0)? as usize, integer("height", h, 1.0, 16384.0)? as usize);
        return InitImage::new(w, h, array.to_vec()).map(Some).map_err(err);
    }
    let field = |name: &str| Reflect::get(image, &name.into()).ok().filter(|v| !v.is_undefined());
    let bad = || "generate(): `image` must be an ImageData ({ width, height, data: RGBA bytes }), ImageBitmap, \
                  HTMLImageElement, HTMLCanvasElement, Blob or Float32Array [3, H, W]"
        .to_string();
    let (Some(w), Some(h), Some(data)) = (field("width"), field("height"), field("data")) else { return Err(bad()) };
    let (w, h) = (w.as_f64().ok_or_else(bad)?, h.as_f64().ok_or_else(bad)?);
    let (w, h) = (integer("image.width", w, 1.0, 16384.0)? as usize, integer("image.height", h, 1.0, 16384.0)? as usize);
    let bytes = if let Some(a) = data.dyn_ref::<js_sys::Uint8ClampedArray>() {
        a.to_vec()
    } else if let Some(a) = data.dyn_ref::<js_sys::Uint8Array>() {
        a.to_vec()
    } else {
        return Err(bad());
    };
    InitImage::from_rgba8(w, h, &bytes).map(Some).map_err(err)
}

/// Parses and checks the options of `generate()` (see [`JsOptions`]); `f` is the loaded model's
/// pixels per latent (an `ImageData` image without `width`/`height` sets the size, rounded down
/// to a multiple of it, as diffusers' img2img).
pub fn options_from_js(o: &JsValue, f: usize, default_size: (usize, usize)) -> std::result::Result<GenerateOptions, String> {
    reject_unknown_options(o)?;
    // serde-wasm-bindgen's errors are JS `Error`s: their text carries `Error: ` prefixes.
    let js: JsOptions =
        serde_wasm_bindgen::from_value(o.clone()).map_err(|e| format!("generate(): {}", e.to_string().replace("Error: ", "")))?;
    // Without a size: the model's own (`Pipeline::default_size`, as the CLI and diffusers).
    let size = |name: &str, v: Option<f64>, default: usize| -> std::result::Result<usize, String> {
        // Multiples of the decoder's scale factor are checked by the pipeline, which knows it.
        Ok(integer(name, v.unwrap_or(default as f64), 1.0, 16384.0)? as usize)
    };
    let latents = if js.latents.is_undefined() || js.latents.is_null() {
        None
    } else {
        let array = js.latents.dyn_ref::<Float32Array>().ok_or("generate(): `latents` must be a Float32Array")?;
        Some(array.to_vec())
    };
    if let Some(g) = js.guidance.filter(|&g| !(g as f32).is_finite()) {
        return Err(format!("generate(): `guidance` must be a finite number, got {g}"));
    }
    let init_image = image_from_js(&js.image, js.width, js.height)?;
    if js.strength.is_some() && init_image.is_none() {
        return Err("generate(): `strength` needs an `image` (image-to-image)".into());
    }
    let (mut width, mut height) = (js.width, js.height);
    if let Some(image) = &init_image {
        let (w, h) = image.default_size(f);
        width = width.or(Some(w as f64));
        height = height.or(Some(h as f64));
    }
    Ok(GenerateOptions {
        prompt: js.prompt.unwrap_or_default(),
        negative_prompt: js.negative_prompt.unwrap_or_default(),
        steps: js.steps.map(|v| integer("steps", v, 1.0, 10_000.0)).transpose()?.map(|v| v as usize),
        guidance: js.guidance.map(|v| v as f32),
        seed: match js.seed {
            Some(seed) => integer("seed", seed, 0.0, MAX_SAFE_INTEGER)? as u64,
            None => random_seed(),
        },
        width: size("width", width, default_size.0)?,
        height: size("height", height, default_size.1)?,
        latents,
        scheduler: js.scheduler,
        timesteps: finite_list("timesteps", js.timesteps)?,
        sigmas: finite_list("sigmas", js.sigmas)?,
        init_image,
        strength: js.strength.unwrap_or(crate::img2img::DEFAULT_STRENGTH),
    })
}

/// The seed of a `generate()` without one (the output says which): any in 0..2³², as a JS
/// number holds it exactly.
fn random_seed() -> u64 {
    (js_sys::Math::random() * 4_294_967_296.0).floor() as u64
}

/// An image as the worker posts it: the `Preview` of `pkg/index.d.ts` (and, with `pixels`, the
/// image of [`Generated`]). The arrays are built as typed arrays in one copy each (serde would make a
/// JS array element by element): `preserve` passes them through unchanged.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Image {
    width: u32,
    height: u32,
    /// 8-bit RGBA (`Uint8ClampedArray`, for `ImageData`): [`crate::image::to_interleaved_u8`].
    #[serde(with = "serde_wasm_bindgen::preserve")]
    rgba: JsValue,
    /// `[3, H, W]` in [0, 1] (`Float32Array`); not sent with previews.
    #[serde(with = "serde_wasm_bindgen::preserve", skip_serializing_if = "JsValue::is_undefined")]
    pixels: JsValue,
}

/// What `Inkstone::generate` resolves to: the image, the seed it used, the warnings, and the
/// GPU bytes per component now resident (the first image-to-image call adds `vae.encoder`).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Generated {
    width: u32,
    height: u32,
    #[serde(with = "serde_wasm_bindgen::preserve")]
    rgba: JsValue,
    #[serde(with = "serde_wasm_bindgen::preserve")]
    pixels: JsValue,
    seed: u64,
    warnings: Vec<String>,
    pub(super) gpu_bytes: BTreeMap<String, usize>,
}

/// A `[1, 3, H, W]` image in [0, 1], read back asynchronously (synchronous reads panic on
/// wasm), with its `[3, H, W]` floats when `with_pixels`.
async fn read_image(image: Tensor<4>, with_pixels: bool) -> std::result::Result<Image, JsError> {
    let [_, _, h, w] = image.dims();
    let data = image.into_data_async().await.map_err(|e| JsError::new(&format!("GPU read-back: {e:?}")))?;
    let pixels = data.try_to_vec::<f32>().map_err(|e| JsError::new(&format!("GPU read-back: {e:?}")))?;
    let rgba = crate::image::to_interleaved_u8(&pixels, w, h, true);
    Ok(Image {
        width: w as u32,
        height: h as u32,
        rgba: js_sys::Uint8ClampedArray::from(&rgba[..]).into(),
        pixels: if with_pixels { Float32Array::from(&pixels[..]).into() } else { JsValue::UNDEFINED },
    })
}

/// A one-element 0/1 flag from the GPU (asynchronous read-back).
async fn read_flag(t: Tensor<1>) -> std::result::Result<bool, JsError> {
    let data = t.into_data_async().await.map_err(|e| JsError::new(&format!("GPU read-back: {e:?}")))?;
    Ok(data.convert::<f32>().try_to_vec::<f32>().map_err(|e| JsError::new(&format!("GPU read-back: {e:?}")))?[0] > 0.5)
}

/// Awaits `f(args)` if it returned a Promise (the worker yields to its event loop there).
async fn call(f: &Function, args: &[JsValue]) -> std::result::Result<JsValue, JsError> {
    let arr = js_sys::Array::new();
    for a in args {
        arr.push(a);
    }
    let v = f.apply(&JsValue::NULL, &arr).map_err(|e| JsError::new(&format!("{e:?}")))?;
    match v.dyn_into::<js_sys::Promise>() {
        Ok(p) => JsFuture::from(p).await.map_err(|e| JsError::new(&format!("{e:?}"))),
        Err(v) => Ok(v),
    }
}

pub struct Loaded(pub Rc<Pipeline>);

impl Loaded {
    pub fn build(
        files: &MemorySource,
        weights: BTreeMap<String, Weights>,
        device: &Device,
        dtype: DType,
        limits: crate::limits::DeviceLimits,
    ) -> Result<Self> {
        Ok(Self(Rc::new(crate::web::from_parts(files, weights, device, dtype, limits)?)))
    }

    /// (width, height) of the warm-up generation `load()` runs: [`Pipeline::warm_up_size`].
    pub fn warm_up_size(&self) -> (usize, usize) {
        self.0.warm_up_size()
    }
}

pub async fn run(
    state: Rc<RefCell<State>>,
    opts: GenerateOptions,
    on_step: Function,
    is_cancelled: Function,
) -> std::result::Result<Generated, JsError> {
    let pipeline =
        state.borrow().pipeline.as_ref().map(|l| l.0.clone()).ok_or_else(|| JsError::new("no model loaded"))?;
    let device = state.borrow().device.clone();
    let mut generation = pipeline.start(&opts).map_err(|e| JsError::new(&e.to_string()))?;
    let total = generation.total_steps();
    let mut i = 0;
    while !generation.is_done() {
        if call(&is_cancelled, &[]).await?.is_truthy() {
            return Err(JsError::new("cancelled"));
        }
        generation.step().map_err(|e| JsError::new(&e.to_string()))?;
        // Hands the step to the GPU now (one submit) so it runs while JS handles the step.
        device.flush().map_err(|e| JsError::new(&format!("GPU submit: {e:?}")))?;
        i += 1;
        let preview = match generation.preview() {
            Some(p) => super::to_js(&read_image(p, false).await?)?,
            None => JsValue::NULL,
        };
        call(&on_step, &[(i as u32).into(), (total as u32).into(), preview]).await?;
    }
    let warnings = generation.warnings().to_vec();
    let out = generation.finish();
    let (latents_ok, pixels_ok) = (read_flag(out.latents_finite.clone()).await?, read_flag(out.pixels_finite.clone()).await?);
    let js = |e: crate::Error| JsError::new(&e.to_string());
    let image = match pipeline.after_decode(&out, latents_ok, pixels_ok).map_err(js)? {
        None => out.image,
        Some(rerun) => {
            pipeline.check_finite_after_rerun(read_flag(rerun.pixels_finite).await?).map_err(js)?;
            rerun.image
        }
    };
    let Image { width, height, rgba, pixels } = read_image(image, true).await?;
    Ok(Generated { width, height, rgba, pixels, seed: opts.seed, warnings, gpu_bytes: BTreeMap::new() })
}

