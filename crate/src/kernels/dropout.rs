//! Keras's inverted dropout, with a mask that is a function of the index.
//!
//! Each draw takes one number from the model's seeded generator; whether
//! value `i` survives is then a hash of that seed and `i` (splitmix64's
//! finalizer, one hash for two values). The mask is never stored: the
//! forward and the backward each recompute it as they go, in parallel
//! chunks, and it is the same whatever the thread count, so a run repeats
//! exactly. On the CPU, `x * mask` and its gradient `dy * mask` are each one
//! parallel pass; other devices multiply by the mask as a tensor.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use rayon::prelude::*;

/// Values a rayon task takes (even, so that no hash is split between tasks).
const CHUNK: usize = 1 << 14;

/// Planes a rayon task takes at least (SpatialDropout2D).
const PLANES_PER_TASK: usize = 64;

/// Zeroes each value of `x` with probability `rate` and scales the rest by
/// `1 / (1 - rate)`, drawing the mask from `rng`.
pub fn dropout(x: &Tensor, rate: f64, rng: &mut StdRng) -> Result<Tensor> {
    let mask = Mask::draw(rate, rng)?;
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Dropout { mask })
    } else {
        let values = mask.values(x.elem_count());
        let mask = Tensor::from_vec(values, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// SpatialDropout2D: zeroes whole planes of `x` `[N, C, H, W]` (every
/// value of a sample's channel) with probability `rate` and scales the
/// rest by `1 / (1 - rate)`, one mask value a plane drawn from `rng`. On
/// every device a product with the mask `[N, C, 1, 1]`, which autograd
/// differentiates.
pub fn spatial_dropout(x: &Tensor, rate: f64, rng: &mut StdRng) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let mask = Mask::draw(rate, rng)?.values(n * c);
    let mask = Tensor::from_vec(mask, (n, c, 1, 1), x.device())?.to_dtype(x.dtype())?;
    x.broadcast_mul(&mask)
}

/// One dropout draw: value `i` is kept (and scaled) when the hash of
/// `(seed, i)` clears the threshold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mask {
    seed: u64,
    /// A value survives when its 32 hash bits are at least `rate · 2³²`.
    threshold: u64,
    /// `1 / (1 - rate)`
    scale: f32,
}

impl Mask {
    /// A new mask for `rate`, seeded from `rng`.
    pub(crate) fn draw(rate: f64, rng: &mut StdRng) -> Result<Mask> {
        if !(0.0..1.0).contains(&rate) {
            bail!("dropout rate must be in [0, 1), got {rate}");
        }
        Ok(Mask {
            seed: rng.random(),
            threshold: (rate * 4_294_967_296.0) as u64,
            scale: (1.0 / (1.0 - rate)) as f32,
        })
    }

    /// `x * mask`, in parallel.
    pub(crate) fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mask = *self;
        let mut y = Vec::with_capacity(x.len());
        y.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (y, x))| mask.apply_from(c * CHUNK, y.write_copy_of_slice(x)));
        // SAFETY: the chunks cover all `x.len()` values, each written above.
        unsafe { y.set_len(x.len()) };
        y
    }

    /// `x *= mask`, in parallel.
    pub(crate) fn apply_in_place(&self, x: &mut [f32]) {
        let mask = *self;
        x.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, x)| mask.apply_from(c * CHUNK, x));
    }

    /// `x *= mask` for the run of values from index `start` (even).
    fn apply_from(self, start: usize, x: &mut [f32]) {
        let first_pair = (start / 2) as u64;
        // A product, not a branch (which would mispredict at random).
        let factor = |half: u64| self.scale * (half >= self.threshold) as u8 as f32;
        let bits = |p: usize| mix(self.seed.wrapping_add(first_pair + p as u64));
        let whole_pairs = x.len() / 2;
        let mut pairs = x.chunks_exact_mut(2);
        for (p, pair) in pairs.by_ref().enumerate() {
            let b = bits(p);
            pair[0] *= factor(b & 0xFFFF_FFFF);
            pair[1] *= factor(b >> 32);
        }
        if let [last] = pairs.into_remainder() {
            *last *= factor(bits(whole_pairs) & 0xFFFF_FFFF);
        }
    }

    /// `x *= mask` with one mask value for each run of `plane` values
    /// (SpatialDropout2D's planes), the same as [`spatial_dropout`] draws.
    pub(crate) fn apply_planes_in_place(&self, x: &mut [f32], plane: usize) {
        let mask = self.values(x.len() / plane); // one a plane, [N·C]
        x.par_chunks_exact_mut(plane)
            .zip(mask.par_iter())
            .with_min_len(PLANES_PER_TASK)
            .for_each(|(p, &m)| p.iter_mut().for_each(|v| *v *= m));
    }

    /// The first `n` values of the mask: `1 / (1 - rate)` or 0.
    pub(crate) fn values(&self, n: usize) -> Vec<f32> {
        let mut m = vec![1f32; n];
        self.apply_in_place(&mut m);
        m
    }
}

/// splitmix64's finalizer: 64 well-mixed bits from a counter.
#[inline(always)]
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `x * mask` on the CPU; its gradient is `dy * mask`.
struct Dropout {
    mask: Mask,
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("dropout: input must be contiguous")
        };
        let x = &s.as_slice::<f32>()?[start..end];
        Ok((CpuStorage::F32(self.mask.apply(x)), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        Ok(Some(dy.apply_op1_no_bwd(&Dropout { mask: self.mask })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn mask(n: usize, rate: f64, seed: u64) -> Vec<f32> {
        Mask::draw(rate, &mut StdRng::seed_from_u64(seed))
            .unwrap()
            .values(n)
    }

    #[test]
    fn mask_keeps_the_expected_share_and_scale() {
        let m = mask(200_001, 0.25, 7);
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / m.len() as f64;
        assert!((kept - 0.75).abs() < 0.005, "kept {kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        assert_eq!(m, mask(200_001, 0.25, 7), "same seed, same mask");
        assert_ne!(m, mask(200_001, 0.25, 8));
        // Neighbours are independent: both halves of each hash, and runs
        // across chunk boundaries, keep pairs at 0.75², not more or less.
        let both = m
            .chunks_exact(2)
            .filter(|p| p[0] != 0.0 && p[1] != 0.0)
            .count() as f64
            / (m.len() / 2) as f64;
        assert!((both - 0.5625).abs() < 0.007, "pairs kept {both}");
        let odd = m[1..]
            .chunks_exact(2)
            .filter(|p| p[0] != 0.0 && p[1] != 0.0)
            .count() as f64
            / (m.len() / 2) as f64;
        assert!((odd - 0.5625).abs() < 0.007, "odd pairs kept {odd}");
        // A prefix of a longer mask is the shorter mask.
        assert_eq!(mask(1000, 0.25, 7), m[..1000]);
    }

    /// With x = 1 the output is the mask, and the gradient of sum(y) must be
    /// the mask too; the tensor path (f64 here) draws the same mask.
    #[test]
    fn gradient_is_the_mask_and_both_paths_agree() {
        let x =
            candle_core::Var::ones((4, 3, 70, 70), DType::F32, &candle_core::Device::Cpu).unwrap();
        let y = dropout(x.as_tensor(), 0.5, &mut StdRng::seed_from_u64(3)).unwrap();
        let grad = y.sum_all().unwrap().backward().unwrap();
        let g = grad.get(x.as_tensor()).unwrap();
        assert_eq!(
            g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let y64 = dropout(
            &x.as_tensor().to_dtype(DType::F64).unwrap(),
            0.5,
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap();
        assert_eq!(
            y64.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert!(dropout(x.as_tensor(), 1.0, &mut StdRng::seed_from_u64(3)).is_err());
    }
}
