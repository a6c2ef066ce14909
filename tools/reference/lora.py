"""LoRA references: random-weight adapters written in each layout diffusers' `load_lora_weights`
accepts, applied with `load_lora_weights` + `fuse_lora(lora_scale=s)` (two adapters:
`set_adapters` weights, then `fuse_lora()`), and the image diffusers' pipeline makes.

Adapters (tests/fixtures/loras/):
- `peft_unet.safetensors`: PEFT keys (`unet.<module>.lora_A.weight`), attention projections
  and a 3×3 resnet convolution, rank 4, no alpha (scale 1).
- `kohya_locon.safetensors`: kohya keys (`lora_unet_…`, `lora_te_…`, `.alpha`) with LoCon
  convolution layers (resnets, samplers, shortcut), the time projection, the feed-forward
  and the text encoder's attention and MLP; ranks 4 (linears) and 2 (convolutions), alpha 2.
- `kohya_sgm.safetensors`: the same layers as `kohya_locon` under the original LDM/SGM U-Net
  names (`lora_unet_input_blocks_1_1_…`, `in_layers_2`, `emb_layers_1`, `skip_connection`, `op`),
  which diffusers renames with the U-Net's `layers_per_block` — for SDXL pipelines only: the SD-1.x
  `load_lora_weights` does not pass `unet_config`, so this reference calls
  `lora_state_dict(file, unet_config=pipe.unet.config)` and `load_lora_into_unet` /
  `load_lora_into_text_encoder` itself (the upsampler of a block without attention,
  `output_blocks_<i>_1_conv`, is left out: diffusers' rename maps it to an attention).
- `old_processor.safetensors`: diffusers' older attention-processor keys
  (`unet.<attn>.processor.to_q_lora.down.weight`).
- `peft_text_encoder.safetensors`: a text-encoder-only PEFT LoRA.
- `lcm_kohya.safetensors`: an LCM-LoRA-shaped kohya file for `tiny-bk` (every linear and
  convolution of the U-Net, as the published lcm-lora-sdv1-5 adapts), rank 8, alpha 8.
`tiny-bk/` is a BK-SDM-Tiny-shaped model (3 levels, 1 layer per block, no mid block) sharing
tiny-sd's text encoder, tokenizer and VAE (symlinks), with BK-SDM's PNDM scheduler config; the
LCM case swaps in `LCMScheduler.from_config` (4 steps, guidance 1). LCM draws noise every step
but the last: the reference replays the noise the Rust pipeline draws from its seeded RNG
(`ref/lora_lcm_noise.safetensors`, written by `tests/lora.rs`'s `lcm_noise_fixture` with
INKSTONE_WRITE_LCM_NOISE=1 and checked by it on every run), so the images compare exactly.
Cases → ref/lora_<name>.safetensors (latents, image; the case JSON in the metadata)."""
import json
import os
import shutil

import torch
from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file

import pipelines
import sd_pipeline
from common import FIXTURES, REF, randomize_norms, randomize_zero_params, save_tensors

LORAS = FIXTURES / "loras"
BK = FIXTURES / "tiny-bk"
TINY_SD = FIXTURES / "tiny-sd"

CASE = dict(prompt="a photo of a cat", negative_prompt="blurry, low quality", steps=4, guidance=7.5,
            width=64, height=64, seed=42)
# name → (model folder, [(adapter file, scale)], case overrides)
CASES = {
    "peft": ("tiny-sd", [("peft_unet", 0.8)], {}),
    "kohya": ("tiny-sd", [("kohya_locon", 1.0)], {"seed": 43}),
    "two": ("tiny-sd", [("peft_unet", 0.7), ("kohya_locon", -0.5)], {"seed": 44}),
    "text_encoder": ("tiny-sd", [("peft_text_encoder", 1.2)], {"seed": 45}),
    "kohya_sgm": ("tiny-sd", [("kohya_sgm", 0.9)], {"seed": 48}),
    "old_processor": ("tiny-sd", [("old_processor", 1.0)], {"seed": 46}),
    "lcm": ("tiny-bk", [("lcm_kohya", 1.0)],
            {"seed": 47, "guidance": 1.0, "negative_prompt": "", "scheduler": "lcm"}),
}


def modules(model, kinds=(torch.nn.Linear, torch.nn.Conv2d)):
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def factors(g, m, rank):
    """Random (down, up) for module m: down [r, in(, kh, kw)], up [out, r(, 1, 1)]."""
    if isinstance(m, torch.nn.Conv2d):
        fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        down = torch.randn((rank, m.in_channels, *m.kernel_size), generator=g) / fan_in**0.5
        up = 0.3 * torch.randn((m.out_channels, rank, 1, 1), generator=g) / rank**0.5
    else:
        down = torch.randn((rank, m.in_features), generator=g) / m.in_features**0.5
        up = 0.3 * torch.randn((m.out_features, rank), generator=g) / rank**0.5
    return down.contiguous(), up.contiguous()


def write(name, tensors):
    LORAS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float32).contiguous() for k, v in tensors.items()}, str(LORAS / f"{name}.safetensors"),
              metadata={"note": f"random-weight LoRA written by tools/reference/lora.py ({name})"})


def attention_projections(unet):
    return [n for n in modules(unet, torch.nn.Linear) if n.split(".")[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0")]


def peft_unet(unet, g):
    out = {}
    targets = attention_projections(unet) + ["down_blocks.0.resnets.0.conv1"]
    mods = modules(unet)
    for name in sorted(targets):
        down, up = factors(g, mods[name], 4)
        out[f"unet.{name}.lora_A.weight"] = down
        out[f"unet.{name}.lora_B.weight"] = up
    write("peft_unet", out)


def kohya_locon(unet, te, g):
    out = {}
    mods = modules(unet)
    picked = [n for n in mods if any(s in n for s in (
        "attn1.to_q", "attn1.to_k", "attn2.to_v", "attn2.to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "time_emb_proj", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"))]
    for name in sorted(picked):
        m = mods[name]
        rank = 2 if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1) else 4
        down, up = factors(g, m, rank)
        flat = "lora_unet_" + name.replace(".", "_")
        out[f"{flat}.lora_down.weight"], out[f"{flat}.lora_up.weight"] = down, up
        out[f"{flat}.alpha"] = torch.tensor(2.0)
    tmods = modules(te, torch.nn.Linear)
    for name in sorted(n for n in tmods if "self_attn" in n or "mlp" in n):
        down, up = factors(g, tmods[name], 4)
        flat = "lora_te_" + name.replace(".", "_")
        out[f"{flat}.lora_down.weight"], out[f"{flat}.lora_up.weight"] = down, up
        out[f"{flat}.alpha"] = torch.tensor(2.0)
    write("kohya_locon", out)


def to_sgm(name, lpb, attn_blocks):
    """diffusers U-Net module path → the LDM/SGM name kohya trainers on the original U-Net write."""
    p = name.split(".")
    n = lpb + 1
    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}
    if p[0] == "down_blocks":
        b = int(p[1])
        if p[2] == "downsamplers":
            return f"input_blocks_{1 + b * n + lpb}_0_op"
        i = 1 + b * n + int(p[3])
        head, tail = f"input_blocks_{i}_{0 if p[2] == 'resnets' else 1}", p[4:]
    elif p[0] == "mid_block":
        head, tail = f"middle_block_{ {('resnets', '0'): 0, ('attentions', '0'): 1, ('resnets', '1'): 2}[(p[1], p[2])] }", p[3:]
    else:
        b = int(p[1])
        if p[2] == "upsamplers":
            if b not in attn_blocks:
                return None
            return f"output_blocks_{b * n + lpb}_2_conv"
        head, tail = f"output_blocks_{b * n + int(p[3])}_{0 if p[2] == 'resnets' else 1}", p[4:]
    tail = "_".join(tail)
    return f"{head}_{resnet.get(tail, tail)}"


def kohya_sgm(unet):
    src = load_file(str(LORAS / "kohya_locon.safetensors"))
    attn_blocks = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    out = {}
    names = {k.split(".")[0] for k in src if k.startswith("lora_unet_")}
    flat_to_module = {n.replace(".", "_"): n for n in modules(unet)}
    for flat in sorted(names):
        sgm = to_sgm(flat_to_module[flat[len("lora_unet_"):]], unet.config.layers_per_block, attn_blocks)
        if sgm is None:
            continue
        for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
            out[f"lora_unet_{sgm}{suffix}"] = src[flat + suffix]
    out.update({k: v for k, v in src.items() if k.startswith("lora_te_")})
    write("kohya_sgm", out)


def old_processor(unet, g):
    out = {}
    mods = modules(unet)
    for name in sorted(attention_projections(unet)):
        attn, proj = name.rsplit(".", 1) if not name.endswith("to_out.0") else (name[: -len(".to_out.0")], "to_out")
        down, up = factors(g, mods[name], 4)
        out[f"unet.{attn}.processor.{proj}_lora.down.weight"] = down
        out[f"unet.{attn}.processor.{proj}_lora.up.weight"] = up
    write("old_processor", out)


def peft_text_encoder(te, g):
    out = {}
    tmods = modules(te, torch.nn.Linear)
    for name in sorted(n for n in tmods if n.split(".")[-1] in ("q_proj", "v_proj", "out_proj", "fc1")):
        down, up = factors(g, tmods[name], 4)
        out[f"text_encoder.{name}.lora_A.weight"] = down
        out[f"text_encoder.{name}.lora_B.weight"] = up
    write("peft_text_encoder", out)


def lcm_kohya(unet, g):
    out = {}
    for name, m in sorted(modules(unet).items()):
        if name in ("conv_in", "conv_out"):
            continue  # lcm-lora-sdv1-5 leaves the outer convolutions alone
        down, up = factors(g, m, 8)
        flat = "lora_unet_" + name.replace(".", "_")
        out[f"{flat}.lora_down.weight"], out[f"{flat}.lora_up.weight"] = down, up
        out[f"{flat}.alpha"] = torch.tensor(8.0)
    write("lcm_kohya", out)


def bk_model():
    if BK.exists():
        shutil.rmtree(BK)
    BK.mkdir(parents=True)
    torch.manual_seed(61)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32, 32), layers_per_block=1, mid_block_type=None, cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=8,
    )
    randomize_norms(unet, 62)
    randomize_zero_params(unet, 63)
    unet.eval().save_pretrained(BK / "unet")
    for part in ("text_encoder", "tokenizer", "vae"):
        (BK / part).symlink_to(f"../tiny-sd/{part}")
    index = json.loads((TINY_SD / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "PNDMScheduler"]
    (BK / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (BK / "scheduler").mkdir()
    (BK / "scheduler" / "scheduler_config.json").write_text(json.dumps(pipelines.SD1_PNDM_CONFIG, indent=2) + "\n")


def load(folder):
    pipe = StableDiffusionPipeline.from_pretrained(FIXTURES / folder, safety_checker=None, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def replay_noise(noises):
    """Makes LCMScheduler.step take `noises` in order instead of drawing its own."""
    import diffusers.schedulers.scheduling_lcm as lcm

    queue = list(noises)

    def randn_tensor(shape, generator=None, device=None, dtype=None):
        n = queue.pop(0)
        assert tuple(n.shape) == tuple(shape), (n.shape, shape)
        return n.to(dtype)

    lcm.randn_tensor = randn_tensor
    return queue


def case_run(name):
    folder, adapters, overrides = CASES[name]
    case = {**CASE, **overrides, "loras": [[f"{a}.safetensors", s] for a, s in adapters]}
    pipe = load(folder)
    left = None
    if case.get("scheduler") == "lcm":
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        noise = load_file(str(REF / "lora_lcm_noise.safetensors"))
        left = replay_noise([noise[f"noise{i}"] for i in range(len(noise))])
    for a, _ in adapters:
        if a == "kohya_sgm":
            sd, alphas = pipe.lora_state_dict(str(LORAS), weight_name=f"{a}.safetensors", unet_config=pipe.unet.config)
            pipe.load_lora_into_unet(sd, alphas, pipe.unet, adapter_name=a, _pipeline=pipe)
            pipe.load_lora_into_text_encoder(sd, alphas, pipe.text_encoder, prefix="text_encoder", adapter_name=a,
                                             _pipeline=pipe)
            continue
        pipe.load_lora_weights(str(LORAS), weight_name=f"{a}.safetensors", adapter_name=a)
    if len(adapters) == 1:
        pipe.fuse_lora(lora_scale=adapters[0][1])
    else:
        pipe.set_adapters([a for a, _ in adapters], adapter_weights=[s for _, s in adapters])
        pipe.fuse_lora()
    pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
    latents, image = pipelines.run(pipe, case, 4, 8)
    if left is not None:
        assert not left, f"{len(left)} noise tensors unused"
    save_tensors(REF / f"lora_{name}.safetensors", {"latents": latents, "image": image}, json.dumps(case))


def generate():
    unet = sd_pipeline.load().unet
    te = sd_pipeline.load().text_encoder
    g = torch.Generator().manual_seed(60)
    peft_unet(unet, g)
    kohya_locon(unet, te, g)
    kohya_sgm(unet)
    old_processor(unet, g)
    peft_text_encoder(te, g)
    bk_model()
    lcm_kohya(load("tiny-bk").unet, g)
    for name in CASES:
        if name == "lcm" and not (REF / "lora_lcm_noise.safetensors").exists():
            print("skipping lcm: run INKSTONE_WRITE_LCM_NOISE=1 cargo test --test suite lora::lcm_noise_fixture first")
            continue
        case_run(name)
