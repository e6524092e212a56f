//! Keras's inverted `Dropout(rate)`: active while training only; the mask is
//! a hash of a seed drawn from the model's generator ([`crate::kernels::dropout`]).

use super::{kept, CpuGrad, CpuOut, Layer, LayerKind, Run, Shape, StepShape};
use crate::kernels::{self, dropout::Mask};
use anyhow::{ensure, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    pub rate: f64,
}

/// `Dropout(rate)`
pub fn dropout(rate: f64) -> Layer {
    Dropout { rate }.into()
}

impl Dropout {
    fn active(&self, run: &Run) -> bool {
        run.training && self.rate > 0.0
    }
}

impl LayerKind for Dropout {
    fn class_name(&self) -> &'static str {
        "Dropout"
    }
    fn base_name(&self) -> &'static str {
        "dropout"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        ensure!(
            (0.0..1.0).contains(&self.rate),
            "Dropout rate must be in [0, 1), got {}",
            self.rate
        );
        Ok(input)
    }
    fn forward(&self, x: &Tensor, _: &[Tensor], _: &StepShape, run: &mut Run) -> Result<Tensor> {
        match self.active(run) {
            true => Ok(kernels::dropout(x, self.rate, run.rng)?),
            false => Ok(x.clone()),
        }
    }
    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], _: &StepShape, run: &mut Run) -> Result<CpuOut> {
        if !self.active(run) {
            return Ok(CpuOut::unchanged());
        }
        let mask = Mask::draw(self.rate, run.rng)?;
        Ok(CpuOut {
            y: Some(mask.apply(x)),
            kept: Some(Box::new(mask)),
            moments: None,
        })
    }
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let mut dy = g.dy;
        // No mask kept: the forward was inactive (rate 0), the gradient passes.
        if g.kept.is_some() {
            kept::<Mask>(g.kept, "Dropout")?.apply_in_place(&mut dy);
        }
        Ok((dy, vec![]))
    }
}
