//! `DDIMScheduler` with eta = 0: the deterministic DDIM update, x_0 and eps estimated from the
//! prediction, then recombined at the previous timestep's alphas_cumprod.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;

// The choices and checks every scheduler_config.json shares.
use super::config::*;
use super::Step;
use super::betas::{integer_timesteps, predicted_x0, refuse_custom};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DDIMSchedulerConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub clip_sample: bool,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub clip_sample_range: f64,
    pub timestep_spacing: TimestepSpacing,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DDIMSchedulerConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::LINEAR,
            clip_sample: true,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
        }
    }
}

impl DDIMSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        validate_unthresholded(&self.betas, self.thresholding)
    }
}

#[derive(Debug, Clone)]
pub struct Ddim {
    config: DDIMSchedulerConfig,
    alphas_cumprod: Vec<f64>,
    /// alphas_cumprod "before" timestep 0, used by the final step.
    final_alpha_cumprod: f64,
    timesteps: Vec<f64>,
    /// The requested step count; sets the stride back to the previous timestep.
    steps: usize,
}

impl Ddim {
    /// The training noise schedule, per timestep.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }
}

impl Step for Ddim {
    type Config = DDIMSchedulerConfig;
    const CLASS: &'static str = "DDIMScheduler";

    fn new(config: &DDIMSchedulerConfig) -> Result<Self> {
        let alphas_cumprod = config.betas.alphas_cumprod(config.rescale_betas_zero_snr)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self { config: config.clone(), alphas_cumprod, final_alpha_cumprod, timesteps: vec![], steps: 1 })
    }

    fn vp_alphas_cumprod(&self) -> Option<&[f64]> {
        Some(&self.alphas_cumprod)
    }

    fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        refuse_custom(Self::CLASS, custom)?;
        let c = &self.config;
        self.timesteps =
            integer_timesteps(Self::CLASS, c.timestep_spacing, c.betas.num_train_timesteps, steps, c.steps_offset)?;
        self.steps = steps;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> Tensor<4> {
        let t = self.timesteps[step] as i64;
        // diffusers steps back by N / steps whatever the spacing.
        let prev = t - (self.config.betas.num_train_timesteps / self.steps) as i64;
        let alpha = self.alphas_cumprod[t as usize] as f32;
        let alpha_prev = if prev >= 0 { self.alphas_cumprod[prev as usize] } else { self.final_alpha_cumprod } as f32;
        let beta = 1.0 - alpha;
        let (sa, sb) = (alpha.sqrt(), beta.sqrt());
        let c = &self.config;
        let clip = c.clip_sample.then_some(c.clip_sample_range);
        let x0 = predicted_x0(c.prediction_type, model_output.clone(), sample.clone(), alpha, clip);
        // The noise estimate, from the unclipped prediction.
        let eps = match c.prediction_type {
            PredictionType::Epsilon => model_output,
            PredictionType::Sample => sample.sub(model_output.mul_scalar(sa)).div_scalar(sb),
            PredictionType::VPrediction => model_output.mul_scalar(sa).add(sample.mul_scalar(sb)),
        };
        x0.mul_scalar(alpha_prev.sqrt()).add(eps.mul_scalar((1.0 - alpha_prev).sqrt()))
    }

    fn default_steps_and_guidance(&self) -> (usize, f32) {
        (50, 7.5)
    }
}
