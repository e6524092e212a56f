//! Matrix products in vector registers for the convolutions in f32 on CPUs
//! with AVX2 or AVX-512: `M [O, n] = Σ_c U [c, O] ⊗ V [c, n]` with `OB`
//! output rows' accumulators at once, `V`'s rows computed on the fly from a
//! few loads each (never written), `U` broadcast entry by entry. gemm would
//! need `V` as a matrix in memory and pack both operands; where `V` is a
//! transform of the input (Winograd's `Bᵀ d B`) or shifted views of it (a
//! direct convolution's taps), skipping that matrix is the gain.
//!
//! Each sum over `c` runs from the first to the last in FMAs, as gemm's does
//! at the depths of these layers: the callers' tests find gemm's values bit
//! for bit.

#[cfg(target_arch = "x86_64")]
use crate::kernels::simd::regs::Reg;
use crate::kernels::simd::Float;

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
    pub(in crate::kernels::conv) fn present(self) -> bool {
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

/// Work done in vector registers `R` with `OB` output rows' accumulators at
/// a time, which [`Isa::run`] compiles for each ISA.
#[cfg(target_arch = "x86_64")]
pub(in crate::kernels::conv) trait InRegisters {
    /// # Safety
    /// The CPU has `R`'s ISA, and the job's pointers (if any) cover what its
    /// fields say.
    unsafe fn run<R: Reg, const OB: usize>(self);
}

#[cfg(target_arch = "x86_64")]
impl Isa {
    /// Runs `job` in this ISA's registers: zmm with 16 accumulators (of 32
    /// registers), or ymm with 8 (of 16). The one place that maps an ISA to
    /// its registers and compiles the job for it.
    ///
    /// # Safety
    /// The job's pointers (if any) cover what its fields say.
    pub(in crate::kernels::conv) unsafe fn run(self, job: impl InRegisters) {
        use std::arch::x86_64::{__m256, __m512};
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(job: impl InRegisters) {
            // SAFETY: compiled for AVX-512F, called only where it is
            // present; the caller's promise for the rest.
            unsafe { job.run::<__m512, 16>() }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(job: impl InRegisters) {
            // SAFETY: as above, for AVX2 and FMA.
            unsafe { job.run::<__m256, 8>() }
        }
        assert!(self.present(), "this CPU has no {self:?}");
        // SAFETY: the CPU has the ISA (asserted); the caller's promise.
        match self {
            Isa::Avx512 => unsafe { avx512(job) },
            Isa::Avx2 => unsafe { avx2(job) },
        }
    }
}

/// One load per row of `V`, used as it is: the row itself.
#[cfg(target_arch = "x86_64")]
impl<S: Rows> InRegisters for Products<1, S> {
    #[inline(always)]
    unsafe fn run<R: Reg, const OB: usize>(self) {
        // SAFETY: the caller's promise.
        unsafe { self.run_with::<R, OB>(|[v]| v) }
    }
}

/// Where row `c` of `V` starts, as an offset from `src`.
pub(in crate::kernels::conv) trait Rows {
    fn at(&self, c: usize) -> usize;
}

/// Rows a fixed stride apart.
#[derive(Clone, Copy)]
pub(in crate::kernels::conv) struct Strided(pub usize);

impl Rows for Strided {
    #[inline(always)]
    fn at(&self, c: usize) -> usize {
        c * self.0
    }
}

/// Rows at the offsets of a table (one per summed channel).
#[derive(Clone, Copy)]
pub(in crate::kernels::conv) struct Table<'a>(pub &'a [usize]);

impl Rows for Table<'_> {
    #[inline(always)]
    fn at(&self, c: usize) -> usize {
        self.0[c]
    }
}

#[cfg(target_arch = "x86_64")]
/// The products `M [O, n] = Σ_c U [c, O] ⊗ V [c, n]`, where row `c` of `V`
/// is computed from `K` loads at `src + rows.at(c) + tap`.
pub(in crate::kernels::conv) struct Products<const K: usize, S: Rows> {
    /// `M`'s row length (tiles, a chunk's columns, pixels)
    pub n: usize,
    /// the summed channels and the output rows
    pub c: usize,
    pub o: usize,
    /// what `V` is computed from, and where each summed channel's row starts
    pub src: *const f32,
    pub rows: S,
    /// the loads one entry of `V` takes, as offsets from its row's start
    pub taps: [usize; K],
    /// `U` as `[C, O]`
    pub u: *const f32,
    /// `M` as `[O, n]`
    pub m: *mut f32,
}

#[cfg(target_arch = "x86_64")]
impl<const K: usize, S: Rows> Products<K, S> {
    /// `M = U · V`, with `V` = `v` of the taps, `R::L` columns at a time;
    /// the last block ends at `n`, overlapping the one before (the same
    /// values written twice).
    ///
    /// # Safety
    /// The CPU has `R`'s ISA; the pointers cover what the fields say.
    #[inline(always)]
    pub unsafe fn run_with<R: Reg, const OB: usize>(&self, v: impl Fn([R; K]) -> R + Copy) {
        let mut t = 0;
        loop {
            let at = t.min(self.n - R::L);
            let mut o0 = 0;
            while o0 < self.o {
                // SAFETY (both): the caller's promise.
                if o0 + OB <= self.o {
                    unsafe { self.block::<R, OB>(at, o0, v) };
                    o0 += OB;
                } else {
                    unsafe { self.block::<R, 1>(at, o0, v) };
                    o0 += 1;
                }
            }
            if at + R::L == self.n {
                break;
            }
            t += R::L;
        }
    }

    /// Output rows `o0..o0 + B` of columns `at..at + L`: `B` accumulators
    /// over the summed channels.
    ///
    /// # Safety
    /// As for [`Products::run_with`], and `at + L ≤ n`, `o0 + B ≤ o`.
    #[inline(always)]
    unsafe fn block<R: Reg, const B: usize>(&self, at: usize, o0: usize, v: impl Fn([R; K]) -> R) {
        // SAFETY (every `unsafe`): the caller's promise; each load and
        // store stays inside the buffers the fields describe.
        let mut acc = [unsafe { R::zero() }; B];
        for ch in 0..self.c {
            let p = unsafe { self.src.add(self.rows.at(ch) + at) };
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
