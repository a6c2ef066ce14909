//! GroupNorm (+ SiLU) in two kernels: per-(batch, group) statistics accumulated in f32, then one
//! element-wise pass for normalise → affine → activation in the activation's dtype. burn 0.22
//! has no GroupNorm primitive (tracel-ai/burn#5504 is open), and the tensor-op version costs a
//! mean reduction, a variance reduction and element-wise passes split at the reshapes (and a
//! copy where the input is channels-last, as convolution outputs are).
//!
//! Both kernels read `[N, C, H, W]` through its strides, so NCHW and channels-last memory are
//! read in place; the output is written channels-last (the next convolution then reads it
//! without a copy). `channels_last` (the input's layout) picks the index order in which
//! neighbouring units touch neighbouring input memory.

use burn_cubecl::cubecl;
use cubecl::prelude::*;

/// Threads per statistics workgroup (a power of two, within WebGPU's default 256).
pub const STATS_BLOCK: usize = 256;

/// The offset of logical element `i` (in NCHW order, or NHWC order when `channels_last`) of a
/// tensor of shape `[_, c, h, w]` with strides `st`.
#[cube]
fn offset(i: usize, c: usize, h: usize, w: usize, st: (usize, usize, usize, usize), #[comptime] channels_last: bool) -> usize {
    let (ch, pix) = if channels_last { (i % c, (i / c) % (h * w)) } else { ((i / (h * w)) % c, i % (h * w)) };
    let n = i / (c * h * w);
    n * st.0 + ch * st.1 + (pix / w) * st.2 + (pix % w) * st.3
}

/// The channel (within `c`) of logical element `i`, in the order [`offset`] walks.
#[cube]
fn local_channel(i: usize, c: usize, pixels: usize, #[comptime] channels_last: bool) -> usize {
    if channels_last { i % c } else { (i / pixels) % c }
}

/// What is added to channel `ch` of batch `n` before normalising: `add[n, ch] + add_bias[ch]`
/// (a ResNet's projected time embedding and its bias), or nothing.
#[cube]
fn shift<F: Float, P: Float>(add: &Tensor<F>, add_bias: &Tensor<P>, n: usize, ch: usize, #[comptime] has_add: bool) -> f32 {
    let mut v = 0.0f32;
    if has_add {
        v = f32::cast_from(add[n * add.stride(0) + ch * add.stride(1)]) + f32::cast_from(add_bias[ch]);
    }
    v
}

#[cube]
fn strides<F: Float>(t: &Tensor<F>) -> (usize, usize, usize, usize) {
    (t.stride(0), t.stride(1), t.stride(2), t.stride(3))
}

/// One workgroup per `(n, g)`: `stats[2·ng] = mean`, `stats[2·ng + 1] = 1/√(var + eps)`. Two
/// passes over the group (mean, then the mean of squared deviations), as the tensor-op version
/// does, so no E[x²] − E[x]² cancellation.
#[cube(launch)]
pub fn group_norm_stats<F: Float, P: Float>(
    x: &Tensor<F>,
    add: &Tensor<F>,
    add_bias: &Tensor<P>,
    stats: &mut Tensor<f32>,
    channels_per_group: usize,
    eps: f32,
    #[comptime] block: usize,
    #[comptime] channels_last: bool,
    #[comptime] has_add: bool,
    #[define(F, P)] _dtypes: [ElemType; 2],
) {
    let ng = CUBE_POS;
    let tid = UNIT_POS as usize;
    let groups = x.shape(1) / channels_per_group;
    let (n, g) = (ng / groups, ng % groups);
    let (h, w) = (x.shape(2), x.shape(3));
    let len = channels_per_group * h * w;
    let base = n * x.stride(0) + g * channels_per_group * x.stride(1);
    let count = len as f32;
    let xs = strides::<F>(x);
    let mut partial = Shared::<[f32]>::new_slice(block);

    let mut sum = 0.0f32;
    let mut i = tid;
    while i < len {
        let ch = g * channels_per_group + local_channel(i, channels_per_group, h * w, channels_last);
        sum += f32::cast_from(x[base + offset(i, channels_per_group, h, w, xs, channels_last)])
            + shift::<F, P>(add, add_bias, n, ch, has_add);
        i += block;
    }
    partial[tid] = sum;
    let mean = block_sum(&mut partial) / count;
    sync_cube();

    let mut sq = 0.0f32;
    let mut j = tid;
    while j < len {
        let ch = g * channels_per_group + local_channel(j, channels_per_group, h * w, channels_last);
        let d = f32::cast_from(x[base + offset(j, channels_per_group, h, w, xs, channels_last)])
            + shift::<F, P>(add, add_bias, n, ch, has_add)
            - mean;
        sq += d * d;
        j += block;
    }
    partial[tid] = sq;
    let var = block_sum(&mut partial) / count;

    if UNIT_POS == 0 {
        stats[ng * 2] = mean;
        stats[ng * 2 + 1] = (var + eps).inverse_sqrt();
    }
}

/// Tree sum of one value per unit (`CUBE_DIM` a power of two); every unit gets the total.
#[cube]
pub(super) fn block_sum(partial: &mut Shared<[f32]>) -> f32 {
    sync_cube();
    let mut active = CUBE_DIM;
    while active > 1 {
        active /= 2;
        if UNIT_POS < active {
            let other = partial[(UNIT_POS + active) as usize];
            partial[UNIT_POS as usize] += other;
        }
        sync_cube();
    }
    partial[0]
}

/// One unit per element: `(x − mean)·rstd·gamma[c] + beta[c]`, then SiLU when `silu`, written in
/// `x`'s dtype; `gamma`/`beta` may be stored in another float type.
#[cube(launch)]
pub fn group_norm_apply<F: Float, P: Float>(
    x: &Tensor<F>,
    add: &Tensor<F>,
    add_bias: &Tensor<P>,
    stats: &Tensor<f32>,
    gamma: &Tensor<P>,
    beta: &Tensor<P>,
    out: &mut Tensor<F>,
    channels_per_group: usize,
    #[comptime] silu: bool,
    #[comptime] channels_last: bool,
    #[comptime] has_add: bool,
    #[define(F, P)] _dtypes: [ElemType; 2],
) {
    let idx = ABSOLUTE_POS;
    if idx >= out.len() {
        terminate!();
    }
    let (c, h, w) = (x.shape(1), x.shape(2), x.shape(3));
    let ch = local_channel(idx, c, h * w, channels_last);
    let n = idx / (c * h * w);
    let s = (n * (c / channels_per_group) + ch / channels_per_group) * 2;
    let xv = f32::cast_from(x[offset(idx, c, h, w, strides::<F>(x), channels_last)])
        + shift::<F, P>(add, add_bias, n, ch, has_add);
    let v = (xv - stats[s]) * stats[s + 1] * f32::cast_from(gamma[ch]) + f32::cast_from(beta[ch]);
    let mut y = v;
    if silu {
        y = v / (1.0f32 + (-v).exp());
    }
    let at = offset(idx, c, h, w, (out.stride(0), out.stride(1), out.stride(2), out.stride(3)), channels_last);
    out[at] = F::cast_from(y);
}
