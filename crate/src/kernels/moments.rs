//! A batch's per-channel mean and (biased) variance, from sums over each
//! plane `[H·W]` of one sample and channel: what BatchNormalization needs
//! while training.
//!
//! The sums are independent per plane, so whoever has a plane in cache can
//! take them: a convolution right after writing each output plane (when a
//! BatchNormalization follows it, see `Fused::moments`), or the
//! BatchNormalization itself in a pass of its own. Either way the same
//! [`plane_sums`] runs on the same values, and [`channel_moments`] adds the
//! planes in the same order: the results are the same bit for bit, and do
//! not depend on the thread count.
//!
//! Each plane is summed around the mean of its first values: `E[(x−k)²] −
//! E[x−k]²` cancels catastrophically when `k` is far from the mean (at
//! `k = 0` with conv outputs around 1000, f32 sums lose every digit of a
//! unit variance). The planes are then combined in f64, each around the
//! channel's mean.

use crate::kernels::simd::{multiversion, Float};

/// One plane's sums around `shift`, the mean of its first values:
/// `Σ (x − shift)` and `Σ (x − shift)²`, in f32 lanes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PlaneSums {
    pub shift: f32,
    pub sum: f32,
    pub sum_sq: f32,
}

/// Lanes of the sums: two AVX-512 registers of f32s, or four AVX2 ones.
/// The sums are bound by the additions' latency, not by memory: with one
/// register (16 lanes) each addition waited on the last, and the sums of
/// the BatchNormalization variant's four layers took 3.8% of its step.
const LANES: usize = 32;

/// Values whose mean is the shift: within a fraction of a deviation of
/// the plane's mean, for a few additions.
const SHIFT_FROM: usize = 32;

/// [`PlaneSums`] of one plane (all zeros for an empty one).
pub(crate) fn plane_sums<T: Float>(x: &[T]) -> PlaneSums {
    if x.is_empty() {
        return PlaneSums::default();
    }
    let head = &x[..x.len().min(SHIFT_FROM)];
    let k = head.iter().fold(T::zero(), |s, &v| s + v) / T::from_f64(head.len() as f64);
    let mut out = [T::zero(); 2];
    shifted_sums(x, k, &mut out);
    let f = |v: T| v.to_f64() as f32;
    PlaneSums {
        shift: f(k),
        sum: f(out[0]),
        sum_sq: f(out[1]),
    }
}

multiversion! {
    /// `[Σ (x − k), Σ (x − k)²]` over one plane, in lanes.
    fn shifted_sums<T>(x: &[T], k: T, out: &mut [T; 2]) {
        let (mut a, mut b) = ([T::zero(); LANES], [T::zero(); LANES]);
        let (groups, tail) = x.as_chunks::<LANES>();
        for g in groups {
            for l in 0..LANES {
                let d = g[l] - k;
                a[l] += d;
                b[l] = T::mul_add(d, d, b[l]);
            }
        }
        for (l, &v) in tail.iter().enumerate() {
            let d = v - k;
            a[l] += d;
            b[l] = T::mul_add(d, d, b[l]);
        }
        out[0] = a.iter().fold(T::zero(), |s, &v| s + v);
        out[1] = b.iter().fold(T::zero(), |s, &v| s + v);
    }
}

/// Each channel's mean and biased variance from the sums of every plane
/// of a batch `[N, C, hw]` (`planes` in that order, `N·C` of them).
///
/// With `m` the channel's mean and `k`, `s₁`, `s₂` a plane's sums,
/// `Σ (x − m)² = s₂ + 2 (k − m) s₁ + hw (k − m)²` for that plane.
pub fn channel_moments(planes: &[PlaneSums], c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    assert!(
        c > 0 && planes.len().is_multiple_of(c),
        "{} planes are not whole samples of {c} channels",
        planes.len()
    );
    let count = (planes.len() / c * hw) as f64;
    let hw = hw as f64;
    let mut mean = vec![0f64; c];
    for (i, p) in planes.iter().enumerate() {
        mean[i % c] += p.shift as f64 * hw + p.sum as f64;
    }
    mean.iter_mut().for_each(|m| *m /= count);
    let mut var = vec![0f64; c];
    for (i, p) in planes.iter().enumerate() {
        let d = p.shift as f64 - mean[i % c];
        var[i % c] += p.sum_sq as f64 + 2.0 * d * p.sum as f64 + hw * d * d;
    }
    // (rounding can leave a constant channel a hair below 0)
    var.iter_mut().for_each(|v| *v = (*v / count).max(0.0));
    (mean, var)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values;

    /// Mean and variance in f64, two passes: the reference.
    fn two_pass(x: &[f32], c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
        let count = (x.len() / c) as f64;
        let channel = |k: usize| {
            x.chunks_exact(hw)
                .enumerate()
                .filter(move |(i, _)| i % c == k)
                .flat_map(|(_, p)| p.iter().map(|&v| v as f64))
        };
        let mean: Vec<f64> = (0..c).map(|k| channel(k).sum::<f64>() / count).collect();
        let var = (0..c)
            .map(|k| channel(k).map(|v| (v - mean[k]).powi(2)).sum::<f64>() / count)
            .collect();
        (mean, var)
    }

    /// Channels far from 0 (a mean of 1000 and a unit variance, where sums
    /// of `x` and `x²` in f32 keep no digit of the variance), near 0, and
    /// constant; planes of 1 (a flat layer's features), odd sizes, and
    /// longer than the lanes: the moments of a two-pass sum in f64.
    #[test]
    fn match_two_passes_in_f64_far_from_zero() {
        for (n, c, hw) in [(4, 3, 900), (7, 3, 13), (64, 3, 1), (2, 3, 17 * 17)] {
            let mut next = test_values(n as u32 * 31 + hw as u32);
            let offset = [1000.0, 0.0, -3.5];
            let spread = [3.4, 1.0, 0.0];
            let x: Vec<f32> = (0..n * c * hw)
                .map(|i| {
                    let k = i / hw % c;
                    offset[k] + spread[k] * next()
                })
                .collect();
            let planes: Vec<PlaneSums> = x.chunks_exact(hw).map(plane_sums).collect();
            let (mean, var) = channel_moments(&planes, c, hw);
            let (want_mean, want_var) = two_pass(&x, c, hw);
            for k in 0..c {
                let what = format!("n {n}, c {c}, hw {hw}, channel {k}");
                // f32 lane sums: a few units of f32 rounding of the values
                let (m, v) = (want_mean[k], want_var[k]);
                let tol = 1e-6 * (m.abs() + v.sqrt());
                assert!(
                    (mean[k] - m).abs() <= tol,
                    "{what}: mean {} against {m}",
                    mean[k]
                );
                assert!(
                    (var[k] - v).abs() <= 1e-6 * v,
                    "{what}: variance {} against {v}",
                    var[k]
                );
            }
        }
    }
}
