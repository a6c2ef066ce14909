//! Analytic FLOP count of one U-Net forward (batch 1): the convolutions, linears and attention
//! matmuls (2 FLOPs per multiply-add), which are >99% of the work of SD-family U-Nets; norms and
//! element-wise ops are left out. Follows diffusers' block layout (`UNet2DConditionModel`).

use inkstone::config::{DownBlockType, TransformerLayers, UNet2DConditionConfig, UpBlockType};

/// `k`×`k` convolution `c_in` → `c_out` producing `hw` output pixels.
fn conv(c_in: usize, c_out: usize, k: usize, hw: usize) -> f64 {
    2.0 * (c_in * c_out * k * k * hw) as f64
}

/// `ResnetBlock2D`: two 3×3 convs, the time-embedding projection, a 1×1 shortcut when the
/// width changes.
fn resnet(c_in: usize, c_out: usize, temb: usize, hw: usize) -> f64 {
    let shortcut = if c_in != c_out { conv(c_in, c_out, 1, hw) } else { 0.0 };
    conv(c_in, c_out, 3, hw) + conv(c_out, c_out, 3, hw) + 2.0 * (temb * c_out) as f64 + shortcut
}

/// `Transformer2DModel` over `n` tokens of width `c`, `layers` blocks, cross-attending to `seq`
/// tokens of width `cross`: projections in/out, self-attention (QKVO + scores + AV),
/// cross-attention, GEGLU feed-forward (c → 8c, 4c → c).
fn transformer(c: usize, n: usize, layers: usize, seq: usize, cross: usize) -> f64 {
    let lin = |rows: usize, a: usize, b: usize| 2.0 * (rows * a * b) as f64;
    let attn1 = 4.0 * lin(n, c, c) + 2.0 * lin(n, n, c);
    let attn2 = 2.0 * lin(n, c, c) + 2.0 * lin(seq, cross, c) + 2.0 * lin(n, seq, c);
    let ff = lin(n, c, 8 * c) + lin(n, 4 * c, c);
    2.0 * lin(n, c, c) + layers as f64 * (attn1 + attn2 + ff)
}

fn transformer_layers(cfg: &UNet2DConditionConfig, level: usize) -> usize {
    match &cfg.transformer_layers_per_block {
        TransformerLayers::One(n) => *n,
        TransformerLayers::PerLevel(v) => v[level],
        TransformerLayers::PerLayer(v) => v[level][0],
    }
}

/// FLOPs of one forward at a `side`×`side` latent with `seq` text tokens.
pub fn unet_flops(cfg: &UNet2DConditionConfig, side: usize, seq: usize) -> f64 {
    let ch = &cfg.block_out_channels;
    let levels = ch.len();
    let layers = cfg.layers_per_block.at(0, "", "").unwrap();
    let cross = cfg.cross_attention_dim.at(0, "", "").unwrap();
    let temb = 4 * ch[0];
    let hw = |level: usize| (side >> level) * (side >> level);
    let mut f = conv(cfg.in_channels, ch[0], cfg.conv_in_kernel, hw(0));
    f += 2.0 * (ch[0] * temb + temb * temb) as f64;
    let mut c_in = ch[0];
    for (level, block) in cfg.down_block_types.iter().enumerate() {
        for _ in 0..layers {
            f += resnet(c_in, ch[level], temb, hw(level));
            if matches!(block, DownBlockType::CrossAttnDownBlock2D) {
                f += transformer(ch[level], hw(level), transformer_layers(cfg, level), seq, cross);
            }
            c_in = ch[level];
        }
        if level + 1 < levels {
            f += conv(ch[level], ch[level], 3, hw(level + 1));
        }
    }
    let last = ch[levels - 1];
    if cfg.mid_block_type.is_some() {
        f += 2.0 * resnet(last, last, temb, hw(levels - 1));
        f += transformer(last, hw(levels - 1), transformer_layers(cfg, levels - 1), seq, cross);
    }
    // Up blocks run deepest first; each resnet also takes the matching skip connection.
    let mut prev = last;
    for (i, block) in cfg.up_block_types.iter().enumerate() {
        let level = levels - 1 - i;
        let (out, skip_in) = (ch[level], ch[level.saturating_sub(1)]);
        for j in 0..=layers {
            let skip = if j == layers { skip_in } else { out };
            let c = if j == 0 { prev } else { out };
            f += resnet(c + skip, out, temb, hw(level));
            if matches!(block, UpBlockType::CrossAttnUpBlock2D) {
                f += transformer(out, hw(level), transformer_layers(cfg, level), seq, cross);
            }
        }
        if level > 0 {
            f += conv(out, out, 3, hw(level - 1));
        }
        prev = out;
    }
    f + conv(ch[0], cfg.out_channels, cfg.conv_out_kernel, hw(0))
}
