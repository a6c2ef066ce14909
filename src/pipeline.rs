//! prompt → image, with diffusers' `StableDiffusionPipeline` semantics.
//!
//! tokenize → encode (negative prompt or "" for the unconditional branch, batch order
//! [uncond, cond], CFG only when guidance > 1 and the U-Net has no guidance embedding) →
//! initial latents (seeded, or given) × `init_noise_sigma` → denoising loop → `latents /
//! scaling_factor (+ shift_factor)` → decode → `(x / 2 + 0.5).clamp(0, 1)`.
//!
//! Image-to-image (an `init_image`, diffusers' `StableDiffusionImg2ImgPipeline`): the image,
//! resized to the requested size if needed and mapped to [-1, 1], is encoded (KL: the
//! posterior's mode, `retrieve_latents(sample_mode="argmax")`), scaled like the latents
//! (`(z - shift_factor) · scaling_factor`), and noised with the sampler's own `add_noise` to
//! the first of the last `int(steps · strength)` steps, which then run as in text-to-image.
//!
//! Generation is step-wise ([`Generation::step`]) so that callers can report progress, show
//! previews and cancel between steps: the browser must yield to its event loop there.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{ModelIndex, SchedulerConfig};
use crate::error::{Error, Result};
use crate::folder;
use crate::img2img::{self, InitImage};
use crate::limits::DeviceLimits;
use crate::schedulers::{Sampler, Scheduler};
use crate::source::ModelSource;
use crate::text::{PromptTokenizer, TextEncoder};
use crate::unet::{EncoderStates, UNet2DConditionModel, guidance_scale_embedding};
use crate::vae::Autoencoder;

/// Latent side of the warm-up generation ([`Pipeline::warm_up_size`]): 8 keeps every level of
/// a four-level U-Net at least one pixel wide, as at full size.
pub const WARM_UP_LATENT_SIDE: usize = 8;

/// What to generate. `None` steps/guidance take the scheduler kind's defaults.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    /// Initial latents `[1, C, H/f, W/f]` row-major, used instead of the RNG (diffusers'
    /// `latents=`; still multiplied by `init_noise_sigma`).
    pub latents: Option<Vec<f32>>,
    /// A sampler name ([`Sampler::NAMES`]) used instead of the model's own, built from the
    /// model's scheduler config like diffusers' `from_config`.
    pub scheduler: Option<String>,
    /// Explicit timesteps (diffusers' `timesteps=`), for the samplers that take them; `steps`
    /// may then be omitted.
    pub timesteps: Option<Vec<f64>>,
    /// Explicit noise levels (diffusers' `sigmas=`), for Euler and flow-match.
    pub sigmas: Option<Vec<f64>>,
    /// Image-to-image: the picture to start from. `latents` is then the noise added to it
    /// (`[1, C, H/f, W/f]`), not the initial latents.
    pub init_image: Option<InitImage>,
    /// How much of the schedule img2img runs, in (0, 1] (diffusers' `strength`); ignored
    /// without `init_image`.
    pub strength: f64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: None,
            guidance: None,
            seed: 0,
            width: 512,
            height: 512,
            latents: None,
            scheduler: None,
            timesteps: None,
            sigmas: None,
            init_image: None,
            strength: img2img::DEFAULT_STRENGTH,
        }
    }
}

/// A loaded diffusers-format text-to-image model.
pub struct Pipeline {
    pub index: ModelIndex,
    pub tokenizer: PromptTokenizer,
    pub text_encoder: TextEncoder,
    pub unet: UNet2DConditionModel,
    pub vae: Autoencoder,
    pub scheduler_config: SchedulerConfig,
    /// `scheduler/scheduler_config.json` as written, what a sampler override is built from.
    pub scheduler_file: serde_json::Value,
    device: Device,
    dtype: DType,
    /// The U-Net's and text encoder's tensors and the fused adapters ([`crate::lora`]).
    pub(crate) lora: crate::lora::LoraState,
}

impl Pipeline {
    /// Loads every component named by `model_index.json` in f32 onto a device without binding
    /// limits (the CPU), validating configs and weight coverage.
    pub fn load(src: &dyn ModelSource, device: &Device) -> Result<Self> {
        Self::load_with_dtype(src, device, DType::F32)
    }

    /// [`Pipeline::load_with`] onto a device without binding limits (the CPU).
    pub fn load_with_dtype(src: &dyn ModelSource, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(src, device, dtype, DeviceLimits::NONE)
    }

    /// [`Pipeline::load`] with the weights and activations of every component in `dtype`: F32,
    /// or F16 on devices that compute in half precision (WebGPU `shader-f16`), which halves
    /// the memory. Latents, the sampler and the attention softmax of text towers stay in f32;
    /// norms compute their statistics in f32. `limits` are what `device` was granted (by the
    /// shell that made it): weights and activations that would outgrow one binding are used in
    /// pieces and blocks.
    pub fn load_with(src: &dyn ModelSource, device: &Device, dtype: DType, limits: DeviceLimits) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F16) {
            return Err(Error::InvalidArgument(format!("dtype {dtype:?}: expected F32 or F16")));
        }
        if !device.supports_dtype(dtype) {
            return Err(Error::InvalidArgument(format!("this device cannot compute in {dtype:?}")));
        }
        let index = folder::read_index(src)?;
        // Keeps the adapted components' tensors for LoRA fusion (shared with the models).
        let keep = crate::lora::fuse::Keep::new(src, limits);
        let src: &dyn ModelSource = &keep;
        let tokenizer = PromptTokenizer::load(src, "tokenizer")?;
        let text_encoder = TextEncoder::load(src, "text_encoder", device, dtype)?;
        // Padding to model_max_length must stay inside the position table (a tokenizer config
        // can claim any length; past the table there is no position to embed).
        if tokenizer.max_length() > text_encoder.max_positions() {
            return Err(Error::UnsupportedConfig {
                file: "tokenizer/tokenizer_config.json".into(),
                field: "model_max_length".into(),
                value: tokenizer.max_length().to_string(),
                hint: Some(format!("the text encoder embeds at most {} positions", text_encoder.max_positions())),
            });
        }
        let unet = UNet2DConditionModel::from_source(src, "unet", device, dtype)?;
        let vae = Autoencoder::load(src, "vae", device, dtype)?;
        let scheduler_text = src.read(folder::SCHEDULER_CONFIG)?;
        let scheduler_config = SchedulerConfig::from_json(&scheduler_text)?;
        let scheduler_file = SchedulerConfig::json_value(&scheduler_text)?;
        let lora = keep.into_state()?;
        Ok(Self {
            index,
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler_config,
            scheduler_file,
            device: device.clone(),
            dtype,
            lora,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The float dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// (width, height) diffusers uses when none is given: `unet.sample_size × scale factor`.
    pub fn default_size(&self) -> (usize, usize) {
        use crate::config::OneOrMany;
        let f = self.vae.pixels_per_latent();
        match &self.unet.config().sample_size {
            Some(OneOrMany::One(s)) => (s * f, s * f),
            Some(OneOrMany::Many(v)) if v.len() == 2 => (v[1] * f, v[0] * f),
            _ => (512, 512),
        }
    }

    /// (width, height) of the browser's warm-up generation (pkg/worker.js): the default size,
    /// capped at [`WARM_UP_LATENT_SIDE`] latent pixels a side. The warm-up exists to compile the
    /// GPU pipelines before the first image; nearly all of them are the same at any size (shapes
    /// are kernel arguments), so a 512² model warms up at 64² for ~1/64 of an image's work and
    /// its first image compiles only the few kernels picked by extent (docs/performance.md).
    pub fn warm_up_size(&self) -> (usize, usize) {
        let cap = WARM_UP_LATENT_SIDE * self.vae.pixels_per_latent();
        let (w, h) = self.default_size();
        (w.min(cap), h.min(cap))
    }

    /// A fresh scheduler for this model, with its default step count and guidance.
    pub fn scheduler(&self) -> Scheduler {
        Scheduler::new(&self.scheduler_config)
    }

    /// The named sampler built from this model's scheduler config, or the model's own.
    pub fn scheduler_named(&self, name: Option<&str>) -> Result<Scheduler> {
        match name {
            Some(name) => Sampler::parse(name)?.build(&self.scheduler_file, &self.scheduler_config),
            None => Ok(self.scheduler()),
        }
    }

    /// What [`Pipeline::start`] checks before any model runs: the size, the sampler and its
    /// schedule, and img2img's strength and step count (not whether the encoder is there: the
    /// browser uploads it after this check, so a refused call uploads nothing).
    pub fn check(&self, opts: &GenerateOptions) -> Result<()> {
        self.plan(opts).map(|_| ())
    }

    /// The checks of [`Pipeline::check`]; returns the sampler with its schedule set, the
    /// guidance scale and the first step to run (img2img's `t_start`, else 0).
    fn plan(&self, opts: &GenerateOptions) -> Result<(Scheduler, f32, usize)> {
        let f = self.vae.pixels_per_latent();
        for (name, v) in [("width", opts.width), ("height", opts.height)] {
            if v == 0 || v % f != 0 {
                return Err(Error::InvalidArgument(format!(
                    "{name} {v} is not a positive multiple of {f} (the decoder's scale factor)"
                )));
            }
        }
        self.vae.check_fits(opts.height / f, opts.width / f)?;
        let mut scheduler = self.scheduler_named(opts.scheduler.as_deref())?;
        let (default_steps, default_guidance) = scheduler.default_steps_and_guidance();
        let guidance = opts.guidance.unwrap_or(default_guidance);
        if !guidance.is_finite() {
            return Err(Error::InvalidArgument(format!("guidance must be a finite number, got {guidance}")));
        }
        if opts.steps == Some(0) {
            return Err(Error::InvalidArgument("steps must be at least 1".into()));
        }
        let steps = opts.steps.unwrap_or(default_steps);
        set_schedule(&mut scheduler, steps, opts)?;
        let first = match &opts.init_image {
            // diffusers counts given timesteps/sigmas as the step count (`retrieve_timesteps`).
            Some(_) if opts.timesteps.is_some() || opts.sigmas.is_some() => {
                img2img::start_step(scheduler.timesteps().len(), opts.strength)?
            }
            Some(_) => img2img::start_step(steps, opts.strength)?,
            None => 0,
        };
        Ok((scheduler, guidance, first))
    }

    /// Validates the options, encodes the prompts and prepares the initial latents (img2img:
    /// the noised, encoded init image).
    pub fn start(&self, opts: &GenerateOptions) -> Result<Generation<'_>> {
        let f = self.vae.pixels_per_latent();
        let (mut scheduler, guidance, first) = self.plan(opts)?;
        if opts.init_image.is_some() && !self.vae.has_encoder() {
            return Err(Error::InvalidArgument(
                "image-to-image needs the vae's encoder, and this model's vae/ has no encoder weights \
                 (encoder.* tensors, or taesd_encoder.safetensors next to an original-layout decoder); \
                 text-to-image still works"
                    .into(),
            ));
        }

        let mut warnings = Vec::new();
        let cond_dim = self.unet.config().time_cond_proj_dim;
        let cfg = guidance > 1.0 && cond_dim.is_none();
        let embeds = if cfg {
            self.encode(&[opts.negative_prompt.as_str(), opts.prompt.as_str()], &mut warnings)?
        } else {
            self.encode(&[opts.prompt.as_str()], &mut warnings)?
        };
        let timestep_cond =
            cond_dim.map(|d| guidance_scale_embedding(&[guidance - 1.0], d, &self.device));

        let shape = [1, self.unet.config().in_channels, opts.height / f, opts.width / f];
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let latents = match &opts.latents {
            Some(values) => {
                let n: usize = shape.iter().product();
                if values.len() != n {
                    return Err(Error::InvalidArgument(format!(
                        "latents have {} values, expected {n} for shape {shape:?}",
                        values.len()
                    )));
                }
                Tensor::from_data(TensorData::new(values.clone(), shape), &self.device)
            }
            None => gaussian(&mut rng, shape, &self.device),
        };
        let latents = match &opts.init_image {
            Some(image) => {
                scheduler.set_begin_index(first);
                let init = self.encode_image(image, opts.width, opts.height, &mut warnings)?;
                scheduler.add_noise(init, latents, first)
            }
            None => latents * scheduler.init_noise_sigma(),
        };
        Ok(Generation {
            pipe: self,
            scheduler,
            latents,
            embeds: self.unet.encoder_states(embeds),
            timestep_cond,
            guidance,
            cfg,
            first,
            step: first,
            rng,
            warnings,
        })
    }

    /// Native convenience: runs all steps; `on_step(done, total)` returning false cancels.
    /// Returns the image `[1, 3, H, W]` in [0, 1].
    pub fn generate(&self, opts: &GenerateOptions, mut on_step: impl FnMut(usize, usize) -> bool) -> Result<Tensor<4>> {
        let mut run = self.start(opts)?;
        while !run.is_done() {
            run.step()?;
            if !on_step(run.current_step(), run.total_steps()) {
                return Err(Error::Cancelled);
            }
        }
        run.decode_checked()
    }

    /// Which component overflowed, when a generation's latents or decoded pixels are not all
    /// finite (the flags of [`Decoded`], read back by the caller: the browser reads them
    /// asynchronously). A NaN image is never returned as if it were a picture.
    pub fn check_finite(&self, latents_finite: bool, pixels_finite: bool) -> Result<()> {
        let (component, dtype) = match (latents_finite, pixels_finite) {
            (true, true) => return Ok(()),
            (false, _) => ("unet", self.dtype),
            (true, false) => ("vae", self.vae.dtype()),
        };
        let hint = if dtype == DType::F16 {
            "it ran in f16, whose range it exceeded: load the model in f32 (CLI --dtype f32, JS load(..., { dtype: 'f32' }))"
        } else {
            "it ran in f32: the weights or the settings (guidance, steps, sampler) make it diverge"
        };
        Err(Error::NonFinite { component: component.into(), hint: hint.into() })
    }

    /// After non-finite pixels from an f16 decoder, the f32 rerun's verdict.
    pub fn check_finite_after_rerun(&self, pixels_finite: bool) -> Result<()> {
        if pixels_finite {
            return Ok(());
        }
        Err(Error::NonFinite {
            component: "vae".into(),
            hint: "it overflowed in f16 and again when rerun in f32: the weights or the latents make it diverge".into(),
        })
    }

    /// Decodes `latents` with device-side finiteness flags; `f32_rerun` decodes with f32
    /// activations instead (after an f16 overflow; `None` where the decoder cannot).
    pub fn decode_flagged(&self, latents: Tensor<4>, f32_rerun: bool) -> Option<Decoded> {
        let z = self.unscale(latents.clone());
        let raw = if f32_rerun { self.vae.decode_f32(z)? } else { self.vae.decode(z) };
        Some(Decoded {
            latents_finite: all_finite(latents.clone()),
            pixels_finite: all_finite(raw.clone()),
            image: to_image(raw),
            latents,
        })
    }

    /// What a decode's flags (read back by the caller) mean: `Ok(None)`, the image stands;
    /// `Ok(Some(rerun))`, the decoder overflowed in f16 and `rerun` is its f32 decode (whose
    /// own pixel flag goes to [`Pipeline::check_finite_after_rerun`]); `Err`, the component
    /// that overflowed. The one place this rule lives, for the native and the browser shells.
    pub fn after_decode(&self, out: &Decoded, latents_finite: bool, pixels_finite: bool) -> Result<Option<Decoded>> {
        if latents_finite
            && !pixels_finite
            && let Some(rerun) = self.decode_flagged(out.latents.clone(), true)
        {
            return Ok(Some(rerun));
        }
        self.check_finite(latents_finite, pixels_finite)?;
        Ok(None)
    }

    /// Text embeddings `[prompts, seq, hidden]` for a batch of prompts.
    /// Prompts longer than the tokenizer's limit are cut as diffusers does, with a warning.
    fn encode(&self, prompts: &[&str], warnings: &mut Vec<String>) -> Result<Tensor<3>> {
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for p in prompts {
            let e = self.tokenizer.encode(p)?;
            if e.truncated > 0 {
                warnings.push(format!(
                    "the prompt is longer than the text encoder's {} tokens: its last {} tokens were dropped",
                    self.tokenizer.max_length(),
                    e.truncated
                ));
            }
            ids.extend(e.ids.iter().map(|&i| i as i64));
            mask.extend(e.attention_mask.iter().map(|&m| m as i64));
        }
        let shape = [prompts.len(), self.tokenizer.max_length()];
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), &self.device);
        let mask = Tensor::<2, Int>::from_data(TensorData::new(mask, shape), &self.device);
        Ok(self.text_encoder.encode(ids, mask))
    }

    /// The init image as clean latents `[1, C, h, w]`: resized to `width`×`height` when it has
    /// another size (with a warning), mapped to [-1, 1], encoded (KL: the posterior's mode),
    /// then `(z - shift_factor) · scaling_factor`.
    fn encode_image(&self, image: &InitImage, width: usize, height: usize, warnings: &mut Vec<String>) -> Result<Tensor<4>> {
        let image = if (image.width, image.height) != (width, height) {
            warnings.push(format!(
                "the init image is {}x{}: resized to {width}x{height} (nearest, as diffusers resizes tensor images)",
                image.width, image.height
            ));
            &image.resized(width, height)
        } else {
            image
        };
        let encoded = self.vae.encode(image.to_tensor(&self.device)).ok_or_else(|| {
            Error::InvalidArgument("image-to-image needs the vae's encoder, and this model's vae/ has none".into())
        })?;
        let z = encoded.mode().cast(DType::F32);
        Ok((z - self.vae.latent_shift_factor()) * self.vae.latent_scaling_factor())
    }

    /// `latents` → image in [0, 1].
    fn decode_latents(&self, latents: Tensor<4>) -> Tensor<4> {
        to_image(self.vae.decode(self.unscale(latents)))
    }

    /// Latents as the decoder takes them: `latents / scaling_factor + shift_factor`.
    fn unscale(&self, latents: Tensor<4>) -> Tensor<4> {
        latents / self.vae.latent_scaling_factor() + self.vae.latent_shift_factor()
    }
}

/// Sets the schedule: `steps` spaced timesteps, or the user's timesteps or sigmas (then `steps`,
/// if given, must agree with their count).
fn set_schedule(scheduler: &mut Scheduler, steps: usize, opts: &GenerateOptions) -> Result<()> {
    let agree = |n: usize, what: &str| match opts.steps {
        Some(s) if s != n => Err(Error::InvalidArgument(format!("steps {s} does not match the {n} steps of the given {what}"))),
        _ => Ok(()),
    };
    match (&opts.timesteps, &opts.sigmas) {
        (Some(_), Some(_)) => Err(Error::InvalidArgument("give timesteps or sigmas, not both".into())),
        (Some(ts), None) => {
            agree(ts.len(), "timesteps")?;
            scheduler.set_timesteps(ts.len(), Some(ts))
        }
        (None, Some(sigmas)) => {
            scheduler.set_sigmas(sigmas)?;
            agree(scheduler.timesteps().len(), "sigmas")
        }
        (None, None) => scheduler.set_timesteps(steps, None),
    }
}

/// Standard normal samples (Box–Muller on the seeded ChaCha stream): the same seed gives the
/// same latents natively and in the browser.
pub fn gaussian<const D: usize>(rng: &mut StdRng, shape: [usize; D], device: &Device) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let mut values = Vec::with_capacity(n + 1);
    while values.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln never sees 0
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        values.push((r * theta.cos()) as f32);
        values.push((r * theta.sin()) as f32);
    }
    values.truncate(n);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// One generation in progress.
pub struct Generation<'a> {
    pipe: &'a Pipeline,
    scheduler: Scheduler,
    latents: Tensor<4>,
    /// The prompt embeddings ([uncond, cond] under CFG), with the cross-attentions' keys and
    /// values once the first step has projected them.
    embeds: EncoderStates,
    timestep_cond: Option<Tensor<2>>,
    guidance: f32,
    cfg: bool,
    /// The first step run (img2img skips the noisiest ones; 0 otherwise).
    first: usize,
    /// The next step's index into the sampler's timesteps.
    step: usize,
    rng: StdRng,
    warnings: Vec<String>,
}

impl Generation<'_> {
    /// What the caller should tell the user (a prompt truncated to the tokenizer's limit).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The sampler this generation runs (the model's own or the chosen one).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The steps this generation runs (img2img: fewer than the sampler's timesteps).
    pub fn total_steps(&self) -> usize {
        self.scheduler.timesteps().len() - self.first
    }

    /// Steps done so far.
    pub fn current_step(&self) -> usize {
        self.step - self.first
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.scheduler.timesteps().len()
    }

    /// One denoising step (the U-Net runs once, on a doubled batch under CFG).
    pub fn step(&mut self) -> Result<()> {
        if self.is_done() {
            return Err(Error::InvalidArgument("generation already finished".into()));
        }
        let i = self.step;
        let t = self.scheduler.timesteps()[i];
        let batch = if self.cfg { 2 } else { 1 };
        let input = if self.cfg { Tensor::cat(vec![self.latents.clone(); 2], 0) } else { self.latents.clone() };
        let input = self.scheduler.scale_model_input(input, i);
        let timesteps = Tensor::<1>::full([batch], t as f32, self.pipe.device());
        let cond = self.timestep_cond.clone().map(|c| c.repeat_dim(0, batch));
        let out = self.pipe.unet.forward_with(input, timesteps, &self.embeds, cond);
        let out = if self.cfg {
            let mut halves = out.chunk(2, 0);
            let text = halves.pop().unwrap();
            let uncond = halves.pop().unwrap();
            uncond.clone() + (text - uncond) * self.guidance
        } else {
            out
        };
        let noise = self
            .scheduler
            .needs_noise(i)
            .then(|| gaussian(&mut self.rng, self.latents.dims(), self.pipe.device()));
        self.latents = self.scheduler.step(out, i, self.latents.clone(), noise);
        self.step += 1;
        Ok(())
    }

    /// The current latents.
    pub fn latents(&self) -> &Tensor<4> {
        &self.latents
    }

    /// A cheap preview `[1, 3, H, W]` in [0, 1] when the decoder is the tiny one (decoding with
    /// the full KL decoder every step would cost as much as the step itself).
    pub fn preview(&self) -> Option<Tensor<4>> {
        matches!(self.pipe.vae, Autoencoder::Tiny(_)).then(|| self.pipe.decode_latents(self.latents.clone()))
    }

    /// Decodes the final latents, with device-side flags saying whether the latents and the
    /// decoded pixels (before clamping, which would hide a NaN) are all finite.
    pub fn finish(self) -> Decoded {
        self.pipe.decode_flagged(self.latents, false).expect("the decoder's own dtype always decodes")
    }

    /// [`Generation::finish`] with the flags read back synchronously and checked (native
    /// callers; in wasm reads must be asynchronous, so the browser reads the flags itself).
    pub fn decode_checked(self) -> Result<Tensor<4>> {
        let pipe = self.pipe;
        let flag = |t: Tensor<1>| {
            let data = t.into_data().convert::<f32>();
            data.try_to_vec::<f32>().map(|v| v[0] > 0.5).map_err(|e| Error::InvalidArgument(format!("reading a flag back: {e:?}")))
        };
        let out = self.finish();
        let (latents_ok, pixels_ok) = (flag(out.latents_finite.clone())?, flag(out.pixels_finite.clone())?);
        match pipe.after_decode(&out, latents_ok, pixels_ok)? {
            None => Ok(out.image),
            Some(rerun) => {
                pipe.check_finite_after_rerun(flag(rerun.pixels_finite)?)?;
                Ok(rerun.image)
            }
        }
    }
}

/// The image of a finished generation and its finiteness flags (see [`Pipeline::check_finite`]).
pub struct Decoded {
    pub image: Tensor<4>,
    /// The final latents (for a rerun of the decoder in f32).
    pub latents: Tensor<4>,
    /// `[1.0]` when all finite, `[0.0]` otherwise (a float: bool storage differs by backend).
    pub latents_finite: Tensor<1>,
    pub pixels_finite: Tensor<1>,
}

/// Decoder output (about [-1, 1]) → image in [0, 1], as diffusers' postprocess.
fn to_image(raw: Tensor<4>) -> Tensor<4> {
    (raw.cast(DType::F32) / 2.0 + 0.5).clamp(0.0, 1.0)
}

/// `[1.0]` when no value of `t` is NaN or infinite; computed on the device (one tiny read-back).
fn all_finite<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    t.clone().is_nan().bool_or(t.is_inf()).any().bool_not().float()
}
