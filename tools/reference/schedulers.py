"""Step-by-step traces of the samplers (FlowMatchEuler, Euler, LCM, DDIM) and their schedules.

Per trace case `sched_<case>.safetensors` holds, for each step i: `timesteps[i]` (what the model
receives), `model_input[i]` (after scale_model_input), `model_output[i]` (a deterministic
synthetic "model": a linear function of the input plus a fixed random tensor times a function of
t), `noise[i]` (the noise the step drew, zeros if none; `noise_used[i]` says which) and
`sample[i]` (the step's result). `latents_noise` * `init_noise_sigma` is the starting sample.
The scheduler config is written next to it as `sched_<case>.scheduler_config.json`
(save_pretrained's format, `_class_name` included) so the Rust test parses the real file.

`sched_schedules.safetensors` sweeps step counts per config (timesteps, and sigmas where the
scheduler has them) plus alphas_cumprod per beta schedule, to pin the rounding of the schedule
arithmetic (np.round half-to-even, np.arange lengths, float32 linspace) beyond the traced cases.
"""
import importlib
import zlib

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, LCMScheduler

from common import REF, save_tensors

SHAPE = (2, 4, 4, 4)

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

# name: (class, config, steps, custom timesteps)
TRACES = {
    "flow_shift1": (FlowMatchEulerDiscreteScheduler, dict(shift=1.0), 28, None),
    "flow_shift3": (FlowMatchEulerDiscreteScheduler, dict(shift=3.0), 28, None),
    "flow_stochastic": (FlowMatchEulerDiscreteScheduler, dict(shift=3.0, stochastic_sampling=True), 4, None),
    "flow_stochastic_custom": (
        FlowMatchEulerDiscreteScheduler,
        dict(shift=1.0, stochastic_sampling=True),
        4,
        [1000.0, 750.0, 500.0, 250.0],
    ),
    "euler_eps_linspace": (EulerDiscreteScheduler, dict(SD_BETAS, timestep_spacing="linspace", steps_offset=1), 20, None),
    "euler_eps_leading": (EulerDiscreteScheduler, dict(SD_BETAS, timestep_spacing="leading", steps_offset=1), 10, None),
    "euler_eps_custom": (EulerDiscreteScheduler, dict(SD_BETAS), 4, [999.0, 749.5, 499.0, 249.0]),
    "euler_v_trailing": (
        EulerDiscreteScheduler,
        dict(SD_BETAS, prediction_type="v_prediction", timestep_spacing="trailing"),
        12,
        None,
    ),
    "euler_v_trailing_zero_snr": (
        EulerDiscreteScheduler,
        dict(SD_BETAS, prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True),
        6,
        None,
    ),
    "lcm_default": (LCMScheduler, dict(), 4, None),
    "lcm_custom": (LCMScheduler, dict(), 4, [999, 749, 499, 249]),
    "ddim_leading": (
        DDIMScheduler,
        dict(SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"),
        10,
        None,
    ),
    "ddim_v_trailing_clip": (
        DDIMScheduler,
        dict(SD_BETAS, prediction_type="v_prediction", clip_sample=True, clip_sample_range=1.5, timestep_spacing="trailing"),
        5,
        None,
    ),
}

# Schedule sweeps: name: (class, config)
SWEEPS = {
    "flow_shift3": (FlowMatchEulerDiscreteScheduler, dict(shift=3.0)),
    "euler_linspace": (EulerDiscreteScheduler, dict(SD_BETAS, timestep_spacing="linspace")),
    "euler_leading": (EulerDiscreteScheduler, dict(SD_BETAS, timestep_spacing="leading", steps_offset=1)),
    "euler_trailing": (EulerDiscreteScheduler, dict(SD_BETAS, timestep_spacing="trailing")),
    "euler_linear_trailing_zero_snr": (EulerDiscreteScheduler, dict(timestep_spacing="trailing", rescale_betas_zero_snr=True)),
    "ddim_linspace": (DDIMScheduler, dict(SD_BETAS, timestep_spacing="linspace")),
    "ddim_leading": (DDIMScheduler, dict(SD_BETAS, timestep_spacing="leading", steps_offset=1)),
    "ddim_trailing": (DDIMScheduler, dict(SD_BETAS, timestep_spacing="trailing")),
    "lcm_default": (LCMScheduler, dict()),
}
# 61: numpy's float arange gives "trailing" spacing 62 timesteps there (diffusers quirk, mirrored).
SWEEP_STEPS = [1, 2, 3, 4, 6, 7, 9, 10, 25, 28, 50, 61]

# alphas_cumprod per beta schedule (DDIM keeps them as computed; Euler patches the last one).
BETAS = {
    "linear": dict(),
    "scaled_linear": SD_BETAS,
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
    "scaled_linear_zero_snr": dict(SD_BETAS, rescale_betas_zero_snr=True),
}


def record_noise(cls):
    """Wraps the scheduler module's randn_tensor so each step's drawn noise is captured."""
    module = importlib.import_module(cls.__module__)
    drawn = []
    original = module.randn_tensor

    def recorder(*args, **kwargs):
        n = original(*args, **kwargs)
        drawn.append(n.clone())
        return n

    module.randn_tensor = recorder
    return drawn, lambda: setattr(module, "randn_tensor", original)


def write_config(sched, name):
    REF.mkdir(parents=True, exist_ok=True)
    (REF / f"sched_{name}.scheduler_config.json").write_text(sched.to_json_string())


def trace(name, cls, config, steps, custom, seed):
    sched = cls(**config)
    write_config(sched, name)
    if custom is None:
        sched.set_timesteps(steps)
    else:
        sched.set_timesteps(timesteps=custom)
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g)
    latents_noise = torch.randn(SHAPE, generator=g)
    init_sigma = getattr(sched, "init_noise_sigma", 1.0)
    sample = latents_noise * init_sigma
    drawn, restore = record_noise(cls)
    rows = {k: [] for k in ("model_input", "model_output", "noise", "sample")}
    used = []
    for t in sched.timesteps:
        x = sched.scale_model_input(sample, t) if hasattr(sched, "scale_model_input") else sample
        out = 0.3 * x + torch.cos(t.float() / 1000 * 3) * base
        drawn.clear()
        sample = sched.step(out, t, sample, generator=g).prev_sample
        assert len(drawn) <= 1
        rows["model_input"].append(x)
        rows["model_output"].append(out)
        rows["noise"].append(drawn[0] if drawn else torch.zeros(SHAPE))
        rows["sample"].append(sample)
        used.append(1 if drawn else 0)
    restore()
    tensors = {k: torch.stack(v) for k, v in rows.items()}
    tensors["noise_used"] = torch.tensor(used, dtype=torch.int64)
    tensors["timesteps"] = sched.timesteps.to(torch.float64)
    tensors["latents_noise"] = latents_noise
    tensors["init_noise_sigma"] = torch.tensor([float(init_sigma)])
    if hasattr(sched, "sigmas"):
        tensors["sigmas"] = sched.sigmas
    save_tensors(REF / f"sched_{name}.safetensors", tensors, f"{cls.__name__} {steps} steps, custom {custom}")


def sweeps():
    tensors = {}
    for name, (cls, config) in SWEEPS.items():
        sched = cls(**config)
        write_config(sched, f"sweep_{name}")
        for n in SWEEP_STEPS:
            try:
                sched.set_timesteps(n)
            except ValueError:  # e.g. LCM beyond original_inference_steps: no keys, Rust must refuse too
                continue
            if cls is DDIMScheduler and (sched.timesteps < 0).any():
                continue  # trailing 61 ends at t = -1, which would index alphas_cumprod[-1]; we refuse
            tensors[f"{name}.{n}.timesteps"] = sched.timesteps.to(torch.float64)
            if hasattr(sched, "sigmas"):
                tensors[f"{name}.{n}.sigmas"] = sched.sigmas
            if hasattr(sched, "init_noise_sigma"):
                tensors[f"{name}.{n}.init_noise_sigma"] = torch.tensor([float(sched.init_noise_sigma)])
    for name, config in BETAS.items():
        sched = DDIMScheduler(**config)
        write_config(sched, f"betas_{name}")
        tensors[f"alphas_cumprod.{name}"] = sched.alphas_cumprod
    save_tensors(REF / "sched_schedules.safetensors", tensors, "schedule sweeps")


def generate():
    for name, (cls, config, steps, custom) in TRACES.items():
        # A seed per case name: adding a case leaves the others' fixtures unchanged.
        trace(name, cls, config, steps, custom, zlib.crc32(name.encode()))
    sweeps()
