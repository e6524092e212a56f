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

/// The most weights one kernel plane may have: far beyond any real
/// kernel, small enough that no sum of sizes overflows.
const MAX_TAPS: usize = 1 << 30;

impl Conv2D {
    /// Where the kernel goes on `input` (TensorFlow's placement along each
    /// axis), and the output shape; or why it cannot go there.
    fn placed(&self, input: Shape) -> Result<(ConvWindow, Shape)> {
        let (_, h, w) = image_input("Conv2D", input)?;
        let (k, s) = (self.kernel_size, self.strides);
        ensure!(self.filters > 0, "Conv2D needs filters above 0, got 0");
        // Sizes come from files too: bounded before the placement's sums.
        ensure!(
            k.h.checked_mul(k.w).is_some_and(|taps| taps <= MAX_TAPS),
            "Conv2D kernel_size {k} is too large (more than {MAX_TAPS} weights per channel)"
        );
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
    /// 2×2 output tiles as it computes them; the sums of its output planes
    /// (not pooled) for a BatchNormalization after it.
    fn fusable(&self, input: Shape) -> Fused {
        Fused {
            relu: true,
            max_pool2: self.geom(1, input).is_ok_and(|g| g.pools()),
            moments: true,
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

    fn cpu_forward(&self, x: &[f32], p: &[&[f32]], s: &StepShape, run: &mut Run) -> Result<CpuOut> {
        let geom = self.geom(s.n, s.input)?;
        let zeros;
        let bias = match p.get(1) {
            Some(b) => *b,
            None => {
                zeros = vec![0f32; self.filters];
                &zeros[..]
            }
        };
        let e = conv::Epilogue {
            relu: s.fused.relu,
            pool: s.fused.max_pool2,
            // (the batch statistics are for training; inference normalizes
            // with the moving ones)
            moments: s.fused.moments && run.training,
        };
        let out = conv::forward(&geom, x, p[0], bias, e)?;
        Ok(CpuOut {
            y: Some(out.y),
            kept: Some(Box::new(ConvKept {
                geom,
                argmax: out.argmax,
            })),
            moments: e.moments.then_some(out.moments),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{layers::*, Layer, Sequential};
    use crate::train::step::check::{assert_inference_matches_portable, assert_matches_autograd};
    use candle_core::{DType, Device, Var};
    use rand::{rngs::StdRng, SeedableRng};

    /// One case of `scripts/fixtures/conv.py`: TensorFlow's output and
    /// gradients of `sum(y * dy)`, in our layouts.
    #[derive(Deserialize)]
    struct Fixture {
        config: Conv2D,
        input: [usize; 4],
        x: Vec<f32>,
        kernel: Vec<f32>,
        bias: Vec<f32>,
        dy: Vec<f32>,
        y: Vec<f32>,
        dx: Vec<f32>,
        dkernel: Vec<f32>,
        dbias: Vec<f32>,
    }

    fn fixtures() -> Vec<(String, Fixture)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/conv");
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let f = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                (p.file_name().unwrap().to_string_lossy().into_owned(), f)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all.len(), 8, "the cases of scripts/fixtures/conv.py");
        all
    }

    /// `a` and `b` agree to f32 rounding, relative to the largest of `b`.
    fn assert_close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 2e-5 * scale, "{what}[{i}]: {x} here, {y} from TensorFlow");
        }
    }

    /// Keras's Conv2D in TensorFlow (strides 1 to 3, unequal strides,
    /// rectangular and even kernels, asymmetric same padding, no bias,
    /// batches of 1 and 2): the output shape, the CPU forward and backward,
    /// and the portable path (candle's convolution, as on CUDA) with
    /// autograd in f64, give TensorFlow's values and gradients.
    #[test]
    fn matches_tensorflow() {
        for (name, f) in fixtures() {
            let layer = f.config;
            let [n, c, h, w] = f.input;
            let input = Shape::Image(c, h, w);
            let output = layer.output_shape(input).unwrap();
            assert_eq!(n * output.size(), f.y.len(), "{name}: output shape {output}");
            let params: Vec<&[f32]> = match layer.use_bias {
                true => vec![&f.kernel, &f.bias],
                false => vec![&f.kernel],
            };
            let shapes: Vec<usize> = layer.params(input).iter().map(|p| p.shape.iter().product()).collect();
            assert_eq!(shapes, params.iter().map(|p| p.len()).collect::<Vec<_>>(), "{name}");
            let step = StepShape {
                n,
                input,
                output,
                fused: Fused::default(),
            };
            let mut rng = StdRng::seed_from_u64(0);
            let mut run = Run::new(true, &mut rng);
            let out = layer.cpu_forward(&f.x, &params, &step, &mut run).unwrap();
            let y = out.y.unwrap();
            assert_close(&format!("{name}: y"), &y, &f.y);
            let (dx, grads) = layer
                .cpu_backward(CpuGrad {
                    step: &step,
                    x: &f.x,
                    y: &y,
                    dy: f.dy.clone(),
                    kept: &out.kept,
                    params: &params,
                    wants_dx: true,
                })
                .unwrap();
            assert_close(&format!("{name}: dx"), &dx, &f.dx);
            assert_close(&format!("{name}: dkernel"), &grads[0], &f.dkernel);
            assert_eq!(grads.len(), 1 + layer.use_bias as usize, "{name}");
            if layer.use_bias {
                assert_close(&format!("{name}: dbias"), &grads[1], &f.dbias);
            }

            // The portable path with candle's own convolution, in f64.
            let (window, _) = layer.placed(input).unwrap();
            let t = |v: &[f32], dims: &[usize]| {
                Tensor::from_vec(v.to_vec(), dims, &Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
            };
            let k = layer.kernel_size;
            let o = layer.filters;
            let bias = match layer.use_bias {
                true => f.bias.clone(),
                false => vec![0.0; o],
            };
            let vars = [
                Var::from_tensor(&t(&f.x, &f.input)).unwrap(),
                Var::from_tensor(&t(&f.kernel, &[o, c, k.h, k.w])).unwrap(),
                Var::from_tensor(&t(&bias, &[o])).unwrap(),
            ];
            let [xv, kv, bv] = vars.each_ref().map(|v| v.as_tensor());
            let y = kernels::conv2d_reference(xv, kv, bv, window).unwrap();
            let dy = t(&f.dy, y.dims());
            let g = (&y * dy).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| -> Vec<f32> {
                let t = t.to_dtype(DType::F32).unwrap();
                t.flatten_all().unwrap().to_vec1().unwrap()
            };
            assert_close(&format!("{name}: portable y"), &flat(&y), &f.y);
            let dk = g.get(kv).unwrap();
            assert_close(&format!("{name}: portable dx"), &flat(g.get(xv).unwrap()), &f.dx);
            assert_close(&format!("{name}: portable dkernel"), &flat(dk), &f.dkernel);
            if layer.use_bias {
                assert_close(&format!("{name}: portable dbias"), &flat(g.get(bv).unwrap()), &f.dbias);
            }
        }
    }

    /// Strides 1, 2 and 3, unequal strides, kernels (3,5), (2,2), (5,1),
    /// (1,1) and (3,3), same and valid padding, odd and even sizes, with and
    /// without a bias, an inline ReLU; 16-channel 3×3 convolutions that the
    /// Winograd path must leave (stride 2, an even kernel) next to one it
    /// takes with its pooling.
    fn strided_layers() -> [Vec<Layer>; 3] {
        [
            vec![
                conv2d(4, (3, 5)).strides(2).same().activation(Activation::Relu).into(),
                conv2d(3, 2).same().into(),
                relu(),
                conv2d(5, (5, 1)).strides((2, 1)).use_bias(false).into(),
                flatten(),
                dense(3).into(),
                softmax(),
            ],
            vec![
                conv2d(3, 1).strides(3).into(),
                relu(),
                conv2d(4, 3).strides(2).same().use_bias(false).into(),
                flatten(),
                dense(2).into(),
                softmax(),
            ],
            vec![
                conv2d(16, 3).same().into(),
                relu(),
                conv2d(16, 3).strides(2).same().into(),
                relu(),
                max_pooling2d(2).into(),
                conv2d(16, 2).same().into(),
                relu(),
                conv2d(16, 3).same().into(),
                relu(),
                max_pooling2d(2).into(),
                flatten(),
                dense(3).into(),
                softmax(),
            ],
        ]
    }

    #[test]
    fn strides_kernels_and_padding_match_autograd() {
        let [a, b, c] = strided_layers();
        assert_matches_autograd(&a, 9, 7);
        assert_matches_autograd(&b, 8, 1);
        assert_matches_autograd(&c, 10, 3);
    }

    #[test]
    fn strides_kernels_and_padding_infer_as_portable() {
        let [a, b, c] = strided_layers();
        assert_inference_matches_portable(&a, 9, 7);
        assert_inference_matches_portable(&b, 8, 1);
        assert_inference_matches_portable(&c, 10, 3);
    }

    /// The fused pooling only where the Winograd kernel runs: 3×3, stride
    /// 1, 16 channels or more.
    #[test]
    fn fuses_the_pooling_only_on_the_winograd_path() {
        let input = Shape::Image(16, 10, 10);
        let pools = |l: Conv2D| l.fusable(input).max_pool2;
        assert!(pools(conv2d(16, 3).same()));
        assert!(pools(conv2d(16, 3)));
        assert!(!pools(conv2d(16, 3).strides(2).same()));
        assert!(!pools(conv2d(16, 2).same()));
        assert!(!pools(conv2d(16, (3, 1)).same()));
        assert!(!pools(conv2d(8, 3).same()));
    }

    /// Keras's output sizes: same is `ceil(in / stride)`, valid drops the
    /// rows and columns past the last whole window.
    #[test]
    fn output_shapes_are_keras_s() {
        let out = |l: Conv2D| l.output_shape(Shape::Image(3, 7, 8)).unwrap();
        assert_eq!(out(conv2d(4, 3).same()), Shape::Image(4, 7, 8));
        assert_eq!(out(conv2d(4, 3).strides(2).same()), Shape::Image(4, 4, 4));
        assert_eq!(out(conv2d(4, 2).strides((3, 2)).same()), Shape::Image(4, 3, 4));
        assert_eq!(out(conv2d(4, (3, 5))), Shape::Image(4, 5, 4));
        assert_eq!(out(conv2d(4, 3).strides(2)), Shape::Image(4, 3, 3));
        assert_eq!(out(conv2d(4, 8).same()), Shape::Image(4, 7, 8));
    }

    /// Bad settings are refused at `add`, saying what is wrong.
    #[test]
    fn bad_settings_are_clear_errors_at_add() {
        let add = |l: Conv2D| {
            let mut m = Sequential::on(&[3, 8, 6], 0, &Device::Cpu).unwrap();
            format!("{:#}", m.add(l).err().expect("an error"))
        };
        let e = add(conv2d(4, (9, 3)));
        assert!(e.contains("kernel 9x3 is larger than its 8x6 input") && e.contains("same"), "{e}");
        let e = add(conv2d(4, (3, 7)));
        assert!(e.contains("larger than its 8x6 input"), "{e}");
        let e = add(conv2d(4, 3).strides((1, 0)));
        assert!(e.contains("strides must be at least 1") && e.contains("width"), "{e}");
        let e = add(conv2d(0, 3));
        assert!(e.contains("filters above 0"), "{e}");
        let e = add(conv2d(4, (0, 3)).same());
        assert!(e.contains("height must be at least 1"), "{e}");
        let e = add(conv2d(4, (usize::MAX, 1)).same());
        assert!(e.contains("too large"), "{e}");
        // A kernel larger than the input is fine with same padding.
        let mut m = Sequential::on(&[3, 8, 6], 0, &Device::Cpu).unwrap();
        m.add(conv2d(4, (9, 3)).same()).unwrap();
    }

    /// `use_bias=False`: a kernel and nothing else, in the parameters and
    /// the summary.
    #[test]
    fn without_bias_there_is_no_bias_parameter() {
        let mut m = Sequential::on(&[3, 8, 8], 0, &Device::Cpu).unwrap();
        m.add(conv2d(4, (3, 5)).use_bias(false)).unwrap();
        let names: Vec<String> = m.named_vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["conv2d.kernel"]);
        assert_eq!(m.count_params(), 4 * 3 * 3 * 5);
        let mut m = Sequential::on(&[3, 8, 8], 0, &Device::Cpu).unwrap();
        m.add(conv2d(4, (3, 5))).unwrap();
        assert_eq!(m.count_params(), 4 * 3 * 3 * 5 + 4);
    }

    /// Files of earlier versions load; a default convolution is written as
    /// they wrote it; the new settings round-trip; unknown fields are errors.
    #[test]
    fn json_is_keras_s_and_reads_earlier_files() {
        let old = r#"{"filters":32,"kernel_size":3,"padding":"same","activation":"relu"}"#;
        let l: Conv2D = serde_json::from_str(old).unwrap();
        assert_eq!(l, conv2d(32, 3).same().activation(Activation::Relu));
        assert_eq!(serde_json::to_string(&l).unwrap(), old);
        let l: Conv2D = serde_json::from_str(r#"{"filters":8,"kernel_size":5}"#).unwrap();
        assert_eq!(l, conv2d(8, 5));
        let new = conv2d(4, (3, 5)).strides((2, 1)).use_bias(false);
        let json = serde_json::to_string(&new).unwrap();
        assert_eq!(
            json,
            r#"{"filters":4,"kernel_size":[3,5],"strides":[2,1],"padding":"valid","activation":"linear","use_bias":false}"#
        );
        assert_eq!(serde_json::from_str::<Conv2D>(&json).unwrap(), new);
        let e = serde_json::from_str::<Conv2D>(r#"{"filters":4,"kernel_size":3,"dilation_rate":2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dilation_rate"), "{e}");
    }
}
