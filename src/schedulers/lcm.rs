//! `LCMScheduler`: consistency-model sampling (LCM, and the eps form of DMD2). Each step maps
//! the noisy sample to a clean estimate through the boundary-condition scalings c_skip/c_out,
//! then re-noises it with fresh noise to the next timestep.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

// The choices and checks every scheduler_config.json shares.
use super::config::*;
use super::Step;
use super::betas::{check_steps, custom_integer_timesteps, np_linspace, predicted_x0};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LCMSchedulerConfig {
    /// LCM's defaults are latent diffusion's schedule ([`BetaConfig::SCALED_LINEAR`]).
    #[serde(flatten, deserialize_with = "scaled_linear_over")]
    pub betas: BetaConfig,
    pub original_inference_steps: usize,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub timestep_spacing: TimestepSpacing,
    pub timestep_scaling: f64,
    pub rescale_betas_zero_snr: bool,
}

impl Default for LCMSchedulerConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::SCALED_LINEAR,
            original_inference_steps: 50,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            timestep_spacing: TimestepSpacing::Leading,
            timestep_scaling: 10.0,
            rescale_betas_zero_snr: false,
        }
    }
}

fn scaled_linear_over<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<BetaConfig, D::Error> {
    BetaConfig::deserialize_over(d, BetaConfig::SCALED_LINEAR)
}

impl LCMSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        validate_unthresholded(&self.betas, self.thresholding)
    }
}

#[derive(Debug, Clone)]
pub struct Lcm {
    config: LCMSchedulerConfig,
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<f64>,
}

impl Lcm {
    /// The training noise schedule, per timestep.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// c_skip, c_out of the consistency boundary condition at `t` (sigma_data 0.5), in f32.
    fn scalings(&self, t: f64) -> (f32, f32) {
        let scaled = t as f32 * self.config.timestep_scaling as f32;
        let denom = scaled * scaled + 0.25;
        (0.25 / denom, scaled / denom.sqrt())
    }
}

impl Step for Lcm {
    type Config = LCMSchedulerConfig;
    const CLASS: &'static str = "LCMScheduler";

    fn new(config: &LCMSchedulerConfig) -> Result<Self> {
        let alphas_cumprod = config.betas.alphas_cumprod(config.rescale_betas_zero_snr)?;
        Ok(Self { config: config.clone(), alphas_cumprod, timesteps: vec![] })
    }

    fn vp_alphas_cumprod(&self) -> Option<&[f64]> {
        Some(&self.alphas_cumprod)
    }

    /// `steps` evenly chosen from the distillation schedule (`original_inference_steps`
    /// timesteps k-1, 2k-1, ..., N-1), or the user's own descending integer timesteps.
    fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        let n = self.config.betas.num_train_timesteps;
        if let Some(ts) = custom {
            self.timesteps = custom_integer_timesteps(Self::CLASS, ts, steps, n)?;
            return Ok(());
        }
        check_steps(steps, n)?;
        let original = self.config.original_inference_steps;
        if original == 0 || original > n || steps > original {
            return Err(Error::InvalidArgument(format!(
                "LCMScheduler: {steps} steps need 1 <= steps <= original_inference_steps ({original}) <= num_train_timesteps ({n})"
            )));
        }
        let k = n / original;
        // Distillation timesteps, descending; pick floor(linspace(0, len, steps, endpoint=False)).
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        self.timesteps = np_linspace(0.0, original as f64, steps, false)
            .into_iter()
            .map(|i| origin[i.floor() as usize] as f64)
            .collect();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Every step but the last re-noises its clean estimate.
    fn needs_noise(&self, step: usize) -> bool {
        step + 1 < self.timesteps.len()
    }

    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let t = self.timesteps[step];
        let alpha = self.alphas_cumprod[t as usize] as f32;
        let (c_skip, c_out) = self.scalings(t);
        let c = &self.config;
        let x0 = predicted_x0(c.prediction_type, model_output, sample.clone(), alpha, c.clip_sample.then_some(c.clip_sample_range));
        let denoised = x0.mul_scalar(c_out).add(sample.mul_scalar(c_skip));
        if !self.needs_noise(step) {
            return denoised;
        }
        let noise = noise.unwrap_or_else(|| panic!("LCMScheduler step {step} needs noise"));
        let alpha_prev = self.alphas_cumprod[self.timesteps[step + 1] as usize] as f32;
        denoised.mul_scalar(alpha_prev.sqrt()).add(noise.mul_scalar((1.0 - alpha_prev).sqrt()))
    }

    fn default_steps_and_guidance(&self) -> (usize, f32) {
        (4, 1.0)
    }
}
