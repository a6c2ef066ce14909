//! The DDPM noise schedule shared by the Euler, LCM and DDIM samplers (betas → alphas_cumprod)
//! and the numpy/torch spacing helpers their timesteps are built from.
//!
//! diffusers keeps these schedules as float32 tensors built by specific torch/numpy routines;
//! the values here are rounded the same way (f32 where diffusers stores f32, torch's fused
//! linspace, cumprod accumulated in f64, numpy's half-to-even rounding) so timesteps match
//! exactly and samples to ~1e-6.

use burn::tensor::Tensor;

use super::config::{BetaConfig, BetaSchedule, PredictionType, TimestepSpacing};
use crate::error::{Error, Result};

/// Rounds to the nearest f32: the value diffusers holds in a float32 tensor.
pub(crate) fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// `torch.linspace(start, end, n, dtype=float32)`: an f32 step applied with a fused
/// multiply-add from whichever end is nearer (torch's CPU kernel), not numpy's formula.
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    (0..n).map(|i| if i < n / 2 { step.mul_add(i as f32, s) } else { (-step).mul_add((n - 1 - i) as f32, e) }).collect()
}

/// `torch.cumprod` of a float32 tensor: torch accumulates in f64 and rounds each entry.
fn cumprod_f32(alphas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    alphas
        .iter()
        .map(|&a| {
            acc *= a as f64;
            acc as f32
        })
        .collect()
}

/// Glide's cosine schedule (`squaredcos_cap_v2`), computed in f64 like diffusers'
/// `betas_for_alpha_bar`, then stored as f32.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// "Common Diffusion Noise Schedules and Sample Steps are Flawed" (zero terminal SNR), in f32
/// like diffusers' `rescale_zero_terminal_snr`: shift/scale sqrt(alphas_cumprod) so the last
/// one is 0 and the first unchanged, then turn it back into betas.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_ab: Vec<f32> = cumprod_f32(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
    let scale = first / (first - last);
    for v in &mut sqrt_ab {
        *v = (*v - last) * scale;
    }
    let ab: Vec<f32> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    out.extend(ab.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

impl BetaConfig {
    fn betas(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        match (&self.trained_betas, self.beta_schedule) {
            (Some(b), _) => b.iter().map(|&v| v as f32).collect(),
            (None, BetaSchedule::Linear) => torch_linspace_f32(self.beta_start, self.beta_end, n),
            (None, BetaSchedule::ScaledLinear) => {
                torch_linspace_f32(self.beta_start.sqrt(), self.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
            }
            (None, BetaSchedule::SquaredcosCapV2) => cosine_betas(n),
        }
    }

    /// [`Self::alphas_cumprod`] for the samplers that turn it into sigmas (Euler, DPM-Solver): with
    /// the zero-SNR rescale the last entry is close to 0 without being 0, so that the first
    /// sigma is finite, as in diffusers.
    pub(crate) fn alphas_cumprod_for_sigmas(&self, rescale_betas_zero_snr: bool) -> Result<Vec<f64>> {
        let mut alphas_cumprod = self.alphas_cumprod(rescale_betas_zero_snr)?;
        if rescale_betas_zero_snr {
            *alphas_cumprod.last_mut().expect("validated: num_train_timesteps >= 1") = 2f64.powi(-24);
        }
        Ok(alphas_cumprod)
    }

    /// alphas_cumprod[t] = prod_{s<=t} (1 - beta_s), as the f32 values diffusers holds; with
    /// `rescale_betas_zero_snr` (the configs that have the key; PNDM has not) the betas are
    /// first rescaled to zero terminal SNR.
    pub(crate) fn alphas_cumprod(&self, rescale_betas_zero_snr: bool) -> Result<Vec<f64>> {
        self.validate()?;
        let betas = self.betas();
        let betas = if rescale_betas_zero_snr { rescale_zero_terminal_snr(&betas) } else { betas };
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        Ok(cumprod_f32(&alphas).into_iter().map(f64::from).collect())
    }
}

/// `np.linspace(start, stop, n, endpoint)`: `i * step + start` in f64, the endpoint exact.
pub(crate) fn np_linspace(start: f64, stop: f64, n: usize, endpoint: bool) -> Vec<f64> {
    let div = if endpoint { n.saturating_sub(1) } else { n };
    let step = (stop - start) / div as f64;
    let mut out: Vec<f64> = (0..n).map(|i| if div > 0 { i as f64 * step + start } else { start }).collect();
    if endpoint && n > 1 {
        out[n - 1] = stop;
    }
    out
}

/// `np.arange(start, stop, step)` for floats: numpy's length `ceil((stop - start) / step)`
/// and its fill rule `start + i * ((start + step) - start)`.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| if i == 1 { start + step } else { start + i as f64 * delta }).collect()
}

/// The "linspace" / "leading" / "trailing" timestep spacings of Table 2 in
/// https://huggingface.co/papers/2305.08891, descending, as numpy produces them before the
/// scheduler's final cast (`round` is numpy's half-to-even). Euler keeps linspace fractional
/// (`round_linspace` false); DDIM rounds it to integers.
pub(crate) fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    steps: usize,
    steps_offset: usize,
    round_linspace: bool,
) -> Vec<f64> {
    let mut ts = match spacing {
        TimestepSpacing::Linspace => {
            let mut ts = np_linspace(0.0, (num_train - 1) as f64, steps, true);
            if round_linspace {
                ts.iter_mut().for_each(|t| *t = t.round_ties_even());
            }
            ts.reverse();
            ts
        }
        TimestepSpacing::Leading => {
            let ratio = num_train / steps;
            (0..steps).rev().map(|i| (i * ratio + steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train as f64 / steps as f64;
            np_arange(num_train as f64, 0.0, -ratio).into_iter().map(|t| t.round_ties_even() - 1.0).collect()
        }
    };
    // Euler casts to float32; integers (DDIM) are unaffected.
    ts.iter_mut().for_each(|t| *t = f32r(*t));
    ts
}

/// Rejects a step count diffusers would reject (or silently mishandle).
pub(crate) fn check_steps(steps: usize, num_train: usize) -> Result<()> {
    if steps == 0 || steps > num_train {
        return Err(Error::InvalidArgument(format!(
            "number of inference steps must be between 1 and num_train_timesteps ({num_train}), got {steps}"
        )));
    }
    Ok(())
}

/// Refuses timesteps outside the training range (where `steps_offset` pushed them): the
/// DDPM-indexed samplers would read past their alphas_cumprod table.
pub(crate) fn check_in_range(class: &str, ts: &[f64], steps: usize, steps_offset: usize, num_train: usize) -> Result<()> {
    match ts.iter().find(|&&t| t < 0.0 || t >= num_train as f64) {
        Some(t) => Err(Error::InvalidArgument(format!(
            "{class}: {steps} steps with steps_offset {steps_offset} give timestep {t}, outside 0..{num_train}"
        ))),
        None => Ok(()),
    }
}

/// The integer timesteps of the DDPM-indexed samplers (DDPM, DDIM, PNDM): `steps` of them
/// spaced per `spacing`, descending, all within the training range.
pub(crate) fn integer_timesteps(
    class: &str,
    spacing: TimestepSpacing,
    num_train: usize,
    steps: usize,
    steps_offset: usize,
) -> Result<Vec<f64>> {
    check_steps(steps, num_train)?;
    let ts = spaced_timesteps(spacing, num_train, steps, steps_offset, true);
    check_in_range(class, &ts, steps, steps_offset, num_train)?;
    Ok(ts)
}

/// The samplers whose diffusers `set_timesteps` takes a step count only refuse custom timesteps.
pub(crate) fn refuse_custom(class: &str, custom: Option<&[f64]>) -> Result<()> {
    match custom {
        Some(_) => Err(Error::InvalidArgument(format!("custom timesteps are not supported by {class}"))),
        None => Ok(()),
    }
}

/// The user's integer timesteps, for the samplers that index alphas_cumprod with them (DDPM,
/// LCM, DPM-Solver), checked by [`check_custom`].
pub(crate) fn custom_integer_timesteps(class: &str, ts: &[f64], steps: usize, num_train: usize) -> Result<Vec<f64>> {
    check_custom(class, ts, steps, (num_train - 1) as f64, true)?;
    Ok(ts.to_vec())
}

/// User timesteps must be strictly descending values in 0..=`max` (integers where the
/// scheduler indexes alphas_cumprod with them), one per step.
pub(crate) fn check_custom(class: &str, ts: &[f64], steps: usize, max: f64, integer: bool) -> Result<()> {
    let bad = |why: String| Err(Error::InvalidArgument(format!("{class} custom timesteps {ts:?}: {why}")));
    if ts.is_empty() {
        return bad("empty".into());
    }
    if steps != ts.len() {
        return bad(format!("{} timesteps for {steps} steps", ts.len()));
    }
    let kind = if integer { "an integer" } else { "a number" };
    if let Some(t) = ts.iter().find(|t| !(0.0..=max).contains(*t) || (integer && t.fract() != 0.0)) {
        return bad(format!("{t} is not {kind} in 0..={max}"));
    }
    if ts.windows(2).any(|w| w[1] >= w[0]) {
        return bad("must be strictly descending".into());
    }
    Ok(())
}

/// User sigmas: finite, non-negative, non-increasing, at least `min_len` of them.
pub(crate) fn check_sigmas(class: &str, sigmas: &[f64], min_len: usize) -> Result<()> {
    let bad = |why: String| Err(Error::InvalidArgument(format!("{class} custom sigmas {sigmas:?}: {why}")));
    if sigmas.len() < min_len {
        return bad(format!("need at least {min_len}"));
    }
    if let Some(s) = sigmas.iter().find(|s| !s.is_finite() || **s < 0.0) {
        return bad(format!("{s} is not a finite number >= 0"));
    }
    if sigmas.windows(2).any(|w| w[1] > w[0]) {
        return bad("must be descending".into());
    }
    Ok(())
}

/// diffusers' `_sigma_to_t`: the (fractional) training timestep of a noise level, interpolating
/// linearly in log sigma between the neighbouring training sigmas. `f32_math`: the sigma came
/// from a float32 array, so numpy does the log and the weight in float32 (else float64).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32], f32_math: bool) -> f64 {
    let n = log_sigmas.len();
    let ls = if f32_math { (sigma as f32).max(1e-10).ln() as f64 } else { sigma.max(1e-10).ln() };
    // The last index whose log sigma is <= ours (0 if none), at most n - 2.
    let low = log_sigmas.iter().rposition(|&l| l as f64 <= ls).unwrap_or(0).min(n - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = if f32_math {
        let ls = ls as f32;
        (((lo - ls) / (lo - hi)).clamp(0.0, 1.0) as f64, (1.0 - ((lo - ls) / (lo - hi)).clamp(0.0, 1.0)) as f64)
    } else {
        let w = ((lo as f64 - ls) / (lo as f64 - hi as f64)).clamp(0.0, 1.0);
        (w, 1.0 - w)
    };
    w.1 * low as f64 + w.0 * (low + 1) as f64
}

/// diffusers' `add_noise` of the DDPM-indexed schedulers (DDPM, DDIM, PNDM, LCM):
/// `sqrt(alphas_cumprod[t]) x_0 + sqrt(1 - alphas_cumprod[t]) noise`, in f32 like its tensors.
pub(crate) fn add_noise_vp(alphas_cumprod: &[f64], original: Tensor<4>, noise: Tensor<4>, timestep: f64) -> Tensor<4> {
    let alpha = alphas_cumprod[timestep as usize] as f32;
    original.mul_scalar(alpha.sqrt()).add(noise.mul_scalar((1.0 - alpha).sqrt()))
}

/// diffusers' `pred_original_sample` of the DDPM-indexed samplers (DDPM, DDIM, LCM): x_0 from
/// the model output at `alpha` = alphas_cumprod[t] per the prediction type, clipped to ±`clip`
/// (their `clip_sample_range`, where `clip_sample` is set).
pub(crate) fn predicted_x0(
    prediction: PredictionType,
    model_output: Tensor<4>,
    sample: Tensor<4>,
    alpha: f32,
    clip: Option<f64>,
) -> Tensor<4> {
    let beta = 1.0 - alpha;
    let x0 = match prediction {
        PredictionType::Epsilon => sample.sub(model_output.mul_scalar(beta.sqrt())).div_scalar(alpha.sqrt()),
        PredictionType::Sample => model_output,
        PredictionType::VPrediction => sample.mul_scalar(alpha.sqrt()).sub(model_output.mul_scalar(beta.sqrt())),
    };
    match clip {
        Some(r) => x0.clamp(-r as f32, r as f32),
        None => x0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_matches_numpy_lengths() {
        // np.arange(1000, 0, -1000/3) has 3 entries; np.arange(10, 0, -2.5) has 4.
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 3.0).len(), 3);
        assert_eq!(np_arange(10.0, 0.0, -2.5), vec![10.0, 7.5, 5.0, 2.5]);
    }

    #[test]
    fn linspace_endpoints() {
        assert_eq!(np_linspace(0.0, 999.0, 1, true), vec![0.0]);
        assert_eq!(np_linspace(0.0, 50.0, 4, false), vec![0.0, 12.5, 25.0, 37.5]);
    }
}
