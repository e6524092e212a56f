//! The forward's products with the input transform done in registers, for
//! f32 on CPUs with AVX2 or AVX-512.
//!
//! The portable forward writes every image's `V = Bᵀ d B` (16 values per
//! tile and channel: four times the input) into a chunk matrix, and gemm
//! packs and reads it again. `perf` on a Zen 4 put the stores of that
//! matrix at most of the input transform's 12% of a training step: the
//! transform is bound by memory, not by its additions (a one-pass version
//! in registers that still wrote `V` was no faster). Here `V` is never
//! written. Each entry `ξ = (i, j)` of `Bᵀ d B` is a sum of only four patch
//! entries (two rows of `Bᵀ` times two columns of `B`), so the kernel loads
//! those four from the image's quadrant planes, combines them with three
//! additions, and multiplies the result into `OB` output channels'
//! accumulators at once, across the input channels: `M_ξ [O, tiles]` for
//! one image, which stays in L2 for the output transform that follows.
//!
//! `V_ξ` takes the same additions as the portable transform, and each sum
//! over the input channels runs from the first to the last in FMAs, as
//! gemm's does at these depths: the results are the chunked path's bit for
//! bit (a test checks that on every ISA the CPU has).

use super::{Tiling, XI};
#[cfg(target_arch = "x86_64")]
use crate::kernels::simd::regs::Reg;
use crate::kernels::simd::Float;

/// For row `i` of `Bᵀ` (and column `i` of `B`): the two entries it takes,
/// and whether it subtracts the second (`Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0],
/// [0, -1, 1, 0], [0, 1, 0, -1]]`).
const TAPS: [(usize, usize, bool); 4] = [(0, 2, true), (1, 2, false), (2, 1, true), (1, 3, true)];

/// The vector ISA the products run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::kernels::conv) enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    /// f32 lanes of one register.
    pub(in crate::kernels::conv) fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }

    /// The widest ISA this CPU has, for `T` = f32 and images of at least
    /// one register's lanes of tiles; `None` (the chunked gemms) otherwise.
    pub(in crate::kernels::conv) fn pick<T: Float>(tiles: usize) -> Option<Isa> {
        if T::DTYPE != candle_core::DType::F32 {
            return None;
        }
        Isa::available().next().filter(|isa| tiles >= isa.lanes())
    }

    /// The ISAs this CPU has, widest first.
    pub(in crate::kernels::conv) fn available() -> impl Iterator<Item = Isa> {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|isa| isa.present())
    }

    /// Whether this CPU has the ISA (a cached check, cheap to repeat).
    fn present(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// `M_ξ [O, n]` for every `ξ` (`m [16, O, n]`, `n` the image's tiles) of one
/// image: `M_ξ = U_ξ · V_ξ` with `V_ξ` computed on the fly from the image's
/// quadrant planes `quads [C, 4, quad_len]`, and the kernels in the
/// Winograd domain as `ut [16, C, O]`.
pub(super) fn image(
    isa: Isa,
    t: &Tiling,
    c: usize,
    o: usize,
    quads: &[f32],
    ut: &[f32],
    m: &mut [f32],
) {
    let n = t.per_image();
    assert!(isa.present(), "this CPU has no {isa:?}");
    assert!(n >= isa.lanes(), "{n} tiles, fewer than a register's lanes");
    assert!(quads.len() >= c * 4 * t.quad_len() && ut.len() >= XI * c * o && m.len() >= XI * o * n);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m256, __m512};
        // (tiling, input and output channels, quads, Uᵀ, M)
        type Args<'a> = (
            &'a Tiling,
            usize,
            usize,
            &'a [f32],
            &'a [f32],
            &'a mut [f32],
        );
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512((t, c, o, quads, ut, m): Args) {
            // SAFETY: the caller checked the CPU and the lengths.
            unsafe { all_xi::<__m512, 16>(t, c, o, quads, ut, m) }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2((t, c, o, quads, ut, m): Args) {
            // SAFETY: as above.
            unsafe { all_xi::<__m256, 8>(t, c, o, quads, ut, m) }
        }
        let args = (t, c, o, quads, ut, m);
        // SAFETY: the CPU has the ISA, the buffers the lengths (asserted).
        match isa {
            Isa::Avx512 => unsafe { avx512(args) },
            Isa::Avx2 => unsafe { avx2(args) },
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no {isa:?} on this architecture")
}

#[cfg(target_arch = "x86_64")]
/// [`image`] in registers `R`, `OB` output channels at a time (the rest one
/// at a time).
///
/// # Safety
/// The CPU has `R`'s ISA; the lengths are as [`image`] asserts.
#[inline(always)]
unsafe fn all_xi<R: Reg, const OB: usize>(
    t: &Tiling,
    c: usize,
    o: usize,
    quads: &[f32],
    ut: &[f32],
    m: &mut [f32],
) {
    let (n, ql) = (t.per_image(), t.quad_len());
    // Patch entry (k, l) of tile 0 in a channel's planes (see `Tiling`).
    let at = |k: usize, l: usize| (2 * (k % 2) + l % 2) * ql + (k / 2) * t.tq + l / 2;
    for xi in 0..XI {
        let ((k1, k2, si), (l1, l2, sj)) = (TAPS[xi / 4], TAPS[xi % 4]);
        let taps = [at(k1, l1), at(k2, l1), at(k1, l2), at(k2, l2)];
        let one = Xi {
            n,
            c,
            o,
            quads: quads.as_ptr(),
            stride: 4 * ql,
            taps,
            u: ut[xi * c * o..].as_ptr(),
            m: m[xi * o * n..].as_mut_ptr(),
        };
        // SAFETY: the caller's promise.
        unsafe {
            match (si, sj) {
                (false, false) => one.run::<R, OB, false, false>(),
                (false, true) => one.run::<R, OB, false, true>(),
                (true, false) => one.run::<R, OB, true, false>(),
                (true, true) => one.run::<R, OB, true, true>(),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// One `ξ`'s products for one image.
struct Xi {
    /// tiles: `M`'s row length
    n: usize,
    /// input and output channels
    c: usize,
    o: usize,
    /// the quadrant planes, `stride` apart per channel
    quads: *const f32,
    stride: usize,
    /// the four patch entries `V_ξ` takes, as offsets into a channel's planes
    taps: [usize; 4],
    /// `U_ξ` as `[C, O]`
    u: *const f32,
    /// `M_ξ` as `[O, n]`
    m: *mut f32,
}

#[cfg(target_arch = "x86_64")]
impl Xi {
    /// `M_ξ = U_ξ · V_ξ`, with `V_ξ = (d₀ ∓ d₁) ∓ (d₂ ∓ d₃)` of the taps
    /// (`SI`, `SJ`: subtract), `R::L` tiles at a time; the last block ends
    /// at `n`, overlapping the one before (the same values written twice).
    ///
    /// # Safety
    /// The CPU has `R`'s ISA; the pointers cover what the fields say.
    #[inline(always)]
    unsafe fn run<R: Reg, const OB: usize, const SI: bool, const SJ: bool>(&self) {
        let combine = |a: R, b: R, sub: bool| unsafe {
            if sub {
                a.sub(b)
            } else {
                a.add(b)
            }
        };
        let mut t = 0;
        loop {
            let at = t.min(self.n - R::L);
            let mut o0 = 0;
            while o0 < self.o {
                // SAFETY (both): the caller's promise.
                if o0 + OB <= self.o {
                    unsafe {
                        self.block::<R, OB>(at, o0, |d| {
                            combine(combine(d[0], d[1], SI), combine(d[2], d[3], SI), SJ)
                        })
                    };
                    o0 += OB;
                } else {
                    unsafe {
                        self.block::<R, 1>(at, o0, |d| {
                            combine(combine(d[0], d[1], SI), combine(d[2], d[3], SI), SJ)
                        })
                    };
                    o0 += 1;
                }
            }
            if at + R::L == self.n {
                break;
            }
            t += R::L;
        }
    }

    /// Output channels `o0..o0 + B` of tiles `at..at + L`: `B` accumulators
    /// over the input channels.
    ///
    /// # Safety
    /// As for [`Xi::run`], and `at + L ≤ n`, `o0 + B ≤ o`.
    #[inline(always)]
    unsafe fn block<R: Reg, const B: usize>(&self, at: usize, o0: usize, v: impl Fn([R; 4]) -> R) {
        // SAFETY (every `unsafe`): the caller's promise; each load and
        // store stays inside the buffers the fields describe.
        let mut acc = [unsafe { R::zero() }; B];
        for ch in 0..self.c {
            let p = unsafe { self.quads.add(ch * self.stride + at) };
            let vx = v(self.taps.map(|tap| unsafe { R::load(p.add(tap)) }));
            let u = unsafe { self.u.add(ch * self.o + o0) };
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = unsafe { R::fmadd(vx, R::splat(*u.add(k)), *acc) };
            }
        }
        for (k, acc) in acc.into_iter().enumerate() {
            unsafe { acc.store(self.m.add((o0 + k) * self.n + at)) };
        }
    }
}
