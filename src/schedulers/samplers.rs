//! Samplers by the names users pick them by (`--scheduler dpm++2m-karras`, `generate({
//! scheduler })`), built from the model's own scheduler config the way diffusers'
//! `Class.from_config(pipe.scheduler.config, **overrides)` does: betas, prediction type,
//! spacing and offsets carry over; the name only fixes the class and its algorithm switches.

use serde_json::Value;

use super::SchedulerConfig;
use crate::error::{Error, Result};

use super::Scheduler;

/// A named sampler: an entry of [`Sampler::NAMES`] (the table in `mod.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler(usize);

impl Sampler {
    pub fn parse(name: &str) -> Result<Self> {
        match Self::NAMES.iter().position(|(n, _)| *n == name) {
            Some(i) => Ok(Self(i)),
            None => {
                let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
                Err(Error::InvalidArgument(format!("unknown scheduler {name:?} (one of: {})", names.join(", "))))
            }
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self.0].0
    }

    pub(super) fn index(self) -> usize {
        self.0
    }

    /// The sampler's config, built from the model's scheduler file (`file`, as parsed by
    /// [`SchedulerConfig::json_value`]) whose class is `own`. Flow-matching models (velocity
    /// prediction on the rectified-flow path) and DDPM-family models (eps / v / x_0 on a
    /// variance-preserving schedule) cannot swap samplers across the two families: that
    /// combination is an error, not a wrong image.
    pub fn config(self, file: &Value, own: &SchedulerConfig) -> Result<SchedulerConfig> {
        let (class, flow, overrides) = self.class_and_overrides();
        let own_flow = own.is_flow();
        if own_flow != flow {
            let why = if own_flow {
                "the model is flow-matching (FlowMatchEulerDiscreteScheduler); only flow-euler can sample it"
            } else {
                "flow-euler samples flow-matching models only; this model's scheduler is"
            };
            let tail = if own_flow { String::new() } else { format!(" {}", own.class_name()) };
            return Err(Error::InvalidArgument(format!("scheduler {:?}: {why}{tail}", self.name())));
        }
        SchedulerConfig::from_config(file, class, &overrides)
    }

    /// [`Sampler::config`], built.
    pub fn build(self, file: &Value, own: &SchedulerConfig) -> Result<Scheduler> {
        Scheduler::try_new(&self.config(file, own)?)
    }
}

impl std::str::FromStr for Sampler {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}
