//! Keras's inverted dropout, with its mask made in parallel and applied by
//! one custom op on the CPU.
//!
//! The mask comes from the model's seeded generator, so that a run repeats
//! exactly: one number drawn from it seeds a generator per fixed chunk of the
//! tensor, which lets the chunks be filled on all threads and still gives the
//! same mask whatever the thread count. On the CPU, `x * mask` and its
//! gradient `dy * mask` are each one parallel pass, with no mask tensor in
//! the graph; other devices multiply by the mask as a tensor.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::sync::Arc;

/// Values per generator: enough to make seeding one negligible.
const CHUNK: usize = 1 << 14;

/// Zeroes each value of `x` with probability `rate` and scales the rest by
/// `1 / (1 - rate)`, drawing the mask from `rng`.
pub fn dropout(x: &Tensor, rate: f64, rng: &mut StdRng) -> Result<Tensor> {
    let mask = Arc::new(draw_mask(x.elem_count(), rate, rng)?);
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Dropout { mask })
    } else {
        let mask = Tensor::from_slice(&mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// A mask of `n` values for `dropout`, drawn from `rng`: each value
/// `1 / (1 - rate)` with probability `1 - rate`, else 0.
pub(crate) fn draw_mask(n: usize, rate: f64, rng: &mut StdRng) -> Result<Vec<f32>> {
    if !(0.0..1.0).contains(&rate) {
        bail!("dropout rate must be in [0, 1), got {rate}");
    }
    Ok(mask(n, rate, rng.random()))
}

/// `x * mask`, element-wise, in parallel.
pub(crate) fn apply_mask(x: &[f32], mask: &[f32]) -> Vec<f32> {
    x.par_iter().zip(mask).map(|(&x, &m)| x * m).collect()
}

/// `n` values, each `1 / (1 - rate)` with probability `1 - rate`, else 0.
fn mask(n: usize, rate: f64, seed: u64) -> Vec<f32> {
    let keep = (1.0 / (1.0 - rate)) as f32;
    // A value survives when a uniform u32 is at least rate·2³².
    let threshold = (rate * 4_294_967_296.0) as u64;
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for m in chunk {
                *m = if rng.random::<u32>() as u64 >= threshold {
                    keep
                } else {
                    0.0
                };
            }
        });
    mask
}

/// `x * mask` on the CPU; its gradient is `dy * mask`.
struct Dropout {
    mask: Arc<Vec<f32>>,
}

impl Dropout {
    fn apply(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("dropout: input must be contiguous")
        };
        let x = &s.as_slice::<f32>()?[start..end];
        if x.len() != self.mask.len() {
            bail!(
                "dropout: mask of {} values for a tensor of {}",
                self.mask.len(),
                x.len()
            );
        }
        Ok((
            CpuStorage::F32(apply_mask(x, &self.mask)),
            l.shape().clone(),
        ))
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.apply(s, l)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        Ok(Some(dy.apply_op1_no_bwd(&Dropout {
            mask: self.mask.clone(),
        })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_the_expected_share_and_scale() {
        let m = mask(200_000, 0.25, 7);
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / m.len() as f64;
        assert!((kept - 0.75).abs() < 0.005, "kept {kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        assert_eq!(m, mask(200_000, 0.25, 7), "same seed, same mask");
        assert_ne!(m, mask(200_000, 0.25, 8));
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
