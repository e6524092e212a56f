//! Keras's `Dense`: `y = x · kernel + bias` on a flat input (no bias with
//! `use_bias=False`), with a ReLU fused into it where the plan says; any
//! other inline activation runs after it as a step of its own.

use super::{
    Activation, CpuGrad, CpuOut, Fused, Init, LayerKind, ParamSpec, Run, Shape, StepShape,
};
use crate::kernels::matmul::{column_sums, matmul, Mat};
use crate::kernels::simd::Float;
use anyhow::{bail, ensure, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dense {
    pub units: usize,
    #[serde(default)]
    pub activation: Activation,
    /// Keras's default. Written only when false, so that a model with a
    /// bias writes the JSON earlier versions wrote (and read, without it).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub use_bias: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// `Dense(units)`, no activation, a bias. Keras's keyword arguments are
/// methods: `dense(10).activation(Activation::Tanh).use_bias(false)`.
pub fn dense(units: usize) -> Dense {
    Dense {
        units,
        activation: Activation::Linear,
        use_bias: true,
    }
}

impl Dense {
    /// `activation=...`
    pub fn activation(self, activation: Activation) -> Dense {
        Dense { activation, ..self }
    }
    /// `use_bias=...`
    pub fn use_bias(self, use_bias: bool) -> Dense {
        Dense { use_bias, ..self }
    }
}

impl LayerKind for Dense {
    fn class_name(&self) -> &'static str {
        "Dense"
    }
    fn base_name(&self) -> &'static str {
        "dense"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        if let Shape::Image(..) = input {
            bail!("Dense needs a flat input, got an image {input}: add a Flatten layer before it")
        }
        ensure!(self.units > 0, "Dense needs units above 0");
        Ok(Shape::Flat(self.units))
    }
    /// Kernel `[in, out]`, as Keras keeps it, then the bias if it has one.
    fn params(&self, input: Shape) -> Vec<ParamSpec> {
        let (inputs, units) = (input.size(), self.units);
        let mut specs = vec![ParamSpec {
                name: "kernel",
                shape: vec![inputs, units],
                init: Init::GlorotUniform {
                    fan_in: inputs,
                    fan_out: units,
                },
            trainable: true,
        }];
        if self.use_bias {
            specs.push(ParamSpec {
                name: "bias",
                shape: vec![units],
                init: Init::Zeros,
                trainable: true,
            });
        }
        specs
    }
    fn activation(&self) -> Activation {
        self.activation
    }
    fn fusable(&self, _: Shape) -> Fused {
        Fused {
            relu: true,
            ..Fused::default()
        }
    }

    fn forward(&self, x: &Tensor, p: &[Tensor], s: &StepShape, _: &mut Run) -> Result<Tensor> {
        let mut y = x.matmul(&p[0])?; // [N, units]
        if let Some(bias) = p.get(1) {
            y = y.broadcast_add(bias)?;
        }
        Ok(if s.fused.relu { y.relu()? } else { y })
    }

    fn cpu_forward(&self, x: &[f32], p: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        let (n, inputs, units) = (s.n, s.input.size(), self.units);
        let mut y = matmul(Mat::new(x, n, inputs), Mat::new(p[0], inputs, units)); // [N, units]
        if let Some(bias) = p.get(1) {
            for row in y.chunks_exact_mut(units) {
                row.iter_mut().zip(*bias).for_each(|(v, &b)| *v += b);
            }
        }
        if s.fused.relu {
            y.iter_mut().for_each(|v| *v = f32::relu(*v));
        }
        Ok(CpuOut::new(y))
    }

    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let mut dy = g.dy;
        if g.step.fused.relu {
            super::activation::relu_grad(&mut dy, g.y);
        }
        let (n, inputs, units) = (g.step.n, g.step.input.size(), self.units);
        let dk = matmul(Mat::new(g.x, n, inputs).t(), Mat::new(&dy, n, units)); // [in, units]
        let mut grads = vec![dk];
        if self.use_bias {
            grads.push(column_sums(&dy, units)); // [units]
        }
        let dx = match g.wants_dx {
            true => matmul(Mat::new(&dy, n, units), Mat::new(g.params[0], inputs, units).t()),
            false => Vec::new(),
        };
        Ok((dx, grads))
    }
}
