//! Activations: the functions (given inline to Conv2D and Dense, or as a
//! layer of their own) and Keras's `Activation` layer.

use super::{CpuGrad, CpuOut, Layer, LayerKind, Run, Shape, StepShape};
use crate::kernels::simd::Float;
use anyhow::Result;
use candle_core::{Tensor, D};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// An activation function, by its Keras name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Linear,
    Relu,
    /// over the last axis
    Softmax,
}

/// Keras's `Activation(name)` layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationLayer {
    pub activation: Activation,
}

/// `Activation('relu')`
pub fn relu() -> Layer {
    ActivationLayer {
        activation: Activation::Relu,
    }
    .into()
}

/// `Activation('softmax')`
pub fn softmax() -> Layer {
    ActivationLayer {
        activation: Activation::Softmax,
    }
    .into()
}

impl Activation {
    /// The function on a tensor, in candle ops.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Linear => x.clone(),
            Activation::Relu => x.relu()?,
            Activation::Softmax => candle_nn::ops::softmax(x, D::Minus1)?,
        })
    }
}

/// Length of the last axis: what a softmax normalizes over.
fn last_axis(shape: Shape) -> usize {
    match shape {
        Shape::Image(_, _, w) => w,
        Shape::Flat(n) => n,
    }
}

impl LayerKind for ActivationLayer {
    fn class_name(&self) -> &'static str {
        "Activation"
    }
    fn base_name(&self) -> &'static str {
        "activation"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        Ok(input)
    }
    fn forward(&self, x: &Tensor, _: &[Tensor], _: &StepShape, _: &mut Run) -> Result<Tensor> {
        self.activation.forward(x)
    }
    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        Ok(match self.activation {
            Activation::Linear => CpuOut::unchanged(),
            Activation::Relu => CpuOut::new(x.par_iter().map(|&v| f32::relu(v)).collect()),
            Activation::Softmax => CpuOut::new(softmax_rows(x, last_axis(s.input))),
        })
    }
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let mut d = g.dy;
        match self.activation {
            Activation::Linear => {}
            Activation::Relu => relu_grad(&mut d, g.y),
            Activation::Softmax => softmax_grad(&mut d, g.y, last_axis(g.step.input)),
        }
        Ok((d, vec![]))
    }
}

/// `d` where the ReLU's output `y` is positive, else 0, in place: the
/// convolutions' own ReLU gradient ([`Float::relu_grad`]), so one rule holds.
pub(crate) fn relu_grad(d: &mut [f32], y: &[f32]) {
    d.par_iter_mut()
        .zip(y)
        .for_each(|(d, &y)| *d = f32::relu_grad(*d, y));
}

/// Softmax over each run of `len` values.
pub(crate) fn softmax_rows(x: &[f32], len: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    for row in y.chunks_exact_mut(len) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
    y
}

/// The softmax's backward in place: `dx = y ⊙ (dy − Σ dy ⊙ y)` for each run.
fn softmax_grad(d: &mut [f32], y: &[f32], len: usize) {
    for (d, y) in d.chunks_exact_mut(len).zip(y.chunks_exact(len)) {
        let dot: f32 = d.iter().zip(y).map(|(d, y)| d * y).sum();
        d.iter_mut().zip(y).for_each(|(d, &y)| *d = y * (*d - dot));
    }
}
