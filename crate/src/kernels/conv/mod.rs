//! A 2D convolution with bias (any kernel size, strides, asymmetric
//! padding), as candle custom ops on the CPU.
//!
//! # Why [`conv2d`] exists
//!
//! candle 0.11's CPU `conv2d` trains the article's model at about a second
//! per step. Its input gradient runs through a naive `conv_transpose2d`
//! (about a third of the step), its im2col gathers element by element, and it
//! computes the first layer's input gradient although the images need none.
//!
//! # Three paths
//!
//! * **Winograd F(2×2, 3×3)** ([`winograd`]) for 3×3 kernels at stride 1
//!   with the same padding on every side and 16 or more channels on both
//!   sides: every layer of the article's model but the first. 2.25x fewer multiply-adds than a direct convolution, and
//!   with a 2×2 max-pooling after the ReLU, the pooling in the same op
//!   ([`conv2d_relu_max_pool2`]). The forward of a layer whose tile rows
//!   fill a register, or two of them do (the second), takes F(4×4, 3×3)
//!   instead: 4x fewer.
//! * **direct** ([`direct`]), the forward only, for the other stride-1
//!   convolutions in f32 on CPUs with AVX2 or AVX-512 (the first layer):
//!   each kernel tap a shifted view of the zero-padded image, multiplied in
//!   registers ([`products`], which the Winograd path's products share).
//! * **im2col** (row copies) + one `gemm` per image, for everything else
//!   (the first layer's 3 input channels, other kernel sizes, strides,
//!   asymmetric padding):
//!   * forward: `y_n = K · cols(x_n) + b` (then the ReLU, when fused);
//!   * backward, one op and one pass over `dy` for all three gradients,
//!     per image: the ReLU's mask, `db += Σ_{h,w} dy_n`,
//!     `dK += dy_n · cols(x_n)ᵀ`, and `dx_n = col2im(Kᵀ · dy_n)`, skipped
//!     when `x` needs no gradient.
//!
//! Both take images in parallel with rayon, and sum the kernel gradient over
//! fixed runs of images, so that it does not depend on the thread count.
//! f32 and f64 CPU tensors take these paths; every other device or dtype
//! falls back to candle's own `conv2d` + `broadcast_add`.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, WithDType,
};
use std::sync::{Arc, OnceLock};

mod direct;
mod geom;
mod im2col;
mod products;
mod winograd;

pub(crate) use crate::kernels::simd::Float;
pub use geom::ConvWindow;
pub(crate) use geom::{Epilogue, Forward, Geom, Wanted};

/// `x.conv2d(kernel, ..) + bias` as `window` places the kernel: strides and
/// zeros before and after each axis ([`ConvWindow`]; a number `p` is
/// stride 1 and `p` zeros on every side). Dilation 1, one group.
///
/// `x` is `[N, C, H, W]`, `kernel` `[O, C, kh, kw]` (candle's layout), `bias`
/// `[O]`; the result is `[N, O, Ho, Wo]`, `Ho = (H + pads - kh) / sh + 1`
/// (likewise `Wo`). Autograd works through it (`Var` + `backward()`), and
/// the gradient of `x` is only computed when `x` is tracked (not for the
/// raw images of the first layer).
///
/// Runs the custom ops for f32 and f64 on the CPU; anything else goes to
/// [`conv2d_reference`].
pub fn conv2d(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    window: impl Into<ConvWindow>,
) -> Result<Tensor> {
    conv2d_op(x, kernel, bias, window.into(), false, false)
}

/// `relu(conv2d(x, kernel, bias, padding))` as one op: the ReLU is applied to
/// each image's output while it is still in cache, and its gradient mask is
/// applied once to `dy` before the convolution's gradients. This saves the
/// separate ReLU's passes over the layer's largest tensors (forward, its
/// gradient mask, candle's gradient bookkeeping).
pub fn conv2d_relu(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    window: impl Into<ConvWindow>,
) -> Result<Tensor> {
    conv2d_op(x, kernel, bias, window.into(), true, false)
}

/// `max_pool2d(conv2d_relu(x, kernel, bias, padding), 2)`, as one op where
/// the convolution takes the Winograd path (3×3 kernels at stride 1, 16 or
/// more channels, on the CPU): its 2×2 output tiles are exactly the pooling
/// windows, so each tile is pooled as soon as it is computed. The
/// full-size activation is never written, and the backward starts from the
/// pooled gradient and each window's argmax. Anywhere else it is the two
/// ops in a row; values and gradients are the same either way.
pub fn conv2d_relu_max_pool2(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    window: impl Into<ConvWindow>,
) -> Result<Tensor> {
    let window = window.into();
    let fused = cpu_float(x)
        && Geom::new(x.dims(), kernel.dims(), bias.dims(), window).is_ok_and(|g| g.pools());
    match fused {
        true => conv2d_op(x, kernel, bias, window, true, true),
        false => super::max_pool2d(&conv2d_relu(x, kernel, bias, window)?, 2),
    }
}

/// f32 or f64 on the CPU: what the custom ops run on.
fn cpu_float(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

fn conv2d_op(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    window: ConvWindow,
    relu: bool,
    pool: bool,
) -> Result<Tensor> {
    if !cpu_float(x) {
        let y = conv2d_reference(x, kernel, bias, window)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    let geom = Geom::new(x.dims(), kernel.dims(), bias.dims(), window)?;
    x.contiguous()?.apply_op3(
        &kernel.contiguous()?,
        &bias.contiguous()?,
        Conv2d {
            geom,
            epilogue: Epilogue {
                relu,
                pool,
                moments: false,
            },
            argmax: OnceLock::new(),
        },
    )
}

/// candle's own convolution plus bias: the fallback and the tests' reference.
///
/// candle pads symmetrically and takes one stride for both axes, so
/// asymmetric padding is `pad_with_zeros` first, and unequal strides are
/// stride 1 with every `s`-th row and column kept. The rows and columns
/// past the last window are cut first: candle's backward of a strided
/// convolution sizes the input gradient from the height's leftover alone.
pub fn conv2d_reference(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    window: impl Into<ConvWindow>,
) -> Result<Tensor> {
    let window = window.into();
    let g = Geom::new(x.dims(), kernel.dims(), bias.dims(), window)?;
    let (sh, sw) = (g.sh, g.sw);
    let ((t, b), (l, r)) = (window.pad_h, window.pad_w);
    // the padded input's rows and columns that the windows reach
    let (h_used, w_used) = ((g.ho - 1) * sh + g.kh, (g.wo - 1) * sw + g.kw);
    let reached = g.h + t + b == h_used && g.w + l + r == w_used;
    let (pad, x) = match window.symmetric_pad().filter(|_| reached) {
        Some(p) => (p, x.clone()),
        None => {
            let x = x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?;
            (0, x.narrow(2, 0, h_used)?.narrow(3, 0, w_used)?) // [N, C, h_used, w_used]
        }
    };
    let y = match sh == sw {
        true => x.conv2d(kernel, pad, sh, 1, 1)?,
        false => {
            let every = |y: Tensor, dim: usize, s: usize| -> Result<Tensor> {
                let len = y.dim(dim)?;
                let ids = Tensor::arange_step(0u32, len as u32, s as u32, y.device())?;
                y.index_select(&ids, dim)
            };
            let y = x.conv2d(kernel, pad, 1, 1, 1)?; // [N, O, (Ho-1)·sh+1, (Wo-1)·sw+1]
            every(every(y, 2, sh)?, 3, sw)?
        }
    };
    y.broadcast_add(&bias.reshape((1, (), 1, 1))?)
}

/// The part of `storage` that a contiguous `layout` views.
fn data<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => bail!("conv2d: inputs must be contiguous"),
    }
}

/// The convolution of a batch over contiguous data: `y` `[N, O, Ho, Wo]`
/// with the [`Epilogue`] applied: through the ReLU; pooled (which needs
/// [`Geom::pools`]) to `[N, O, Ho/2, Wo/2]` with each window's argmax for
/// [`backward`]; or with each output plane's sums. The custom ops and the
/// CPU training step both run this.
pub(crate) fn forward<T: Float>(
    g: &Geom,
    x: &[T],
    kernel: &[T],
    bias: &[T],
    e: Epilogue,
) -> Result<Forward<T>> {
    if e.pool && !(e.relu && g.pools()) {
        bail!("conv2d: pooling inside the convolution needs the ReLU and the Winograd path")
    }
    if e.pool && e.moments {
        bail!("conv2d: the sums of a pooled output's planes are not taken")
    }
    if g.winograd() {
        return Ok(winograd::forward(g, x, kernel, bias, e));
    }
    Ok(match direct::pick::<T>(g) {
        Some(isa) => direct::forward(isa, g, x, kernel, bias, e),
        None => im2col::im2col_forward(g, x, kernel, bias, e),
    })
}

/// The gradients of [`forward`] from the output's gradient `dy`, as one flat
/// `[dx, dK, db]` (`dx` empty unless wanted). `y` is the forward's output
/// when it applied the ReLU, and `argmax` its second result when it pooled.
pub(crate) fn backward<T: Float>(
    g: &Geom,
    x: &[T],
    kernel: &[T],
    y: Option<&[T]>,
    dy: &[T],
    argmax: Option<&[u8]>,
    want: Wanted,
) -> Vec<T> {
    match g.winograd() {
        true => winograd::backward(g, x, kernel, y, dy, argmax, want),
        false => im2col::im2col_backward(g, x, kernel, y, dy, want),
    }
}

/// Runs `f` on the f32 or f64 data of a storage; other dtypes are an error
/// (`conv2d` never sends them here).
macro_rules! on_float {
    ($name:expr, $s:expr, |$t:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            other => bail!(
                "{}: only f32 and f64 are supported, got {:?}",
                $name,
                other.dtype()
            ),
        }
    };
}

/// The forward op over (x, kernel, bias), with or without the ReLU, and
/// with the 2×2 max-pooling after it when `pool` (Winograd path only).
struct Conv2d {
    geom: Geom,
    /// the ReLU, and the pooling (the sums are not taken here)
    epilogue: Epilogue,
    /// With `pool`: each window's argmax, kept by the forward for the backward.
    argmax: OnceLock<Arc<Vec<u8>>>,
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let y = on_float!(self.name(), s1, |T| {
            let (x, kernel, bias) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
            let out = forward::<T>(g, x, kernel, bias, self.epilogue)?;
            if self.epilogue.pool {
                // candle runs each op once: set() cannot fail here.
                let _ = self.argmax.set(Arc::new(out.argmax));
            }
            T::to_cpu_storage_owned(out.y)
        });
        let shape = match self.epilogue.pool {
            true => Shape::from((g.n, g.o, g.ho / 2, g.wo / 2)),
            false => Shape::from((g.n, g.o, g.ho, g.wo)),
        };
        Ok((y, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geom;
        let want = Wanted {
            dx: x.track_op(),
            dk: kernel.track_op(),
            db: bias.track_op(),
        };
        if !(want.dx || want.dk || want.db) {
            return Ok((None, None, None));
        }
        let argmax = match self.epilogue.pool {
            true => Some(self.argmax.get().cloned().ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: backward before forward", self.name()))
            })?),
            false => None,
        };
        let op = Conv2dBackward {
            geom: g,
            want,
            relu_output: self.epilogue.relu.then(|| y.contiguous()).transpose()?,
            argmax,
        };
        let grads =
            x.contiguous()?
                .apply_op3_no_bwd(&kernel.contiguous()?, &dy.contiguous()?, &op)?;
        let [dx_len, dk_len, db_len] = g.grad_lens(want);
        let dx = want
            .dx
            .then(|| grads.narrow(0, 0, dx_len)?.reshape(x.shape()));
        let dk = want
            .dk
            .then(|| grads.narrow(0, dx_len, dk_len)?.reshape(kernel.shape()));
        let db = want.db.then(|| grads.narrow(0, dx_len + dk_len, db_len));
        Ok((dx.transpose()?, dk.transpose()?, db.transpose()?))
    }
}

/// The backward op over (x, kernel, dy): [`backward`], its result flat.
struct Conv2dBackward {
    geom: Geom,
    want: Wanted,
    /// The forward's output when it applied the ReLU: its gradient mask.
    relu_output: Option<Tensor>,
    /// Each pooling window's argmax, when the forward pooled.
    argmax: Option<Arc<Vec<u8>>>,
}

impl CustomOp3 for Conv2dBackward {
    fn name(&self) -> &'static str {
        "conv2d-gemm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let relu_output = self.relu_output.as_ref().map(|y| y.storage_and_layout());
        let relu_output = match &relu_output {
            Some((storage, layout)) => match &**storage {
                Storage::Cpu(cpu) => Some((cpu, *layout)),
                _ => bail!("{}: the ReLU's output is not on the CPU", self.name()),
            },
            None => None,
        };
        let grads = on_float!(self.name(), s1, |T| {
            let y = relu_output.map(|(s, l)| data::<T>(s, l)).transpose()?;
            let (x, kernel, dy) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
            let argmax = self.argmax.as_deref().map(Vec::as_slice);
            T::to_cpu_storage_owned(backward::<T>(g, x, kernel, y, dy, argmax, self.want))
        });
        Ok((
            grads,
            Shape::from(g.grad_lens(self.want).iter().sum::<usize>()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epilogues no path fuses are errors that say why, not a panic in
    /// a kernel or a silently unpooled output.
    #[test]
    fn forward_refuses_what_no_path_fuses() {
        let run = |dims: [usize; 4], e: Epilogue| {
            let g = Geom::new(&dims, &[16, dims[1], 3, 3], &[16], 1usize).unwrap();
            let x = vec![0f32; dims.iter().product()];
            let (k, b) = (vec![0f32; 16 * dims[1] * 9], vec![0f32; 16]);
            forward(&g, &x, &k, &b, e)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let pooled = Epilogue {
            relu: true,
            pool: true,
            moments: false,
        };
        assert_eq!(run([1, 16, 8, 8], pooled), Ok(()));
        let err = run([1, 3, 8, 8], pooled).unwrap_err(); // im2col's 3 channels
        assert!(
            err.contains("needs the ReLU and the Winograd path"),
            "{err}"
        );
        let err = run(
            [1, 16, 8, 8],
            Epilogue {
                relu: false,
                ..pooled
            },
        )
        .unwrap_err();
        assert!(err.contains("needs the ReLU"), "{err}");
        let err = run(
            [1, 16, 8, 8],
            Epilogue {
                moments: true,
                ..pooled
            },
        )
        .unwrap_err();
        assert!(
            err.contains("sums of a pooled output's planes are not taken"),
            "{err}"
        );
        let summed = Epilogue {
            relu: true,
            pool: false,
            moments: true,
        };
        assert_eq!(run([1, 16, 8, 8], summed), Ok(()));
    }
}
