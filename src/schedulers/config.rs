//! What `scheduler/scheduler_config.json` files share: the common choices (prediction type,
//! spacing, beta schedule, final sigma), the checks every DDPM-indexed config makes, and the
//! JSON quirks of files written by Python. Each sampler's own config struct lives in its file;
//! [`SchedulerConfig`](super::SchedulerConfig), dispatched on `_class_name`, comes from the
//! table in `mod.rs`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{choice, ensure, from_json};
use crate::error::{Error, Result};

pub(crate) const FILE: &str = "scheduler/scheduler_config.json";

choice! {
    /// What the model predicts: the noise, the velocity of Imagen Video's v-parameterisation, or x_0.
    PredictionType for "prediction_type" { Epsilon = "epsilon", VPrediction = "v_prediction", Sample = "sample", }
}
choice! {
    /// Table 2 of https://huggingface.co/papers/2305.08891.
    TimestepSpacing for "timestep_spacing" { Linspace = "linspace", Leading = "leading", Trailing = "trailing", }
}
choice! {
    BetaSchedule for "beta_schedule" {
        Linear = "linear",
        ScaledLinear = "scaled_linear",
        SquaredcosCapV2 = "squaredcos_cap_v2",
    }
}
choice! {
    /// The noise level the last step lands on.
    FinalSigmasType for "final_sigmas_type" { Zero = "zero", SigmaMin = "sigma_min", }
}

/// The training noise schedule every DDPM-family config starts with (all but flow matching):
/// `num_train_timesteps` betas from `beta_start` to `beta_end` shaped by `beta_schedule`, or
/// given as `trained_betas`. Each config holds it `#[serde(flatten)]` (the keys sit at the top
/// level of the file, as upstream); a flattened field takes its type's defaults, so a config
/// whose defaults differ (LCM) parses it with [`BetaConfig::deserialize_over`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BetaConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
}

/// diffusers' default: the DDPM paper's linear schedule.
impl Default for BetaConfig {
    fn default() -> Self {
        Self::LINEAR
    }
}

/// Far above any trained model (1000), far below an allocation that could fail.
pub(crate) const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

impl BetaConfig {
    /// The DDPM paper's schedule, diffusers' default.
    pub const LINEAR: Self = Self::over_1000_steps(BetaSchedule::Linear, 0.0001, 0.02);
    /// Latent diffusion's (Stable Diffusion's), LCM's default.
    pub const SCALED_LINEAR: Self = Self::over_1000_steps(BetaSchedule::ScaledLinear, 0.00085, 0.012);

    const fn over_1000_steps(beta_schedule: BetaSchedule, beta_start: f64, beta_end: f64) -> Self {
        Self { num_train_timesteps: 1000, beta_start, beta_end, beta_schedule, trained_betas: None }
    }

    /// The schedules are tables of `num_train_timesteps` entries: bound it (real models use
    /// 1000); betas given as values must have one per training timestep.
    pub fn validate(&self) -> Result<()> {
        let n = self.num_train_timesteps;
        ensure((1..=MAX_TRAIN_TIMESTEPS).contains(&n), FILE, "num_train_timesteps", n)?;
        match &self.trained_betas {
            Some(b) if b.len() != n => {
                Err(Error::unsupported(FILE, "trained_betas", format!("{} values for num_train_timesteps {n}", b.len())))
            }
            _ => Ok(()),
        }
    }

    /// The keys a file sets over `defaults` instead of [`BetaConfig::default`] (for
    /// `#[serde(flatten, deserialize_with = ...)]`).
    pub(crate) fn deserialize_over<'de, D: serde::Deserializer<'de>>(
        d: D,
        defaults: Self,
    ) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let given = Map::<String, Value>::deserialize(d)?;
        let mut merged = serde_json::to_value(defaults).map_err(D::Error::custom)?;
        if let Value::Object(keys) = &mut merged {
            for (key, value) in keys.iter_mut() {
                if let Some(v) = given.get(key) {
                    *value = v.clone();
                }
            }
        }
        serde_json::from_value(merged).map_err(D::Error::custom)
    }
}

/// The checks of the configs that estimate x_0 with diffusers' optional dynamic thresholding
/// (DDIM, DDPM, LCM): the training schedule, and `thresholding` off (not implemented).
pub(crate) fn validate_unthresholded(betas: &BetaConfig, thresholding: bool) -> Result<()> {
    betas.validate()?;
    ensure(!thresholding, FILE, "thresholding", thresholding)
}

pub(crate) fn eps_or_v(p: PredictionType) -> bool {
    matches!(p, PredictionType::Epsilon | PredictionType::VPrediction)
}

/// A float that Python's json may have written as `Infinity` / `-Infinity` (turned into
/// strings by [`quote_non_finite`] before parsing).
pub(crate) fn number_or_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
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

/// The file as a JSON object (non-finite floats written by Python quoted).
pub fn json_value(text: &[u8]) -> Result<Value> {
    from_json(FILE, &quote_non_finite(text))
}

/// The keys of a scheduler file that carry over to another class (`from_config`): every key
/// the file set, less the `_`-prefixed bookkeeping, with `overrides` (a JSON object) on top.
pub(crate) fn carried_keys(file: &Value, overrides: &Value) -> Result<Map<String, Value>> {
    let mut map: Map<String, Value> = match file {
        Value::Object(m) => m.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => return Err(Error::InvalidConfig { file: FILE.into(), reason: "not a JSON object".into() }),
    };
    if let Value::Object(o) = overrides {
        map.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok(map)
}

/// One config struct from the file's JSON, errors naming the file.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::InvalidConfig { file: FILE.into(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::super::SchedulerConfig;
    use super::*;

    /// A flattened `BetaConfig` takes its keys from the top level of the file, and the
    /// defaults of the config it sits in for the keys the file leaves out.
    #[test]
    fn beta_config_defaults_are_the_configs() {
        let parse = |text: &str| SchedulerConfig::from_json(text.as_bytes()).unwrap();
        let SchedulerConfig::Lcm(lcm) = parse(r#"{"_class_name": "LCMScheduler"}"#) else { panic!("LCM") };
        assert_eq!(lcm.betas, BetaConfig::SCALED_LINEAR);
        let SchedulerConfig::Lcm(lcm) = parse(r#"{"_class_name": "LCMScheduler", "beta_end": 0.02, "timestep_scaling": 5.0}"#)
        else {
            panic!("LCM")
        };
        assert_eq!(lcm.betas, BetaConfig { beta_end: 0.02, ..BetaConfig::SCALED_LINEAR });
        assert_eq!(lcm.timestep_scaling, 5.0);
        let SchedulerConfig::Ddim(ddim) = parse(r#"{"_class_name": "DDIMScheduler", "num_train_timesteps": 500}"#) else {
            panic!("DDIM")
        };
        assert_eq!(ddim.betas, BetaConfig { num_train_timesteps: 500, ..BetaConfig::LINEAR });
        let e = SchedulerConfig::from_json(br#"{"_class_name": "LCMScheduler", "beta_schedule": "cubic"}"#).unwrap_err();
        assert!(e.to_string().contains("unsupported value \"cubic\" for `beta_schedule`"), "{e}");
    }
}
