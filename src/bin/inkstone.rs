//! The native CLI. Its flags are a contract other tools depend on: keep them exactly.
//!
//! ```text
//! inkstone generate --model DIR --prompt TEXT [--negative-prompt TEXT] [--steps N] [--guidance G]
//!                   [--seed S] [--width W] [--height H] [--latents FILE] [--out FILE.png]
//!                   [--out-tensor FILE.safetensors] [--dtype f32|f16] [--scheduler NAME]
//!                   [--timesteps T,T,...] [--sigmas S,S,...] [--init-image FILE --strength S]
//!                   [--lora FILE[:SCALE]]...
//! inkstone info --model DIR
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{DType, Device};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use inkstone::limits::DeviceLimits;
use inkstone::lora::LoraFile;
use inkstone::pipeline::{GenerateOptions, Pipeline};
use inkstone::source::DirSource;
use inkstone::weights::{SafetensorsFile, StoredDtype, to_f32};
use inkstone::{Error, Result};

#[derive(Parser)]
#[command(name = "inkstone", version, about = "Text-to-image with diffusers-format models, on your own machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of `GenerateArgs` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Generate an image from a prompt.
    Generate(GenerateArgs),
    /// Print a model folder's components, classes, parameter counts and dtypes.
    Info {
        /// A diffusers-format model folder (model_index.json + component folders).
        #[arg(long)]
        model: PathBuf,
    },
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// A diffusers-format model folder (model_index.json + component folders).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Used for the unconditional branch of classifier-free guidance (default: empty).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Denoising steps (default: the scheduler kind's usual count).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; <= 1 disables CFG (default: per scheduler kind).
    #[arg(long, value_parser = finite_f32)]
    guidance: Option<f32>,
    /// RNG seed for the initial latents (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Image width in pixels, a multiple of the decoder's scale factor (default: the model's).
    #[arg(long)]
    width: Option<usize>,
    /// Image height in pixels (default: the model's).
    #[arg(long)]
    height: Option<usize>,
    /// safetensors file with tensor `latents` (f32, [1, C, H/f, W/f]) used instead of the RNG
    /// (with --init-image: the noise added to the encoded image).
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Output PNG (default: inkstone-<seed>.png unless --out-tensor is given).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Writes tensor `image` (f32, [1, 3, H, W], values in [0, 1]) like diffusers' output_type="pt".
    #[arg(long)]
    out_tensor: Option<PathBuf>,
    /// Float type of weights and activations: f16 halves the memory (the browser's choice on
    /// GPUs with shader-f16); latents and the sampler stay f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    /// Sampler instead of the model's own, built from the model's scheduler config like
    /// diffusers' from_config: euler, euler-a, dpm++2m, dpm++2m-karras, dpm++2m-sde,
    /// dpm++2m-sde-karras, ddim, pndm, lcm, ddpm, flow-euler (flow-matching models only).
    #[arg(long)]
    scheduler: Option<String>,
    /// Explicit timesteps, descending (e.g. 999 for one-step SDXS, 999,749,499,249 for DMD2);
    /// for the samplers whose diffusers set_timesteps takes them (euler, lcm, ddpm, dpm++2m,
    /// flow-euler). --steps may be omitted.
    #[arg(long, value_delimiter = ',', value_parser = finite_f64, conflicts_with = "sigmas")]
    timesteps: Option<Vec<f64>>,
    /// Explicit noise levels, descending: for euler the final one included (14.6,3,0 is two
    /// steps), for flow-euler one per step (shifted like the model's own schedule).
    #[arg(long, value_delimiter = ',', value_parser = finite_f64)]
    sigmas: Option<Vec<f64>>,
    /// Image-to-image: a PNG or JPEG to start from (grayscale copied to RGB, alpha dropped).
    /// Default size: the image's, rounded down to a multiple of the scale factor; an image of
    /// another size than --width/--height is resized (nearest), with a warning.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// With --init-image: how much of the schedule runs, in (0, 1] (diffusers' strength;
    /// default 0.8): int(steps x strength) steps.
    #[arg(long, value_parser = finite_f64, requires = "init_image")]
    strength: Option<f64>,
    /// A LoRA adapter (.safetensors: diffusers/PEFT or kohya/A1111 keys, LCM-LoRA included)
    /// fused into the U-Net and text encoder at load, with its scale (default 1); repeatable.
    #[arg(long = "lora", value_name = "FILE[:SCALE]", value_parser = lora_spec)]
    loras: Vec<(PathBuf, f32)>,
}

/// `FILE[:SCALE]`: the text after the last `:` is the scale when it is a finite number (so a
/// path with a colon still works without one).
fn lora_spec(s: &str) -> std::result::Result<(PathBuf, f32), String> {
    if let Some((file, scale)) = s.rsplit_once(':')
        && let Ok(v) = scale.trim().parse::<f32>()
    {
        return if v.is_finite() { Ok((PathBuf::from(file), v)) } else { Err(format!("scale {v} is not a finite number")) };
    }
    Ok((PathBuf::from(s), 1.0))
}

fn finite_f32(s: &str) -> std::result::Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not a finite number")),
        Err(e) => Err(e.to_string()),
    }
}

fn finite_f64(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not a finite number")),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Precision {
    F32,
    F16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Info { model } => info(&model),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The device to run on and the limits it was granted (the CPU has none).
fn device() -> (Device, DeviceLimits) {
    #[cfg(feature = "wgpu")]
    if std::env::var("INKSTONE_DEVICE").as_deref() == Ok("wgpu") {
        // With its limits: tensors over the binding limit are used in pieces.
        return inkstone::limits::wgpu_device().unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        });
    }
    (Device::flex(), DeviceLimits::NONE)
}

fn generate(args: GenerateArgs) -> Result<()> {
    let (device, limits) = device();
    let src = DirSource::new(&args.model)?;
    let t0 = Instant::now();
    let dtype = match args.dtype {
        Precision::F32 => DType::F32,
        Precision::F16 => DType::F16,
    };
    // Read and checked before the model: a missing or corrupt adapter fails at once.
    let loras = args
        .loras
        .iter()
        .map(|(path, scale)| {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            Ok((std::sync::Arc::new(LoraFile::from_bytes(path.display().to_string(), bytes)?), *scale))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut pipe = Pipeline::load_with(&src, &device, dtype, limits)?;
    eprintln!("loaded {} ({dtype:?}) in {:.1}s", args.model.display(), t0.elapsed().as_secs_f64());
    if !loras.is_empty() {
        for l in pipe.set_loras(&loras)? {
            eprintln!(
                "lora {} ({}, scale {}): {} U-Net and {} text-encoder modules",
                l.file, l.format, l.scale, l.unet_modules, l.text_encoder_modules
            );
        }
    }

    let f = pipe.vae.pixels_per_latent();
    let latents = args.latents.as_deref().map(read_latents).transpose()?;
    let init_image = args.init_image.as_deref().map(read_init_image).transpose()?;
    let (default_w, default_h) = match (&latents, &init_image) {
        (Some((_, shape)), _) => (shape[3] * f, shape[2] * f),
        (None, Some(image)) => image.default_size(f),
        (None, None) => pipe.default_size(),
    };
    let seed = args.seed.unwrap_or_else(random_seed);
    let opts = GenerateOptions {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        steps: args.steps,
        guidance: args.guidance,
        seed,
        width: args.width.unwrap_or(default_w),
        height: args.height.unwrap_or(default_h),
        latents: latents.map(|(values, _)| values),
        scheduler: args.scheduler,
        timesteps: args.timesteps,
        sigmas: args.sigmas,
        init_image,
        strength: args.strength.unwrap_or(inkstone::img2img::DEFAULT_STRENGTH),
    };

    let t1 = Instant::now();
    let mut run = pipe.start(&opts)?;
    eprintln!("sampler {}, {} steps", run.scheduler().class_name(), run.total_steps());
    for w in run.warnings() {
        eprintln!("warning: {w}");
    }
    let bar = ProgressBar::new(run.total_steps() as u64).with_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    while !run.is_done() {
        run.step()?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let image = run.decode_checked()?;
    let [_, _, h, w] = image.dims();
    let pixels = image
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::InvalidArgument(format!("reading the image back: {e:?}")))?;
    eprintln!("generated {w}x{h} in {:.1}s (seed {seed})", t1.elapsed().as_secs_f64());

    if let Some(path) = &args.out_tensor {
        write_image_tensor(path, &pixels, w, h)?;
        eprintln!("wrote {}", path.display());
    }
    let png_path = match (&args.out, &args.out_tensor) {
        (Some(p), _) => Some(p.clone()),
        (None, None) => Some(PathBuf::from(format!("inkstone-{seed}.png"))),
        (None, Some(_)) => None,
    };
    if let Some(path) = png_path {
        let png = inkstone::image::encode_png(&pixels, w, h)?;
        std::fs::write(&path, png).map_err(|e| Error::io(&path, e))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Reads `latents` (f32, rank 4, batch 1) from a safetensors file.
fn read_latents(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = SafetensorsFile::from_bytes(name.clone(), bytes)?;
    let info = file
        .header
        .tensors
        .get("latents")
        .ok_or_else(|| Error::MissingTensor { file: name.clone(), key: "latents".into() })?;
    if info.dtype != StoredDtype::F32 {
        return Err(Error::UnsupportedDtype { file: name, key: "latents".into(), dtype: info.dtype.name().into() });
    }
    if info.shape.len() != 4 || info.shape[0] != 1 {
        return Err(Error::InvalidArgument(format!(
            "{name}: tensor `latents` has shape {:?}, expected [1, C, H/f, W/f]",
            info.shape
        )));
    }
    Ok((to_f32(&name, "latents", info.dtype, file.raw(info))?, info.shape.clone()))
}

/// Reads and decodes a PNG or JPEG init image.
fn read_init_image(path: &Path) -> Result<inkstone::img2img::InitImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    inkstone::image::decode_init_image(&path.display().to_string(), &bytes)
}

fn write_image_tensor(path: &Path, pixels: &[f32], w: usize, h: usize) -> Result<()> {
    let bytes: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 3, h, w], &bytes)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
    safetensors::serialize_to_file([("image", view)], None, path)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) >> 1
}

fn info(model: &Path) -> Result<()> {
    let src = DirSource::new(model)?;
    let (index, components) = inkstone::info::inspect(&src)?;
    println!("{} ({})", model.display(), index.class_name);
    for c in components {
        let params = if c.files.is_empty() { String::new() } else { format!("{:>14} params", group_digits(c.parameters)) };
        let dtypes: Vec<String> = c.dtypes.keys().cloned().collect();
        println!("  {:<14} {:<34} {params}  {}", c.name, format!("{}.{}", c.library, c.class_name), dtypes.join("+"));
    }
    Ok(())
}

fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
