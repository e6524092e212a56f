//! Winograd F(4×4, 3×3) for the forward of a 3×3 convolution (with its
//! bias, and the ReLU and a 2×2 max-pooling when they follow), in f32 on
//! CPUs with AVX2 or AVX-512, where a tile row fills a register or two rows
//! fill it exactly: the article's second layer (30 × 30 outputs, the
//! model's largest; rows of 8 tiles, one to an AVX2 register, two to an
//! AVX-512 one), in the article's model and in its BatchNormalization
//! variant.
//!
//! Each 4×4 block of outputs (a tile: four pooling windows) comes from the
//! 6×6 input patch under it as `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: 36 products per
//! tile and channel pair, 2.25 a pixel, against F(2×2)'s 4 ([`super`]). The
//! coefficients are no longer only 0, ±1 and ±½ (up to 8 in `Aᵀ`, a sixth
//! and a 24th in `G`), so the values differ from the exact ones by more
//! rounding than F(2×2)'s (a test bounds it). The backward stays on F(2×2):
//! it recomputes its own transforms from `x`, and the pooling's argmax
//! means the same either way.
//!
//! Per image: the input goes to 16 *phase planes* (row and column mod 4),
//! as F(2×2)'s goes to four quadrant planes, so that each patch entry of a
//! tile row's tiles is one contiguous run; `V = Bᵀ d B` of every channel
//! in registers ([`InputTransform`]); the 36 products `M_ξ = U_ξ · V_ξ` by
//! the register products of [`crate::kernels::conv::products`]; each output
//! channel's `Aᵀ M A`, bias, ReLU and pooling in registers
//! ([`PooledOutput`], or [`Output`] and [`merge16`] without the pooling). The transforms are written against
//! [`Reg`] rather than left to the compiler: as loops over the runs of a
//! 64-tile image they compiled to scalar code, or to vector code whose
//! setup (overlap checks of a dozen pointers) cost as much as its work, and
//! F(4×4) was slower than F(2×2) (BENCHMARKS.md, 2026-12-07, night).

use super::odd_lines;
use crate::kernels::conv::geom::{take_sums, write_forward, Epilogue, Forward, Geom, OutChunk};
use crate::kernels::conv::products::Isa;
#[cfg(target_arch = "x86_64")]
use crate::kernels::conv::products::{InRegisters, Products, Strided};
#[cfg(target_arch = "x86_64")]
use crate::kernels::simd::regs::Reg;
use crate::kernels::simd::{multiversion, Float};
use std::mem::MaybeUninit;

/// Entries of a transformed 6×6 patch, `ξ = 6·i + j`.
const XI: usize = 36;

/// How the output splits into 4×4 tiles (2×2 pooled pixels each, behind
/// a pooling), and the input into phase planes. Patch entry `(k, l)` of tile
/// `(ty, tx)` is entry `(ty + k/4, tx + l/4)` of phase plane
/// `4·(k%4) + l%4`, whose rows are `tw + 1` long (the patches reach one
/// column past their tile's): a tile row's entries are one contiguous run.
/// The tiles themselves are numbered `t = ty·tw + tx` in `V` and `M`: no
/// column past the image (F(2×2)'s layout computes one, 1/9 of the products
/// here).
#[derive(Clone, Copy, Debug)]
struct Tiling4 {
    /// tile rows and columns (see [`Tiling4::new`])
    th: usize,
    tw: usize,
}

impl Tiling4 {
    /// With `pool`, the tiles a 2×2 pooling reads (its windows' rows
    /// and columns, halved and rounded up); else every output pixel's.
    fn new(g: &Geom, pool: bool) -> Self {
        match pool {
            true => Tiling4 {
                th: (g.ho / 2).div_ceil(2),
                tw: (g.wo / 2).div_ceil(2),
            },
            false => Tiling4 {
                th: g.ho.div_ceil(4),
                tw: g.wo.div_ceil(4),
            },
        }
    }
    /// Tiles of one image.
    fn per_image(&self) -> usize {
        self.th * self.tw
    }
    /// A phase plane's row length.
    fn row(&self) -> usize {
        self.tw + 1
    }
    /// One phase plane: `th + 1` rows (the patches reach one row past
    /// their tile's).
    fn plane_len(&self) -> usize {
        (self.th + 1) * self.row()
    }
    /// From one input channel's 16 planes to the next's.
    fn channel_len(&self) -> usize {
        odd_lines(16 * self.plane_len())
    }
    /// The tile rows one register of `lanes` takes in the input transform:
    /// one where a row fills it, two where a row is exactly half of it
    /// (the second layer's rows of 8 in AVX-512's 16 lanes), else `None`.
    fn rows_per_register(&self, lanes: usize) -> Option<usize> {
        match () {
            _ if self.tw >= lanes => Some(1),
            _ if 2 * self.tw == lanes && self.th >= 2 => Some(2),
            _ => None,
        }
    }
}

/// Whether F(4×4) runs this layer in `isa` (`pool`: the tiles a 2×2
/// pooling reads). Its input transform goes a tile row at a time, so a row
/// must fill a register, or two rows exactly
/// ([`Tiling4::rows_per_register`]): the article's second layer has rows of
/// 8 tiles, pooled or not (the BatchNormalization variant's), one to an
/// AVX2 register and two to an AVX-512 one. And an image must have at least
/// four registers of tiles: the fourth layer (3 × 3 tiles) does not, and
/// there F(4×4) took twice F(2×2)'s time in the first version of this
/// file. On a Zen 3 the second layer's forward takes 16–17% less time than
/// with F(2×2) (BENCHMARKS.md, 2026-12-07, night).
pub(super) fn pays(isa: Isa, g: &Geom, pool: bool) -> bool {
    let (t, l) = (Tiling4::new(g, pool), isa.lanes());
    t.rows_per_register(l).is_some() && t.per_image() >= 4 * l
}

/// `G = [[¼, 0, 0], [-⅙, -⅙, -⅙], [-⅙, ⅙, -⅙], [1/24, 1/12, ⅙],
/// [1/24, -1/12, ⅙], [0, 0, 1]]` applied to three values (in f64: the
/// kernels are rounded to f32 once, at the end).
fn g6(a: f64, b: f64, c: f64) -> [f64; 6] {
    [
        a / 4.0,
        -(a + b + c) / 6.0,
        -(a - b + c) / 6.0,
        a / 24.0 + b / 12.0 + c / 6.0,
        a / 24.0 - b / 12.0 + c / 6.0,
        c,
    ]
}

/// The kernels in the Winograd domain as `ut [36, C, O]` (one `ξ` and
/// input channel's `O` values side by side, as the products read them):
/// `G g Gᵀ` of each 3×3 kernel of `kernel [O, C, 3, 3]`.
fn transform_kernel(g: &Geom, kernel: &[f32]) -> Vec<f32> {
    let mut ut = vec![0f32; XI * g.c * g.o];
    for (j, k) in kernel.chunks_exact(9).enumerate() {
        let (o, c) = (j / g.c, j % g.c);
        let k = |at: usize| f64::from(k[at]);
        // G g, column by column: cols[l][i] = (G g)[i][l] ...
        let cols = [0, 1, 2].map(|l| g6(k(l), k(3 + l), k(6 + l)));
        for i in 0..6 {
            // ... then (G g) Gᵀ, row by row.
            let row = g6(cols[0][i], cols[1][i], cols[2][i]);
            for (jj, v) in row.into_iter().enumerate() {
                ut[((6 * i + jj) * g.c + c) * g.o + o] = v as f32;
            }
        }
    }
    ut
}

/// `Bᵀ = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
/// [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]` applied
/// to six registers.
///
/// # Safety
/// The CPU has `R`'s ISA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bt<R: Reg>([d0, d1, d2, d3, d4, d5]: [R; 6]) -> [R; 6] {
    // SAFETY: the caller's promise.
    unsafe {
        let (four, two) = (R::splat(4.0), R::splat(2.0));
        let (minus5, minus4, minus2) = (R::splat(-5.0), R::splat(-4.0), R::splat(-2.0));
        let (d12, p12, d31, d42) = (d1.sub(d2), d1.add(d2), d3.sub(d1), d4.sub(d2));
        [
            R::fmadd(four, d0, R::fmadd(minus5, d2, d4)),
            R::fmadd(minus4, p12, d3.add(d4)),
            R::fmadd(four, d12, d4.sub(d3)),
            R::fmadd(two, d31, d42),
            R::fmadd(minus2, d31, d42),
            R::fmadd(four, d1, R::fmadd(minus5, d3, d5)),
        ]
    }
}

/// `Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
/// [0, 1, -1, 8, -8, 1]]` applied to six registers.
///
/// # Safety
/// The CPU has `R`'s ISA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn at<R: Reg>([m0, m1, m2, m3, m4, m5]: [R; 6]) -> [R; 4] {
    // SAFETY: the caller's promise.
    unsafe {
        let (two, four, eight) = (R::splat(2.0), R::splat(4.0), R::splat(8.0));
        let (p12, d12, p34, d34) = (m1.add(m2), m1.sub(m2), m3.add(m4), m3.sub(m4));
        [
            m0.add(p12).add(p34),
            R::fmadd(two, d34, d12),
            R::fmadd(four, p34, p12),
            R::fmadd(eight, d34, d12).add(m5),
        ]
    }
}

multiversion! {
    /// Splits one channel `src [h, w]`, placed at offset `(p, p)` in a zero
    /// grid, into its 16 phase planes (see [`Tiling4`]): each row's
    /// aligned groups of four pixels in one loop over four runs (which
    /// vectorizes), the ends one by one.
    fn split16<T>(src: &[T], w: usize, p: usize, t: &Tiling4, planes: &mut [T]) {
        let pl = t.plane_len();
        planes[..16 * pl].fill(T::zero());
        // Each row's pixels before its first padded column that is a
        // multiple of 4, and from the first after its groups of four.
        let head = ((4 - p % 4) % 4).min(w);
        let tail = head + (w - head) / 4 * 4;
        for (ih, row) in src.chunks_exact(w).enumerate() {
            let ph = ih + p;
            let base = 4 * (ph % 4) * pl + (ph / 4) * t.row();
            for iw in (0..head).chain(tail..w) {
                let pw = iw + p;
                planes[base + (pw % 4) * pl + pw / 4] = row[iw];
            }
            let quads = row[head..tail].chunks_exact(4);
            let (q0, len) = ((head + p) / 4, quads.len());
            // phases 0..4 of the row's groups: four runs `pl` apart
            let (a, rest) = planes[base + q0..].split_at_mut(pl);
            let (b, rest) = rest.split_at_mut(pl);
            let (c, d) = rest.split_at_mut(pl);
            let (a, b, c, d) = (&mut a[..len], &mut b[..len], &mut c[..len], &mut d[..len]);
            for ((((a, b), c), d), quad) in a.iter_mut().zip(b).zip(c).zip(d).zip(quads) {
                (*a, *b, *c, *d) = (quad[0], quad[1], quad[2], quad[3]);
            }
        }
    }
}

/// Every tile's `Bᵀ d B` of one channel, from its 16 phase planes, into
/// `V`'s 36 runs (one per `ξ`, `vs` apart), one register of a tile row's
/// tiles at a time: `Bᵀ` down each of the patch's six columns into
/// registers, then along each of the six rows; a row's last register
/// overlaps the one before (the same values written twice). Where a
/// register holds two rows ([`Tiling4::rows_per_register`]), each load
/// takes its halves from two rows of the planes, and the tiles of the two
/// rows lie side by side in `V`; an odd last row goes with the one before
/// it (again written twice).
#[cfg(target_arch = "x86_64")]
struct InputTransform<'a> {
    t: &'a Tiling4,
    planes: &'a [f32],
    /// from row `c` of `V_0` on: `V_ξ`'s at `ξ · vs`
    v: &'a mut [f32],
    vs: usize,
}

#[cfg(target_arch = "x86_64")]
impl InRegisters for InputTransform<'_> {
    #[inline(always)]
    unsafe fn run<R: Reg, const W: usize, const OB: usize>(self) {
        let InputTransform { t, planes, v, vs } = self;
        let (tw, pl) = (t.tw, t.plane_len());
        let rows = t.rows_per_register(R::L);
        assert!(rows.is_some() && planes.len() >= 16 * pl && v.len() >= 35 * vs + t.per_image());
        let off: [[usize; 6]; 6] = std::array::from_fn(|k| {
            std::array::from_fn(|l| (4 * (k % 4) + l % 4) * pl + (k / 4) * t.row() + l / 4)
        });
        match rows {
            Some(1) => {
                for ty in 0..t.th {
                    let mut x = 0;
                    while x < tw {
                        let x0 = x.min(tw - R::L);
                        // SAFETY: the loads lie in the planes (entry
                        // `(ty + k/4, x0 + l/4 + lane)` of a plane, inside its
                        // `th + 1` rows of `tw + 1`), the stores in `v`
                        // (asserted); the CPU has R's ISA.
                        unsafe {
                            let p = planes.as_ptr().add(ty * t.row() + x0);
                            let v = v.as_mut_ptr().add(ty * tw + x0);
                            input_tiles::<R>(|o| R::load(p.add(o)), &off, v, vs);
                        }
                        x = x0 + R::L;
                    }
                }
            }
            _ => {
                // two rows to a register (`rows` is `Some(2)`: asserted)
                for ty in (0..t.th).step_by(2) {
                    let ty = ty.min(t.th - 2);
                    // SAFETY: each half lies in the planes (entry
                    // `(ty + k/4 (+1), l/4 + lane)`, lane < tw, of a plane of
                    // `th + 1` rows of `tw + 1`), the stores in `v` (tiles
                    // `ty·tw .. (ty + 2)·tw`); the CPU has R's ISA.
                    unsafe {
                        let (p, r) = (planes.as_ptr().add(ty * t.row()), t.row());
                        let v = v.as_mut_ptr().add(ty * tw);
                        input_tiles::<R>(|o| R::load_halves(p.add(o), p.add(o + r)), &off, v, vs);
                    }
                }
            }
        }
    }
}

/// One register of tiles' `Bᵀ d B` into `V`'s 36 runs at `v` (`vs` apart),
/// patch entry `(k, l)` of each tile from `load(off[k][l])`.
///
/// # Safety
/// The CPU has `R`'s ISA; `load` may be called with every offset of `off`;
/// the 36 runs at `v` hold `L` f32s.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn input_tiles<R: Reg>(
    load: impl Fn(usize) -> R,
    off: &[[usize; 6]; 6],
    v: *mut f32,
    vs: usize,
) {
    // SAFETY: the caller's promise.
    unsafe {
        // cols[l][i] = (Bᵀ d)[i][l] (loops, not `array::from_fn`: its
        // closures are compiled without the ISA, and the intrinsics in them
        // became calls)
        let mut cols = [[R::zero(); 6]; 6];
        for (l, col) in cols.iter_mut().enumerate() {
            let mut d = [R::zero(); 6];
            for (k, d) in d.iter_mut().enumerate() {
                *d = load(off[k][l]);
            }
            *col = bt(d);
        }
        // (a loop: `cols.map(|col| col[i])` made the layer 14% slower)
        #[allow(clippy::needless_range_loop)]
        for i in 0..6 {
            let mut t = [R::zero(); 6];
            for l in 0..6 {
                t[l] = cols[l][i];
            }
            for (j, r) in bt(t).into_iter().enumerate() {
                r.store(v.add((6 * i + j) * vs));
            }
        }
    }
}

/// One output channel from `M`'s 36 runs (`ms` apart): every tile's
/// `Aᵀ M A`, the bias and the ReLU, max-pooled over its four 2×2 windows
/// into `best` (four runs of `n`, window `(a, b)` at `2a + b`) with each
/// window's maximum's position (0..4, row-major, as f32) into `pick`. Ties
/// go to the first pixel and a NaN wins, as in `max_pool2d`.
#[cfg(target_arch = "x86_64")]
struct PooledOutput<'a> {
    n: usize,
    m: &'a [f32],
    ms: usize,
    bias: f32,
    best: &'a mut [f32],
    pick: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl InRegisters for PooledOutput<'_> {
    #[inline(always)]
    unsafe fn run<R: Reg, const W: usize, const OB: usize>(self) {
        let PooledOutput {
            n,
            m,
            ms,
            bias,
            best,
            pick,
        } = self;
        assert!(n >= R::L && m.len() >= 35 * ms + n && best.len() >= 4 * n && pick.len() >= 4 * n);
        let mut x = 0;
        while x < n {
            let x0 = x.min(n - R::L);
            // SAFETY: the loads and stores lie in the slices (asserted);
            // the CPU has R's ISA.
            unsafe {
                let zero = R::zero();
                let px = tile_pixels::<R>(m.as_ptr().add(x0), ms, bias, true);
                let q = [R::splat(1.0), R::splat(2.0), R::splat(3.0)];
                for (w, (a, bb)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    let (r, c) = (2 * a, 2 * bb);
                    let (mut top, mut k) = (px[c][r], zero);
                    (top, k) = R::keep_max(top, k, px[c + 1][r], q[0]);
                    (top, k) = R::keep_max(top, k, px[c][r + 1], q[1]);
                    (top, k) = R::keep_max(top, k, px[c + 1][r + 1], q[2]);
                    top.store(best.as_mut_ptr().add(w * n + x0));
                    k.store(pick.as_mut_ptr().add(w * n + x0));
                }
            }
            x = x0 + R::L;
        }
    }
}

/// One output channel from `M`'s 36 runs (`ms` apart): every tile's
/// `Aᵀ M A` plus the bias, through the ReLU when `relu`, into `px` (16
/// runs of `n`, pixel `(r, c)` of each tile at `4r + c`).
#[cfg(target_arch = "x86_64")]
struct Output<'a> {
    n: usize,
    m: &'a [f32],
    ms: usize,
    bias: f32,
    relu: bool,
    px: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl InRegisters for Output<'_> {
    #[inline(always)]
    unsafe fn run<R: Reg, const W: usize, const OB: usize>(self) {
        let Output {
            n,
            m,
            ms,
            bias,
            relu,
            px,
        } = self;
        assert!(n >= R::L && m.len() >= 35 * ms + n && px.len() >= 16 * n);
        let mut x = 0;
        while x < n {
            let x0 = x.min(n - R::L);
            // SAFETY: the loads and stores lie in the slices (asserted);
            // the CPU has R's ISA.
            unsafe {
                for (c, y) in tile_pixels::<R>(m.as_ptr().add(x0), ms, bias, relu)
                    .into_iter()
                    .enumerate()
                {
                    for (r, y) in y.into_iter().enumerate() {
                        y.store(px.as_mut_ptr().add((4 * r + c) * n + x0));
                    }
                }
            }
            x = x0 + R::L;
        }
    }
}

/// One register of tiles' `Aᵀ M A` from `M`'s 36 runs at `p` (`ms`
/// apart), plus the bias, through the ReLU when `relu`: pixel `(r, c)` at
/// `[c][r]`. (Loops, not `array::from_fn`: its closures are compiled
/// without the job's ISA, and the intrinsics in them became calls.)
///
/// # Safety
/// The CPU has `R`'s ISA; the 36 runs hold `L` f32s at `p`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_pixels<R: Reg>(p: *const f32, ms: usize, bias: f32, relu: bool) -> [[R; 4]; 4] {
    // SAFETY: the caller's promise.
    unsafe {
        // s[i][c]: Aᵀ along row i of the tile's M ...
        let mut s = [[R::zero(); 4]; 6];
        for (i, s) in s.iter_mut().enumerate() {
            let mut mi = [R::zero(); 6];
            for (j, mi) in mi.iter_mut().enumerate() {
                *mi = R::load(p.add((6 * i + j) * ms));
            }
            *s = at(mi);
        }
        // ... then down each column c: px[c][r], biased, through the ReLU.
        let (b, zero) = (R::splat(bias), R::zero());
        let mut px = [[R::zero(); 4]; 4];
        for (c, px) in px.iter_mut().enumerate() {
            let mut col = [R::zero(); 6];
            for (i, col) in col.iter_mut().enumerate() {
                *col = s[i][c];
            }
            for (px, v) in px.iter_mut().zip(at(col)) {
                *px = if relu { v.add(b).max(zero) } else { v.add(b) };
            }
        }
        px
    }
}

/// The four runs of `n` at the start of `r`.
fn runs4<T>(r: &[T], n: usize) -> [&[T]; 4] {
    let mut it = r.chunks_exact(n);
    std::array::from_fn(|_| it.next().expect("4 runs"))
}

/// Pooled pixel `(py, px)` of one output channel, from the four window
/// runs of [`PooledOutput`] (window `(py % 2, px % 2)` of tile
/// `(py / 2, px / 2)`, tiles `tw` to a row), into `out [Ho/2, wp]`.
#[inline(always)]
fn unpool<T: Copy, U>(
    runs: [&[T]; 4],
    tw: usize,
    wp: usize,
    out: &mut [MaybeUninit<U>],
    f: impl Fn(T) -> U,
) {
    for (py, row) in out.chunks_exact_mut(wp).enumerate() {
        let (ty, a) = (py / 2, py % 2);
        let (even, odd) = (&runs[2 * a][ty * tw..], &runs[2 * a + 1][ty * tw..]);
        let mut pairs = row.chunks_exact_mut(2);
        for ((pair, &e), &o) in pairs.by_ref().zip(even).zip(odd) {
            pair[0].write(f(e));
            pair[1].write(f(o));
        }
        if let [last] = pairs.into_remainder() {
            last.write(f(even[wp / 2]));
        }
    }
}

/// The forward of a 3×3 convolution and its bias, through the ReLU when
/// `relu`, by F(4×4, 3×3) with the products in `isa`'s registers, image by
/// image. With `pool` (which implies the ReLU, as in [`super::forward`]),
/// max-pooled over 2×2 windows: `[N, O, Ho/2, Wo/2]` and each window's
/// argmax; else `[N, O, Ho, Wo]` and no argmax.
pub(super) fn forward<T: Float>(
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
    assert!(isa.present(), "this CPU has no {isa:?}");
    let t = Tiling4::new(g, pool);
    let (n, pl) = (t.per_image(), t.plane_len());
    assert!(
        t.rows_per_register(isa.lanes()).is_some(),
        "tile rows of {}, neither a register's lanes or more nor half of them",
        t.tw
    );
    // The planes hold every padded row and column a patch reads (the
    // padded input's are fewer than `4 (th + 1)` and `4 (tw + 1)`).
    assert!(g.h + 2 * g.p() <= 4 * (t.th + 1) && g.w + 2 * g.p() <= 4 * t.row());
    // SAFETY (both casts): T is f32 (asserted).
    let as_f32 = |s: &[T]| unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) };
    let ut = transform_kernel(g, as_f32(kernel));
    let plane = if pool {
        g.pooled_image() / g.o
    } else {
        g.hw_out()
    };
    // Per image: the phase planes, V's and M's 36 blocks (each an odd
    // number of cache lines long), the output transform's 16 runs.
    let (vs, ms) = (odd_lines(g.c * n), odd_lines(g.o * n));
    let planes_len = g.c * t.channel_len();
    let write = |x_n: &[T], out: OutChunk<'_, T>| {
        T::with_scratch(planes_len + XI * vs + XI * ms + 16 * n, |scratch| {
            // SAFETY: T is f32 (asserted).
            let scratch = unsafe {
                std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<f32>(), scratch.len())
            };
            let (planes, rest) = scratch.split_at_mut(planes_len);
            let (v, rest) = rest.split_at_mut(XI * vs);
            let (m, work) = rest.split_at_mut(XI * ms);
            for (c, (x_c, q)) in x_n
                .chunks_exact(g.h * g.w)
                .zip(planes.chunks_exact_mut(t.channel_len()))
                .enumerate()
            {
                split16(as_f32(x_c), g.w, g.p(), &t, q);
                #[cfg(target_arch = "x86_64")]
                {
                    let job = InputTransform {
                        t: &t,
                        planes: &q[..16 * pl],
                        v: &mut v[c * n..],
                        vs,
                    };
                    // SAFETY: the job holds slices (their lengths
                    // asserted inside).
                    unsafe { isa.run(job) };
                }
            }
            for xi in 0..XI {
                products(isa, g, n, &v[xi * vs..], &ut, xi, ms, m);
            }
            let mut argmax_planes = out.argmax.map(|a| a.chunks_exact_mut(plane));
            let mut slots = out.sums.map(|s| s.iter_mut());
            for (o, (y_o, &b)) in out.y.chunks_exact_mut(plane).zip(as_f32(bias)).enumerate() {
                // SAFETY: T is f32 (asserted).
                let y_o = unsafe {
                    std::slice::from_raw_parts_mut(
                        y_o.as_mut_ptr().cast::<MaybeUninit<f32>>(),
                        y_o.len(),
                    )
                };
                let m = &m[o * n..];
                match argmax_planes.as_mut().and_then(Iterator::next) {
                    Some(argmax_o) => pooled_output(isa, g, &t, m, ms, b, y_o, argmax_o, work),
                    None => output(isa, g, &t, m, ms, b, relu, y_o, work),
                }
                // SAFETY: the output wrote the whole plane.
                unsafe { take_sums(&mut slots, y_o) };
            }
        });
    };
    // SAFETY: `write` writes every plane of its image and, with `pool`,
    // every window's argmax; with `moments` it takes every plane's sums.
    unsafe { write_forward(g, e, 1, x, write) }
}

/// One output channel's pooled pixels and argmax, `y_o [Ho/2, Wo/2]`, from
/// its `M` runs (`m`, `ms` apart), by [`PooledOutput`] into the window runs
/// in `work` and [`unpool`] out of them.
#[allow(clippy::too_many_arguments)]
fn pooled_output(
    isa: Isa,
    g: &Geom,
    t: &Tiling4,
    m: &[f32],
    ms: usize,
    bias: f32,
    y_o: &mut [MaybeUninit<f32>],
    argmax_o: &mut [MaybeUninit<u8>],
    work: &mut [f32],
) {
    let n = t.per_image();
    let (best, rest) = work.split_at_mut(4 * n);
    let pick = &mut rest[..4 * n];
    #[cfg(target_arch = "x86_64")]
    {
        let job = PooledOutput {
            n,
            m,
            ms,
            bias,
            best: &mut *best,
            pick: &mut *pick,
        };
        // SAFETY: the job holds slices (their lengths asserted inside).
        unsafe { isa.run(job) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no {isa:?} on this architecture ({m:?}, {ms}, {bias})");
    let wp = g.wo / 2;
    unpool(runs4(best, n), t.tw, wp, y_o, |v| v);
    unpool(runs4(pick, n), t.tw, wp, argmax_o, |k| k as u8);
}

/// One output channel's pixels `y_o [Ho, Wo]`, biased (and through the ReLU
/// when `relu`), from its `M` runs (`m`, `ms` apart), by [`Output`] into
/// 16 runs in `work` (one per pixel of a tile) and [`merge16`] out of them.
#[allow(clippy::too_many_arguments)]
fn output(
    isa: Isa,
    g: &Geom,
    t: &Tiling4,
    m: &[f32],
    ms: usize,
    bias: f32,
    relu: bool,
    y_o: &mut [MaybeUninit<f32>],
    work: &mut [f32],
) {
    let n = t.per_image();
    let px = &mut work[..16 * n];
    #[cfg(target_arch = "x86_64")]
    {
        let job = Output {
            n,
            m,
            ms,
            bias,
            relu,
            px: &mut *px,
        };
        // SAFETY: the job holds slices (their lengths asserted inside).
        unsafe { isa.run(job) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no {isa:?} on this architecture ({m:?}, {ms}, {bias}, {relu})");
    merge16(px, t, g.wo, y_o);
}

multiversion! {
    /// The inverse of [`split16`] for the output: pixel `(oh, ow)` of
    /// `y_o [Ho, wo]` from run `4·(oh%4) + ow%4` of `px` (16 runs, one per
    /// pixel of a tile, tiles numbered `ty·tw + tx`), entry
    /// `(oh/4)·tw + ow/4`: each row's groups of four pixels in one loop over
    /// four runs, the rest one by one.
    fn merge16<T>(px: &[T], t: &Tiling4, wo: usize, y_o: &mut [MaybeUninit<T>]) {
        let n = t.per_image();
        for (oh, row) in y_o.chunks_exact_mut(wo).enumerate() {
            let at = (oh / 4) * t.tw;
            let run = |c: usize| &px[(4 * (oh % 4) + c) * n + at..][..t.tw];
            let (a, b, c, d) = (run(0), run(1), run(2), run(3));
            let mut quads = row.chunks_exact_mut(4);
            for ((((q, &a), &b), &c), &d) in quads.by_ref().zip(a).zip(b).zip(c).zip(d) {
                q[0].write(a);
                q[1].write(b);
                q[2].write(c);
                q[3].write(d);
            }
            let (rest, tx) = (quads.into_remainder(), wo / 4);
            for (k, y) in rest.iter_mut().enumerate() {
                y.write(run(k)[tx]);
            }
        }
    }
}

/// `M_ξ [O, n] = U_ξ · V_ξ` over the input channels, `V_ξ` as `[C, n]` at
/// the start of `v`, `M_ξ` at block `ξ` of `m` (blocks `ms` apart).
#[allow(clippy::too_many_arguments)]
fn products(
    isa: Isa,
    g: &Geom,
    n: usize,
    v: &[f32],
    ut: &[f32],
    xi: usize,
    ms: usize,
    m: &mut [f32],
) {
    let u = &ut[xi * g.c * g.o..][..g.c * g.o];
    let (v, m) = (&v[..g.c * n], &mut m[xi * ms..][..g.o * n]);
    #[cfg(target_arch = "x86_64")]
    {
        let job = Products {
            n,
            c: g.c,
            o: g.o,
            src: v.as_ptr(),
            rows: Strided(n),
            taps: [0],
            u: u.as_ptr(),
            m: m.as_mut_ptr(),
        };
        // SAFETY: V [C, n], U [C, O] and M [O, n] lie inside the slices
        // (sliced just above); `n` is at least one register's lanes
        // (asserted by the caller).
        unsafe { isa.run(job) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (u, v, m);
        unreachable!("no {isa:?} on this architecture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::geom::assert_sums_of_planes;

    /// F(4×4) against the f64 convolution on the article's second layer
    /// and shapes that leave partial tiles and registers, with and without
    /// padding: pooled (bias, ReLU, 2×2 max-pooling), every pooled value
    /// within F(4×4)'s rounding and each window's argmax a pixel whose
    /// exact value is the window's maximum within that rounding; and
    /// unpooled, with and without the ReLU, every pixel within it.
    #[test]
    fn f4_matches_the_exact_convolution() {
        let isas: Vec<Isa> = Isa::available().collect();
        if isas.is_empty() {
            eprintln!("no AVX2 or AVX-512 here: F(4×4) never runs");
        }
        let mut next = crate::kernels::test_values(11);
        // (images, in, out, height, width, padding)
        let shapes = [
            // the article's second layer: rows of 8 tiles, one AVX2 register
            // or half an AVX-512 one
            (3, 32, 32, 32, 32, 0),
            // tile rows of 9 (a row's registers overlap), an odd pooled side
            (2, 17, 19, 37, 37, 1),
            (1, 40, 8, 30, 30, 1),
            // more input channels than the products' block of `V` holds
            (1, 130, 5, 34, 34, 0),
            (2, 8, 16, 33, 33, 0),
            // rows of 8 tiles, an odd number of them (5): AVX-512's last
            // register of two rows overlaps the one before
            (1, 6, 5, 22, 32, 0),
            // rows of 4 tiles, two to an AVX2 register
            (1, 7, 6, 32, 16, 1),
            // tile rows of 16 and more, for AVX-512: an odd pooled side,
            // padding, a row's registers overlapping
            (1, 8, 8, 66, 66, 0),
            (1, 5, 6, 65, 65, 0),
            (1, 9, 7, 70, 70, 1),
        ];
        let mut ran = vec![0; isas.len()];
        for (images, c, o, h, w, pad) in shapes {
            let g = Geom::new(&[images, c, h, w], &[o, c, 3, 3], &[o], pad).unwrap();
            let x: Vec<f32> = (0..g.n * g.x_image()).map(|_| next()).collect();
            let kernel: Vec<f32> = (0..o * c * 9).map(|_| next()).collect();
            let bias: Vec<f32> = (0..o).map(|_| next()).collect();
            // The exact outputs before the ReLU, [N, O, Ho, Wo], in f64.
            let exact = |n: usize, oc: usize, r: usize, s: usize| {
                let mut sum = f64::from(bias[oc]);
                for ch in 0..c {
                    for (k, l) in (0..9).map(|kl| (kl / 3, kl % 3)) {
                        let (ih, iw) = (
                            (r + k) as isize - pad as isize,
                            (s + l) as isize - pad as isize,
                        );
                        if (0..h as isize).contains(&ih) && (0..w as isize).contains(&iw) {
                            let xv = x[((n * c + ch) * h + ih as usize) * w + iw as usize];
                            sum += f64::from(xv) * f64::from(kernel[(oc * c + ch) * 9 + 3 * k + l]);
                        }
                    }
                }
                sum
            };
            // F(4×4)'s rounding grows with the sum's length and its
            // coefficients: about 1e-5 of the terms' magnitude here.
            let tol = 3e-6 * (9 * c) as f64;
            let (hp, wp) = (g.ho / 2, g.wo / 2);
            for (&isa, ran) in isas.iter().zip(&mut ran) {
                if Tiling4::new(&g, true)
                    .rows_per_register(isa.lanes())
                    .is_none()
                {
                    continue;
                }
                *ran += 1;
                let e = Epilogue {
                    relu: true,
                    pool: true,
                    moments: false,
                };
                let out = forward(isa, &g, &x, &kernel, &bias, e);
                let (y, argmax) = (out.y, out.argmax);
                assert_eq!(
                    (y.len(), argmax.len()),
                    (g.n * o * hp * wp, g.n * o * hp * wp)
                );
                for (at, (&got, &k)) in y.iter().zip(&argmax).enumerate() {
                    let (n, oc, py, px) = (
                        at / (o * hp * wp),
                        at / (hp * wp) % o,
                        at / wp % hp,
                        at % wp,
                    );
                    let case = format!(
                        "{isa:?}, {images}×{c}→{o}, {h}×{w}, pad {pad}: pooled {n},{oc},{py},{px}"
                    );
                    let window: Vec<f64> = (0..4)
                        .map(|q| exact(n, oc, 2 * py + q / 2, 2 * px + q % 2).max(0.0))
                        .collect();
                    let max = window.iter().copied().fold(f64::MIN, f64::max);
                    assert!(
                        (f64::from(got) - max).abs() <= tol,
                        "{case}: {got}, want {max}"
                    );
                    assert!(
                        k < 4 && window[k as usize] >= max - 2.0 * tol,
                        "{case}: argmax {k} of {window:?}"
                    );
                }
            }
            for (&isa, ran) in isas.iter().zip(&mut ran) {
                if Tiling4::new(&g, false)
                    .rows_per_register(isa.lanes())
                    .is_none()
                {
                    continue;
                }
                *ran += 1;
                for relu in [false, true] {
                    let e = Epilogue {
                        relu,
                        pool: false,
                        moments: true,
                    };
                    let out = forward(isa, &g, &x, &kernel, &bias, e);
                    let case =
                        format!("{isa:?}, {images}×{c}→{o}, {h}×{w}, pad {pad}, relu {relu}");
                    assert_sums_of_planes(&out, g.hw_out(), &case);
                    let (y, argmax) = (out.y, out.argmax);
                    assert_eq!((y.len(), argmax.len()), (g.n * g.y_image(), 0));
                    for (at, &got) in y.iter().enumerate() {
                        let (n, oc, oh, ow) = (
                            at / g.y_image(),
                            at / (g.ho * g.wo) % o,
                            at / g.wo % g.ho,
                            at % g.wo,
                        );
                        let want = exact(n, oc, oh, ow);
                        let want = if relu { want.max(0.0) } else { want };
                        assert!(
                            (f64::from(got) - want).abs() <= tol,
                            "{isa:?}, {images}×{c}→{o}, {h}×{w}, pad {pad}, relu {relu}: \
                             pixel {n},{oc},{oh},{ow} is {got}, want {want}"
                        );
                    }
                }
            }
        }
        assert!(ran.iter().all(|&r| r >= 10), "cases run per ISA: {ran:?}");
    }
}
