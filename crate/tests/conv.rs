//! `kernels::conv2d` against candle's own `conv2d` + bias: forward values,
//! autograd gradients of x, kernel and bias, and finite differences in f64.
//! Cases with 16 or more channels on both sides take the Winograd path,
//! the others im2col; both are covered, with odd and even sizes.

use candle_core::{DType, Device, Tensor, Var};
use cifar10_cnn::kernels::{
    conv2d, conv2d_reference, conv2d_relu, conv2d_relu_max_pool2, max_pool2d, ConvWindow,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A seeded uniform(-1, 1) tensor.
fn random(dims: &[usize], seed: u64, dtype: DType) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// `max |a - b| / max(1, max |b|)`.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let b = b
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(1.0, f64::max);
    diff / scale
}

/// One convolution to check: batch, in and out channels, height, width,
/// where the kernel goes (strides, padding) and its size.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    win: ConvWindow,
    /// kernel (height, width)
    k: (usize, usize),
}

/// Stride 1, `p` zeros on every side.
const fn pad(p: usize) -> ConvWindow {
    ConvWindow {
        strides: (1, 1),
        pad_h: (p, p),
        pad_w: (p, p),
    }
}

/// Strides `(sh, sw)` and zeros `(top, bottom, left, right)`.
const fn slide(sh: usize, sw: usize, [t, b, l, r]: [usize; 4]) -> ConvWindow {
    ConvWindow {
        strides: (sh, sw),
        pad_h: (t, b),
        pad_w: (l, r),
    }
}

impl Case {
    /// The output's height and width.
    fn out(&self) -> (usize, usize) {
        let ConvWindow {
            strides: (sh, sw),
            pad_h: (t, b),
            pad_w: (l, r),
        } = self.win;
        (
            (self.h + t + b - self.k.0) / sh + 1,
            (self.w + l + r - self.k.1) / sw + 1,
        )
    }
}

/// The article's layer shapes (smaller images), odd and even sizes, same and
/// valid padding, a last batch of 72 and a batch of 1; last, other kernel
/// sizes and padding wider than the kernel's reach.
const CASES: [Case; 11] = [
    Case {
        n: 2,
        c: 3,
        o: 32,
        h: 32,
        w: 32,
        win: pad(1),
        k: (3, 3),
    },
    Case {
        n: 3,
        c: 32,
        o: 32,
        h: 10,
        w: 10,
        win: pad(0),
        k: (3, 3),
    },
    Case {
        n: 72,
        c: 3,
        o: 32,
        h: 8,
        w: 8,
        win: pad(1),
        k: (3, 3),
    },
    Case {
        n: 72,
        c: 32,
        o: 64,
        h: 7,
        w: 7,
        win: pad(0),
        k: (3, 3),
    },
    Case {
        n: 1,
        c: 32,
        o: 64,
        h: 15,
        w: 15,
        win: pad(1),
        k: (3, 3),
    },
    Case {
        n: 1,
        c: 3,
        o: 32,
        h: 9,
        w: 12,
        win: pad(0),
        k: (3, 3),
    },
    Case {
        n: 5,
        c: 32,
        o: 64,
        h: 13,
        w: 6,
        win: pad(1),
        k: (3, 3),
    },
    Case {
        n: 4,
        c: 2,
        o: 3,
        h: 3,
        w: 3,
        win: pad(0),
        k: (3, 3),
    },
    Case {
        n: 3,
        c: 2,
        o: 3,
        h: 1,
        w: 2,
        win: pad(2),
        k: (3, 3),
    },
    Case {
        n: 2,
        c: 5,
        o: 6,
        h: 7,
        w: 8,
        win: pad(2),
        k: (5, 5),
    },
    Case {
        n: 2,
        c: 5,
        o: 6,
        h: 4,
        w: 3,
        win: pad(0),
        k: (1, 1),
    },
];

/// (x, kernel, bias) for a case.
fn inputs(case: Case, seed: u64, dtype: DType) -> (Tensor, Tensor, Tensor) {
    let x = random(&[case.n, case.c, case.h, case.w], seed, dtype);
    let k = random(&[case.o, case.c, case.k.0, case.k.1], seed + 1, dtype);
    let b = random(&[case.o], seed + 2, dtype);
    (x, k, b)
}

#[test]
fn forward_matches_candle_conv2d_plus_bias() {
    for (i, &case) in CASES.iter().enumerate() {
        let (x, k, b) = inputs(case, 10 * i as u64, DType::F32);
        let ours = conv2d(&x, &k, &b, case.win).unwrap();
        let reference = conv2d_reference(&x, &k, &b, case.win).unwrap();
        let (ho, wo) = case.out();
        assert_eq!(ours.dims(), &[case.n, case.o, ho, wo], "{case:?}");
        let err = rel_err(&ours, &reference);
        assert!(err < 1e-5, "{case:?}: relative error {err}");
    }
}

#[test]
fn forward_takes_non_contiguous_inputs() {
    let case = Case {
        n: 3,
        c: 4,
        o: 5,
        h: 6,
        w: 7,
        win: pad(1),
        k: (3, 3),
    };
    let (x, k, b) = inputs(case, 99, DType::F32);
    // Same values through a transposed view.
    let xt = x
        .transpose(2, 3)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(2, 3)
        .unwrap();
    assert!(!xt.is_contiguous());
    let err = rel_err(
        &conv2d(&xt, &k, &b, 1).unwrap(),
        &conv2d_reference(&x, &k, &b, 1).unwrap(),
    );
    assert!(err < 1e-5, "relative error {err}");
}

/// A convolution under test, or its reference: `f(x, kernel, bias, padding)`.
type ConvFn = fn(&Tensor, &Tensor, &Tensor, ConvWindow) -> candle_core::Result<Tensor>;

/// Gradients of `sum(conv2d(x, k, b) * w)` through `f`, for x, k and b.
fn grads(f: ConvFn, case: Case, seed: u64, dtype: DType) -> [Tensor; 3] {
    let (x, k, b) = inputs(case, seed, dtype);
    let (x, k, b) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&k).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let y = f(x.as_tensor(), k.as_tensor(), b.as_tensor(), case.win).unwrap();
    let w = random(y.dims(), seed + 3, dtype);
    let g = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
    [x, k, b].map(|v| g.get(v.as_tensor()).expect("a gradient").clone())
}

/// The gradients of x, kernel and bias through `ours` and `reference` agree
/// to a relative error of 1e-5 (f32).
fn assert_same_grads(ours: ConvFn, reference: ConvFn, case: Case, seed: u64) {
    let ours = grads(ours, case, seed, DType::F32);
    let reference = grads(reference, case, seed, DType::F32);
    for (name, (a, b)) in ["x", "kernel", "bias"]
        .iter()
        .zip(ours.iter().zip(&reference))
    {
        let err = rel_err(a, b);
        assert!(
            err < 1e-5,
            "{case:?}: gradient of {name}: relative error {err}"
        );
    }
}

#[test]
fn gradients_match_candle_conv2d_plus_bias() {
    for (i, &case) in CASES.iter().enumerate() {
        assert_same_grads(conv2d, conv2d_reference, case, 100 + 10 * i as u64);
    }
}

#[test]
fn f64_matches_candle_and_finite_differences() {
    let im2col = Case {
        n: 2,
        c: 3,
        o: 4,
        h: 5,
        w: 6,
        win: pad(1),
        k: (3, 3),
    };
    let winograd = Case {
        n: 2,
        c: 16,
        o: 17,
        h: 7,
        w: 6,
        win: pad(0),
        k: (3, 3),
    };
    f64_check(im2col);
    f64_check(winograd);
}

fn f64_check(case: Case) {
    let ours = grads(conv2d, case, 7, DType::F64);
    let reference = grads(conv2d_reference, case, 7, DType::F64);
    for (a, b) in ours.iter().zip(&reference) {
        assert!(rel_err(a, b) < 1e-12);
    }
    // Central differences of the same loss on a few entries of each input.
    let (x, k, b) = inputs(case, 7, DType::F64);
    let w = random(
        conv2d(&x, &k, &b, case.win).unwrap().dims(),
        7 + 3,
        DType::F64,
    );
    let loss = |x: &Tensor, k: &Tensor, b: &Tensor| -> f64 {
        (conv2d(x, k, b, case.win).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let eps = 1e-6;
    for (which, grad) in ours.iter().enumerate() {
        let base = [&x, &k, &b][which];
        let values = base.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let g = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for j in (0..values.len()).step_by(values.len() / 7 + 1) {
            let nudged = |d: f64| {
                let mut v = values.clone();
                v[j] += d;
                let t = Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap();
                let mut args = [x.clone(), k.clone(), b.clone()];
                args[which] = t;
                loss(&args[0], &args[1], &args[2])
            };
            let fd = (nudged(eps) - nudged(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[j]).abs() < 1e-6 * (1.0 + fd.abs()),
                "input {which}, entry {j}: {fd} vs {}",
                g[j]
            );
        }
    }
}

/// The first layer's input is plain data: no gradient is asked for it, and
/// the kernel and bias gradients are still right.
#[test]
fn plain_data_input_gets_no_gradient() {
    let case = Case {
        n: 4,
        c: 3,
        o: 8,
        h: 9,
        w: 9,
        win: pad(1),
        k: (3, 3),
    };
    let (x, k, b) = inputs(case, 5, DType::F32);
    let (kv, bv) = (Var::from_tensor(&k).unwrap(), Var::from_tensor(&b).unwrap());
    let y = conv2d(&x, kv.as_tensor(), bv.as_tensor(), 1).unwrap();
    let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none());
    let reference = conv2d_reference(&x, kv.as_tensor(), bv.as_tensor(), 1).unwrap();
    let gr = reference
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for v in [&kv, &bv] {
        let err = rel_err(
            g.get(v.as_tensor()).unwrap(),
            gr.get(v.as_tensor()).unwrap(),
        );
        assert!(err < 1e-5, "relative error {err}");
    }
}

/// A frozen layer (kernel and bias plain tensors) still passes the right
/// gradient back to its input, through the fused ReLU, and gets none itself.
#[test]
fn frozen_kernel_passes_input_gradient_only() {
    let case = Case {
        n: 5,
        c: 4,
        o: 6,
        h: 8,
        w: 7,
        win: pad(0),
        k: (3, 3),
    };
    let (x, k, b) = inputs(case, 6, DType::F32);
    let xv = Var::from_tensor(&x).unwrap();
    let loss = |y: Tensor| y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g = loss(conv2d_relu(xv.as_tensor(), &k, &b, 0).unwrap());
    assert!(g.get(&k).is_none() && g.get(&b).is_none());
    let gr = loss(conv2d_relu_reference(xv.as_tensor(), &k, &b, pad(0)).unwrap());
    let err = rel_err(
        g.get(xv.as_tensor()).unwrap(),
        gr.get(xv.as_tensor()).unwrap(),
    );
    assert!(err < 1e-5, "relative error {err}");
}

#[test]
fn other_dtypes_fall_back_to_candle() {
    let case = Case {
        n: 2,
        c: 3,
        o: 4,
        h: 5,
        w: 5,
        win: pad(1),
        k: (3, 3),
    };
    let (x, k, b) = inputs(case, 3, DType::F16);
    let ours = conv2d(&x, &k, &b, 1).unwrap();
    assert_eq!(ours.dtype(), DType::F16);
    assert_eq!(
        rel_err(&ours, &conv2d_reference(&x, &k, &b, 1).unwrap()),
        0.0
    );
}

#[test]
fn mismatched_shapes_are_errors() {
    let x = Tensor::zeros((1, 3, 5, 5), DType::F32, &Device::Cpu).unwrap();
    let k = Tensor::zeros((4, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d(&x, &k, &b, 1).is_err());
    let k = Tensor::zeros((4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d(
        &x,
        &k,
        &Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
        1
    )
    .is_err());
    assert!(conv2d(&x.flatten_from(2).unwrap(), &k, &b, 1).is_err());
    let tiny = Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d(&tiny, &k, &b, 0).is_err());
    assert!(conv2d(&x, &k, &b, slide(0, 1, [0; 4])).is_err());
}

fn conv2d_relu_reference(
    x: &Tensor,
    k: &Tensor,
    b: &Tensor,
    pad: ConvWindow,
) -> candle_core::Result<Tensor> {
    conv2d_reference(x, k, b, pad)?.relu()
}

/// The fused conv + bias + ReLU against candle's conv2d, bias and relu:
/// values and all three gradients, on every case (odd and even sizes, same
/// and valid padding, 1x1 to 5x5 kernels).
#[test]
fn fused_relu_matches_candle_conv2d_bias_relu() {
    for (i, &case) in CASES.iter().enumerate() {
        let (x, k, b) = inputs(case, 300 + 10 * i as u64, DType::F32);
        let ours = conv2d_relu(&x, &k, &b, case.win).unwrap();
        let reference = conv2d_relu_reference(&x, &k, &b, case.win).unwrap();
        let err = rel_err(&ours, &reference);
        assert!(err < 1e-5, "{case:?}: relative error {err}");
        let zeros = ours
            .eq(0f32)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            zeros > 0.1 && zeros < 0.9,
            "{case:?}: the ReLU should cut some but not all values ({zeros})"
        );

        assert_same_grads(
            conv2d_relu,
            conv2d_relu_reference,
            case,
            400 + 10 * i as u64,
        );
    }
}

/// `max_pool2d(conv2d_relu(..), 2)` with candle's convolution: the
/// reference for the fused op.
fn conv_relu_pool_reference(
    x: &Tensor,
    k: &Tensor,
    b: &Tensor,
    pad: ConvWindow,
) -> candle_core::Result<Tensor> {
    max_pool2d(&conv2d_relu_reference(x, k, b, pad)?, 2)
}

/// The Winograd shapes for the fused op: even and odd outputs (a last row
/// and column that the pooling drops), same and valid padding, a batch of
/// 72 and of 1, and channel counts that are not multiples of 4.
const POOL_CASES: [Case; 5] = [
    Case {
        n: 3,
        c: 16,
        o: 16,
        h: 10,
        w: 10,
        win: pad(0),
        k: (3, 3),
    },
    Case {
        n: 72,
        c: 32,
        o: 64,
        h: 15,
        w: 15,
        win: pad(0),
        k: (3, 3),
    },
    Case {
        n: 1,
        c: 32,
        o: 32,
        h: 15,
        w: 15,
        win: pad(1),
        k: (3, 3),
    },
    Case {
        n: 5,
        c: 17,
        o: 19,
        h: 13,
        w: 6,
        win: pad(1),
        k: (3, 3),
    },
    Case {
        n: 2,
        c: 16,
        o: 16,
        h: 32,
        w: 32,
        win: pad(0),
        k: (3, 3),
    },
];

/// Conv + ReLU + 2x2 max-pooling as one op against candle's convolution,
/// ReLU and our `max_pool2d` in a row: values and all three gradients.
#[test]
fn fused_pool_matches_conv_relu_then_max_pool() {
    for (i, &case) in POOL_CASES.iter().enumerate() {
        let (x, k, b) = inputs(case, 500 + 10 * i as u64, DType::F32);
        let ours = conv2d_relu_max_pool2(&x, &k, &b, case.win).unwrap();
        let reference = conv_relu_pool_reference(&x, &k, &b, case.win).unwrap();
        assert_eq!(ours.dims(), reference.dims(), "{case:?}");
        let err = rel_err(&ours, &reference);
        assert!(err < 1e-5, "{case:?}: relative error {err}");

        assert_same_grads(
            conv2d_relu_max_pool2,
            conv_relu_pool_reference,
            case,
            600 + 10 * i as u64,
        );
    }
}

/// Ties and the ReLU's zero: with a zero kernel every pixel of a window is
/// the bias. A positive bias ties all four and the first takes the
/// gradient; a negative one gives zero outputs and no gradient at all.
#[test]
fn fused_pool_ties_and_dead_windows_match() {
    let case = POOL_CASES[3];
    let (x, _, _) = inputs(case, 7, DType::F64);
    let k = Tensor::zeros((case.o, case.c, 3, 3), DType::F64, &Device::Cpu).unwrap();
    for bias in [0.5, -0.5] {
        let b = Tensor::full(bias, case.o, &Device::Cpu).unwrap();
        let run = |f: ConvFn| {
            let (xv, kv, bv) = (
                Var::from_tensor(&x).unwrap(),
                Var::from_tensor(&k).unwrap(),
                Var::from_tensor(&b).unwrap(),
            );
            let y = f(xv.as_tensor(), kv.as_tensor(), bv.as_tensor(), case.win).unwrap();
            let w = random(y.dims(), 8, DType::F64);
            let g = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
            let grads = [xv, kv, bv].map(|v| g.get(v.as_tensor()).unwrap().clone());
            (y, grads)
        };
        let (y, ours) = run(conv2d_relu_max_pool2);
        let (y_ref, reference) = run(conv_relu_pool_reference);
        assert!(rel_err(&y, &y_ref) < 1e-12, "bias {bias}");
        for (a, b) in ours.iter().zip(&reference) {
            assert!(rel_err(a, b) < 1e-12, "bias {bias}");
        }
        let db = ours[2]
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(db == 0.0, bias < 0.0, "bias {bias}: db sums to {db}");
    }
}

/// Shapes the fused op cannot take go through the two ops in a row: few
/// channels (im2col), and outputs too small to pool, which are an error.
#[test]
fn fused_pool_falls_back_and_reports_bad_shapes() {
    let case = Case {
        n: 2,
        c: 3,
        o: 8,
        h: 9,
        w: 8,
        win: pad(1),
        k: (3, 3),
    };
    let (x, k, b) = inputs(case, 3, DType::F32);
    let err = rel_err(
        &conv2d_relu_max_pool2(&x, &k, &b, 1).unwrap(),
        &conv_relu_pool_reference(&x, &k, &b, pad(1)).unwrap(),
    );
    assert!(err < 1e-5, "relative error {err}");
    let case = Case {
        n: 2,
        c: 16,
        o: 16,
        h: 3,
        w: 5,
        win: pad(0),
        k: (3, 3),
    };
    let (x, k, b) = inputs(case, 4, DType::F32);
    let message = conv2d_relu_max_pool2(&x, &k, &b, 0)
        .unwrap_err()
        .to_string();
    assert!(message.contains("max_pool2d"), "{message}");
}

/// Keras's other convolutions: strides 2 and 3 (and unequal ones),
/// rectangular kernels, the asymmetric "same" padding of even kernels and
/// strides (more zeros after), odd and even sizes, batches of 1 and 7; and
/// 3×3 kernels with 16 channels that the Winograd path must not take
/// (stride 2, unequal padding).
const STRIDED_CASES: [Case; 10] = [
    // 3x3, stride 2, same on 7x8: rows (1, 1), columns (0, 1)
    Case {
        n: 7,
        c: 3,
        o: 5,
        h: 7,
        w: 8,
        win: slide(2, 2, [1, 1, 0, 1]),
        k: (3, 3),
    },
    // 2x2, stride 1, same: (0, 1) on both axes
    Case {
        n: 2,
        c: 4,
        o: 3,
        h: 5,
        w: 6,
        win: slide(1, 1, [0, 1, 0, 1]),
        k: (2, 2),
    },
    // 3x5, strides (2, 1), valid, a row left over
    Case {
        n: 3,
        c: 2,
        o: 4,
        h: 10,
        w: 8,
        win: slide(2, 1, [0; 4]),
        k: (3, 5),
    },
    // 5x1, stride 3, same on 10x7
    Case {
        n: 2,
        c: 3,
        o: 2,
        h: 10,
        w: 7,
        win: slide(3, 3, [2, 2, 0, 0]),
        k: (5, 1),
    },
    // 1x1, stride 2, valid, odd height and even width, a batch of 1
    Case {
        n: 1,
        c: 5,
        o: 3,
        h: 7,
        w: 6,
        win: slide(2, 2, [0; 4]),
        k: (1, 1),
    },
    // 2x2, stride 2, same on 7x7
    Case {
        n: 7,
        c: 3,
        o: 4,
        h: 7,
        w: 7,
        win: slide(2, 2, [0, 1, 0, 1]),
        k: (2, 2),
    },
    // 4x4, stride 1, same on 6x5: (1, 2)
    Case {
        n: 2,
        c: 3,
        o: 2,
        h: 6,
        w: 5,
        win: slide(1, 1, [1, 2, 1, 2]),
        k: (4, 4),
    },
    // 3x3 with 16 channels, stride 2, valid, a column left over
    Case {
        n: 2,
        c: 16,
        o: 16,
        h: 9,
        w: 10,
        win: slide(2, 2, [0; 4]),
        k: (3, 3),
    },
    // 3x3 with 16 channels, stride 1, unequal padding
    Case {
        n: 2,
        c: 16,
        o: 17,
        h: 6,
        w: 7,
        win: slide(1, 1, [0, 1, 1, 2]),
        k: (3, 3),
    },
    // 3x2, strides (1, 3), same on 5x8: rows (1, 1), columns (0, 1)
    Case {
        n: 3,
        c: 2,
        o: 3,
        h: 5,
        w: 8,
        win: slide(1, 3, [1, 1, 0, 1]),
        k: (3, 2),
    },
];

/// Values and the three gradients (plain and through the fused ReLU)
/// against candle's convolution.
#[test]
fn strided_and_rectangular_match_candle() {
    for (i, &case) in STRIDED_CASES.iter().enumerate() {
        let (x, k, b) = inputs(case, 700 + 10 * i as u64, DType::F32);
        let ours = conv2d(&x, &k, &b, case.win).unwrap();
        let (ho, wo) = case.out();
        assert_eq!(ours.dims(), &[case.n, case.o, ho, wo], "{case:?}");
        let err = rel_err(&ours, &conv2d_reference(&x, &k, &b, case.win).unwrap());
        assert!(err < 1e-5, "{case:?}: relative error {err}");
        assert_same_grads(conv2d, conv2d_reference, case, 800 + 10 * i as u64);
        assert_same_grads(
            conv2d_relu,
            conv2d_relu_reference,
            case,
            900 + 10 * i as u64,
        );
    }
}

/// In f64 against candle and finite differences: a strided same
/// convolution with asymmetric padding, unequal strides with a rectangular
/// kernel, and an even kernel at stride 1.
#[test]
fn strided_f64_matches_candle_and_finite_differences() {
    for i in [0, 2, 6, 9] {
        f64_check(STRIDED_CASES[i]);
    }
}

/// Where the Winograd path cannot pool (stride 2 here), the fused op is
/// the convolution then the pooling.
#[test]
fn strided_fused_pool_falls_back() {
    let case = Case {
        n: 2,
        c: 16,
        o: 16,
        h: 11,
        w: 12,
        win: slide(2, 2, [1, 1, 0, 1]),
        k: (3, 3),
    };
    let (x, k, b) = inputs(case, 9, DType::F32);
    let err = rel_err(
        &conv2d_relu_max_pool2(&x, &k, &b, case.win).unwrap(),
        &conv_relu_pool_reference(&x, &k, &b, case.win).unwrap(),
    );
    assert!(err < 1e-5, "relative error {err}");
    assert_same_grads(conv2d_relu_max_pool2, conv_relu_pool_reference, case, 11);
}
