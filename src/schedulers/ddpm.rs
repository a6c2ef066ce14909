//! `DDPMScheduler`: ancestral sampling of the DDPM posterior q(x_{t-1} | x_t, x_0) (Ho et al.
//! 2020, eqs. 6–7), x_0 estimated from the prediction; fresh noise at every step but the last.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::choice;
use crate::error::Result;

// The choices and checks every scheduler_config.json shares.
use super::config::*;
use super::Step;
use super::betas::{custom_integer_timesteps, integer_timesteps, predicted_x0};

choice! {
    /// DDPM's posterior variance (learned variances need a model that predicts them).
    VarianceType for "variance_type" { FixedSmall = "fixed_small", FixedSmallLog = "fixed_small_log", FixedLarge = "fixed_large", }
}
/// `DDPMScheduler`: ancestral sampling of the original DDPM posterior.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DDPMSchedulerConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub variance_type: VarianceType,
    pub clip_sample: bool,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub clip_sample_range: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DDPMSchedulerConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::LINEAR,
            variance_type: VarianceType::FixedSmall,
            clip_sample: true,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }
}

impl DDPMSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        validate_unthresholded(&self.betas, self.thresholding)
    }
}

#[derive(Debug, Clone)]
pub struct Ddpm {
    config: DDPMSchedulerConfig,
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<f64>,
}

impl Ddpm {
    /// alphas_cumprod at the step's timestep and at the next one of the schedule (1 past the end).
    fn alphas(&self, step: usize) -> (f32, f32) {
        let at = self.alphas_cumprod[self.timesteps[step] as usize] as f32;
        let prev = self.timesteps.get(step + 1).map_or(1.0, |&t| self.alphas_cumprod[t as usize] as f32);
        (at, prev)
    }
}

impl Step for Ddpm {
    type Config = DDPMSchedulerConfig;
    const CLASS: &'static str = "DDPMScheduler";

    fn new(config: &DDPMSchedulerConfig) -> Result<Self> {
        let alphas_cumprod = config.betas.alphas_cumprod(config.rescale_betas_zero_snr)?;
        Ok(Self { config: config.clone(), alphas_cumprod, timesteps: vec![] })
    }

    fn vp_alphas_cumprod(&self) -> Option<&[f64]> {
        Some(&self.alphas_cumprod)
    }

    /// Timesteps per `timestep_spacing` (integers), or the user's strictly descending ones.
    fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        let c = &self.config;
        let n = c.betas.num_train_timesteps;
        self.timesteps = match custom {
            Some(ts) => custom_integer_timesteps(Self::CLASS, ts, steps, n)?,
            None => integer_timesteps(Self::CLASS, c.timestep_spacing, n, steps, c.steps_offset)?,
        };
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// diffusers adds noise while t > 0.
    fn needs_noise(&self, step: usize) -> bool {
        self.timesteps.get(step).is_some_and(|&t| t > 0.0)
    }

    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let (alpha_prod_t, alpha_prod_t_prev) = self.alphas(step);
        let (beta_prod_t, beta_prod_t_prev) = (1.0 - alpha_prod_t, 1.0 - alpha_prod_t_prev);
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;
        let c = &self.config;
        let clip = c.clip_sample.then_some(c.clip_sample_range);
        let x0 = predicted_x0(c.prediction_type, model_output, sample.clone(), alpha_prod_t, clip);
        // The posterior mean: a mix of the x_0 estimate and the current sample (eq. 7).
        let x0_coeff = alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t;
        let sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let mean = x0.mul_scalar(x0_coeff).add(sample.mul_scalar(sample_coeff));
        if !self.needs_noise(step) {
            return mean;
        }
        let noise = noise.unwrap_or_else(|| panic!("DDPMScheduler step {step} needs noise"));
        let variance = ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
        let std = match self.config.variance_type {
            VarianceType::FixedSmallLog => (0.5 * variance.ln()).exp(),
            VarianceType::FixedLarge => current_beta_t.sqrt(),
            VarianceType::FixedSmall => variance.sqrt(),
        };
        mean.add(noise.mul_scalar(std))
    }

    fn default_steps_and_guidance(&self) -> (usize, f32) {
        (50, 7.5)
    }
}
