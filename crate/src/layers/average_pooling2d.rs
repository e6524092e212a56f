//! Keras's `AveragePooling2D(pool_size, strides=None, padding="valid")`:
//! the mean of each window; with "same", of its real values only (the
//! padding is not counted, as in TensorFlow). Where windows overlap, an
//! input gets the gradient of each window it is in.

use super::{pool_geom, CpuGrad, CpuOut, LayerKind, Padding, Run, Shape, Size2, StepShape};
use crate::kernels::max_pool::{windows, PoolGeom, PLANES_PER_TASK};
use anyhow::Result;
use candle_core::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AveragePooling2D {
    pub pool_size: Size2,
    /// `None`: the pool size, as in Keras.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strides: Option<Size2>,
    #[serde(default, skip_serializing_if = "super::is_valid")]
    pub padding: Padding,
}

/// `AveragePooling2D(pool_size)`: `2` or `(2, 3)`; strides = pool, valid
/// padding. Keras's keyword arguments are methods:
/// `average_pooling2d(3).strides(2).same()`.
pub fn average_pooling2d(pool_size: impl Into<Size2>) -> AveragePooling2D {
    AveragePooling2D {
        pool_size: pool_size.into(),
        strides: None,
        padding: Padding::Valid,
    }
}

impl AveragePooling2D {
    /// `strides=s`: `2` or `(1, 2)`
    pub fn strides(self, strides: impl Into<Size2>) -> Self {
        AveragePooling2D {
            strides: Some(strides.into()),
            ..self
        }
    }
    /// `padding=...`
    pub fn padding(self, padding: Padding) -> Self {
        AveragePooling2D { padding, ..self }
    }
    /// `padding='same'`
    pub fn same(self) -> Self {
        self.padding(Padding::Same)
    }
    fn geom(&self, input: Shape) -> Result<(usize, PoolGeom)> {
        pool_geom("AveragePooling2D", input, self.pool_size, self.strides, self.padding)
    }
}

/// `1 / (real values in the window)` for every output `[ho · wo]`.
fn inv_counts(g: &PoolGeom) -> Vec<f32> {
    let rows = (0..g.ho).map(|oh| g.rows(oh).len());
    rows.flat_map(|r| (0..g.wo).map(move |ow| 1.0 / (r * g.cols(ow).len()) as f32))
        .collect()
}

impl LayerKind for AveragePooling2D {
    fn class_name(&self) -> &'static str {
        "AveragePooling2D"
    }
    fn base_name(&self) -> &'static str {
        "average_pooling2d"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        let (c, g) = self.geom(input)?;
        Ok(Shape::Image(c, g.ho, g.wo))
    }

    /// The windows zero-padded, summed, over their counts (candle's own
    /// `avg_pool2d` upsamples its gradient to the input's size, which
    /// misplaces it when the size is not a multiple of the pool).
    fn forward(&self, x: &Tensor, _: &[Tensor], s: &StepShape, _: &mut Run) -> Result<Tensor> {
        let g = self.geom(s.input)?.1;
        let inv = Tensor::from_vec(inv_counts(&g), (g.ho, g.wo), x.device())?.to_dtype(x.dtype())?;
        Ok(windows(x, &g, 0.0)?.sum(4)?.broadcast_mul(&inv)?) // [N, C, Ho, Wo]
    }

    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        let g = self.geom(s.input)?.1;
        let inv = inv_counts(&g);
        let mut y = vec![0f32; x.len() / (g.h * g.w) * g.ho * g.wo];
        y.par_chunks_exact_mut(g.ho * g.wo)
            .zip(x.par_chunks_exact(g.h * g.w))
            .with_min_len(PLANES_PER_TASK)
            .for_each(|(out, plane)| {
                for (oh, (orow, irow)) in out.chunks_exact_mut(g.wo).zip(inv.chunks_exact(g.wo)).enumerate() {
                    let rows = g.rows(oh);
                    for (ow, (o, &inv)) in orow.iter_mut().zip(irow).enumerate() {
                        let cols = g.cols(ow);
                        let sum: f32 = rows
                            .clone()
                            .map(|r| plane[r * g.w + cols.start..r * g.w + cols.end].iter().sum::<f32>())
                            .sum();
                        *o = sum * inv;
                    }
                }
            });
        Ok(CpuOut::new(y))
    }

    /// Each window's real values get its output's gradient over their count.
    fn cpu_backward(&self, grad: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let g = self.geom(grad.step.input)?.1;
        let inv = inv_counts(&g);
        let mut dx = vec![0f32; grad.x.len()];
        dx.par_chunks_exact_mut(g.h * g.w)
            .zip(grad.dy.par_chunks_exact(g.ho * g.wo))
            .with_min_len(PLANES_PER_TASK)
            .for_each(|(dplane, dy)| {
                for (oh, (drow, irow)) in dy.chunks_exact(g.wo).zip(inv.chunks_exact(g.wo)).enumerate() {
                    let rows = g.rows(oh);
                    for (ow, (&d, &inv)) in drow.iter().zip(irow).enumerate() {
                        let (cols, d) = (g.cols(ow), d * inv);
                        for r in rows.clone() {
                            dplane[r * g.w + cols.start..r * g.w + cols.end]
                                .iter_mut()
                                .for_each(|v| *v += d);
                        }
                    }
                }
            });
        Ok((dx, vec![]))
    }
}

#[cfg(test)]
mod tests {
    use crate::layers::*;
    use crate::train::step::check::{assert_inference_matches_portable, assert_matches_autograd};

    /// A pooling between two convolutions, so that its gradient is checked
    /// (the first layer with parameters wants no input gradient).
    fn around(pool: AveragePooling2D) -> Vec<Layer> {
        vec![
            conv2d(4, 3).same().into(),
            pool.into(),
            conv2d(3, 2).into(),
            flatten(),
            dense(3).into(),
            softmax(),
        ]
    }

    /// Odd and even sizes, strides 1, 2 and 3 (windows that overlap, that
    /// touch, that leave gaps), same and valid, rectangular pools, batches
    /// of 1 and more.
    #[test]
    fn cpu_step_matches_autograd_and_inference_the_portable_path() {
        for (pool, side, n) in [
            (average_pooling2d(2), 13, 4),
            (average_pooling2d(2).same(), 9, 1),
            (average_pooling2d(3).strides(2), 12, 3),
            (average_pooling2d(3).strides(2).same(), 11, 2),
            (average_pooling2d(2).strides(3), 10, 1),
            (average_pooling2d(3).strides(1).same(), 6, 2),
            (average_pooling2d((2, 3)).strides((1, 2)).same(), 7, 3),
        ] {
            assert_matches_autograd(&around(pool.clone()), side, n);
            assert_inference_matches_portable(&around(pool), side, n);
        }
        // Pooled twice, the second time an odd map (13 → 6 → 2).
        let twice = vec![
            conv2d(4, 3).same().into(),
            relu(),
            average_pooling2d(2).into(),
            conv2d(5, 2).into(),
            average_pooling2d(3).into(),
            flatten(),
            dense(3).into(),
            softmax(),
        ];
        assert_matches_autograd(&twice, 13, 4);
        assert_inference_matches_portable(&twice, 13, 4);
    }

    /// Valid drops what is past the last whole window; same averages the
    /// real values only, not the padding.
    #[test]
    fn averages_the_real_values_of_each_window() {
        use crate::model::Sequential;
        use candle_core::{Device, Tensor};
        let pool = |layer: AveragePooling2D| -> Vec<f32> {
            let mut m = Sequential::on(&[1, 3, 5], 0, &Device::Cpu).unwrap();
            m.add(layer).unwrap();
            let x: Vec<f32> = (0..15).map(|v| v as f32).collect();
            let x = Tensor::from_vec(x, (1, 1, 3, 5), &Device::Cpu).unwrap();
            let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = values(m.infer_logits(&x).unwrap());
            assert_eq!(values(m.logits(&x, false).unwrap()), y, "the two paths");
            y
        };
        // windows (0 1 5 6) and (2 3 7 8); the last row and column are dropped
        assert_eq!(pool(average_pooling2d(2)), [3.0, 5.0]);
        // 3 × 5 pads a row and a column after: windows (0 1 5 6), (2 3 7 8),
        // (4 9); (10 11), (12 13), (14), each over its own count
        assert_eq!(
            pool(average_pooling2d(2).same()),
            [3.0, 5.0, 6.5, 10.5, 12.5, 14.0]
        );
    }
}
