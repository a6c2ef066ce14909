//! Flash attention through cubek's unit routine: one dispatch per call, f32 accumulation, no
//! score tensor, no plane (subgroup) operations and no CMMA, so it runs on WebGPU adapters
//! without subgroups (SwiftShader) as on native wgpu. burn-cubecl 0.22.1 reaches this kernel
//! only through autotune and never with an explicit scale; we call it directly.

use burn::backend::cubecl::dtype_to_storage_type as storage;
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::ops::permute;
use burn_cubecl::tensor::CubeTensor;
use cubek::attention::forward::definition::{AccumulatorPrecision, AttentionGlobalTypes, AttentionOptions};
use cubek::attention::forward::launch::{BlueprintStrategy, Strategy, launch_ref};

/// `q`, `k`, `v`: `[b, h, n, d]` (any batch/head/token strides: a head-split view of token-major
/// projections is read in place). Returns `[b, h, n_q, dv]` over `[b, n_q, h, dv]` memory.
pub fn flash(q: CubeTensor, k: CubeTensor, v: CubeTensor) -> CubeTensor {
    let (q, k, v) = (readable(q), readable(k), readable(v));
    let [b, h, n, _] = q.meta.shape().dims::<4>();
    let dv = v.meta.shape()[3];
    let out = empty_device_contiguous_dtype(q.client.clone(), q.device.clone(), Shape::new([b, n, h, dv]), q.dtype);
    let out = permute(out, &[0, 2, 1, 3]);
    let types = AttentionGlobalTypes {
        query: storage(q.dtype),
        key: storage(k.dtype),
        value: storage(v.dtype),
        mask: storage(DType::U8),
        out: storage(out.dtype),
    };
    let options = AttentionOptions {
        causal: false,
        accumulator_precision: AccumulatorPrecision::Strict(storage(DType::F32)),
    };
    let client = q.client.clone();
    launch_ref(
        Strategy::Unit(BlueprintStrategy::Inferred(())),
        &client,
        q.binding(),
        k.binding(),
        v.binding(),
        None,
        out.clone().binding(),
        &types,
        options,
    )
    .unwrap_or_else(|e| panic!("flash attention (cubek unit routine) cannot run here: {e:?}"));
    out
}

/// The kernel reads rows as vectors of up to 4 along the last dim, chosen from the shape alone:
/// the last dim must be dense and every other stride a multiple of the vector width, or the
/// values are read wrongly without an error. Anything else is copied first.
fn readable(t: CubeTensor) -> CubeTensor {
    let d = t.meta.shape()[3];
    let width = [4, 2, 1].into_iter().find(|w| d % w == 0).unwrap_or(1);
    let strides = t.meta.strides();
    let ok = strides[3] == 1 && strides[..3].iter().all(|s| s % width == 0);
    if ok { t } else { into_contiguous(t) }
}
