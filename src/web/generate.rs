//! The one place the browser calls the generation API (`crate::pipeline`): building the
//! pipeline from uploaded weights, and the step loop that yields to JS between steps for
//! cancellation and previews.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use burn::tensor::{DType, Device, Tensor};
use js_sys::{Float32Array, Function, Object, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use super::State;
use crate::error::Result;
use crate::pipeline::GenerateOptions;
use crate::source::MemorySource;
use crate::weights::Weights;

fn field(o: &JsValue, name: &str) -> JsValue {
    Reflect::get(o, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED)
}

fn opt_f64(o: &JsValue, name: &str) -> std::result::Result<Option<f64>, String> {
    let v = field(o, name);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_f64().map(Some).ok_or_else(|| format!("generate(): `{name}` must be a number"))
}

/// `generate({ prompt, negativePrompt, steps, guidance, seed, width, height, latents })`.
pub fn options_from_js(o: &JsValue) -> std::result::Result<GenerateOptions, String> {
    let text = |name: &str| field(o, name).as_string().unwrap_or_default();
    let size = |name: &str| -> std::result::Result<usize, String> {
        let v = opt_f64(o, name)?.unwrap_or(512.0);
        // Multiples of the decoder's scale factor are checked by the pipeline, which knows it.
        if v < 1.0 || v.fract() != 0.0 {
            return Err(format!("generate(): `{name}` must be a positive integer, got {v}"));
        }
        Ok(v as usize)
    };
    let latents = field(o, "latents");
    Ok(GenerateOptions {
        prompt: text("prompt"),
        negative_prompt: text("negativePrompt"),
        steps: opt_f64(o, "steps")?.map(|v| v as usize),
        guidance: opt_f64(o, "guidance")?.map(|v| v as f32),
        seed: opt_f64(o, "seed")?.unwrap_or(0.0) as u64,
        width: size("width")?,
        height: size("height")?,
        latents: latents.dyn_ref::<Float32Array>().map(Float32Array::to_vec),
    })
}

/// `{ width, height, pixels }` for a `[1, 3, H, W]` image in [0, 1], read back asynchronously
/// (synchronous reads panic on wasm).
async fn image_to_js(image: Tensor<4>) -> std::result::Result<JsValue, JsError> {
    let [_, _, h, w] = image.dims();
    let data = image.into_data_async().await.map_err(|e| JsError::new(&format!("GPU read-back: {e:?}")))?;
    let pixels = data.try_to_vec::<f32>().map_err(|e| JsError::new(&format!("GPU read-back: {e:?}")))?;
    let out = Object::new();
    Reflect::set(&out, &"width".into(), &(w as u32).into()).unwrap();
    Reflect::set(&out, &"height".into(), &(h as u32).into()).unwrap();
    Reflect::set(&out, &"pixels".into(), &Float32Array::from(&pixels[..])).unwrap();
    Ok(out.into())
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

mod wired {
    use super::*;
    use crate::pipeline::Pipeline;

    pub struct Loaded(pub Rc<Pipeline>);

    impl Loaded {
        pub fn build(files: &MemorySource, weights: BTreeMap<String, Weights>, device: &Device, dtype: DType) -> Result<Self> {
            Ok(Self(Rc::new(Pipeline::from_parts(files, weights, device, dtype)?)))
        }
    }

    pub async fn run(
        state: Rc<RefCell<State>>,
        opts: GenerateOptions,
        on_step: Function,
        is_cancelled: Function,
    ) -> std::result::Result<JsValue, JsError> {
        let pipeline =
            state.borrow().pipeline.as_ref().map(|l| l.0.clone()).ok_or_else(|| JsError::new("no model loaded"))?;
        let mut generation = pipeline.start(&opts).map_err(|e| JsError::new(&e.to_string()))?;
        let total = generation.total_steps();
        let mut i = 0;
        while !generation.is_done() {
            if call(&is_cancelled, &[]).await?.is_truthy() {
                return Err(JsError::new("cancelled"));
            }
            generation.step().map_err(|e| JsError::new(&e.to_string()))?;
            i += 1;
            let preview = match generation.preview() {
                Some(p) => image_to_js(p).await?,
                None => JsValue::NULL,
            };
            call(&on_step, &[(i as u32).into(), (total as u32).into(), preview]).await?;
        }
        image_to_js(generation.decode()).await
    }
}

pub use wired::{Loaded, run};
