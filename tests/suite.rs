//! The native test suite as one test binary: each file of tests/ is a module here (one link
//! and one copy of burn's generic code instead of one per file: ~15 of the suite's ~20 test
//! binaries). `cargo test --test suite vae::` runs one file's tests. fuzz_smoke.rs and
//! limits.rs stay binaries of their own: each installs its own global allocator.

mod common;

mod cli;
mod cli_img2img;
mod config;
mod f16;
mod gpu_kernels;
mod hub;
mod img2img;
mod lora;
mod pipeline;
mod prompt_truncation;
mod schedulers;
mod text;
mod unet;
mod vae;
mod weights;
mod weights_web;
