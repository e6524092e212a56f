//! Keras's `Flatten`: an image `(C, H, W)` as one vector, in that order.

use super::{CpuGrad, CpuOut, Layer, LayerKind, Run, Shape, StepShape};
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flatten {}

/// `Flatten()`
pub fn flatten() -> Layer {
    Flatten {}.into()
}

impl LayerKind for Flatten {
    fn class_name(&self) -> &'static str {
        "Flatten"
    }
    fn base_name(&self) -> &'static str {
        "flatten"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        Ok(Shape::Flat(input.size()))
    }
    fn forward(&self, x: &Tensor, _: &[Tensor], _: &StepShape, _: &mut Run) -> Result<Tensor> {
        Ok(x.flatten_from(1)?)
    }
    /// The buffer is already `[N, C·H·W]`.
    fn cpu_forward(&self, _: &[f32], _: &[&[f32]], _: &StepShape, _: &mut Run) -> Result<CpuOut> {
        Ok(CpuOut::unchanged())
    }
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        Ok((g.dy, vec![]))
    }
}
