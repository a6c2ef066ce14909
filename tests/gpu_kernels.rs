//! Our GPU kernels (src/gpu) against the CPU path on the same inputs, at the shapes the model
//! family uses: flash attention at head dims 40/64/80/160 over 4,096 self-attention tokens and
//! 77 cross-attention tokens; GroupNorm (+SiLU) on NCHW and channels-last inputs, f32 and f16.
//! Needs a GPU build and device: `INKSTONE_DEVICE=wgpu cargo test --features wgpu --test
//! suite gpu_kernels::` (lavapipe on a machine without a GPU); not compiled on the CPU build.
#![cfg(feature = "wgpu")]

use crate::common;

use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use inkstone::limits::DeviceLimits;
use inkstone::nn::{GroupNorm, scaled_dot_product_attention};

fn gpu() -> Option<Device> {
    let device = common::device();
    if inkstone::gpu::on_gpu(&device) {
        Some(device)
    } else {
        eprintln!("gpu_kernels: INKSTONE_DEVICE is not wgpu; nothing to compare");
        None
    }
}

fn random<const D: usize>(shape: [usize; D], seed: u64) -> TensorData {
    let cpu = Device::flex();
    cpu.seed(seed);
    Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), &cpu).into_data()
}

fn max_diff(a: TensorData, b: TensorData) -> f32 {
    let (a, b) = (a.convert::<f32>().into_vec::<f32>().unwrap(), b.convert::<f32>().into_vec::<f32>().unwrap());
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn flash_attention_matches_the_cpu_at_the_family_head_dims() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex();
    // (batch, heads, query tokens, key tokens, head dim): SD-1.x levels at a 64² latent, the
    // cross-attention over 77 tokens, SD-2.x-style 64-wide heads, an odd token count.
    for (i, &(b, h, n, m, d)) in
        [(2, 8, 4096, 4096, 40), (2, 8, 4096, 77, 40), (1, 5, 1024, 77, 64), (2, 8, 1024, 1024, 80), (1, 8, 256, 77, 160), (1, 2, 99, 13, 64)]
            .iter()
            .enumerate()
    {
        let (q, k, v) = (random([b, n, h, d], 3 * i as u64), random([b, m, h, d], 3 * i as u64 + 1), random([b, m, h, d], 3 * i as u64 + 2));
        let scale = (d as f64).powf(-0.5);
        // Head-split views of token-major projections, as the models pass them.
        let run = |device: &Device| {
            let t = |x: &TensorData| Tensor::<4>::from_data(x.clone(), device).swap_dims(1, 2);
            scaled_dot_product_attention(t(&q), t(&k), t(&v), scale, DeviceLimits::NONE).swap_dims(1, 2).into_data()
        };
        let err = max_diff(run(&gpu), run(&cpu));
        eprintln!("attention b{b} h{h} n{n} m{m} d{d}: max |gpu - cpu| = {err:.2e}");
        assert!(err < 1e-4, "attention b{b} h{h} n{n} m{m} d{d}: {err}");
    }
    // Another scale than 1/√d is folded into q.
    let (q, k, v) = (random([1, 2, 64, 40], 90), random([1, 2, 32, 40], 91), random([1, 2, 32, 40], 92));
    let run = |device: &Device| {
        let t = |x: &TensorData| Tensor::<4>::from_data(x.clone(), device);
        scaled_dot_product_attention(t(&q), t(&k), t(&v), 0.05, DeviceLimits::NONE).into_data()
    };
    assert!(max_diff(run(&gpu), run(&cpu)) < 1e-4);
}

#[test]
fn group_norm_matches_the_cpu_in_both_layouts_and_dtypes() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex();
    for &(n, c, hw, groups, eps) in &[(2, 320, 64, 32, 1e-5), (1, 64, 17, 32, 1e-6), (2, 1280, 8, 32, 1e-5), (1, 8, 3, 4, 1e-5)] {
        // A non-zero mean and scale: the two-pass statistics are what keeps f32 exact here.
        let x = random([n, c, hw, hw], c as u64).convert::<f32>();
        let x = TensorData::new(x.into_vec::<f32>().unwrap().iter().map(|v| 3.0 + 2.0 * v).collect::<Vec<f32>>(), [n, c, hw, hw]);
        let (w, b) = (random([c], 7), random([c], 8));
        for dtype in [DType::F32, DType::F16] {
            if dtype == DType::F16 && !gpu.supports_dtype(DType::F16) {
                continue;
            }
            for silu in [false, true] {
                for channels_last in [false, true] {
                    let run = |device: &Device| {
                        let norm = GroupNorm {
                            weight: Tensor::<1>::from_data(w.clone(), device).cast(dtype),
                            bias: Tensor::<1>::from_data(b.clone(), device).cast(dtype),
                            groups,
                            eps,
                        };
                        let mut x = Tensor::<4>::from_data(x.clone(), device).cast(dtype);
                        if channels_last && inkstone::gpu::on_gpu(device) {
                            x = inkstone::gpu::channels_last(x);
                        }
                        let y = if silu { norm.forward_silu(x) } else { norm.forward(x) };
                        y.cast(DType::F32).into_data()
                    };
                    let err = max_diff(run(&gpu), run(&cpu));
                    let tol = if dtype == DType::F32 { 1e-4 } else { 1e-2 };
                    eprintln!("group norm {n}x{c}x{hw}² g{groups} {dtype:?} silu={silu} channels_last={channels_last}: {err:.2e}");
                    assert!(err < tol, "group norm {n}x{c}x{hw}² {dtype:?} silu={silu} channels_last={channels_last}: {err}");
                }
            }
        }
    }
}

#[test]
fn layer_norm_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex();
    for &(b, n, c) in &[(2, 4096, 320), (2, 77, 768), (1, 10, 1280), (1, 3, 40)] {
        let x = random([b, n, c], c as u64 + 1).convert::<f32>();
        let x = TensorData::new(x.into_vec::<f32>().unwrap().iter().map(|v| 1.5 - 4.0 * v).collect::<Vec<f32>>(), [b, n, c]);
        let (w, bias) = (random([c], 5), random([c], 6));
        for dtype in [DType::F32, DType::F16] {
            if dtype == DType::F16 && !gpu.supports_dtype(DType::F16) {
                continue;
            }
            for with_bias in [true, false] {
                let run = |device: &Device| {
                    let norm = inkstone::nn::LayerNorm {
                        weight: Tensor::<1>::from_data(w.clone(), device).cast(dtype),
                        bias: with_bias.then(|| Tensor::<1>::from_data(bias.clone(), device).cast(dtype)),
                        eps: 1e-5,
                    };
                    norm.forward(Tensor::<3>::from_data(x.clone(), device).cast(dtype)).cast(DType::F32).into_data()
                };
                let err = max_diff(run(&gpu), run(&cpu));
                let tol = if dtype == DType::F32 { 1e-4 } else { 1e-2 };
                eprintln!("layer norm {b}x{n}x{c} {dtype:?} bias={with_bias}: {err:.2e}");
                assert!(err < tol, "layer norm {b}x{n}x{c} {dtype:?} bias={with_bias}: {err}");
            }
        }
    }
}
