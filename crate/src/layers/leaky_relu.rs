//! Keras's `LeakyReLU(negative_slope=0.3)` layer: the `leaky_relu`
//! activation ([`Activation::LeakyRelu`]) with the layer's own default slope.

use super::{Activation, CpuGrad, CpuOut, Layer, LayerKind, Run, Shape, StepShape};
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakyReLU {
    #[serde(default = "default_slope")]
    pub negative_slope: f64,
}

/// Keras's `LeakyReLU` layer's default (the `leaky_relu` function's is 0.2).
fn default_slope() -> f64 {
    0.3
}

impl Default for LeakyReLU {
    fn default() -> Self {
        LeakyReLU {
            negative_slope: default_slope(),
        }
    }
}

/// `LeakyReLU(negative_slope=...)`; `LeakyReLU::default()` has Keras's 0.3.
pub fn leaky_relu(negative_slope: f64) -> Layer {
    LeakyReLU { negative_slope }.into()
}

impl LeakyReLU {
    fn function(&self) -> Activation {
        Activation::LeakyRelu {
            negative_slope: self.negative_slope,
        }
    }
}

impl LayerKind for LeakyReLU {
    fn class_name(&self) -> &'static str {
        "LeakyReLU"
    }
    /// Keras's snake case of the class name.
    fn base_name(&self) -> &'static str {
        "leaky_re_lu"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.function().check()?;
        Ok(input)
    }
    fn forward(&self, x: &Tensor, _: &[Tensor], _: &StepShape, _: &mut Run) -> Result<Tensor> {
        self.function().forward(x)
    }
    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], _: &StepShape, _: &mut Run) -> Result<CpuOut> {
        // elementwise: the last axis (a softmax's) plays no part
        Ok(CpuOut::new(self.function().cpu_forward(x, 0)))
    }
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        Ok((self.function().cpu_backward(g.dy, g.x, g.y, 0), vec![]))
    }
}
