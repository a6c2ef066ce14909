"""PyTorch side of `cargo bench --bench unet`: one case per process so that VmHWM is its own.

Usage: bench_unet.py fixture|full <full-config.json>. Prints one `RESULT {json}` line with the
same fields as the Rust side: load and forward times (batch 1, 64x64 latent, 77 tokens, f32,
torch's default thread count) and peak RSS after load and after the forwards."""
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.utils import logging

ROOT = Path(__file__).resolve().parents[2]
LATENT, SEQ = 64, 77


def vm_hwm_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(case, config_path):
    logging.set_verbosity_error()
    t0 = time.perf_counter()
    if case == "fixture":
        unet = UNet2DConditionModel.from_pretrained(ROOT / "tests/fixtures/tiny-sd/unet", torch_dtype=torch.float32)
    else:
        config = json.loads(Path(config_path).read_text())
        unet = UNet2DConditionModel.from_config(config)
    unet.eval()
    load_s = time.perf_counter() - t0
    load_hwm = vm_hwm_mib()
    params = sum(p.numel() for p in unet.parameters())
    cfg = unet.config
    runs, warmup = (2, 1) if case == "full" else (5, 1)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn((1, cfg.in_channels, LATENT, LATENT), generator=g)
    ehs = torch.randn((1, SEQ, cfg.cross_attention_dim), generator=g)
    t = torch.tensor([500.0])
    times = []
    finite = True
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            out = unet(sample, t, encoder_hidden_states=ehs).sample
            elapsed = time.perf_counter() - start
            finite &= bool(torch.isfinite(out).all())
            if i >= warmup:
                times.append(elapsed)
    result = {"load_s": load_s, "forward_s": times, "load_hwm_mib": load_hwm, "hwm_mib": vm_hwm_mib(),
              "finite": finite, "params": params, "threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
