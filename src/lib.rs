//! Inkstone: text-to-image generation with diffusers-format models on burn, natively and in
//! the browser (WebGPU). See `docs/architecture.md` for the module map.

pub mod attention;
pub mod config;
pub mod error;
#[cfg(feature = "gpu-kernels")]
pub mod gpu;
pub mod folder;
pub mod image;
pub mod img2img;
pub mod info;
pub mod limits;
pub mod lora;
pub mod nn;
pub mod pipeline;
pub mod resnet;
pub mod schedulers;
pub mod source;
pub mod text;
pub mod unet;
pub mod vae;
pub mod weights;

pub use error::{Error, Result};

/// The browser shell: wasm-bindgen bindings (wasm32 only) and the pipeline built from
/// GPU-resident weights; the rest of the crate stays free of web APIs.
pub mod web;
