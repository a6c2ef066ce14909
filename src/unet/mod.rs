//! The SD-family `UNet2DConditionModel` and its blocks, one file per block kind as in diffusers.

pub mod resnet;
