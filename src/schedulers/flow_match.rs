//! `FlowMatchEulerDiscreteScheduler`: rectified flow, x_t = (1 - sigma) x_0 + sigma noise, the
//! model predicts the velocity v = noise - x_0. Euler steps along v, or (`stochastic_sampling`,
//! the DMD2-style few-step mode) predicts x_0 and re-noises it to the next sigma.

use burn::tensor::Tensor;

use crate::config::FlowMatchEulerDiscreteSchedulerConfig;
use crate::error::{Error, Result};

use super::betas::{check_custom, check_sigmas, check_steps, f32r, np_linspace};

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
    pub fn new(config: &FlowMatchEulerDiscreteSchedulerConfig) -> Self {
        let n = config.num_train_timesteps.max(1);
        // diffusers: float32 t = N..1, sigma = t / N, shifted in float32.
        let (shift, shift_m1) = (config.shift as f32, (config.shift - 1.0) as f32);
        let train_sigma = |t: usize| {
            let s = t as f32 / n as f32;
            (shift * s / (1.0 + shift_m1 * s)) as f64
        };
        Self {
            config: config.clone(),
            sigmas: vec![],
            timesteps: vec![],
            sigma_max: train_sigma(n),
            sigma_min: train_sigma(1),
        }
    }

    /// Evenly spaced timesteps between the training schedule's ends, shifted (again, as
    /// diffusers does: the ends come from the already shifted training sigmas). `custom`
    /// timesteps reach the model as given while their sigmas t/N are shifted, as in diffusers.
    pub fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
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
    pub fn set_sigmas(&mut self, sigmas: &[f64]) -> Result<()> {
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

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// diffusers' `scale_noise` with `begin_index` set: the straight path
    /// `sigmas[step] noise + (1 - sigmas[step]) x_0`.
    pub fn scale_noise(&self, original: Tensor<4>, noise: Tensor<4>, step: usize) -> Tensor<4> {
        let sigma = self.sigmas[step] as f32;
        noise.mul_scalar(sigma).add(original.mul_scalar(1.0 - sigma))
    }

    /// diffusers draws noise at every stochastic step (the last one weighs it by sigma 0).
    pub fn needs_noise(&self, _step: usize) -> bool {
        self.config.stochastic_sampling
    }

    pub fn step(&self, velocity: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let (sigma, next) = (self.sigmas[step] as f32, self.sigmas[step + 1] as f32);
        if self.config.stochastic_sampling {
            let noise = noise.unwrap_or_else(|| panic!("FlowMatchEulerDiscrete step {step} needs noise"));
            let x0 = sample.sub(velocity.mul_scalar(sigma));
            x0.mul_scalar(1.0 - next).add(noise.mul_scalar(next))
        } else {
            sample.add(velocity.mul_scalar(next - sigma))
        }
    }

    pub fn default_steps_and_guidance(&self) -> (usize, f32) {
        if self.config.stochastic_sampling { (4, 1.0) } else { (28, 4.5) }
    }
}
