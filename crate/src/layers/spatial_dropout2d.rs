//! Keras's `SpatialDropout2D(rate)`: inverted dropout of whole channels
//! (the same mask value over a sample's channel's `H × W` plane), active
//! while training only; the mask is drawn as [`super::Dropout`]'s is, one
//! value a plane ([`crate::kernels::dropout`]).

use super::{image_input, kept, CpuGrad, CpuOut, Layer, LayerKind, Run, Shape, StepShape};
use crate::kernels::dropout::{spatial_dropout, Mask};
use anyhow::{ensure, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpatialDropout2D {
    pub rate: f64,
}

/// `SpatialDropout2D(rate)`
pub fn spatial_dropout2d(rate: f64) -> Layer {
    SpatialDropout2D { rate }.into()
}

impl SpatialDropout2D {
    fn active(&self, run: &Run) -> bool {
        run.training && self.rate > 0.0
    }
}

/// What the backward needs: the mask, and how many values a plane has.
struct PlaneMask {
    mask: Mask,
    plane: usize,
}

impl LayerKind for SpatialDropout2D {
    fn class_name(&self) -> &'static str {
        "SpatialDropout2D"
    }
    fn base_name(&self) -> &'static str {
        "spatial_dropout2d"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        image_input("SpatialDropout2D", input)?;
        ensure!(
            (0.0..1.0).contains(&self.rate),
            "SpatialDropout2D rate must be in [0, 1), got {}",
            self.rate
        );
        Ok(input)
    }
    fn forward(&self, x: &Tensor, _: &[Tensor], _: &StepShape, run: &mut Run) -> Result<Tensor> {
        match self.active(run) {
            true => Ok(spatial_dropout(x, self.rate, run.rng)?),
            false => Ok(x.clone()),
        }
    }
    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], s: &StepShape, run: &mut Run) -> Result<CpuOut> {
        if !self.active(run) {
            return Ok(CpuOut::unchanged());
        }
        let (_, h, w) = image_input("SpatialDropout2D", s.input)?;
        let kept = PlaneMask {
            mask: Mask::draw(self.rate, run.rng)?,
            plane: h * w,
        };
        let mut y = x.to_vec();
        kept.mask.apply_planes_in_place(&mut y, kept.plane);
        Ok(CpuOut {
            y: Some(y),
            kept: Some(Box::new(kept)),
            moments: None,
        })
    }
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let mut dy = g.dy;
        // No mask kept: the forward was inactive (rate 0), the gradient passes.
        if g.kept.is_some() {
            let k = kept::<PlaneMask>(g.kept, "SpatialDropout2D")?;
            k.mask.apply_planes_in_place(&mut dy, k.plane);
        }
        Ok((dy, vec![]))
    }
}

#[cfg(test)]
mod tests {
    use crate::layers::*;
    use crate::model::Sequential;
    use crate::train::step::check::{assert_inference_matches_portable, assert_matches_autograd};
    use candle_core::{Device, Tensor};

    #[test]
    fn cpu_step_matches_autograd_and_inference_the_portable_path() {
        let layers = vec![
            conv2d(6, 3).same().into(),
            relu(),
            spatial_dropout2d(0.5),
            conv2d(4, 3).into(),
            flatten(),
            dense(3).into(),
            softmax(),
        ];
        for (side, n) in [(7, 1), (8, 4)] {
            assert_matches_autograd(&layers, side, n);
            assert_inference_matches_portable(&layers, side, n);
        }
    }

    /// Whole planes kept (scaled) or dropped, about `1 - rate` of them;
    /// nothing changes at inference. (The CPU path draws the same masks:
    /// the autograd check above trains through both.)
    #[test]
    fn drops_whole_channels_while_training() {
        let (n, c, h, w) = (8, 50, 3, 5);
        let mut m = Sequential::on(&[c, h, w], 1, &Device::Cpu).unwrap();
        m.add(spatial_dropout2d(0.25)).unwrap();
        let x = Tensor::ones((n, c, h, w), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y: Vec<f32> = m.logits(&x, true).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let planes: Vec<f32> = y
            .chunks_exact(h * w)
            .map(|p| {
                assert!(p.iter().all(|&v| v == p[0]), "a plane is one value: {p:?}");
                p[0]
            })
            .collect();
        assert!(planes.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let kept = planes.iter().filter(|&&v| v != 0.0).count() as f64 / planes.len() as f64;
        assert!((kept - 0.75).abs() < 0.06, "kept {kept}");
        let same: Vec<f32> = m.logits(&x, false).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(same.iter().all(|&v| v == 1.0));

        let json = serde_json::to_string(&spatial_dropout2d(0.25)).unwrap();
        assert_eq!(json, r#"{"class_name":"SpatialDropout2D","config":{"rate":0.25}}"#);
        assert_eq!(serde_json::from_str::<Layer>(&json).unwrap(), spatial_dropout2d(0.25));
        let mut flat = Sequential::on(&[1, 2, 2], 1, &Device::Cpu).unwrap();
        flat.add(flatten()).unwrap();
        let e = format!("{:#}", flat.add(spatial_dropout2d(0.5)).err().unwrap());
        assert!(e.contains("SpatialDropout2D needs an image input"), "{e}");
        let e = format!("{:#}", m.add(spatial_dropout2d(1.0)).err().unwrap());
        assert!(e.contains("rate must be in [0, 1)"), "{e}");
    }
}
