"""Image-to-image references: diffusers' own `StableDiffusionImg2ImgPipeline.__call__`.

The init image is 8-bit (stored as `init_image`, U8 `[3, H, W]`; the pipeline gets it as a
float tensor `u8 / 255` in [0, 1], what a decoded PNG gives). The noise the pipeline adds to
the encoded image is made here and stored as `noise`: the pipeline draws it with
`randn_tensor` in `prepare_latents` (its `latents=` argument is not that noise), so the
module's `randn_tensor` is replaced for the call by one that returns `noise` (and fails on any
other draw). The Rust side gives the same tensor as `latents`.

The KL encoder's output is the posterior's mode: the pipeline's `retrieve_latents` defaults to
`sample_mode="sample"` (a draw from the posterior with the global RNG), so for the call it is
replaced by `retrieve_latents(..., sample_mode="argmax")`, what Inkstone does (for real SD VAEs
the posterior's spread is tiny; a draw would add one more noise tensor to match).

Cases (`tests/img2img.rs` reads the settings from each file's `note`):
- `tiny-sd` (AutoencoderKL encoder, posterior mode) with its Euler, and DDIM, DPM++ 2M, LCM
  (one step: 2 steps at strength 0.5, so no stochastic step) built with `from_config`;
  `tiny-sd-pndm` (PLMS);
- the same with an image of another size, resized first as `VaeImageProcessor.resize` does for
  tensors (`F.interpolate`, nearest) to the asked size;
- `tiny-flow-img2img`: tiny-flow with a stronger encoder (below) in its `vae/` (AutoencoderTiny,
  FlowMatchEulerDiscreteScheduler). diffusers' SD img2img
  pipeline calls `scheduler.add_noise` and `scale_model_input`, which the flow-match scheduler
  does not have; as its own flow pipelines (SD3 img2img) do, noising is `scale_noise` and the
  model input is unscaled: both patched onto the scheduler instance;
- `tiny-sd-taesd-original`: tiny-sd with `vae/` holding an original-layout TAESD pair
  (`taesd_decoder.safetensors` + `taesd_encoder.safetensors`: tiny-taesd's weights with the
  stronger encoder; the reference runs them as `AutoencoderTiny`).

Random tiny encoders shrink their input (latents ~0.09 next to unit noise): the image would
hardly depend on them, so a broken encoder or noising could pass. Their output conv is scaled
up here so the latents are O(1) (`stronger_encoder`).
"""
import json
import os
import shutil

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderTiny,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    LCMScheduler,
    StableDiffusionImg2ImgPipeline,
)
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_module

from safetensors.torch import save_file

from common import FIXTURES, REF, save_tensors

TAESD_SD = FIXTURES / "tiny-sd-taesd-original"
FLOW_IMG2IMG = FIXTURES / "tiny-flow-img2img"
ENCODER_GAIN = 10.0
TAESD_SD_DECODER_ONLY = FIXTURES / "tiny-sd-taesd-decoder-only"

# `image` is the init image's (width, height); width/height the asked size.
CASES = {
    "img2img_sd_euler": dict(model="tiny-sd", scheduler=None, prompt="a photo of a cat", negative_prompt="blurry",
                             steps=4, strength=0.75, guidance=7.5, width=32, height=32, image=[32, 32], seed=1),
    "img2img_sd_ddim": dict(model="tiny-sd", scheduler="ddim", prompt="a red house", negative_prompt="",
                            steps=5, strength=0.6, guidance=5.0, width=32, height=32, image=[32, 32], seed=2),
    "img2img_sd_dpm": dict(model="tiny-sd", scheduler="dpm++2m", prompt="a lighthouse", negative_prompt="fog",
                           steps=6, strength=0.5, guidance=7.5, width=32, height=32, image=[32, 32], seed=3),
    "img2img_sd_lcm": dict(model="tiny-sd", scheduler="lcm", prompt="a bowl of fruit", negative_prompt="",
                           steps=2, strength=0.5, guidance=1.0, width=32, height=32, image=[32, 32], seed=4),
    "img2img_sd_pndm": dict(model="tiny-sd-pndm", scheduler=None, prompt="a boat at sea", negative_prompt="",
                            steps=4, strength=0.7, guidance=7.5, width=32, height=32, image=[32, 32], seed=5),
    "img2img_sd_resized": dict(model="tiny-sd", scheduler=None, prompt="a photo of a cat", negative_prompt="",
                               steps=5, strength=0.6, guidance=3.0, width=32, height=24, image=[41, 29], seed=6),
    "img2img_flow": dict(model="tiny-flow-img2img", scheduler=None, prompt="床前明月光", negative_prompt="",
                         steps=8, strength=0.6, guidance=4.5, width=48, height=32, image=[48, 32], seed=7),
    "img2img_taesd_original": dict(model="tiny-sd-taesd-original", scheduler=None, prompt="a red house",
                                   negative_prompt="", steps=4, strength=0.5, guidance=7.5, width=32, height=32,
                                   image=[32, 32], seed=8),
}

SAMPLERS = {"ddim": DDIMScheduler, "dpm++2m": DPMSolverMultistepScheduler, "lcm": LCMScheduler}


def init_image(width, height, seed):
    """A smooth, 8-bit picture: random colours at 1/8 resolution, bilinearly upsampled."""
    g = torch.Generator().manual_seed(100 + seed)
    low = torch.rand((1, 3, max(height // 8, 2), max(width // 8, 2)), generator=g)
    img = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)[0]
    return (img * 255).round().clamp(0, 255).to(torch.uint8)


def stronger_encoder(vae):
    """The encoder's output conv scaled by ENCODER_GAIN, weights rounded to f16 as stored."""
    last = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(ENCODER_GAIN)
        last.bias.mul_(ENCODER_GAIN)
    return vae.half().float().eval()


def taesd_original_vae():
    return stronger_encoder(AutoencoderTiny.from_pretrained(FIXTURES / "tiny-taesd", torch_dtype=torch.float32))


def write_folders():
    """tiny-flow-img2img: tiny-flow's components (symlinked) with its vae's encoder made stronger
    and its decoder's output 5x less damped, so the image depends on the encoded picture
    (stored in f16). tiny-sd-taesd-original: see link_taesd_folders."""
    if FLOW_IMG2IMG.exists():
        shutil.rmtree(FLOW_IMG2IMG)
    FLOW_IMG2IMG.mkdir()
    for part in ["text_encoder", "tokenizer", "unet", "scheduler"]:
        os.symlink(f"../tiny-flow/{part}", FLOW_IMG2IMG / part)
    shutil.copy(FIXTURES / "tiny-flow" / "model_index.json", FLOW_IMG2IMG / "model_index.json")
    vae = AutoencoderTiny.from_pretrained(FIXTURES / "tiny-flow" / "vae", torch_dtype=torch.float32)
    with torch.no_grad():  # tiny-flow's decoder output was damped 10x (pipelines.py): undo most of it
        last = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(5.0)
    vae = stronger_encoder(vae)
    vae.half().save_pretrained(FLOW_IMG2IMG / "vae")
    link_taesd_folders()


def link_taesd_folders():
    """tiny-sd's text encoder, tokenizer, U-Net and scheduler (symlinked) with an original-layout
    TAESD vae/: the encoder/decoder pair, or the decoder alone (no encoder: img2img refused)."""
    for folder, vae in [(TAESD_SD, None), (TAESD_SD_DECODER_ONLY, "tiny-taesd-original")]:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        for part in ["text_encoder", "tokenizer", "unet", "scheduler"]:
            os.symlink(f"../tiny-sd/{part}", folder / part)
        if vae:
            os.symlink(f"../{vae}", folder / "vae")
        else:  # the original layout: decoder layer i+1 is diffusers' i (0 is the clamp), encoder i is i
            state = taesd_original_vae().half().state_dict()
            (folder / "vae").mkdir()
            # The decoder is tiny-taesd-original's, unchanged: linked, not stored twice.
            os.symlink("../../tiny-taesd-original/taesd_decoder.safetensors", folder / "vae" / "taesd_decoder.safetensors")
            for part, shift in [("encoder", 0)]:
                prefix = f"{part}.layers."
                tensors = {f"{int(k[len(prefix):].split('.', 1)[0]) + shift}.{k[len(prefix):].split('.', 1)[1]}": v.contiguous()
                           for k, v in state.items() if k.startswith(prefix)}
                save_file(tensors, str(folder / "vae" / f"taesd_{part}.safetensors"))
        index = json.loads((FIXTURES / "tiny-sd" / "model_index.json").read_text())
        index["vae"] = ["diffusers", "AutoencoderTiny"]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def load(case):
    model = case["model"]
    if model == "tiny-sd-taesd-original":
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(FIXTURES / "tiny-sd", safety_checker=None,
                                                              torch_dtype=torch.float32)
        pipe.vae = taesd_original_vae()
    else:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(FIXTURES / model, safety_checker=None,
                                                              torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if case["scheduler"]:
        pipe.scheduler = SAMPLERS[case["scheduler"]].from_config(pipe.scheduler.config)
    if not hasattr(pipe.scheduler, "add_noise"):  # flow matching, see the module docs
        sched = pipe.scheduler
        sched.add_noise = lambda sample, noise, t: sched.scale_noise(sample, t, noise)
        sched.scale_model_input = lambda sample, t: sample
    return pipe


def run(name, case):
    pipe = load(case)
    w, h = case["image"]
    u8 = init_image(w, h, case["seed"])
    image = (u8.float() / 255)[None]
    if [w, h] != [case["width"], case["height"]]:
        image = pipe.image_processor.resize(image, case["height"], case["width"])
    f = pipe.vae_scale_factor
    latent_channels = pipe.unet.config.in_channels
    g = torch.Generator().manual_seed(case["seed"])
    noise = torch.randn((1, latent_channels, case["height"] // f, case["width"] // f), generator=g)
    draws = []

    def given_noise(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == tuple(noise.shape), (shape, noise.shape)
        assert not draws, "a second draw from the img2img pipeline"
        draws.append(shape)
        return noise.clone()

    original = img2img_module.randn_tensor, img2img_module.retrieve_latents
    img2img_module.randn_tensor = given_noise
    img2img_module.retrieve_latents = lambda out, generator=None, sample_mode="sample": original[1](out, generator, "argmax")
    try:
        out = pipe(
            prompt=case["prompt"],
            negative_prompt=case["negative_prompt"],
            image=image,
            strength=case["strength"],
            num_inference_steps=case["steps"],
            guidance_scale=case["guidance"],
            output_type="pt",
        ).images
    finally:
        img2img_module.randn_tensor, img2img_module.retrieve_latents = original
    assert draws, "the pipeline drew no noise"
    assert out.shape[-2:] == (case["height"], case["width"]), out.shape
    save_tensors(REF / f"{name}.safetensors", {"init_image": u8, "noise": noise, "image": out},
                 json.dumps(case, ensure_ascii=False))


def jpeg_fixture():
    """A JPEG init image (PIL/libjpeg, quality 95, 4:4:4) and PIL's own decode of it, which the
    Rust decoder must match to within the rounding of the IDCT."""
    import numpy as np
    from PIL import Image
    u8 = init_image(40, 24, 9)
    path = FIXTURES / "img2img" / "init.jpg"
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(u8.permute(1, 2, 0).numpy()).save(path, quality=95, subsampling=0)
    decoded = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    save_tensors(REF / "img2img_jpeg.safetensors", {"decoded": decoded}, json.dumps({"file": "img2img/init.jpg"}))


def generate():
    jpeg_fixture()
    write_folders()
    for name, case in CASES.items():
        run(name, case)
        print("  wrote", name)
