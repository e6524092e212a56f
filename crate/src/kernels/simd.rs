//! What the CPU kernels share: the float types they run on (with per-thread
//! scratch), run-time selection of the vector ISA (`multiversion!`), and
//! blocked dot products in 16 lanes. A leaf: it uses nothing of this crate.

use candle_core::WithDType;
use std::cell::RefCell;

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

/// Lanes of the dot products in [`kernel_grad_dots`]: a whole AVX-512
/// register of f32s.
const LANES: usize = 16;

multiversion! {
    /// `dUᵀ [C, O] += (dM [O, cols] · V [C, cols]ᵀ)ᵀ` for one ξ, as dot
    /// products along the tiles, 4×4 of them at a time in `LANES` lanes.
    /// Both operands run along the tiles, and gemm wants its left one the
    /// other way round: it would first copy `dM` element by element into
    /// its layout, which cost more than the products themselves. The
    /// im2col path's kernel gradient has the same form (`dy [O, HW]` and
    /// `cols [CKK, HW]`), where gemm's fixed costs on its short sides (the
    /// first layer's 32 × 27) made it slower still.
    pub(crate) fn kernel_grad_dots<T>(o: usize, c: usize, cols: usize, dm: &[T], v: &[T], du_t: &mut [T]) {
        const B: usize = 4;
        // Whole groups of lanes in blocks; the rest (none for Winograd's
        // chunk matrices) one dot at a time below.
        let main = cols - cols % LANES;
        let (dm_row, v_row) = (|i: usize| &dm[i * cols..][..main], |j: usize| &v[j * cols..][..main]);
        for o0 in (0..o).step_by(B) {
            for c0 in (0..c).step_by(B) {
                let (bo, bc) = ((o - o0).min(B), (c - c0).min(B));
                let mut add = |i: usize, j: usize, sum: T| du_t[(c0 + j) * o + o0 + i] += sum;
                if bo == B && bc == B {
                    let dots = dot_block::<T, B, B>(
                        std::array::from_fn(|i| dm_row(o0 + i)),
                        std::array::from_fn(|j| v_row(c0 + j)),
                    );
                    for (i, dots) in dots.into_iter().enumerate() {
                        for (j, sum) in dots.into_iter().enumerate() {
                            add(i, j, sum);
                        }
                    }
                } else {
                    for i in 0..bo {
                        for j in 0..bc {
                            let [[sum]] = dot_block::<T, 1, 1>([dm_row(o0 + i)], [v_row(c0 + j)]);
                            add(i, j, sum);
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
}

/// The first `n · LANES` values of `r` as `n` groups of `LANES`.
#[inline(always)]
fn as_lanes<T>(r: &[T], n: usize) -> &[[T; LANES]] {
    let (groups, _) = r[..n * LANES].as_chunks::<LANES>();
    groups
}

/// The `BO × BC` dot products of rows `a` with rows `b`, all of one length
/// (a multiple of [`LANES`]), each summed in `LANES` lanes and then across.
#[inline(always)]
fn dot_block<T: Float, const BO: usize, const BC: usize>(
    a: [&[T]; BO],
    b: [&[T]; BC],
) -> [[T; BC]; BO] {
    let mut acc = [[[T::zero(); LANES]; BC]; BO];
    let n = a[0].len() / LANES;
    let a: [&[[T; LANES]]; BO] = a.map(|r| as_lanes(r, n));
    let b: [&[[T; LANES]]; BC] = b.map(|r| as_lanes(r, n));
    for t in 0..n {
        for i in 0..BO {
            for j in 0..BC {
                let (x, y) = (&a[i][t], &b[j][t]);
                for l in 0..LANES {
                    acc[i][j][l] = T::mul_add(x[l], y[l], acc[i][j][l]);
                }
            }
        }
    }
    // Pairwise, in halves: each level is one vector add.
    acc.map(|row| {
        row.map(|mut lanes| {
            for half in [8, 4, 2, 1] {
                for l in 0..half {
                    lanes[l] += lanes[l + half];
                }
            }
            lanes[0]
        })
    })
}
