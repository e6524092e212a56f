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
            grad_dots::<T, 16, 4, 4>(o, c, n, dm, v, du_t)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: Float>(o: usize, c: usize, n: usize, dm: &[T], v: &[T], du_t: &mut [T]) {
            grad_dots::<T, 8, 4, 3>(o, c, n, dm, v, du_t)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: this CPU has the features avx512 is built for.
            return unsafe { avx512(o, c, cols, dm, v, du_t) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { avx2(o, c, cols, dm, v, du_t) };
        }
    }
    grad_dots::<T, 4, 2, 2>(o, c, cols, dm, v, du_t)
}

/// [`kernel_grad_dots`] with `BO × BC` dots at a time in `L` lanes.
#[inline(always)]
fn grad_dots<T: Float, const L: usize, const BO: usize, const BC: usize>(
    o: usize,
    c: usize,
    cols: usize,
    dm: &[T],
    v: &[T],
    du_t: &mut [T],
) {
    // Whole groups of lanes in blocks; the rest (none for Winograd's
    // chunk matrices) one dot at a time below.
    let main = cols - cols % L;
    let (dm_row, v_row) = (
        |i: usize| &dm[i * cols..][..main],
        |j: usize| &v[j * cols..][..main],
    );
    for o0 in (0..o).step_by(BO) {
        for c0 in (0..c).step_by(BC) {
            let (bo, bc) = ((o - o0).min(BO), (c - c0).min(BC));
            let mut add = |i: usize, j: usize, sum: T| du_t[(c0 + j) * o + o0 + i] += sum;
            if bo == BO && bc == BC {
                let dots = dot_block::<T, L, BO, BC>(
                    std::array::from_fn(|i| dm_row(o0 + i)),
                    std::array::from_fn(|j| v_row(c0 + j)),
                );
                for (i, dots) in dots.into_iter().enumerate() {
                    for (j, sum) in dots.into_iter().enumerate() {
                        add(i, j, sum);
                    }
                }
            } else if bo == BO {
                // the last columns: BO × 1 blocks
                for j in 0..bc {
                    let dots = dot_block::<T, L, BO, 1>(
                        std::array::from_fn(|i| dm_row(o0 + i)),
                        [v_row(c0 + j)],
                    );
                    for (i, [sum]) in dots.into_iter().enumerate() {
                        add(i, j, sum);
                    }
                }
            } else {
                for i in 0..bo {
                    for j in 0..bc {
                        let [[sum]] = dot_block::<T, L, 1, 1>([dm_row(o0 + i)], [v_row(c0 + j)]);
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
        let shapes: [(&str, Dots); 4] = [
            ("dispatch", kernel_grad_dots::<f32>),
            ("avx-512 16×4×4", grad_dots::<f32, 16, 4, 4>),
            ("avx2 8×4×3", grad_dots::<f32, 8, 4, 3>),
            ("baseline 4×2×2", grad_dots::<f32, 4, 2, 2>),
        ];
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
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
            for (name, dots) in shapes {
                let mut got = start.clone();
                dots(o, c, cols, &dm, &v, &mut got);
                for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (cols as f64).sqrt() * (1.0 + w.abs());
                    assert!(
                        (g as f64 - w).abs() <= tol,
                        "{name}, {o}×{c}×{cols}: entry {k} is {g}, want {w}"
                    );
                }
            }
        }
    }
}
