//! What the CPU kernels share: the float types they run on (with per-thread
//! scratch), run-time selection of the vector ISA (`multiversion!`), and
//! blocked dot products sized to the vector registers. A leaf: it uses
//! nothing of this crate.

use candle_core::WithDType;
use std::cell::RefCell;

/// The dtypes this op runs on, each with a per-thread scratch buffer for
/// the im2col matrix: reused across calls, so that no step pays for
/// allocating (and page-faulting) a fresh megabyte per thread and layer.
pub(crate) trait Float: WithDType {
    /// Runs `f` on `len` elements of scratch (contents unspecified), which
    /// start on a cache line (see [`SCRATCH_ALIGN`]).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    /// `max(v, 0)` without a branch, so that loops over it vectorize (a
    /// branch on the sign mispredicts half the time).
    fn relu(v: Self) -> Self;
    /// `d` where `y > 0`, else 0, without a branch.
    fn relu_grad(d: Self, y: Self) -> Self;
    /// `a · b + c` in one rounding: one instruction where the caller is
    /// compiled with FMA (see [`multiversion`]).
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
                let slack = SCRATCH_ALIGN / size_of::<$t>();
                SCRATCH.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut buf) => {
                        if buf.len() < len + slack {
                            buf.resize(len + slack, 0.0);
                        }
                        f(aligned(&mut buf, len))
                    }
                    // Re-entered (rayon ran another conv's job on this thread
                    // while it waited): use a buffer of its own.
                    Err(_) => f(aligned(&mut vec![0.0; len + slack], len)),
                })
            }
        }
    )*};
}
float_with_scratch!(f32, f64);

/// Where scratch starts: a cache line. A vector load that straddles two
/// lines costs two; allocators give 16 bytes, so every AVX-512 load of the
/// Winograd matrices did (their rows are whole lines apart): on an Ice Lake
/// Xeon the kernel-gradient dots ran at 62 GFLOP/s misaligned, 131 aligned.
const SCRATCH_ALIGN: usize = 64;

/// The first `len` elements of `buf` from its first [`SCRATCH_ALIGN`]-byte
/// boundary (`buf` holds `SCRATCH_ALIGN` bytes more than `len`).
fn aligned<T>(buf: &mut [T], len: usize) -> &mut [T] {
    // `align_offset` may answer "can't" (usize::MAX): then unaligned, as before.
    let skip = buf.as_ptr().align_offset(SCRATCH_ALIGN);
    let skip = if skip <= buf.len() - len { skip } else { 0 };
    &mut buf[skip..][..len]
}

/// Defines `fn $name<T: Float>(args)` so that its body (and everything it
/// inlines) is compiled three times: for AVX-512, for AVX2 + FMA, and for
/// the baseline, picked at run time. The transforms are flat loops that
/// vectorize; without this they would get the baseline's 4-wide SSE.
macro_rules! multiversion_impl {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<T>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<T: $crate::kernels::simd::Float>($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<T: $crate::kernels::simd::Float>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512<T: $crate::kernels::simd::Float>($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<T: $crate::kernels::simd::Float>($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: this CPU has the features avx512 is built for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion_impl as multiversion;

/// An f32 [`kernel_grad_dots`] for one ISA.
#[cfg(target_arch = "x86_64")]
type F32Dots = unsafe fn(usize, usize, usize, &[f32], &[f32], &mut [f32]);

/// `dUᵀ [C, O] += (dM [O, cols] · V [C, cols]ᵀ)ᵀ` for one ξ, as dot
/// products along the tiles, `BO × BC` of them at a time in `L` lanes.
/// Both operands run along the tiles, and gemm wants its left one the
/// other way round: it would first copy `dM` element by element into
/// its layout, which cost more than the products themselves. The
/// im2col path's kernel gradient has the same form (`dy [O, HW]` and
/// `cols [CKK, HW]`), where gemm's fixed costs on its short sides (the
/// first layer's 32 × 27) made it slower still.
///
/// The block is sized to the ISA's registers, picked at run time: with
/// AVX-512's 32, 4×4 dots in one register of 16 f32 lanes each; with
/// AVX2's 16, 4×3 dots in 8 lanes (12 accumulators, four registers for the
/// rows). The AVX-512 block on AVX2 (two registers per accumulator) kept
/// its accumulators in memory, and 3×4 streamed one more row of `V` from
/// L2 per block: 4×3 took the training step on a Zen 2 from about 145 to
/// 125 ms (BENCHMARKS.md, 2026-12-05). Partial blocks at the edges go
/// `BO × 1`, then one dot at a time.
pub(crate) fn kernel_grad_dots<T: Float>(
    o: usize,
    c: usize,
    cols: usize,
    dm: &[T],
    v: &[T],
    du_t: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<T: Float>(
            o: usize,
            c: usize,
            n: usize,
            dm: &[T],
            v: &[T],
            du_t: &mut [T],
        ) {
            // SAFETY: portable code.
            unsafe { grad_dots::<T, Lanes<16>, 4, 4>(o, c, n, dm, v, du_t) }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: Float>(o: usize, c: usize, n: usize, dm: &[T], v: &[T], du_t: &mut [T]) {
            // SAFETY: portable code.
            unsafe { grad_dots::<T, Lanes<8>, 4, 3>(o, c, n, dm, v, du_t) }
        }
        // f32 (every model the crate builds) takes the explicit registers.
        let mut f32_dots = |dots: F32Dots| {
            // SAFETY: called only where T is f32 (its dtype says so), so the
            // slices are f32 slices of the same lengths; the caller checked
            // the CPU has the features `dots` needs.
            unsafe {
                dots(
                    o,
                    c,
                    cols,
                    std::slice::from_raw_parts(dm.as_ptr().cast(), dm.len()),
                    std::slice::from_raw_parts(v.as_ptr().cast(), v.len()),
                    std::slice::from_raw_parts_mut(du_t.as_mut_ptr().cast(), du_t.len()),
                )
            }
        };
        let is_f32 = T::DTYPE == candle_core::DType::F32;
        if std::arch::is_x86_feature_detected!("avx512f") {
            if is_f32 {
                return f32_dots(explicit_dots::grad_dots_avx512);
            }
            // SAFETY: this CPU has the features avx512 is built for.
            return unsafe { avx512(o, c, cols, dm, v, du_t) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            if is_f32 {
                return f32_dots(explicit_dots::grad_dots_avx2);
            }
            // SAFETY: as above.
            return unsafe { avx2(o, c, cols, dm, v, du_t) };
        }
    }
    // SAFETY: portable code.
    unsafe { grad_dots::<T, Lanes<4>, 2, 2>(o, c, cols, dm, v, du_t) }
}

/// How [`grad_dots`] computes one block of dots: `BO × BC` dot products of
/// rows of one length, a multiple of `L`, each summed in `L` lanes.
trait Dots<T> {
    const L: usize;
    /// # Safety
    /// The CPU has the features the implementation is built for.
    unsafe fn block<const BO: usize, const BC: usize>(
        a: [&[T]; BO],
        b: [&[T]; BC],
    ) -> [[T; BC]; BO];
    /// [`Dots::block`] added onto `out`: dot `(i, j)` onto `out[j · stride + i]`.
    ///
    /// # Safety
    /// As [`Dots::block`].
    #[inline(always)]
    unsafe fn block_add<const BO: usize, const BC: usize>(
        a: [&[T]; BO],
        b: [&[T]; BC],
        out: &mut [T],
        stride: usize,
    ) where
        T: Float,
    {
        // SAFETY: the caller's promise.
        add_block(unsafe { Self::block::<BO, BC>(a, b) }, out, stride)
    }
}

/// Dot `(i, j)` of a block added onto `out[j · stride + i]`.
#[inline(always)]
fn add_block<T: Float, const BO: usize, const BC: usize>(
    dots: [[T; BC]; BO],
    out: &mut [T],
    stride: usize,
) {
    for (i, dots) in dots.into_iter().enumerate() {
        for (j, sum) in dots.into_iter().enumerate() {
            out[j * stride + i] += sum;
        }
    }
}

/// [`dot_block`]: portable code in `L` lanes, vectorized by the compiler
/// for the ISA of the function it is inlined into.
struct Lanes<const L: usize>;

impl<T: Float, const L: usize> Dots<T> for Lanes<L> {
    const L: usize = L;
    #[inline(always)]
    unsafe fn block<const BO: usize, const BC: usize>(
        a: [&[T]; BO],
        b: [&[T]; BC],
    ) -> [[T; BC]; BO] {
        dot_block::<T, L, BO, BC>(a, b)
    }
}

/// [`kernel_grad_dots`] with `BO × BC` dots at a time, each block by `D`.
///
/// # Safety
/// The CPU has the features `D` is built for.
#[inline(always)]
unsafe fn grad_dots<T: Float, D: Dots<T>, const BO: usize, const BC: usize>(
    o: usize,
    c: usize,
    cols: usize,
    dm: &[T],
    v: &[T],
    du_t: &mut [T],
) {
    // Whole groups of lanes in blocks; the rest (none for Winograd's
    // chunk matrices) one dot at a time below.
    let main = cols - cols % D::L;
    let (dm_row, v_row) = (
        |i: usize| &dm[i * cols..][..main],
        |j: usize| &v[j * cols..][..main],
    );
    for o0 in (0..o).step_by(BO) {
        for c0 in (0..c).step_by(BC) {
            let (bo, bc) = ((o - o0).min(BO), (c - c0).min(BC));
            if bo == BO && bc == BC {
                // SAFETY: the caller's promise.
                unsafe {
                    D::block_add::<BO, BC>(
                        std::array::from_fn(|i| dm_row(o0 + i)),
                        std::array::from_fn(|j| v_row(c0 + j)),
                        &mut du_t[c0 * o + o0..],
                        o,
                    )
                };
                continue;
            }
            // SAFETY (both blocks): as above.
            if bo == BO {
                // the last columns: BO × 1 blocks
                for j in 0..bc {
                    unsafe {
                        D::block_add::<BO, 1>(
                            std::array::from_fn(|i| dm_row(o0 + i)),
                            [v_row(c0 + j)],
                            &mut du_t[(c0 + j) * o + o0..],
                            o,
                        )
                    };
                }
            } else {
                for i in 0..bo {
                    for j in 0..bc {
                        let out = &mut du_t[(c0 + j) * o + o0 + i..];
                        unsafe { D::block_add::<1, 1>([dm_row(o0 + i)], [v_row(c0 + j)], out, o) };
                    }
                }
            }
        }
    }
    if main < cols {
        for (j, v) in v.chunks_exact(cols).enumerate() {
            for (i, dm) in dm.chunks_exact(cols).enumerate() {
                let tail = dm[main..].iter().zip(&v[main..]);
                du_t[j * o + i] += tail.fold(T::zero(), |s, (&a, &b)| T::mul_add(a, b, s));
            }
        }
    }
}

/// Vector registers of f32 lanes for the kernels written in explicit
/// intrinsics (the dots here, the Winograd transforms), one trait for both
/// ISAs so that each kernel is written once.
#[cfg(target_arch = "x86_64")]
pub(crate) mod regs {
    use std::arch::x86_64::*;

    /// A vector register of `L` f32 lanes. Its methods are inlined into a
    /// function compiled with the register's ISA and only called there.
    ///
    /// # Safety (every method)
    /// The CPU has the register's ISA; `load` and `store` also need `L`
    /// readable or writable f32s at `p`.
    pub(crate) trait Reg: Copy {
        const L: usize;
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        unsafe fn add(self, b: Self) -> Self;
        unsafe fn sub(self, b: Self) -> Self;
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
        /// `x` in every lane.
        unsafe fn splat(x: f32) -> Self;
        /// Lane by lane, `self` or `b`, whichever is greater; `b` where
        /// either is NaN (so `v.max(zero)` is `f32::relu`'s).
        unsafe fn max(self, b: Self) -> Self;
        /// A running maximum and its position, lane by lane: `(v, q)` where
        /// `v` takes over `best` (greater, or NaN, as `max_pool2d`'s
        /// `takes_over`), else `(best, k)`.
        unsafe fn keep_max(best: Self, k: Self, v: Self, q: Self) -> (Self, Self);
        /// The low `L/2` lanes from `lo`, the high ones from `hi` (two runs
        /// that are not side by side, such as two tile rows).
        unsafe fn load_halves(lo: *const f32, hi: *const f32) -> Self;
        /// The two halves' lanes in turns: lane `i` of the low half to lane
        /// `2i`, of the high half to `2i + 1` (two runs' pixels interleaved).
        unsafe fn zip_halves(self) -> Self;
    }

    #[inline(always)]
    unsafe fn zip_halves256(v: __m256) -> __m256 {
        // SAFETY: the caller's promise (AVX2).
        unsafe { _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)) }
    }

    #[inline(always)]
    unsafe fn zip_halves512(v: __m512) -> __m512 {
        // SAFETY: the caller's promise (AVX-512F).
        unsafe {
            let idx = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
            _mm512_permutexvar_ps(idx, v)
        }
    }

    #[inline(always)]
    unsafe fn load_halves256(lo: *const f32, hi: *const f32) -> __m256 {
        // SAFETY: the caller's promise (AVX; 4 f32s at each pointer).
        unsafe { _mm256_loadu2_m128(hi, lo) }
    }

    #[inline(always)]
    unsafe fn load_halves512(lo: *const f32, hi: *const f32) -> __m512 {
        // SAFETY: the caller's promise (AVX-512F; 8 f32s at each pointer).
        // (f64x4 rather than f32x8: the same bits, and AVX-512F alone.)
        unsafe {
            let lo = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(lo)));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                lo,
                _mm256_castps_pd(_mm256_loadu_ps(hi)),
            ))
        }
    }

    #[inline(always)]
    unsafe fn keep_max256(best: __m256, k: __m256, v: __m256, q: __m256) -> (__m256, __m256) {
        // SAFETY: the caller's promise (AVX).
        unsafe {
            let over = _mm256_or_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(v, best),
                _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
            );
            (
                _mm256_blendv_ps(best, v, over),
                _mm256_blendv_ps(k, q, over),
            )
        }
    }

    #[inline(always)]
    unsafe fn keep_max512(best: __m512, k: __m512, v: __m512, q: __m512) -> (__m512, __m512) {
        // SAFETY: the caller's promise (AVX-512F).
        unsafe {
            let over = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best)
                | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            (
                _mm512_mask_blend_ps(over, best, v),
                _mm512_mask_blend_ps(over, k, q),
            )
        }
    }

    macro_rules! reg {
        ($r:ty, $l:expr, $zero:ident, $load:ident, $store:ident, $add:ident, $sub:ident, $fmadd:ident, $splat:ident, $max:ident, $keep_max:ident, $load_halves:ident, $zip_halves:ident) => {
            impl Reg for $r {
                const L: usize = $l;
                // SAFETY (every method): the caller's promise (the CPU has
                // the ISA; `p` points to L f32s).
                #[inline(always)]
                unsafe fn zero() -> Self {
                    unsafe { $zero() }
                }
                #[inline(always)]
                unsafe fn load(p: *const f32) -> Self {
                    unsafe { $load(p) }
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32) {
                    unsafe { $store(p, self) }
                }
                #[inline(always)]
                unsafe fn add(self, b: Self) -> Self {
                    unsafe { $add(self, b) }
                }
                #[inline(always)]
                unsafe fn sub(self, b: Self) -> Self {
                    unsafe { $sub(self, b) }
                }
                #[inline(always)]
                unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
                    unsafe { $fmadd(a, b, c) }
                }
                #[inline(always)]
                unsafe fn splat(x: f32) -> Self {
                    unsafe { $splat(x) }
                }
                #[inline(always)]
                unsafe fn max(self, b: Self) -> Self {
                    unsafe { $max(self, b) }
                }
                #[inline(always)]
                unsafe fn keep_max(best: Self, k: Self, v: Self, q: Self) -> (Self, Self) {
                    unsafe { $keep_max(best, k, v, q) }
                }
                #[inline(always)]
                unsafe fn load_halves(lo: *const f32, hi: *const f32) -> Self {
                    unsafe { $load_halves(lo, hi) }
                }
                #[inline(always)]
                unsafe fn zip_halves(self) -> Self {
                    unsafe { $zip_halves(self) }
                }
            }
        };
    }
    reg!(
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_fmadd_ps,
        _mm256_set1_ps,
        _mm256_max_ps,
        keep_max256,
        load_halves256,
        zip_halves256
    );
    reg!(
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_fmadd_ps,
        _mm512_set1_ps,
        _mm512_max_ps,
        keep_max512,
        load_halves512,
        zip_halves512
    );
}

/// The dots of f32 in explicit registers, one block for both ISAs.
///
/// On AVX2, the portable block in 8 lanes compiled to its 12 accumulators
/// in registers only as long as the compiler's vectorizer saw it so: an
/// unrelated edit elsewhere in the crate once turned it into stack spills
/// and scalar shuffles, the training step from 111 to 300 ms on a Zen 2.
/// On AVX-512, the portable 16-lane block summed each accumulator's lanes
/// in scalar code through the stack (`perf` on a Zen 4: a fifth of the
/// dots' samples, for 512-column chunks); here the 16 sums of a 4×4 block
/// are one transposed tree of shuffles and 15 vector adds. Either way each
/// accumulator is a register, and the lanes are added in the portable
/// order (FMA per lane, then pairwise in halves), so the sums are
/// [`dot_block`]'s bit for bit.
#[cfg(target_arch = "x86_64")]
mod explicit_dots {
    use super::regs::Reg;
    use super::{add_block, grad_dots, Dots};
    use std::arch::x86_64::*;
    use std::marker::PhantomData;

    /// Each accumulator's lanes summed, in the portable block's order.
    trait Sums: Reg {
        /// # Safety
        /// The CPU has the register's ISA.
        unsafe fn sums<const BO: usize, const BC: usize>(acc: [[Self; BC]; BO]) -> [[f32; BC]; BO];
        /// The sums added onto `out` as [`Dots::block_add`] does.
        ///
        /// # Safety
        /// The CPU has the register's ISA.
        #[inline(always)]
        unsafe fn sums_add<const BO: usize, const BC: usize>(
            acc: [[Self; BC]; BO],
            out: &mut [f32],
            stride: usize,
        ) {
            // SAFETY: the caller's promise.
            add_block(unsafe { Self::sums(acc) }, out, stride)
        }
    }

    impl Sums for __m256 {
        #[inline(always)]
        unsafe fn sums<const BO: usize, const BC: usize>(acc: [[Self; BC]; BO]) -> [[f32; BC]; BO] {
            // SAFETY: the caller's promise (AVX2 + FMA).
            unsafe { each_sum(acc, |v| lanes_sum8(v)) }
        }
    }

    impl Sums for __m512 {
        #[inline(always)]
        unsafe fn sums<const BO: usize, const BC: usize>(acc: [[Self; BC]; BO]) -> [[f32; BC]; BO] {
            // SAFETY: the caller's promise (AVX-512F). (4 × 4 blocks take
            // `sums_add`'s shuffle tree.)
            unsafe { each_sum(acc, |v| lanes_sum16(v)) }
        }
        #[inline(always)]
        unsafe fn sums_add<const BO: usize, const BC: usize>(
            acc: [[Self; BC]; BO],
            out: &mut [f32],
            stride: usize,
        ) {
            if (BO, BC) != (4, 4) {
                // SAFETY: the caller's promise.
                return add_block(unsafe { Self::sums(acc) }, out, stride);
            }
            // Sums (0..4, j) are 128-bit lane j of `sums_4x4`'s register, and
            // their places in `out` are contiguous: four vector additions
            // instead of sixteen scalar ones.
            let out = &mut out[..3 * stride + 4];
            // SAFETY: the caller's promise (AVX-512F); each 4-float access
            // at j·stride lies inside `out` (its length, just sliced).
            unsafe {
                let s = sums_4x4(std::array::from_fn(|k| acc[k / 4][k % 4]));
                let lanes = [
                    _mm512_extractf32x4_ps::<0>(s),
                    _mm512_extractf32x4_ps::<1>(s),
                    _mm512_extractf32x4_ps::<2>(s),
                    _mm512_extractf32x4_ps::<3>(s),
                ];
                for (j, sums) in lanes.into_iter().enumerate() {
                    let p = out.as_mut_ptr().add(j * stride);
                    _mm_storeu_ps(p, _mm_add_ps(_mm_loadu_ps(p), sums));
                }
            }
        }
    }

    /// `sum` of each accumulator, one at a time.
    ///
    /// # Safety
    /// `sum` may be called (the CPU has its ISA).
    #[inline(always)]
    unsafe fn each_sum<R: Copy, const BO: usize, const BC: usize>(
        acc: [[R; BC]; BO],
        sum: impl Fn(R) -> f32,
    ) -> [[f32; BC]; BO] {
        acc.map(|row| row.map(&sum))
    }

    /// The `BO × BC` dots of [`Dots::block`] in registers `R`.
    struct Explicit<R>(PhantomData<R>);

    impl<R: Sums> Dots<f32> for Explicit<R> {
        const L: usize = R::L;
        #[inline(always)]
        unsafe fn block<const BO: usize, const BC: usize>(
            a: [&[f32]; BO],
            b: [&[f32]; BC],
        ) -> [[f32; BC]; BO] {
            // SAFETY: the caller's promise.
            unsafe { R::sums(accumulate::<R, BO, BC>(a, b)) }
        }
        #[inline(always)]
        unsafe fn block_add<const BO: usize, const BC: usize>(
            a: [&[f32]; BO],
            b: [&[f32]; BC],
            out: &mut [f32],
            stride: usize,
        ) {
            // SAFETY: the caller's promise.
            unsafe { R::sums_add(accumulate::<R, BO, BC>(a, b), out, stride) }
        }
    }

    /// The `BO × BC` accumulators of [`Dots::block`], each in `R::L` lanes.
    ///
    /// # Safety
    /// The CPU has R's ISA.
    #[inline(always)]
    unsafe fn accumulate<R: Reg, const BO: usize, const BC: usize>(
        a: [&[f32]; BO],
        b: [&[f32]; BC],
    ) -> [[R; BC]; BO] {
        let n = a[0].len() / R::L;
        assert!(a.iter().all(|r| r.len() >= R::L * n) && b.iter().all(|r| r.len() >= R::L * n));
        // SAFETY (every `unsafe` below): the caller's promise (the CPU
        // has R's ISA); L·t + L ≤ L·n ≤ each row's length (asserted).
        let mut acc = [[unsafe { R::zero() }; BC]; BO];
        for t in 0..n {
            let y: [R; BC] =
                std::array::from_fn(|j| unsafe { R::load(b[j].as_ptr().add(R::L * t)) });
            for i in 0..BO {
                let x = unsafe { R::load(a[i].as_ptr().add(R::L * t)) };
                for j in 0..BC {
                    acc[i][j] = unsafe { R::fmadd(x, y[j], acc[i][j]) };
                }
            }
        }
        acc
    }

    /// [`super::kernel_grad_dots`] for f32 in 4×3 blocks of `__m256`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn grad_dots_avx2(
        o: usize,
        c: usize,
        n: usize,
        dm: &[f32],
        v: &[f32],
        du_t: &mut [f32],
    ) {
        // SAFETY: the caller's promise.
        unsafe { grad_dots::<f32, Explicit<__m256>, 4, 3>(o, c, n, dm, v, du_t) }
    }

    /// [`super::kernel_grad_dots`] for f32 in 4×4 blocks of `__m512`.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn grad_dots_avx512(
        o: usize,
        c: usize,
        n: usize,
        dm: &[f32],
        v: &[f32],
        du_t: &mut [f32],
    ) {
        // SAFETY: the caller's promise.
        unsafe { grad_dots::<f32, Explicit<__m512>, 4, 4>(o, c, n, dm, v, du_t) }
    }

    /// The 8 lanes added pairwise in halves, as [`super::dot_block`] does.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn lanes_sum8(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2)))
    }

    /// The 16 lanes added pairwise in halves: the halves, then [`lanes_sum8`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lanes_sum16(v: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        lanes_sum8(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
    }

    /// The lane sums of 16 accumulators `acc[4i + j]` at once, lane `4j + i`
    /// of the result: each level pairs two registers' halves with one
    /// shuffle each way and adds them, the same additions as [`lanes_sum`]
    /// (lane `l` plus lane `l + half`, for halves 8, 4, 2, 1).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sums_4x4(acc: [__m512; 16]) -> __m512 {
        // 16 → 8: register p holds accumulator 2p's 8 partial sums in its
        // low half, 2p + 1's in its high half.
        let s8: [__m512; 8] = std::array::from_fn(|p| {
            let (a, b) = (acc[2 * p], acc[2 * p + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xEE>(a, b),
            )
        });
        // 8 → 4: register q holds accumulator 4q + m's 4 in 128-bit lane m.
        let s4: [__m512; 4] = std::array::from_fn(|q| {
            let (a, b) = (s8[2 * q], s8[2 * q + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(a, b),
                _mm512_shuffle_f32x4::<0xDD>(a, b),
            )
        });
        // 4 → 2: register h, lane m: accumulators 8h + m and 8h + 4 + m, 2 each.
        let s2: [__m512; 2] = std::array::from_fn(|h| {
            let (a, b) = (s4[2 * h], s4[2 * h + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(a, b),
                _mm512_shuffle_ps::<0xEE>(a, b),
            )
        });
        // 2 → 1: lane m holds accumulators m, 4 + m, 8 + m, 12 + m.
        let (a, b) = (s2[0], s2[1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(a, b),
            _mm512_shuffle_ps::<0xDD>(a, b),
        )
    }
}

/// The first `n · L` values of `r` as `n` groups of `L`.
#[inline(always)]
fn as_lanes<T, const L: usize>(r: &[T], n: usize) -> &[[T; L]] {
    let (groups, _) = r[..n * L].as_chunks::<L>();
    groups
}

/// The `BO × BC` dot products of rows `a` with rows `b`, all of one length
/// (a multiple of `L`), each summed in `L` lanes and then across.
#[inline(always)]
fn dot_block<T: Float, const L: usize, const BO: usize, const BC: usize>(
    a: [&[T]; BO],
    b: [&[T]; BC],
) -> [[T; BC]; BO] {
    let mut acc = [[[T::zero(); L]; BC]; BO];
    let n = a[0].len() / L;
    let a: [&[[T; L]]; BO] = a.map(|r| as_lanes(r, n));
    let b: [&[[T; L]]; BC] = b.map(|r| as_lanes(r, n));
    for t in 0..n {
        for i in 0..BO {
            for j in 0..BC {
                let (x, y) = (&a[i][t], &b[j][t]);
                for l in 0..L {
                    acc[i][j][l] = T::mul_add(x[l], y[l], acc[i][j][l]);
                }
            }
        }
    }
    // Pairwise, in halves: each level is one vector add.
    acc.map(|row| {
        row.map(|mut lanes| {
            let mut half = L / 2;
            while half > 0 {
                for l in 0..half {
                    lanes[l] += lanes[l + half];
                }
                half /= 2;
            }
            lanes[0]
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scratch starts on a cache line, for both dtypes, at any length, and
    /// when re-entered (the second, nested buffer).
    #[test]
    fn scratch_starts_on_a_cache_line() {
        fn check<T: Float>() {
            for len in [1, 5, 1000, 1 << 20, 17] {
                T::with_scratch(len, |outer| {
                    assert_eq!(outer.len(), len);
                    assert_eq!(outer.as_ptr() as usize % SCRATCH_ALIGN, 0, "{len} elements");
                    T::with_scratch(len + 3, |inner| {
                        assert_eq!(inner.len(), len + 3);
                        assert_eq!(inner.as_ptr() as usize % SCRATCH_ALIGN, 0, "nested");
                    });
                });
            }
        }
        check::<f32>();
        check::<f64>();
    }

    /// `du_t + (dm · vᵀ)ᵀ` summed in f64, the reference.
    fn naive(o: usize, c: usize, cols: usize, dm: &[f32], v: &[f32], du_t: &[f32]) -> Vec<f64> {
        let mut out: Vec<f64> = du_t.iter().map(|&x| x as f64).collect();
        for j in 0..c {
            for i in 0..o {
                let dot: f64 = (0..cols)
                    .map(|t| dm[i * cols + t] as f64 * v[j * cols + t] as f64)
                    .sum();
                out[j * o + i] += dot;
            }
        }
        out
    }

    /// Every block shape the dispatch can pick (whatever this machine runs)
    /// and the dispatch itself, on sizes that leave partial blocks of rows,
    /// of columns, and a tail of tiles shorter than the lanes.
    #[test]
    fn kernel_grad_dots_match_plain_sums_for_every_block_shape() {
        type Dots = fn(usize, usize, usize, &[f32], &[f32], &mut [f32]);
        /// The explicit AVX2 block, where the CPU has it (else the dispatch).
        fn avx2_f32(o: usize, c: usize, n: usize, dm: &[f32], v: &[f32], du_t: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: AVX2 and FMA are here.
                return unsafe { explicit_dots::grad_dots_avx2(o, c, n, dm, v, du_t) };
            }
            kernel_grad_dots(o, c, n, dm, v, du_t)
        }
        /// The explicit AVX-512 block, where the CPU has it (else the dispatch).
        fn avx512_f32(o: usize, c: usize, n: usize, dm: &[f32], v: &[f32], du_t: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is here.
                return unsafe { explicit_dots::grad_dots_avx512(o, c, n, dm, v, du_t) };
            }
            kernel_grad_dots(o, c, n, dm, v, du_t)
        }
        // SAFETY (the `unsafe` blocks): portable code.
        let shapes: [(&str, Dots); 6] = [
            ("dispatch", kernel_grad_dots::<f32>),
            ("avx-512 16×4×4", |o, c, n, dm, v, du| unsafe {
                grad_dots::<f32, Lanes<16>, 4, 4>(o, c, n, dm, v, du)
            }),
            ("avx-512 16×4×4 explicit", avx512_f32),
            ("avx2 8×4×3", |o, c, n, dm, v, du| unsafe {
                grad_dots::<f32, Lanes<8>, 4, 3>(o, c, n, dm, v, du)
            }),
            ("avx2 8×4×3 explicit", avx2_f32),
            ("baseline 4×2×2", |o, c, n, dm, v, du| unsafe {
                grad_dots::<f32, Lanes<4>, 2, 2>(o, c, n, dm, v, du)
            }),
        ];
        let mut next = crate::kernels::test_values(1);
        for (o, c, cols) in [
            (8, 12, 64),
            (32, 32, 512),
            (7, 5, 37),
            (32, 27, 1024),
            (3, 2, 9),
            (5, 13, 100),
        ] {
            let dm: Vec<f32> = (0..o * cols).map(|_| next()).collect();
            let v: Vec<f32> = (0..c * cols).map(|_| next()).collect();
            let start: Vec<f32> = (0..o * c).map(|_| next()).collect();
            let want = naive(o, c, cols, &dm, &v, &start);
            let mut by_shape = Vec::new();
            for (name, dots) in shapes {
                let mut got = start.clone();
                dots(o, c, cols, &dm, &v, &mut got);
                by_shape.push(got.clone());
                for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (cols as f64).sqrt() * (1.0 + w.abs());
                    assert!(
                        (g as f64 - w).abs() <= tol,
                        "{name}, {o}×{c}×{cols}: entry {k} is {g}, want {w}"
                    );
                }
            }
            // the explicit blocks sum as the portable ones, bit for bit
            // (where the CPU runs them: else the dispatch stands in)
            #[cfg(target_arch = "x86_64")]
            let has = [
                std::arch::is_x86_feature_detected!("avx512f"),
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma"),
            ];
            #[cfg(not(target_arch = "x86_64"))]
            let has = [false; 2];
            let pairs = [("AVX-512", 1, 2), ("AVX2", 3, 4)];
            for (_, (isa, portable, explicit)) in has.into_iter().zip(pairs).filter(|(h, _)| *h) {
                let differ = by_shape[portable]
                    .iter()
                    .zip(&by_shape[explicit])
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(
                    differ, None,
                    "{o}×{c}×{cols}: the explicit {isa} sums differ from the portable ones"
                );
            }
        }
    }
}
