"""The tiny `StableDiffusionPipeline` (CLIP text encoder, CLIP BPE tokenizer, UNet2DConditionModel,
AutoencoderKL, EulerDiscreteScheduler) saved with `save_pretrained` to tests/fixtures/tiny-sd:
the hub layout our loader reads. Other parts compute per-component references from it."""
import json
import shutil

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from common import FIXTURES, randomize_norms, randomize_zero_params, write_clip_vocab_files

OUT = FIXTURES / "tiny-sd"


def unet():
    torch.manual_seed(1)
    m = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=2,  # SD 1.x meaning: 2 heads
        norm_num_groups=8,
    )
    randomize_norms(m, 11)
    randomize_zero_params(m, 12)
    return m.eval()


def vae():
    torch.manual_seed(2)
    m = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 16, 16],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    randomize_norms(m, 21)
    randomize_zero_params(m, 22)
    return m.eval()


def text_encoder():
    torch.manual_seed(3)
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    m = CLIPTextModel(cfg)
    randomize_norms(m, 31)
    randomize_zero_params(m, 32)
    return m.eval()


def tokenizer(tmp):
    vocab, merges = write_clip_vocab_files(tmp)
    # SD 1.x pads with <|endoftext|>.
    return CLIPTokenizer(vocab=str(vocab), merges=str(merges), pad_token="<|endoftext|>", model_max_length=77)


def _added(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_hub_tokenizer(folder):
    """Rewrites tokenizer/ as SD 1.x hub repos ship it: vocab.json + merges.txt + configs, no
    tokenizer.json (transformers 5 would save only tokenizer.json)."""
    for f in folder.iterdir():
        f.unlink()
    write_clip_vocab_files(folder)
    special = {"bos_token": _added("<|startoftext|>"), "eos_token": _added("<|endoftext|>"),
               "pad_token": "<|endoftext|>", "unk_token": _added("<|endoftext|>")}
    config = {"add_prefix_space": False, **special, "do_lower_case": True, "errors": "replace",
              "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")


def scheduler():
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="linspace",
        steps_offset=1,
    )


def generate():
    if OUT.exists():
        shutil.rmtree(OUT)
    tmp = FIXTURES / ".tmp-clip-vocab"
    pipe = StableDiffusionPipeline(
        vae=vae(),
        text_encoder=text_encoder(),
        tokenizer=tokenizer(tmp),
        unet=unet(),
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.text_encoder.half()  # stored as F16 (exercises the f16 path; halves the fixture)
    pipe.unet.to(torch.bfloat16)  # stored as BF16
    pipe.save_pretrained(OUT)
    shutil.rmtree(tmp)
    write_hub_tokenizer(OUT / "tokenizer")
    print("  wrote", OUT)


def load():
    """The saved pipeline in f32 (f16/bf16 weights upcast exactly): what every reference runs."""
    return StableDiffusionPipeline.from_pretrained(OUT, safety_checker=None, torch_dtype=torch.float32)
