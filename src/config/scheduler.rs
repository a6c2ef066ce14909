//! `scheduler/scheduler_config.json`; `_class_name` chooses the sampler.
//!
//! The string-valued choices (`prediction_type`, `timestep_spacing`, `beta_schedule`) are enums:
//! a value we do not know is an error naming the field, never a silent fallback.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ensure, from_json};
use crate::error::{Error, Result};

const FILE: &str = "scheduler/scheduler_config.json";

/// A string enum of a config field: (de)serialises as the upstream string; an unknown string is
/// a parse error that names the field and the accepted values.
macro_rules! config_enum {
    ($(#[$m:meta])* $name:ident, $field:literal { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                match s.as_str() {
                    $($s => Ok(Self::$variant),)+
                    other => Err(serde::de::Error::custom(format!(
                        concat!("unsupported value {:?} for `", $field, "` (expected one of: {})"),
                        other,
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }
    };
}

config_enum!(
    /// What the model predicts: the noise, the velocity of Imagen Video's v-parameterisation, or x_0.
    PredictionType, "prediction_type" { Epsilon = "epsilon", VPrediction = "v_prediction", Sample = "sample" }
);
config_enum!(
    /// Table 2 of https://huggingface.co/papers/2305.08891.
    TimestepSpacing, "timestep_spacing" { Linspace = "linspace", Leading = "leading", Trailing = "trailing" }
);
config_enum!(
    BetaSchedule, "beta_schedule" {
        Linear = "linear",
        ScaledLinear = "scaled_linear",
        SquaredcosCapV2 = "squaredcos_cap_v2",
    }
);
config_enum!(
    /// How Euler interpolates its sigma table (`log_linear` is not implemented).
    InterpolationType, "interpolation_type" { Linear = "linear" }
);
config_enum!(
    /// Euler's model timesteps: the discrete table's (`continuous` is for EDM-style models).
    TimestepType, "timestep_type" { Discrete = "discrete" }
);
config_enum!(
    /// The noise level the last step lands on.
    FinalSigmasType, "final_sigmas_type" { Zero = "zero", SigmaMin = "sigma_min" }
);
config_enum!(
    /// Flow matching's dynamic-shift curve (only read with `use_dynamic_shifting`, which is
    /// refused: parsed so that a file naming either value loads).
    TimeShiftType, "time_shift_type" { Exponential = "exponential", Linear = "linear" }
);
config_enum!(
    /// DDPM's posterior variance (learned variances need a model that predicts them).
    VarianceType, "variance_type" { FixedSmall = "fixed_small", FixedSmallLog = "fixed_small_log", FixedLarge = "fixed_large" }
);
config_enum!(
    /// DPM-Solver's algorithm (the deprecated non-++ forms are refused).
    AlgorithmType, "algorithm_type" { DpmSolverPp = "dpmsolver++", SdeDpmSolverPp = "sde-dpmsolver++" }
);
config_enum!(
    /// DPM-Solver's second-order correction.
    SolverType, "solver_type" { Midpoint = "midpoint", Heun = "heun" }
);

/// A beta schedule given as values must have one per training timestep (and there must be some).
/// Far above any trained model (1000), far below an allocation that could fail.
const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

fn check_betas(num_train_timesteps: usize, trained_betas: &Option<Vec<f64>>) -> Result<()> {
    // The schedules are tables of this length: bound it (real models use 1000).
    ensure((1..=MAX_TRAIN_TIMESTEPS).contains(&num_train_timesteps), FILE, "num_train_timesteps", num_train_timesteps)?;
    match trained_betas {
        Some(b) if b.len() != num_train_timesteps => Err(Error::unsupported(
            FILE,
            "trained_betas",
            format!("{} values for num_train_timesteps {num_train_timesteps}", b.len()),
        )),
        _ => Ok(()),
    }
}

fn eps_or_v(p: PredictionType) -> bool {
    matches!(p, PredictionType::Epsilon | PredictionType::VPrediction)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerDiscreteSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
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
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
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
        check_betas(self.num_train_timesteps, &self.trained_betas)?;
        ensure(eps_or_v(self.prediction_type), FILE, "prediction_type", self.prediction_type.as_str())?;
        ensure(!self.use_karras_sigmas, FILE, "use_karras_sigmas", self.use_karras_sigmas)?;
        ensure(!self.use_exponential_sigmas, FILE, "use_exponential_sigmas", self.use_exponential_sigmas)?;
        ensure(!self.use_beta_sigmas, FILE, "use_beta_sigmas", self.use_beta_sigmas)?;
        ensure(self.final_sigmas_type == FinalSigmasType::Zero, FILE, "final_sigmas_type", self.final_sigmas_type.as_str())
    }
}

/// `EulerAncestralDiscreteScheduler`: Euler's schedule, with fresh noise added at every step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerAncestralDiscreteSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
}

impl Default for EulerAncestralDiscreteSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }
}

impl EulerAncestralDiscreteSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        check_betas(self.num_train_timesteps, &self.trained_betas)?;
        ensure(eps_or_v(self.prediction_type), FILE, "prediction_type", self.prediction_type.as_str())
    }

    /// The Euler config with the same schedule (the two share `set_timesteps`).
    pub fn euler(&self) -> EulerDiscreteSchedulerConfig {
        EulerDiscreteSchedulerConfig {
            num_train_timesteps: self.num_train_timesteps,
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            beta_schedule: self.beta_schedule,
            trained_betas: self.trained_betas.clone(),
            prediction_type: self.prediction_type,
            timestep_spacing: self.timestep_spacing,
            steps_offset: self.steps_offset,
            rescale_betas_zero_snr: self.rescale_betas_zero_snr,
            ..Default::default()
        }
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
    pub time_shift_type: TimeShiftType,
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
            time_shift_type: TimeShiftType::Exponential,
            stochastic_sampling: false,
        }
    }
}

impl FlowMatchEulerDiscreteSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        ensure((1..=MAX_TRAIN_TIMESTEPS).contains(&self.num_train_timesteps), FILE, "num_train_timesteps", self.num_train_timesteps)?;
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
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
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
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
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

impl LCMSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        check_betas(self.num_train_timesteps, &self.trained_betas)?;
        ensure(!self.thresholding, FILE, "thresholding", self.thresholding)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DDIMSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
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
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
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
        check_betas(self.num_train_timesteps, &self.trained_betas)?;
        ensure(!self.thresholding, FILE, "thresholding", self.thresholding)
    }
}

/// `PNDMScheduler`: PLMS (and the PRK warm-up unless `skip_prk_steps`), as SD 1.x repos ship it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PNDMSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub skip_prk_steps: bool,
    pub set_alpha_to_one: bool,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl Default for PNDMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
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
        check_betas(self.num_train_timesteps, &self.trained_betas)?;
        ensure(eps_or_v(self.prediction_type), FILE, "prediction_type", self.prediction_type.as_str())
    }
}

/// `DDPMScheduler`: ancestral sampling of the original DDPM posterior.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DDPMSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub variance_type: VarianceType,
    pub clip_sample: bool,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub clip_sample_range: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DDPMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            variance_type: VarianceType::FixedSmall,
            clip_sample: true,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }
}

impl DDPMSchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        check_betas(self.num_train_timesteps, &self.trained_betas)?;
        ensure(!self.thresholding, FILE, "thresholding", self.thresholding)
    }
}

/// `DPMSolverMultistepScheduler`: DPM-Solver++ (and its SDE variant) of order 1–3 in the
/// log-SNR variable, with Karras sigmas optionally.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DPMSolverMultistepSchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
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
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
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
        check_betas(self.num_train_timesteps, &self.trained_betas)?;
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

/// A float that Python's json may have written as `Infinity` / `-Infinity` (turned into
/// strings by [`quote_non_finite`] before parsing).
fn number_or_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum F {
        Number(f64),
        Text(String),
    }
    match F::deserialize(d)? {
        F::Number(v) => Ok(v),
        F::Text(s) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        F::Text(s) if s == "Infinity" => Ok(f64::INFINITY),
        F::Text(s) => Err(serde::de::Error::custom(format!("expected a number, got {s:?}"))),
    }
}

/// Python's `json.dumps` (what diffusers' `save_pretrained` uses) writes non-finite floats as
/// the bare tokens `-Infinity`, `Infinity` and `NaN`, which are not JSON; quote them so they
/// parse as strings (outside string literals only).
fn quote_non_finite(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const TOKENS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];
    let mut out: Option<Vec<u8>> = None;
    let (mut in_string, mut escaped, mut i) = (false, false, 0);
    while i < text.len() {
        let c = text[i];
        if in_string {
            in_string = escaped || c != b'"';
            escaped = !escaped && c == b'\\';
        } else if c == b'"' {
            in_string = true;
        } else if let Some(t) = TOKENS.iter().find(|t| text[i..].starts_with(t)) {
            let buf = out.get_or_insert_with(|| text[..i].to_vec());
            buf.push(b'"');
            buf.extend_from_slice(t);
            buf.push(b'"');
            i += t.len();
            continue;
        }
        if let Some(buf) = &mut out {
            buf.push(c);
        }
        i += 1;
    }
    match out {
        Some(buf) => buf.into(),
        None => text.into(),
    }
}

/// A scheduler config, dispatched on `_class_name`.
#[derive(Debug, Clone)]
pub enum SchedulerConfig {
    EulerDiscrete(EulerDiscreteSchedulerConfig),
    EulerAncestralDiscrete(EulerAncestralDiscreteSchedulerConfig),
    FlowMatchEulerDiscrete(FlowMatchEulerDiscreteSchedulerConfig),
    Lcm(LCMSchedulerConfig),
    Ddim(DDIMSchedulerConfig),
    Ddpm(DDPMSchedulerConfig),
    Pndm(PNDMSchedulerConfig),
    DpmSolverMultistep(DPMSolverMultistepSchedulerConfig),
}

const CLASSES: [&str; 8] = [
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "LCMScheduler",
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "DPMSolverMultistepScheduler",
];

impl SchedulerConfig {
    /// Parses and validates; an unknown `_class_name` is an error naming it.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        Self::from_value(Self::json_value(text)?)
    }

    /// The file as a JSON object (non-finite floats written by Python quoted), for
    /// [`SchedulerConfig::from_config`].
    pub fn json_value(text: &[u8]) -> Result<Value> {
        from_json(FILE, &quote_non_finite(text))
    }

    /// diffusers' `Class.from_config(config, **overrides)`: `class` built from the keys of
    /// another scheduler's file that it knows (betas, prediction type, spacing, offsets carry
    /// over), its own defaults for the rest; keys the file did not set are not carried, since
    /// diffusers drops the originals' defaults (`_use_default_values`) too.
    pub fn from_config(file: &Value, class: &str, overrides: &[(&str, Value)]) -> Result<Self> {
        let mut map: Map<String, Value> = match file {
            Value::Object(m) => m.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => return Err(Error::InvalidConfig { file: FILE.into(), reason: "not a JSON object".into() }),
        };
        for (k, v) in overrides {
            map.insert(k.to_string(), v.clone());
        }
        map.insert("_class_name".into(), Value::from(class));
        Self::from_value(Value::Object(map))
    }

    fn from_value(value: Value) -> Result<Self> {
        fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
            serde_json::from_value(v).map_err(|e| Error::InvalidConfig { file: FILE.into(), reason: e.to_string() })
        }
        let class = value.get("_class_name").and_then(Value::as_str).unwrap_or("").to_string();
        let cfg = match class.as_str() {
            "EulerDiscreteScheduler" => Self::EulerDiscrete(parse(value)?),
            "EulerAncestralDiscreteScheduler" => Self::EulerAncestralDiscrete(parse(value)?),
            "FlowMatchEulerDiscreteScheduler" => Self::FlowMatchEulerDiscrete(parse(value)?),
            "LCMScheduler" => Self::Lcm(parse(value)?),
            "DDIMScheduler" => Self::Ddim(parse(value)?),
            "DDPMScheduler" => Self::Ddpm(parse(value)?),
            "PNDMScheduler" => Self::Pndm(parse(value)?),
            "DPMSolverMultistepScheduler" => Self::DpmSolverMultistep(parse(value)?),
            other => {
                return Err(Error::UnsupportedConfig {
                    file: FILE.into(),
                    field: "_class_name".into(),
                    value: format!("{other:?}"),
                    hint: Some(format!("supported: {}", CLASSES.join(", "))),
                });
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Self::EulerDiscrete(c) => c.validate(),
            Self::EulerAncestralDiscrete(c) => c.validate(),
            Self::FlowMatchEulerDiscrete(c) => c.validate(),
            Self::Lcm(c) => c.validate(),
            Self::Ddim(c) => c.validate(),
            Self::Ddpm(c) => c.validate(),
            Self::Pndm(c) => c.validate(),
            Self::DpmSolverMultistep(c) => c.validate(),
        }
    }

    pub fn class_name(&self) -> &'static str {
        match self {
            Self::EulerDiscrete(_) => "EulerDiscreteScheduler",
            Self::EulerAncestralDiscrete(_) => "EulerAncestralDiscreteScheduler",
            Self::FlowMatchEulerDiscrete(_) => "FlowMatchEulerDiscreteScheduler",
            Self::Lcm(_) => "LCMScheduler",
            Self::Ddim(_) => "DDIMScheduler",
            Self::Ddpm(_) => "DDPMScheduler",
            Self::Pndm(_) => "PNDMScheduler",
            Self::DpmSolverMultistep(_) => "DPMSolverMultistepScheduler",
        }
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
