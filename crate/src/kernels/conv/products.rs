//! Matrix products in vector registers for the convolutions in f32 on CPUs
//! with AVX2 or AVX-512: `M [O, n] = Σ_c U [c, O] ⊗ V [c, n]` with a block
//! of `W` registers' columns by `OB` output rows in accumulators at once,
//! `U` broadcast entry by entry, and `V` computed from a few loads per entry
//! one column block at a time, into a few KB on the stack (never the whole
//! matrix). gemm would need `V` as a matrix in memory and pack both
//! operands; where `V` is a transform of the input (Winograd's `Bᵀ d B`) or
//! shifted views of it (a direct convolution's taps), skipping that matrix
//! is the gain.
//!
//! Each sum over `c` runs from the first to the last in FMAs, as gemm's does
//! at the depths of these layers: the callers' tests find gemm's values bit
//! for bit.

#[cfg(target_arch = "x86_64")]
use crate::kernels::simd::regs::Reg;
use crate::kernels::simd::Float;
#[cfg(target_arch = "x86_64")]
use std::mem::MaybeUninit;

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

/// Work done in vector registers `R` in blocks of `W` registers' columns
/// by `OB` output rows (`W · OB` accumulators), which [`Isa::run`] compiles
/// for each ISA.
#[cfg(target_arch = "x86_64")]
pub(in crate::kernels::conv) trait InRegisters {
    /// # Safety
    /// The CPU has `R`'s ISA, and the job's pointers (if any) cover what its
    /// fields say.
    unsafe fn run<R: Reg, const W: usize, const OB: usize>(self);
}

#[cfg(target_arch = "x86_64")]
impl Isa {
    /// Runs `job` in this ISA's registers: 24 zmm accumulators (3 column
    /// registers × 8 rows, of 32 registers), or 12 ymm (2 × 6, of 16). An
    /// FMA has 4 cycles of latency at 2 a cycle, so 8 chains are the least
    /// that keep the pipes busy; with 1 × 8, as before, a Zen 3 ran the
    /// products at under half its FMA peak. 2 × 6 has slack in the chains
    /// and one broadcast per two FMAs, and still leaves registers for
    /// computing `V` (3 × 4 did not: an accumulator went through the
    /// stack). In zmm, 1 × 16 (as before) took a broadcast of `U` per FMA:
    /// with its loads of `V`, more loads than an Intel core's two ports
    /// issue beside two FMAs a cycle, and the forward ran slower in zmm
    /// than in ymm on an Ice Lake Xeon; 3 × 8 takes one per three FMAs
    /// (BENCHMARKS.md, 2026-12-07, Intel Xeon). The one place that maps an
    /// ISA to its registers and compiles the job for it.
    ///
    /// # Safety
    /// The job's pointers (if any) cover what its fields say.
    pub(in crate::kernels::conv) unsafe fn run(self, job: impl InRegisters) {
        use std::arch::x86_64::{__m256, __m512};
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(job: impl InRegisters) {
            // SAFETY: compiled for AVX-512F, called only where it is
            // present; the caller's promise for the rest.
            unsafe { job.run::<__m512, 3, 8>() }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(job: impl InRegisters) {
            // SAFETY: as above, for AVX2 and FMA.
            unsafe { job.run::<__m256, 2, 6>() }
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
    unsafe fn run<R: Reg, const W: usize, const OB: usize>(self) {
        // SAFETY: the caller's promise.
        unsafe { self.run_with::<R, W, OB>(|[v]| v) }
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
    /// `M = U · V`, with `V` = `v` of the taps, in blocks of `W` registers'
    /// columns while they fit, then of one; the last block ends at `n`,
    /// overlapping the one before (the same values written twice).
    ///
    /// # Safety
    /// The CPU has `R`'s ISA; the pointers cover what the fields say; `n`
    /// is at least one register's lanes.
    #[inline(always)]
    pub unsafe fn run_with<R: Reg, const W: usize, const OB: usize>(
        &self,
        v: impl Fn([R; K]) -> R + Copy,
    ) {
        let (n, l) = (self.n, R::L);
        let mut at = 0;
        // SAFETY (both calls): the caller's promise; each block's columns
        // lie inside `0..n`.
        while at + W * l <= n {
            unsafe { self.columns::<R, W, OB>(at, v) };
            at += W * l;
        }
        while at < n {
            let start = at.min(n - l);
            unsafe { self.columns::<R, 1, OB>(start, v) };
            at = start + l;
        }
    }

    /// Columns `at..at + W · L` of every output row. `V`'s rows for them are
    /// computed once, `CB` summed channels at a time, into a block on the
    /// stack that every block of output rows then reads from L1: read from
    /// their sources instead, row block after row block, the loads of a
    /// 64-channel layer (its taps' cache lines a fixed stride apart, few
    /// sets) missed L1 and went to L2. Blocks of `OB` rows, the last few in
    /// blocks of 4 (never fewer than 8 chains where `W` is 2: 32 rows as 6,
    /// 6, 6, 6, 4, 4), then of 2 and of 1.
    ///
    /// # Safety
    /// As for [`Products::run_with`], and `at + W · L ≤ n`.
    #[inline(always)]
    unsafe fn columns<R: Reg, const W: usize, const OB: usize>(
        &self,
        at: usize,
        v: impl Fn([R; K]) -> R + Copy,
    ) {
        /// Summed channels a block of `V` holds: 8 KB of ymm pairs or zmm.
        const CB: usize = 128;
        // (not zeroed: only the rows written below are read)
        let mut block = [const { MaybeUninit::<[R; W]>::uninit() }; CB];
        let mut c0 = 0;
        while c0 < self.c {
            let block = &mut block[..CB.min(self.c - c0)];
            for (ch, vx) in (c0..).zip(block.iter_mut()) {
                // SAFETY: the caller's promise: the taps of columns
                // `at..at + W · L` lie inside `src`.
                let p = unsafe { self.src.add(self.rows.at(ch) + at) };
                vx.write(std::array::from_fn(|w| {
                    v(self
                        .taps
                        .map(|tap| unsafe { R::load(p.add(w * R::L + tap)) }))
                }));
            }
            // SAFETY: every row of `block` was written just above.
            let vs: &[[R; W]] =
                unsafe { std::mem::transmute::<&[MaybeUninit<[R; W]>], _>(&*block) };
            let mut o0 = 0;
            // SAFETY (every call): the caller's promise, and `o0 + B ≤ o`.
            while o0 < self.o {
                let left = self.o - o0;
                if left == OB || left >= OB + 4 {
                    unsafe { self.block::<R, W, OB>(at, o0, c0, vs) };
                    o0 += OB;
                } else if left >= 4 {
                    unsafe { self.block::<R, W, 4>(at, o0, c0, vs) };
                    o0 += 4;
                } else if left >= 2 {
                    unsafe { self.block::<R, W, 2>(at, o0, c0, vs) };
                    o0 += 2;
                } else {
                    unsafe { self.block::<R, W, 1>(at, o0, c0, vs) };
                    o0 += 1;
                }
            }
            c0 += vs.len();
        }
    }

    /// Output rows `o0..o0 + B` of columns `at..at + W · L`, summed over
    /// channels `c0..c0 + vs.len()` whose `V` rows are `vs`: `W · B`
    /// accumulators, started from zero at the first channel and from `M`
    /// after it (the same FMAs in the same order either way), each entry of
    /// `U` broadcast once for the `W` registers of `V`.
    ///
    /// # Safety
    /// As for [`Products::run_with`], and `at + W · L ≤ n`, `o0 + B ≤ o`,
    /// `c0 + vs.len() ≤ c`.
    #[inline(always)]
    unsafe fn block<R: Reg, const W: usize, const B: usize>(
        &self,
        at: usize,
        o0: usize,
        c0: usize,
        vs: &[[R; W]],
    ) {
        // SAFETY (every `unsafe`): the caller's promise; each load and
        // store stays inside the buffers the fields describe.
        let m = |k: usize, w: usize| unsafe { self.m.add((o0 + k) * self.n + at + w * R::L) };
        let mut acc: [[R; W]; B] = std::array::from_fn(|k| {
            std::array::from_fn(|w| unsafe {
                if c0 == 0 {
                    R::zero()
                } else {
                    R::load(m(k, w))
                }
            })
        });
        for (ch, vx) in (c0..).zip(vs) {
            let u = unsafe { self.u.add(ch * self.o + o0) };
            for (k, acc) in acc.iter_mut().enumerate() {
                let uk = unsafe { R::splat(*u.add(k)) };
                for (acc, &vx) in acc.iter_mut().zip(vx) {
                    *acc = unsafe { R::fmadd(vx, uk, *acc) };
                }
            }
        }
        for (k, acc) in acc.into_iter().enumerate() {
            for (w, acc) in acc.into_iter().enumerate() {
                unsafe { acc.store(m(k, w)) };
            }
        }
    }
}
