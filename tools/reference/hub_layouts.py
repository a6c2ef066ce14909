"""Folders laid out like the real hub repos of our family (random weights), each with diffusers'
own image from that folder:

1. `tiny-sd1-hub`: an SD-1.x-era repo (BK-SDM, Taiyi, segmind tiny-sd/small-sd, SD 1.4/1.5
   fine-tunes): model_index.json lists `safety_checker` and `feature_extractor` (present, never
   needed), PNDMScheduler, `.safetensors` + `.fp16.safetensors` + pickle `.bin` side by side,
   text encoder keys with the `text_model.` prefix and the transformers-4 `position_ids` I64
   buffer, a 2022-era VAE (attention `query`/`key`/`value`/`proj_attn`), tokenizer configs with
   `{"__type": "AddedToken"}` entries, vocab.json + merges.txt and no tokenizer.json.
   → ref/hub_sd1_pndm.safetensors (the folder's own PNDM) and ref/hub_sd1_euler.safetensors
   (`EulerDiscreteScheduler.from_config(pipe.scheduler.config)`, config saved beside it).
2. `tiny-flow-hub`: a JuZhou-class 4-step Chinese rectified-flow repo: BERT-Chinese tower saved
   without its pooler (`add_pooling_layer=False`) plus the transformers-4 `position_ids` /
   `token_type_ids` buffers, vocab.txt, AutoencoderTiny, FlowMatchEulerDiscreteScheduler,
   `image_encoder` listed as absent. → ref/hub_flow.safetensors
The Rust tests (tests/hub.rs) and the browser tests use the same cases."""
import json
import shutil

import torch
from diffusers import (AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       StableDiffusionPipeline, UNet2DConditionModel)
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

import pipelines
import sd_pipeline
from common import FIXTURES, REF, bert_chinese_vocab_path, randomize_norms, randomize_zero_params, save_tensors

SD1 = FIXTURES / "tiny-sd1-hub"
FLOW = FIXTURES / "tiny-flow-hub"

SD1_CASE = dict(prompt="a photo of a cat", negative_prompt="blurry, low quality", steps=4, guidance=7.5,
                width=64, height=64, seed=42)
FLOW_CASE = dict(prompt="床前明月光，疑是地上霜", negative_prompt="模糊", steps=4, guidance=3.0,
                 width=64, height=48, seed=5)

# As SD v1-4 / BK-SDM ship it (scheduler/scheduler_config.json on the hub).
PNDM_CONFIG = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.7.0.dev0", "beta_end": 0.012,
               "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
               "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
               "clip_sample": False}
# The CLIPImageProcessor config SD 1.x repos ship (feature_extractor/preprocessor_config.json).
FEATURE_EXTRACTOR = {"crop_size": 224, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
                     "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
                     "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                     "resample": 3, "size": 224}
# 2022 diffusers wrote VAE attention with these names (2-D linear weights).
OLD_VAE_ATTENTION = [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")]


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def save_variants(folder, stem, state, pickle=True):
    """`<stem>.safetensors` (f32), `<stem>.fp16.safetensors` and, like 2022 repos, a pickle
    `.bin` of the same weights (Inkstone must never fetch it)."""
    folder.mkdir(parents=True, exist_ok=True)
    full = {k: v.detach().contiguous() for k, v in state.items()}
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in full.items()}
    save_file(full, str(folder / f"{stem}.safetensors"), metadata={"format": "pt"})
    save_file(half, str(folder / f"{stem}.fp16.safetensors"), metadata={"format": "pt"})
    if pickle:
        pickle_stem = "pytorch_model" if stem == "model" else stem
        torch.save(half, folder / f"{pickle_stem}.bin")


def sd1_components():
    torch.manual_seed(101)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=8, intermediate_size=16, projection_dim=8,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
    randomize_norms(clip, 102)
    randomize_zero_params(clip, 103)
    return clip.eval(), small_unet(104), sd_pipeline.vae()


def small_unet(seed, **extra):
    """A two-level U-Net with 8-wide cross-attention (the text towers here are 8 wide)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=8, attention_head_dim=2,
        norm_num_groups=4, **extra,
    )
    randomize_norms(unet, seed + 1)
    randomize_zero_params(unet, seed + 2)
    return unet.eval()


def write_sd1():
    if SD1.exists():
        shutil.rmtree(SD1)
    clip, unet, vae = sd1_components()
    write_json(SD1 / "model_index.json", {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "requires_safety_checker": True})
    write_json(SD1 / "scheduler" / "scheduler_config.json", PNDM_CONFIG)
    write_json(SD1 / "feature_extractor" / "preprocessor_config.json", FEATURE_EXTRACTOR)
    # A stand-in safety checker (the real one is 1.2 GB): present, listed, never to be requested.
    write_json(SD1 / "safety_checker" / "config.json", {"_name_or_path": "CompVis/stable-diffusion-safety-checker",
                                                        "architectures": ["StableDiffusionSafetyChecker"]})
    save_variants(SD1 / "safety_checker", "model", {"concept_embeds": torch.randn(3, 4)})

    te = SD1 / "text_encoder"
    te.mkdir(parents=True)
    clip.config.to_json_file(te / "config.json")
    state = {f"text_model.{k}": v for k, v in clip.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    save_variants(te, "model", state)

    unet.save_config(SD1 / "unet")
    save_variants(SD1 / "unet", "diffusion_pytorch_model", unet.state_dict())

    vae.save_config(SD1 / "vae")
    state = {}
    for k, v in vae.state_dict().items():
        for new, old in OLD_VAE_ATTENTION:
            k = k.replace(new, old)
        state[k] = v
    assert any(".query." in k for k in state), "the VAE has attention to rename"
    save_variants(SD1 / "vae", "diffusion_pytorch_model", state)

    shutil.copytree(sd_pipeline.OUT / "tokenizer", SD1 / "tokenizer")  # AddedToken dicts, no tokenizer.json
    assert "AddedToken" in (SD1 / "tokenizer" / "tokenizer_config.json").read_text()
    print("  wrote", SD1)
    return vae


def sd1():
    vae = write_sd1()
    pipe = StableDiffusionPipeline.from_pretrained(SD1, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    # diffusers must have read the 2022 names: its decoder equals the one we saved.
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(pipe.vae.decode(z).sample, vae.decode(z).sample), "old VAE names not converted"
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    latents, image = pipelines.run(pipe, SD1_CASE, 4, 8)
    save_tensors(REF / "hub_sd1_pndm.safetensors", {"latents": latents, "image": image}, json.dumps(SD1_CASE))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    config = dict(pipe.scheduler.config)
    # diffusers keeps this list in set order, which changes between runs.
    config["_use_default_values"] = sorted(config.get("_use_default_values", []))
    write_json(REF / "hub_sd1_euler.scheduler_config.json", config)
    latents, image = pipelines.run(pipe, SD1_CASE, 4, 8)
    save_tensors(REF / "hub_sd1_euler.safetensors", {"latents": latents, "image": image}, json.dumps(SD1_CASE))


# The random decoder's last conv is scaled so that the image spans most of [0, 1] (0 to 0.82, std
# 0.15, 0.4% of pixels clamped): at 0.1 it spanned 0.02 (std 0.0055), so a broken flow path could
# still have landed within the 1e-3 tolerance.
FLOW_DECODER_GAIN = 10.0


def flow_components():
    torch.manual_seed(201)
    bert = BertModel(BertConfig(vocab_size=21128, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=16, max_position_embeddings=64, type_vocab_size=2),
                     add_pooling_layer=False)
    randomize_norms(bert, 202)
    randomize_zero_params(bert, 203)
    unet = small_unet(204, use_linear_projection=True)
    torch.manual_seed(207)
    vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                          num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    randomize_zero_params(vae, 208)
    with torch.no_grad():  # centre the random decoder's output in [0, 1], spread over most of it
        last = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(FLOW_DECODER_GAIN)
        last.bias.copy_(0.5 + 0.05 * torch.randn(last.bias.shape))
    return bert.eval(), unet, vae.eval()


def write_flow():
    if FLOW.exists():
        shutil.rmtree(FLOW)
    bert, unet, vae = flow_components()
    write_json(FLOW / "model_index.json", {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
        "feature_extractor": [None, None], "image_encoder": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "BertModel"],
        "tokenizer": ["transformers", "BertTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderTiny"]})
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_config(FLOW / "scheduler")
    te = FLOW / "text_encoder"
    te.mkdir(parents=True)
    bert.config.to_json_file(te / "config.json")
    state = dict(bert.state_dict())
    state["embeddings.position_ids"] = torch.arange(64, dtype=torch.int64)[None]
    state["embeddings.token_type_ids"] = torch.zeros(1, 64, dtype=torch.int64)
    assert not any(k.startswith("pooler.") for k in state)
    save_variants(te, "model", state, pickle=False)
    unet.save_config(FLOW / "unet")
    save_variants(FLOW / "unet", "diffusion_pytorch_model", unet.state_dict(), pickle=False)
    vae.save_config(FLOW / "vae")
    save_variants(FLOW / "vae", "diffusion_pytorch_model", vae.state_dict(), pickle=False)
    (FLOW / "tokenizer").mkdir()
    pipelines.write_bert_hub_tokenizer(FLOW / "tokenizer")
    print("  wrote", FLOW)


def flow():
    write_flow()
    pipe = StableDiffusionPipeline.from_pretrained(FLOW, safety_checker=None, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    # transformers initialises the missing pooler randomly (it warns); the pipeline never runs it.
    pipe.scheduler.init_noise_sigma = 1.0  # see pipelines.flow
    latents, image = pipelines.run(pipe, FLOW_CASE, 4, 8)
    save_tensors(REF / "hub_flow.safetensors", {"latents": latents, "image": image}, json.dumps(FLOW_CASE, ensure_ascii=False))


def generate():
    sd1()
    flow()
