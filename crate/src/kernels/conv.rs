//! A stride-1 2D convolution with bias, as candle custom ops on the CPU.
//!
//! # Why [`conv2d`] exists
//!
//! candle 0.11's CPU `conv2d` trains the article's model at about a second
//! per step. Its input gradient runs through a naive `conv_transpose2d`
//! (about a third of the step), its im2col gathers element by element, and it
//! computes the first layer's input gradient although the images need none.
//!
//! # Two paths
//!
//! * **Winograd F(2×2, 3×3)** ([`winograd`]) for 3×3 kernels with 16 or
//!   more channels on both sides: every layer of the article's model but
//!   the first. 2.25x fewer multiply-adds than a direct convolution, and
//!   with a 2×2 max-pooling after the ReLU, the pooling in the same op
//!   ([`conv2d_relu_max_pool2`]).
//! * **im2col** (row copies) + one `gemm` per image, for everything else
//!   (the first layer's 3 input channels, other kernel sizes):
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
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

mod winograd;

/// `x.conv2d(kernel, padding, 1, 1, 1) + bias`: stride 1, dilation 1, one
/// group, `padding` zeros on every side.
///
/// `x` is `[N, C, H, W]`, `kernel` `[O, C, k, k]` (candle's layout), `bias`
/// `[O]`; the result is `[N, O, H + 2p - k + 1, W + 2p - k + 1]`. Autograd
/// works through it (`Var` + `backward()`), and the gradient of `x` is only
/// computed when `x` is tracked (not for the raw images of the first layer).
///
/// Runs the custom ops for f32 and f64 on the CPU with a square kernel;
/// anything else goes to [`conv2d_reference`].
pub fn conv2d(x: &Tensor, kernel: &Tensor, bias: &Tensor, padding: usize) -> Result<Tensor> {
    conv2d_op(x, kernel, bias, padding, false, false)
}

/// `relu(conv2d(x, kernel, bias, padding))` as one op: the ReLU is applied to
/// each image's output while it is still in cache, and its gradient mask is
/// applied once to `dy` before the convolution's gradients. This saves the
/// separate ReLU's passes over the layer's largest tensors (forward, its
/// gradient mask, candle's gradient bookkeeping).
pub fn conv2d_relu(x: &Tensor, kernel: &Tensor, bias: &Tensor, padding: usize) -> Result<Tensor> {
    conv2d_op(x, kernel, bias, padding, true, false)
}

/// `max_pool2d(conv2d_relu(x, kernel, bias, padding), 2)`, as one op where
/// the convolution takes the Winograd path (3×3 kernels, 16 or more
/// channels, on the CPU): its 2×2 output tiles are exactly the pooling
/// windows, so each tile is pooled as soon as it is computed. The
/// full-size activation is never written, and the backward starts from the
/// pooled gradient and each window's argmax. Anywhere else it is the two
/// ops in a row; values and gradients are the same either way.
pub fn conv2d_relu_max_pool2(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    padding: usize,
) -> Result<Tensor> {
    let fused = cpu_float(x)
        && Geom::new(x.dims(), kernel.dims(), bias.dims(), padding).is_ok_and(|g| g.pools());
    match fused {
        true => conv2d_op(x, kernel, bias, padding, true, true),
        false => super::max_pool2d(&conv2d_relu(x, kernel, bias, padding)?, 2),
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
    padding: usize,
    relu: bool,
    pool: bool,
) -> Result<Tensor> {
    let square = matches!(kernel.dims(), &[_, _, kh, kw] if kh == kw);
    if !cpu_float(x) || !square {
        let y = conv2d_reference(x, kernel, bias, padding)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    let geom = Geom::new(x.dims(), kernel.dims(), bias.dims(), padding)?;
    x.contiguous()?.apply_op3(
        &kernel.contiguous()?,
        &bias.contiguous()?,
        Conv2d {
            geom,
            relu,
            pool,
            argmax: OnceLock::new(),
        },
    )
}

/// candle's own convolution plus bias: the fallback and the tests' reference.
pub fn conv2d_reference(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    padding: usize,
) -> Result<Tensor> {
    x.conv2d(kernel, padding, 1, 1, 1)?
        .broadcast_add(&bias.reshape((1, (), 1, 1))?)
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    p: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    pub(crate) fn new(x: &[usize], kernel: &[usize], bias: &[usize], p: usize) -> Result<Self> {
        let (&[n, c, h, w], &[o, ci, k, k2], &[ob]) = (x, kernel, bias) else {
            bail!("conv2d: expected x [N, C, H, W], kernel [O, C, k, k], bias [O], got {x:?}, {kernel:?}, {bias:?}")
        };
        if ci != c || k2 != k || ob != o || k == 0 {
            bail!("conv2d: shapes do not fit: x {x:?}, kernel {kernel:?}, bias {bias:?}")
        }
        if h + 2 * p < k || w + 2 * p < k {
            bail!("conv2d: kernel {k}x{k} is larger than the padded input {x:?} (padding {p})")
        }
        Ok(Geom {
            n,
            c,
            h,
            w,
            o,
            k,
            p,
            ho: h + 2 * p - k + 1,
            wo: w + 2 * p - k + 1,
        })
    }
    /// Whether [`forward`] can pool this convolution's output (with 2×2
    /// windows, after the ReLU) as it computes it: on the Winograd path,
    /// with at least one whole window.
    pub(crate) fn pools(&self) -> bool {
        winograd::applies(self) && self.ho >= 2 && self.wo >= 2
    }
    /// One output image's `[channels, height, width]`, with or without the
    /// 2×2 pooling.
    pub(crate) fn output(&self, pool: bool) -> [usize; 3] {
        match pool {
            true => [self.o, self.ho / 2, self.wo / 2],
            false => [self.o, self.ho, self.wo],
        }
    }
    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Columns of the im2col matrix: one per output pixel.
    fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    /// [`Self::hw_out`] rounded up to a multiple of 16 (a whole AVX-512
    /// register of f32s): the forward gemm's `m`. gemm copies its whole left
    /// operand first when `m` is not such a multiple (here 900, 225, 169).
    fn hw_padded(&self) -> usize {
        self.hw_out().next_multiple_of(16)
    }
    /// Lengths of `dx`, `dK` and `db` in [`backward`]'s flat result.
    pub(crate) fn grad_lens(&self, want: Wanted) -> [usize; 3] {
        let dx = if want.dx { self.n * self.x_image() } else { 0 };
        [dx, self.o * self.ckk(), self.o]
    }
    pub(crate) fn x_image(&self) -> usize {
        self.c * self.h * self.w
    }
    pub(crate) fn y_image(&self) -> usize {
        self.o * self.hw_out()
    }
    /// One image's output after 2×2 max-pooling.
    pub(crate) fn pooled_image(&self) -> usize {
        self.o * (self.ho / 2) * (self.wo / 2)
    }
    /// For kernel column `kj`: the output columns `ow` whose input column
    /// `ow + kj - p` lies inside the image, and that input column for the first.
    fn valid_cols(&self, kj: usize) -> (usize, usize, usize) {
        let lo = self.p.saturating_sub(kj).min(self.wo);
        let hi = (self.w + self.p).saturating_sub(kj).min(self.wo).max(lo);
        let iw0 = if hi > lo { lo + kj - self.p } else { 0 };
        (lo, hi, iw0)
    }
}

/// The part of `storage` that a contiguous `layout` views.
fn data<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => bail!("conv2d: inputs must be contiguous"),
    }
}

/// Images are spread over rayon's threads, each running single-threaded
/// gemms; a batch smaller than the pool hands the threads to gemm instead.
fn gemm_parallelism(batch: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if batch >= threads || threads == 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// The dtypes this op runs on, each with a per-thread scratch buffer for
/// the im2col matrix: reused across calls, so that no step pays for
/// allocating (and page-faulting) a fresh megabyte per thread and layer.
pub(crate) trait Float: WithDType {
    /// Runs `f` on `len` elements of scratch (contents unspecified).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    /// `max(v, 0)` without a branch, so that loops over it vectorize (a
    /// branch on the sign mispredicts half the time).
    fn relu(v: Self) -> Self;
    /// `d` where `y > 0`, else 0, without a branch.
    fn relu_grad(d: Self, y: Self) -> Self;
    /// `a · b + c` in one rounding: one instruction where the caller is
    /// compiled with FMA (see `winograd`'s `multiversion!`).
    fn mul_add(a: Self, b: Self, c: Self) -> Self;
}

macro_rules! float_with_scratch {
    ($($t:ty),*) => {$(
        impl Float for $t {
            #[inline(always)]
            fn relu(v: Self) -> Self {
                v.max(0.0)
            }
            #[inline(always)]
            fn relu_grad(d: Self, y: Self) -> Self {
                if y > 0.0 { d } else { 0.0 }
            }
            #[inline(always)]
            fn mul_add(a: Self, b: Self, c: Self) -> Self {
                a.mul_add(b, c)
            }
            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                thread_local! {
                    static SCRATCH: RefCell<Vec<$t>> = const { RefCell::new(Vec::new()) };
                }
                SCRATCH.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut buf) => {
                        if buf.len() < len {
                            buf.resize(len, 0.0);
                        }
                        f(&mut buf[..len])
                    }
                    // Re-entered (rayon ran another conv's job on this thread
                    // while it waited): use a buffer of its own.
                    Err(_) => f(&mut vec![0.0; len]),
                })
            }
        }
    )*};
}
float_with_scratch!(f32, f64);

/// im2col of one image `[C, H, W]` into `cols` `[C·k·k, stride]`: row
/// `(c, ki, kj)` holds the input pixel each output pixel sees through that
/// kernel tap, zero where it falls in the padding (and past `Ho·Wo`). Copies
/// whole row runs.
fn im2col<T: WithDType>(g: &Geom, x: &[T], cols: &mut [T], stride: usize) {
    let (hw_out, zero) = (g.hw_out(), T::zero());
    for (row, dst) in cols.chunks_exact_mut(stride).enumerate() {
        let (dst, tail) = dst.split_at_mut(hw_out);
        tail.fill(zero);
        let (c, ki, kj) = (row / (g.k * g.k), row / g.k % g.k, row % g.k);
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (lo, hi, iw0) = g.valid_cols(kj);
        for (oh, out) in dst.chunks_exact_mut(g.wo).enumerate() {
            let ih = (oh + ki).wrapping_sub(g.p);
            if ih >= g.h {
                out.fill(zero);
                continue;
            }
            out[..lo].fill(zero);
            out[lo..hi].copy_from_slice(&plane[ih * g.w + iw0..ih * g.w + iw0 + (hi - lo)]);
            out[hi..].fill(zero);
        }
    }
}

/// col2im, the adjoint of [`im2col`]: adds every entry of `cols` back onto
/// the input pixel it was copied from; `dx` `[C, H, W]` must start at zero.
fn col2im<T: WithDType>(g: &Geom, cols: &[T], dx: &mut [T]) {
    for (row, src) in cols.chunks_exact(g.hw_out()).enumerate() {
        let (c, ki, kj) = (row / (g.k * g.k), row / g.k % g.k, row % g.k);
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (lo, hi, iw0) = g.valid_cols(kj);
        for (oh, from) in src.chunks_exact(g.wo).enumerate() {
            let ih = (oh + ki).wrapping_sub(g.p);
            if ih >= g.h {
                continue;
            }
            let to = &mut plane[ih * g.w + iw0..ih * g.w + iw0 + (hi - lo)];
            for (t, &f) in to.iter_mut().zip(&from[lo..hi]) {
                *t += f;
            }
        }
    }
}

/// `y [O, HWp] = K [O, CKK] · cols [CKK, HWp]`, `HWp` = [`Geom::hw_padded`].
/// Written as `yᵀ = colsᵀ · Kᵀ` (pixels on gemm's `m` side), the form gemm
/// reads in place: `cols` and `y` are then column-major.
#[rustfmt::skip]
fn gemm_forward<T: WithDType>(g: &Geom, kernel: &[T], cols: &[T], y: &mut [T], par: Parallelism) {
    let (m, n, k) = (g.hw_padded(), g.o, g.ckk());
    // SAFETY: cols [k, m], kernel [n, k] and y [n, m] are row-major with
    // exactly these sizes; each is read as its column-major transpose.
    unsafe {
        gemm::gemm(
            m, n, k,
            y.as_mut_ptr(), m as isize, 1, false,
            cols.as_ptr(), m as isize, 1,
            kernel.as_ptr(), k as isize, 1,
            T::zero(), T::one(), false, false, false, par,
        )
    }
}

/// `dcols [CKK, HW] = Kᵀ · dy`, with `K [O, CKK]` read transposed and `dy [O, HW]`.
#[rustfmt::skip]
fn gemm_grad_cols<T: WithDType>(g: &Geom, kernel: &[T], dy: &[T], dcols: &mut [T], par: Parallelism) {
    let (m, n, k) = (g.ckk(), g.hw_out(), g.o);
    // SAFETY: row-major kernel [k, m] (read transposed), dy [k, n], dcols [m, n].
    unsafe {
        gemm::gemm(
            m, n, k,
            dcols.as_mut_ptr(), 1, n as isize, false,
            kernel.as_ptr(), m as isize, 1,
            dy.as_ptr(), 1, n as isize,
            T::zero(), T::one(), false, false, false, par,
        )
    }
}

/// Forward over contiguous data: per image, im2col then one gemm into
/// scratch, then bias (and the ReLU if asked for) on the way out.
fn im2col_forward<T: Float>(g: &Geom, x: &[T], kernel: &[T], bias: &[T], relu: bool) -> Vec<T> {
    let (hw, hwp) = (g.hw_out(), g.hw_padded());
    let mut y = Vec::with_capacity(g.n * g.y_image());
    let par = gemm_parallelism(g.n);
    y.spare_capacity_mut()[..g.n * g.y_image()]
        .par_chunks_mut(g.y_image())
        .zip(x.par_chunks(g.x_image()))
        .for_each(|(y_n, x_n)| {
            T::with_scratch((g.ckk() + g.o) * hwp, |scratch| {
                let (cols, out) = scratch.split_at_mut(g.ckk() * hwp);
                im2col(g, x_n, cols, hwp);
                gemm_forward(g, kernel, cols, out, par);
                for ((y_o, out_o), &b) in y_n
                    .chunks_exact_mut(hw)
                    .zip(out.chunks_exact(hwp))
                    .zip(bias)
                {
                    for (y, &v) in y_o.iter_mut().zip(out_o) {
                        y.write(if relu { T::relu(v + b) } else { v + b });
                    }
                }
            });
        });
    // SAFETY: the loop above wrote every element of every image.
    unsafe { y.set_len(g.n * g.y_image()) };
    y
}

/// The convolution of a batch over contiguous data: `y` `[N, O, Ho, Wo]`
/// (through the ReLU when `relu`), or with `pool` (which needs
/// [`Geom::pools`]) its 2×2 max-pooling `[N, O, Ho/2, Wo/2]` and each
/// window's argmax for [`backward`]. The custom ops and the CPU training
/// step both run this.
pub(crate) fn forward<T: Float>(
    g: &Geom,
    x: &[T],
    kernel: &[T],
    bias: &[T],
    relu: bool,
    pool: bool,
) -> Result<(Vec<T>, Vec<u8>)> {
    if pool && !(relu && g.pools()) {
        bail!("conv2d: pooling inside the convolution needs the ReLU and the Winograd path")
    }
    Ok(match winograd::applies(g) {
        true => winograd::forward(g, x, kernel, bias, relu, pool),
        false => (im2col_forward(g, x, kernel, bias, relu), Vec::new()),
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
    match winograd::applies(g) {
        true => winograd::backward(g, x, kernel, y, dy, argmax, want),
        false => im2col_backward(g, x, kernel, y, dy, want),
    }
}

/// Runs of images that [`backward`] hands out as one task each: enough for
/// rayon to balance them over the threads, fixed so that the sums over the
/// batch do not depend on the thread count.
const BACKWARD_RUNS: usize = 16;

/// Which gradients [`backward`] computes: only those of tracked inputs (the
/// first layer's images need none, which skips a whole convolution).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wanted {
    pub dx: bool,
    pub dk: bool,
    pub db: bool,
}

/// Every gradient of the convolution in one pass over the batch, so that each
/// image's `dy` comes from memory once and is then used from cache. Per
/// image: `dy` masked by the ReLU's output `y` (when fused), the bias sums,
/// `dKᵀ += (dy · cols(x)ᵀ)ᵀ`, and `dx = col2im(Kᵀ · dy)`. Each run of images
/// sums `dK` and `db` on its own; the runs are then added in order.
///
/// Returns `[dx, dK, db]` flat: `dx` `[N, C, H, W]` (empty when not wanted),
/// `dK` `[O, C, k, k]`, `db` `[O]`.
fn im2col_backward<T: Float>(
    g: &Geom,
    x: &[T],
    kernel: &[T],
    y: Option<&[T]>,
    dy: &[T],
    want: Wanted,
) -> Vec<T> {
    let (hw, ckk, [dx_len, dk_len, db_len]) = (g.hw_out(), g.ckk(), g.grad_lens(want));
    let per_run = g.n.div_ceil(BACKWARD_RUNS).max(1);
    let runs = g.n.div_ceil(per_run);
    let par = gemm_parallelism(runs);
    let mut out = Vec::with_capacity(dx_len + dk_len + db_len);
    let mut dx_runs = data_chunks(&mut out, dx_len, per_run * g.x_image(), runs);
    let partials: Vec<(Vec<T>, Vec<f64>)> = dx_runs
        .par_iter_mut()
        .enumerate()
        .map(|(r, dx_run)| {
            // Zeroed here, by the thread that fills it, rather than all at
            // once on one thread beforehand.
            let mut dx_run = dx_run.as_deref_mut().map(zeroed);
            let mut dk_t = vec![T::zero(); if want.dk { dk_len } else { 0 }];
            let mut db = vec![0f64; g.o];
            T::with_scratch(ckk * hw + g.y_image(), |scratch| {
                let (cols, masked) = scratch.split_at_mut(ckk * hw);
                for (j, i) in (r * per_run..((r + 1) * per_run).min(g.n)).enumerate() {
                    let dy_n = image_grad(g, i, dy, y, masked, want.db.then_some(&mut db[..]));
                    if want.dk {
                        im2col(g, &x[i * g.x_image()..(i + 1) * g.x_image()], cols, hw);
                        winograd::kernel_grad_dots(g.o, ckk, hw, dy_n, cols, &mut dk_t);
                    }
                    if let Some(dx_run) = dx_run.as_deref_mut() {
                        gemm_grad_cols(g, kernel, dy_n, cols, par);
                        col2im(g, cols, &mut dx_run[j * g.x_image()..(j + 1) * g.x_image()]);
                    }
                }
            });
            (dk_t, db)
        })
        .collect();
    drop(dx_runs);
    // SAFETY: the runs' chunks cover `dx` exactly, and each was zeroed and
    // then accumulated into above.
    unsafe { out.set_len(dx_len) };

    let (dk_t, db) = sum_runs(&partials, dk_len, g.o);
    // dKᵀ [CKK, O] -> dK [O, CKK]
    out.extend((0..dk_len).map(|i| dk_t[(i % ckk) * g.o + i / ckk]));
    out.extend(db.into_iter().map(T::from_f64));
    out
}

/// Image `i`'s output gradient from `dy`: masked by the ReLU's output `y`
/// when the forward applied it (written into `masked`, which it returns),
/// with its per-channel sums added to `db` when given.
fn image_grad<'a, T: Float>(
    g: &Geom,
    i: usize,
    dy: &'a [T],
    y: Option<&[T]>,
    masked: &'a mut [T],
    db: Option<&mut [f64]>,
) -> &'a [T] {
    let at = i * g.y_image()..(i + 1) * g.y_image();
    let dy_n: &[T] = match y {
        Some(y) => {
            for ((m, &d), &v) in masked.iter_mut().zip(&dy[at.clone()]).zip(&y[at]) {
                *m = T::relu_grad(d, v);
            }
            masked
        }
        None => &dy[at],
    };
    if let Some(db) = db {
        for (s, plane) in db.iter_mut().zip(dy_n.chunks_exact(g.hw_out())) {
            *s += plane_sum(plane);
        }
    }
    dy_n
}

/// The runs' partial kernel gradients (`len` values each, or none) and bias
/// sums (`o` each), added in run order.
fn sum_runs<T: WithDType>(
    partials: &[(Vec<T>, Vec<f64>)],
    len: usize,
    o: usize,
) -> (Vec<T>, Vec<f64>) {
    let mut dk = vec![T::zero(); len];
    let mut db = vec![0f64; o];
    for (dk_run, db_run) in partials {
        dk.iter_mut().zip(dk_run).for_each(|(a, &b)| *a += b);
        db.iter_mut().zip(db_run).for_each(|(a, &b)| *a += b);
    }
    (dk, db)
}

/// The first `len` elements of `out`'s spare capacity in `runs` chunks of
/// `chunk`, one per run of images, for the runs to fill in parallel; all
/// `None` when `len` is 0 (no input gradient wanted).
fn data_chunks<T>(
    out: &mut Vec<T>,
    len: usize,
    chunk: usize,
    runs: usize,
) -> Vec<Option<&mut [MaybeUninit<T>]>> {
    if len == 0 {
        return (0..runs).map(|_| None).collect();
    }
    out.reserve(len);
    out.spare_capacity_mut()[..len]
        .chunks_mut(chunk)
        .map(Some)
        .collect()
}

/// `buf` filled with zeros, as initialized values.
fn zeroed<T: WithDType>(buf: &mut [MaybeUninit<T>]) -> &mut [T] {
    buf.fill(MaybeUninit::new(T::zero()));
    // SAFETY: every element was written just above, and MaybeUninit<T> has
    // T's layout.
    unsafe { &mut *(buf as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// Sum of one plane, in 16 lanes so that it vectorizes.
fn plane_sum<T: WithDType>(v: &[T]) -> f64 {
    let mut lanes = [T::zero(); 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        lanes.iter_mut().zip(c).for_each(|(l, &x)| *l += x);
    }
    lanes.iter().chain(rest).map(|x| x.to_f64()).sum()
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
    relu: bool,
    pool: bool,
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
            let (y, argmax) = forward::<T>(g, x, kernel, bias, self.relu, self.pool)?;
            if self.pool {
                // candle runs each op once: set() cannot fail here.
                let _ = self.argmax.set(Arc::new(argmax));
            }
            T::to_cpu_storage_owned(y)
        });
        let shape = match self.pool {
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
        let argmax = match self.pool {
            true => Some(self.argmax.get().cloned().ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: backward before forward", self.name()))
            })?),
            false => None,
        };
        let op = Conv2dBackward {
            geom: g,
            want,
            relu_output: self.relu.then(|| y.contiguous()).transpose()?,
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
