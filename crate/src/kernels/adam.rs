//! Keras's Adam update on the CPU as three in-place passes over each
//! variable, instead of a dozen tensor ops that each allocate a result.
//!
//! `m = b1·m + (1-b1)·g`, `v = b2·v + (1-b2)·g²`, `w -= alpha · m / (sqrt(v) + eps)`.

use candle_core::{bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// Values a rayon task takes at least.
const MIN_LEN: usize = 1 << 14;

/// Whether [`adam_update`] runs for these tensors (f32 on the CPU).
pub fn adam_runs_on(w: &Tensor) -> bool {
    w.device().is_cpu() && w.dtype() == DType::F32
}

/// The coefficients of one Adam update.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub beta_1: f64,
    pub beta_2: f64,
    /// The learning rate with both bias corrections.
    pub alpha: f64,
    pub epsilon: f64,
}

/// Updates the moments `m` and `v` and the weights `w` in place from the
/// gradient `g`.
pub fn adam_update(w: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, c: AdamStep) -> Result<()> {
    let g = g.contiguous()?;
    m.inplace_op2(
        &g,
        &MovingAverage {
            beta: c.beta_1 as f32,
            square: false,
        },
    )?;
    v.inplace_op2(
        &g,
        &MovingAverage {
            beta: c.beta_2 as f32,
            square: true,
        },
    )?;
    w.inplace_op3(
        m,
        v,
        &Step {
            alpha: c.alpha as f32,
            epsilon: c.epsilon as f32,
        },
    )
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("{name}: expected contiguous f32 data"),
    }
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, name: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => bail!("{name}: expected contiguous f32 data"),
    }
}

/// `a = beta·a + (1-beta)·g` (or `g²`).
struct MovingAverage {
    beta: f32,
    square: bool,
}

impl InplaceOp2 for MovingAverage {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let g = slice(s2, l2, self.name())?;
        let a = slice_mut(s1, l1, self.name())?;
        if a.len() != g.len() {
            bail!(
                "{}: {} moments for {} gradients",
                self.name(),
                a.len(),
                g.len()
            );
        }
        let (beta, rest, square) = (self.beta, 1.0 - self.beta, self.square);
        a.par_iter_mut()
            .zip(g)
            .with_min_len(MIN_LEN)
            .for_each(|(a, &g)| {
                let g = if square { g * g } else { g };
                *a = beta * *a + rest * g;
            });
        Ok(())
    }
}

/// `w -= alpha · m / (sqrt(v) + eps)`.
struct Step {
    alpha: f32,
    epsilon: f32,
}

impl InplaceOp3 for Step {
    fn name(&self) -> &'static str {
        "adam-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (m, v) = (slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let w = slice_mut(s1, l1, self.name())?;
        if w.len() != m.len() || w.len() != v.len() {
            bail!(
                "{}: {} weights, {} and {} moments",
                self.name(),
                w.len(),
                m.len(),
                v.len()
            );
        }
        let (alpha, eps) = (self.alpha, self.epsilon);
        w.par_iter_mut()
            .zip(m)
            .zip(v)
            .with_min_len(MIN_LEN)
            .for_each(|((w, &m), &v)| {
                *w -= alpha * m / (v.sqrt() + eps);
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three updates in place against the same formula as tensor ops (the
    /// path other devices take), on a non-contiguous gradient.
    #[test]
    fn matches_the_tensor_formula() {
        let dev = Device::Cpu;
        let w0 = Tensor::randn(0f32, 1.0, (70, 300), &dev).unwrap();
        let (w, m, v) = (
            w0.copy().unwrap(),
            w0.zeros_like().unwrap(),
            w0.zeros_like().unwrap(),
        );
        let (mut wr, mut mr, mut vr) = (
            w0.copy().unwrap(),
            w0.zeros_like().unwrap(),
            w0.zeros_like().unwrap(),
        );
        let (b1, b2, eps) = (0.9, 0.999, 1e-7);
        for t in 1..=3 {
            let g = Tensor::randn(0f32, 1.0, (300, 70), &dev)
                .unwrap()
                .t()
                .unwrap();
            let alpha = 1e-3 * (1.0 - f64::powi(b2, t)).sqrt() / (1.0 - f64::powi(b1, t));
            adam_update(
                &w,
                &m,
                &v,
                &g,
                AdamStep {
                    beta_1: b1,
                    beta_2: b2,
                    alpha,
                    epsilon: eps,
                },
            )
            .unwrap();
            mr = ((&mr * b1).unwrap() + (&g * (1.0 - b1)).unwrap()).unwrap();
            vr = ((&vr * b2).unwrap() + (g.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap();
            let update = (&mr / (vr.sqrt().unwrap() + eps).unwrap()).unwrap();
            wr = (&wr - (update * alpha).unwrap()).unwrap();
        }
        for (a, b) in [(&w, &wr), (&m, &mr), (&v, &vr)] {
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "largest difference {diff}");
        }
        assert!(
            (&w - &w0)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 1e-4,
            "w moved"
        );
    }
}
