//! U-Net forward time, achieved GFLOP/s (analytic count, benches/flops.rs) and peak memory,
//! batch 1, 64×64 latent (512×512 images), for the tiny-sd fixture U-Net and a full-size
//! random-weight config of 0.45B parameters (3 levels 320/640/1280, 2 layers per block,
//! cross_attention_dim 768); and the same runs of diffusers on PyTorch when the reference venv
//! exists, with the time ratio. On the CPU backend (burn `flex`) by default; built with
//! `--features wgpu` on the GPU through wgpu (lavapipe on a machine without one), where it also
//! prints the GPU memory burn's allocator reserved. `INKSTONE_DEVICE=cpu` forces the CPU.
//!
//! `scripts/bench.sh [fixture|full]` (shares the test build). Each case runs in a child process
//! (this binary again) so that its peak memory (VmHWM) is its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use inkstone::config::{DownBlockType, OneOrMany, UNet2DConditionConfig, UpBlockType};
use inkstone::source::{DirSource, load_weights};
use inkstone::unet::UNet2DConditionModel;
use inkstone::weights::Weights;

mod flops;
mod random_weights;

const LATENT: usize = 64;
const SEQ: usize = 77;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The full-size config: SD 1.x blocks at three levels, mid block kept (0.45B parameters).
fn full_config() -> UNet2DConditionConfig {
    use DownBlockType::{CrossAttnDownBlock2D, DownBlock2D};
    use UpBlockType::{CrossAttnUpBlock2D, UpBlock2D};
    UNet2DConditionConfig {
        sample_size: Some(OneOrMany::One(64)),
        down_block_types: vec![CrossAttnDownBlock2D, CrossAttnDownBlock2D, DownBlock2D],
        up_block_types: vec![UpBlock2D, CrossAttnUpBlock2D, CrossAttnUpBlock2D],
        block_out_channels: vec![320, 640, 1280],
        layers_per_block: OneOrMany::One(2),
        cross_attention_dim: OneOrMany::One(768),
        attention_head_dim: OneOrMany::One(8),
        ..Default::default()
    }
}

/// Peak resident set size of this process so far, in MiB.
fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn params(weights: &Weights) -> usize {
    weights.keys().filter_map(|k| weights.shape(k)).map(|s| s.iter().product::<usize>()).sum()
}

/// The GPU (wgpu) when built with it, unless `INKSTONE_DEVICE=cpu`; the CPU backend otherwise.
fn bench_device() -> (Device, &'static str) {
    #[cfg(feature = "wgpu")]
    if std::env::var("INKSTONE_DEVICE").as_deref() != Ok("cpu") {
        return (Device::wgpu(Default::default()), "wgpu");
    }
    (Device::flex(), "cpu")
}

/// Child mode: loads one case, runs `warmup + runs` forwards, prints one `RESULT` line.
fn run_case(case: &str) {
    let (device, _) = bench_device();
    let t0 = Instant::now();
    let (unet, n_params) = match case {
        "fixture" => {
            let src = DirSource::new(root().join("tests/fixtures/tiny-sd")).unwrap();
            let unet = UNet2DConditionModel::from_source(&src, "unet", &device, burn::tensor::DType::F32).unwrap();
            (unet, params(&load_weights(&src, "unet", &device).unwrap()))
        }
        "full" => {
            let weights = random_weights::random_weights("random unet", 0, &device);
            let unet = UNet2DConditionModel::load(&weights, &full_config()).unwrap();
            (unet, 0)
        }
        other => panic!("unknown case {other}"),
    };
    let load_s = t0.elapsed().as_secs_f64();
    let load_hwm = vm_hwm_mib();
    let cfg = unet.config();
    let (runs, warmup) = if case == "full" { (2, 1) } else { (5, 1) };
    let cross = match &cfg.cross_attention_dim {
        OneOrMany::One(d) => *d,
        OneOrMany::Many(v) => v[0],
    };
    let sample = Tensor::<4>::random([1, cfg.in_channels, LATENT, LATENT], Distribution::Normal(0.0, 1.0), &device);
    let ehs = Tensor::<3>::random([1, SEQ, cross], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1>::from_floats([500.0f32], &device);
    let (mut times, mut first) = (Vec::new(), Vec::new());
    let mut finite = true;
    for i in 0..warmup + runs {
        let start = Instant::now();
        let out = unet.forward(sample.clone(), t.clone(), ehs.clone(), None);
        let values = out.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let elapsed = start.elapsed().as_secs_f64();
        finite &= values.iter().all(|v| v.is_finite());
        if i >= warmup { times.push(elapsed) } else { first.push(elapsed) }
    }
    let params = if n_params > 0 { format!("{n_params}") } else { "null".into() };
    let gflop = flops::unet_flops(cfg, LATENT, SEQ) / 1e9;
    // What burn's GPU allocator holds after the runs: its pages only grow, so this is the peak.
    let gpu = device.memory_pool_usage().map_or("null".into(), |u| format!("{:.0}", u.bytes_reserved as f64 / (1 << 20) as f64));
    println!(
        "RESULT {{\"load_s\": {load_s:.3}, \"forward_s\": {times:?}, \"first_s\": {first:?}, \"load_hwm_mib\": {load_hwm:.0}, \"hwm_mib\": {:.0}, \"gpu_pool_mib\": {gpu}, \"gflop\": {gflop:.2}, \"finite\": {finite}, \"params\": {params}}}",
        vm_hwm_mib()
    );
}

#[derive(Debug)]
struct Measured {
    forward_s: Vec<f64>,
    /// The warm-up forwards: pipeline compilation (and autotune's benchmarks, with that feature).
    first_s: Vec<f64>,
    load_s: f64,
    load_hwm_mib: f64,
    hwm_mib: f64,
    gflop: f64,
    extra: String,
}

fn parse(stdout: &str) -> Option<Measured> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT "))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let extra = v
        .as_object()?
        .iter()
        .filter(|(k, _)| !k.ends_with("_s") && !k.ends_with("_mib") && *k != "gflop")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    Some(Measured {
        forward_s: v["forward_s"].as_array()?.iter().filter_map(|x| x.as_f64()).collect(),
        first_s: v["first_s"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(|x| x.as_f64()).collect()),
        load_s: num("load_s"),
        load_hwm_mib: num("load_hwm_mib"),
        hwm_mib: num("hwm_mib"),
        gflop: num("gflop"),
        extra: match v["gpu_pool_mib"].as_f64() {
            Some(mib) => format!("GPU pool {mib:.0} MiB | {extra}"),
            None => extra,
        },
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}

fn report(who: &str, case: &str, m: &Measured) {
    println!(
        "  {who:<8} {case:<8} forward median {:>8.3} s (runs {:?}; first {:?}), {:.1} GFLOP/s of {:.1} GFLOP | load {:.2} s | peak RSS {:.0} MiB after load, {:.0} MiB after forward | {}",
        median(&m.forward_s),
        m.forward_s.iter().map(|t| (t * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        m.first_s.iter().map(|t| (t * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        m.gflop / median(&m.forward_s),
        m.gflop,
        m.load_s,
        m.load_hwm_mib,
        m.hwm_mib,
        m.extra
    );
}

fn spawn(cmd: &mut Command) -> Option<Measured> {
    let out = cmd.output().ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = parse(&stdout);
    if parsed.is_none() {
        eprintln!("  child failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    parsed
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        run_case(&args[i + 1]);
        return;
    }
    let wanted: Vec<&str> = args.iter().map(String::as_str).filter(|a| matches!(*a, "fixture" | "full")).collect();
    let cases: Vec<&str> = if wanted.is_empty() { vec!["fixture", "full"] } else { wanted };

    let venv = std::env::var("INKSTONE_REF_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/inkstone-ref-venv"));
    let python = venv.join("bin/python");
    let script = root().join("tools/reference/bench_unet.py");
    let torch = python.exists() && script.exists();
    let config_file = std::env::temp_dir().join(format!("inkstone-bench-unet-{}.json", std::process::id()));
    std::fs::write(&config_file, serde_json::to_string_pretty(&full_config()).unwrap()).unwrap();

    println!(
        "U-Net forward, batch 1, {LATENT}×{LATENT} latent, {SEQ} text tokens, f32, on {} ({} CPU threads available)",
        bench_device().1,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let exe = std::env::current_exe().unwrap();
    for case in cases {
        let ours = spawn(Command::new(&exe).args(["--case", case]));
        if let Some(m) = &ours {
            report("burn", case, m);
        }
        if !torch {
            println!("  (no reference venv at {}: PyTorch run skipped)", venv.display());
            continue;
        }
        let mut theirs = spawn(
            Command::new(&python)
                .arg(&script)
                .arg(case)
                .arg(&config_file)
                .current_dir(root())
                .env("PYTHONWARNINGS", "ignore"),
        );
        if let Some(m) = &mut theirs {
            // The same model, the same FLOPs (the Python side does not count them).
            m.gflop = ours.as_ref().map_or(f64::NAN, |o| o.gflop);
            report("pytorch", case, m);
        }
        if let (Some(a), Some(b)) = (&ours, &theirs) {
            println!(
                "  {case}: burn / pytorch forward time ratio {:.2}×, peak memory ratio {:.2}×",
                median(&a.forward_s) / median(&b.forward_s),
                a.hwm_mib / b.hwm_mib
            );
        }
    }
    let _ = std::fs::remove_file(Path::new(&config_file));
}
