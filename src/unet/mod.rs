//! The SD-family `UNet2DConditionModel` and its blocks, one file per block kind as in diffusers.

pub mod attention;
pub mod embeddings;
pub mod unet_2d_condition;
pub mod unet_blocks;

pub use embeddings::guidance_scale_embedding;
pub use crate::attention::EncoderStates;
pub use unet_2d_condition::UNet2DConditionModel;
