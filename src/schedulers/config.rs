//! What `scheduler/scheduler_config.json` files share: the common choices (prediction type,
//! spacing, beta schedule, final sigma), the checks every DDPM-indexed config makes, and the
//! JSON quirks of files written by Python. Each sampler's own config struct lives in its file;
//! [`SchedulerConfig`](super::SchedulerConfig), dispatched on `_class_name`, comes from the
//! table in `mod.rs`.

use serde::Deserialize;
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

/// A beta schedule given as values must have one per training timestep (and there must be some).
/// Far above any trained model (1000), far below an allocation that could fail.
pub(crate) const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

pub(crate) fn check_betas(num_train_timesteps: usize, trained_betas: &Option<Vec<f64>>) -> Result<()> {
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
