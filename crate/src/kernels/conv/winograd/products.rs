//! The forward's products with the input transform done in registers, and
//! the backward's input-gradient products by the same kernel, for f32 on
//! CPUs with AVX2 or AVX-512.
//!
//! The portable forward writes every image's `V = Bᵀ d B` (16 values per
//! tile and channel: four times the input) into a chunk matrix, and gemm
//! packs and reads it again. `perf` on a Zen 4 put the stores of that
//! matrix at most of the input transform's 12% of a training step: the
//! transform is bound by memory, not by its additions (a one-pass version
//! in registers that still wrote `V` was no faster). Here `V` is never
//! written as a matrix: each entry `ξ = (i, j)` of `Bᵀ d B` is a sum of
//! only four patch entries (two rows of `Bᵀ` times two columns of `B`), so
//! the kernel loads those four from the image's quadrant planes and
//! combines them with three additions, one block of columns at a time into
//! a few KB on the stack that stay in L1, and multiplies that block into
//! the output channels' accumulators, across the input channels:
//! `M_ξ [O, tiles]` for one image, which stays in L2 for the output
//! transform that follows.
//!
//! `V_ξ` takes the same additions as the portable transform, and each sum
//! over the input channels runs from the first to the last in FMAs, as
//! gemm's does at these depths: the results are the chunked path's bit for
//! bit (a test checks that on every ISA the CPU has).
//!
//! The backward's `dV_ξ = U_ξᵀ · dM_ξ` is the same product with `V_ξ`'s rows
//! read straight from the chunk matrix `dM` (one load instead of four taps):
//! [`chunk_input_grad`], again gemm's values bit for bit.

use super::{Blocks, Tiling, TAPS, XI};
pub(in crate::kernels::conv) use crate::kernels::conv::products::Isa;
#[cfg(target_arch = "x86_64")]
use crate::kernels::conv::products::{InRegisters, Products, Strided};
#[cfg(target_arch = "x86_64")]
use crate::kernels::simd::regs::Reg;
use crate::kernels::simd::Float;

/// `M_ξ [O, n]` for every `ξ` (`m [16, O, n]` as [`Blocks`], `n` the image's tiles) of one
/// image: `M_ξ = U_ξ · V_ξ` with `V_ξ` computed on the fly from the image's
/// quadrant planes `quads [C, 4, quad_len]` (channels
/// [`Tiling::channel_len`] apart), and the kernels in the
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
    let mb = Blocks { rows: o, cols: n };
    assert!(quads.len() >= c * t.channel_len() && ut.len() >= XI * c * o && m.len() >= mb.len());
    #[cfg(target_arch = "x86_64")]
    {
        let job = Image {
            t,
            c,
            o,
            quads,
            ut,
            m,
        };
        // SAFETY: the job holds slices (of the lengths asserted above).
        unsafe { isa.run(job) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no {isa:?} on this architecture")
}

/// [`image()`]'s work, for [`Isa::run`].
#[cfg(target_arch = "x86_64")]
struct Image<'a> {
    t: &'a Tiling,
    c: usize,
    o: usize,
    quads: &'a [f32],
    ut: &'a [f32],
    m: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl InRegisters for Image<'_> {
    /// `W` registers of tiles by `OB` output channels at a time.
    ///
    /// # Safety
    /// The CPU has `R`'s ISA; the lengths are as [`image()`] asserts.
    #[inline(always)]
    unsafe fn run<R: Reg, const W: usize, const OB: usize>(self) {
        let Image {
            t,
            c,
            o,
            quads,
            ut,
            m,
        } = self;
        let (n, ql) = (t.per_image(), t.quad_len());
        // Patch entry (k, l) of tile 0 in a channel's planes (see `Tiling`).
        let at = |k: usize, l: usize| (2 * (k % 2) + l % 2) * ql + (k / 2) * t.tq + l / 2;
        let combine = |a: R, b: R, sub: bool| unsafe {
            if sub {
                a.sub(b)
            } else {
                a.add(b)
            }
        };
        for xi in 0..XI {
            let ((k1, k2, si), (l1, l2, sj)) = (TAPS[xi / 4], TAPS[xi % 4]);
            let one = Products {
                n,
                c,
                o,
                src: quads.as_ptr(),
                rows: Strided(t.channel_len()),
                taps: [at(k1, l1), at(k2, l1), at(k1, l2), at(k2, l2)],
                u: ut[xi * c * o..].as_ptr(),
                m: Blocks { rows: o, cols: n }.block_mut(m, xi).as_mut_ptr(),
            };
            // V_ξ = (d₀ ∓ d₁) ∓ (d₂ ∓ d₃): `si`, `sj` say which subtract (as
            // constants in each arm, so that no branch is left in the loop).
            macro_rules! v {
                ($si:literal, $sj:literal) => {
                    |[a, b, c, d]: [R; 4]| combine(combine(a, b, $si), combine(c, d, $si), $sj)
                };
            }
            // SAFETY: the caller's promise.
            unsafe {
                match (si, sj) {
                    (false, false) => one.run_with::<R, W, OB>(v!(false, false)),
                    (false, true) => one.run_with::<R, W, OB>(v!(false, true)),
                    (true, false) => one.run_with::<R, W, OB>(v!(true, false)),
                    (true, true) => one.run_with::<R, W, OB>(v!(true, true)),
                }
            }
        }
    }
}

/// The backward's `dV_ξ = U_ξᵀ · dM_ξ` for every `ξ` of one chunk, in
/// registers, as [`image()`] does the forward's products: `dm [16, O, cols]`
/// (as [`Blocks`]), the kernels in the Winograd domain `u [16, O, C]`, into
/// `dv [16, C, cols]` (as [`Blocks`]). `cols` is a multiple of the registers' lanes (the
/// chunk matrices' columns are rounded up to 16). gemm, which this
/// replaces, packs both operands first and runs its microkernels at depths
/// of 32 and 64 below its best rate.
pub(super) fn chunk_input_grad<T: Float>(
    isa: Isa,
    cols: usize,
    c: usize,
    o: usize,
    dm: &[T],
    u: &[T],
    dv: &mut [T],
) {
    assert_eq!(
        T::DTYPE,
        candle_core::DType::F32,
        "the products in registers are f32"
    );
    assert!(isa.present(), "this CPU has no {isa:?}");
    assert!(
        cols.is_multiple_of(isa.lanes()),
        "{cols} columns, not whole registers"
    );
    let (mb, vb) = (Blocks { rows: o, cols }, Blocks { rows: c, cols });
    assert!(dm.len() >= mb.len() && u.len() >= XI * o * c && dv.len() >= vb.len());
    // SAFETY (the three casts): T is f32 (asserted).
    let (dm, u, dv) = unsafe {
        (
            std::slice::from_raw_parts(dm.as_ptr().cast::<f32>(), dm.len()),
            std::slice::from_raw_parts(u.as_ptr().cast::<f32>(), u.len()),
            std::slice::from_raw_parts_mut(dv.as_mut_ptr().cast::<f32>(), dv.len()),
        )
    };
    #[cfg(target_arch = "x86_64")]
    {
        for xi in 0..XI {
            // Summed over the output channels (dM's rows), into the input
            // channels (dV's rows): U_ξ [O, C] is read as it is.
            let job = Products {
                n: cols,
                c: o,
                o: c,
                src: mb.block(dm, xi).as_ptr(),
                rows: Strided(cols),
                taps: [0],
                u: u[xi * o * c..].as_ptr(),
                m: vb.block_mut(dv, xi).as_mut_ptr(),
            };
            // SAFETY: dM_ξ, U_ξ and dV_ξ lie inside the slices (asserted).
            unsafe { isa.run(job) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no {isa:?} on this architecture")
}
