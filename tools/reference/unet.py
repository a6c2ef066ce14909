"""U-Net references: the tiny-sd U-Net, two more configs saved under tests/fixtures/unets/
(three levels with per-level heads, linear projections, guidance-embedding input, upcast, an
odd 9x7 latent; no mid block with two transformer layers and only_cross_attention; and the
one-resnet `UNetMidBlock2D` mid block), and
diffusers' LCM `get_guidance_scale_embedding`. Each case stores its inputs and outputs in
tests/fixtures/ref/unet_<case>.safetensors (f32)."""
import shutil

import torch
from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel

import sd_pipeline
from common import FIXTURES, REF, randomize_norms, randomize_zero_params, save_tensors

UNETS = FIXTURES / "unets"

# (a) Three levels, per-level head counts, linear projections, LCM-style guidance embedding
# input, upcast attention, non-default time embedding (flip off, shift 1, width 40), per-level
# layers, a mid-block scale factor, and up-block types that differ from the down ones.
THREE_LEVEL = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(8, 16, 24),
    layers_per_block=(1, 2, 1),
    attention_head_dim=(2, 4, 4),  # SD 1.x/2.x meaning: heads per level
    cross_attention_dim=24,
    use_linear_projection=True,
    upcast_attention=True,
    time_cond_proj_dim=16,
    flip_sin_to_cos=False,
    freq_shift=1,
    time_embedding_dim=40,
    mid_block_scale_factor=1.5,
    norm_num_groups=4,
    norm_eps=1e-6,
)

# (b) Block-removed (BK-SDM style): no mid block, two transformer layers per block,
# only_cross_attention at level 0, 1x1 conv projections, centred input, 5x5 conv_in, 1x1
# conv_out, in/out channel counts other than 4, two resnets per level.
NO_MID = dict(
    sample_size=8,
    in_channels=3,
    out_channels=5,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type=None,
    block_out_channels=(8, 16),
    layers_per_block=2,
    transformer_layers_per_block=2,
    only_cross_attention=(True, False),
    attention_head_dim=2,
    cross_attention_dim=20,
    use_linear_projection=False,
    center_input_sample=True,
    conv_in_kernel=5,
    conv_out_kernel=1,
    norm_num_groups=4,
)


# (c) `mid_block_type="UNetMidBlock2D"` (get_mid_block: one resnet, no attention) with a mid-block
# scale factor, between plain and cross-attention levels.
MID_RESNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2D",
    mid_block_scale_factor=2.0,
    block_out_channels=(8, 16),
    layers_per_block=1,
    attention_head_dim=2,
    cross_attention_dim=12,
    norm_num_groups=4,
)


def build(config, seed, folder, dtype):
    torch.manual_seed(seed)
    m = UNet2DConditionModel(**config)
    randomize_norms(m, seed + 1)
    randomize_zero_params(m, seed + 2)
    if folder.exists():
        shutil.rmtree(folder)
    m.to(dtype).save_pretrained(folder)
    # The reference runs the stored (rounded) weights in f32, as our loader does.
    return UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float32).eval()


def time_embedding(unet, sample, t, cond=None):
    t_emb = unet.time_proj(t).to(sample.dtype)
    return t_emb, unet.time_embedding(t_emb, cond)


def run(name, unet, batch, size, seq, timesteps, cond=None):
    g = torch.Generator().manual_seed(1234)
    cfg = unet.config
    sample = torch.randn((batch, cfg.in_channels, *size), generator=g)
    ehs = torch.randn((batch, seq, cfg.cross_attention_dim), generator=g)
    t = torch.tensor(timesteps, dtype=torch.float32)
    with torch.no_grad():
        t_emb, emb = time_embedding(unet, sample, t, cond)
        out = unet(sample, t, encoder_hidden_states=ehs, timestep_cond=cond).sample
    tensors = {"sample": sample, "timesteps": t, "encoder_hidden_states": ehs, "t_emb": t_emb, "emb": emb, "out": out}
    if cond is not None:
        tensors["timestep_cond"] = cond
    save_tensors(REF / f"unet_{name}.safetensors", tensors, f"UNet2DConditionModel {name}: out = unet(sample, timesteps, ehs)")
    print(f"  unet_{name}: out {tuple(out.shape)} |out|max {out.abs().max():.3f}")


def guidance_embedding(w, dim):
    # The pipeline method does not use `self`.
    return LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, torch.tensor(w, dtype=torch.float32), dim)


def generate():
    tiny = sd_pipeline.load().unet.eval()
    run("tiny_sd", tiny, 2, (8, 8), 7, [999.0, 261.75])

    three = build(THREE_LEVEL, 41, UNETS / "three-level", torch.float16)
    w = [6.5, 1.25]  # guidance_scale - 1, as the LCM pipeline passes it
    cond = guidance_embedding(w, THREE_LEVEL["time_cond_proj_dim"])
    run("three_level", three, 2, (8, 8), 5, [801.5, 3.0], cond)
    run("three_level_odd", three, 2, (9, 7), 5, [500.25, 42.0], cond)

    no_mid = build(NO_MID, 51, UNETS / "no-mid", torch.float16)
    run("no_mid", no_mid, 2, (8, 8), 6, [999.0, 0.5])

    mid_resnet = build(MID_RESNET, 61, UNETS / "mid-resnet", torch.float32)
    run("mid_resnet", mid_resnet, 2, (8, 8), 4, [999.0, 21.5])

    ref = {}
    for dim in (16, 15, 512):
        ref[f"w_{dim}"] = guidance_embedding(w, dim)
    ref["w"] = torch.tensor(w)
    save_tensors(REF / "unet_guidance_embedding.safetensors", ref, "get_guidance_scale_embedding(w, dim) for dim 16, 15, 512")
    print("  unet_guidance_embedding")
