//! What one core of this CPU can multiply, at most: f32 FMAs (`vfmadd231ps`,
//! what every product of the crate runs on) against the bf16 dot product of
//! AVX512-BF16 (`vdpbf16ps`: pairs of bf16 multiplied and added into f32),
//! each as 12 independent accumulators in registers, no memory. The ratio is
//! what a mixed-precision option could gain at most on the products (issue
//! #19; BENCHMARKS.md, 2026-12-06).
//!
//!     cargo run --release -p cifar10-cnn --example isa_peak
//!
//! Prints one JSON line: the f32 figure in the widest registers the CPU has
//! (zmm with AVX-512F, else ymm with AVX2 + FMA, named by `f32_isa`); the
//! bf16 figure is null on a CPU without AVX512-BF16, and both are null off
//! x86-64.

use std::time::Instant;

/// Iterations of the 12 accumulators per timing: about 0.1 s at peak.
const ITERS: usize = 10_000_000;

fn main() {
    let best = |f: fn() -> Option<f64>| (0..3).filter_map(|_| f()).reduce(f64::max);
    let (f32_fma, bf16_dot) = (best(f32_gflops), best(bf16_gflops));
    let f32_isa = f32_isa().map_or("null".to_string(), |isa| format!("\"{isa}\""));
    let show = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.0}"));
    let ratio = f32_fma.zip(bf16_dot).map(|(f, b)| b / f);
    println!(
        "{{\"f32_isa\": {}, \"f32_fma_gflops\": {}, \"bf16_dot_gflops\": {}, \"bf16_over_f32\": {}}}",
        f32_isa,
        show(f32_fma),
        show(bf16_dot),
        ratio.map_or("null".to_string(), |r| format!("{r:.2}"))
    );
}

/// The widest registers this CPU runs f32 FMAs in: "avx512f" (zmm), else
/// "avx2" (ymm, with FMA); `None` off x86-64 or without either.
fn f32_isa() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") {
            return Some("avx512f");
        }
        if has!("avx2") && has!("fma") {
            return Some("avx2");
        }
    }
    None
}

/// GFLOP/s of f32 FMAs on one core, in the registers of [`f32_isa`].
#[allow(unreachable_code)] // (off x86-64, `f32_isa` is always `None`)
fn f32_gflops() -> Option<f64> {
    let isa = f32_isa()?;
    let start = Instant::now();
    #[cfg(target_arch = "x86_64")]
    let lanes = match isa {
        // SAFETY (both): `f32_isa` found the ISA on this CPU.
        "avx512f" => {
            std::hint::black_box(unsafe { x86::fma_loop(ITERS) });
            16
        }
        _ => {
            std::hint::black_box(unsafe { x86::fma_loop_avx2(ITERS) });
            8
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let lanes: usize = unreachable!("no {isa} off x86-64");
    // 12 registers × lanes × (multiply + add)
    Some((ITERS * 12 * lanes * 2) as f64 / start.elapsed().as_secs_f64() / 1e9)
}

/// GFLOP/s of bf16 dot products on one core, where the CPU has AVX512-BF16.
fn bf16_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bf16") {
        let start = Instant::now();
        // SAFETY: this CPU has AVX512-BF16 (and so AVX-512F).
        std::hint::black_box(unsafe { x86::bf16_loop(ITERS) });
        // 12 registers × 16 lanes × 2 pairs × (multiply + add)
        return Some((ITERS * 12 * 16 * 4) as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 12 chains of FMAs: more than latency × throughput, so the pipes stay full.
    #[target_feature(enable = "avx512f")]
    pub fn fma_loop(n: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        let (x, y) = (_mm512_set1_ps(1.0001), _mm512_set1_ps(0.9999));
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(x, y, *a);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    /// The same in ymm registers (AVX2 + FMA).
    #[target_feature(enable = "avx2,fma")]
    pub fn fma_loop_avx2(n: usize) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 12];
        let (x, y) = (_mm256_set1_ps(1.0001), _mm256_set1_ps(0.9999));
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(x, y, *a);
            }
        }
        let mut lanes = [0f32; 8];
        acc.iter()
            .map(|&a| {
                // SAFETY: `lanes` holds the register's 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
                lanes.iter().sum::<f32>()
            })
            .sum()
    }

    /// The same with `vdpbf16ps` (1.0 in bf16 is 0x3f80).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub fn bf16_loop(n: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        // SAFETY: __m512i and __m512bh are both 512 bits of plain data.
        let one: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi16(0x3f80)) };
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, one, one);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }
}
