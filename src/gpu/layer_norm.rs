//! LayerNorm over the last dimension in one kernel: one workgroup per row computes the row's
//! mean and variance (two passes, f32) and writes the normalised, affine row in the input's
//! dtype. burn's `layer_norm` is a mean reduction, a variance reduction and element-wise
//! passes: four or five dispatches, three times in every transformer block.

use burn_cubecl::cubecl;
use cubecl::prelude::*;

use super::group_norm::block_sum;

/// Threads per row (a power of two, within WebGPU's default 256).
pub const BLOCK: usize = 256;

/// `x`, `out`: contiguous `[rows, width]`; row `CUBE_POS`. Without `has_bias`, `beta` is unread.
#[cube(launch)]
pub fn layer_norm<F: Float, P: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<P>,
    beta: &Tensor<P>,
    out: &mut Tensor<F>,
    width: usize,
    eps: f32,
    #[comptime] has_bias: bool,
    #[define(F, P)] _dtypes: [ElemType; 2],
) {
    let row = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if row * width >= x.len() {
        terminate!();
    }
    let tid = UNIT_POS as usize;
    let base = row * width;
    let count = width as f32;
    let mut partial = Shared::<[f32]>::new_slice(BLOCK);

    let mut sum = 0.0f32;
    let mut i = tid;
    while i < width {
        sum += f32::cast_from(x[base + i]);
        i += BLOCK;
    }
    partial[tid] = sum;
    let mean = block_sum(&mut partial) / count;
    sync_cube();

    let mut sq = 0.0f32;
    let mut j = tid;
    while j < width {
        let d = f32::cast_from(x[base + j]) - mean;
        sq += d * d;
        j += BLOCK;
    }
    partial[tid] = sq;
    let rstd = (block_sum(&mut partial) / count + eps).inverse_sqrt();

    let mut k = tid;
    while k < width {
        let mut y = (f32::cast_from(x[base + k]) - mean) * rstd * f32::cast_from(gamma[k]);
        if has_bias {
            y += f32::cast_from(beta[k]);
        }
        out[base + k] = F::cast_from(y);
        k += BLOCK;
    }
}
