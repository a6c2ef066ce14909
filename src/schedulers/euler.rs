//! `EulerDiscreteScheduler` (k-diffusion's Euler sampler, no churn): works in sigma space,
//! x = x_0 + sigma eps, so the model input is scaled by 1/sqrt(sigma^2 + 1) to match the
//! variance-preserving form the model was trained on.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::{choice, ensure};
use crate::error::Result;

// The choices and checks every scheduler_config.json shares.
use super::config::*;
use super::Step;
use super::betas::{check_custom, check_sigmas, check_steps, f32r, sigma_to_t, spaced_timesteps};

choice! {
    /// How Euler interpolates its sigma table (`log_linear` is not implemented).
    InterpolationType for "interpolation_type" { Linear = "linear", }
}
choice! {
    /// Euler's model timesteps: the discrete table's (`continuous` is for EDM-style models).
    TimestepType for "timestep_type" { Discrete = "discrete", }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerDiscreteSchedulerConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    pub interpolation_type: InterpolationType,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub timestep_spacing: TimestepSpacing,
    pub timestep_type: TimestepType,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
    pub final_sigmas_type: FinalSigmasType,
}

impl Default for EulerDiscreteSchedulerConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::LINEAR,
            prediction_type: PredictionType::Epsilon,
            interpolation_type: InterpolationType::Linear,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            timestep_spacing: TimestepSpacing::Linspace,
            timestep_type: TimestepType::Discrete,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            final_sigmas_type: FinalSigmasType::Zero,
        }
    }
}

impl EulerDiscreteSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        self.betas.validate()?;
        ensure(eps_or_v(self.prediction_type), FILE, "prediction_type", self.prediction_type.as_str())?;
        ensure(!self.use_karras_sigmas, FILE, "use_karras_sigmas", self.use_karras_sigmas)?;
        ensure(!self.use_exponential_sigmas, FILE, "use_exponential_sigmas", self.use_exponential_sigmas)?;
        ensure(!self.use_beta_sigmas, FILE, "use_beta_sigmas", self.use_beta_sigmas)?;
        ensure(self.final_sigmas_type == FinalSigmasType::Zero, FILE, "final_sigmas_type", self.final_sigmas_type.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct EulerDiscrete {
    config: EulerDiscreteSchedulerConfig,
    /// sigma per training timestep, sqrt((1 - alphas_cumprod) / alphas_cumprod) in f32.
    train_sigmas: Vec<f64>,
    /// Per step, then a final 0.
    pub(super) sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
}

impl EulerDiscrete {
    /// linspace/trailing schedules start at the top sigma; "leading" starts below it, where
    /// diffusers scales the initial noise to the full variance sqrt(sigma^2 + 1).
    fn init_sigma_from_max(&self, max: f64) -> f64 {
        match self.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            _ => ((max as f32) * (max as f32) + 1.0).sqrt() as f64,
        }
    }

    /// `np.interp(t, arange(N), train_sigmas)`: linear between neighbouring training sigmas,
    /// clamped at both ends.
    fn interp_sigma(&self, t: f64) -> f64 {
        let s = &self.train_sigmas;
        let last = s.len() - 1;
        if t <= 0.0 {
            return s[0];
        }
        if t >= last as f64 {
            return s[last];
        }
        let j = t.floor() as usize;
        if t == j as f64 {
            return s[j];
        }
        (s[j + 1] - s[j]) * (t - j as f64) + s[j]
    }

    /// x_0 predicted at `step` (in sigma space, x = x_0 + sigma eps).
    pub(crate) fn pred_original_sample(&self, model_output: Tensor<4>, step: usize, sample: Tensor<4>) -> Tensor<4> {
        let sigma = self.sigmas[step] as f32;
        match self.config.prediction_type {
            PredictionType::Epsilon => sample.sub(model_output.mul_scalar(sigma)),
            PredictionType::VPrediction => {
                let var = sigma * sigma + 1.0;
                model_output.mul_scalar(-sigma / var.sqrt()).add(sample.div_scalar(var))
            }
            PredictionType::Sample => unreachable!("rejected by validate()"),
        }
    }
}

impl Step for EulerDiscrete {
    type Config = EulerDiscreteSchedulerConfig;
    const CLASS: &'static str = "EulerDiscreteScheduler";

    fn new(config: &EulerDiscreteSchedulerConfig) -> Result<Self> {
        let alphas_cumprod = config.betas.alphas_cumprod_for_sigmas(config.rescale_betas_zero_snr)?;
        let train_sigmas: Vec<f64> =
            alphas_cumprod.iter().map(|&a| ((1.0 - a as f32) / a as f32).sqrt() as f64).collect();
        let mut me =
            Self { config: config.clone(), train_sigmas, sigmas: vec![], timesteps: vec![], init_noise_sigma: 1.0 };
        let max = me.train_sigmas.iter().copied().fold(0.0, f64::max);
        me.init_noise_sigma = me.init_sigma_from_max(max);
        Ok(me)
    }

    /// Timesteps per `timestep_spacing`, or the user's (fractional allowed); sigmas are
    /// interpolated from the training sigmas at them.
    fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        let c = &self.config;
        let n = c.betas.num_train_timesteps;
        let timesteps = match custom {
            Some(ts) => {
                check_custom("EulerDiscreteScheduler", ts, steps, (n - 1) as f64, false)?;
                ts.iter().map(|&t| f32r(t)).collect()
            }
            None => {
                check_steps(steps, n)?;
                spaced_timesteps(c.timestep_spacing, n, steps, c.steps_offset, false)
            }
        };
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| f32r(self.interp_sigma(t))).collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(0.0, f64::max);
        self.init_noise_sigma = self.init_sigma_from_max(max);
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        Ok(())
    }

    /// diffusers' `set_timesteps(sigmas=...)`: the user's noise levels, the final one included
    /// (so `sigmas.len() - 1` steps); timesteps are interpolated back from them.
    fn set_sigmas(&mut self, sigmas: &[f64]) -> Result<()> {
        check_sigmas("EulerDiscreteScheduler", sigmas, 2)?;
        let log_sigmas: Vec<f32> = self.train_sigmas.iter().map(|&s| (s as f32).ln()).collect();
        let sigmas: Vec<f64> = sigmas.iter().map(|&s| f32r(s)).collect();
        self.timesteps =
            sigmas[..sigmas.len() - 1].iter().map(|&s| f32r(sigma_to_t(s, &log_sigmas, true))).collect();
        let max = sigmas.iter().copied().fold(0.0, f64::max);
        self.init_noise_sigma = self.init_sigma_from_max(max);
        self.sigmas = sigmas;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// diffusers' `add_noise` with `begin_index` set: `x_0 + sigmas[step] noise` (sigma space).
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step: usize) -> Tensor<4> {
        original.add(noise.mul_scalar(self.sigmas[step] as f32))
    }

    fn scale_model_input(&self, sample: Tensor<4>, step: usize) -> Tensor<4> {
        let sigma = self.sigmas[step] as f32;
        sample.div_scalar((sigma * sigma + 1.0).sqrt())
    }

    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> Tensor<4> {
        let (sigma, next) = (self.sigmas[step] as f32, self.sigmas[step + 1] as f32);
        // x_0 from the prediction, then the ODE derivative (x - x_0) / sigma, as diffusers does.
        let x0 = self.pred_original_sample(model_output, step, sample.clone());
        let derivative = sample.clone().sub(x0).div_scalar(sigma);
        sample.add(derivative.mul_scalar(next - sigma))
    }

    fn default_steps_and_guidance(&self) -> (usize, f32) {
        (25, 7.5)
    }
}
