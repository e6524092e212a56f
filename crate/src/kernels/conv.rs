//! A stride-1 2D convolution with bias, as candle custom ops on the CPU.
//!
//! # Why [`conv2d`] exists
//!
//! candle 0.11's CPU `conv2d` trains the article's model at about a second
//! per step. Its input gradient runs through a naive `conv_transpose2d`
//! (about a third of the step), its im2col gathers element by element, and it
//! computes the first layer's input gradient although the images need none.
//!
//! Here every step is im2col (row copies) + one `gemm` per image, images in
//! parallel with rayon:
//!
//! * forward: `y_n = K · cols(x_n) + b`, `K` the kernel as `[out, in·k·k]`;
//! * kernel gradient: `dK = Σ_n dy_n · cols(x_n)ᵀ`;
//! * input gradient: `dx_n = col2im(Kᵀ · dy_n)`, skipped when `x` needs none;
//! * bias gradient: `db = Σ_{n,h,w} dy`.
//!
//! f32 and f64 CPU tensors take this path; every other device or dtype falls
//! back to candle's own `conv2d` + `broadcast_add`.
//!
//! On the 2-core AVX-512 Xeon this was written on (with gemm's `x86-v4`
//! kernels), the article's training step went from about 1050 ms to
//! 300-360 ms at batch 128, its inference from about 210 ms to 60-70 ms; the
//! four convolutions now take about 135 ms of the step, a third of it page
//! faults on fresh output tensors.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
    WithDType,
};
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

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
    conv2d_op(x, kernel, bias, padding, false)
}

/// `relu(conv2d(x, kernel, bias, padding))` as one op: the ReLU is applied to
/// each image's output while it is still in cache, and its gradient mask is
/// applied once to `dy` before the convolution's gradients. This saves the
/// separate ReLU's passes over the layer's largest tensors (forward, its
/// gradient mask, candle's gradient bookkeeping).
pub fn conv2d_relu(x: &Tensor, kernel: &Tensor, bias: &Tensor, padding: usize) -> Result<Tensor> {
    conv2d_op(x, kernel, bias, padding, true)
}

fn conv2d_op(x: &Tensor, kernel: &Tensor, bias: &Tensor, padding: usize, relu: bool) -> Result<Tensor> {
    let square = matches!(kernel.dims(), &[_, _, kh, kw] if kh == kw);
    let fast = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64);
    if !fast || !square {
        let y = conv2d_reference(x, kernel, bias, padding)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    let geom = Geom::new(x.dims(), kernel.dims(), bias.dims(), padding)?;
    x.contiguous()?
        .apply_op3(&kernel.contiguous()?, &bias.contiguous()?, Conv2d { geom, relu })
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
struct Geom {
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
    fn new(x: &[usize], kernel: &[usize], bias: &[usize], p: usize) -> Result<Self> {
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
    fn x_image(&self) -> usize {
        self.c * self.h * self.w
    }
    fn y_image(&self) -> usize {
        self.o * self.hw_out()
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
trait Float: WithDType {
    /// Runs `f` on `len` elements of scratch (contents unspecified).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    /// `max(v, 0)` without a branch, so that loops over it vectorize (a
    /// branch on the sign mispredicts half the time).
    fn relu(v: Self) -> Self;
    /// `d` where `y > 0`, else 0, without a branch.
    fn relu_grad(d: Self, y: Self) -> Self;
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

/// `dKᵀ [CKK, O] += (dy [O, HW] · cols [CKK, HW]ᵀ)ᵀ`. Accumulating the
/// transpose is gemm's fast layout here (its output is column-major with
/// the short `O` side contiguous): 1.5x faster than `dK` row-major on the
/// 32→32 layer.
#[rustfmt::skip]
fn gemm_grad_kernel<T: WithDType>(g: &Geom, dy: &[T], cols: &[T], dk_t: &mut [T], par: Parallelism) {
    let (m, n, k) = (g.o, g.ckk(), g.hw_out());
    // SAFETY: row-major dy [m, k], cols [n, k] (read transposed), dk_t [n, m].
    unsafe {
        gemm::gemm(
            m, n, k,
            dk_t.as_mut_ptr(), m as isize, 1, true,
            dy.as_ptr(), 1, k as isize,
            cols.as_ptr(), k as isize, 1,
            T::one(), T::one(), false, false, false, par,
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
fn forward<T: Float>(g: &Geom, x: &[T], kernel: &[T], bias: &[T], relu: bool) -> Vec<T> {
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
                for ((y_o, out_o), &b) in y_n.chunks_exact_mut(hw).zip(out.chunks_exact(hwp)).zip(bias) {
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

/// Runs of images that [`grad_kernel`] sums separately: enough for rayon to
/// balance them over the threads, fixed so that the result does not depend
/// on the thread count.
const KERNEL_GRAD_RUNS: usize = 16;

/// `dK = Σ_n dy_n · cols(x_n)ᵀ`: each run of images is summed into its own
/// buffer (as `dKᵀ`), then the buffers are added in order (the result does
/// not depend on scheduling) and transposed.
fn grad_kernel<T: Float>(g: &Geom, x: &[T], dy: &[T]) -> Vec<T> {
    let size = g.o * g.ckk();
    let runs = KERNEL_GRAD_RUNS.min(g.n).max(1);
    let per_run = g.n.div_ceil(runs);
    let par = gemm_parallelism(g.n);
    let partials: Vec<Vec<T>> = (0..runs)
        .into_par_iter()
        .map(|r| {
            let mut dk_t = vec![T::zero(); size];
            T::with_scratch(g.ckk() * g.hw_out(), |cols| {
                for i in r * per_run..((r + 1) * per_run).min(g.n) {
                    im2col(g, &x[i * g.x_image()..(i + 1) * g.x_image()], cols, g.hw_out());
                    gemm_grad_kernel(
                        g,
                        &dy[i * g.y_image()..(i + 1) * g.y_image()],
                        cols,
                        &mut dk_t,
                        par,
                    );
                }
            });
            dk_t
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dk_t = partials.next().unwrap_or_else(|| vec![T::zero(); size]);
    for p in partials {
        dk_t.iter_mut().zip(&p).for_each(|(a, &b)| *a += b);
    }
    // [CKK, O] -> [O, CKK]
    let mut dk = vec![T::zero(); size];
    for (j, row) in dk_t.chunks_exact(g.o).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            dk[o * g.ckk() + j] = v;
        }
    }
    dk
}

/// `dx_n = col2im(Kᵀ · dy_n)`, images in parallel.
fn grad_input<T: Float>(g: &Geom, kernel: &[T], dy: &[T]) -> Vec<T> {
    // Zeroed with a memset on this thread rather than `vec![0; n]`, whose
    // lazily mapped pages the workers would then fault in concurrently
    // (40-50 ms instead of 28 ms on the 32→32 layer).
    let mut dx = Vec::with_capacity(g.n * g.x_image());
    dx.resize(g.n * g.x_image(), T::zero());
    let par = gemm_parallelism(g.n);
    dx.par_chunks_mut(g.x_image())
        .zip(dy.par_chunks(g.y_image()))
        .for_each(|(dx_n, dy_n)| {
            T::with_scratch(g.ckk() * g.hw_out(), |dcols| {
                gemm_grad_cols(g, kernel, dy_n, dcols, par);
                col2im(g, dcols, dx_n);
            })
        });
    dx
}

/// `db[o] = Σ_{n, h, w} dy[n, o, h, w]`: per-image sums in parallel, then
/// added in order in f64.
fn grad_bias<T: WithDType>(g: &Geom, dy: &[T]) -> Vec<T> {
    let mut sums = vec![0f64; g.n * g.o];
    sums.par_chunks_mut(g.o)
        .zip(dy.par_chunks(g.y_image()))
        .for_each(|(s, dy_n)| {
            for (s, plane) in s.iter_mut().zip(dy_n.chunks_exact(g.hw_out())) {
                *s = plane_sum(plane);
            }
        });
    let mut db = vec![0f64; g.o];
    for s in sums.chunks_exact(g.o) {
        db.iter_mut().zip(s).for_each(|(a, &b)| *a += b);
    }
    db.into_iter().map(T::from_f64).collect()
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

/// `dy` where the ReLU's output `y` is positive, zero elsewhere.
fn relu_mask<T: Float>(dy: &[T], y: &[T]) -> Vec<T> {
    dy.par_iter().zip(y).map(|(&d, &y)| T::relu_grad(d, y)).collect()
}

/// The forward op over (x, kernel, bias), with or without the ReLU.
struct Conv2d {
    geom: Geom,
    relu: bool,
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
        let y = on_float!(self.name(), s1, |T| T::to_cpu_storage_owned(forward::<T>(
            g,
            data(s1, l1)?,
            data(s2, l2)?,
            data(s3, l3)?,
            self.relu
        )));
        Ok((y, Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let geom = self.geom;
        let mut dy = dy.contiguous()?;
        if self.relu {
            dy = dy.apply_op2_no_bwd(&y.contiguous()?, &ReluMask)?;
        }
        // Raw data (no variable upstream) needs no gradient: this skips a
        // whole convolution for the first layer.
        let dx = match x.track_op() {
            true => Some(kernel.apply_op2_no_bwd(&dy, &GradInput { geom })?),
            false => None,
        };
        let dk = match kernel.track_op() {
            true => Some(x.apply_op2_no_bwd(&dy, &GradKernel { geom })?),
            false => None,
        };
        let db = match bias.track_op() {
            true => Some(dy.apply_op1_no_bwd(&GradBias { geom })?),
            false => None,
        };
        Ok((dx, dk, db))
    }
}

/// The ReLU's gradient: `dy` masked by its output `y`.
struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "conv2d-gemm-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let masked = on_float!(self.name(), s1, |T| T::to_cpu_storage_owned(relu_mask::<T>(
            data(s1, l1)?,
            data(s2, l2)?
        )));
        Ok((masked, l1.shape().clone()))
    }
}

/// `dx` from (kernel, dy).
struct GradInput {
    geom: Geom,
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "conv2d-gemm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let dx = on_float!(self.name(), s1, |T| T::to_cpu_storage_owned(
            grad_input::<T>(g, data(s1, l1)?, data(s2, l2)?)
        ));
        Ok((dx, Shape::from((g.n, g.c, g.h, g.w))))
    }
}

/// `dK` from (x, dy).
struct GradKernel {
    geom: Geom,
}

impl CustomOp2 for GradKernel {
    fn name(&self) -> &'static str {
        "conv2d-gemm-grad-kernel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let dk = on_float!(self.name(), s1, |T| T::to_cpu_storage_owned(
            grad_kernel::<T>(g, data(s1, l1)?, data(s2, l2)?)
        ));
        Ok((dk, Shape::from((g.o, g.c, g.k, g.k))))
    }
}

/// `db` from dy.
struct GradBias {
    geom: Geom,
}

impl CustomOp1 for GradBias {
    fn name(&self) -> &'static str {
        "conv2d-gemm-grad-bias"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let db = on_float!(self.name(), s, |T| T::to_cpu_storage_owned(grad_bias::<T>(
            g,
            data(s, l)?
        )));
        Ok((db, Shape::from(g.o)))
    }
}
