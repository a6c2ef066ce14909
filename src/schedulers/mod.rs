//! Samplers, chosen by `scheduler/scheduler_config.json`'s `_class_name`, mirroring diffusers'
//! schedulers step for step (parity-tested on their traces).
//!
//! Unlike diffusers they keep no step counter: the caller passes the step index, and noise
//! for stochastic steps is passed in (`needs_noise`) so the pipeline owns the RNG. The schedule
//! (betas, sigmas, timesteps) is plain `Vec<f64>` arithmetic on the CPU; only the per-step
//! update touches tensors.
//!
//! The denoising loop (classifier-free guidance omitted):
//! ```text
//! scheduler.set_timesteps(steps, None)?;
//! let mut x = noise.mul_scalar(scheduler.init_noise_sigma() as f32);
//! for (i, &t) in scheduler.timesteps().iter().enumerate() {
//!     let out = unet.forward(scheduler.scale_model_input(x.clone(), i), t, &context);
//!     let fresh = scheduler.needs_noise(i).then(|| randn(x.dims()));
//!     x = scheduler.step(out, i, x, fresh);
//! }
//! ```

mod betas;
mod ddim;
mod euler;
mod flow_match;
mod lcm;

use burn::tensor::Tensor;

pub use ddim::Ddim;
pub use euler::EulerDiscrete;
pub use flow_match::FlowMatchEulerDiscrete;
pub use lcm::Lcm;

use crate::config::SchedulerConfig;
use crate::error::Result;

const FILE: &str = "scheduler/scheduler_config.json";

#[derive(Debug, Clone)]
pub enum Scheduler {
    FlowMatch(FlowMatchEulerDiscrete),
    Euler(EulerDiscrete),
    Lcm(Lcm),
    Ddim(Ddim),
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
            SchedulerConfig::Lcm(c) => Self::Lcm(Lcm::new(c)?),
            SchedulerConfig::Ddim(c) => Self::Ddim(Ddim::new(c)?),
        })
    }

    /// Like diffusers' `set_timesteps`; `custom` gives the timesteps explicitly, strictly
    /// descending, `steps` of them (e.g. DMD2's `[999, 749, 499, 249]` for LCMScheduler, which
    /// needs integers; flow-match and Euler take fractional ones; DDIM refuses them).
    ///
    /// Loop over `timesteps()`, not `0..steps`: like diffusers, "trailing" spacing yields one
    /// extra timestep for some counts (61 gives 62, the last being t = -1: Euler mirrors that,
    /// DDIM refuses the count).
    pub fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        match self {
            Self::FlowMatch(s) => s.set_timesteps(steps, custom),
            Self::Euler(s) => s.set_timesteps(steps, custom),
            Self::Lcm(s) => s.set_timesteps(steps, custom),
            Self::Ddim(s) => s.set_timesteps(steps, custom),
        }
    }

    /// What the model receives as timestep, per step (integers for LCM/DDIM, fractional for
    /// flow-match and Euler's linspace spacing). Empty before `set_timesteps`.
    pub fn timesteps(&self) -> &[f64] {
        match self {
            Self::FlowMatch(s) => s.timesteps(),
            Self::Euler(s) => s.timesteps(),
            Self::Lcm(s) => s.timesteps(),
            Self::Ddim(s) => s.timesteps(),
        }
    }

    /// Noise levels per step plus a final 0, for the sigma-space samplers (flow-match, Euler).
    pub fn sigmas(&self) -> Option<&[f64]> {
        match self {
            Self::FlowMatch(s) => Some(s.sigmas()),
            Self::Euler(s) => Some(s.sigmas()),
            Self::Lcm(_) | Self::Ddim(_) => None,
        }
    }

    /// Scale of the initial Gaussian latents (Euler works with unnormalised x = x_0 + sigma eps).
    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Self::Euler(s) => s.init_noise_sigma(),
            _ => 1.0,
        }
    }

    /// The model input at `step` (Euler divides by sqrt(sigma^2 + 1); identity elsewhere).
    pub fn scale_model_input(&self, sample: Tensor<4>, step: usize) -> Tensor<4> {
        match self {
            Self::Euler(s) => s.scale_model_input(sample, step),
            _ => sample,
        }
    }

    /// True if `step(...)` at this step consumes fresh noise (stochastic flow, LCM multi-step).
    pub fn needs_noise(&self, step: usize) -> bool {
        match self {
            Self::FlowMatch(s) => s.needs_noise(step),
            Self::Lcm(s) => s.needs_noise(step),
            Self::Euler(_) | Self::Ddim(_) => false,
        }
    }

    /// One denoising step from `sample` given the model output; `noise` (same shape, standard
    /// normal) when `needs_noise(step)`.
    ///
    /// # Panics
    /// If `step` is out of range or needed noise is missing.
    pub fn step(&self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        match self {
            Self::FlowMatch(s) => s.step(model_output, step, sample, noise),
            Self::Euler(s) => s.step(model_output, step, sample),
            Self::Lcm(s) => s.step(model_output, step, sample, noise),
            Self::Ddim(s) => s.step(model_output, step, sample),
        }
    }

    /// Sensible (steps, guidance scale) when the user gives none: many CFG steps for base
    /// models, few unguided ones for distilled samplers.
    pub fn default_steps_and_guidance(&self) -> (usize, f32) {
        match self {
            Self::FlowMatch(s) => s.default_steps_and_guidance(),
            Self::Euler(_) => (25, 7.5),
            Self::Lcm(_) => (4, 1.0),
            Self::Ddim(_) => (50, 7.5),
        }
    }
}
