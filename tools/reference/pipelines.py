"""End-to-end references: diffusers' own `StableDiffusionPipeline.__call__` run from saved latents.

1. `tiny-sd` (CLIP + UNet + AutoencoderKL + Euler, CFG) → ref/pipeline_sd.safetensors, and an
   odd size (latent 9×5) → ref/pipeline_sd_odd.safetensors
2. `tiny-flow`: a rectified-flow model of the edge kind built here: BERT-Chinese text tower
   (WordPiece vocab.txt), UNet, TAESD-style AutoencoderTiny, FlowMatchEulerDiscreteScheduler with
   shift, 28 steps + CFG → ref/pipeline_flow.safetensors
3. `tiny-sd-pndm`: tiny-sd's components (symlinked) with the `PNDMScheduler` config every SD-1.x
   repo ships (BK-SDM, Taiyi, SD 1.5: PLMS, steps_offset 1) → ref/pipeline_sd_pndm.safetensors; the
   same folder with `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config,
   use_karras_sigmas=True)` (DPM++ 2M Karras, what users pick for these models) →
   ref/pipeline_sd_dpm_karras.safetensors
The Rust tests (tests/pipeline.rs) use the same prompts and settings as written here."""
import json
import shutil

import torch
from diffusers import (
    AutoencoderTiny,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import BertConfig, BertModel, BertTokenizer

import sd_pipeline
from common import FIXTURES, REF, bert_chinese_vocab_path, randomize_norms, randomize_zero_params, save_tensors

FLOW = FIXTURES / "tiny-flow"
PNDM = FIXTURES / "tiny-sd-pndm"

# runwayml/stable-diffusion-v1-5's scheduler/scheduler_config.json, key for key (no
# timestep_spacing or prediction_type: their defaults are not carried over by from_config).
SD1_PNDM_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

SD_CASE = dict(prompt="a photo of a cat", negative_prompt="blurry, low quality", steps=4, guidance=7.5,
               width=64, height=64, seed=42)
# A latent of 9×5: does not halve evenly through the U-Net levels (diffusers passes skip sizes).
SD_ODD_CASE = dict(prompt="床前明月光，疑是地上霜 🌙！", negative_prompt="", steps=2, guidance=3.0,
                   width=72, height=40, seed=3)
PNDM_CASE = dict(prompt="a lighthouse on a cliff at dawn", negative_prompt="fog", steps=4, guidance=7.5,
                 width=64, height=64, seed=11)
# `scheduler` names the sampler override the Rust side applies (Sampler names).
DPM_KARRAS_CASE = dict(prompt="a lighthouse on a cliff at dawn", negative_prompt="fog", steps=4, guidance=7.5,
                       width=64, height=64, seed=12, scheduler="dpm++2m-karras")
FLOW_CASE = dict(prompt="床前明月光，疑是地上霜", negative_prompt="", steps=28, guidance=4.5,
                 width=64, height=48, seed=7)


def run(pipe, case, latent_channels, scale):
    g = torch.Generator().manual_seed(case["seed"])
    latents = torch.randn((1, latent_channels, case["height"] // scale, case["width"] // scale), generator=g)
    image = pipe(
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance"],
        width=case["width"],
        height=case["height"],
        latents=latents.clone(),
        output_type="pt",
    ).images
    return latents, image


def sd():
    pipe = sd_pipeline.load()
    pipe.set_progress_bar_config(disable=True)
    for name, case in [("pipeline_sd", SD_CASE), ("pipeline_sd_odd", SD_ODD_CASE)]:
        latents, image = run(pipe, case, 4, 8)
        save_tensors(REF / f"{name}.safetensors", {"latents": latents, "image": image}, json.dumps(case, ensure_ascii=False))


def flow_components():
    torch.manual_seed(41)
    bert = BertModel(BertConfig(vocab_size=21128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=128, type_vocab_size=2))
    randomize_norms(bert, 42)
    randomize_zero_params(bert, 43)
    tok = BertTokenizer(vocab=str(bert_chinese_vocab_path()), do_lower_case=True, model_max_length=64)
    torch.manual_seed(44)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=8, use_linear_projection=True,
    )
    randomize_norms(unet, 45)
    randomize_zero_params(unet, 46)
    torch.manual_seed(47)
    vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                          num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    randomize_zero_params(vae, 48)
    with torch.no_grad():  # centre the random decoder's output in [0, 1] so few pixels clamp
        last = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(0.1)
        last.bias.copy_(0.5 + 0.05 * torch.randn(last.bias.shape))
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return bert.eval(), tok, unet.eval(), vae.eval(), sched


def write_bert_hub_tokenizer(folder):
    """Taiyi-style hub layout: vocab.txt + configs, no tokenizer.json."""
    for f in folder.iterdir():
        f.unlink()
    shutil.copy(bert_chinese_vocab_path(), folder / "vocab.txt")
    special = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]"}
    config = {**special, "do_lower_case": True, "model_max_length": 64, "tokenize_chinese_chars": True,
              "strip_accents": None, "tokenizer_class": "BertTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")


def flow():
    if FLOW.exists():
        shutil.rmtree(FLOW)
    bert, tok, unet, vae, sched = flow_components()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=bert, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.text_encoder.half()
    pipe.unet.to(torch.bfloat16)
    pipe.save_pretrained(FLOW)
    write_bert_hub_tokenizer(FLOW / "tokenizer")

    pipe = StableDiffusionPipeline.from_pretrained(FLOW, safety_checker=None, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    # FlowMatchEulerDiscreteScheduler has no init_noise_sigma (the initial latent is unit noise) and
    # no scale_model_input (the pipeline skips it when absent).
    pipe.scheduler.init_noise_sigma = 1.0
    latents, image = run(pipe, FLOW_CASE, 4, 8)
    save_tensors(REF / "pipeline_flow.safetensors", {"latents": latents, "image": image}, json.dumps(FLOW_CASE, ensure_ascii=False))


def sd_samplers():
    """The SD-1.x layout (PNDM), then DPM++ 2M Karras built from its config."""
    index = json.loads((FIXTURES / "tiny-sd" / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "PNDMScheduler"]
    (PNDM / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (PNDM / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD1_PNDM_CONFIG, indent=2) + "\n")
    pipe = StableDiffusionPipeline.from_pretrained(PNDM, safety_checker=None, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, PNDMScheduler)
    latents, image = run(pipe, PNDM_CASE, 4, 8)
    save_tensors(REF / "pipeline_sd_pndm.safetensors", {"latents": latents, "image": image}, json.dumps(PNDM_CASE))
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    latents, image = run(pipe, DPM_KARRAS_CASE, 4, 8)
    save_tensors(REF / "pipeline_sd_dpm_karras.safetensors", {"latents": latents, "image": image},
                 json.dumps(DPM_KARRAS_CASE))


def generate():
    sd()
    flow()
    sd_samplers()
