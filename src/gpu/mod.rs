//! Kernels of our own for the cubecl (GPU) backends, where burn's tensor ops cost many more
//! dispatches than the maths needs. Each op is a `#[backend_extension(Cube, Fusion)]` trait:
//! under burn's fusion it is queued lazily like any other op (opaque: nothing fuses into it, so
//! each kernel carries its own epilogue). Callers use the `Tensor` wrappers below and keep
//! their plain tensor-op path for the CPU (`on_gpu` is false there). When burn grows the same
//! primitives (GroupNorm: tracel-ai/burn#5504), these wrappers are where to switch.

mod attention;
mod group_norm;
mod layer_norm;

use burn::backend::cubecl::dtype_to_storage_type as storage;
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Device, Shape, Tensor};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::cubecl::calculate_cube_count_elemwise;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::CubeBackend;

/// Whether `device` runs on a cubecl runtime (wgpu natively, WebGPU in the browser).
pub fn on_gpu(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Cube(_))
}

#[backend_extension(Cube, Fusion)]
pub trait GpuKernels: Backend {
    /// GroupNorm over `x` (`[N, C, H, W]`, any strides) with `groups` groups, the affine
    /// `gamma`/`beta` (`[C]`), and SiLU after it when `silu`; with `has_add`, `add[n, c] +
    /// add_bias[c]` (`[N, C]`, `[C]`) is added to `x` first. The output has `x`'s dtype.
    #[fusion(dtype = x, shape = x)]
    fn group_norm(
        x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, add: FloatTensor<Self>, add_bias: FloatTensor<Self>,
        has_add: bool, groups: usize, eps: f32, silu: bool,
    ) -> FloatTensor<Self>;

    /// softmax(q kᵀ / √head_dim) v over `[batch, heads, tokens, head_dim]` in one flash kernel
    /// (f32 accumulation, no score tensor). The output is a `[b, heads, n, dv]` view of
    /// token-major memory (`[b, n, heads, dv]`), so merging the heads back costs no copy.
    #[fusion(dtype = q, shape = Shape::new([q[0], q[1], q[2], v[3]]))]
    fn flash_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> FloatTensor<Self>;

    /// LayerNorm of `x` over its last dimension with `gamma` and, when `has_bias`, `beta`
    /// (pass `gamma` again without one); the output has `x`'s dtype and shape.
    #[fusion(dtype = x, shape = x)]
    fn layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f32, has_bias: bool) -> FloatTensor<Self>;

    /// `x` (`[N, C, H, W]`) with the same values in channels-last memory (`[N, H, W, C]`
    /// contiguous), viewed as NCHW: what burn's direct convolution reads without copying.
    #[fusion(dtype = x, shape = x)]
    fn channels_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`GpuKernels::group_norm`] on tensors: two dispatches. `add`: `([N, C], [C])` added to `x`
/// per (batch, channel) first.
pub fn group_norm<const D: usize>(
    x: Tensor<D>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    add: Option<(Tensor<2>, &Tensor<1>)>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Tensor<D> {
    let dims = x.dims();
    // The kernels see `[N, C, H, W]`; `[N, C, L]` is `[N, C, L, 1]` (a free reshape).
    let x4: Tensor<4> = x.reshape([dims[0], dims[1], dims[2], dims[3..].iter().product()]);
    let has_add = add.is_some();
    // Unused operands without `add` (the kernels never read them).
    let (add, add_bias) = add.unwrap_or_else(|| (gamma.clone().unsqueeze(), gamma));
    let out = <Dispatch as GpuKernels>::group_norm(
        x4.into_dispatch(),
        gamma.clone().into_dispatch(),
        beta.clone().into_dispatch(),
        add.into_dispatch(),
        add_bias.clone().into_dispatch(),
        has_add,
        groups,
        eps as f32,
        silu,
    );
    Tensor::<4>::from_dispatch(out).reshape(dims)
}

/// [`GpuKernels::flash_attention`] with any softmax `scale` (the kernel's own is 1/√head_dim:
/// another scale is folded into `q`). One dispatch per call.
pub fn flash_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let d = q.dims()[3] as f64;
    let q = if (scale * d.sqrt() - 1.0).abs() > 1e-12 { q * (scale * d.sqrt()) } else { q };
    Tensor::from_dispatch(<Dispatch as GpuKernels>::flash_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch()))
}

/// [`GpuKernels::layer_norm`] on tensors: one dispatch.
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: &Tensor<1>, beta: Option<&Tensor<1>>, eps: f64) -> Tensor<D> {
    let has_bias = beta.is_some();
    let beta = beta.unwrap_or(gamma).clone();
    let out = <Dispatch as GpuKernels>::layer_norm(x.into_dispatch(), gamma.clone().into_dispatch(), beta.into_dispatch(), eps as f32, has_bias);
    Tensor::from_dispatch(out)
}

/// [`GpuKernels::channels_last`] on tensors (a copy kernel; for weights, once at load).
pub fn channels_last(x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as GpuKernels>::channels_last(x.into_dispatch()))
}

impl GpuKernels for CubeBackend {
    fn layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f32, has_bias: bool) -> FloatTensor<Self> {
        let (x, gamma, beta) = (into_contiguous(x), into_contiguous(gamma), into_contiguous(beta));
        let shape = x.meta.shape().clone();
        let width = shape[shape.num_dims() - 1];
        let rows = shape.num_elements() / width.max(1);
        let (client, device) = (x.client.clone(), x.device.clone());
        let out = empty_device_contiguous_dtype(client.clone(), device, shape, x.dtype);
        // One workgroup per row, in a 2-D grid: WebGPU allows 65,535 workgroups per dimension.
        let (cx, cy) = (rows.min(65_535), rows.div_ceil(65_535));
        let dtypes = [storage(x.dtype), storage(gamma.dtype)];
        layer_norm::layer_norm::launch(
            &client,
            CubeCount::new_2d(cx as u32, cy as u32),
            CubeDim::new_1d(layer_norm::BLOCK as u32),
            x.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            width,
            eps,
            has_bias,
            dtypes,
        );
        out
    }

    fn channels_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        use burn_cubecl::ops::permute;
        permute(into_contiguous(permute(x, &[0, 2, 3, 1])), &[0, 3, 1, 2])
    }

    fn flash_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> FloatTensor<Self> {
        attention::flash(q, k, v)
    }

    fn group_norm(
        x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, add: FloatTensor<Self>, add_bias: FloatTensor<Self>,
        has_add: bool, groups: usize, eps: f32, silu: bool,
    ) -> FloatTensor<Self> {
        let (gamma, beta, add_bias) = (into_contiguous(gamma), into_contiguous(beta), into_contiguous(add_bias));
        // `add` in x's dtype, the bias in the affine's (the kernels are generic over the two).
        let add = if add.dtype == x.dtype { add } else { burn_cubecl::kernel::cast(add, x.dtype) };
        assert!(add_bias.dtype == gamma.dtype, "group_norm: the added bias must have the affine's dtype");
        let [n, c, h, w] = x.meta.shape().dims::<4>();
        assert!(groups > 0 && c % groups == 0, "group_norm: {c} channels in {groups} groups");
        let (client, device) = (x.client.clone(), x.device.clone());
        // Channels-last memory (a convolution's output) is read and written as it lies.
        let channels_last = c > 1 && x.meta.strides()[1] == 1;

        let stats = empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new([n, groups, 2]), DType::F32);
        group_norm::group_norm_stats::launch(
            &client,
            CubeCount::new_1d((n * groups) as u32),
            CubeDim::new_1d(group_norm::STATS_BLOCK as u32),
            x.clone().into_tensor_arg(),
            add.clone().into_tensor_arg(),
            add_bias.clone().into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            c / groups,
            eps,
            group_norm::STATS_BLOCK,
            channels_last,
            has_add,
            [storage(x.dtype), storage(gamma.dtype)],
        );

        // The output is channels-last whatever the input: what the convolution after it (or the
        // transformer's token view) reads without a copy.
        let nhwc = empty_device_contiguous_dtype(client.clone(), device, Shape::new([n, h, w, c]), x.dtype);
        let out = burn_cubecl::ops::permute(nhwc, &[0, 3, 1, 2]);
        let elems = n * c * h * w;
        let cube_dim = CubeDim::new(&client, elems);
        let cube_count = calculate_cube_count_elemwise(&client, elems, cube_dim);
        let dtypes = [storage(x.dtype), storage(gamma.dtype)];
        group_norm::group_norm_apply::launch(
            &client,
            cube_count,
            cube_dim,
            x.into_tensor_arg(),
            add.into_tensor_arg(),
            add_bias.into_tensor_arg(),
            stats.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            c / groups,
            silu,
            channels_last,
            has_add,
            dtypes,
        );
        out
    }
}
