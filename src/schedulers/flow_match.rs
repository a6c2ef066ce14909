//! `FlowMatchEulerDiscreteScheduler`: rectified flow, x_t = (1 - sigma) x_0 + sigma noise, the
//! model predicts the velocity v = noise - x_0. Euler steps along v, or (`stochastic_sampling`,
//! the DMD2-style few-step mode) predicts x_0 and re-noises it to the next sigma.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::{choice, ensure};
use crate::error::{Error, Result};

// The choices and checks every scheduler_config.json shares.
use super::config::*;
use super::Step;
use super::betas::{check_custom, check_sigmas, check_steps, f32r, np_linspace};

choice! {
    /// Flow matching's dynamic-shift curve (only read with `use_dynamic_shifting`, which is
    /// refused: parsed so that a file naming either value loads).
    TimeShiftType for "time_shift_type" { Exponential = "exponential", Linear = "linear", }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerDiscreteSchedulerConfig {
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: Option<f64>,
    pub max_shift: Option<f64>,
    pub base_image_seq_len: Option<usize>,
    pub max_image_seq_len: Option<usize>,
    pub invert_sigmas: bool,
    pub shift_terminal: Option<f64>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub time_shift_type: TimeShiftType,
    /// The few-step (DMD2-style) variant: predict x0, then re-noise to the next sigma.
    pub stochastic_sampling: bool,
}

impl Default for FlowMatchEulerDiscreteSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: Some(256),
            max_image_seq_len: Some(4096),
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: TimeShiftType::Exponential,
            stochastic_sampling: false,
        }
    }
}

impl FlowMatchEulerDiscreteSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        ensure((1..=MAX_TRAIN_TIMESTEPS).contains(&self.num_train_timesteps), FILE, "num_train_timesteps", self.num_train_timesteps)?;
        ensure(!self.use_dynamic_shifting, FILE, "use_dynamic_shifting", self.use_dynamic_shifting)?;
        ensure(!self.invert_sigmas, FILE, "invert_sigmas", self.invert_sigmas)?;
        ensure(self.shift_terminal.is_none(), FILE, "shift_terminal", self.shift_terminal)?;
        ensure(!self.use_karras_sigmas, FILE, "use_karras_sigmas", self.use_karras_sigmas)?;
        ensure(!self.use_exponential_sigmas, FILE, "use_exponential_sigmas", self.use_exponential_sigmas)?;
        ensure(!self.use_beta_sigmas, FILE, "use_beta_sigmas", self.use_beta_sigmas)?;
        ensure(self.shift > 0.0, FILE, "shift", self.shift)
    }
}

#[derive(Debug, Clone)]
pub struct FlowMatchEulerDiscrete {
    config: FlowMatchEulerDiscreteSchedulerConfig,
    /// Per step, then a final 0 (float32 values, as diffusers holds them).
    sigmas: Vec<f64>,
    /// sigma * num_train_timesteps, what the model is conditioned on.
    timesteps: Vec<f64>,
    /// Ends of the shifted training schedule; set_timesteps spaces between them.
    sigma_max: f64,
    sigma_min: f64,
}

impl FlowMatchEulerDiscrete {
    /// diffusers' `scale_noise` with `begin_index` set: the straight path
    /// `sigmas[step] noise + (1 - sigmas[step]) x_0`.
    pub fn scale_noise(&self, original: Tensor<4>, noise: Tensor<4>, step: usize) -> Tensor<4> {
        let sigma = self.sigmas[step] as f32;
        noise.mul_scalar(sigma).add(original.mul_scalar(1.0 - sigma))
    }
}

impl Step for FlowMatchEulerDiscrete {
    type Config = FlowMatchEulerDiscreteSchedulerConfig;
    const CLASS: &'static str = "FlowMatchEulerDiscreteScheduler";

    const FLOW: bool = true;

    fn new(config: &FlowMatchEulerDiscreteSchedulerConfig) -> Result<Self> {
        let n = config.num_train_timesteps.max(1);
        // diffusers: float32 t = N..1, sigma = t / N, shifted in float32.
        let (shift, shift_m1) = (config.shift as f32, (config.shift - 1.0) as f32);
        let train_sigma = |t: usize| {
            let s = t as f32 / n as f32;
            (shift * s / (1.0 + shift_m1 * s)) as f64
        };
        Ok(Self {
            config: config.clone(),
            sigmas: vec![],
            timesteps: vec![],
            sigma_max: train_sigma(n),
            sigma_min: train_sigma(1),
        })
    }

    /// Evenly spaced timesteps between the training schedule's ends, shifted (again, as
    /// diffusers does: the ends come from the already shifted training sigmas). `custom`
    /// timesteps reach the model as given while their sigmas t/N are shifted, as in diffusers.
    fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        let n = self.config.num_train_timesteps;
        let sigmas: Vec<f64> = match custom {
            Some(ts) => {
                check_custom("FlowMatchEulerDiscreteScheduler", ts, steps, n as f64, false)?;
                self.timesteps = ts.iter().map(|&t| f32r(t)).collect();
                // numpy float32 arithmetic (the shift is a weak Python scalar).
                let (shift, shift_m1) = (self.config.shift as f32, (self.config.shift - 1.0) as f32);
                ts.iter()
                    .map(|&t| {
                        let s = t as f32 / n as f32;
                        (shift * s / (1.0 + shift_m1 * s)) as f64
                    })
                    .collect()
            }
            None => {
                check_steps(steps, n)?;
                let shift = self.config.shift;
                let ts = np_linspace(self.sigma_max * n as f64, self.sigma_min * n as f64, steps, true);
                let sigmas: Vec<f64> = ts
                    .iter()
                    .map(|t| {
                        let s = t / n as f64;
                        f32r(shift * s / (1.0 + (shift - 1.0) * s))
                    })
                    .collect();
                self.timesteps = sigmas.iter().map(|&s| (s as f32 * n as f32) as f64).collect();
                sigmas
            }
        };
        self.sigmas = sigmas;
        self.sigmas.push(0.0);
        Ok(())
    }

    /// diffusers' `set_timesteps(sigmas=...)`: one noise level per step, shifted (float32
    /// arithmetic) like the schedule's own; the model gets sigma * N; a final 0 is appended.
    fn set_sigmas(&mut self, sigmas: &[f64]) -> Result<()> {
        check_sigmas("FlowMatchEulerDiscreteScheduler", sigmas, 1)?;
        if let Some(s) = sigmas.iter().find(|&&s| s > 1.0) {
            return Err(Error::InvalidArgument(format!("FlowMatchEulerDiscreteScheduler custom sigmas: {s} is above 1")));
        }
        let n = self.config.num_train_timesteps as f32;
        let (shift, shift_m1) = (self.config.shift as f32, (self.config.shift - 1.0) as f32);
        let shifted: Vec<f32> = sigmas.iter().map(|&s| s as f32).map(|s| shift * s / (1.0 + shift_m1 * s)).collect();
        self.timesteps = shifted.iter().map(|&s| (s * n) as f64).collect();
        self.sigmas = shifted.into_iter().map(f64::from).chain([0.0]).collect();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    /// diffusers draws noise at every stochastic step (the last one weighs it by sigma 0).
    /// Flow matching noises along its path: [`Self::scale_noise`].
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step: usize) -> Tensor<4> {
        self.scale_noise(original, noise, step)
    }

    fn needs_noise(&self, _step: usize) -> bool {
        self.config.stochastic_sampling
    }

    fn step(&mut self, velocity: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let (sigma, next) = (self.sigmas[step] as f32, self.sigmas[step + 1] as f32);
        if self.config.stochastic_sampling {
            let noise = noise.unwrap_or_else(|| panic!("FlowMatchEulerDiscrete step {step} needs noise"));
            let x0 = sample.sub(velocity.mul_scalar(sigma));
            x0.mul_scalar(1.0 - next).add(noise.mul_scalar(next))
        } else {
            sample.add(velocity.mul_scalar(next - sigma))
        }
    }

    fn default_steps_and_guidance(&self) -> (usize, f32) {
        if self.config.stochastic_sampling { (4, 1.0) } else { (28, 4.5) }
    }
}
