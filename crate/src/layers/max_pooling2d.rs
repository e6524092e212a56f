//! Keras's `MaxPooling2D(pool_size, strides=None, padding="valid")`: the
//! maximum of each window, the padding of "same" ignored; the gradient goes
//! to each window's first maximum ([`crate::kernels::max_pool`]), added up
//! where windows overlap.

use super::{pool_geom, CpuGrad, CpuOut, LayerKind, Padding, Run, Shape, Size2, StepShape};
use crate::kernels::max_pool::{self, PoolGeom};
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPooling2D {
    pub pool_size: Size2,
    /// `None`: the pool size, as in Keras.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strides: Option<Size2>,
    #[serde(default, skip_serializing_if = "super::is_valid")]
    pub padding: Padding,
}

/// `MaxPooling2D(pool_size)`: `2` or `(2, 3)`; strides = pool, valid
/// padding. Keras's keyword arguments are methods:
/// `max_pooling2d(3).strides(2).same()`.
pub fn max_pooling2d(pool_size: impl Into<Size2>) -> MaxPooling2D {
    MaxPooling2D {
        pool_size: pool_size.into(),
        strides: None,
        padding: Padding::Valid,
    }
}

impl MaxPooling2D {
    /// `strides=s`: `2` or `(1, 2)`
    pub fn strides(self, strides: impl Into<Size2>) -> Self {
        MaxPooling2D {
            strides: Some(strides.into()),
            ..self
        }
    }
    /// `padding=...`
    pub fn padding(self, padding: Padding) -> Self {
        MaxPooling2D { padding, ..self }
    }
    /// `padding='same'`
    pub fn same(self) -> Self {
        self.padding(Padding::Same)
    }
    /// Only 2×2 windows at stride 2, unpadded: what a convolution's kernel
    /// can pool inside itself.
    pub fn is_2x2(&self) -> bool {
        self.pool_size == Size2::square(2)
            && self.strides.unwrap_or(self.pool_size) == Size2::square(2)
            && self.padding == Padding::Valid
    }
    fn geom(&self, input: Shape) -> Result<(usize, PoolGeom)> {
        pool_geom("MaxPooling2D", input, self.pool_size, self.strides, self.padding)
    }
}

impl LayerKind for MaxPooling2D {
    fn class_name(&self) -> &'static str {
        "MaxPooling2D"
    }
    fn base_name(&self) -> &'static str {
        "max_pooling2d"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        let (c, g) = self.geom(input)?;
        Ok(Shape::Image(c, g.ho, g.wo))
    }
    /// Candle ops on every device, also on the CPU (f64 there is the
    /// gradient checks' reference, independent of the CPU kernels).
    fn forward(&self, x: &Tensor, _: &[Tensor], s: &StepShape, _: &mut Run) -> Result<Tensor> {
        Ok(max_pool::max_pool2d_portable_with(x, self.geom(s.input)?.1)?)
    }
    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        Ok(CpuOut::new(max_pool::pool_fwd(x, &self.geom(s.input)?.1)))
    }
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let geom = self.geom(g.step.input)?.1;
        Ok((max_pool::pool_bwd(g.x, &g.dy, &geom), vec![]))
    }
}

#[cfg(test)]
mod tests {
    use crate::layers::*;
    use crate::train::step::check::{assert_inference_matches_portable, assert_matches_autograd};

    /// A pooling between two convolutions, so that its gradient is checked
    /// (the first layer with parameters wants no input gradient); no ReLU
    /// before it, so that a 2×2 pooling is not fused into the convolution.
    fn around(pool: MaxPooling2D) -> Vec<Layer> {
        vec![
            conv2d(4, 3).same().into(),
            pool.into(),
            conv2d(3, 2).into(),
            flatten(),
            dense(3).into(),
            softmax(),
        ]
    }

    /// Odd and even sizes, strides 1, 2 and 3 (windows that overlap, whose
    /// gradients add, that touch, that leave gaps), same and valid,
    /// rectangular pools, batches of 1 and more; the f64 reference is the
    /// portable path (candle ops) through autograd.
    #[test]
    fn cpu_step_matches_autograd_and_inference_the_portable_path() {
        for (pool, side, n) in [
            (max_pooling2d(2), 13, 4),
            (max_pooling2d(2), 8, 1),
            (max_pooling2d(2).same(), 9, 2),
            (max_pooling2d(3).strides(2), 12, 3),
            (max_pooling2d(3).strides(2).same(), 11, 2),
            (max_pooling2d(2).strides(3), 10, 1),
            (max_pooling2d(3).strides(1).same(), 6, 2),
            (max_pooling2d((2, 3)).strides((1, 2)).same(), 7, 3),
        ] {
            assert_matches_autograd(&around(pool.clone()), side, n);
            assert_inference_matches_portable(&around(pool), side, n);
        }
    }

    /// After Conv2D + ReLU on the convolution's Winograd path (which can
    /// pool in its kernel), a 2×2 pooling that is not the plain one (stride
    /// 2, valid) is a step of its own.
    #[test]
    fn pools_after_a_relu_are_fused_only_when_they_can_be() {
        for (pool, side) in [
            (max_pooling2d(2), 9),
            (max_pooling2d(2).same(), 9),
            (max_pooling2d(2).strides(1), 8),
            (max_pooling2d((2, 1)).strides(2), 8),
        ] {
            let mut layers = around(pool);
            layers.splice(0..1, [conv2d(16, 3).same().into(), conv2d(16, 3).same().into(), relu()]);
            assert_matches_autograd(&layers, side, 2);
            assert_inference_matches_portable(&layers, side, 2);
        }
    }

    /// The convolution pools inside its kernel only what it pools the same:
    /// 2×2 windows at stride 2, valid.
    #[test]
    fn only_plain_2x2_pooling_fuses_into_the_convolution() {
        assert!(max_pooling2d(2).is_2x2());
        assert!(max_pooling2d(2).strides(2).is_2x2());
        assert!(!max_pooling2d(2).same().is_2x2());
        assert!(!max_pooling2d(2).strides(1).is_2x2());
        assert!(!max_pooling2d((2, 1)).strides(2).is_2x2());
        assert!(!max_pooling2d(3).strides(2).is_2x2());
    }
}
