//! The SD-family `UNet2DConditionModel` and its blocks, one file per block kind as in diffusers.

pub mod attention;
pub mod embeddings;
pub mod resnet;
#[allow(clippy::module_inception)]
pub mod unet;
pub mod unet_blocks;

pub use embeddings::guidance_scale_embedding;
pub use unet::UNet2DConditionModel;
