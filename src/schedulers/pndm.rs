//! `PNDMScheduler`: pseudo numerical methods for diffusion models (Liu et al. 2022,
//! https://huggingface.co/papers/2202.09778). The transfer `_get_prev_sample` (eq. 9) moves a
//! sample between two timesteps given a noise estimate; PLMS combines the last four estimates
//! like a linear multistep method. Without `skip_prk_steps` it first runs the paper's
//! Runge–Kutta warm-up (4 model evaluations per step for the 3 first steps).
//!
//! The state (past estimates) lives here, so steps must be taken in order, once each.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::ensure;
use crate::error::{Error, Result};

// The choices and checks every scheduler_config.json shares.
use super::config::*;
use super::Step;
use super::betas::{integer_timesteps, refuse_custom};

/// `PNDMScheduler`: PLMS (and the PRK warm-up unless `skip_prk_steps`), as SD 1.x repos ship it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PNDMSchedulerConfig {
    #[serde(flatten)]
    pub betas: BetaConfig,
    pub skip_prk_steps: bool,
    pub set_alpha_to_one: bool,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl Default for PNDMSchedulerConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::LINEAR,
            skip_prk_steps: false,
            set_alpha_to_one: false,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
        }
    }
}

impl PNDMSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        self.betas.validate()?;
        ensure(eps_or_v(self.prediction_type), FILE, "prediction_type", self.prediction_type.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Pndm {
    config: PNDMSchedulerConfig,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    /// The requested step count; sets the stride N / steps between transfers.
    steps: usize,
    /// PRK timesteps (empty with `skip_prk_steps`) then PLMS ones, what the model receives.
    prk_len: usize,
    timesteps: Vec<f64>,
    /// The running state of diffusers' scheduler: steps taken, past noise estimates, the
    /// sample a PRK group (or PLMS' first two steps) starts from, the PRK sum of estimates.
    counter: usize,
    /// Index of the first step taken (img2img skips the noisiest ones); `counter` counts from it.
    begin: usize,
    ets: Vec<Tensor<4>>,
    cur_sample: Option<Tensor<4>>,
    cur_model_output: Option<Tensor<4>>,
}

const PNDM_ORDER: usize = 4;

impl Pndm {
    /// Runge–Kutta: four evaluations per transfer (at t, twice at the midpoint, at t - delta),
    /// combined with weights 1/6, 1/3, 1/3, 1/6.
    fn step_prk(&mut self, model_output: Tensor<4>, timestep: i64, sample: Tensor<4>) -> Tensor<4> {
        let half = (self.config.betas.num_train_timesteps / self.steps / 2) as i64;
        let diff_to_prev = if self.counter % 2 == 1 { 0 } else { half };
        let prev_timestep = timestep - diff_to_prev;
        let timestep = self.timesteps[self.counter / 4 * 4] as i64;
        let add = |acc: Option<Tensor<4>>, x: Tensor<4>| match acc {
            Some(a) => a.add(x),
            None => x,
        };
        let model_output = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(add(self.cur_model_output.take(), model_output.clone().mul_scalar(1.0 / 6.0)));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output
            }
            1 | 2 => {
                self.cur_model_output = Some(add(self.cur_model_output.take(), model_output.clone().mul_scalar(1.0 / 3.0)));
                model_output
            }
            _ => add(self.cur_model_output.take(), model_output.mul_scalar(1.0 / 6.0)),
        };
        let cur_sample = self.cur_sample.clone().unwrap_or(sample);
        self.prev_sample(cur_sample, timestep, prev_timestep, model_output)
    }

    /// Linear multistep on the last (up to) four estimates; the first two steps bootstrap it
    /// with an Euler step and a Heun-like correction from the same starting sample.
    fn step_plms(&mut self, model_output: Tensor<4>, timestep: i64, sample: Tensor<4>) -> Tensor<4> {
        let stride = (self.config.betas.num_train_timesteps / self.steps) as i64;
        let (mut timestep, mut prev_timestep) = (timestep, timestep - stride);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            prev_timestep = timestep;
            timestep += stride;
        }
        let e = &self.ets;
        let k = e.len();
        let (sample, model_output) = match (k, self.counter) {
            (1, 0) => {
                self.cur_sample = Some(sample.clone());
                (sample, model_output)
            }
            (1, 1) => {
                let start = self.cur_sample.take().expect("PLMS step 0 stored its sample");
                (start, model_output.add(e[0].clone()).div_scalar(2.0))
            }
            (2, _) => (sample, e[1].clone().mul_scalar(3.0).sub(e[0].clone()).div_scalar(2.0)),
            (3, _) => (
                sample,
                e[2].clone().mul_scalar(23.0).sub(e[1].clone().mul_scalar(16.0)).add(e[0].clone().mul_scalar(5.0)).div_scalar(12.0),
            ),
            _ => (
                sample,
                e[3].clone()
                    .mul_scalar(55.0)
                    .sub(e[2].clone().mul_scalar(59.0))
                    .add(e[1].clone().mul_scalar(37.0))
                    .sub(e[0].clone().mul_scalar(9.0))
                    .mul_scalar(1.0 / 24.0),
            ),
        };
        self.prev_sample(sample, timestep, prev_timestep, model_output)
    }

    /// Eq. (9): x_{t-delta} from x_t and the noise estimate (v-predictions turned into one).
    fn prev_sample(&self, sample: Tensor<4>, timestep: i64, prev_timestep: i64, model_output: Tensor<4>) -> Tensor<4> {
        let alpha_prod_t = self.alphas_cumprod[timestep as usize] as f32;
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alphas_cumprod[prev_timestep as usize]
        } else {
            self.final_alpha_cumprod
        } as f32;
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let model_output = match self.config.prediction_type {
            PredictionType::VPrediction => {
                model_output.mul_scalar(alpha_prod_t.sqrt()).add(sample.clone().mul_scalar(beta_prod_t.sqrt()))
            }
            _ => model_output,
        };
        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        let denom = alpha_prod_t * beta_prod_t_prev.sqrt() + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        sample.mul_scalar(sample_coeff).sub(model_output.mul_scalar(alpha_prod_t_prev - alpha_prod_t).div_scalar(denom))
    }
}

impl Step for Pndm {
    type Config = PNDMSchedulerConfig;
    const CLASS: &'static str = "PNDMScheduler";

    fn new(config: &PNDMSchedulerConfig) -> Result<Self> {
        let alphas_cumprod = config.betas.alphas_cumprod(false)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self {
            config: config.clone(),
            alphas_cumprod,
            final_alpha_cumprod,
            steps: 1,
            prk_len: 0,
            timesteps: vec![],
            counter: 0,
            begin: 0,
            ets: vec![],
            cur_sample: None,
            cur_model_output: None,
        })
    }

    fn vp_alphas_cumprod(&self) -> Option<&[f64]> {
        Some(&self.alphas_cumprod)
    }

    /// `steps` spaced timesteps; PLMS repeats the second-to-last one (its second step redoes
    /// the first with the averaged estimate), so there are `steps + 1` model evaluations; the
    /// PRK warm-up evaluates the 3 highest timesteps and their midpoints 4 times each.
    fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        refuse_custom(Self::CLASS, custom)?;
        let c = &self.config;
        let n = c.betas.num_train_timesteps;
        let mut ts = integer_timesteps(Self::CLASS, c.timestep_spacing, n, steps, c.steps_offset)?;
        let skip_prk = c.skip_prk_steps;
        if !skip_prk && steps < PNDM_ORDER {
            return Err(Error::InvalidArgument(format!(
                "PNDMScheduler with Runge-Kutta warm-up (skip_prk_steps false) needs at least {PNDM_ORDER} steps, got {steps}"
            )));
        }
        ts.reverse(); // ascending, as diffusers' `_timesteps`
        let (prk, plms): (Vec<f64>, Vec<f64>) = if skip_prk {
            let mut plms = ts[..steps - 1].to_vec();
            plms.extend_from_slice(&ts[steps.saturating_sub(2)..steps - 1]);
            plms.push(ts[steps - 1]);
            (vec![], plms.into_iter().rev().collect())
        } else {
            // The last 4 timesteps, each followed by its midpoint towards the next higher one,
            // then every entry but the ends doubled.
            let half = (n / steps / 2) as f64;
            let pairs: Vec<f64> = ts[steps - PNDM_ORDER..].iter().flat_map(|&t| [t, t + half]).collect();
            let doubled: Vec<f64> = pairs[..pairs.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            let prk = doubled[1..doubled.len() - 1].iter().rev().copied().collect();
            (prk, ts[..steps - 3].iter().rev().copied().collect())
        };
        self.prk_len = prk.len();
        self.timesteps = prk.into_iter().chain(plms).collect();
        self.steps = steps;
        self.counter = 0;
        self.begin = 0;
        self.ets.clear();
        self.cur_sample = None;
        self.cur_model_output = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Starts at step `begin` (img2img: diffusers slices `timesteps[t_start:]` and its counter,
    /// which drives the PLMS warm-up, still starts at 0).
    fn set_begin_index(&mut self, begin: usize) {
        self.begin = begin;
    }

    /// # Panics
    /// If steps are not taken in order from 0 (the multistep state would be wrong).
    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, _noise: Option<Tensor<4>>) -> Tensor<4> {
        assert_eq!(step, self.begin + self.counter, "PNDMScheduler steps must be taken in order");
        let timestep = self.timesteps[step] as i64;
        let out = if self.counter < self.prk_len {
            self.step_prk(model_output, timestep, sample)
        } else {
            self.step_plms(model_output, timestep, sample)
        };
        self.counter += 1;
        out
    }

    fn default_steps_and_guidance(&self) -> (usize, f32) {
        (50, 7.5)
    }
}
