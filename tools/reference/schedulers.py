"""Step-by-step traces of the samplers (FlowMatchEuler, Euler, Euler ancestral, LCM, DDIM, DDPM, PNDM,
DPM-Solver multistep) and their schedules.

Per trace case `sched_<case>.safetensors` holds, for each step i: `timesteps[i]` (what the model
receives), `model_input[i]` (after scale_model_input), `model_output[i]` (a deterministic
synthetic "model": a linear function of the input plus a fixed random tensor times a function of
t), `noise[i]` (the noise the step drew, zeros if none; `noise_used[i]` says which) and
`sample[i]` (the step's result). `latents_noise` * `init_noise_sigma` is the starting sample.
Custom schedules are given as a list (timesteps) or a dict of set_timesteps keywords (`sigmas=`).
The scheduler config is written next to it as `sched_<case>.scheduler_config.json`
(save_pretrained's format, `_class_name` included) so the Rust test parses the real file.

`sched_schedules.safetensors` sweeps step counts per config (timesteps, and sigmas where the
scheduler has them) plus alphas_cumprod per beta schedule, to pin the rounding of the schedule
arithmetic (np.round half-to-even, np.arange lengths, float32 linspace) beyond the traced cases.
"""
import importlib
import inspect
import zlib

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

from common import REF, save_tensors

SHAPE = (2, 4, 4, 4)

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# The scheduler_config.json every SD-1.x repo ships (BK-SDM, Taiyi, SD 1.4/1.5 fine-tunes).
SD1_PNDM = dict(SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
# A beta schedule given as values (trained_betas): a steeper ramp than the named schedules.
TRAINED_BETAS = [float(b) for b in torch.linspace(1e-4**0.25, 0.02**0.25, 1000, dtype=torch.float64) ** 4]
DPM = DPMSolverMultistepScheduler

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
    "euler_sigmas": (EulerDiscreteScheduler, dict(SD_BETAS), 5, dict(sigmas=[14.6, 7.0, 3.0, 1.0, 0.3, 0.0])),
    "flow_sigmas": (FlowMatchEulerDiscreteScheduler, dict(shift=3.0), 4, dict(sigmas=[1.0, 0.75, 0.5, 0.25])),
    "pndm_sd1": (PNDMScheduler, SD1_PNDM, 10, None),
    "pndm_prk_linspace": (PNDMScheduler, dict(timestep_spacing="linspace", set_alpha_to_one=True), 6, None),
    "pndm_v_trailing_trained": (
        PNDMScheduler,
        dict(trained_betas=TRAINED_BETAS, prediction_type="v_prediction", timestep_spacing="trailing", skip_prk_steps=True),
        7,
        None,
    ),
    "dpm_2m_karras": (DPM, dict(SD_BETAS, steps_offset=1, use_karras_sigmas=True), 20, None),
    "dpm_2m_linspace": (DPM, dict(SD_BETAS), 8, None),
    "dpm_3m_v_leading_sigma_min": (
        DPM,
        dict(SD_BETAS, solver_order=3, prediction_type="v_prediction", timestep_spacing="leading", steps_offset=1,
             final_sigmas_type="sigma_min"),
        12,
        None,
    ),
    "dpm_1_trailing_trained": (DPM, dict(trained_betas=TRAINED_BETAS, solver_order=1, timestep_spacing="trailing"), 6, None),
    "dpm_2m_heun_euler_at_final": (
        DPM,
        dict(SD_BETAS, solver_type="heun", lower_order_final=False, euler_at_final=True, final_sigmas_type="sigma_min"),
        16,
        None,
    ),
    "dpm_2m_sde_karras": (DPM, dict(SD_BETAS, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True), 10, None),
    "dpm_3m_sde_v": (DPM, dict(SD_BETAS, algorithm_type="sde-dpmsolver++", solver_order=3, prediction_type="v_prediction"), 9, None),
    "dpm_2m_sde_heun": (DPM, dict(SD_BETAS, algorithm_type="sde-dpmsolver++", solver_type="heun"), 6, None),
    "dpm_2m_custom": (DPM, dict(SD_BETAS), 4, [999, 749, 499, 249]),
    "euler_a_linspace": (EulerAncestralDiscreteScheduler, dict(SD_BETAS, steps_offset=1), 10, None),
    "euler_a_v_leading": (
        EulerAncestralDiscreteScheduler,
        dict(SD_BETAS, prediction_type="v_prediction", timestep_spacing="leading", steps_offset=1),
        8,
        None,
    ),
    "euler_a_trailing_zero_snr": (
        EulerAncestralDiscreteScheduler,
        dict(SD_BETAS, prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True),
        5,
        None,
    ),
    "ddpm_leading": (DDPMScheduler, dict(SD_BETAS, clip_sample=False, steps_offset=1), 10, None),
    "ddpm_v_trailing_small_log": (
        DDPMScheduler,
        dict(SD_BETAS, prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=True,
             clip_sample_range=1.5, variance_type="fixed_small_log"),
        6,
        None,
    ),
    "ddpm_custom_large_linspace": (DDPMScheduler, dict(variance_type="fixed_large", timestep_spacing="linspace"), 4, [999, 749, 499, 249]),
    "ddpm_trained_linspace": (DDPMScheduler, dict(trained_betas=TRAINED_BETAS, timestep_spacing="linspace"), 5, None),
    "euler_a_trained_trailing": (EulerAncestralDiscreteScheduler, dict(trained_betas=TRAINED_BETAS, timestep_spacing="trailing"), 5, None),
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
    "pndm_sd1": (PNDMScheduler, SD1_PNDM),
    "pndm_prk_linspace": (PNDMScheduler, dict(timestep_spacing="linspace")),
    "pndm_trailing": (PNDMScheduler, dict(SD_BETAS, timestep_spacing="trailing", skip_prk_steps=True)),
    "dpm_linspace": (DPM, dict(SD_BETAS)),
    "dpm_leading": (DPM, dict(SD_BETAS, timestep_spacing="leading", steps_offset=1)),
    "dpm_trailing": (DPM, dict(SD_BETAS, timestep_spacing="trailing")),
    "dpm_karras": (DPM, dict(SD_BETAS, use_karras_sigmas=True)),
    "dpm_cosine_clipped": (DPM, dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)),
    "euler_a_leading": (EulerAncestralDiscreteScheduler, dict(SD_BETAS, timestep_spacing="leading", steps_offset=1)),
    "ddpm_linspace": (DDPMScheduler, dict(SD_BETAS, timestep_spacing="linspace")),
    "ddpm_trailing": (DDPMScheduler, dict(SD_BETAS, timestep_spacing="trailing")),
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
    if not hasattr(module, "randn_tensor"):  # a deterministic scheduler (PNDM)
        return drawn, lambda: None
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
    elif isinstance(custom, dict):
        sched.set_timesteps(**custom)
    else:
        sched.set_timesteps(timesteps=custom)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
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
        kwargs = dict(generator=g) if takes_generator else {}
        sample = sched.step(out, t, sample, **kwargs).prev_sample
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
            if cls is not EulerDiscreteScheduler and (sched.timesteps < 0).any():
                continue  # trailing 61 ends at t = -1, which would index alphas_cumprod[-1]; we refuse
            if cls is PNDMScheduler and not sched.config.skip_prk_steps and n < 4:
                continue  # the Runge-Kutta warm-up needs 4 steps (diffusers runs a degenerate chain); we refuse
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
