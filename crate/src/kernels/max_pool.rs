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
    bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType, D,
};
use rayon::prelude::*;
use std::ops::Range;

/// Where a pooling's windows go on an `h × w` plane: `ho × wo` windows of
/// `kh × kw`, stepping `sh` rows and `sw` columns, the first one starting
/// `top` rows above and `left` columns left of the plane. The padding they
/// reach into holds nothing: a pooling ignores it (max of the real values,
/// mean over the real values, as TensorFlow does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolGeom {
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ho: usize,
    pub wo: usize,
    pub top: usize,
    pub left: usize,
}

impl PoolGeom {
    /// `p × p` windows at stride `p`, valid padding: what [`max_pool2d`] does.
    pub(crate) fn valid(h: usize, w: usize, p: usize) -> PoolGeom {
        PoolGeom {
            h,
            w,
            kh: p,
            kw: p,
            sh: p,
            sw: p,
            ho: h / p,
            wo: w / p,
            top: 0,
            left: 0,
        }
    }

    /// One window over the whole plane (the global poolings).
    pub(crate) fn whole(h: usize, w: usize) -> PoolGeom {
        PoolGeom {
            h,
            w,
            kh: h,
            kw: w,
            sh: 1,
            sw: 1,
            ho: 1,
            wo: 1,
            top: 0,
            left: 0,
        }
    }

    /// The model's 2×2 windows at stride 2, unpadded (all whole), which
    /// have unrolled loops.
    fn is_2x2(&self) -> bool {
        (self.kh, self.kw, self.sh, self.sw, self.top, self.left) == (2, 2, 2, 2, 0, 0)
            && 2 * self.ho <= self.h
            && 2 * self.wo <= self.w
    }

    /// The input rows of output row `oh`'s windows, padding left out.
    #[inline(always)]
    pub(crate) fn rows(&self, oh: usize) -> Range<usize> {
        clip(oh * self.sh, self.kh, self.top, self.h)
    }

    /// The input columns of output column `ow`'s windows, padding left out.
    #[inline(always)]
    pub(crate) fn cols(&self, ow: usize) -> Range<usize> {
        clip(ow * self.sw, self.kw, self.left, self.w)
    }

    /// Every window holds at least one real value, and the sizes fit the
    /// output (a geometry built from `layers::window1` always does).
    fn check(&self) -> Result<()> {
        let ok = |k: usize, s: usize, o: usize, before: usize, n: usize| {
            k > 0 && s > 0 && o > 0 && before < k && (o - 1) * s < n + before
        };
        if !ok(self.kh, self.sh, self.ho, self.top, self.h)
            || !ok(self.kw, self.sw, self.wo, self.left, self.w)
        {
            bail!("max_pool2d: windows {self:?} do not fit their plane")
        }
        Ok(())
    }
}

/// The part `[start - before, start - before + k)` of `0..n`.
#[inline(always)]
fn clip(start: usize, k: usize, before: usize, n: usize) -> Range<usize> {
    start.saturating_sub(before)..(start + k).saturating_sub(before).min(n)
}

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
    let (_, _, h, w) = check_dims(x.dims(), pool)?;
    max_pool2d_with(x, PoolGeom::valid(h, w, pool))
}

/// [`max_pool2d`] for any windows, strides and padding.
pub(crate) fn max_pool2d_with(x: &Tensor, g: PoolGeom) -> Result<Tensor> {
    check_geom(x.dims(), &g)?;
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(MaxPool2d { geom: g })
    } else {
        max_pool2d_portable_with(x, g)
    }
}

/// The same pooling as [`max_pool2d`], composed from candle ops that exist
/// (with a correct backward) on every device.
pub fn max_pool2d_portable(x: &Tensor, pool: usize) -> Result<Tensor> {
    let (_, _, h, w) = check_dims(x.dims(), pool)?;
    max_pool2d_portable_with(x, PoolGeom::valid(h, w, pool))
}

/// [`max_pool2d_portable`] for any windows: the windows as
/// `[N, C, Ho, Wo, kh·kw]` (padding as -∞, which never wins over a real
/// value), and [`max_of_windows`]. Overlapping windows (stride below the
/// pool) add their gradients where they share an input, through autograd.
pub(crate) fn max_pool2d_portable_with(x: &Tensor, g: PoolGeom) -> Result<Tensor> {
    check_geom(x.dims(), &g)?;
    max_of_windows(&windows(x, &g, f64::NEG_INFINITY)?) // [N, C, Ho, Wo]
}

/// The maximum over the last axis, differentiable so that the gradient
/// goes to exactly one value per window, its first maximum (row-major; a
/// NaN wins), as in Keras and the CPU op: candle's own `max` would give it
/// to every tied maximum, and ties are common (equal pixels, zeros after a
/// ReLU). A one-hot mask of that value, and the masked values summed.
pub(crate) fn max_of_windows(windows: &Tensor) -> Result<Tensor> {
    let first = first_maximum(&windows.detach())?;
    first
        .where_cond(windows, &windows.zeros_like()?)?
        .sum(D::Minus1)
}

/// The windows of `x` `[N, C, H, W]` as `[N, C, Ho, Wo, kh·kw]` (row-major
/// within each window), padded with `fill`. Built from narrows and
/// reshapes, which candle differentiates on every device.
pub(crate) fn windows(x: &Tensor, g: &PoolGeom, fill: f64) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let (ho, wo) = (g.ho, g.wo);
    if (g.sh, g.sw, g.top, g.left) == (g.kh, g.kw, 0, 0) && ho * g.kh <= g.h && wo * g.kw <= g.w {
        // Windows side by side, the common case: one reshape.
        return x
            .narrow(2, 0, ho * g.kh)?
            .narrow(3, 0, wo * g.kw)?
            .reshape((n, c, ho, g.kh, wo, g.kw))?
            .permute((0, 1, 2, 4, 3, 5))?
            .contiguous()?
            .reshape((n, c, ho, wo, g.kh * g.kw));
    }
    // Padded so that each of the window's offsets (i, j) has its `ho` rows
    // (every `sh`-th from i) and `wo` columns inside the padded plane.
    let hp = (g.kh - 1 + ho * g.sh).max(g.top + g.h);
    let wp = (g.kw - 1 + wo * g.sw).max(g.left + g.w);
    let xp = pad(x, 2, g.top, hp - g.top - g.h, fill)?;
    let xp = pad(&xp, 3, g.left, wp - g.left - g.w, fill)?; // [N, C, Hp, Wp]
    let mut taps = Vec::with_capacity(g.kh * g.kw);
    for i in 0..g.kh {
        let rows = xp
            .narrow(2, i, ho * g.sh)?
            .reshape((n, c, ho, g.sh, wp))?
            .narrow(3, 0, 1)?
            .squeeze(3)?; // [N, C, Ho, Wp]
        for j in 0..g.kw {
            let tap = rows
                .narrow(3, j, wo * g.sw)?
                .reshape((n, c, ho, wo, g.sw))?
                .narrow(4, 0, 1)?; // [N, C, Ho, Wo, 1]
            taps.push(tap);
        }
    }
    Tensor::cat(&taps, 4)
}

/// `x` with `before` and `after` values `fill` added along `dim`.
fn pad(x: &Tensor, dim: usize, before: usize, after: usize, fill: f64) -> Result<Tensor> {
    if before + after == 0 {
        return Ok(x.clone());
    }
    if fill == 0.0 {
        return x.pad_with_zeros(dim, before, after);
    }
    let block = |len: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = len;
        Tensor::new(fill, x.device())?
            .to_dtype(x.dtype())?
            .broadcast_as(dims)?
            .contiguous()
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Tensor::cat(&parts, dim)
}

/// A `u8` one-hot mask over the last axis of `windows` `[.., pp]`: the first
/// maximum of each window, or its first NaN. Each candidate scores
/// `pp - index` (a NaN `pp` more), so the best score is unique and no
/// device's tie-breaking matters.
fn first_maximum(windows: &Tensor) -> Result<Tensor> {
    let (dev, f32) = (windows.device(), candle_core::DType::F32);
    let pp = windows.dim(D::Minus1)?;
    let nan = windows.ne(windows)?;
    let inf = Tensor::new(f64::INFINITY, dev)?
        .to_dtype(windows.dtype())?
        .broadcast_as(windows.shape())?;
    let key = nan.where_cond(&inf, windows)?;
    let is_max = key
        .broadcast_ge(&key.max_keepdim(D::Minus1)?)?
        .to_dtype(f32)?;
    let rank = Tensor::arange(0u32, pp as u32, dev)?
        .to_dtype(f32)?
        .affine(-1.0, pp as f64)?; // pp - index
    let score = (is_max.broadcast_mul(&rank)? + (nan.to_dtype(f32)? * pp as f64)?)?;
    score.broadcast_eq(&score.max_keepdim(D::Minus1)?)
}

/// Validates the arguments of the square, unpadded poolings; returns
/// `(N, C, H, W)`.
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

/// `dims` is a 4D batch of the planes `g` pools; returns `(N, C)`.
fn check_geom(dims: &[usize], g: &PoolGeom) -> Result<(usize, usize)> {
    match *dims {
        [n, c, h, w] if (h, w) == (g.h, g.w) => {
            g.check()?;
            Ok((n, c))
        }
        _ => bail!(
            "max_pool2d: expected an NCHW input [N, C, {}, {}], got shape {dims:?}",
            g.h,
            g.w
        ),
    }
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

/// Planes a rayon task takes at least: a plane is only a few hundred values.
pub(crate) const PLANES_PER_TASK: usize = 64;

/// Forward over contiguous `[planes, h, w]` data, planes in parallel:
/// `[planes, ho, wo]`.
pub(crate) fn pool_fwd<T: WithDType>(x: &[T], g: &PoolGeom) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); x.len() / (g.h * g.w) * g.ho * g.wo];
    out.par_chunks_exact_mut(g.ho * g.wo)
        .zip(x.par_chunks_exact(g.h * g.w))
        .with_min_len(PLANES_PER_TASK)
        .for_each(|(out, plane)| match g.is_2x2() {
            true => pool_fwd_2x2(plane, out, g.w),
            false => pool_fwd_plane(plane, out, g),
        });
    out
}

/// The model's case, unrolled: windows are pairs of pairs.
fn pool_fwd_2x2<T: WithDType>(plane: &[T], out: &mut [T], w: usize) {
    for (oh, orow) in out.chunks_exact_mut(w / 2).enumerate() {
        let (r0, r1) = plane[2 * oh * w..(2 * oh + 2) * w].split_at(w);
        let windows = r0.chunks_exact(2).zip(r1.chunks_exact(2));
        for (o, (a, b)) in orow.iter_mut().zip(windows) {
            *o = pick(pick(pick(a[0], a[1]), b[0]), b[1]);
        }
    }
}

fn pool_fwd_plane<T: WithDType>(plane: &[T], out: &mut [T], g: &PoolGeom) {
    for (oh, orow) in out.chunks_exact_mut(g.wo).enumerate() {
        let rows = g.rows(oh);
        for (ow, o) in orow.iter_mut().enumerate() {
            let cols = g.cols(ow);
            let mut best = plane[rows.start * g.w + cols.start];
            for r in rows.clone() {
                for &v in &plane[r * g.w + cols.start..r * g.w + cols.end] {
                    best = pick(best, v);
                }
            }
            *o = best;
        }
    }
}

/// Backward over contiguous `x: [planes, h, w]` and `dy: [planes, ho, wo]`:
/// each `dy` value lands on its window's first maximum (added up where
/// windows overlap), everything else is 0.
pub(crate) fn pool_bwd<T: WithDType>(x: &[T], dy: &[T], g: &PoolGeom) -> Vec<T> {
    let mut dx = vec![T::from_f64(0.0); x.len()];
    let planes = x
        .par_chunks_exact(g.h * g.w)
        .zip(dy.par_chunks_exact(g.ho * g.wo))
        .zip(dx.par_chunks_exact_mut(g.h * g.w))
        .with_min_len(PLANES_PER_TASK);
    planes.for_each(|((xp, gp), dp)| match g.is_2x2() {
        true => pool_bwd_2x2(xp, gp, dp, g.w),
        false => pool_bwd_plane(xp, gp, dp, g),
    });
    dx
}

/// The model's case: walk two input rows at once and write every pixel of
/// each window (g on its argmax, 0 elsewhere) in order.
fn pool_bwd_2x2<T: WithDType>(xp: &[T], gp: &[T], dp: &mut [T], w: usize) {
    let zero = T::from_f64(0.0);
    for (oh, grow) in gp.chunks_exact(w / 2).enumerate() {
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
}

fn pool_bwd_plane<T: WithDType>(xp: &[T], gp: &[T], dp: &mut [T], g: &PoolGeom) {
    for (oh, grow) in gp.chunks_exact(g.wo).enumerate() {
        let rows = g.rows(oh);
        for (ow, &d) in grow.iter().enumerate() {
            let cols = g.cols(ow);
            let mut best_i = rows.start * g.w + cols.start;
            let mut best = xp[best_i];
            for r in rows.clone() {
                let row = r * g.w;
                for (i, &v) in xp[row + cols.start..row + cols.end].iter().enumerate() {
                    // Selects, not branches: argmaxes are unpredictable.
                    let t = takes_over(v, best);
                    best = if t { v } else { best };
                    best_i = if t { row + cols.start + i } else { best_i };
                }
            }
            dp[best_i] += d;
        }
    }
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
    geom: PoolGeom,
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "cifar10-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let (n, c) = check_geom(layout.dims(), g)?;
        let out = with_data!(storage, v => {
            WithDType::to_cpu_storage_owned(pool_fwd(contiguous(v, layout, "input")?, g))
        });
        Ok((out, Shape::from((n, c, g.ho, g.wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad_arg = arg.contiguous()?.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &MaxPool2dBackward { geom: self.geom },
        )?;
        Ok(Some(grad_arg))
    }
}

/// The backward as its own op over `(input, grad_output)`: returns the input
/// gradient, `grad_output` scattered onto each window's argmax.
struct MaxPool2dBackward {
    geom: PoolGeom,
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
        let g = &self.geom;
        let (n, c) = check_geom(l1.dims(), g)?;
        let want = [n, c, g.ho, g.wo];
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
            let dy = contiguous(WithDType::cpu_storage_as_slice(s2)?, l2, "gradient")?;
            WithDType::to_cpu_storage_owned(pool_bwd(x, dy, g))
        });
        Ok((dx, l1.shape().clone()))
    }
}
