//! Winograd's minimal filtering F(2×2, 3×3) for the 3×3 convolutions with
//! enough channels (every layer of the article's model but the first).
//!
//! Each 2×2 block of output pixels (a *tile*) is computed from the 4×4 input
//! patch under it as `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` (Lavin & Gray, 2016): the
//! input patch `d` and the kernel `g` go to a 4×4 "Winograd domain", where
//! the convolution over the channels becomes 16 independent matrix products,
//! one per entry `ξ` of the 4×4 (`M_ξ = U_ξ · V_ξ`, output channels × input
//! channels × tiles). That is 16 multiplies per tile and channel pair
//! instead of 36: the gemms, which are most of a training step, do 2.25x
//! fewer multiply-adds than with im2col. The transforms only add and
//! subtract (and halve, for the kernel).
//!
//! Both gradients go through the same domain. With `dM = A dY Aᵀ` (the
//! adjoint of the output transform):
//!
//! * kernel: `dU_ξ = dM_ξ · V_ξᵀ`, then `dK = Gᵀ dU G`;
//! * input: `dV_ξ = U_ξᵀ · dM_ξ`, then each tile's `B dV Bᵀ` is added back
//!   onto the 4×4 patch it came from (neighbouring patches overlap by two
//!   rows or columns).
//!
//! Images go through in chunks of a few hundred tiles: gemm then runs near
//! its peak, and a chunk's matrices stay in cache between the transforms and
//! the products. The forward in f32 on x86 CPUs skips `V`'s matrix, and
//! the backward's `dV` skips gemm's packing: see [`products`]. In f32 the results differ from im2col's only by rounding
//! (the transforms' coefficients are 0, ±1 and ±½).
//!
//! The forward of a layer whose tile rows fill a register (the article's
//! second layer, on AVX2) goes through F(4×4, 3×3) instead, 2.25
//! multiplies a pixel against 4: see [`f4`].

use super::geom::{
    data_chunks, gemm_parallelism, image_grad, sum_runs, take_sums, write_forward, Epilogue,
    Forward, Geom, OutChunk, Wanted, BACKWARD_RUNS,
};
#[cfg(target_arch = "x86_64")]
use crate::kernels::conv::products::InRegisters;
use crate::kernels::max_pool::takes_over;
#[cfg(target_arch = "x86_64")]
use crate::kernels::simd::regs::Reg;
use crate::kernels::simd::{kernel_grad_dots, multiversion, Float};
use candle_core::WithDType;
use gemm::Parallelism;
use products::Isa;
use rayon::prelude::*;
use std::mem::MaybeUninit;

mod f4;
mod products;

/// Entries of a transformed 4×4 tile, `ξ = 4·row + column`: one gemm each.
const XI: usize = 16;

/// For row `i` of `Bᵀ` (and column `i` of `B`): the two entries it takes,
/// and whether it subtracts the second (`Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0],
/// [0, -1, 1, 0], [0, 1, 0, -1]]`). Entry `ξ = (i, j)`
/// of `Bᵀ d B` is then `(d[k₁, l₁] ∓ d[k₂, l₁]) ∓ (d[k₁, l₂] ∓ d[k₂, l₂])`
/// with `(k₁, k₂) = TAPS[i]`, `(l₁, l₂) = TAPS[j]`: four patch entries.
const TAPS: [(usize, usize, bool); 4] = [(0, 2, true), (1, 2, false), (2, 1, true), (1, 3, true)];

/// Tiles a chunk of images aims for: enough columns for the products to
/// run near their peak, few enough that less of the backward's three
/// chunk matrices (`V`, `dM`, `dV`: 16 × tiles × (2C + O) values, 1.5–3.0
/// MB for the article's layers at 256) falls out of L2 between the passes.
/// 512 made them twice that: on an Ice Lake Xeon (L2 1.25 MB) 256 took
/// the layers' backward 113–120 → 102–110 ms and the step 99–117 → 93–104
/// ms (BENCHMARKS.md, 2026-12-07, evening); the forward did not change.
const CHUNK_TILES: usize = 256;

/// How a convolution's output splits into 2×2 tiles, and images into chunks.
///
/// An image's padded input is kept as four *quadrant planes*, one per
/// (row parity, column parity): pixel `(2r + a, 2s + b)` is entry `(r, s)`
/// of plane `2a + b`. Entry `(k, l)` of tile `(ty, tx)`'s 4×4 patch is then
/// entry `(ty + k/2, tx + l/2)` of plane `2·(k%2) + l%2`, so with the tiles
/// numbered `t = ty·tq + tx`, each of the 16 patch entries of all tiles is
/// one contiguous run of a plane, and every transform is a flat loop over
/// `t` that compiles to vector code. The price is one extra tile column
/// (`tx = tw`, past the image): its outputs are never written back, its
/// output gradients are zero, and it adds `1/tq` to the gemms' columns.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    /// tile rows the passes cover: the output height halved, rounded up;
    /// behind a 2×2 pooling, rounded down (see [`Tiling::new`])
    th: usize,
    /// tile columns, `⌈Wo/2⌉`, plus the extra one: the quadrant planes'
    /// row length
    tq: usize,
    /// rows of a quadrant plane: the whole padded input, `⌈Ho/2⌉ + 1`
    plane_rows: usize,
    /// images per chunk
    per_chunk: usize,
}

impl Tiling {
    /// With `pool` (a 2×2 max-pooling follows), only the tiles its windows
    /// read: with an odd `Ho` the last tile row's outputs fall outside every
    /// window, so neither the forward nor the backward touches them (a
    /// seventh of the model's fourth convolution; their gradients are zero).
    fn new(g: &Geom, pool: bool) -> Self {
        let th = if pool { g.ho / 2 } else { g.ho.div_ceil(2) };
        let tq = g.wo.div_ceil(2) + 1;
        Tiling {
            th,
            tq,
            plane_rows: g.ho.div_ceil(2) + 1,
            per_chunk: (CHUNK_TILES / (th * tq)).max(1),
        }
    }
    /// Tiles of one image the passes cover, the extra column included.
    fn per_image(&self) -> usize {
        self.th * self.tq
    }
    /// Columns of a chunk's matrices (`V_ξ`, `M_ξ`, ...) for `images`
    /// images: their tiles side by side, rounded up to a multiple of 16 so
    /// that gemm reads the matrices in place.
    fn cols(&self, images: usize) -> usize {
        (images * self.per_image()).next_multiple_of(16)
    }
    /// One quadrant plane: `plane_rows` rows of `tq`, and one entry of
    /// slack for the extra column's last tile, whose patch wraps past the
    /// end.
    fn quad_len(&self) -> usize {
        self.plane_rows * self.tq + 1
    }
    /// From one input channel's four planes to the next's, where the
    /// products in registers read every channel's (see [`odd_lines`]).
    fn channel_len(&self) -> usize {
        odd_lines(4 * self.quad_len())
    }
}

/// `len` values rounded up to an odd number of 64-byte lines (of f32; of
/// 128-byte pairs of lines for f64). The passes here read or write many
/// runs at once a fixed distance apart: the transforms 16 runs, one per
/// `ξ` block of a chunk matrix, and the products in registers every input
/// channel's planes. Runs a multiple of 4 KB apart (a 64-channel layer's
/// `M_ξ` blocks of 64 × 48 tiles are 12 KB) map to the same sets of a
/// 32 KB 8-way L1 and evict each other; an odd number of lines apart, they
/// spread over all of them. On a Zen 3 core the output transform of that
/// layer went from 11.1 to 7.0 µs an image, and the products of the
/// 32-channel layer on 30 × 30 from 64 to 70 GFLOP/s (BENCHMARKS.md,
/// 2026-12-07).
fn odd_lines(len: usize) -> usize {
    16 * (len.div_ceil(16) | 1)
}

/// A chunk matrix `[16, rows, cols]`, one block per `ξ`, with its blocks
/// [`odd_lines`] apart.
#[derive(Clone, Copy, Debug)]
struct Blocks {
    rows: usize,
    cols: usize,
}

impl Blocks {
    /// From one `ξ` block to the next.
    fn stride(&self) -> usize {
        odd_lines(self.rows * self.cols)
    }
    /// The whole matrix, padding included.
    fn len(&self) -> usize {
        XI * self.stride()
    }
    /// Block `ξ`, `[rows, cols]`.
    fn block<'a, T>(&self, m: &'a [T], xi: usize) -> &'a [T] {
        &m[xi * self.stride()..][..self.rows * self.cols]
    }
    /// Mutable [`Blocks::block`].
    fn block_mut<'a, T>(&self, m: &'a mut [T], xi: usize) -> &'a mut [T] {
        &mut m[xi * self.stride()..][..self.rows * self.cols]
    }
    /// Row `row` of each block, from column `t0`, `len` long.
    fn streams<'a, T>(&self, m: &'a [T], row: usize, t0: usize, len: usize) -> [&'a [T]; XI] {
        std::array::from_fn(|xi| &self.block(m, xi)[row * self.cols + t0..][..len])
    }
    /// Mutable [`Blocks::streams`].
    fn streams_mut<'a, T>(
        &self,
        m: &'a mut [T],
        row: usize,
        t0: usize,
        len: usize,
    ) -> [&'a mut [T]; XI] {
        let mut it = m[..self.len()]
            .chunks_exact_mut(self.stride())
            .map(|block| &mut block[row * self.cols + t0..][..len]);
        std::array::from_fn(|_| it.next().expect("16 blocks"))
    }
    /// Zeroes the columns `used..cols` of every row: gemm reads them (and
    /// sums over them for the kernel gradient), and scratch holds whatever
    /// the last call left there.
    fn zero_past<T: WithDType>(&self, m: &mut [T], used: usize) {
        for block in m[..self.len()].chunks_exact_mut(self.stride()) {
            for row in block[..self.rows * self.cols].chunks_exact_mut(self.cols) {
                row[used..].fill(T::zero());
            }
        }
    }
}

/// The kernels in the Winograd domain, `U [16, O, C]`: `G g Gᵀ` for each
/// 3×3 kernel `g` of `kernel [O, C, 3, 3]`, with
/// `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
fn transform_kernel<T: Float>(g: &Geom, kernel: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    // G applied to three values: its four rows.
    let gv = |a: T, b: T, c: T| [a, (a + b + c) * half, (a - b + c) * half, c];
    let oc = g.o * g.c;
    let mut u = vec![T::zero(); XI * oc];
    for (j, k) in kernel.chunks_exact(9).enumerate() {
        let cols = [0, 1, 2].map(|l| gv(k[l], k[3 + l], k[6 + l]));
        for i in 0..4 {
            let row = gv(cols[0][i], cols[1][i], cols[2][i]);
            for (jj, v) in row.into_iter().enumerate() {
                u[(4 * i + jj) * oc + j] = v;
            }
        }
    }
    u
}

/// The adjoint of [`transform_kernel`]: `dK [O, C, 3, 3]` from
/// `dUᵀ [16, C, O]`, `Gᵀ dU G` for each kernel.
fn untransform_kernel_grad<T: Float>(g: &Geom, du_t: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    // Gᵀ applied to four values: its three rows.
    let gt = |a: T, b: T, c: T, d: T| [a + (b + c) * half, (b - c) * half, (b + c) * half + d];
    let oc = g.o * g.c;
    let mut dk = vec![T::zero(); 9 * oc];
    for (j, out) in dk.chunks_exact_mut(9).enumerate() {
        let (o, c) = (j / g.c, j % g.c);
        let du = |xi: usize| du_t[xi * oc + c * g.o + o];
        let rows = [0, 1, 2, 3].map(|i| gt(du(4 * i), du(4 * i + 1), du(4 * i + 2), du(4 * i + 3)));
        for l in 0..3 {
            let col = gt(rows[0][l], rows[1][l], rows[2][l], rows[3][l]);
            for (k, v) in col.into_iter().enumerate() {
                out[3 * k + l] = v;
            }
        }
    }
    dk
}

/// `(w, x, y, z) = f(a, b, c, d)` element-wise. Each run is its own
/// reference argument, which tells the compiler that they do not overlap:
/// that is what lets these loops vectorize.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn map4to4<T: Float>(
    [a, b, c, d]: [&[T]; 4],
    w: &mut [T],
    x: &mut [T],
    y: &mut [T],
    z: &mut [T],
    f: impl Fn(T, T, T, T) -> [T; 4],
) {
    let n = w.len();
    let (a, b, c, d) = (&a[..n], &b[..n], &c[..n], &d[..n]);
    let (x, y, z) = (&mut x[..n], &mut y[..n], &mut z[..n]);
    for i in 0..n {
        [w[i], x[i], y[i], z[i]] = f(a[i], b[i], c[i], d[i]);
    }
}

/// `(w, x, y, z) = f(a, b)` element-wise; see [`map4to4`].
#[inline(always)]
fn map2to4<T: Float>(a: &[T], b: &[T], [w, x, y, z]: [&mut [T]; 4], f: impl Fn(T, T) -> [T; 4]) {
    let n = w.len();
    let (a, b) = (&a[..n], &b[..n]);
    let (x, y, z) = (&mut x[..n], &mut y[..n], &mut z[..n]);
    for i in 0..n {
        [w[i], x[i], y[i], z[i]] = f(a[i], b[i]);
    }
}

/// `K` runs of `n` from the start of `buf`.
#[inline(always)]
fn runs_mut<T, const K: usize>(buf: &mut [T], n: usize) -> [&mut [T]; K] {
    let mut it = buf.chunks_exact_mut(n);
    std::array::from_fn(|_| it.next().expect("buffer holds K runs"))
}

/// `B` applied to four values: the transpose of `Bᵀ` (see [`TAPS`]).
#[inline(always)]
fn b<T: Float>(a: T, b: T, c: T, d: T) -> [T; 4] {
    [a, b - c + d, b + c - a, T::zero() - d]
}

/// `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]` applied to four values.
#[inline(always)]
fn at<T: Float>(a: T, b: T, c: T, d: T) -> [T; 2] {
    [a + b + c, b - c - d]
}

/// `A` applied to two values: the transpose of [`at`].
#[inline(always)]
fn a<T: Float>(e: T, o: T) -> [T; 4] {
    [e, e + o, e - o, T::zero() - o]
}

/// Where row `ih` of an image `w` wide, placed at offset `(p, p)`, lands in
/// the quadrant planes: the runs that take its even-indexed and its
/// odd-indexed pixels, as `(start, len)` in `quads`.
#[inline(always)]
fn row_runs(t: &Tiling, ih: usize, w: usize, p: usize) -> [(usize, usize); 2] {
    let (r, a) = ((ih + p) / 2, (ih + p) % 2);
    // Pixel iw lands on padded column iw + p: plane 2a + (iw + p) % 2,
    // entry (iw + p) / 2 of its row r.
    let run = |iw: usize| {
        let plane = 2 * a + (iw + p) % 2;
        (
            plane * t.quad_len() + r * t.tq + (iw + p) / 2,
            (w - iw).div_ceil(2),
        )
    };
    [run(0), run(1.min(w))]
}

/// Splits `src [h, w]`, placed at offset `(p, p)` in a zero grid, into the
/// four quadrant planes `quads [4, quad_len]` (see [`Tiling`]).
#[inline(always)]
fn split<T: WithDType>(src: &[T], w: usize, p: usize, t: &Tiling, quads: &mut [T]) {
    quads.fill(T::zero());
    for (ih, row) in src.chunks_exact(w).enumerate() {
        let [(even_at, even_len), (odd_at, odd_len)] = row_runs(t, ih, w, p);
        // The two runs lie in different planes.
        let (lo, hi) = quads.split_at_mut(even_at.max(odd_at));
        let (even, odd) = match even_at < odd_at {
            true => (&mut lo[even_at..][..even_len], &mut hi[..odd_len]),
            false => (&mut hi[..even_len], &mut lo[odd_at..][..odd_len]),
        };
        // Pairs in one loop, which vectorizes (two strided loops do not).
        let pairs = row.chunks_exact(2);
        if let [last] = pairs.remainder() {
            even[even_len - 1] = *last;
        }
        for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
            (*e, *o) = (pair[0], pair[1]);
        }
    }
}

/// The inverse of [`split`]: every element of `dst [h, w]` read back from
/// the quadrant planes, plus `bias` (and through the ReLU when asked).
#[inline(always)]
fn merge<T: Float>(
    quads: &[T],
    w: usize,
    p: usize,
    t: &Tiling,
    dst: &mut [MaybeUninit<T>],
    bias: T,
    relu: bool,
) {
    // Rows shorter than 16 in f32 on AVX2 or AVX-512: a register of pixels
    // from two half loads, interleaved in the register (`MergeRows`). A
    // 15 × 15 plane took 0.10 µs so against 0.14–0.17 pair by pair (an Ice
    // Lake Xeon); a 32 × 32 one 0.31 against the eights' 0.24 below.
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = Isa::available()
        .next()
        .filter(|_| T::DTYPE == candle_core::DType::F32 && w < 16)
    {
        // SAFETY (the casts): T is f32 (checked just above).
        let quads =
            unsafe { std::slice::from_raw_parts(quads.as_ptr().cast::<f32>(), quads.len()) };
        let dst = unsafe {
            std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<MaybeUninit<f32>>(), dst.len())
        };
        let bias = bias.to_f64() as f32;
        let job = MergeRows {
            quads,
            w,
            p,
            t,
            dst,
            bias,
            relu,
        };
        // SAFETY: the job holds slices; it checks its own accesses.
        return unsafe { isa.run(job) };
    }
    // Rows of 16 and more eight pixel pairs at a time, which vectorizes: one
    // pair at a time, the loop built each pair in a register and stored it
    // alone, and a 32 × 32 plane took 2.4 times as long (0.49 against 0.21
    // µs). Shorter rows elsewhere keep that loop alone: with the eights'
    // code beside it, 15 × 15 took 30% longer.
    match w >= 16 {
        true => merge_rows::<T, 8>(quads, w, p, t, dst, bias, relu),
        false => merge_rows::<T, 1>(quads, w, p, t, dst, bias, relu),
    }
}

/// [`merge`] in registers of `L` f32 lanes: each row `L` pixels at a time,
/// `L/2` from its even-column run and `L/2` from its odd one, interleaved
/// in the register ([`Reg::zip_halves`]), plus the bias, through the ReLU.
/// A row's last register reaches past its end into the next row, which is
/// written after it; where that would pass the end of `dst`, or a load the
/// end of `quads`, the register goes through a local array or the pixels
/// one by one. The same additions as [`merge_rows`]; the ReLU is
/// [`Reg::max`] with zero, `f32::relu`'s.
#[cfg(target_arch = "x86_64")]
struct MergeRows<'a> {
    quads: &'a [f32],
    w: usize,
    p: usize,
    t: &'a Tiling,
    dst: &'a mut [MaybeUninit<f32>],
    bias: f32,
    relu: bool,
}

#[cfg(target_arch = "x86_64")]
impl InRegisters for MergeRows<'_> {
    #[inline(always)]
    unsafe fn run<R: Reg, const W: usize, const OB: usize>(self) {
        let MergeRows {
            quads,
            w,
            p,
            t,
            dst,
            bias,
            relu,
        } = self;
        let h = dst.len() / w;
        // SAFETY (the intrinsics): the CPU has R's ISA (the caller's promise).
        let (b, zero) = unsafe { (R::splat(bias), R::zero()) };
        for ih in 0..h {
            let [(even_at, _), (odd_at, _)] = row_runs(t, ih, w, p);
            let row = ih * w;
            for c in (0..w).step_by(R::L) {
                let (e, o) = (even_at + c / 2, odd_at + c / 2);
                let loads_fit = e.max(o) + R::L / 2 <= quads.len();
                if !loads_fit {
                    // (pixel by pixel: the pairs' even and odd runs, the
                    // row's odd last pixel from the even run)
                    for x in c..w.min(c + R::L) {
                        let v = match x % 2 {
                            0 => quads[even_at + x / 2],
                            _ => quads[odd_at + x / 2],
                        } + bias;
                        dst[row + x].write(if relu { v.max(0.0) } else { v });
                    }
                    continue;
                }
                // SAFETY: both loads lie in `quads` (checked just above);
                // the CPU has R's ISA.
                let v = unsafe {
                    let v =
                        R::load_halves(quads.as_ptr().add(e), quads.as_ptr().add(o)).zip_halves();
                    let v = v.add(b);
                    if relu {
                        v.max(zero)
                    } else {
                        v
                    }
                };
                if row + c + R::L <= dst.len() {
                    // SAFETY: L f32s from `row + c` lie in `dst` (checked).
                    unsafe { v.store(dst.as_mut_ptr().add(row + c).cast::<f32>()) };
                } else {
                    let mut lanes = [0f32; 16];
                    // SAFETY: `lanes` holds 16 ≥ L f32s.
                    unsafe { v.store(lanes.as_mut_ptr()) };
                    let n = (w - c).min(R::L);
                    for (d, &v) in dst[row + c..][..n].iter_mut().zip(&lanes) {
                        d.write(v);
                    }
                }
            }
        }
    }
}

/// [`merge`], `K > 1` pairs of pixels at a time, then pair by pair (with
/// `K = 1`, pair by pair only).
#[inline(always)]
fn merge_rows<T: Float, const K: usize>(
    quads: &[T],
    w: usize,
    p: usize,
    t: &Tiling,
    dst: &mut [MaybeUninit<T>],
    bias: T,
    relu: bool,
) {
    let act = |v: T| if relu { T::relu(v + bias) } else { v + bias };
    for (ih, row) in dst.chunks_exact_mut(w).enumerate() {
        let [(even_at, even_len), (odd_at, odd_len)] = row_runs(t, ih, w, p);
        let (even, odd) = (&quads[even_at..][..even_len], &quads[odd_at..][..odd_len]);
        let groups = if K > 1 { w / (2 * K) } else { 0 };
        let (head, tail) = row.split_at_mut(2 * K * groups);
        let runs = (even.chunks_exact(K), odd.chunks_exact(K));
        for ((out, e), o) in head.chunks_exact_mut(2 * K).zip(runs.0).zip(runs.1) {
            for i in 0..K {
                out[2 * i].write(act(e[i]));
                out[2 * i + 1].write(act(o[i]));
            }
        }
        let (even, odd) = (&even[K * groups..], &odd[K * groups..]);
        let mut pairs = tail.chunks_exact_mut(2);
        for ((pair, &e), &o) in pairs.by_ref().zip(even).zip(odd) {
            pair[0].write(act(e));
            pair[1].write(act(o));
        }
        if let [last] = pairs.into_remainder() {
            last.write(act(even[even.len() - 1]));
        }
    }
}

/// The 16 entries of every tile's 4×4 patch, `(k, l)` at `4k + l`, as runs
/// of the quadrant planes (see [`Tiling`]).
#[inline(always)]
fn patches<'a, T>(quads: &'a [T], t: &Tiling) -> [&'a [T]; XI] {
    std::array::from_fn(|kl| {
        let (k, l) = (kl / 4, kl % 4);
        let plane = &quads[(2 * (k % 2) + l % 2) * t.quad_len()..][..t.quad_len()];
        &plane[(k / 2) * t.tq + l / 2..][..t.per_image()]
    })
}

/// Scratch one call of the plane transforms below needs: the quadrant
/// planes and 32 runs of one image's tiles.
fn work_len(t: &Tiling) -> usize {
    4 * t.quad_len() + 2 * XI * t.per_image()
}

multiversion! {
    /// `V = Bᵀ d B` of every tile of one input channel `x_c [H, W]`, into
    /// `v` (16 runs, one per ξ): each entry from its four patch entries
    /// (see [`TAPS`]) in one pass, the additions in the order the two-step
    /// `Bᵀ d` then `(Bᵀ d) B` makes them (one pass writes `V` once instead
    /// of a 16-run intermediate and then `V`).
    fn input_tiles<T>(g: &Geom, t: &Tiling, x_c: &[T], v: [&mut [T]; XI], work: &mut [T]) {
        let n = t.per_image();
        let quads = &mut work[..4 * t.quad_len()];
        split(x_c, g.w, g.p(), t, quads);
        let d = patches(quads, t);
        for (xi, v) in v.into_iter().enumerate() {
            let ((k1, k2, si), (l1, l2, sj)) = (TAPS[xi / 4], TAPS[xi % 4]);
            let taps = [d[4 * k1 + l1], d[4 * k2 + l1], d[4 * k1 + l2], d[4 * k2 + l2]];
            let v = &mut v[..n];
            // (the signs as constants in each arm: no branch in the loop)
            match (si, sj) {
                (false, false) => map4to1(taps, v, |a, b, c, d| (a + b) + (c + d)),
                (false, true) => map4to1(taps, v, |a, b, c, d| (a + b) - (c + d)),
                (true, false) => map4to1(taps, v, |a, b, c, d| (a - b) + (c - d)),
                (true, true) => map4to1(taps, v, |a, b, c, d| (a - b) - (c - d)),
            }
        }
    }
}

/// `w = f(a, b, c, d)` element-wise; see [`map4to4`].
#[inline(always)]
fn map4to1<T: Float>([a, b, c, d]: [&[T]; 4], w: &mut [T], f: impl Fn(T, T, T, T) -> T) {
    let n = w.len();
    let (a, b, c, d) = (&a[..n], &b[..n], &c[..n], &d[..n]);
    for i in 0..n {
        w[i] = f(a[i], b[i], c[i], d[i]);
    }
}

multiversion! {
    /// One output channel from `M` (16 runs, one per ξ): `Aᵀ M A` of every
    /// tile plus the bias, through the ReLU when asked, into `y_o [Ho, Wo]`;
    /// or, with `argmax`, max-pooled over each tile (its 2×2 pixels are the
    /// pooling window) into `y_o [Ho/2, Wo/2]`, with the window's maximum's
    /// position (0..4, row-major) into `argmax`.
    fn output_tiles<T>(
        g: &Geom,
        t: &Tiling,
        m: [&[T]; XI],
        y_o: &mut [MaybeUninit<T>],
        bias: T,
        relu: bool,
        argmax: Option<&mut [MaybeUninit<u8>]>,
        work: &mut [T],
    ) {
        if let Some(argmax) = argmax {
            return pooled_tiles(g, t, m, y_o, argmax, bias, work);
        }
        let n = t.per_image();
        let quads = &mut work[..4 * t.quad_len()];
        let [y00, y01, y10, y11] = runs_mut::<T, 4>(quads, t.quad_len());
        let (y00, y01, y10, y11) = (&mut y00[..n], &mut y01[..n], &mut y10[..n], &mut y11[..n]);
        // (the 16 runs one by one, as in `pooled_tiles`: read through the
        // array, the loop ran 10–40% slower)
        let [m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15] = m;
        let (m0, m1, m2, m3) = (&m0[..n], &m1[..n], &m2[..n], &m3[..n]);
        let (m4, m5, m6, m7) = (&m4[..n], &m5[..n], &m6[..n], &m7[..n]);
        let (m8, m9, m10, m11) = (&m8[..n], &m9[..n], &m10[..n], &m11[..n]);
        let (m12, m13, m14, m15) = (&m12[..n], &m13[..n], &m14[..n], &m15[..n]);
        // One pass, each tile's 2×2 pixels into the planes from registers,
        // as `pooled_tiles` does: through 8 runs of `A` along the rows in
        // memory, as two passes, the transform took 13% longer (a Zen 3).
        for i in 0..n {
            // A along each row r of the tile's M: s_r = [(r, 0), (r, 1)] ...
            let s0 = at(m0[i], m1[i], m2[i], m3[i]);
            let s1 = at(m4[i], m5[i], m6[i], m7[i]);
            let s2 = at(m8[i], m9[i], m10[i], m11[i]);
            let s3 = at(m12[i], m13[i], m14[i], m15[i]);
            // ... then Aᵀ down each column j: pixels (0, j) and (1, j).
            [y00[i], y10[i]] = at(s0[0], s1[0], s2[0], s3[0]);
            [y01[i], y11[i]] = at(s0[1], s1[1], s2[1], s3[1]);
        }
        merge(quads, g.wo, 0, t, y_o, bias, relu)
    }
}

/// [`output_tiles`] with the pooling: every tile's `Aᵀ M A`, the bias, the
/// ReLU and the pick of its 2×2 pixels in one flat loop over the tiles the
/// pooling reads (the first `⌊Ho/2⌋` rows, extra column too) into `flat`,
/// then copied out row by row into `y` and `argmax` (both `[Ho/2, wo]`).
/// One pass, in registers: the transform's two steps as separate passes
/// through memory cost more than their additions. Ties go to the first
/// pixel in row-major order and a NaN wins, as in `max_pool2d`; this
/// model's rows of 15 and 6 windows are shorter than AVX-512's 16 lanes,
/// hence the flat loop.
#[inline(always)]
fn pooled_tiles<T: Float>(
    g: &Geom,
    t: &Tiling,
    m: [&[T]; XI],
    y: &mut [MaybeUninit<T>],
    argmax: &mut [MaybeUninit<u8>],
    bias: T,
    flat: &mut [T],
) {
    let (len, wo) = (t.per_image(), g.wo / 2);
    // best [len] and its pixel 0..4 (as T, so that the loop is one width)
    let (best, at_px) = flat[..2 * len].split_at_mut(len);
    let [m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15] = m;
    let (m0, m1, m2, m3) = (&m0[..len], &m1[..len], &m2[..len], &m3[..len]);
    let (m4, m5, m6, m7) = (&m4[..len], &m5[..len], &m6[..len], &m7[..len]);
    let (m8, m9, m10, m11) = (&m8[..len], &m9[..len], &m10[..len], &m11[..len]);
    let (m12, m13, m14, m15) = (&m12[..len], &m13[..len], &m14[..len], &m15[..len]);
    let pixel = [1.0, 2.0, 3.0].map(T::from_f64);
    for i in 0..len {
        // A along each row r of the tile's M: s_r = [(r, 0), (r, 1)] ...
        let s0 = at(m0[i], m1[i], m2[i], m3[i]);
        let s1 = at(m4[i], m5[i], m6[i], m7[i]);
        let s2 = at(m8[i], m9[i], m10[i], m11[i]);
        let s3 = at(m12[i], m13[i], m14[i], m15[i]);
        // ... then Aᵀ down each column j: pixels (0, j) and (1, j).
        let [p00, p10] = at(s0[0], s1[0], s2[0], s3[0]);
        let [p01, p11] = at(s0[1], s1[1], s2[1], s3[1]);
        let (mut b, mut k) = (T::relu(p00 + bias), T::zero());
        for (p, q) in [(p01, pixel[0]), (p10, pixel[1]), (p11, pixel[2])] {
            let v = T::relu(p + bias);
            (b, k) = if takes_over(v, b) { (v, q) } else { (b, k) };
        }
        (best[i], at_px[i]) = (b, k);
    }
    let rows = y.chunks_exact_mut(wo).zip(argmax.chunks_exact_mut(wo));
    for (py, (y, argmax)) in rows.enumerate() {
        let (best, at_px) = (&best[py * t.tq..][..wo], &at_px[py * t.tq..][..wo]);
        for ((y, k), (&b, &a)) in y.iter_mut().zip(argmax).zip(best.iter().zip(at_px)) {
            y.write(b);
            k.write(a.to_f64() as u8);
        }
    }
}

multiversion! {
    /// `dM = A dY Aᵀ` of every tile (the adjoint of [`output_tiles`]) of one
    /// output channel's gradient `dy_o [Ho, Wo]`, into `dm` (16 runs).
    fn output_grad_tiles<T>(g: &Geom, t: &Tiling, dy_o: &[T], dm: [&mut [T]; XI], work: &mut [T]) {
        let (quads, z) = work.split_at_mut(4 * t.quad_len());
        split(dy_o, g.wo, 0, t, quads);
        dm_from_quads(quads, t, dm, z);
    }
}

multiversion! {
    /// [`output_grad_tiles`] behind the pooling: each window's gradient
    /// `dy_o [Ho/2, Wo/2]` goes to the pixel `argmax` names, where the
    /// window's output `y_o` (after the ReLU) is positive; every other
    /// pixel's gradient is zero.
    fn pooled_grad_tiles<T>(
        g: &Geom,
        t: &Tiling,
        dy_o: &[T],
        y_o: &[T],
        argmax: &[u8],
        dm: [&mut [T]; XI],
        work: &mut [T],
    ) {
        let (quads, z) = work.split_at_mut(4 * t.quad_len());
        quads.fill(T::zero());
        let wo = g.wo / 2;
        let rows = dy_o.chunks_exact(wo).zip(y_o.chunks_exact(wo)).zip(argmax.chunks_exact(wo));
        for (py, ((dy, y), argmax)) in rows.enumerate() {
            for (x, ((&d, &y), &k)) in dy.iter().zip(y).zip(argmax).enumerate() {
                quads[k as usize * t.quad_len() + py * t.tq + x] = T::relu_grad(d, y);
            }
        }
        dm_from_quads(quads, t, dm, z);
    }
}

/// `dM = A dY Aᵀ` of every tile from the output gradient's quadrant planes;
/// `z` is scratch of 8 runs of one image's tiles.
#[inline(always)]
fn dm_from_quads<T: Float>(quads: &[T], t: &Tiling, dm: [&mut [T]; XI], z: &mut [T]) {
    let n = t.per_image();
    let dy: [&[T]; 4] = std::array::from_fn(|q| &quads[q * t.quad_len()..][..n]);
    // A down each column j (pixels (0, j) and (1, j)), into z[4j + i] ...
    let [z0, z1] = runs_mut::<T, 2>(&mut z[..8 * n], 4 * n);
    map2to4(dy[0], dy[2], runs_mut(z0, n), a);
    map2to4(dy[1], dy[3], runs_mut(z1, n), a);
    // ... then A along each row i.
    let z = &*z;
    for (i, out) in dm.into_iter().array_chunks4().enumerate() {
        map2to4(&z[i * n..][..n], &z[(4 + i) * n..][..n], out, a);
    }
}

multiversion! {
    /// One input channel's gradient `dx_c [H, W]` from `dV` (16 runs): each
    /// tile's `B dV Bᵀ` (the adjoint of [`input_tiles`]) added onto the
    /// patch it came from, the padding dropped.
    fn input_grad_tiles<T>(
        g: &Geom,
        t: &Tiling,
        dv: [&[T]; XI],
        dx_c: &mut [MaybeUninit<T>],
        work: &mut [T],
    ) {
        let n = t.per_image();
        let (quads, tmp) = work.split_at_mut(4 * t.quad_len());
        let (r, dd) = tmp.split_at_mut(XI * n);
        // B down each column j, into r[4j + k] ...
        for (j, [r0, r1, r2, r3]) in runs_mut::<T, XI>(r, n).into_iter().array_chunks4().enumerate() {
            map4to4([dv[j], dv[4 + j], dv[8 + j], dv[12 + j]], r0, r1, r2, r3, b);
        }
        // ... then B along each row k: patch entry (k, l) at dd[4k + l].
        let r = &*r;
        for (k, [d0, d1, d2, d3]) in runs_mut::<T, XI>(dd, n).into_iter().array_chunks4().enumerate() {
            let col = |j: usize| &r[(4 * j + k) * n..][..n];
            map4to4([col(0), col(1), col(2), col(3)], d0, d1, d2, d3, b);
        }
        // Entry (k, l) goes to plane 2·(k%2) + l%2 at offset (k/2)·tq + l/2.
        // One pass per offset: entries of a plane at different offsets
        // overlap from one tile to the next.
        quads.fill(T::zero());
        for (dk, dl) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            for (kp, lp) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (k, l) = (2 * dk + kp, 2 * dl + lp);
                let plane = &mut quads[(2 * kp + lp) * t.quad_len()..][..t.quad_len()];
                let to = &mut plane[dk * t.tq + dl..][..n];
                for (to, &d) in to.iter_mut().zip(&dd[(4 * k + l) * n..][..n]) {
                    *to += d;
                }
            }
        }
        merge(quads, g.w, g.p(), t, dx_c, T::zero(), false);
    }
}

/// Groups of `K` consecutive items of an iterator of exactly a multiple of `K`.
trait ArrayChunks: Iterator + Sized {
    fn array_chunks4(mut self) -> impl Iterator<Item = [Self::Item; 4]> {
        std::iter::from_fn(move || Some([self.next()?, self.next()?, self.next()?, self.next()?]))
    }
}
impl<I: Iterator> ArrayChunks for I {}

/// For each ξ, `dst_ξᵀ = lhs_ξᵀ · rhs_ξ` where `lhs_ξ` is `[inner, cols]` row-major
/// (read as its column-major transpose, gemm's in-place form) and `rhs_ξ`
/// `[inner, rows]` is read through `(rhs_cs, rhs_rs)`; `dst_ξ` is
/// `[rows, cols]` row-major. `dst` and `lhs` are chunk matrices ([`Blocks`]),
/// `rhs` 16 blocks side by side.
#[rustfmt::skip]
#[allow(clippy::too_many_arguments)]
fn gemm_tiles<T: WithDType>(
    cols: usize, rows: usize, inner: usize,
    dst: &mut [T], lhs: &[T], rhs: &[T], rhs_strides: (isize, isize), par: Parallelism,
) {
    let (d_blocks, l_blocks) = (Blocks { rows, cols }, Blocks { rows: inner, cols });
    for xi in 0..XI {
        let (d, l, r) = (d_blocks.block_mut(dst, xi),
                         l_blocks.block(lhs, xi),
                         &rhs[xi * inner * rows..][..inner * rows]);
        // SAFETY: d [rows, cols] and l [inner, cols] are row-major with these
        // sizes, read as column-major transposes; r holds inner·rows values,
        // read with strides that stay inside it.
        unsafe {
            gemm::gemm(
                cols, rows, inner,
                d.as_mut_ptr(), cols as isize, 1, false,
                l.as_ptr(), cols as isize, 1,
                r.as_ptr(), rhs_strides.0, rhs_strides.1,
                T::zero(), T::one(), false, false, false, par,
            )
        }
    }
}

/// The forward pass: input transform, the 16 products `M_ξ = U_ξ · V_ξ`,
/// output transform with the bias (and the ReLU). With `pool`, each 2×2
/// tile is then max-pooled (after the ReLU): the result is
/// `[N, O, Ho/2, Wo/2]`, and the second vector holds each window's argmax
/// for [`backward`]. f32 on CPUs with AVX2 or AVX-512 takes the products in
/// registers, image by image, without writing `V` ([`products`]), and
/// F(4×4) where it pays ([`f4::pays`]); the rest goes chunk by chunk
/// through gemm.
pub(super) fn forward<T: Float>(
    g: &Geom,
    x: &[T],
    kernel: &[T],
    bias: &[T],
    e: Epilogue,
) -> Forward<T> {
    match Isa::pick::<T>(Tiling::new(g, e.pool).per_image()) {
        Some(isa) if f4::pays(isa, g, e.pool) => f4::forward(isa, g, x, kernel, bias, e),
        Some(isa) => forward_in_registers(isa, g, x, kernel, bias, e),
        None => forward_in_chunks(g, x, kernel, bias, e),
    }
}

/// [`forward`] through chunk matrices and gemm: f64, and f32 on CPUs
/// without AVX2.
fn forward_in_chunks<T: Float>(
    g: &Geom,
    x: &[T],
    kernel: &[T],
    bias: &[T],
    e: Epilogue,
) -> Forward<T> {
    let (relu, pool) = (e.relu, e.pool);
    let t = Tiling::new(g, pool);
    let u = transform_kernel(g, kernel);
    let plane = if pool {
        g.pooled_image() / g.o
    } else {
        g.hw_out()
    };
    let par = gemm_parallelism(g.n.div_ceil(t.per_chunk));
    let write = |x_chunk: &[T], out: OutChunk<'_, T>| {
        let (images, n) = (x_chunk.len() / g.x_image(), t.per_image());
        let cols = t.cols(images);
        let (vb, mb) = (Blocks { rows: g.c, cols }, Blocks { rows: g.o, cols });
        let (v_len, m_len) = (vb.len(), mb.len());
        T::with_scratch(v_len + m_len + work_len(&t), |scratch| {
            let (v, rest) = scratch.split_at_mut(v_len);
            let (m, work) = rest.split_at_mut(m_len);
            vb.zero_past(v, images * n);
            for (i, x_n) in x_chunk.chunks_exact(g.x_image()).enumerate() {
                for (c, x_c) in x_n.chunks_exact(g.h * g.w).enumerate() {
                    input_tiles(g, &t, x_c, vb.streams_mut(v, c, i * n, n), work);
                }
            }
            // U_ξ [O, C] read as U_ξᵀ: column stride C, row stride 1.
            gemm_tiles(cols, g.o, g.c, m, v, &u, (g.c as isize, 1), par);
            let planes = out.y.chunks_exact_mut(plane);
            let mut argmax_planes = out.argmax.map(|a| a.chunks_exact_mut(plane));
            let mut slots = out.sums.map(|s| s.iter_mut());
            for (j, (y_o, &b)) in planes.zip(bias.iter().cycle()).enumerate() {
                let m = mb.streams(m, j % g.o, j / g.o * n, n);
                let argmax = argmax_planes.as_mut().and_then(Iterator::next);
                output_tiles(g, &t, m, y_o, b, relu, argmax, work);
                // SAFETY: output_tiles wrote the whole plane.
                unsafe { take_sums(&mut slots, y_o) };
            }
        });
    };
    // SAFETY: `write` writes every plane of its chunk's images and, with
    // `pool`, every window's argmax; with `moments` it takes every plane's
    // sums.
    unsafe { write_forward(g, e, t.per_chunk, x, write) }
}

/// [`forward`] for f32 with the products in `isa`'s registers, image by
/// image (see [`products`]): split into quadrant planes, `M_ξ` of every
/// `ξ`, output transform.
fn forward_in_registers<T: Float>(
    isa: Isa,
    g: &Geom,
    x: &[T],
    kernel: &[T],
    bias: &[T],
    e: Epilogue,
) -> Forward<T> {
    let (relu, pool) = (e.relu, e.pool);
    assert_eq!(
        T::DTYPE,
        candle_core::DType::F32,
        "the products in registers are f32"
    );
    // SAFETY (both casts): T is f32 (asserted).
    let as_f32 = |s: &[T]| unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) };
    let as_f32_mut = |s: &mut [T]| unsafe {
        std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len())
    };
    let t = Tiling::new(g, pool);
    let n = t.per_image();
    // U as [16, C, O]: one ξ and input channel's O values side by side.
    let u = transform_kernel(g, as_f32(kernel));
    let mut ut = vec![0f32; u.len()];
    for (u, ut) in u
        .chunks_exact(g.o * g.c)
        .zip(ut.chunks_exact_mut(g.o * g.c))
    {
        for (o, row) in u.chunks_exact(g.c).enumerate() {
            for (ch, &v) in row.iter().enumerate() {
                ut[ch * g.o + o] = v;
            }
        }
    }
    let plane = if pool {
        g.pooled_image() / g.o
    } else {
        g.hw_out()
    };
    let quads_len = g.c * t.channel_len();
    let write = |x_n: &[T], out: OutChunk<'_, T>| {
        let mb = Blocks { rows: g.o, cols: n };
        T::with_scratch(quads_len + mb.len() + work_len(&t), |scratch| {
            let (quads, rest) = scratch.split_at_mut(quads_len);
            let (m, work) = rest.split_at_mut(mb.len());
            for (x_c, q) in x_n
                .chunks_exact(g.h * g.w)
                .zip(quads.chunks_exact_mut(t.channel_len()))
            {
                split_planes(x_c, g.w, g.p(), &t, q);
            }
            products::image(isa, &t, g.c, g.o, as_f32(quads), &ut, as_f32_mut(m));
            let planes = out.y.chunks_exact_mut(plane);
            let mut argmax_planes = out.argmax.map(|a| a.chunks_exact_mut(plane));
            let mut slots = out.sums.map(|s| s.iter_mut());
            for (o, (y_o, &b)) in planes.zip(bias).enumerate() {
                let m = mb.streams(m, o, 0, n);
                let argmax = argmax_planes.as_mut().and_then(Iterator::next);
                output_tiles(g, &t, m, y_o, b, relu, argmax, work);
                // SAFETY: output_tiles wrote the whole plane.
                unsafe { take_sums(&mut slots, y_o) };
            }
        });
    };
    // SAFETY: `write` writes every plane of its image and, with
    // `pool`, every window's argmax; with `moments` it takes every plane's
    // sums.
    unsafe { write_forward(g, e, 1, x, write) }
}

multiversion! {
    /// [`split`], compiled for the CPU's vector ISA.
    fn split_planes<T>(src: &[T], w: usize, p: usize, t: &Tiling, quads: &mut [T]) {
        split(src, w, p, t, quads)
    }
}

/// Every gradient in one pass over the batch, as `conv::im2col_backward` does
/// (same runs, same flat `[dx, dK, db]` result), chunk by chunk within each
/// run: the ReLU's mask and the bias sums, `dM` (and `V` for the kernel),
/// then `dUᵀ_ξ += V_ξ · dM_ξᵀ` and `dV_ξ = U_ξᵀ · dM_ξ`, and `dx` from `dV`.
///
/// With `argmax` (the forward pooled), `y` and `dy` are the pooled output
/// and its gradient, and `argmax` the forward's second result.
pub(super) fn backward<T: Float>(
    g: &Geom,
    x: &[T],
    kernel: &[T],
    y: Option<&[T]>,
    dy: &[T],
    argmax: Option<&[u8]>,
    want: Wanted,
) -> Vec<T> {
    let t = Tiling::new(g, argmax.is_some());
    let n = t.per_image();
    let [dx_len, _, _] = g.grad_lens(want);
    let per_run = g.n.div_ceil(BACKWARD_RUNS).max(1);
    let runs = g.n.div_ceil(per_run);
    let par = gemm_parallelism(runs);
    let u = want.dx.then(|| transform_kernel(g, kernel));
    let du_len = XI * g.c * g.o;
    let mut out = Vec::with_capacity(dx_len + 9 * g.c * g.o + g.o);
    let mut dx_runs = data_chunks(&mut out, dx_len, per_run * g.x_image(), runs);
    let partials: Vec<(Vec<T>, Vec<f64>)> = dx_runs
        .par_iter_mut()
        .enumerate()
        .map(|(r, dx_run)| {
            let mut du_t = vec![T::zero(); if want.dk { du_len } else { 0 }];
            let mut db = vec![0f64; g.o];
            let images = r * per_run..((r + 1) * per_run).min(g.n);
            let max_cols = t.cols(t.per_chunk.min(images.len()));
            let blocks = |rows: usize, cols: usize| Blocks { rows, cols };
            let (v_len, dm_len) = (blocks(g.c, max_cols).len(), blocks(g.o, max_cols).len());
            T::with_scratch(2 * v_len + dm_len + g.y_image() + work_len(&t), |scratch| {
                let (v, rest) = scratch.split_at_mut(v_len);
                let (dv, rest) = rest.split_at_mut(v_len);
                let (dm, rest) = rest.split_at_mut(dm_len);
                let (masked, work) = rest.split_at_mut(g.y_image());
                for first in images.clone().step_by(t.per_chunk) {
                    let chunk = first..(first + t.per_chunk).min(images.end);
                    let cols = t.cols(chunk.len());
                    let (vb, mb) = (blocks(g.c, cols), blocks(g.o, cols));
                    let v = &mut v[..vb.len()];
                    let dv = &mut dv[..vb.len()];
                    let dm = &mut dm[..mb.len()];
                    vb.zero_past(v, chunk.len() * n);
                    mb.zero_past(dm, chunk.len() * n);
                    for (j, i) in chunk.clone().enumerate() {
                        if let (Some(argmax), Some(y)) = (argmax, y) {
                            let (image, plane) = (g.pooled_image(), g.pooled_image() / g.o);
                            let at = i * image..(i + 1) * image;
                            let (dy_n, y_n, argmax_n) =
                                (&dy[at.clone()], &y[at.clone()], &argmax[at]);
                            for (o, ((dy_o, y_o), argmax_o)) in dy_n
                                .chunks_exact(plane)
                                .zip(y_n.chunks_exact(plane))
                                .zip(argmax_n.chunks_exact(plane))
                                .enumerate()
                            {
                                if want.db {
                                    let passed =
                                        dy_o.iter().zip(y_o).map(|(&d, &y)| T::relu_grad(d, y));
                                    db[o] += passed.map(|v| v.to_f64()).sum::<f64>();
                                }
                                let dm = mb.streams_mut(dm, o, j * n, n);
                                pooled_grad_tiles(g, &t, dy_o, y_o, argmax_o, dm, work);
                            }
                        } else {
                            let db = want.db.then_some(&mut db[..]);
                            let dy_n = image_grad(g, i, dy, y, masked, db);
                            for (o, dy_o) in dy_n.chunks_exact(g.hw_out()).enumerate() {
                                let dm = mb.streams_mut(dm, o, j * n, n);
                                output_grad_tiles(g, &t, dy_o, dm, work);
                            }
                        }
                        if want.dk {
                            let x_n = &x[i * g.x_image()..][..g.x_image()];
                            for (c, x_c) in x_n.chunks_exact(g.h * g.w).enumerate() {
                                input_tiles(g, &t, x_c, vb.streams_mut(v, c, j * n, n), work);
                            }
                        }
                    }
                    if want.dk {
                        gemm_kernel_grad(g, cols, dm, v, &mut du_t);
                    }
                    if let (Some(u), Some(dx_run)) = (&u, dx_run.as_deref_mut()) {
                        match Isa::pick::<T>(cols) {
                            Some(isa) => products::chunk_input_grad(isa, cols, g.c, g.o, dm, u, dv),
                            // dV_ξᵀ [cols, C] = dM_ξᵀ [cols, O] · U_ξ [O, C]
                            None => gemm_tiles(cols, g.c, g.o, dv, dm, u, (1, g.c as isize), par),
                        }
                        for (j, i) in chunk.clone().enumerate() {
                            let at = (i - images.start) * g.x_image();
                            let dx_n = &mut dx_run[at..][..g.x_image()];
                            for (c, dx_c) in dx_n.chunks_exact_mut(g.h * g.w).enumerate() {
                                let dv = vb.streams(dv, c, j * n, n);
                                input_grad_tiles(g, &t, dv, dx_c, work);
                            }
                        }
                    }
                }
            });
            (du_t, db)
        })
        .collect();
    drop(dx_runs);
    // SAFETY: every image of every run was written above (when dx is wanted).
    unsafe { out.set_len(dx_len) };

    let (du_t, db) = sum_runs(&partials, if want.dk { du_len } else { 0 }, g.o);
    if want.dk {
        out.extend(untransform_kernel_grad(g, &du_t));
    } else {
        out.extend(std::iter::repeat_n(T::zero(), 9 * g.c * g.o));
    }
    out.extend(db.into_iter().map(T::from_f64));
    out
}

/// `dUᵀ_ξ [C, O] += (dM_ξ [O, cols] · V_ξ [C, cols]ᵀ)ᵀ` for each ξ.
fn gemm_kernel_grad<T: Float>(g: &Geom, cols: usize, dm: &[T], v: &[T], du_t: &mut [T]) {
    let (mb, vb) = (Blocks { rows: g.o, cols }, Blocks { rows: g.c, cols });
    for (xi, du_t) in du_t.chunks_exact_mut(g.c * g.o).enumerate() {
        kernel_grad_dots(g.o, g.c, cols, mb.block(dm, xi), vb.block(v, xi), du_t);
    }
}

#[cfg(test)]
mod tests {
    use super::super::geom::assert_sums_of_planes;
    use super::*;

    /// The products in registers, in every ISA this CPU has, against the
    /// chunked gemms, bit for bit: the article's layers (a few images), channel counts
    /// that leave partial blocks of outputs, tiles that are not a multiple
    /// of the lanes, more input channels than one block of `V`, with and
    /// without padding and pooling.
    #[test]
    fn products_in_registers_match_the_chunked_gemms() {
        let mut next = crate::kernels::test_values(7);
        // (images, in, out, side, padding)
        let shapes = [
            (3, 32, 32, 32, 0),
            (2, 32, 64, 15, 1),
            (2, 64, 64, 15, 0),
            (3, 17, 19, 13, 1),
            (1, 16, 21, 9, 0),
            // more input channels than the kernel's block of `V` holds
            (1, 130, 8, 9, 0),
        ];
        let isas: Vec<Isa> = Isa::available().collect();
        if isas.is_empty() {
            eprintln!("no AVX2 or AVX-512 here: only the chunked gemms run");
        }
        for (images, c, o, side, pad) in shapes {
            let g = Geom::new(&[images, c, side, side], &[o, c, 3, 3], &[o], pad).unwrap();
            let x: Vec<f32> = (0..g.n * g.x_image()).map(|_| next()).collect();
            let kernel: Vec<f32> = (0..o * c * 9).map(|_| next()).collect();
            let bias: Vec<f32> = (0..o).map(|_| next()).collect();
            for (relu, pool) in [(false, false), (true, false), (true, true)] {
                if pool && !g.pools() {
                    continue;
                }
                let m = !pool;
                let e = Epilogue {
                    relu,
                    pool,
                    moments: m,
                };
                let want = forward_in_chunks(&g, &x, &kernel, &bias, e);
                let plane = g.hw_out();
                if m {
                    assert_sums_of_planes(&want, plane, "chunks");
                }
                let (want, want_at) = (want.y, want.argmax);
                let lanes = Tiling::new(&g, pool).per_image();
                // (as `forward` picks: no ISA wider than the tiles computed)
                for &isa in isas.iter().filter(|isa| isa.lanes() <= lanes) {
                    let got = forward_in_registers(isa, &g, &x, &kernel, &bias, e);
                    let case = format!(
                        "{isa:?}, {images}×{c}→{o}, {side}², pad {pad}, relu {relu}, pool {pool}"
                    );
                    if m {
                        assert_sums_of_planes(&got, plane, &case);
                    }
                    let (got, got_at) = (got.y, got.argmax);
                    assert_eq!(got.len(), want.len(), "{case}");
                    assert_eq!(got_at.len(), want_at.len(), "{case}");
                    // Each sum over the input channels runs from the first to
                    // the last in FMAs, as gemm's does for these depths: the
                    // same values bit for bit, so the pooling picks the same.
                    let differ = got
                        .iter()
                        .zip(&want)
                        .position(|(a, b)| a.to_bits() != b.to_bits());
                    if let Some(k) = differ {
                        panic!("{case}: value {k} is {}, want {}", got[k], want[k]);
                    }
                    assert_eq!(got_at, want_at, "{case}: the pooling's picks differ");
                }
            }
        }
    }

    /// The runs the passes read or write together, for the article's three
    /// Winograd layers: the `ξ` blocks of the forward's `M`, of the
    /// backward's chunk matrices, and the products' channel planes, are
    /// an odd number of 64-byte lines apart (never a multiple of 4 KB,
    /// see [`odd_lines`]), and past the values each holds.
    #[test]
    fn runs_read_together_are_an_odd_number_of_lines_apart() {
        // (in, out, side, padding, pooled)
        for (c, o, side, pad, pool) in [
            (32, 32, 32, 0, true),
            (32, 64, 15, 1, false),
            (64, 64, 15, 0, true),
        ] {
            let g = Geom::new(&[128, c, side, side], &[o, c, 3, 3], &[o], pad).unwrap();
            let t = Tiling::new(&g, pool);
            let cols = t.cols(t.per_chunk);
            let blocks = |rows: usize, cols: usize| (Blocks { rows, cols }.stride(), rows * cols);
            let runs = [
                ("M per image", blocks(o, t.per_image())),
                ("V per chunk", blocks(c, cols)),
                ("dM per chunk", blocks(o, cols)),
                ("planes", (t.channel_len(), 4 * t.quad_len())),
            ];
            for (what, (stride, len)) in runs {
                let case = format!("{c}→{o}, {side}²: {what}, {stride} f32 apart");
                assert!(stride >= len, "{case}, holding {len}");
                assert!(stride % 16 == 0 && (stride / 16) % 2 == 1, "{case}");
            }
        }
    }

    /// `merge` in registers, on every ISA this CPU has, against the pair
    /// loop bit for bit: every row width from 1 to 40 (odd ones, rows
    /// shorter than a register, rows that end mid-register), with and
    /// without padding, bias and ReLU, down to the last row, whose
    /// register must not pass the end of the plane, and the loads at the
    /// end of the quadrant planes.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn merge_in_registers_matches_the_pair_loop() {
        let mut next = crate::kernels::test_values(13);
        for side in 1..=40 {
            for pad in [0, 1] {
                let g = Geom::new(&[1, 1, side, side], &[1, 1, 3, 3], &[1], pad);
                let Ok(g) = g else { continue };
                let t = Tiling::new(&g, false);
                let quads: Vec<f32> = (0..4 * t.quad_len()).map(|_| next()).collect();
                for (bias, relu) in [(0.0, false), (0.25, true), (-0.5, true)] {
                    let mut want = vec![MaybeUninit::new(f32::NAN); side * side];
                    merge_rows::<f32, 1>(&quads, side, pad, &t, &mut want, bias, relu);
                    for isa in Isa::available() {
                        // (16 guard values past the plane, which no store may reach)
                        let mut got = vec![MaybeUninit::new(f32::NAN); side * side + 16];
                        let (w, p, t, dst) = (side, pad, &t, &mut got[..side * side]);
                        let job = MergeRows {
                            quads: &quads,
                            w,
                            p,
                            t,
                            dst,
                            bias,
                            relu,
                        };
                        // SAFETY: the job holds slices.
                        unsafe { isa.run(job) };
                        // SAFETY: both were written whole (NaN at first).
                        let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
                            v.iter()
                                .map(|x| unsafe { x.assume_init() }.to_bits())
                                .collect()
                        };
                        let case = format!("{isa:?}, {side}², pad {pad}, bias {bias}, relu {relu}");
                        assert_eq!(bits(&got[..side * side]), bits(&want), "{case}");
                        let guard = bits(&got[side * side..]);
                        assert!(
                            guard.iter().all(|&b| b == f32::NAN.to_bits()),
                            "{case}: a store passed the plane's end"
                        );
                    }
                }
            }
        }
    }

    /// The backward's `dV` in registers gives gemm's values bit for bit, on
    /// every ISA the CPU has: the article's channel counts, counts that
    /// leave partial blocks of rows, a chunk of one register's columns, and
    /// more summed channels than one block of `V`.
    #[test]
    fn input_grad_in_registers_matches_gemm() {
        let mut next = crate::kernels::test_values(11);
        // (columns, input channels, output channels)
        for (cols, c, o) in [
            (512, 32, 32),
            (448, 32, 64),
            (384, 64, 64),
            (16, 17, 19),
            (32, 5, 3),
            // more summed channels than the kernel's block of `V` holds
            (48, 7, 130),
        ] {
            let (mb, vb) = (Blocks { rows: o, cols }, Blocks { rows: c, cols });
            let dm: Vec<f32> = (0..mb.len()).map(|_| next()).collect();
            let u: Vec<f32> = (0..XI * o * c).map(|_| next()).collect();
            let mut want = vec![0f32; vb.len()];
            gemm_tiles(
                cols,
                c,
                o,
                &mut want,
                &dm,
                &u,
                (1, c as isize),
                Parallelism::None,
            );
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; vb.len()];
                products::chunk_input_grad(isa, cols, c, o, &dm, &u, &mut got);
                // (the blocks; not the padding between them)
                let blocks = |m: &[f32]| (0..XI).flat_map(|xi| vb.block(m, xi).to_vec()).collect();
                let (got, want): (Vec<f32>, Vec<f32>) = (blocks(&got), blocks(&want));
                let differ = got
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                if let Some(k) = differ {
                    panic!(
                        "{isa:?}, {cols} columns, {c}×{o}: value {k} is {}, want {}",
                        got[k], want[k]
                    );
                }
            }
        }
    }
}
