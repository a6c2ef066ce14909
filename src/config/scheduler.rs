//! `scheduler/scheduler_config.json`; `_class_name` chooses the sampler.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ensure, from_json};
use crate::error::{Error, Result};

const FILE: &str = "scheduler/scheduler_config.json";

fn beta_schedule_ok(s: &str) -> bool {
    matches!(s, "linear" | "scaled_linear" | "squaredcos_cap_v2")
}

fn spacing_ok(s: &str) -> bool {
    matches!(s, "linspace" | "leading" | "trailing")
}

/// A beta schedule given as values must have one per training timestep (and there must be some).
fn check_betas(num_train_timesteps: usize, trained_betas: &Option<Vec<f64>>) -> Result<()> {
    ensure(num_train_timesteps > 0, FILE, "num_train_timesteps", num_train_timesteps)?;
    match trained_betas {
        Some(b) if b.len() != num_train_timesteps => Err(Error::unsupported(
            FILE,
            "trained_betas",
            format!("{} values for num_train_timesteps {num_train_timesteps}", b.len()),
        )),
        _ => Ok(()),
    }
}

fn prediction_ok(s: &str) -> bool {
    matches!(s, "epsilon" | "v_prediction" | "sample")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerDiscreteSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: String,
    pub interpolation_type: String,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub timestep_spacing: String,
    pub timestep_type: String,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
    pub final_sigmas_type: String,
}

impl Default for EulerDiscreteSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            prediction_type: "epsilon".into(),
            interpolation_type: "linear".into(),
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            timestep_spacing: "linspace".into(),
            timestep_type: "discrete".into(),
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            final_sigmas_type: "zero".into(),
        }
    }
}

impl EulerDiscreteSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        check_betas(self.num_train_timesteps, &self.trained_betas)?;
        ensure(beta_schedule_ok(&self.beta_schedule), FILE, "beta_schedule", &self.beta_schedule)?;
        ensure(matches!(self.prediction_type.as_str(), "epsilon" | "v_prediction"), FILE, "prediction_type", &self.prediction_type)?;
        ensure(self.interpolation_type == "linear", FILE, "interpolation_type", &self.interpolation_type)?;
        ensure(!self.use_karras_sigmas, FILE, "use_karras_sigmas", self.use_karras_sigmas)?;
        ensure(!self.use_exponential_sigmas, FILE, "use_exponential_sigmas", self.use_exponential_sigmas)?;
        ensure(!self.use_beta_sigmas, FILE, "use_beta_sigmas", self.use_beta_sigmas)?;
        ensure(spacing_ok(&self.timestep_spacing), FILE, "timestep_spacing", &self.timestep_spacing)?;
        ensure(self.timestep_type == "discrete", FILE, "timestep_type", &self.timestep_type)?;
        ensure(self.final_sigmas_type == "zero", FILE, "final_sigmas_type", &self.final_sigmas_type)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerDiscreteSchedulerConfig {
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: Option<f64>,
    pub max_shift: Option<f64>,
    pub base_image_seq_len: Option<usize>,
    pub max_image_seq_len: Option<usize>,
    pub invert_sigmas: bool,
    pub shift_terminal: Option<f64>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub time_shift_type: String,
    /// The few-step (DMD2-style) variant: predict x0, then re-noise to the next sigma.
    pub stochastic_sampling: bool,
}

impl Default for FlowMatchEulerDiscreteSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: Some(256),
            max_image_seq_len: Some(4096),
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: "exponential".into(),
            stochastic_sampling: false,
        }
    }
}

impl FlowMatchEulerDiscreteSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        ensure(self.num_train_timesteps > 0, FILE, "num_train_timesteps", self.num_train_timesteps)?;
        ensure(!self.use_dynamic_shifting, FILE, "use_dynamic_shifting", self.use_dynamic_shifting)?;
        ensure(!self.invert_sigmas, FILE, "invert_sigmas", self.invert_sigmas)?;
        ensure(self.shift_terminal.is_none(), FILE, "shift_terminal", self.shift_terminal)?;
        ensure(!self.use_karras_sigmas, FILE, "use_karras_sigmas", self.use_karras_sigmas)?;
        ensure(!self.use_exponential_sigmas, FILE, "use_exponential_sigmas", self.use_exponential_sigmas)?;
        ensure(!self.use_beta_sigmas, FILE, "use_beta_sigmas", self.use_beta_sigmas)?;
        ensure(self.shift > 0.0, FILE, "shift", self.shift)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LCMSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub original_inference_steps: usize,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: String,
    pub thresholding: bool,
    pub timestep_spacing: String,
    pub timestep_scaling: f64,
    pub rescale_betas_zero_snr: bool,
}

impl Default for LCMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            trained_betas: None,
            original_inference_steps: 50,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: "epsilon".into(),
            thresholding: false,
            timestep_spacing: "leading".into(),
            timestep_scaling: 10.0,
            rescale_betas_zero_snr: false,
        }
    }
}

impl LCMSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        check_betas(self.num_train_timesteps, &self.trained_betas)?;
        ensure(beta_schedule_ok(&self.beta_schedule), FILE, "beta_schedule", &self.beta_schedule)?;
        ensure(prediction_ok(&self.prediction_type), FILE, "prediction_type", &self.prediction_type)?;
        ensure(!self.thresholding, FILE, "thresholding", self.thresholding)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DDIMSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub clip_sample: bool,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: String,
    pub thresholding: bool,
    pub clip_sample_range: f64,
    pub timestep_spacing: String,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DDIMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            clip_sample: true,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: "epsilon".into(),
            thresholding: false,
            clip_sample_range: 1.0,
            timestep_spacing: "leading".into(),
            rescale_betas_zero_snr: false,
        }
    }
}

impl DDIMSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        check_betas(self.num_train_timesteps, &self.trained_betas)?;
        ensure(beta_schedule_ok(&self.beta_schedule), FILE, "beta_schedule", &self.beta_schedule)?;
        ensure(prediction_ok(&self.prediction_type), FILE, "prediction_type", &self.prediction_type)?;
        ensure(spacing_ok(&self.timestep_spacing), FILE, "timestep_spacing", &self.timestep_spacing)?;
        ensure(!self.thresholding, FILE, "thresholding", self.thresholding)
    }
}

/// A scheduler config, dispatched on `_class_name`.
#[derive(Debug, Clone)]
pub enum SchedulerConfig {
    EulerDiscrete(EulerDiscreteSchedulerConfig),
    FlowMatchEulerDiscrete(FlowMatchEulerDiscreteSchedulerConfig),
    Lcm(LCMSchedulerConfig),
    Ddim(DDIMSchedulerConfig),
}

impl SchedulerConfig {
    /// Parses and validates; an unknown `_class_name` is an error naming it.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        let value: Value = from_json(FILE, text)?;
        let class = value.get("_class_name").and_then(Value::as_str).unwrap_or("");
        let cfg = match class {
            "EulerDiscreteScheduler" => Self::EulerDiscrete(from_json(FILE, text)?),
            "FlowMatchEulerDiscreteScheduler" => Self::FlowMatchEulerDiscrete(from_json(FILE, text)?),
            "LCMScheduler" => Self::Lcm(from_json(FILE, text)?),
            "DDIMScheduler" => Self::Ddim(from_json(FILE, text)?),
            other => {
                return Err(Error::UnsupportedConfig {
                    file: FILE.into(),
                    field: "_class_name".into(),
                    value: format!("{other:?}"),
                    hint: Some(
                        "supported: EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, LCMScheduler, DDIMScheduler"
                            .into(),
                    ),
                });
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Self::EulerDiscrete(c) => c.validate(),
            Self::FlowMatchEulerDiscrete(c) => c.validate(),
            Self::Lcm(c) => c.validate(),
            Self::Ddim(c) => c.validate(),
        }
    }

    pub fn class_name(&self) -> &'static str {
        match self {
            Self::EulerDiscrete(_) => "EulerDiscreteScheduler",
            Self::FlowMatchEulerDiscrete(_) => "FlowMatchEulerDiscreteScheduler",
            Self::Lcm(_) => "LCMScheduler",
            Self::Ddim(_) => "DDIMScheduler",
        }
    }
}
