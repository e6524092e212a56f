//! Keras's `Conv2D`: any kernel size, strides, valid or same padding
//! (TensorFlow's placement, asymmetric where the kernel or the strides make
//! it so), with or without a bias; on the CPU by [`crate::kernels::conv`]
//! (Winograd or im2col), with a ReLU and a following 2×2 max-pooling fused
//! into it where the plan says.

use super::{
    image_input, kept, window1, Activation, CpuGrad, CpuOut, Fused, Init, LayerKind, Padding,
    ParamSpec, Run, Shape, Size2, StepShape,
};
use crate::kernels::{self, conv, ConvWindow};
use anyhow::{ensure, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2D {
    pub filters: usize,
    pub kernel_size: Size2,
    /// Not written when 1, so that files stay as earlier versions wrote them.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub strides: Size2,
    #[serde(default)]
    pub padding: Padding,
    #[serde(default)]
    pub activation: Activation,
    /// Not written when true (Keras's default), as above.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub use_bias: bool,
}

fn one() -> Size2 {
    Size2::square(1)
}
fn is_one(s: &Size2) -> bool {
    *s == one()
}
fn yes() -> bool {
    true
}
fn is_yes(b: &bool) -> bool {
    *b
}

/// `Conv2D(filters, kernel_size)`: `3` or `(3, 5)` (height, width), stride
/// 1, valid padding, a bias, no activation. Keras's keyword arguments are
/// methods: `.strides(2)`, `.padding(Padding::Same)` (or `.same()`),
/// `.use_bias(false)`, `.activation(Activation::Relu)`.
pub fn conv2d(filters: usize, kernel_size: impl Into<Size2>) -> Conv2D {
    Conv2D {
        filters,
        kernel_size: kernel_size.into(),
        strides: one(),
        padding: Padding::Valid,
        activation: Activation::Linear,
        use_bias: true,
    }
}

impl Conv2D {
    /// `strides=s` or `strides=(sh, sw)`
    pub fn strides(self, strides: impl Into<Size2>) -> Conv2D {
        Conv2D {
            strides: strides.into(),
            ..self
        }
    }
    /// `padding='valid'` or `padding='same'`
    pub fn padding(self, padding: Padding) -> Conv2D {
        Conv2D { padding, ..self }
    }
    /// `padding='same'`
    pub fn same(self) -> Conv2D {
        self.padding(Padding::Same)
    }
    /// `use_bias=False`: no bias parameter at all.
    pub fn use_bias(self, use_bias: bool) -> Conv2D {
        Conv2D { use_bias, ..self }
    }
    /// `activation='relu'` etc.
    pub fn activation(self, activation: Activation) -> Conv2D {
        Conv2D { activation, ..self }
    }
}

impl Conv2D {
    /// Where the kernel goes on `input` (TensorFlow's placement along each
    /// axis), and the output shape; or why it cannot go there.
    fn placed(&self, input: Shape) -> Result<(ConvWindow, Shape)> {
        let (_, h, w) = image_input("Conv2D", input)?;
        let (k, s) = (self.kernel_size, self.strides);
        ensure!(self.filters > 0, "Conv2D needs filters above 0, got 0");
        ensure!(
            self.padding == Padding::Same || (k.h <= h && k.w <= w),
            "Conv2D kernel {k} is larger than its {h}x{w} input with padding=\"valid\" (use padding=\"same\" or a smaller kernel_size)"
        );
        let rows = window1("Conv2D", "height", h, k.h, s.h, self.padding)?;
        let cols = window1("Conv2D", "width", w, k.w, s.w, self.padding)?;
        // Same padding's zeros after: the total less those before. (Valid
        // has none: the rows and columns past the last window are dropped.)
        let after = |out: usize, k: usize, s: usize, input: usize, before: usize| {
            ((out - 1) * s + k).saturating_sub(input + before)
        };
        let window = ConvWindow {
            strides: (s.h, s.w),
            pad_h: (rows.before, after(rows.out, k.h, s.h, h, rows.before)),
            pad_w: (cols.before, after(cols.out, k.w, s.w, w, cols.before)),
        };
        Ok((window, Shape::Image(self.filters, rows.out, cols.out)))
    }
    /// The kernel's sizes on a batch of `n` images of `input`.
    fn geom(&self, n: usize, input: Shape) -> Result<conv::Geom> {
        let (c, h, w) = image_input("Conv2D", input)?;
        let (o, k) = (self.filters, self.kernel_size);
        let (window, _) = self.placed(input)?;
        Ok(conv::Geom::new(&[n, c, h, w], &[o, c, k.h, k.w], &[o], window)?)
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
        Ok(self.placed(input)?.1)
    }
    /// Kernel in candle's layout `[out, in, kh, kw]` (Keras keeps `[kh, kw,
    /// in, out]`), then the bias unless `use_bias` is false.
    fn params(&self, input: Shape) -> Vec<ParamSpec> {
        let Shape::Image(c, _, _) = input else {
            return vec![];
        };
        let (o, Size2 { h: kh, w: kw }) = (self.filters, self.kernel_size);
        let kernel = ParamSpec {
            name: "kernel",
            shape: vec![o, c, kh, kw],
            init: Init::GlorotUniform {
                fan_in: c * kh * kw,
                fan_out: o * kh * kw,
            },
            trainable: true,
        };
        let bias = ParamSpec {
            name: "bias",
            shape: vec![o],
            init: Init::Zeros,
            trainable: true,
        };
        match self.use_bias {
            true => vec![kernel, bias],
            false => vec![kernel],
        }
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
        let (window, _) = self.placed(s.input)?;
        // Without a bias, zeros that nothing tracks: no gradient is computed.
        let bias = match p.get(1) {
            Some(b) => b.clone(),
            None => Tensor::zeros(self.filters, x.dtype(), x.device())?,
        };
        let (x, kernel, bias) = (x, &p[0], &bias);
        Ok(match (s.fused.relu, s.fused.max_pool2) {
            (true, true) => kernels::conv2d_relu_max_pool2(x, kernel, bias, window)?,
            (true, false) => kernels::conv2d_relu(x, kernel, bias, window)?,
            (false, _) => kernels::conv2d(x, kernel, bias, window)?,
        })
    }

    fn cpu_forward(&self, x: &[f32], p: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        let geom = self.geom(s.n, s.input)?;
        let zeros;
        let bias = match p.get(1) {
            Some(b) => *b,
            None => {
                zeros = vec![0f32; self.filters];
                &zeros[..]
            }
        };
        let (y, argmax) = conv::forward(&geom, x, p[0], bias, s.fused.relu, s.fused.max_pool2)?;
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
            db: self.use_bias,
        };
        let argmax = (!argmax.is_empty()).then_some(&argmax[..]);
        // [N, O, Ho, Wo] (or pooled) -> one flat [dx, dK, db]
        let y = g.step.fused.relu.then_some(g.y);
        let mut dx = conv::backward(geom, g.x, g.params[0], y, &g.dy, argmax, want);
        let [dx_len, dk_len, _] = geom.grad_lens(want);
        let db = dx.split_off(dx_len + dk_len);
        let dk = dx.split_off(dx_len);
        Ok((dx, if self.use_bias { vec![dk, db] } else { vec![dk] }))
    }
}
