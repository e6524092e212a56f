//! Keras's `GlobalMaxPooling2D(keepdims=False)`: the maximum of each
//! channel's plane, `(C, H, W)` to `(C,)` (or `(C, 1, 1)` with keepdims);
//! the gradient goes to the plane's first maximum, as in
//! [`super::MaxPooling2D`], whose kernels it runs with one window a plane.

use super::{global_shape, image_input, CpuGrad, CpuOut, LayerKind, Run, Shape, StepShape};
use crate::kernels::max_pool::{self, PoolGeom};
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalMaxPooling2D {
    #[serde(default)]
    pub keepdims: bool,
}

/// `GlobalMaxPooling2D()`; `.keepdims()` for `keepdims=True`.
pub fn global_max_pooling2d() -> GlobalMaxPooling2D {
    GlobalMaxPooling2D::default()
}

impl GlobalMaxPooling2D {
    /// `keepdims=True`: the output stays an image, `(C, 1, 1)`.
    pub fn keepdims(self) -> Self {
        GlobalMaxPooling2D { keepdims: true }
    }
    fn geom(&self, input: Shape) -> Result<PoolGeom> {
        let (_, h, w) = image_input("GlobalMaxPooling2D", input)?;
        Ok(PoolGeom::whole(h, w))
    }
}

impl LayerKind for GlobalMaxPooling2D {
    fn class_name(&self) -> &'static str {
        "GlobalMaxPooling2D"
    }
    fn base_name(&self) -> &'static str {
        "global_max_pooling2d"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        let (c, _, _) = image_input("GlobalMaxPooling2D", input)?;
        Ok(global_shape(c, self.keepdims))
    }
    /// Each plane as one window (not [`max_pool::windows`], which would
    /// take it apart value by value).
    fn forward(&self, x: &Tensor, _: &[Tensor], s: &StepShape, _: &mut Run) -> Result<Tensor> {
        let y = max_pool::max_of_windows(&x.flatten_from(2)?)?; // [N, C]
        Ok(y.reshape([&[s.n][..], &s.output.dims()].concat())?)
    }
    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        Ok(CpuOut::new(max_pool::pool_fwd(x, &self.geom(s.input)?)))
    }
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let geom = self.geom(g.step.input)?;
        Ok((max_pool::pool_bwd(g.x, &g.dy, &geom), vec![]))
    }
}
