//! Samplers, chosen by `scheduler/scheduler_config.json`'s `_class_name` (or overridden by name,
//! see [`Sampler`]), mirroring diffusers' schedulers step for step (parity-tested on their
//! traces).
//!
//! Unlike diffusers they keep no step counter for the single-step samplers: the caller passes
//! the step index (the multistep ones, PNDM and DPM-Solver, keep their past estimates and
//! insist on steps in order). Noise for stochastic steps is passed in (`needs_noise`) so the
//! pipeline owns the RNG. The schedule (betas, sigmas, timesteps) is plain `Vec<f64>`
//! arithmetic on the CPU; only the per-step update touches tensors.
//!
//! The noise sequence (natively and in the browser alike, the same Rust code): one seeded
//! ChaCha stream (`StdRng::seed_from_u64(seed)`) gives, in this order, the initial latents
//! (unless given; for img2img the noise added to the encoded image, in the same place and shape)
//! and then, for each step `i` run, in order, where `needs_noise(i)`, one standard
//! normal tensor of the latents' shape `[1, C, h, w]`, row-major, by Box–Muller on pairs of
//! uniform f64 draws (`pipeline::gaussian`). Steps that need no noise draw nothing. Which steps
//! draw follows diffusers: Euler ancestral and SDE-DPM-Solver++ every step, DDPM while t > 0,
//! LCM every step but the last, stochastic flow-match every step.
//!
//! The denoising loop (classifier-free guidance omitted):
//! ```text
//! scheduler.set_timesteps(steps, None)?;
//! let mut x = noise.mul_scalar(scheduler.init_noise_sigma() as f32);
//! for (i, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
//!     let out = unet.forward(scheduler.scale_model_input(x.clone(), i), t, &context);
//!     let fresh = scheduler.needs_noise(i).then(|| randn(x.dims()));
//!     x = scheduler.step(out, i, x, fresh);
//! }
//! ```

mod betas;
mod config;
mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod flow_match;
mod lcm;
mod pndm;
mod samplers;

use burn::tensor::Tensor;
use serde_json::Value;

pub use config::{BetaConfig, BetaSchedule, FinalSigmasType, PredictionType, TimestepSpacing};
pub use ddim::{DDIMSchedulerConfig, Ddim};
pub use ddpm::{DDPMSchedulerConfig, Ddpm, VarianceType};
pub use dpm_solver::{AlgorithmType, DPMSolverMultistepSchedulerConfig, DpmSolverMultistep, SolverType};
pub use euler::{EulerDiscrete, EulerDiscreteSchedulerConfig, InterpolationType, TimestepType};
pub use euler_ancestral::{EulerAncestralDiscrete, EulerAncestralDiscreteSchedulerConfig};
pub use flow_match::{FlowMatchEulerDiscrete, FlowMatchEulerDiscreteSchedulerConfig, TimeShiftType};
pub use lcm::{LCMSchedulerConfig, Lcm};
pub use pndm::{PNDMSchedulerConfig, Pndm};
pub use samplers::Sampler;

use crate::error::{Error, Result};

use config::FILE;

/// What each sampler file implements (diffusers' `SchedulerMixin`): [`Scheduler`] dispatches
/// here. The defaults are those of the samplers that work on the DDPM timesteps directly (no
/// sigma table, unit initial noise, unscaled model input, no fresh noise, no multistep state).
pub trait Step: Sized {
    /// The sampler's `scheduler_config.json`, with upstream field names.
    type Config: serde::de::DeserializeOwned + Clone + std::fmt::Debug;
    /// The diffusers class it mirrors (`_class_name`).
    const CLASS: &'static str;
    /// Flow matching (velocity on the straight path) rather than the DDPM family: the two
    /// cannot stand in for each other ([`Sampler::config`]).
    const FLOW: bool = false;

    /// Builds the sampler of a validated config.
    fn new(config: &Self::Config) -> Result<Self>;
    /// See [`Scheduler::set_timesteps`].
    fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()>;
    /// See [`Scheduler::set_sigmas`].
    fn set_sigmas(&mut self, _sigmas: &[f64]) -> Result<()> {
        Err(Error::InvalidArgument(format!("custom sigmas are not supported by {}", Self::CLASS)))
    }
    fn timesteps(&self) -> &[f64];
    /// Noise levels per step plus a final one, for the sigma-space samplers.
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&self, sample: Tensor<4>, _step: usize) -> Tensor<4> {
        sample
    }
    fn needs_noise(&self, _step: usize) -> bool {
        false
    }
    /// See [`Scheduler::step`]; `noise` is `None` where `needs_noise` is false.
    fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4>;
    fn set_begin_index(&mut self, _begin: usize) {}
    /// The training schedule of the samplers that index it with integer timesteps (DDPM, DDIM,
    /// PNDM, LCM), for the default `add_noise`; `None` for those that define their own.
    fn vp_alphas_cumprod(&self) -> Option<&[f64]> {
        None
    }
    /// See [`Scheduler::add_noise`]. The default is the DDPM-indexed samplers': diffusers'
    /// `add_noise` at the step's timestep ([`betas::add_noise_vp`]).
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step: usize) -> Tensor<4> {
        let alphas_cumprod = self.vp_alphas_cumprod().unwrap_or_else(|| panic!("{} defines no add_noise", Self::CLASS));
        betas::add_noise_vp(alphas_cumprod, original, noise, self.timesteps()[step])
    }
    /// Sensible (steps, guidance scale) when the user gives none.
    fn default_steps_and_guidance(&self) -> (usize, f32);
}

/// The one table of samplers: a variant per diffusers class (its sampler type, whose file holds
/// its config, its stepping and its class name), and the names users pick it by, each with the
/// config keys the name sets (diffusers' `from_config(..., **overrides)`). Dispatch, config
/// parsing, `SchedulerConfig::CLASSES` and [`Sampler::NAMES`] (the CLI's help; the page's
/// picker and `index.d.ts` are checked against it by tests/cli.rs) all come from here, so a new
/// sampler is its own file plus one entry.
///
/// `$d` is a `$` passed in, for the `each!` macro this one defines (macro_rules cannot write a
/// literal `$` into the macro it generates).
macro_rules! schedulers {
    (($d:tt) $($variant:ident($ty:ty) { $($name:literal => $about:literal $overrides:tt,)+ })+) => {
        /// A scheduler config, dispatched on `_class_name`.
        #[derive(Debug, Clone)]
        pub enum SchedulerConfig {
            $($variant(<$ty as Step>::Config),)+
        }

        // One per generation, never moved in a loop: boxing the multistep samplers buys nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone)]
        pub enum Scheduler {
            $($variant($ty),)+
        }

        impl SchedulerConfig {
            /// Every class this crate implements.
            pub const CLASSES: &[&str] = &[$(<$ty as Step>::CLASS,)+];

            pub fn class_name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$ty as Step>::CLASS,)+
                }
            }

            /// True for flow-matching configs (see [`Step::FLOW`]).
            pub fn is_flow(&self) -> bool {
                match self {
                    $(Self::$variant(_) => <$ty as Step>::FLOW,)+
                }
            }

            pub fn validate(&self) -> Result<()> {
                match self {
                    $(Self::$variant(c) => c.validate(),)+
                }
            }

            fn parse_class(class: &str, value: Value) -> Option<Result<Self>> {
                $(if class == <$ty as Step>::CLASS {
                    return Some(config::parse(value).map(Self::$variant));
                })+
                None
            }
        }

        impl Scheduler {
            /// Builds the sampler of a config, validating it first.
            pub fn try_new(config: &SchedulerConfig) -> Result<Self> {
                config.validate()?;
                Ok(match config {
                    $(SchedulerConfig::$variant(c) => Self::$variant(<$ty as Step>::new(c)?),)+
                })
            }

            /// The diffusers class this sampler mirrors.
            pub fn class_name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$ty as Step>::CLASS,)+
                }
            }
        }

        /// Calls `$e` with `$x` bound to whichever sampler `$s` holds.
        macro_rules! each {
            ($d s:expr, $d x:ident => $d e:expr) => {
                match $d s {
                    $(Scheduler::$variant($d x) => $d e,)+
                }
            };
        }

        impl Sampler {
            /// Every name, with what it means (for `--help`, the README and the page's picker).
            pub const NAMES: &[(&str, &str)] = &[$($(($name, $about),)+)+];

            /// The diffusers class, whether it is flow matching, and the config keys the name sets.
            fn class_and_overrides(self) -> (&'static str, bool, Value) {
                let mut i = 0;
                $($(
                    if self.index() == i {
                        return (<$ty as Step>::CLASS, <$ty as Step>::FLOW, serde_json::json!($overrides));
                    }
                    i += 1;
                )+)+
                unreachable!("sampler index {} of {i}", self.index())
            }
        }
    };
}

schedulers! {
    ($)
    EulerDiscrete(EulerDiscrete) {
        "euler" => "EulerDiscreteScheduler" {},
    }
    EulerAncestralDiscrete(EulerAncestralDiscrete) {
        "euler-a" => "EulerAncestralDiscreteScheduler (stochastic)" {},
    }
    DpmSolverMultistep(DpmSolverMultistep) {
        "dpm++2m" => "DPMSolverMultistepScheduler, DPM-Solver++ order 2"
            { "algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": false },
        "dpm++2m-karras" => "DPMSolverMultistepScheduler, DPM-Solver++ order 2, Karras sigmas"
            { "algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": true },
        "dpm++2m-sde" => "DPMSolverMultistepScheduler, SDE-DPM-Solver++ order 2 (stochastic)"
            { "algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": false },
        "dpm++2m-sde-karras" => "DPMSolverMultistepScheduler, SDE-DPM-Solver++ order 2, Karras sigmas (stochastic)"
            { "algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": true },
    }
    Ddim(Ddim) {
        "ddim" => "DDIMScheduler (eta 0)" {},
    }
    Pndm(Pndm) {
        "pndm" => "PNDMScheduler, PLMS (skip_prk_steps, as SD 1.x ships it)" { "skip_prk_steps": true },
    }
    Lcm(Lcm) {
        "lcm" => "LCMScheduler (stochastic)" {},
    }
    Ddpm(Ddpm) {
        "ddpm" => "DDPMScheduler (stochastic)" {},
    }
    FlowMatchEulerDiscrete(FlowMatchEulerDiscrete) {
        "flow-euler" => "FlowMatchEulerDiscreteScheduler (flow-matching models only)" {},
    }
}

impl SchedulerConfig {
    /// Parses and validates; an unknown `_class_name` is an error naming it.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        Self::from_value(Self::json_value(text)?)
    }

    /// The file as a JSON object (non-finite floats written by Python quoted), for
    /// [`SchedulerConfig::from_config`].
    pub fn json_value(text: &[u8]) -> Result<Value> {
        config::json_value(text)
    }

    /// diffusers' `Class.from_config(config, **overrides)`: `class` built from the keys of
    /// another scheduler's file that it knows (betas, prediction type, spacing, offsets carry
    /// over), its own defaults for the rest; keys the file did not set are not carried, since
    /// diffusers drops the originals' defaults (`_use_default_values`) too. `overrides` is a
    /// JSON object.
    pub fn from_config(file: &Value, class: &str, overrides: &Value) -> Result<Self> {
        let mut map = config::carried_keys(file, overrides)?;
        map.insert("_class_name".into(), Value::from(class));
        Self::from_value(Value::Object(map))
    }

    fn from_value(value: Value) -> Result<Self> {
        let class = value.get("_class_name").and_then(Value::as_str).unwrap_or("").to_string();
        let cfg = Self::parse_class(&class, value).unwrap_or_else(|| {
            Err(Error::UnsupportedConfig {
                file: FILE.into(),
                field: "_class_name".into(),
                value: format!("{class:?}"),
                hint: Some(format!("supported: {}", Self::CLASSES.join(", "))),
            })
        })?;
        cfg.validate()?;
        Ok(cfg)
    }
}

impl Scheduler {
    /// Builds the sampler of a validated config (`SchedulerConfig::from_json` validates).
    ///
    /// # Panics
    /// On a config `validate()` rejects; use [`Scheduler::try_new`] for hand-built configs.
    pub fn new(config: &SchedulerConfig) -> Self {
        Self::try_new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like diffusers' `set_timesteps`; `custom` gives the timesteps explicitly, strictly
    /// descending, `steps` of them, for the schedulers whose diffusers `set_timesteps` takes
    /// `timesteps=`: LCM, DDPM and DPM-Solver (integers; not with Karras sigmas), flow-match and
    /// Euler (fractional allowed). DDIM, PNDM and Euler ancestral refuse them, as in diffusers.
    /// (e.g. DMD2's `[999, 749, 499, 249]`, SDXS' `[999]`).
    ///
    /// Loop over `timesteps()`, not `0..steps`: like diffusers, "trailing" spacing yields one
    /// extra timestep for some counts (61 gives 62, the last being t = -1: Euler mirrors that,
    /// DDIM refuses the count), and PNDM evaluates the model `steps + 1` times (more with its
    /// Runge–Kutta warm-up).
    pub fn set_timesteps(&mut self, steps: usize, custom: Option<&[f64]>) -> Result<()> {
        each!(self, s => s.set_timesteps(steps, custom))
    }

    /// diffusers' `set_timesteps(sigmas=...)`, accepted by the schedulers that take it there:
    /// Euler (the final sigma included: `sigmas.len() - 1` steps) and flow-match (one per step,
    /// shifted like its own schedule, a final 0 appended).
    pub fn set_sigmas(&mut self, sigmas: &[f64]) -> Result<()> {
        each!(self, s => s.set_sigmas(sigmas))
    }

    /// What the model receives as timestep, per step (integers for the DDPM-indexed samplers,
    /// fractional for flow-match and Euler's linspace spacing). Empty before `set_timesteps`.
    pub fn timesteps(&self) -> &[f64] {
        each!(self, s => s.timesteps())
    }

    /// Noise levels per step plus a final one, for the sigma-space samplers.
    pub fn sigmas(&self) -> Option<&[f64]> {
        each!(self, s => s.sigmas())
    }

    /// Scale of the initial Gaussian latents (the Euler samplers work with unnormalised
    /// x = x_0 + sigma eps).
    pub fn init_noise_sigma(&self) -> f64 {
        each!(self, s => s.init_noise_sigma())
    }

    /// The model input at `step` (the Euler samplers divide by sqrt(sigma^2 + 1); identity
    /// elsewhere).
    pub fn scale_model_input(&self, sample: Tensor<4>, step: usize) -> Tensor<4> {
        each!(self, s => s.scale_model_input(sample, step))
    }

    /// True if `step(...)` at this step consumes fresh noise (see the module docs).
    pub fn needs_noise(&self, step: usize) -> bool {
        each!(self, s => s.needs_noise(step))
    }

    /// One denoising step from `sample` given the model output; `noise` (same shape, standard
    /// normal) when `needs_noise(step)`.
    ///
    /// # Panics
    /// If `step` is out of range, needed noise is missing, or a multistep sampler (PNDM,
    /// DPM-Solver) is stepped out of order.
    pub fn step(&mut self, model_output: Tensor<4>, step: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        each!(self, s => s.step(model_output, step, sample, noise))
    }

    /// diffusers' `set_begin_index` (img2img's `get_timesteps`): the first step taken will be
    /// `begin`. The multistep samplers start their state there; the others take any step index.
    /// (Every sampler here has diffusers' `order` 1, so `begin` is `t_start` itself.)
    pub fn set_begin_index(&mut self, begin: usize) {
        each!(self, s => s.set_begin_index(begin))
    }

    /// Noises clean latents `original` to the level of `step` with standard-normal `noise`, as
    /// each diffusers scheduler's own `add_noise` (flow-match: `scale_noise`) does after
    /// `set_begin_index(step)`: alphas_cumprod of the step's timestep for DDPM, DDIM, PNDM and
    /// LCM; `x_0 + sigma noise` for the Euler samplers; DPM-Solver's `alpha_t x_0 + sigma_t noise`;
    /// flow-match's `(1 - sigma) x_0 + sigma noise`.
    pub fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step: usize) -> Tensor<4> {
        each!(self, s => s.add_noise(original, noise, step))
    }

    /// Sensible (steps, guidance scale) when the user gives none: many CFG steps for base
    /// models, few unguided ones for distilled samplers.
    pub fn default_steps_and_guidance(&self) -> (usize, f32) {
        each!(self, s => s.default_steps_and_guidance())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_floats_parse() {
        let text = br#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "x": "NaN -Infinity"}"#;
        let Value::Object(m) = SchedulerConfig::json_value(text).unwrap() else { panic!("object") };
        assert_eq!(m["x"], "NaN -Infinity");
        let SchedulerConfig::DpmSolverMultistep(c) = SchedulerConfig::from_json(text).unwrap() else { panic!("dpm") };
        assert_eq!(c.lambda_min_clipped, f64::NEG_INFINITY);
    }

    #[test]
    fn unknown_enum_values_name_the_field() {
        let e = SchedulerConfig::from_json(br#"{"_class_name": "DDIMScheduler", "timestep_spacing": "even"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains(r#"unsupported value "even" for `timestep_spacing` (expected one of: linspace, leading, trailing)"#), "{e}");
    }

    /// The choices that used to be strings with a silent default for unknown values.
    #[test]
    fn every_string_choice_is_typed() {
        let cases = [
            ("DPMSolverMultistepScheduler", "algorithm_type", "dpmsolver", "dpmsolver++, sde-dpmsolver++"),
            ("DPMSolverMultistepScheduler", "solver_type", "bh2", "midpoint, heun"),
            ("DPMSolverMultistepScheduler", "final_sigmas_type", "denoise_to_zero", "zero, sigma_min"),
            ("DDPMScheduler", "variance_type", "learned_range", "fixed_small, fixed_small_log, fixed_large"),
            ("EulerDiscreteScheduler", "interpolation_type", "log_linear", "linear"),
            ("EulerDiscreteScheduler", "timestep_type", "continuous", "discrete"),
            ("FlowMatchEulerDiscreteScheduler", "time_shift_type", "cosine", "exponential, linear"),
        ];
        for (class, field, value, expected) in cases {
            let text = format!(r#"{{"_class_name": "{class}", "{field}": "{value}"}}"#);
            let e = SchedulerConfig::from_json(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(&format!("unsupported value {value:?} for `{field}` (expected one of: {expected})")), "{e}");
        }
    }
}
