//! diffusers-format LoRA files, as `save_lora_weights` writes them: every key under `unet.` or
//! `text_encoder.` (none: the U-Net, as the oldest `save_attn_procs` files), then the module
//! path and the factors, in one of
//!
//! - PEFT: `<module>.lora_A.weight` (down) / `<module>.lora_B.weight` (up);
//! - the older LoRA layers: `<module>.lora.down.weight` / `.lora.up.weight`, the text
//!   encoder's `<module>.lora_linear_layer.down.weight` / `.up.weight`;
//! - the older attention processors: `<attn>.processor.to_q_lora.down.weight` (U-Net, module
//!   `<attn>.to_q`, `to_out_lora` → `to_out.0`), `<attn>.to_q_lora.down.weight` (text encoder,
//!   module `<attn>.q_proj`, `to_out_lora` → `out_proj`), as diffusers'
//!   `convert_state_dict_to_peft` maps them;
//!
//! and an optional scalar `<module>.alpha`. Without one the scale is 1 (diffusers sets
//! `lora_alpha = r`).

use std::collections::BTreeSet;

use super::{Component, LoraFormat, LoraLayer, Target, invalid, scalar};
use crate::error::Result;
use crate::weights::SafetensorsFile;

/// (down suffix, up suffix) of the per-module layouts.
const PAIRS: [(&str, &str); 3] = [
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
];

/// Attention-processor names → (U-Net module, text-encoder module) under the attention.
const PROCESSORS: [(&str, &str, &str); 4] = [
    ("to_q_lora", "to_q", "q_proj"),
    ("to_k_lora", "to_k", "k_proj"),
    ("to_v_lora", "to_v", "v_proj"),
    ("to_out_lora", "to_out.0", "out_proj"),
];

pub fn layers(file: &SafetensorsFile) -> Result<(LoraFormat, Vec<LoraLayer>)> {
    let keys: BTreeSet<&str> = file.header.tensors.keys().map(String::as_str).collect();
    let mut used = BTreeSet::new();
    let mut layers = Vec::new();
    let mut peft = false;
    for &key in &keys {
        let (component, rest) = split_component(key);
        let Some((module, down_suffix, up_suffix)) = module_of(component, rest) else { continue };
        peft |= down_suffix == PAIRS[0].0;
        let base = &key[..key.len() - down_suffix.len()];
        let up = format!("{base}{up_suffix}");
        if !keys.contains(up.as_str()) {
            return Err(invalid(&file.name, Some(key), format!("no matching `{up}`")));
        }
        // The alpha sits beside the module's factors (`<module>.alpha`), or beside the
        // processor's for the old layouts.
        let alpha_key = [format!("{base}.alpha"), format!("{}{module_tail}.alpha", prefix_of(key, rest), module_tail = module)]
            .into_iter()
            .find(|k| keys.contains(k.as_str()));
        let alpha = alpha_key.as_deref().map(|k| scalar(file, k)).transpose()?;
        used.insert(key.to_string());
        used.insert(up.clone());
        used.extend(alpha_key);
        layers.push(LoraLayer { component, target: Target::Module(module), down: key.to_string(), up, alpha });
    }
    if let Some(left) = keys.iter().find(|k| !used.contains(**k)) {
        return Err(invalid(
            &file.name,
            Some(left),
            "not a LoRA factor in any layout diffusers loads (PEFT `lora_A`/`lora_B`, `lora.down`/`lora.up`, \
             `processor.to_q_lora.down`, kohya `lora_unet_…`)"
                .into(),
        ));
    }
    let format = if peft { LoraFormat::Peft } else { LoraFormat::DiffusersOld };
    Ok((format, layers))
}

/// `unet.x` → (U-Net, `x`), `text_encoder.x` → (text encoder, `x`); no prefix → the U-Net.
fn split_component(key: &str) -> (Component, &str) {
    if let Some(rest) = key.strip_prefix("text_encoder.") {
        (Component::TextEncoder, rest)
    } else {
        (Component::Unet, key.strip_prefix("unet.").unwrap_or(key))
    }
}

/// The prefix `split_component` removed.
fn prefix_of<'a>(key: &'a str, rest: &str) -> &'a str {
    &key[..key.len() - rest.len()]
}

/// For a down-factor key (component prefix removed): the module it adapts and the suffixes of
/// its down and up factors; `None` for any other key.
fn module_of(component: Component, rest: &str) -> Option<(String, &'static str, String)> {
    for (down, up) in PAIRS {
        if let Some(module) = rest.strip_suffix(down) {
            return Some((module.to_string(), down, up.to_string()));
        }
    }
    for (proc_name, unet_module, te_module) in PROCESSORS {
        let down = format!(".{proc_name}.down.weight");
        let Some(attn) = rest.strip_suffix(down.as_str()) else { continue };
        let (attn, module) = match component {
            Component::Unet => (attn.strip_suffix(".processor").unwrap_or(attn), unet_module),
            Component::TextEncoder => (attn, te_module),
        };
        let down: &'static str = match proc_name {
            "to_q_lora" => ".to_q_lora.down.weight",
            "to_k_lora" => ".to_k_lora.down.weight",
            "to_v_lora" => ".to_v_lora.down.weight",
            _ => ".to_out_lora.down.weight",
        };
        return Some((format!("{attn}.{module}"), down, format!(".{proc_name}.up.weight")));
    }
    None
}
