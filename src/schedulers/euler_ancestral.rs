//! `EulerAncestralDiscreteScheduler` (k-diffusion's `sample_euler_ancestral`, eta 1): Euler's
//! schedule, but each step goes down to sigma_down below the next noise level and adds fresh
//! noise of sigma_up, so that sigma_down^2 + sigma_up^2 = next^2.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::ensure;
use crate::error::Result;

// The choices and checks every scheduler_config.json shares.
use super::config::*;
use super::Step;
use super::betas::refuse_custom;
use super::euler::{EulerDiscrete, EulerDiscreteSchedulerConfig};

/// `EulerAncestralDiscreteScheduler`: Euler's schedule, with fresh noise added at every step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerAncestralDiscreteSchedulerConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
}

impl Default for EulerAncestralDiscreteSchedulerConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::LINEAR,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }
}

impl EulerAncestralDiscreteSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        self.betas.validate()?;
        ensure(eps_or_v(self.prediction_type), FILE, "prediction_type", self.prediction_type.as_str())
    }

    /// The Euler config with the same schedule (the two share `set_timesteps`).
    pub fn euler(&self) -> EulerDiscreteSchedulerConfig {
        EulerDiscreteSchedulerConfig {
            betas: self.betas.clone(),
            prediction_type: self.prediction_type,
            timestep_spacing: self.timestep_spacing,
            steps_offset: self.steps_offset,
            rescale_betas_zero_snr: self.rescale_betas_zero_snr,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct EulerAncestralDiscrete {
    /// The schedule (timesteps, sigmas, init_noise_sigma) is exactly Euler's.
    euler: EulerDiscrete,
}

impl Step for EulerAncestralDiscrete {
    type Config = EulerAncestralDiscreteSchedulerConfig;
    const CLASS: &'static str = "EulerAncestralDiscreteScheduler";

    fn new(config: &EulerAncestralDiscreteSchedulerConfig) -> Result<Self> {
        Ok(Self { euler: EulerDiscrete::new(&config.euler())? })
    }

    /// diffusers' `set_timesteps` here takes a step count only.
    fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        refuse_custom(Self::CLASS, custom)?;
        self.euler.set_timesteps(steps, None)
    }

    fn timesteps(&self) -> &[f64] {
        self.euler.timesteps()
    }

    /// Euler's `add_noise` (the same sigmas).
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step: usize) -> Tensor<4> {
        self.euler.add_noise(original, noise, step)
    }

    fn sigmas(&self) -> Option<&[f64]> {
        self.euler.sigmas()
    }

    fn init_noise_sigma(&self) -> f64 {
        self.euler.init_noise_sigma()
    }

    fn scale_model_input(&self, sample: Tensor<4>, step: usize) -> Tensor<4> {
        self.euler.scale_model_input(sample, step)
    }

    /// diffusers draws noise at every step (the last one weighs it by sigma_up = 0).
    fn needs_noise(&self, _step: usize) -> bool {
        true
    }

    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let sigmas = &self.euler.sigmas;
        let (sigma, to) = (sigmas[step] as f32, sigmas[step + 1] as f32);
        let noise = noise.unwrap_or_else(|| panic!("EulerAncestralDiscreteScheduler step {step} needs noise"));
        let x0 = self.euler.pred_original_sample(model_output, step, sample.clone());
        let sigma_up = (to * to * (sigma * sigma - to * to) / (sigma * sigma)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let derivative = sample.clone().sub(x0).div_scalar(sigma);
        sample.add(derivative.mul_scalar(sigma_down - sigma)).add(noise.mul_scalar(sigma_up))
    }

    fn default_steps_and_guidance(&self) -> (usize, f32) {
        (25, 7.5)
    }
}
