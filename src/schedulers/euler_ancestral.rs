//! `EulerAncestralDiscreteScheduler` (k-diffusion's `sample_euler_ancestral`, eta 1): Euler's
//! schedule, but each step goes down to sigma_down below the next noise level and adds fresh
//! noise of sigma_up, so that sigma_down^2 + sigma_up^2 = next^2.

use burn::tensor::Tensor;

use crate::config::EulerAncestralDiscreteSchedulerConfig;
use crate::error::{Error, Result};

use super::euler::EulerDiscrete;

#[derive(Debug, Clone)]
pub struct EulerAncestralDiscrete {
    /// The schedule (timesteps, sigmas, init_noise_sigma) is exactly Euler's.
    euler: EulerDiscrete,
}

impl EulerAncestralDiscrete {
    pub fn new(config: &EulerAncestralDiscreteSchedulerConfig) -> Result<Self> {
        Ok(Self { euler: EulerDiscrete::new(&config.euler())? })
    }

    /// diffusers' `set_timesteps` here takes a step count only.
    pub fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        if custom.is_some() {
            return Err(Error::InvalidArgument(
                "custom timesteps are not supported by EulerAncestralDiscreteScheduler".into(),
            ));
        }
        self.euler.set_timesteps(steps, None)
    }

    pub fn timesteps(&self) -> &[f64] {
        self.euler.timesteps()
    }

    /// Euler's `add_noise` (the same sigmas).
    pub fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step: usize) -> Tensor<4> {
        self.euler.add_noise(original, noise, step)
    }

    pub fn sigmas(&self) -> &[f64] {
        self.euler.sigmas()
    }

    pub fn init_noise_sigma(&self) -> f64 {
        self.euler.init_noise_sigma()
    }

    pub fn scale_model_input(&self, sample: Tensor<4>, step: usize) -> Tensor<4> {
        self.euler.scale_model_input(sample, step)
    }

    /// diffusers draws noise at every step (the last one weighs it by sigma_up = 0).
    pub fn needs_noise(&self, _step: usize) -> bool {
        true
    }

    pub fn step(&self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let sigmas = self.euler.sigmas();
        let (sigma, to) = (sigmas[step] as f32, sigmas[step + 1] as f32);
        let noise = noise.unwrap_or_else(|| panic!("EulerAncestralDiscreteScheduler step {step} needs noise"));
        let x0 = self.euler.pred_original_sample(model_output, step, sample.clone());
        let sigma_up = (to * to * (sigma * sigma - to * to) / (sigma * sigma)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let derivative = sample.clone().sub(x0).div_scalar(sigma);
        sample.add(derivative.mul_scalar(sigma_down - sigma)).add(noise.mul_scalar(sigma_up))
    }
}
