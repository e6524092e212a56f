//! Keras's `AveragePooling2D(pool_size)`: the mean of each `p × p` window,
//! stride = pool, valid padding (rows and columns past the last whole
//! window are dropped, and get no gradient).

use super::{image_input, pooled_shape, CpuGrad, CpuOut, LayerKind, Run, Shape, StepShape};
use anyhow::Result;
use candle_core::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AveragePooling2D {
    pub pool_size: usize,
}

/// `AveragePooling2D(pool_size=(p, p))`
pub fn average_pooling2d(pool_size: usize) -> AveragePooling2D {
    AveragePooling2D { pool_size }
}

/// Planes a rayon task takes at least: a plane is only a few hundred values.
const PLANES_PER_TASK: usize = 64;

impl LayerKind for AveragePooling2D {
    fn class_name(&self) -> &'static str {
        "AveragePooling2D"
    }
    fn base_name(&self) -> &'static str {
        "average_pooling2d"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        pooled_shape("AveragePooling2D", input, self.pool_size)
    }

    /// Whole windows, reshaped to `[N, C, Ho, p, Wo, p]`, averaged over the
    /// two pool axes (candle's own `avg_pool2d` upsamples its gradient to
    /// the input's size, which misplaces it when the size is not a multiple
    /// of the pool).
    fn forward(&self, x: &Tensor, _: &[Tensor], s: &StepShape, _: &mut Run) -> Result<Tensor> {
        let (c, h, w) = image_input("AveragePooling2D", s.input)?;
        let p = self.pool_size;
        let (ho, wo) = (h / p, w / p);
        Ok(x.narrow(2, 0, ho * p)?
            .narrow(3, 0, wo * p)?
            .reshape((s.n, c, ho, p, wo, p))?
            .mean(5)?
            .mean(3)?) // [N, C, Ho, Wo]
    }

    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        let (_, h, w) = image_input("AveragePooling2D", s.input)?;
        let p = self.pool_size;
        let (ho, wo, scale) = (h / p, w / p, 1.0 / (p * p) as f32);
        let mut y = vec![0f32; x.len() / (h * w) * ho * wo];
        y.par_chunks_exact_mut(ho * wo)
            .zip(x.par_chunks_exact(h * w))
            .with_min_len(PLANES_PER_TASK)
            .for_each(|(out, plane)| {
                for (oh, orow) in out.chunks_exact_mut(wo).enumerate() {
                    // Sum the window's rows into the outputs, then scale.
                    for row in plane[oh * p * w..(oh + 1) * p * w].chunks_exact(w) {
                        for (o, win) in orow.iter_mut().zip(row.chunks_exact(p)) {
                            *o += win.iter().sum::<f32>();
                        }
                    }
                    orow.iter_mut().for_each(|o| *o *= scale);
                }
            });
        Ok(CpuOut::new(y))
    }

    /// Each window's pixels get its output's gradient over `p²`.
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let (_, h, w) = image_input("AveragePooling2D", g.step.input)?;
        let p = self.pool_size;
        let (ho, wo, scale) = (h / p, w / p, 1.0 / (p * p) as f32);
        let mut dx = vec![0f32; g.x.len()];
        dx.par_chunks_exact_mut(h * w)
            .zip(g.dy.par_chunks_exact(ho * wo))
            .with_min_len(PLANES_PER_TASK)
            .for_each(|(dplane, dy)| {
                for (oh, drow) in dy.chunks_exact(wo).enumerate() {
                    for row in dplane[oh * p * w..(oh + 1) * p * w].chunks_exact_mut(w) {
                        for (win, &d) in row.chunks_exact_mut(p).zip(drow) {
                            win.fill(d * scale);
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

    /// Pools on odd sizes (13 → 6 drops a row and a column), pool 3, before
    /// and after convolutions, with the gradient flowing through to them.
    fn layers() -> Vec<Layer> {
        vec![
            conv2d(4, 3).same().into(),
            relu(),
            average_pooling2d(2).into(),
            conv2d(5, 2).into(),
            average_pooling2d(3).into(),
            flatten(),
            dense(3).into(),
            softmax(),
        ]
    }

    #[test]
    fn cpu_step_matches_autograd_and_inference_the_portable_path() {
        assert_matches_autograd(&layers(), 13, 4);
        assert_inference_matches_portable(&layers(), 13, 4);
    }

    #[test]
    fn averages_whole_windows_and_refuses_what_it_cannot_pool() {
        use crate::model::Sequential;
        use candle_core::{Device, Tensor};
        let mut m = Sequential::on(&[1, 3, 5], 0, &Device::Cpu).unwrap();
        m.add(average_pooling2d(2)).unwrap();
        let x: Vec<f32> = (0..15).map(|v| v as f32).collect();
        let x = Tensor::from_vec(x, (1, 1, 3, 5), &Device::Cpu).unwrap();
        let y: Vec<f32> = m.infer_logits(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // windows (0 1 5 6) and (2 3 7 8); the last row and column are dropped
        assert_eq!(y, [3.0, 5.0]);
        let e = format!("{:#}", m.add(average_pooling2d(2)).err().unwrap());
        assert!(e.contains("larger than its 1x2 input"), "{e}");
        let e = format!("{:#}", m.add(average_pooling2d(0)).err().unwrap());
        assert!(e.contains("pool_size above 0"), "{e}");
        let json = serde_json::to_string(&Layer::from(average_pooling2d(3))).unwrap();
        assert_eq!(json, r#"{"class_name":"AveragePooling2D","config":{"pool_size":3}}"#);
        assert_eq!(serde_json::from_str::<Layer>(&json).unwrap(), average_pooling2d(3).into());
    }
}
