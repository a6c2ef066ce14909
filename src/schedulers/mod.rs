//! Samplers, chosen by `scheduler/scheduler_config.json`'s `_class_name` (or overridden by name,
//! see [`Sampler`]), mirroring diffusers' schedulers step for step (parity-tested on their
//! traces).
//!
//! Unlike diffusers they keep no step counter for the single-step samplers: the caller passes
//! the step index (the multistep ones, PNDM and DPM-Solver, keep their past estimates and
//! insist on steps in order). Noise for stochastic steps is passed in (`needs_noise`) so the
//! pipeline owns the RNG. The schedule (betas, sigmas, timesteps) is plain `Vec<f64>`
//! arithmetic on the CPU; only the per-step update touches tensors.
//!
//! The noise sequence (natively and in the browser alike, the same Rust code): one seeded
//! ChaCha stream (`StdRng::seed_from_u64(seed)`) gives, in this order, the initial latents
//! (unless given; for img2img the noise added to the encoded image, in the same place and shape)
//! and then, for each step `i` run, in order, where `needs_noise(i)`, one standard
//! normal tensor of the latents' shape `[1, C, h, w]`, row-major, by Box–Muller on pairs of
//! uniform f64 draws (`pipeline::gaussian`). Steps that need no noise draw nothing. Which steps
//! draw follows diffusers: Euler ancestral and SDE-DPM-Solver++ every step, DDPM while t > 0,
//! LCM every step but the last, stochastic flow-match every step.
//!
//! The denoising loop (classifier-free guidance omitted):
//! ```text
//! scheduler.set_timesteps(steps, None)?;
//! let mut x = noise.mul_scalar(scheduler.init_noise_sigma() as f32);
//! for (i, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
//!     let out = unet.forward(scheduler.scale_model_input(x.clone(), i), t, &context);
//!     let fresh = scheduler.needs_noise(i).then(|| randn(x.dims()));
//!     x = scheduler.step(out, i, x, fresh);
//! }
//! ```

mod betas;
mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod flow_match;
mod lcm;
mod pndm;
mod samplers;

use burn::tensor::Tensor;

pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpm_solver::DpmSolverMultistep;
pub use euler::EulerDiscrete;
pub use euler_ancestral::EulerAncestralDiscrete;
pub use flow_match::FlowMatchEulerDiscrete;
pub use lcm::Lcm;
pub use pndm::Pndm;
pub use samplers::Sampler;

use crate::config::SchedulerConfig;
use crate::error::{Error, Result};

const FILE: &str = "scheduler/scheduler_config.json";

// One per generation, never moved in a loop: boxing the multistep samplers buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Scheduler {
    FlowMatch(FlowMatchEulerDiscrete),
    Euler(EulerDiscrete),
    EulerAncestral(EulerAncestralDiscrete),
    Lcm(Lcm),
    Ddim(Ddim),
    Ddpm(Ddpm),
    Pndm(Pndm),
    DpmSolver(DpmSolverMultistep),
}

/// Calls `$f` on whichever sampler `$s` holds.
macro_rules! each {
    ($s:expr, $x:ident => $e:expr) => {
        match $s {
            Scheduler::FlowMatch($x) => $e,
            Scheduler::Euler($x) => $e,
            Scheduler::EulerAncestral($x) => $e,
            Scheduler::Lcm($x) => $e,
            Scheduler::Ddim($x) => $e,
            Scheduler::Ddpm($x) => $e,
            Scheduler::Pndm($x) => $e,
            Scheduler::DpmSolver($x) => $e,
        }
    };
}

impl Scheduler {
    /// Builds the sampler of a validated config (`SchedulerConfig::from_json` validates).
    ///
    /// # Panics
    /// On a config `validate()` rejects; use [`Scheduler::try_new`] for hand-built configs.
    pub fn new(config: &SchedulerConfig) -> Self {
        Self::try_new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_new(config: &SchedulerConfig) -> Result<Self> {
        config.validate()?;
        Ok(match config {
            SchedulerConfig::FlowMatchEulerDiscrete(c) => Self::FlowMatch(FlowMatchEulerDiscrete::new(c)),
            SchedulerConfig::EulerDiscrete(c) => Self::Euler(EulerDiscrete::new(c)?),
            SchedulerConfig::EulerAncestralDiscrete(c) => Self::EulerAncestral(EulerAncestralDiscrete::new(c)?),
            SchedulerConfig::Lcm(c) => Self::Lcm(Lcm::new(c)?),
            SchedulerConfig::Ddim(c) => Self::Ddim(Ddim::new(c)?),
            SchedulerConfig::Ddpm(c) => Self::Ddpm(Ddpm::new(c)?),
            SchedulerConfig::Pndm(c) => Self::Pndm(Pndm::new(c)?),
            SchedulerConfig::DpmSolverMultistep(c) => Self::DpmSolver(DpmSolverMultistep::new(c)?),
        })
    }

    /// Like diffusers' `set_timesteps`; `custom` gives the timesteps explicitly, strictly
    /// descending, `steps` of them, for the schedulers whose diffusers `set_timesteps` takes
    /// `timesteps=`: LCM, DDPM and DPM-Solver (integers; not with Karras sigmas), flow-match and
    /// Euler (fractional allowed). DDIM, PNDM and Euler ancestral refuse them, as in diffusers.
    /// (e.g. DMD2's `[999, 749, 499, 249]`, SDXS' `[999]`).
    ///
    /// Loop over `timesteps()`, not `0..steps`: like diffusers, "trailing" spacing yields one
    /// extra timestep for some counts (61 gives 62, the last being t = -1: Euler mirrors that,
    /// DDIM refuses the count), and PNDM evaluates the model `steps + 1` times (more with its
    /// Runge–Kutta warm-up).
    pub fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        each!(self, s => s.set_timesteps(steps, custom))
    }

    /// diffusers' `set_timesteps(sigmas=...)`, accepted by the schedulers that take it there:
    /// Euler (the final sigma included: `sigmas.len() - 1` steps) and flow-match (one per step,
    /// shifted like its own schedule, a final 0 appended).
    pub fn set_sigmas(&mut self, sigmas: &[f64]) -> Result<()> {
        match self {
            Self::Euler(s) => s.set_sigmas(sigmas),
            Self::FlowMatch(s) => s.set_sigmas(sigmas),
            other => Err(Error::InvalidArgument(format!("custom sigmas are not supported by {}", other.class_name()))),
        }
    }

    /// The diffusers class this sampler mirrors.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::FlowMatch(_) => "FlowMatchEulerDiscreteScheduler",
            Self::Euler(_) => "EulerDiscreteScheduler",
            Self::EulerAncestral(_) => "EulerAncestralDiscreteScheduler",
            Self::Lcm(_) => "LCMScheduler",
            Self::Ddim(_) => "DDIMScheduler",
            Self::Ddpm(_) => "DDPMScheduler",
            Self::Pndm(_) => "PNDMScheduler",
            Self::DpmSolver(_) => "DPMSolverMultistepScheduler",
        }
    }

    /// What the model receives as timestep, per step (integers for the DDPM-indexed samplers,
    /// fractional for flow-match and Euler's linspace spacing). Empty before `set_timesteps`.
    pub fn timesteps(&self) -> &[f64] {
        each!(self, s => s.timesteps())
    }

    /// Noise levels per step plus a final one, for the sigma-space samplers.
    pub fn sigmas(&self) -> Option<&[f64]> {
        match self {
            Self::FlowMatch(s) => Some(s.sigmas()),
            Self::Euler(s) => Some(s.sigmas()),
            Self::EulerAncestral(s) => Some(s.sigmas()),
            Self::DpmSolver(s) => Some(s.sigmas()),
            Self::Lcm(_) | Self::Ddim(_) | Self::Ddpm(_) | Self::Pndm(_) => None,
        }
    }

    /// Scale of the initial Gaussian latents (the Euler samplers work with unnormalised
    /// x = x_0 + sigma eps).
    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Self::Euler(s) => s.init_noise_sigma(),
            Self::EulerAncestral(s) => s.init_noise_sigma(),
            _ => 1.0,
        }
    }

    /// The model input at `step` (the Euler samplers divide by sqrt(sigma^2 + 1); identity
    /// elsewhere).
    pub fn scale_model_input(&self, sample: Tensor<4>, step: usize) -> Tensor<4> {
        match self {
            Self::Euler(s) => s.scale_model_input(sample, step),
            Self::EulerAncestral(s) => s.scale_model_input(sample, step),
            _ => sample,
        }
    }

    /// True if `step(...)` at this step consumes fresh noise (see the module docs).
    pub fn needs_noise(&self, step: usize) -> bool {
        match self {
            Self::FlowMatch(s) => s.needs_noise(step),
            Self::Lcm(s) => s.needs_noise(step),
            Self::EulerAncestral(s) => s.needs_noise(step),
            Self::Ddpm(s) => s.needs_noise(step),
            Self::DpmSolver(s) => s.needs_noise(step),
            Self::Euler(_) | Self::Ddim(_) | Self::Pndm(_) => false,
        }
    }

    /// One denoising step from `sample` given the model output; `noise` (same shape, standard
    /// normal) when `needs_noise(step)`.
    ///
    /// # Panics
    /// If `step` is out of range, needed noise is missing, or a multistep sampler (PNDM,
    /// DPM-Solver) is stepped out of order.
    pub fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        match self {
            Self::FlowMatch(s) => s.step(model_output, step, sample, noise),
            Self::Euler(s) => s.step(model_output, step, sample),
            Self::EulerAncestral(s) => s.step(model_output, step, sample, noise),
            Self::Lcm(s) => s.step(model_output, step, sample, noise),
            Self::Ddim(s) => s.step(model_output, step, sample),
            Self::Ddpm(s) => s.step(model_output, step, sample, noise),
            Self::Pndm(s) => s.step(model_output, step, sample),
            Self::DpmSolver(s) => s.step(model_output, step, sample, noise),
        }
    }

    /// diffusers' `set_begin_index` (img2img's `get_timesteps`): the first step taken will be
    /// `begin`. The multistep samplers start their state there; the others take any step index.
    /// (Every sampler here has diffusers' `order` 1, so `begin` is `t_start` itself.)
    pub fn set_begin_index(&mut self, begin: usize) {
        match self {
            Self::Pndm(s) => s.set_begin_index(begin),
            Self::DpmSolver(s) => s.set_begin_index(begin),
            _ => {}
        }
    }

    /// Noises clean latents `original` to the level of `step` with standard-normal `noise`, as
    /// each diffusers scheduler's own `add_noise` (flow-match: `scale_noise`) does after
    /// `set_begin_index(step)`: alphas_cumprod of the step's timestep for DDPM, DDIM, PNDM and
    /// LCM; `x_0 + sigma noise` for the Euler samplers; DPM-Solver's `alpha_t x_0 + sigma_t noise`;
    /// flow-match's `(1 - sigma) x_0 + sigma noise`.
    pub fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step: usize) -> Tensor<4> {
        match self {
            Self::FlowMatch(s) => s.scale_noise(original, noise, step),
            Self::Euler(s) => s.add_noise(original, noise, step),
            Self::EulerAncestral(s) => s.add_noise(original, noise, step),
            Self::Lcm(s) => s.add_noise(original, noise, step),
            Self::Ddim(s) => s.add_noise(original, noise, step),
            Self::Ddpm(s) => s.add_noise(original, noise, step),
            Self::Pndm(s) => s.add_noise(original, noise, step),
            Self::DpmSolver(s) => s.add_noise(original, noise, step),
        }
    }

    /// Sensible (steps, guidance scale) when the user gives none: many CFG steps for base
    /// models, few unguided ones for distilled samplers.
    pub fn default_steps_and_guidance(&self) -> (usize, f32) {
        match self {
            Self::FlowMatch(s) => s.default_steps_and_guidance(),
            Self::Euler(_) | Self::EulerAncestral(_) | Self::DpmSolver(_) => (25, 7.5),
            Self::Lcm(_) => (4, 1.0),
            Self::Ddim(_) | Self::Pndm(_) | Self::Ddpm(_) => (50, 7.5),
        }
    }
}
