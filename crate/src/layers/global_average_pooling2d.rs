//! Keras's `GlobalAveragePooling2D(keepdims=False)`: the mean of each
//! channel's plane, `(C, H, W)` to `(C,)` (or `(C, 1, 1)` with keepdims).

use super::{image_input, CpuGrad, CpuOut, LayerKind, Run, Shape, StepShape};
use crate::kernels::max_pool::PLANES_PER_TASK;
use anyhow::Result;
use candle_core::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalAveragePooling2D {
    #[serde(default)]
    pub keepdims: bool,
}

/// `GlobalAveragePooling2D()`; `.keepdims()` for `keepdims=True`.
pub fn global_average_pooling2d() -> GlobalAveragePooling2D {
    GlobalAveragePooling2D::default()
}

impl GlobalAveragePooling2D {
    /// `keepdims=True`: the output stays an image, `(C, 1, 1)`.
    pub fn keepdims(self) -> Self {
        GlobalAveragePooling2D { keepdims: true }
    }
}

/// The output of a global pooling over `c` channels.
pub(crate) fn global_shape(c: usize, keepdims: bool) -> Shape {
    match keepdims {
        true => Shape::Image(c, 1, 1),
        false => Shape::Flat(c),
    }
}

impl LayerKind for GlobalAveragePooling2D {
    fn class_name(&self) -> &'static str {
        "GlobalAveragePooling2D"
    }
    fn base_name(&self) -> &'static str {
        "global_average_pooling2d"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        let (c, _, _) = image_input("GlobalAveragePooling2D", input)?;
        Ok(global_shape(c, self.keepdims))
    }
    fn forward(&self, x: &Tensor, _: &[Tensor], s: &StepShape, _: &mut Run) -> Result<Tensor> {
        let y = x.flatten_from(2)?.mean(2)?; // [N, C]
        Ok(y.reshape([&[s.n][..], &s.output.dims()].concat())?)
    }
    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        let (_, h, w) = image_input("GlobalAveragePooling2D", s.input)?;
        let inv = 1.0 / (h * w) as f32;
        let planes = x.par_chunks_exact(h * w).with_min_len(PLANES_PER_TASK);
        Ok(CpuOut::new(planes.map(|p| p.iter().sum::<f32>() * inv).collect()))
    }
    /// Every value of a plane gets the plane's gradient over `h · w`.
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let (_, h, w) = image_input("GlobalAveragePooling2D", g.step.input)?;
        let inv = 1.0 / (h * w) as f32;
        let mut dx = vec![0f32; g.x.len()];
        dx.par_chunks_exact_mut(h * w)
            .zip(g.dy.par_iter())
            .with_min_len(PLANES_PER_TASK)
            .for_each(|(plane, &d)| plane.fill(d * inv));
        Ok((dx, vec![]))
    }
}

#[cfg(test)]
mod tests {
    use crate::layers::*;
    use crate::train::step::check::{assert_inference_matches_portable, assert_matches_autograd};

    /// Both global poolings after a convolution, into Dense directly or,
    /// with keepdims, through Flatten; odd and even sizes, batches of 1
    /// and more.
    #[test]
    fn cpu_step_matches_autograd_and_inference_the_portable_path() {
        let model = |pool: Layer, flat: bool| -> Vec<Layer> {
            let mut l = vec![conv2d(4, 3).same().into(), relu(), pool];
            if flat {
                l.push(flatten());
            }
            l.extend([dense(3).into(), softmax()]);
            l
        };
        for (side, n) in [(7, 1), (8, 4)] {
            for (pool, flat) in [
                (Layer::from(global_average_pooling2d()), false),
                (global_average_pooling2d().keepdims().into(), true),
                (global_max_pooling2d().into(), false),
                (global_max_pooling2d().keepdims().into(), true),
            ] {
                assert_matches_autograd(&model(pool.clone(), flat), side, n);
                assert_inference_matches_portable(&model(pool, flat), side, n);
            }
        }
    }

    #[test]
    fn global_poolings_give_one_value_a_channel() {
        let input = Shape::Image(5, 7, 6);
        let pools: [&dyn LayerKind; 2] = [&global_average_pooling2d(), &global_max_pooling2d()];
        for pool in pools {
            assert_eq!(pool.output_shape(input).unwrap(), Shape::Flat(5));
        }
        let pools: [&dyn LayerKind; 2] = [
            &global_average_pooling2d().keepdims(),
            &global_max_pooling2d().keepdims(),
        ];
        for pool in pools {
            assert_eq!(pool.output_shape(input).unwrap(), Shape::Image(5, 1, 1));
        }
    }
}
