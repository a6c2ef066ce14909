//! LoRA adapters in the browser. The worker hands each adapter file's bytes over once
//! ([`Inkstone::add_lora`], read from IndexedDB or a picked file, downloaded only the first
//! time); [`Inkstone::set_loras`] then fuses a set with its scales on the GPU. A change of
//! scales passes no bytes at all: the adapters' factors are already on the device.

use std::rc::Rc;
use std::sync::Arc;

use wasm_bindgen::prelude::*;

use super::{Inkstone, from_js, js_err, to_js};
use crate::lora::LoraFile;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wanted {
    id: String,
    scale: f32,
}

#[wasm_bindgen]
impl Inkstone {
    /// Parses a LoRA file (`name` for messages) and keeps it under `id` for
    /// [`Inkstone::set_loras`]; returns `{ format, layers }`. Corrupt or unsupported files are
    /// refused here, before anything touches the model.
    #[wasm_bindgen(js_name = addLora)]
    pub fn add_lora(&self, id: &str, name: &str, bytes: Vec<u8>) -> Result<JsValue, JsError> {
        #[derive(serde::Serialize)]
        struct Added {
            format: &'static str,
            layers: usize,
        }
        let file = LoraFile::from_bytes(name, bytes).map_err(js_err)?;
        let added = Added { format: file.format.name(), layers: file.layers.len() };
        self.state.borrow_mut().loras.insert(id.to_string(), Arc::new(file));
        to_js(&added)
    }

    /// Whether the adapter `id` was added (and not dropped since).
    #[wasm_bindgen(js_name = hasLora)]
    pub fn has_lora(&self, id: &str) -> bool {
        self.state.borrow().loras.contains_key(id)
    }

    /// Fuses exactly the adapters `[{ id, scale }]` into the loaded model, replacing the set
    /// applied before; returns what was applied (`LoraInfo[]`, `Pipeline::set_loras`). On an
    /// error the model stays as it was. Adapters left out of the set are dropped from memory.
    #[wasm_bindgen(js_name = setLoras)]
    pub fn set_loras(&self, wanted: JsValue) -> Result<JsValue, JsError> {
        let wanted: Vec<Wanted> = from_js("setLoras", wanted)?;
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let list = wanted
            .iter()
            .map(|w| s.loras.get(&w.id).map(|f| (f.clone(), w.scale)).ok_or_else(|| js_err(format!("LoRA {} was not added", w.id))))
            .collect::<Result<Vec<_>, _>>()?;
        let loaded = s.pipeline.as_mut().ok_or_else(|| js_err("no model loaded"))?;
        let pipe = Rc::get_mut(&mut loaded.0).ok_or_else(|| js_err("a generation is running: change the LoRAs after it"))?;
        let applied = pipe.set_loras(&list).map_err(js_err)?;
        s.loras.retain(|id, _| wanted.iter().any(|w| &w.id == id));
        to_js(&applied)
    }
}
