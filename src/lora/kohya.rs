//! kohya-ss / A1111 LoRA files: `lora_unet_<path>` and `lora_te_<path>` where `<path>` is the
//! diffusers/transformers module path with every `.` written `_`, each with
//! `.lora_down.weight`, `.lora_up.weight` and an optional scalar `.alpha` (scale
//! `alpha / rank`, as diffusers' `network_alphas`). Convolution layers (LoCon: resnets'
//! `conv1`/`conv2`, samplers' `conv`) have 4-D factors. diffusers' `lora_state_dict` takes a
//! file as kohya when every key starts with one of these prefixes.
//!
//! Files trained on the original LDM/SGM U-Net name its blocks `input_blocks_<i>_<j>`,
//! `middle_block_<i>`, `output_blocks_<i>_<j>` (resnets' `in_layers_2`, `emb_layers_1`, …);
//! [`sgm_to_diffusers`] renames them from the U-Net's `layers_per_block`, as diffusers'
//! `_maybe_map_sgm_blocks_to_diffusers` + `_convert_unet_lora_key` do for SD-1.x.

use std::collections::BTreeSet;

use super::{Component, LoraFormat, LoraLayer, Target, invalid, scalar};
use crate::error::Result;
use crate::weights::SafetensorsFile;

/// The layers of a kohya file; a key outside the layout is an error naming it.
pub fn layers(file: &SafetensorsFile) -> Result<Vec<LoraLayer>> {
    let keys: BTreeSet<&str> = file.header.tensors.keys().map(String::as_str).collect();
    let mut used = BTreeSet::new();
    let mut layers = Vec::new();
    for &key in &keys {
        let Some(name) = key.strip_suffix(".lora_down.weight") else { continue };
        let (component, flat) = if let Some(rest) = name.strip_prefix("lora_unet_") {
            (Component::Unet, rest)
        } else if let Some(rest) = name.strip_prefix("lora_te_") {
            (Component::TextEncoder, rest)
        } else {
            return Err(invalid(&file.name, Some(key), "expected a `lora_unet_` or `lora_te_` name".into()));
        };
        let up = format!("{name}.lora_up.weight");
        if !keys.contains(up.as_str()) {
            return Err(invalid(&file.name, Some(key), format!("no matching `{up}`")));
        }
        let alpha_key = format!("{name}.alpha");
        let alpha = if keys.contains(alpha_key.as_str()) { Some(scalar(file, &alpha_key)?) } else { None };
        used.extend([key.to_string(), up.clone(), alpha_key]);
        layers.push(LoraLayer { component, target: Target::Flat(flat.to_string()), down: key.to_string(), up, alpha });
    }
    if let Some(left) = keys.iter().find(|k| !used.contains(**k)) {
        return Err(invalid(
            &file.name,
            Some(left),
            format!("not part of a {} LoRA layer (`.lora_down.weight`, `.lora_up.weight`, `.alpha`)", LoraFormat::Kohya.name()),
        ));
    }
    Ok(layers)
}

/// An LDM/SGM-named U-Net layer (`input_blocks_4_1_proj_in`, after `lora_unet_`) as kohya's
/// flattened diffusers name (`down_blocks_1_attentions_1_proj_in`); `None` when `flat` is not in
/// that layout. Input block `i ≥ 1` is down block `(i-1) / (L+1)`, layer `(i-1) % (L+1)` (`L` =
/// `layers_per_block`; the last of each level is its downsampler `op`); output block `i` is up
/// block `i / (L+1)`, layer `i % (L+1)`; inner index 0 is the resnet, 1 the attention (or the
/// upsampler `conv` in a block without one), 2 the upsampler.
pub fn sgm_to_diffusers(flat: &str, layers_per_block: usize) -> Option<String> {
    let fixed = [
        ("input_blocks_0_0", "conv_in"),
        ("out_2", "conv_out"),
        ("time_embed_0", "time_embedding_linear_1"),
        ("time_embed_2", "time_embedding_linear_2"),
    ];
    if let Some((_, to)) = fixed.iter().find(|(from, _)| flat == *from) {
        return Some(to.to_string());
    }
    let n = layers_per_block + 1;
    let num = |s: &str| s.parse::<usize>().ok();
    let (block, rest) = if let Some(r) = flat.strip_prefix("input_blocks_") {
        let (i, r) = r.split_once('_')?;
        let (j, rest) = r.split_once('_')?;
        let i = num(i)?.checked_sub(1)?;
        let inner = if rest == "op" {
            return Some(format!("down_blocks_{}_downsamplers_0_conv", i / n));
        } else {
            match num(j)? {
                0 => format!("resnets_{}", i % n),
                1 => format!("attentions_{}", i % n),
                _ => return None,
            }
        };
        (format!("down_blocks_{}_{inner}", i / n), rest)
    } else if let Some(r) = flat.strip_prefix("middle_block_") {
        let (i, rest) = r.split_once('_')?;
        let inner = match num(i)? {
            0 => "resnets_0",
            1 => "attentions_0",
            2 => "resnets_1",
            _ => return None,
        };
        (format!("mid_block_{inner}"), rest)
    } else if let Some(r) = flat.strip_prefix("output_blocks_") {
        let (i, r) = r.split_once('_')?;
        let (j, rest) = r.split_once('_')?;
        let i = num(i)?;
        let inner = match (num(j)?, rest) {
            (1 | 2, "conv") => "upsamplers_0".to_string(),
            (0, _) => format!("resnets_{}", i % n),
            (1, _) => format!("attentions_{}", i % n),
            _ => return None,
        };
        (format!("up_blocks_{}_{inner}", i / n), rest)
    } else {
        return None;
    };
    let resnet = [("in_layers_2", "conv1"), ("out_layers_3", "conv2"), ("emb_layers_1", "time_emb_proj"), ("skip_connection", "conv_shortcut")];
    let rest = resnet.iter().find(|(from, _)| rest == *from).map_or(rest, |(_, to)| to);
    Some(format!("{block}_{rest}"))
}

#[cfg(test)]
mod tests {
    use super::sgm_to_diffusers;

    /// SD-1.x (`layers_per_block` 2): the block layout of `_maybe_map_sgm_blocks_to_diffusers`.
    #[test]
    fn sgm_names_map_to_diffusers_names() {
        let m = |s| sgm_to_diffusers(s, 2).unwrap();
        assert_eq!(m("input_blocks_1_1_transformer_blocks_0_attn1_to_q"), "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q");
        assert_eq!(m("input_blocks_5_1_proj_in"), "down_blocks_1_attentions_1_proj_in");
        assert_eq!(m("input_blocks_3_0_op"), "down_blocks_0_downsamplers_0_conv");
        assert_eq!(m("input_blocks_4_0_in_layers_2"), "down_blocks_1_resnets_0_conv1");
        assert_eq!(m("input_blocks_4_0_skip_connection"), "down_blocks_1_resnets_0_conv_shortcut");
        assert_eq!(m("middle_block_1_proj_out"), "mid_block_attentions_0_proj_out");
        assert_eq!(m("middle_block_2_emb_layers_1"), "mid_block_resnets_1_time_emb_proj");
        assert_eq!(m("output_blocks_5_1_transformer_blocks_0_ff_net_2"), "up_blocks_1_attentions_2_transformer_blocks_0_ff_net_2");
        assert_eq!(m("output_blocks_2_1_conv"), "up_blocks_0_upsamplers_0_conv");
        assert_eq!(m("output_blocks_8_2_conv"), "up_blocks_2_upsamplers_0_conv");
        assert_eq!(m("output_blocks_11_0_out_layers_3"), "up_blocks_3_resnets_2_conv2");
        assert_eq!(m("input_blocks_0_0"), "conv_in");
        assert_eq!(sgm_to_diffusers("down_blocks_0_resnets_0_conv1", 2), None);
    }
}
