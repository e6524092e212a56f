//! Keras's `MaxPooling2D(pool_size)`: stride = pool, valid padding; the
//! gradient goes to each window's first maximum ([`crate::kernels::max_pool`]).

use super::{image_input, pooled_shape, CpuGrad, CpuOut, LayerKind, Run, Shape, StepShape};
use crate::kernels::{self, max_pool};
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPooling2D {
    pub pool_size: usize,
}

/// `MaxPooling2D(pool_size=(p, p))`
pub fn max_pooling2d(pool_size: usize) -> MaxPooling2D {
    MaxPooling2D { pool_size }
}

impl LayerKind for MaxPooling2D {
    fn class_name(&self) -> &'static str {
        "MaxPooling2D"
    }
    fn base_name(&self) -> &'static str {
        "max_pooling2d"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        pooled_shape("MaxPooling2D", input, self.pool_size)
    }
    fn forward(&self, x: &Tensor, _: &[Tensor], _: &StepShape, _: &mut Run) -> Result<Tensor> {
        Ok(kernels::max_pool2d(x, self.pool_size)?)
    }
    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        let (_, h, w) = image_input("MaxPooling2D", s.input)?;
        Ok(CpuOut::new(max_pool::pool_fwd(x, h, w, self.pool_size)))
    }
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let (_, h, w) = image_input("MaxPooling2D", g.step.input)?;
        Ok((max_pool::pool_bwd(g.x, &g.dy, h, w, self.pool_size), vec![]))
    }
}
