//! `kernels::max_pool2d` (Keras `MaxPooling2D`, stride = pool, 'valid'):
//! forward against a naive reference, backward against an analytic scatter
//! and central finite differences, the portable (composed ops) version
//! against the custom op, errors, and candle 0.11's own broken backward.

use candle_core::{DType, Device, Tensor, Var};
use cifar10_cnn::kernels::{max_pool2d, max_pool2d_portable};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

type Dims = (usize, usize, usize, usize);

/// Shapes covering odd and even sizes, batch and channels > 1, and pools
/// other than 2: `(dims, pool)`.
const CASES: &[(Dims, usize)] = &[
    ((1, 1, 13, 13), 2),
    ((2, 3, 13, 13), 2),
    ((1, 1, 30, 30), 2),
    ((2, 4, 28, 28), 2),
    ((3, 2, 5, 7), 2),
    ((1, 2, 7, 5), 2),
    ((2, 2, 32, 32), 2),
    ((2, 3, 11, 10), 3),
    ((1, 1, 4, 4), 4),
    ((2, 1, 3, 5), 1),
];

fn numel((n, c, h, w): Dims) -> usize {
    n * c * h * w
}

/// Random values in [-1, 1); ties are possible (and harmless for forwards).
fn random(dims: Dims, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..numel(dims))
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect()
}

/// Pairwise distinct values, at least 0.05 apart, in random order: no
/// near-ties, so the argmax of every window is unambiguous and stays put
/// under a finite-difference step of 0.01.
fn distinct(dims: Dims, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = numel(dims);
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05).collect();
    v.shuffle(&mut rng);
    v
}

fn tensor(data: &[f32], dims: Dims) -> Tensor {
    Tensor::from_slice(data, dims, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Naive reference: pooled values and, for every output, the flat index of
/// its window's first (row-major) maximum.
fn naive(x: &[f32], (n, c, h, w): Dims, p: usize) -> (Vec<f32>, Vec<usize>) {
    let (ho, wo) = (h / p, w / p);
    let mut vals = Vec::new();
    let mut idx = Vec::new();
    for b in 0..n {
        for ch in 0..c {
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut best = f32::NEG_INFINITY;
                    let mut best_i = usize::MAX;
                    for kh in 0..p {
                        for kw in 0..p {
                            let i = ((b * c + ch) * h + oh * p + kh) * w + ow * p + kw;
                            if best_i == usize::MAX || x[i] > best {
                                best = x[i];
                                best_i = i;
                            }
                        }
                    }
                    vals.push(best);
                    idx.push(best_i);
                }
            }
        }
    }
    (vals, idx)
}

/// Analytic gradient of `sum(pool(x) * w)`: `w` scattered onto the argmaxes.
fn naive_grad(x: &[f32], dims: Dims, p: usize, w: &[f32]) -> Vec<f32> {
    let (_, idx) = naive(x, dims, p);
    let mut g = vec![0.0; x.len()];
    for (&i, &wv) in idx.iter().zip(w) {
        g[i] += wv;
    }
    g
}

type Pool = fn(&Tensor, usize) -> candle_core::Result<Tensor>;

/// `d/dx sum(pool(x) * w)` through candle's autograd (`Var` + `backward`).
fn autograd(pool: Pool, x: &[f32], dims: Dims, p: usize, w: &[f32]) -> Vec<f32> {
    let x = Var::from_tensor(&tensor(x, dims)).unwrap();
    let y = pool(x.as_tensor(), p).unwrap();
    let w = Tensor::from_slice(w, y.shape(), &Device::Cpu).unwrap();
    let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
    flat(grads.get(x.as_tensor()).expect("no gradient for x"))
}

fn out_dims((n, c, h, w): Dims, p: usize) -> Dims {
    (n, c, h / p, w / p)
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, e)) in got.iter().zip(want).enumerate() {
        assert!((g - e).abs() <= tol, "{what}: at {i} got {g}, want {e}");
    }
}

#[test]
fn forward_matches_naive_reference() {
    for (k, &(dims, p)) in CASES.iter().enumerate() {
        let x = random(dims, k as u64);
        let (want, _) = naive(&x, dims, p);
        for (name, pool) in [
            ("custom", max_pool2d as Pool),
            ("portable", max_pool2d_portable),
        ] {
            let y = pool(&tensor(&x, dims), p).unwrap();
            let (n, c, ho, wo) = out_dims(dims, p);
            assert_eq!(y.dims(), &[n, c, ho, wo], "{name} {dims:?} pool {p}");
            assert_eq!(flat(&y), want, "{name} {dims:?} pool {p}");
        }
    }
}

#[test]
fn forward_accepts_non_contiguous_input() {
    let dims = (2, 3, 13, 10);
    let x = random(dims, 7);
    // Swap H and W: a strided view of a [2, 3, 13, 10] buffer.
    let t = tensor(&x, dims).transpose(2, 3).unwrap();
    assert!(!t.is_contiguous());
    let tdims = (2, 3, 10, 13);
    let (want, _) = naive(&flat(&t), tdims, 2);
    assert_eq!(flat(&max_pool2d(&t, 2).unwrap()), want);
    assert_eq!(flat(&max_pool2d_portable(&t, 2).unwrap()), want);
}

#[test]
fn forward_supports_f64_and_integers() {
    let dims = (2, 2, 9, 7);
    let x = random(dims, 3);
    let (want, _) = naive(&x, dims, 2);
    let t = tensor(&x, dims);
    let y64 = max_pool2d(&t.to_dtype(DType::F64).unwrap(), 2).unwrap();
    assert_eq!(y64.dtype(), DType::F64);
    assert_eq!(flat(&y64.to_dtype(DType::F32).unwrap()), want);
    // Integer data: exact values, so compare with the reference on them.
    let xi: Vec<f32> = x.iter().map(|v| (v * 100.0).round()).collect();
    let (want_i, _) = naive(&xi, dims, 2);
    let ti = tensor(&xi, dims).to_dtype(DType::I64).unwrap();
    let yi = max_pool2d(&ti, 2).unwrap();
    assert_eq!(yi.dtype(), DType::I64);
    assert_eq!(flat(&yi.to_dtype(DType::F32).unwrap()), want_i);
}

#[test]
fn backward_matches_analytic_reference() {
    for (k, &(dims, p)) in CASES.iter().enumerate() {
        let x = distinct(dims, 100 + k as u64);
        let w = random(out_dims(dims, p), 200 + k as u64);
        let want = naive_grad(&x, dims, p, &w);
        let got = autograd(max_pool2d, &x, dims, p, &w);
        assert_close(&got, &want, 0.0, &format!("custom {dims:?} pool {p}"));
    }
}

#[test]
fn backward_matches_random_data_reference() {
    // Random (non-distinct) data: exact ties are rare but the result must
    // still equal the first-maximum scatter.
    for (k, &(dims, p)) in CASES.iter().enumerate() {
        let x = random(dims, 300 + k as u64);
        let w = random(out_dims(dims, p), 400 + k as u64);
        let want = naive_grad(&x, dims, p, &w);
        let got = autograd(max_pool2d, &x, dims, p, &w);
        assert_close(&got, &want, 0.0, &format!("custom {dims:?} pool {p}"));
    }
}

#[test]
fn backward_matches_central_finite_differences() {
    let eps = 0.01f32;
    for (k, &(dims, p)) in CASES.iter().enumerate() {
        let x = distinct(dims, 500 + k as u64);
        let w = random(out_dims(dims, p), 600 + k as u64);
        let got = autograd(max_pool2d, &x, dims, p, &w);
        // loss(x) = sum(pool(x) * w), the pooling by the kernel under test,
        // the weighted sum in f64 so rounding does not swamp the difference.
        let loss = |x: &[f32]| -> f64 {
            let y = flat(&max_pool2d(&tensor(x, dims), p).unwrap());
            y.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        // Every argmax (where the gradient is non-zero) plus random others,
        // including the dropped last row/column of odd sizes.
        let (_, argmax) = naive(&x, dims, p);
        let mut rng = StdRng::seed_from_u64(700 + k as u64);
        let mut sample: Vec<usize> = argmax.iter().copied().take(40).collect();
        sample.extend((0..40).map(|_| rng.random_range(0..x.len())));
        sample.push(x.len() - 1);
        for i in sample {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += eps;
            xm[i] -= eps;
            let fd = (loss(&xp) - loss(&xm)) / ((xp[i] - xm[i]) as f64);
            assert!(
                (got[i] as f64 - fd).abs() < 1e-4,
                "{dims:?} pool {p} at {i}: autograd {} vs finite difference {fd}",
                got[i]
            );
        }
    }
}

#[test]
fn sum_gradient_is_one_per_window() {
    // 30x30: 15*15 = 225 windows, one 1 each (candle's own op gives 56.25).
    for (dims, windows) in [
        ((1, 1, 30, 30), 225.0),
        ((2, 3, 30, 30), 2.0 * 3.0 * 225.0),
        ((1, 1, 13, 13), 36.0),
        ((4, 32, 13, 13), 4.0 * 32.0 * 36.0),
        ((2, 2, 5, 7), 2.0 * 2.0 * 2.0 * 3.0),
    ] {
        let x = random(dims, 11);
        let xv = Var::from_tensor(&tensor(&x, dims)).unwrap();
        let grads = max_pool2d(xv.as_tensor(), 2)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = flat(grads.get(xv.as_tensor()).unwrap());
        let sum: f32 = g.iter().sum();
        assert_eq!(sum, windows, "{dims:?}");
        assert!(
            g.iter().all(|&v| v == 0.0 || v == 1.0),
            "{dims:?}: not a 0/1 mask"
        );
        let w1 = vec![1.0; numel(out_dims(dims, 2))];
        assert_eq!(g, naive_grad(&x, dims, 2, &w1), "{dims:?}");
    }
}

#[test]
fn odd_sizes_drop_last_row_and_column() {
    // 13x13 -> 6x6 as in the model. Put the largest values in the last row
    // and column: they are outside every window, so they are not pooled and
    // get zero gradient.
    let dims = (2, 3, 13, 13);
    let mut x = distinct(dims, 21);
    for plane in x.chunks_exact_mut(13 * 13) {
        for j in 0..13 {
            plane[12 * 13 + j] = 1000.0 + j as f32;
            plane[j * 13 + 12] = 2000.0 + j as f32;
        }
    }
    let y = flat(&max_pool2d(&tensor(&x, dims), 2).unwrap());
    assert!(y.iter().all(|&v| v < 1000.0), "a dropped pixel was pooled");
    let w = random(out_dims(dims, 2), 22);
    let g = autograd(max_pool2d, &x, dims, 2, &w);
    for plane in g.chunks_exact(13 * 13) {
        for j in 0..13 {
            assert_eq!(plane[12 * 13 + j], 0.0, "last row, col {j}");
            assert_eq!(plane[j * 13 + 12], 0.0, "last col, row {j}");
        }
        // Exactly one gradient entry per 2x2 window of the kept 12x12.
        for oh in 0..6 {
            for ow in 0..6 {
                let nz = (0..2)
                    .flat_map(|a| (0..2).map(move |b| (a, b)))
                    .filter(|&(a, b)| plane[(2 * oh + a) * 13 + 2 * ow + b] != 0.0)
                    .count();
                assert_eq!(nz, 1, "window ({oh}, {ow})");
            }
        }
    }
    assert_eq!(g, naive_grad(&x, dims, 2, &w));
}

#[test]
fn ties_send_the_gradient_to_the_first_maximum() {
    // A constant input ties every window: TensorFlow (and the custom op)
    // give the gradient to the window's top-left element only.
    let dims = (1, 2, 5, 6);
    let x = vec![0.5f32; numel(dims)];
    let w = random(out_dims(dims, 2), 31);
    let g = autograd(max_pool2d, &x, dims, 2, &w);
    assert_eq!(g, naive_grad(&x, dims, 2, &w));
    for plane in g.chunks_exact(5 * 6) {
        for r in 0..5 {
            for c in 0..6 {
                let top_left = r % 2 == 0 && c % 2 == 0 && r < 4;
                assert_eq!(plane[r * 6 + c] != 0.0, top_left, "({r}, {c})");
            }
        }
    }
    // Window [1, 3; 3, 2]: the gradient goes to the first 3 (row-major).
    let x2 = [1.0f32, 3.0, 3.0, 2.0];
    let g2 = autograd(max_pool2d, &x2, (1, 1, 2, 2), 2, &[1.0]);
    assert_eq!(g2, vec![0.0, 1.0, 0.0, 0.0]);
    // The portable version (what CUDA runs) too, on both.
    let gp = autograd(max_pool2d_portable, &x2, (1, 1, 2, 2), 2, &[1.0]);
    assert_eq!(gp, vec![0.0, 1.0, 0.0, 0.0]);
    assert_eq!(autograd(max_pool2d_portable, &x, dims, 2, &w), g);
}

/// Inputs full of ties (a few distinct values, as after a ReLU or in flat
/// image regions): the portable op's gradient is the custom op's exactly,
/// one input per window, on every case.
#[test]
fn portable_routes_tied_gradients_like_the_custom_op() {
    for (k, &(dims, p)) in CASES.iter().enumerate() {
        let x: Vec<f32> = random(dims, 700 + k as u64)
            .iter()
            .map(|v| (v * 2.0).round().max(0.0))
            .collect();
        let w = random(out_dims(dims, p), 600 + k as u64);
        let custom = autograd(max_pool2d, &x, dims, p, &w);
        let portable = autograd(max_pool2d_portable, &x, dims, p, &w);
        assert_eq!(portable, custom, "{dims:?} pool {p}");
        let t = tensor(&x, dims);
        assert_eq!(
            flat(&max_pool2d_portable(&t, p).unwrap()),
            flat(&max_pool2d(&t, p).unwrap())
        );
    }
    // A NaN wins its window in the forward, as in the custom op.
    let x = [1.0f32, f32::NAN, 3.0, 2.0];
    let y = flat(&max_pool2d_portable(&tensor(&x, (1, 1, 2, 2)), 2).unwrap());
    assert!(y[0].is_nan(), "{y:?}");
}

#[test]
fn portable_matches_custom_op_forward_and_backward() {
    for (k, &(dims, p)) in CASES.iter().enumerate() {
        let x = distinct(dims, 800 + k as u64);
        let w = random(out_dims(dims, p), 900 + k as u64);
        let t = tensor(&x, dims);
        assert_eq!(
            flat(&max_pool2d(&t, p).unwrap()),
            flat(&max_pool2d_portable(&t, p).unwrap()),
            "forward {dims:?} pool {p}"
        );
        let custom = autograd(max_pool2d, &x, dims, p, &w);
        let portable = autograd(max_pool2d_portable, &x, dims, p, &w);
        assert_close(
            &portable,
            &custom,
            0.0,
            &format!("backward {dims:?} pool {p}"),
        );
    }
}

#[test]
fn gradient_flows_through_a_non_contiguous_input_and_reuse() {
    // x -> transpose (strided view) -> pool, and the pooled tensor used
    // twice: candle sums both gradient paths before our backward runs.
    let dims = (2, 3, 9, 12);
    let x = distinct(dims, 41);
    let xv = Var::from_tensor(&tensor(&x, dims)).unwrap();
    let y = max_pool2d(&xv.as_tensor().transpose(2, 3).unwrap(), 2).unwrap();
    let w = Tensor::from_slice(&random((2, 3, 6, 4), 42), (2, 3, 6, 4), &Device::Cpu).unwrap();
    let loss = ((&y * &w).unwrap().sum_all().unwrap() + y.sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(xv.as_tensor()).unwrap();
    // Reference: same loss through the portable op.
    let xv2 = Var::from_tensor(&tensor(&x, dims)).unwrap();
    let y2 = max_pool2d_portable(&xv2.as_tensor().transpose(2, 3).unwrap(), 2).unwrap();
    let loss2 = ((&y2 * &w).unwrap().sum_all().unwrap() + y2.sum_all().unwrap()).unwrap();
    let g2 = loss2.backward().unwrap();
    assert_eq!(g.dims(), &[2, 3, 9, 12]);
    assert_close(
        &flat(g),
        &flat(g2.get(xv2.as_tensor()).unwrap()),
        1e-6,
        "transposed",
    );
}

#[test]
fn f64_backward_matches_reference() {
    let dims = (2, 2, 13, 13);
    let x = distinct(dims, 51);
    let w = random(out_dims(dims, 2), 52);
    let xv = Var::from_tensor(&tensor(&x, dims).to_dtype(DType::F64).unwrap()).unwrap();
    let y = max_pool2d(xv.as_tensor(), 2).unwrap();
    let wt = tensor(&w, out_dims(dims, 2)).to_dtype(DType::F64).unwrap();
    let grads = (y * wt).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads
        .get(xv.as_tensor())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(flat(&g), naive_grad(&x, dims, 2, &w));
}

/// candle 0.11.1's built-in `Tensor::max_pool2d` backward scales gradients
/// by 1/4 and misplaces them on odd sizes; this is why `kernels` exists. If
/// this test fails, candle has changed: check whether its op is now correct
/// (gradient sum 225 on 30x30, 36 on 13x13) and the workaround can go.
#[test]
fn candle_builtin_max_pool2d_backward_is_wrong() {
    let sum_grad = |dims: Dims| -> f32 {
        let xv = Var::from_tensor(&tensor(&distinct(dims, 61), dims)).unwrap();
        let y = xv.as_tensor().max_pool2d(2).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(xv.as_tensor()).unwrap();
        g.sum_all().unwrap().to_scalar::<f32>().unwrap()
    };
    let even = sum_grad((1, 1, 30, 30));
    let odd = sum_grad((1, 1, 13, 13));
    eprintln!(
        "candle max_pool2d gradient sums: 30x30 {even} (correct 225), 13x13 {odd} (correct 36)"
    );
    assert_eq!(
        even, 56.25,
        "candle's 30x30 max_pool2d gradient sum changed"
    );
    assert_ne!(odd, 36.0, "candle's 13x13 max_pool2d gradient looks fixed");
    // Ours, on the same inputs, is right.
    for (dims, want) in [((1, 1, 30, 30), 225.0f32), ((1, 1, 13, 13), 36.0)] {
        let xv = Var::from_tensor(&tensor(&distinct(dims, 61), dims)).unwrap();
        let grads = max_pool2d(xv.as_tensor(), 2)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let s = grads
            .get(xv.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(s, want, "{dims:?}");
    }
    // The forward of candle's op is fine (same values as ours).
    let dims = (2, 3, 13, 13);
    let t = tensor(&random(dims, 62), dims);
    assert_eq!(
        flat(&t.max_pool2d(2).unwrap()),
        flat(&max_pool2d(&t, 2).unwrap())
    );
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let dev = Device::Cpu;
    let x3 = Tensor::zeros((3, 8, 8), DType::F32, &dev).unwrap();
    let x5 = Tensor::zeros((1, 1, 3, 8, 8), DType::F32, &dev).unwrap();
    let x4 = Tensor::zeros((1, 3, 8, 6), DType::F32, &dev).unwrap();
    for (name, pool) in [
        ("custom", max_pool2d as Pool),
        ("portable", max_pool2d_portable),
    ] {
        let e = pool(&x3, 2).unwrap_err().to_string();
        assert!(e.contains("4D"), "{name}: {e}");
        assert!(pool(&x5, 2).is_err(), "{name}: 5D");
        let e = pool(&x4, 0).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{name}: {e}");
        let e = pool(&x4, 7).unwrap_err().to_string();
        assert!(e.contains("larger"), "{name}: {e}");
        assert!(pool(&x4, 9).is_err(), "{name}: pool > H");
        // Largest valid pools still work: one window over 8x6 with pool 6.
        assert_eq!(pool(&x4, 6).unwrap().dims(), &[1, 3, 1, 1], "{name}");
    }
}

#[test]
fn nan_propagates_through_its_window() {
    // A NaN anywhere in a window makes that output NaN (a diverging model
    // shows up as a NaN loss instead of being hidden by the pooling), and the
    // window's gradient goes to the NaN.
    for (p, at) in [(2usize, 0usize), (2, 1), (2, 7), (2, 5), (3, 4), (3, 14)] {
        let dims = (1, 1, 4, 6);
        let mut x = distinct(dims, 71);
        x[at] = f32::NAN;
        let y = flat(&max_pool2d(&tensor(&x, dims), p).unwrap());
        let win = (at / 6 / p) * (6 / p) + at % 6 / p;
        for (o, v) in y.iter().enumerate() {
            assert_eq!(v.is_nan(), o == win, "pool {p}, NaN at {at}: {y:?}");
        }
        let w = vec![1.0; y.len()];
        let g = autograd(max_pool2d, &x, dims, p, &w);
        assert_eq!(g[at], 1.0, "pool {p}, NaN at {at}: {g:?}");
    }
}
