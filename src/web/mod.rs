//! The browser shell. `prepared` (all targets) builds the pipeline from tensors the worker has
//! already put on the GPU; `wasm` (wasm32 only) is the `Inkstone` object the JS worker drives.
//! The rest of the crate knows nothing of the browser.

pub mod prepared;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use prepared::from_parts;
#[cfg(target_arch = "wasm32")]
pub use wasm::*;
