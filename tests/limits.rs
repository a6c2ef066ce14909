//! Everything under a small device limit (1 MiB per binding, handed to the load as a WebGPU
//! shell hands over what its device was granted): weights too big for one binding are
//! used in row pieces, activations in blocks, and the results still match diffusers and the
//! unsplit computation. The phone-class case (128 MiB) at tiny-model scale.
//!
//! Equal results alone cannot show that an intermediate stayed under the limit (a computation
//! that skipped the splitting gives the same numbers), so the computations here also run under
//! an allocation tracker: burn's CPU backend keeps every tensor (weights, activations) in one
//! heap allocation of its own size, made on the calling thread before any parallel loop, so the
//! largest allocation of the thread running a computation bounds what a WebGPU kernel would
//! have had to bind. (The per-tile scratch burn-flex's rayon workers use, e.g. im2col tiles of
//! 512 outputs, is CPU-only and not counted.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::cell::Cell;

use burn::tensor::module::{conv2d, embedding, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Int, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use common::{assert_close, case_options, device, fixture, patterned, reference};
use inkstone::limits::DeviceLimits;
use inkstone::nn::{Conv2d, Conv2dConfig, Embedding, Linear};
use inkstone::pipeline::Pipeline;
use inkstone::source::DirSource;
use inkstone::vae::Autoencoder;
use inkstone::weights::Weights;

const LIMIT: u64 = 1 << 20;

/// The system allocator, recording the largest single allocation of a thread while it is
/// armed (by [`within_limit`]).
struct Tracking;

thread_local! {
    /// `Some(largest so far)` while this thread's computation is tracked.
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    // `try_with`: a thread being torn down has no thread-locals left (and is not tracked).
    let _ = LARGEST.try_with(|l| {
        if let Some(largest) = l.get() {
            l.set(Some(largest.max(size)));
        }
    });
}

#[global_allocator]
static TRACKING: Tracking = Tracking;

/// Runs `f` and fails if any allocation of this thread while it ran (any tensor: weight piece,
/// activation, a kernel's whole-tensor scratch) was larger than the device limit. On the wgpu backend tensors live on the GPU
/// (whose real limits are not the ones given here): `f` just runs.
fn within_limit<T>(what: &str, f: impl FnOnce() -> T) -> T {
    if std::env::var("INKSTONE_DEVICE").as_deref() == Ok("wgpu") {
        return f();
    }
    LARGEST.with(|l| l.set(Some(0)));
    let out = f();
    let largest = LARGEST.with(|l| l.take()).unwrap_or(0) as u64;
    println!("{what}: largest allocation {largest} bytes (limit {LIMIT})");
    assert!(
        largest <= LIMIT,
        "{what}: an intermediate of {largest} bytes exceeds the {LIMIT}-byte limit"
    );
    out
}

/// The small device's limits, handed to every load here.
const LIMITS: DeviceLimits = DeviceLimits { max_binding: LIMIT, max_buffer: 2 * LIMIT };

fn load(model: &str) -> Pipeline {
    Pipeline::load_with(&DirSource::new(fixture(model)).unwrap(), &device(), DType::F32, LIMITS).unwrap()
}

fn check_case(model: &str, case: &str) {
    let pipe = load(model);
    let image = within_limit(case, || pipe.generate(&case_options(case), |_, _| true).unwrap());
    assert_close(case, image, reference(case).tensor::<4>("image"), 1e-3);
}

/// At 256×256 the activations outgrow 1 MiB too (tiny-sd: attention scores over 1024 tokens,
/// the KL decoder's 256×256 activations; tiny-flow: the tiny decoder's): computed in query
/// blocks, token blocks, channel chunks and tiles, no intermediate over the limit, and the
/// image is the CLI's (which runs everything whole: the CPU backend has no limit).
fn check_activations(model: &str) {
    let pipe = load(model);
    let opts = inkstone::pipeline::GenerateOptions {
        prompt: "a red bicycle".into(),
        steps: Some(2),
        guidance: Some(3.0),
        seed: 11,
        width: 256,
        height: 256,
        ..Default::default()
    };
    let what = format!("{model} at 256x256 under 1 MiB");
    let image = within_limit(&what, || pipe.generate(&opts, |_, _| true).unwrap());
    let out = common::tmp("limits", &format!("{model}-256.safetensors"));
    let o = common::inkstone(&[
        "generate", "--model", fixture(model).to_str().unwrap(), "--prompt", "a red bicycle", "--steps", "2",
        "--guidance", "3", "--seed", "11", "--width", "256", "--height", "256",
        "--out-tensor", out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let whole = common::RefTensors::open(&out).tensor::<4>("image");
    assert_close(&format!("{what} vs the CLI's whole computation"), image, whole, 1e-5);
}

#[test]
fn clip_kl_pipeline_activations_at_256_stay_under_the_limit() {
    check_activations("tiny-sd");
}

#[test]
fn bert_taesd_pipeline_activations_at_256_stay_under_the_limit() {
    check_activations("tiny-flow");
}

/// CLIP's 49408-row token table (6.3 MB here) is used in 7 pieces.
#[test]
fn clip_kl_pipeline_in_pieces_matches_diffusers() {
    check_case("tiny-sd", "pipeline_sd");
}

/// BERT's 21128-row table in 3 pieces, the tiny decoder.
#[test]
fn bert_taesd_pipeline_in_pieces_matches_diffusers() {
    check_case("tiny-flow", "pipeline_flow");
}

/// Seeded values for a safetensors file of f32 tensors.
fn weights(tensors: &[(&str, Vec<usize>)]) -> (Weights, HashMap<String, Vec<f32>>) {
    let values: HashMap<String, Vec<f32>> = tensors
        .iter()
        .enumerate()
        .map(|(i, (k, shape))| {
            let n: usize = shape.iter().product();
            (
                k.to_string(),
                (0..n)
                    .map(|j| ((j * 7919 + i * 104729) % 2001) as f32 / 1000.0 - 1.0)
                    .collect(),
            )
        })
        .collect();
    let bytes: HashMap<String, Vec<u8>> = values
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, shape)| {
            (
                k.to_string(),
                TensorView::new(Dtype::F32, shape.clone(), &bytes[*k]).unwrap(),
            )
        })
        .collect();
    let file = safetensors::serialize(views, None).unwrap();
    (
        Weights::from_bytes("split.safetensors", file, &device()).unwrap().with_limits(LIMITS),
        values,
    )
}

fn whole<const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &device())
}

#[test]
fn linear_conv_and_embedding_in_pieces_equal_the_whole() {
    let (w, v) = weights(&[
        ("lin.weight", vec![700, 500]),
        ("lin.bias", vec![700]),
        ("conv.weight", vec![300, 100, 3, 3]),
        ("conv.bias", vec![300]),
        ("emb.weight", vec![3000, 100]),
    ]);
    // Each is over 1 MiB in f32, so each comes in (at least) two pieces.
    assert_eq!(w.tensor_rows("lin.weight", [700, 500]).unwrap().len(), 2);
    assert_eq!(
        w.tensor_rows("conv.weight", [300, 100, 3, 3])
            .unwrap()
            .len(),
        2
    );
    assert_eq!(w.tensor_rows("emb.weight", [3000, 100]).unwrap().len(), 2);
    let vb = w.root();

    let lin = Linear::load(&vb.pp("lin"), 500, 700, true).unwrap();
    // 400 tokens × 700 outputs is over the limit too: blocks of tokens.
    let x = patterned([2, 200, 500], 1, 1.0);
    let want = linear(
        x.clone(),
        whole(&v["lin.weight"], [700, 500]).transpose(),
        Some(whole(&v["lin.bias"], [700])),
    );
    assert_close("linear", lin.forward(x), want, 1e-5);

    let conv = Conv2d::load(&vb.pp("conv"), 100, 300, Conv2dConfig::same(3)).unwrap();
    let x = patterned([1, 100, 12, 12], 2, 1.0);
    let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let want = conv2d(
        x.clone(),
        whole(&v["conv.weight"], [300, 100, 3, 3]),
        Some(whole(&v["conv.bias"], [300])),
        opts,
    );
    assert_close("conv", within_limit("conv in pieces", || conv.forward(x)), want, 1e-5);

    let emb = Embedding::load(&vb.pp("emb"), 3000, 100).unwrap();
    let ids: Vec<i64> = vec![0, 1, 2620, 2621, 2999, 1310, 2622, 7];
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 4]), &device());
    let want = embedding(whole(&v["emb.weight"], [3000, 100]), ids.clone());
    // A lookup is a copy: exact.
    assert_close("embedding", within_limit("embedding in pieces", || emb.forward(ids)), want, 0.0);
    w.finish().unwrap();
}

#[test]
fn a_whole_tensor_over_the_limit_is_an_error_naming_it() {
    let (w, _) = weights(&[("big.weight", vec![700, 500])]);
    let e = w.tensor("big.weight", [700, 500]).unwrap_err().to_string();
    assert!(
        e.contains("split.safetensors")
            && e.contains("`big.weight`")
            && e.contains("1.3 MiB")
            && e.contains("1.0 MiB"),
        "{e}"
    );
    // A single row over the limit cannot be split either.
    let (w, _) = weights(&[("wide.weight", vec![2, 300_000])]);
    let e = w
        .tensor_rows("wide.weight", [2, 300_000])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`wide.weight`"), "{e}");
}

/// The KL decoder over channel chunks: 256×256 (4 MiB activations) runs under 1 MiB; a size
/// where one norm group (4 channels here) cannot fit is refused before any step, naming it.
#[test]
fn kl_decode_in_chunks_runs_and_an_impossible_size_is_refused_up_front() {
    let pipe = load("tiny-sd");
    let mut opts = case_options("pipeline_sd");
    (opts.width, opts.height, opts.latents, opts.steps) = (256, 256, None, Some(1));
    let mut run = pipe.start(&opts).unwrap();
    run.step().unwrap();
    let latents = run.latents().clone();
    let chunked = within_limit("KL decode 256x256 in chunks", || run.decode_checked().unwrap());
    // The same latents decoded whole (no limit): the chunks must not change a pixel.
    let Autoencoder::Kl(kl) = &pipe.vae else { panic!("tiny-sd has a KL decoder") };
    let z = latents / pipe.vae.latent_scaling_factor() + pipe.vae.latent_shift_factor();
    let whole = (kl.decode_within(z, u64::MAX) / 2.0 + 0.5).clamp(0.0, 1.0);
    assert_close("KL decode 256x256 in chunks vs whole", chunked, whole, 1e-5);
    (opts.width, opts.height) = (1024, 1024);
    let e = pipe.generate(&opts, |_, _| panic!("no step may run")).unwrap_err().to_string();
    assert!(e.contains("vae (AutoencoderKL)") && e.contains("1024x1024") && e.contains("1 MiB"), "{e}");
}
