"""Decoder (and encoder) references: tiny `AutoencoderTiny` folders (default TAESD layout at width
16, a non-default one, and the original TAESD key layout), plus inputs/outputs of
`AutoencoderKL` on tests/fixtures/tiny-sd/vae and on a non-default KL folder.

Written files:
  tests/fixtures/tiny-taesd/            AutoencoderTiny.save_pretrained (F16 weights)
  tests/fixtures/tiny-taesd-alt/        widths 24, num_decoder_blocks (2, 1, 1), upsampling ×3,
                                        16 latent channels, SD3-style scaling/shift (F16)
  tests/fixtures/tiny-taesd-original/   taesd_decoder.safetensors only: tiny-taesd's decoder in
                                        the original TAESD layout (layer i -> key `i+1`)
  tests/fixtures/tiny-taesd-original-pair/  the same plus taesd_encoder.safetensors
  tests/fixtures/tiny-kl-variant/       AutoencoderKL without quant convs or mid-block attention,
                                        16 latent channels, shift_factor (F32)
  tests/fixtures/ref/vae_*.safetensors  inputs and outputs of decode and encode
"""
import shutil

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from safetensors.torch import save_file

from common import FIXTURES, REF, randomize_norms, randomize_zero_params, save_tensors


def _fresh(folder):
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def _gain(model, gain=1.5):
    """Default conv init shrinks the signal about 3x per ReLU layer: the output of a 16-layer
    random decoder would hardly depend on its input. Scaling the kernels keeps it alive."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.mul_(gain)


def _save_half(model, folder):
    """Stores the weights as F16 (halves the fixture) and returns the model with the F16-rounded
    weights in f32: the exact values our loader sees."""
    model.half().save_pretrained(_fresh(folder))
    return model.float().eval()


def taesd_default():
    torch.manual_seed(41)
    m = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16),
        decoder_block_out_channels=(16, 16, 16, 16),
    )
    randomize_zero_params(m, 42)
    _gain(m)
    return _save_half(m, FIXTURES / "tiny-taesd")


def taesd_alt():
    torch.manual_seed(43)
    m = AutoencoderTiny(
        encoder_block_out_channels=(24, 24, 24),
        decoder_block_out_channels=(24, 24, 24),
        num_encoder_blocks=(1, 2, 1),
        num_decoder_blocks=(2, 1, 1),
        upsampling_scaling_factor=3,
        latent_channels=16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
    )
    randomize_zero_params(m, 44)
    _gain(m)
    return _save_half(m, FIXTURES / "tiny-taesd-alt")


def write_original_layout(model):
    """The original TAESD checkpoints (madebyollin/taesd) are bare `nn.Sequential`s. The decoder's
    layer 0 is the clamp, so diffusers' `decoder.layers.i.*` is `{i+1}.*` in
    `taesd_decoder.safetensors`; the encoder's `encoder.layers.i.*` is `{i}.*` in
    `taesd_encoder.safetensors`. tiny-taesd-original has the decoder alone (the common download),
    tiny-taesd-original-pair both files."""
    def layers(part, shift):
        prefix = f"{part}.layers."
        out = {}
        for k, v in model.state_dict().items():
            if k.startswith(prefix):
                i, rest = k[len(prefix):].split(".", 1)
                out[f"{int(i) + shift}.{rest}"] = v.half().contiguous()
        return out

    decoder, encoder = layers("decoder", 1), layers("encoder", 0)
    for name, files in [("tiny-taesd-original", {"taesd_decoder": decoder}),
                        ("tiny-taesd-original-pair", {"taesd_decoder": decoder, "taesd_encoder": encoder})]:
        folder = _fresh(FIXTURES / name)
        folder.mkdir(parents=True)
        for stem, tensors in files.items():
            save_file(tensors, str(folder / f"{stem}.safetensors"))


def kl_variant():
    torch.manual_seed(45)
    m = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16],
        layers_per_block=2,
        latent_channels=16,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    randomize_norms(m, 46)
    randomize_zero_params(m, 47)
    m.eval()
    m.save_pretrained(_fresh(FIXTURES / "tiny-kl-variant"))
    return m


@torch.no_grad()
def tiny_case(name, model, latent_shape, image_shape, seed):
    g = torch.Generator().manual_seed(seed)
    # Latents beyond ±3 exercise the tanh clamp.
    latents = 2.0 * torch.randn(latent_shape, generator=g)
    image = torch.rand(image_shape, generator=g) * 2 - 1
    decoded = model.decode(latents).sample
    encoded = model.encode(image).latents
    save_tensors(REF / f"{name}.safetensors",
                 {"latents": latents, "decoded": decoded, "image": image, "encoded": encoded},
                 f"AutoencoderTiny decode(latents).sample / encode(image).latents")
    print(f"  {name}: decoded {tuple(decoded.shape)} range [{decoded.min():.3f}, {decoded.max():.3f}]")


@torch.no_grad()
def kl_case(name, model, latent_shape, image_shape, seed):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(latent_shape, generator=g)
    image = torch.rand(image_shape, generator=g) * 2 - 1
    decoded = model.decode(latents).sample
    dist = model.encode(image).latent_dist
    save_tensors(REF / f"{name}.safetensors",
                 {"latents": latents, "decoded": decoded, "image": image,
                  "mean": dist.mean, "logvar": dist.logvar},
                 "AutoencoderKL decode(latents).sample / encode(image).latent_dist mean, logvar")
    print(f"  {name}: decoded {tuple(decoded.shape)} range [{decoded.min():.3f}, {decoded.max():.3f}]")


def generate():
    tiny = taesd_default()
    tiny_case("vae_taesd", tiny, (2, 4, 8, 8), (1, 3, 64, 64), 51)
    write_original_layout(tiny)
    alt = taesd_alt()
    # 5×5 latents → 45×45 pixels (3 levels, ×3 upsampling); the encoder always halves: 36 → 9.
    tiny_case("vae_taesd_alt", alt, (1, 16, 5, 5), (1, 3, 36, 36), 52)
    kl = AutoencoderKL.from_pretrained(FIXTURES / "tiny-sd" / "vae", torch_dtype=torch.float32).eval()
    kl_case("vae_kl", kl, (2, 4, 8, 8), (1, 3, 64, 64), 53)
    kl_case("vae_kl_variant", kl_variant(), (1, 16, 6, 6), (1, 3, 12, 12), 54)
