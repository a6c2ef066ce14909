//! `DPMSolverMultistepScheduler`: DPM-Solver++ (Lu et al. 2022,
//! https://huggingface.co/papers/2211.01095) and its SDE variant, multistep of order 1–3.
//!
//! Works in the variance-preserving form x_t = alpha_t x_0 + sigma_t eps with the log-SNR
//! lambda_t = ln(alpha_t / sigma_t) as the integration variable; the model output is turned
//! into an x_0 estimate, and each step extrapolates from the last `solver_order` of them.
//! The state (past estimates) lives here, so steps must be taken in order, once each.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::{choice, ensure};
use crate::error::{Error, Result};

// The choices and checks every scheduler_config.json shares.
use super::config::*;
use super::Step;
use super::betas::{check_in_range, check_steps, custom_integer_timesteps, f32r, np_arange, np_linspace, sigma_to_t};

choice! {
    /// DPM-Solver's algorithm (the deprecated non-++ forms are refused).
    AlgorithmType for "algorithm_type" { DpmSolverPp = "dpmsolver++", SdeDpmSolverPp = "sde-dpmsolver++", }
}
choice! {
    /// DPM-Solver's second-order correction.
    SolverType for "solver_type" { Midpoint = "midpoint", Heun = "heun", }
}

/// `DPMSolverMultistepScheduler`: DPM-Solver++ (and its SDE variant) of order 1–3 in the
/// log-SNR variable, with Karras sigmas optionally.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DPMSolverMultistepSchedulerConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub algorithm_type: AlgorithmType,
    pub solver_type: SolverType,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_lu_lambdas: bool,
    pub use_flow_sigmas: bool,
    pub final_sigmas_type: FinalSigmasType,
    /// Written by Python's json as the bare token `-Infinity` (its default); see `from_json`.
    #[serde(deserialize_with = "number_or_infinity")]
    pub lambda_min_clipped: f64,
    pub variance_type: Option<String>,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
    pub use_dynamic_shifting: bool,
}

impl Default for DPMSolverMultistepSchedulerConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::LINEAR,
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            algorithm_type: AlgorithmType::DpmSolverPp,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            final_sigmas_type: FinalSigmasType::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            variance_type: None,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            use_dynamic_shifting: false,
        }
    }
}

impl DPMSolverMultistepSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        self.betas.validate()?;
        ensure((1..=3).contains(&self.solver_order), FILE, "solver_order", self.solver_order)?;
        ensure(!self.thresholding, FILE, "thresholding", self.thresholding)?;
        ensure(!self.use_exponential_sigmas, FILE, "use_exponential_sigmas", self.use_exponential_sigmas)?;
        ensure(!self.use_beta_sigmas, FILE, "use_beta_sigmas", self.use_beta_sigmas)?;
        ensure(!self.use_lu_lambdas, FILE, "use_lu_lambdas", self.use_lu_lambdas)?;
        ensure(!self.use_flow_sigmas, FILE, "use_flow_sigmas", self.use_flow_sigmas)?;
        ensure(!self.use_dynamic_shifting, FILE, "use_dynamic_shifting", self.use_dynamic_shifting)?;
        ensure(!self.lambda_min_clipped.is_nan(), FILE, "lambda_min_clipped", self.lambda_min_clipped)?;
        ensure(self.variance_type.is_none(), FILE, "variance_type", &self.variance_type)
    }
}

#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    config: DPMSolverMultistepSchedulerConfig,
    alphas_cumprod: Vec<f64>,
    /// sqrt((1 - alphas_cumprod) / alphas_cumprod) per training timestep, in f32.
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// Per step, then the final one (`final_sigmas_type`).
    sigmas: Vec<f64>,
    /// x_0 estimates of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Tensor<4>>,
    lower_order_nums: usize,
    step_index: usize,
}

/// alpha_t, sigma_t (VP form) of a noise level sigma = sigma_t / alpha_t, in f32 like diffusers.
fn alpha_sigma(sigma: f64) -> (f32, f32) {
    let s = sigma as f32;
    let alpha = 1.0 / (s * s + 1.0).sqrt();
    (alpha, s * alpha)
}

/// lambda = ln(alpha_t) - ln(sigma_t): +inf at sigma 0.
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmSolverMultistep {
    /// The last usable training timestep + 1: diffusers clips the schedule where lambda falls
    /// below `lambda_min_clipped` (for cosine schedules), counting from the noisy end.
    fn last_timestep(&self) -> usize {
        let n = self.config.betas.num_train_timesteps;
        let clipped = self
            .alphas_cumprod
            .iter()
            .rev()
            .filter(|&&a| {
                let a = a as f32;
                (a.sqrt().ln() - (1.0 - a).sqrt().ln()) < self.config.lambda_min_clipped as f32
            })
            .count();
        n - clipped
    }

    /// Karras et al. (2022) eq. 5: rho = 7 spacing between the training schedule's ends, and
    /// the (rounded, except for cosine schedules) timesteps of those noise levels.
    fn karras(&self, steps: usize) -> (Vec<f64>, Vec<f64>) {
        let rho = 7.0;
        let (sigma_min, sigma_max) = (self.train_sigmas[0] as f64, *self.train_sigmas.last().unwrap() as f64);
        let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
        let sigmas: Vec<f64> =
            np_linspace(0.0, 1.0, steps, true).iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect();
        let log_sigmas: Vec<f32> = self.train_sigmas.iter().map(|s| s.ln()).collect();
        let round = self.config.betas.beta_schedule != BetaSchedule::SquaredcosCapV2;
        let timesteps = sigmas
            .iter()
            .map(|&s| {
                let t = sigma_to_t(s, &log_sigmas, false);
                // diffusers rounds, then casts to int64 (truncating).
                if round { t.round_ties_even() } else { t.trunc() }
            })
            .collect();
        (timesteps, sigmas.into_iter().map(f32r).collect())
    }

    fn is_sde(&self) -> bool {
        self.config.algorithm_type == AlgorithmType::SdeDpmSolverPp
    }

    /// The model output as an x_0 estimate (DPM-Solver++ integrates in x_0).
    fn convert_model_output(&self, model_output: Tensor<4>, sample: Tensor<4>) -> Tensor<4> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[self.step_index]);
        match self.config.prediction_type {
            PredictionType::Epsilon => sample.sub(model_output.mul_scalar(sigma_t)).div_scalar(alpha_t),
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => sample.mul_scalar(alpha_t).sub(model_output.mul_scalar(sigma_t)),
        }
    }

    /// (alpha_t, sigma_t, lambda_t) at `sigmas[i]`.
    fn at(&self, i: usize) -> (f32, f32, f32) {
        let (a, s) = alpha_sigma(self.sigmas[i]);
        (a, s, lambda(a, s))
    }

    /// The last `k` x_0 estimates, newest first (m0, m1, ...).
    fn m(&self, k: usize) -> Tensor<4> {
        self.model_outputs[self.model_outputs.len() - 1 - k].clone()
    }

    /// The stochastic term sigma_t sqrt(1 - e^{-2h}) z of the SDE variant.
    fn sde_noise(&self, x: Tensor<4>, noise: Option<Tensor<4>>, sigma_t: f32, h: f32) -> Tensor<4> {
        match noise {
            Some(z) => x.add(z.mul_scalar(sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())),
            None => x,
        }
    }

    /// DPM-Solver++(1): a DDIM step in x_0.
    fn first_order_update(&self, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let i = self.step_index;
        let (alpha_t, sigma_t, lambda_t) = self.at(i + 1);
        let (_, sigma_s, lambda_s) = self.at(i);
        let h = lambda_t - lambda_s;
        let m0 = self.m(0);
        if self.is_sde() {
            let x = sample
                .mul_scalar(sigma_t / sigma_s * (-h).exp())
                .add(m0.mul_scalar(alpha_t * (1.0 - (-2.0 * h).exp())));
            self.sde_noise(x, noise, sigma_t, h)
        } else {
            sample.mul_scalar(sigma_t / sigma_s).sub(m0.mul_scalar(alpha_t * ((-h).exp() - 1.0)))
        }
    }

    /// Multistep DPM-Solver++(2M): a first difference of the last two x_0 estimates.
    fn second_order_update(&self, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let i = self.step_index;
        let (alpha_t, sigma_t, lambda_t) = self.at(i + 1);
        let (_, sigma_s0, lambda_s0) = self.at(i);
        let (_, _, lambda_s1) = self.at(i - 1);
        let (m0, m1) = (self.m(0), self.m(1));
        let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let d1 = m0.clone().sub(m1).mul_scalar(1.0 / r0);
        let heun = self.config.solver_type == SolverType::Heun;
        if self.is_sde() {
            let e = 1.0 - (-2.0 * h).exp();
            let d1_coeff = if heun { alpha_t * (e / (-2.0 * h) + 1.0) } else { 0.5 * (alpha_t * e) };
            let x = sample
                .mul_scalar(sigma_t / sigma_s0 * (-h).exp())
                .add(m0.mul_scalar(alpha_t * e))
                .add(d1.mul_scalar(d1_coeff));
            self.sde_noise(x, noise, sigma_t, h)
        } else {
            let e = (-h).exp() - 1.0;
            let x = sample.mul_scalar(sigma_t / sigma_s0).sub(m0.mul_scalar(alpha_t * e));
            if heun { x.add(d1.mul_scalar(alpha_t * (e / h + 1.0))) } else { x.sub(d1.mul_scalar(0.5 * (alpha_t * e))) }
        }
    }

    /// Multistep DPM-Solver++(3M): first and second differences of the last three estimates.
    fn third_order_update(&self, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let i = self.step_index;
        let (alpha_t, sigma_t, lambda_t) = self.at(i + 1);
        let (_, sigma_s0, lambda_s0) = self.at(i);
        let (_, _, lambda_s1) = self.at(i - 1);
        let (_, _, lambda_s2) = self.at(i - 2);
        let (m0, m1, m2) = (self.m(0), self.m(1), self.m(2));
        let (h, h_0, h_1) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = m0.clone().sub(m1.clone()).mul_scalar(1.0 / r0);
        let d1_1 = m1.sub(m2).mul_scalar(1.0 / r1);
        let d1 = d1_0.clone().add(d1_0.clone().sub(d1_1.clone()).mul_scalar(r0 / (r0 + r1)));
        let d2 = d1_0.sub(d1_1).mul_scalar(1.0 / (r0 + r1));
        if self.is_sde() {
            let e = 1.0 - (-2.0 * h).exp();
            let x = sample
                .mul_scalar(sigma_t / sigma_s0 * (-h).exp())
                .add(m0.mul_scalar(alpha_t * e))
                .add(d1.mul_scalar(alpha_t * (e / (-2.0 * h) + 1.0)))
                .add(d2.mul_scalar(alpha_t * ((1.0 - (-2.0 * h).exp() - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5)));
            self.sde_noise(x, noise, sigma_t, h)
        } else {
            let e = (-h).exp() - 1.0;
            sample
                .mul_scalar(sigma_t / sigma_s0)
                .sub(m0.mul_scalar(alpha_t * e))
                .add(d1.mul_scalar(alpha_t * (e / h + 1.0)))
                .sub(d2.mul_scalar(alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5)))
        }
    }
}

impl Step for DpmSolverMultistep {
    type Config = DPMSolverMultistepSchedulerConfig;
    const CLASS: &'static str = "DPMSolverMultistepScheduler";

    fn new(config: &DPMSolverMultistepSchedulerConfig) -> Result<Self> {
        let alphas_cumprod = config.betas.alphas_cumprod_for_sigmas(config.rescale_betas_zero_snr)?;
        let train_sigmas = alphas_cumprod.iter().map(|&a| ((1.0 - a as f32) / a as f32).sqrt()).collect();
        Ok(Self {
            config: config.clone(),
            alphas_cumprod,
            train_sigmas,
            timesteps: vec![],
            sigmas: vec![],
            model_outputs: vec![],
            lower_order_nums: 0,
            step_index: 0,
        })
    }

    /// Timesteps per `timestep_spacing` (integers; n + 1 points without the final 0 for
    /// linspace/leading), or per Karras' rho = 7 noise levels mapped back to timesteps, or the
    /// user's integer timesteps (not with Karras sigmas, as in diffusers).
    fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        let c = &self.config;
        let n = c.betas.num_train_timesteps;
        let timesteps: Vec<f64> = match custom {
            Some(_) if c.use_karras_sigmas => {
                return Err(Error::InvalidArgument(
                    "DPMSolverMultistepScheduler: custom timesteps cannot be used with use_karras_sigmas".into(),
                ));
            }
            Some(ts) => custom_integer_timesteps(Self::CLASS, ts, steps, n)?,
            None => {
                check_steps(steps, n)?;
                let last = self.last_timestep();
                match c.timestep_spacing {
                    TimestepSpacing::Linspace => {
                        let mut ts: Vec<f64> =
                            np_linspace(0.0, last as f64 - 1.0, steps + 1, true).iter().map(|t| t.round_ties_even()).collect();
                        ts.reverse();
                        ts.pop();
                        ts
                    }
                    TimestepSpacing::Leading => {
                        let ratio = last / (steps + 1);
                        (1..=steps).rev().map(|i| (i * ratio + c.steps_offset) as f64).collect()
                    }
                    TimestepSpacing::Trailing => np_arange(last as f64, 0.0, -(n as f64 / steps as f64))
                        .into_iter()
                        .map(|t| t.round_ties_even() - 1.0)
                        .collect(),
                }
            }
        };
        check_in_range(Self::CLASS, &timesteps, steps, c.steps_offset, n)?;
        let (timesteps, mut sigmas) = if c.use_karras_sigmas {
            self.karras(steps)
        } else {
            let sigmas = timesteps.iter().map(|&t| self.train_sigmas[t as usize] as f64).collect();
            (timesteps, sigmas)
        };
        sigmas.push(match c.final_sigmas_type {
            FinalSigmasType::SigmaMin => self.train_sigmas[0] as f64,
            FinalSigmasType::Zero => 0.0,
        });
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.model_outputs.clear();
        self.lower_order_nums = 0;
        self.step_index = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    /// diffusers' `set_begin_index`: the first step taken is `begin` (img2img), a first-order
    /// one since no past estimates exist.
    fn set_begin_index(&mut self, begin: usize) {
        self.step_index = begin;
    }

    /// diffusers' `add_noise` with `begin_index` set: `alpha_t x_0 + sigma_t noise` at the
    /// step's noise level (VP form).
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step]);
        original.mul_scalar(alpha_t).add(noise.mul_scalar(sigma_t))
    }

    /// The SDE variant draws noise at every step.
    fn needs_noise(&self, _step: usize) -> bool {
        self.is_sde()
    }

    /// # Panics
    /// If steps are not taken in order from 0, or the SDE variant gets no noise.
    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        assert_eq!(step, self.step_index, "DPMSolverMultistepScheduler steps must be taken in order");
        let c = &self.config;
        let len = self.timesteps.len();
        // Lower orders at the end keep few-step runs stable (and the last step lands on sigma 0).
        let lower_order_final = step == len - 1
            && (c.euler_at_final || (c.lower_order_final && len < 15) || c.final_sigmas_type == FinalSigmasType::Zero);
        let lower_order_second = step + 2 == len && c.lower_order_final && len < 15;
        let x0 = self.convert_model_output(model_output, sample.clone());
        if self.model_outputs.len() == c.solver_order {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(x0);
        let noise = if self.is_sde() {
            Some(noise.unwrap_or_else(|| panic!("DPMSolverMultistepScheduler (SDE) step {step} needs noise")))
        } else {
            None
        };
        let order = if c.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if c.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        let out = match order {
            1 => self.first_order_update(sample, noise),
            2 => self.second_order_update(sample, noise),
            _ => self.third_order_update(sample, noise),
        };
        if self.lower_order_nums < self.config.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index += 1;
        out
    }

    fn default_steps_and_guidance(&self) -> (usize, f32) {
        (25, 7.5)
    }
}
