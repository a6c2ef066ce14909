//! Samplers by the names users pick them by (`--scheduler dpm++2m-karras`, `generate({
//! scheduler })`), built from the model's own scheduler config the way diffusers'
//! `Class.from_config(pipe.scheduler.config, **overrides)` does: betas, prediction type,
//! spacing and offsets carry over; the name only fixes the class and its algorithm switches.

use serde_json::Value;

use crate::config::SchedulerConfig;
use crate::error::{Error, Result};

use super::Scheduler;

/// A named sampler (see [`Sampler::NAMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    Euler,
    EulerAncestral,
    DpmPp2m,
    DpmPp2mKarras,
    DpmPp2mSde,
    DpmPp2mSdeKarras,
    Ddim,
    Pndm,
    Lcm,
    Ddpm,
    FlowEuler,
}

impl Sampler {
    /// Every name, with what it means (for `--help`, the README and the page's picker).
    pub const NAMES: [(&'static str, &'static str); 11] = [
        ("euler", "EulerDiscreteScheduler"),
        ("euler-a", "EulerAncestralDiscreteScheduler (stochastic)"),
        ("dpm++2m", "DPMSolverMultistepScheduler, DPM-Solver++ order 2"),
        ("dpm++2m-karras", "DPMSolverMultistepScheduler, DPM-Solver++ order 2, Karras sigmas"),
        ("dpm++2m-sde", "DPMSolverMultistepScheduler, SDE-DPM-Solver++ order 2 (stochastic)"),
        ("dpm++2m-sde-karras", "DPMSolverMultistepScheduler, SDE-DPM-Solver++ order 2, Karras sigmas (stochastic)"),
        ("ddim", "DDIMScheduler (eta 0)"),
        ("pndm", "PNDMScheduler, PLMS (skip_prk_steps, as SD 1.x ships it)"),
        ("lcm", "LCMScheduler (stochastic)"),
        ("ddpm", "DDPMScheduler (stochastic)"),
        ("flow-euler", "FlowMatchEulerDiscreteScheduler (flow-matching models only)"),
    ];

    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "euler" => Self::Euler,
            "euler-a" => Self::EulerAncestral,
            "dpm++2m" => Self::DpmPp2m,
            "dpm++2m-karras" => Self::DpmPp2mKarras,
            "dpm++2m-sde" => Self::DpmPp2mSde,
            "dpm++2m-sde-karras" => Self::DpmPp2mSdeKarras,
            "ddim" => Self::Ddim,
            "pndm" => Self::Pndm,
            "lcm" => Self::Lcm,
            "ddpm" => Self::Ddpm,
            "flow-euler" => Self::FlowEuler,
            other => {
                let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
                return Err(Error::InvalidArgument(format!("unknown scheduler {other:?} (one of: {})", names.join(", "))));
            }
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize].0
    }

    /// The diffusers class and the config keys the name sets.
    fn class_and_overrides(self) -> (&'static str, Vec<(&'static str, Value)>) {
        let dpm = |algorithm: &str, karras: bool| {
            vec![
                ("algorithm_type", Value::from(algorithm)),
                ("solver_order", Value::from(2)),
                ("use_karras_sigmas", Value::from(karras)),
            ]
        };
        match self {
            Self::Euler => ("EulerDiscreteScheduler", vec![]),
            Self::EulerAncestral => ("EulerAncestralDiscreteScheduler", vec![]),
            Self::DpmPp2m => ("DPMSolverMultistepScheduler", dpm("dpmsolver++", false)),
            Self::DpmPp2mKarras => ("DPMSolverMultistepScheduler", dpm("dpmsolver++", true)),
            Self::DpmPp2mSde => ("DPMSolverMultistepScheduler", dpm("sde-dpmsolver++", false)),
            Self::DpmPp2mSdeKarras => ("DPMSolverMultistepScheduler", dpm("sde-dpmsolver++", true)),
            Self::Ddim => ("DDIMScheduler", vec![]),
            Self::Pndm => ("PNDMScheduler", vec![("skip_prk_steps", Value::from(true))]),
            Self::Lcm => ("LCMScheduler", vec![]),
            Self::Ddpm => ("DDPMScheduler", vec![]),
            Self::FlowEuler => ("FlowMatchEulerDiscreteScheduler", vec![]),
        }
    }

    /// The sampler's config, built from the model's scheduler file (`file`, as parsed by
    /// [`SchedulerConfig::json_value`]) whose class is `own`. Flow-matching models (velocity
    /// prediction on the rectified-flow path) and DDPM-family models (eps / v / x_0 on a
    /// variance-preserving schedule) cannot swap samplers across the two families: that
    /// combination is an error, not a wrong image.
    pub fn config(self, file: &Value, own: &SchedulerConfig) -> Result<SchedulerConfig> {
        let own_flow = matches!(own, SchedulerConfig::FlowMatchEulerDiscrete(_));
        let flow = self == Self::FlowEuler;
        if own_flow != flow {
            let why = if own_flow {
                "the model is flow-matching (FlowMatchEulerDiscreteScheduler); only flow-euler can sample it"
            } else {
                "flow-euler samples flow-matching models only; this model's scheduler is"
            };
            let tail = if own_flow { String::new() } else { format!(" {}", own.class_name()) };
            return Err(Error::InvalidArgument(format!("scheduler {:?}: {why}{tail}", self.name())));
        }
        let (class, overrides) = self.class_and_overrides();
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
