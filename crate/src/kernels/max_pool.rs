//! Hand-written kernels that replace broken or missing candle ops.
//!
//! # Why [`max_pool2d`] exists
//!
//! candle 0.11's built-in [`Tensor::max_pool2d`] has a wrong backward pass. It
//! builds a 0/1 mask of the window maxima, *averages* that mask over each
//! window and multiplies the gradient by this average, so a window with a
//! single maximum passes on only `1/(k*k)` of its gradient. It also
//! upsamples with `upsample_nearest2d(h, w)`, which on sizes that are not a
//! multiple of the pool (this model's 13×13 → 6×6) maps output cells onto the
//! wrong input pixels. Measured on candle 0.11.1 with `y.sum_all().backward()`:
//!
//! | input   | pool | gradient sum (candle) | correct |
//! |---------|------|-----------------------|---------|
//! | 30×30   | 2    | 56.25                 | 225     |
//! | 13×13   | 2    | 2.75 (data-dependent) | 36      |
//! | 4×4     | 2    | 1                     | 4       |
//!
//! Training through that gradient makes every layer below a pooling layer
//! learn 4× too slowly (and with wrong directions after odd sizes), so the
//! model uses [`max_pool2d`] from this module instead: Keras'
//! `MaxPooling2D(pool_size=(p, p))` with stride `p` and `'valid'` padding, with
//! a correct gradient. `tests/max_pool.rs` keeps a test that notices the day
//! candle fixes its own op.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

/// Keras `MaxPooling2D(pool_size=(pool, pool))`: stride `pool`, `'valid'`
/// padding, on an NCHW tensor `[N, C, H, W]`, giving `[N, C, H/pool, W/pool]`
/// (rows and columns beyond the last whole window are dropped).
///
/// The gradient goes to the maximum of each window only; on ties to the first
/// one in row-major order, as TensorFlow does. Dropped rows and columns get a
/// zero gradient. A NaN in a window wins that window (it propagates).
///
/// Exists because candle 0.11's own [`Tensor::max_pool2d`] backward is wrong
/// (see the [module docs](self)). On the CPU this runs a custom op with its own
/// backward ([`CustomOp1`] + a [`CustomOp2`] scatter); on every other device
/// it falls back to [`max_pool2d_portable`], built from candle ops.
///
/// Errors (no panics) for a non-4D input, `pool == 0`, or `pool` larger than
/// `H` or `W`.
pub fn max_pool2d(x: &Tensor, pool: usize) -> Result<Tensor> {
    check_dims(x.dims(), pool)?;
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(MaxPool2d { pool })
    } else {
        max_pool2d_portable(x, pool)
    }
}

/// The same pooling as [`max_pool2d`], composed from candle ops that exist
/// (with a correct backward) on every device: the whole windows as
/// `[N, C, Ho, Wo, p·p]`, a one-hot mask of each window's first maximum
/// (row-major; a NaN wins, as in [`max_pool2d`]), and the masked values
/// summed. The gradient goes through the mask to exactly one input per
/// window, as in Keras and the CPU op: candle's own `max` would give it to
/// every tied maximum, and ties are common (equal pixels, zeros after a ReLU).
pub fn max_pool2d_portable(x: &Tensor, pool: usize) -> Result<Tensor> {
    let (n, c, h, w) = check_dims(x.dims(), pool)?;
    let (ho, wo, pp) = (h / pool, w / pool, pool * pool);
    let windows = x
        .narrow(2, 0, ho * pool)?
        .narrow(3, 0, wo * pool)?
        .reshape((n, c, ho, pool, wo, pool))?
        .permute((0, 1, 2, 4, 3, 5))?
        .contiguous()?
        .reshape((n, c, ho, wo, pp))?; // [N, C, Ho, Wo, p·p]
    let first = first_maximum(&windows.detach(), pp)?;
    first.where_cond(&windows, &windows.zeros_like()?)?.sum(4) // [N, C, Ho, Wo]
}

/// A `u8` one-hot mask over the last axis of `windows` `[.., pp]`: the first
/// maximum of each window, or its first NaN. Each candidate scores
/// `pp - index` (a NaN `pp` more), so the best score is unique and no
/// device's tie-breaking matters.
fn first_maximum(windows: &Tensor, pp: usize) -> Result<Tensor> {
    let (dev, f32) = (windows.device(), candle_core::DType::F32);
    let nan = windows.ne(windows)?;
    let inf = Tensor::new(f64::INFINITY, dev)?
        .to_dtype(windows.dtype())?
        .broadcast_as(windows.shape())?;
    let key = nan.where_cond(&inf, windows)?;
    let is_max = key.broadcast_ge(&key.max_keepdim(4)?)?.to_dtype(f32)?;
    let rank = Tensor::arange(0u32, pp as u32, dev)?
        .to_dtype(f32)?
        .affine(-1.0, pp as f64)?; // pp - index
    let score = (is_max.broadcast_mul(&rank)? + (nan.to_dtype(f32)? * pp as f64)?)?;
    score.broadcast_eq(&score.max_keepdim(4)?)
}

/// Validates the arguments; returns `(N, C, H, W)`.
fn check_dims(dims: &[usize], pool: usize) -> Result<(usize, usize, usize, usize)> {
    let &[n, c, h, w] = dims else {
        bail!(
            "max_pool2d: expected a 4D NCHW input [N, C, H, W], got shape {:?}",
            dims
        )
    };
    if pool == 0 {
        bail!("max_pool2d: pool size must be at least 1, got 0")
    }
    if pool > h || pool > w {
        bail!(
            "max_pool2d: pool size {pool} is larger than the input's spatial size {h}x{w} (shape {:?})",
            dims
        )
    }
    Ok((n, c, h, w))
}

/// The part of `data` that a contiguous `layout` views.
fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("max_pool2d: {what} must be contiguous"),
    }
}

/// Does `v` replace `best` as the window maximum? Strictly greater, so ties
/// keep the first (row-major) element. A NaN always takes over, so NaNs propagate
/// (the last NaN of a window gets its gradient); `v != v` is the NaN test
/// that also compiles for integer dtypes.
#[inline(always)]
#[allow(clippy::eq_op)]
pub(super) fn takes_over<T: PartialOrd>(v: T, best: T) -> bool {
    v > best || v != v
}

/// The new running maximum after seeing `v` (branch-free on floats).
#[inline(always)]
fn pick<T: PartialOrd + Copy>(best: T, v: T) -> T {
    if takes_over(v, best) {
        v
    } else {
        best
    }
}

/// Maximum of a non-empty run of values.
#[inline(always)]
fn run_max<T: WithDType>(run: &[T]) -> T {
    run[1..].iter().fold(run[0], |m, &v| pick(m, v))
}

/// Forward over contiguous `[planes, h, w]` data, planes in parallel.
pub(crate) fn pool_fwd<T: WithDType>(x: &[T], h: usize, w: usize, p: usize) -> Vec<T> {
    let (ho, wo) = (h / p, w / p);
    let planes = x.len() / (h * w);
    let mut out = vec![T::from_f64(0.0); planes * ho * wo];
    out.par_chunks_exact_mut(ho * wo)
        .zip(x.par_chunks_exact(h * w))
        .with_min_len(PLANES_PER_TASK)
        .for_each(|(out, plane)| pool_fwd_plane(plane, out, w, p));
    out
}

/// Planes a rayon task takes at least: a plane is only a few hundred values.
const PLANES_PER_TASK: usize = 64;

fn pool_fwd_plane<T: WithDType>(plane: &[T], out: &mut [T], w: usize, p: usize) {
    let wo = w / p;
    for (oh, orow) in out.chunks_exact_mut(wo).enumerate() {
        let rows = &plane[oh * p * w..(oh * p + p) * w];
        if p == 2 {
            // The model's case, unrolled: windows are pairs of pairs.
            let (r0, r1) = rows.split_at(w);
            let windows = r0.chunks_exact(2).zip(r1.chunks_exact(2));
            for (o, (a, b)) in orow.iter_mut().zip(windows) {
                *o = pick(pick(pick(a[0], a[1]), b[0]), b[1]);
            }
            continue;
        }
        // First row of the windows initialises the outputs, the others
        // update them: every pass reads one input row front to back.
        for (o, win) in orow.iter_mut().zip(rows[..w].chunks_exact(p)) {
            *o = run_max(win);
        }
        for row in rows.chunks_exact(w).skip(1) {
            for (o, win) in orow.iter_mut().zip(row.chunks_exact(p)) {
                *o = pick(*o, run_max(win));
            }
        }
    }
}

/// Backward over contiguous `x: [planes, h, w]` and `g: [planes, h/p, w/p]`:
/// each `g` value lands on its window's first maximum, everything else is 0.
pub(crate) fn pool_bwd<T: WithDType>(x: &[T], g: &[T], h: usize, w: usize, p: usize) -> Vec<T> {
    let (ho, wo) = (h / p, w / p);
    let mut dx = vec![T::from_f64(0.0); x.len()];
    let planes = x
        .par_chunks_exact(h * w)
        .zip(g.par_chunks_exact(ho * wo))
        .zip(dx.par_chunks_exact_mut(h * w))
        .with_min_len(PLANES_PER_TASK);
    let zero = T::from_f64(0.0);
    planes.for_each(|((xp, gp), dp)| {
        if p == 2 {
            // The model's case: walk two input rows at once and write every
            // pixel of each window (g on its argmax, 0 elsewhere) in order.
            for (oh, grow) in gp.chunks_exact(wo).enumerate() {
                let rows = 2 * oh * w..(2 * oh + 2) * w;
                let (x0, x1) = xp[rows.clone()].split_at(w);
                let (d0, d1) = dp[rows].split_at_mut(w);
                let windows = x0
                    .chunks_exact(2)
                    .zip(x1.chunks_exact(2))
                    .zip(d0.chunks_exact_mut(2).zip(d1.chunks_exact_mut(2)))
                    .zip(grow);
                for (((a, b), (da, db)), &g) in windows {
                    // Row-major argmax k over (a0, a1, b0, b1).
                    let (mut m, mut k) = (a[0], 0u8);
                    for (v, i) in [(a[1], 1), (b[0], 2), (b[1], 3)] {
                        let t = takes_over(v, m);
                        m = if t { v } else { m };
                        k = if t { i } else { k };
                    }
                    da[0] = if k == 0 { g } else { zero };
                    da[1] = if k == 1 { g } else { zero };
                    db[0] = if k == 2 { g } else { zero };
                    db[1] = if k == 3 { g } else { zero };
                }
            }
            return;
        }
        for oh in 0..ho {
            for ow in 0..wo {
                let base = oh * p * w + ow * p;
                let mut best_i = base;
                let mut best = xp[base];
                for kh in 0..p {
                    let row = base + kh * w;
                    for (i, &v) in xp[row..row + p].iter().enumerate() {
                        // Selects, not branches: argmaxes are unpredictable.
                        let t = takes_over(v, best);
                        best = if t { v } else { best };
                        best_i = if t { row + i } else { best_i };
                    }
                }
                dp[best_i] = gp[oh * wo + ow];
            }
        }
    });
    dx
}

/// Runs `$body` with `$v` bound to the storage's data, for every plain dtype.
macro_rules! with_data {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::U8($v) => $body,
            CpuStorage::U32($v) => $body,
            CpuStorage::I16($v) => $body,
            CpuStorage::I32($v) => $body,
            CpuStorage::I64($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::F16($v) => $body,
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
            other => bail!("max_pool2d: unsupported dtype {:?}", other.dtype()),
        }
    };
}

/// The forward custom op (CPU only; other devices use the portable version).
struct MaxPool2d {
    pool: usize,
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "cifar10-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.pool;
        let (n, c, h, w) = check_dims(layout.dims(), p)?;
        let out = with_data!(storage, v => {
            WithDType::to_cpu_storage_owned(pool_fwd(contiguous(v, layout, "input")?, h, w, p))
        });
        Ok((out, Shape::from((n, c, h / p, w / p))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad_arg = arg.contiguous()?.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &MaxPool2dBackward { pool: self.pool },
        )?;
        Ok(Some(grad_arg))
    }
}

/// The backward as its own op over `(input, grad_output)`: returns the input
/// gradient, `grad_output` scattered onto each window's argmax.
struct MaxPool2dBackward {
    pool: usize,
}

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "cifar10-max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = self.pool;
        let (n, c, h, w) = check_dims(l1.dims(), p)?;
        let want = [n, c, h / p, w / p];
        if l2.dims() != want {
            bail!(
                "max_pool2d backward: gradient shape {:?} does not match the pooled shape {:?}",
                l2.dims(),
                want
            )
        }
        if s1.dtype() != s2.dtype() {
            bail!(
                "max_pool2d backward: input is {:?} but gradient is {:?}",
                s1.dtype(),
                s2.dtype()
            )
        }
        let dx = with_data!(s1, v => {
            let x = contiguous(v, l1, "input")?;
            let g = contiguous(WithDType::cpu_storage_as_slice(s2)?, l2, "gradient")?;
            WithDType::to_cpu_storage_owned(pool_bwd(x, g, h, w, p))
        });
        Ok((dx, l1.shape().clone()))
    }
}
