//! The sizes of one convolution, and the batch bookkeeping that both of
//! its paths ([`super::im2col`] and [`super::winograd`]) share: threads,
//! fixed runs of images, the ReLU mask and bias sums of each image's
//! output gradient.

use crate::kernels::moments::{plane_sums, PlaneSums};
use crate::kernels::simd::Float;
use candle_core::{bail, Result, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// How a kernel slides over an image: its strides and the zeros added
/// before and after each axis (asymmetric for Keras's "same" with even
/// kernels or strides). A number `p` is stride 1 with `p` zeros on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvWindow {
    /// (rows, columns)
    pub strides: (usize, usize),
    /// zeros (above, below) the image
    pub pad_h: (usize, usize),
    /// zeros (left, right) of the image
    pub pad_w: (usize, usize),
}

impl From<usize> for ConvWindow {
    fn from(p: usize) -> Self {
        ConvWindow {
            strides: (1, 1),
            pad_h: (p, p),
            pad_w: (p, p),
        }
    }
}

impl ConvWindow {
    /// The same padding on all four sides, if it is.
    pub(crate) fn symmetric_pad(&self) -> Option<usize> {
        let p = self.pad_h.0;
        (self.pad_h == (p, p) && self.pad_w == (p, p)).then_some(p)
    }
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) o: usize,
    /// kernel height and width
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    /// strides along the rows and the columns
    pub(crate) sh: usize,
    pub(crate) sw: usize,
    /// zeros above and left of the image (the rest of the padding is
    /// implied by `ho`, `wo`)
    pub(crate) pt: usize,
    pub(crate) pl: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
    /// the same zeros on all four sides (what the Winograd path takes)
    pub(crate) sym_pad: Option<usize>,
}

impl Geom {
    pub(crate) fn new(
        x: &[usize],
        kernel: &[usize],
        bias: &[usize],
        win: impl Into<ConvWindow>,
    ) -> Result<Self> {
        let win = win.into();
        let (&[n, c, h, w], &[o, ci, kh, kw], &[ob]) = (x, kernel, bias) else {
            bail!("conv2d: expected x [N, C, H, W], kernel [O, C, kh, kw], bias [O], got {x:?}, {kernel:?}, {bias:?}")
        };
        if ci != c || ob != o || kh == 0 || kw == 0 {
            bail!("conv2d: shapes do not fit: x {x:?}, kernel {kernel:?}, bias {bias:?}")
        }
        let ConvWindow {
            strides: (sh, sw),
            pad_h: (pt, pb),
            pad_w: (pl, pr),
        } = win;
        if sh == 0 || sw == 0 {
            bail!("conv2d: strides must be at least 1, got {sh}x{sw}")
        }
        if h + pt + pb < kh || w + pl + pr < kw {
            bail!(
                "conv2d: kernel {kh}x{kw} is larger than the padded input {x:?} (padding {win:?})"
            )
        }
        Ok(Geom {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            sh,
            sw,
            pt,
            pl,
            ho: (h + pt + pb - kh) / sh + 1,
            wo: (w + pl + pr - kw) / sw + 1,
            sym_pad: win.symmetric_pad(),
        })
    }
    /// Whether [`super::forward`] can pool this convolution's output (with 2×2
    /// windows, after the ReLU) as it computes it: on the Winograd path,
    /// with at least one whole window.
    pub(crate) fn pools(&self) -> bool {
        self.winograd() && self.ho >= 2 && self.wo >= 2
    }
    /// Whether the Winograd path ([`super::winograd`]) takes this
    /// convolution: 3×3 kernels, stride 1, the same padding on every side,
    /// and enough channels on both sides that the products are worth a
    /// gemm. (The first layer's 3 input channels stay on im2col.)
    pub(crate) fn winograd(&self) -> bool {
        const MIN_CHANNELS: usize = 16;
        (self.kh, self.kw, self.sh, self.sw) == (3, 3, 1, 1)
            && self.sym_pad.is_some()
            && self.c >= MIN_CHANNELS
            && self.o >= MIN_CHANNELS
    }
    /// The padding on each side, on the Winograd path (symmetric).
    pub(crate) fn p(&self) -> usize {
        self.sym_pad.unwrap_or(self.pt)
    }
    /// Taps of one kernel plane.
    pub(crate) fn kk(&self) -> usize {
        self.kh * self.kw
    }
    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    pub(crate) fn ckk(&self) -> usize {
        self.c * self.kk()
    }
    /// Columns of the im2col matrix: one per output pixel.
    pub(crate) fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    /// [`Self::hw_out`] rounded up to a multiple of 16 (a whole AVX-512
    /// register of f32s): the forward gemm's `m`. gemm copies its whole left
    /// operand first when `m` is not such a multiple (here 900, 225, 169).
    pub(crate) fn hw_padded(&self) -> usize {
        self.hw_out().next_multiple_of(16)
    }
    /// Lengths of `dx`, `dK` and `db` in [`super::backward`]'s flat result.
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
    /// For kernel row `ki`: the input row that output row `oh` sees, or
    /// `None` where it falls in the padding.
    pub(crate) fn input_row(&self, oh: usize, ki: usize) -> Option<usize> {
        (oh * self.sh + ki)
            .checked_sub(self.pt)
            .filter(|&ih| ih < self.h)
    }
    /// For kernel column `kj`: the output columns `lo..hi` whose input
    /// column `ow·sw + kj - pl` lies inside the image, and that input column
    /// for the first (the next ones are `sw` apart).
    pub(crate) fn valid_cols(&self, kj: usize) -> (usize, usize, usize) {
        let lo = self.pl.saturating_sub(kj).div_ceil(self.sw).min(self.wo);
        let hi = (self.w + self.pl)
            .saturating_sub(kj)
            .div_ceil(self.sw)
            .min(self.wo)
            .max(lo);
        let iw0 = if hi > lo {
            lo * self.sw + kj - self.pl
        } else {
            0
        };
        (lo, hi, iw0)
    }
}

/// Images are spread over rayon's threads, each running single-threaded
/// gemms; a batch smaller than the pool hands the threads to gemm instead.
pub(crate) fn gemm_parallelism(batch: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if batch >= threads || threads == 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// Runs of images that [`super::backward`] hands out as one task each: enough for
/// rayon to balance them over the threads, fixed so that the sums over the
/// batch do not depend on the thread count.
pub(crate) const BACKWARD_RUNS: usize = 16;

/// Which gradients [`super::backward`] computes: only those of tracked inputs (the
/// first layer's images need none, which skips a whole convolution).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wanted {
    pub dx: bool,
    pub dk: bool,
    pub db: bool,
}

/// Image `i`'s output gradient from `dy`: masked by the ReLU's output `y`
/// when the forward applied it (written into `masked`, which it returns),
/// with its per-channel sums added to `db` when given.
pub(crate) fn image_grad<'a, T: Float>(
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
pub(crate) fn sum_runs<T: WithDType>(
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
pub(crate) fn data_chunks<T>(
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

/// What a convolution's forward does to each output plane as it writes it,
/// while the plane is still in cache: the ReLU; then, with `pool`, 2×2
/// max-pooling (the Winograd paths only, after the ReLU: the output is
/// pooled, each window's argmax kept for the backward); or, with
/// `moments`, each plane's [`PlaneSums`] for a BatchNormalization right
/// after the layer (not of a pooled output). [`super::forward`] refuses
/// what no path fuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Epilogue {
    pub relu: bool,
    pub pool: bool,
    pub moments: bool,
}

/// A forward's results: the output `y`; with a fused pooling, each
/// window's argmax (for the backward); and when asked for, each output
/// plane's [`PlaneSums`], taken while the plane is still in cache (for a
/// BatchNormalization right after the layer, which then needs no pass of
/// its own over `y`).
pub(crate) struct Forward<T> {
    pub y: Vec<T>,
    pub argmax: Vec<u8>,
    pub moments: Vec<PlaneSums>,
}

/// One chunk of images' share of a forward's outputs, for the chunk's
/// task to write: its `y`, and each window's argmax with a fused pooling
/// and each plane's sums when they are asked for (see [`write_forward`]).
pub(crate) struct OutChunk<'a, T> {
    pub y: &'a mut [MaybeUninit<T>],
    pub argmax: Option<&'a mut [MaybeUninit<u8>]>,
    pub sums: Option<&'a mut [MaybeUninit<PlaneSums>]>,
}

/// A forward's outputs ([`Forward`]) for `e`, allocated once and written
/// in parallel by `write`, called on each chunk of `images` images of `x`
/// (the last one shorter) with the chunk's [`OutChunk`]. Every forward
/// path writes its outputs through this, so their sizes, their split into
/// chunks and their lengths at the end are in one place.
///
/// # Safety
/// `write` writes every element of its chunk's `y`, and of its `argmax`
/// and `sums` where it gets them.
pub(crate) unsafe fn write_forward<T: Float>(
    g: &Geom,
    e: Epilogue,
    images: usize,
    x: &[T],
    write: impl Fn(&[T], OutChunk<'_, T>) + Sync,
) -> Forward<T> {
    let y_image = if e.pool {
        g.pooled_image()
    } else {
        g.y_image()
    };
    let chunks = g.n.div_ceil(images);
    let mut y = Vec::with_capacity(g.n * y_image);
    let (mut argmax, argmax_len) = (Vec::new(), if e.pool { g.n * y_image } else { 0 });
    let mut argmax_chunks = data_chunks(&mut argmax, argmax_len, images * y_image, chunks);
    let (mut sums, sums_len) = (Vec::new(), if e.moments { g.n * g.o } else { 0 });
    let mut sum_chunks = data_chunks(&mut sums, sums_len, images * g.o, chunks);
    y.spare_capacity_mut()[..g.n * y_image]
        .par_chunks_mut(images * y_image)
        .zip(argmax_chunks.par_iter_mut().zip(sum_chunks.par_iter_mut()))
        .zip(x.par_chunks(images * g.x_image()))
        .for_each(|((y, (argmax, sums)), x)| {
            let (argmax, sums) = (argmax.take(), sums.take());
            write(x, OutChunk { y, argmax, sums })
        });
    drop((argmax_chunks, sum_chunks));
    // SAFETY: every chunk's `write` wrote all of its outputs (the caller's
    // promise), and the chunks cover the lengths set.
    unsafe {
        y.set_len(g.n * y_image);
        argmax.set_len(argmax_len);
        sums.set_len(sums_len);
    }
    Forward {
        y,
        argmax,
        moments: sums,
    }
}

/// An image's (or chunk's) slots for its output planes' sums, in order,
/// when they are asked for; see [`write_forward`].
pub(crate) type SumSlots<'a> = Option<std::slice::IterMut<'a, MaybeUninit<PlaneSums>>>;

/// Takes the sums of output plane `y_o` into the next slot, if any.
///
/// # Safety
/// Every element of `y_o` has been written.
#[inline]
pub(crate) unsafe fn take_sums<T: Float>(slots: &mut SumSlots, y_o: &[MaybeUninit<T>]) {
    if let Some(slot) = slots.as_mut().and_then(Iterator::next) {
        // SAFETY: `y_o` is initialized (the caller's promise), and
        // MaybeUninit<T> has T's layout.
        let y_o = unsafe { &*(y_o as *const [MaybeUninit<T>] as *const [T]) };
        slot.write(plane_sums(y_o));
    }
}

/// With moments asked for, a forward's `moments` are [`plane_sums`] of
/// each of its output planes (`plane` values each), bit for bit.
#[cfg(test)]
pub(crate) fn assert_sums_of_planes(out: &Forward<f32>, plane: usize, what: &str) {
    let want: Vec<PlaneSums> = out.y.chunks_exact(plane).map(plane_sums).collect();
    assert_eq!(
        out.moments.len(),
        want.len(),
        "{what}: one sum per output plane"
    );
    if let Some(p) = out.moments.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "{what}: plane {p}'s sums are {:?}, want {:?}",
            out.moments[p], want[p]
        );
    }
}

/// `buf` filled with zeros, as initialized values.
pub(crate) fn zeroed<T: WithDType>(buf: &mut [MaybeUninit<T>]) -> &mut [T] {
    buf.fill(MaybeUninit::new(T::zero()));
    // SAFETY: every element was written just above, and MaybeUninit<T> has
    // T's layout.
    unsafe { &mut *(buf as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// Sum of one plane, in 16 lanes so that it vectorizes.
pub(crate) fn plane_sum<T: WithDType>(v: &[T]) -> f64 {
    let mut lanes = [T::zero(); 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        lanes.iter_mut().zip(c).for_each(|(l, &x)| *l += x);
    }
    lanes.iter().chain(rest).map(|x| x.to_f64()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each chunk's task gets its own images of `x` and exactly their share
    /// of every output, the last chunk shorter; the outputs come back at
    /// their full lengths, in the images' order.
    #[test]
    fn write_forward_hands_each_chunk_its_images_and_their_outputs() {
        // 5 images of 2 × 6 × 6 (each pixel its image's number), 3 output
        // channels: 4 × 4 outputs, 2 × 2 pooled.
        let g = Geom::new(&[5, 2, 6, 6], &[3, 2, 3, 3], &[3], 0usize).unwrap();
        let x: Vec<f32> = (0..5).flat_map(|i| vec![i as f32; g.x_image()]).collect();
        for (images, pool, moments) in [
            (2, true, false),
            (2, false, true),
            (1, false, false),
            (8, true, false),
        ] {
            let e = Epilogue {
                relu: true,
                pool,
                moments,
            };
            let write = |x: &[f32], out: OutChunk<'_, f32>| {
                let first = x[0] as usize;
                let count = x.len() / g.x_image();
                assert!(x
                    .chunks_exact(g.x_image())
                    .enumerate()
                    .all(|(j, x_n)| x_n[0] as usize == first + j));
                let y_image = if pool { g.pooled_image() } else { g.y_image() };
                assert_eq!(out.y.len(), count * y_image, "y of {count} images");
                for (j, y_n) in out.y.chunks_exact_mut(y_image).enumerate() {
                    y_n.fill(MaybeUninit::new((first + j) as f32));
                }
                assert_eq!(out.argmax.is_some(), pool);
                if let Some(a) = out.argmax {
                    assert_eq!(a.len(), count * y_image);
                    for (j, a_n) in a.chunks_exact_mut(y_image).enumerate() {
                        a_n.fill(MaybeUninit::new((first + j) as u8));
                    }
                }
                assert_eq!(out.sums.is_some(), moments);
                if let Some(s) = out.sums {
                    assert_eq!(s.len(), count * g.o);
                    for (k, s) in s.iter_mut().enumerate() {
                        let sum = (first + k / g.o) as f32;
                        s.write(PlaneSums {
                            shift: 0.0,
                            sum,
                            sum_sq: 0.0,
                        });
                    }
                }
            };
            // SAFETY: `write` fills every output it gets (above).
            let out = unsafe { write_forward(&g, e, images, &x, write) };
            let y_image = if pool { g.pooled_image() } else { g.y_image() };
            let want_y: Vec<f32> = (0..5).flat_map(|i| vec![i as f32; y_image]).collect();
            assert_eq!(out.y, want_y, "{images} images a chunk, pool {pool}");
            let want_argmax: Vec<u8> = (0..5).flat_map(|i| vec![i as u8; y_image]).collect();
            assert_eq!(out.argmax, if pool { want_argmax } else { vec![] });
            let sums: Vec<f32> = out.moments.iter().map(|s| s.sum).collect();
            let want_sums: Vec<f32> = (0..5).flat_map(|i| vec![i as f32; g.o]).collect();
            assert_eq!(sums, if moments { want_sums } else { vec![] });
        }
    }
}
