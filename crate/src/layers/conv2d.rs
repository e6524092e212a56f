//! Keras's `Conv2D`: a square kernel, stride 1, valid or same padding, with
//! a bias; on the CPU by [`crate::kernels::conv`] (Winograd or im2col), with
//! a ReLU and a following 2×2 max-pooling fused into it where the plan says.

use super::{
    image_input, kept, Activation, CpuGrad, CpuOut, Fused, Init, LayerKind, Padding,
    ParamSpec, Run, Shape, StepShape,
};
use crate::kernels::{self, conv};
use anyhow::{ensure, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2D {
    pub filters: usize,
    pub kernel_size: usize,
    #[serde(default)]
    pub padding: Padding,
    #[serde(default)]
    pub activation: Activation,
}

/// `Conv2D(filters, (k, k))`, valid padding. Keras's keyword arguments
/// are methods: `.same()` for `padding='same'`.
pub fn conv2d(filters: usize, kernel_size: usize) -> Conv2D {
    Conv2D {
        filters,
        kernel_size,
        padding: Padding::Valid,
        activation: Activation::Linear,
    }
}

impl Conv2D {
    /// `padding='same'`
    pub fn same(self) -> Conv2D {
        Conv2D {
            padding: Padding::Same,
            ..self
        }
    }
}

impl Conv2D {
    /// Zeros on each side: `k / 2` for same padding (odd `k`), else none.
    fn pad(&self) -> usize {
        match self.padding {
            Padding::Same => self.kernel_size / 2,
            Padding::Valid => 0,
        }
    }
    /// The kernel's sizes on a batch of `n` images of `input`.
    fn geom(&self, n: usize, input: Shape) -> Result<conv::Geom> {
        let (c, h, w) = image_input("Conv2D", input)?;
        let (o, k) = (self.filters, self.kernel_size);
        Ok(conv::Geom::new(&[n, c, h, w], &[o, c, k, k], &[o], self.pad())?)
    }
}

/// What the CPU forward keeps: the sizes, and with fused pooling each
/// window's argmax.
struct ConvKept {
    geom: conv::Geom,
    argmax: Vec<u8>,
}

impl LayerKind for Conv2D {
    fn class_name(&self) -> &'static str {
        "Conv2D"
    }
    fn base_name(&self) -> &'static str {
        "conv2d"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        let (_, h, w) = image_input("Conv2D", input)?;
        let k = self.kernel_size;
        ensure!(
            self.filters > 0 && k > 0,
            "Conv2D needs filters and kernel_size above 0"
        );
        match self.padding {
            Padding::Same => {
                ensure!(
                    k % 2 == 1,
                    "Conv2D with padding 'same' needs an odd kernel_size, got {k}"
                );
                Ok(Shape::Image(self.filters, h, w))
            }
            Padding::Valid => {
                ensure!(
                    k <= h && k <= w,
                    "Conv2D kernel {k}x{k} is larger than its {h}x{w} input"
                );
                Ok(Shape::Image(self.filters, h - k + 1, w - k + 1))
            }
        }
    }
    /// Kernel in candle's layout `[out, in, k, k]` (Keras keeps `[k, k, in, out]`).
    fn params(&self, input: Shape) -> Vec<ParamSpec> {
        let Shape::Image(c, _, _) = input else {
            return vec![];
        };
        let (o, k) = (self.filters, self.kernel_size);
        vec![
            ParamSpec {
                name: "kernel",
                shape: vec![o, c, k, k],
                init: Init::GlorotUniform {
                    fan_in: c * k * k,
                    fan_out: o * k * k,
                },
                trainable: true,
            },
            ParamSpec {
                name: "bias",
                shape: vec![o],
                init: Init::Zeros,
                trainable: true,
            },
        ]
    }
    fn activation(&self) -> Activation {
        self.activation
    }
    /// The ReLU always; the pooling where the Winograd path can pool its
    /// 2×2 output tiles as it computes them.
    fn fusable(&self, input: Shape) -> Fused {
        Fused {
            relu: true,
            max_pool2: self.geom(1, input).is_ok_and(|g| g.pools()),
        }
    }

    fn forward(&self, x: &Tensor, p: &[Tensor], s: &StepShape, _: &mut Run) -> Result<Tensor> {
        let (kernel, bias, pad) = (&p[0], &p[1], self.pad());
        Ok(match (s.fused.relu, s.fused.max_pool2) {
            (true, true) => kernels::conv2d_relu_max_pool2(x, kernel, bias, pad)?,
            (true, false) => kernels::conv2d_relu(x, kernel, bias, pad)?,
            (false, _) => kernels::conv2d(x, kernel, bias, pad)?,
        })
    }

    fn cpu_forward(&self, x: &[f32], p: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        let geom = self.geom(s.n, s.input)?;
        let (y, argmax) = conv::forward(&geom, x, p[0], p[1], s.fused.relu, s.fused.max_pool2)?;
        Ok(CpuOut {
            y: Some(y),
            kept: Some(Box::new(ConvKept { geom, argmax })),
        })
    }

    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let ConvKept { geom, argmax } = kept(g.kept, "Conv2D")?;
        let want = conv::Wanted {
            dx: g.wants_dx,
            dk: true,
            db: true,
        };
        let argmax = (!argmax.is_empty()).then_some(&argmax[..]);
        // [N, O, Ho, Wo] (or pooled) -> one flat [dx, dK, db]
        let y = g.step.fused.relu.then_some(g.y);
        let mut dx = conv::backward(geom, g.x, g.params[0], y, &g.dy, argmax, want);
        let [dx_len, dk_len, _] = geom.grad_lens(want);
        let db = dx.split_off(dx_len + dk_len);
        let dk = dx.split_off(dx_len);
        Ok((dx, vec![dk, db]))
    }
}
