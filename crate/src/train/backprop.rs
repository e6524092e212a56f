//! The training step's forward and backward passes on the CPU in f32,
//! stage by stage, without candle's autograd.
//!
//! candle's autograd is generic: for every tensor of the graph it first
//! makes a zero tensor of the same size (on one thread) and then adds the
//! gradient to it, and every tensor op allocates its result. For the
//! article's model that is about 9 million values zero-filled and added a
//! step, outside the kernels that do the work. Here the same kernels
//! ([`conv`], [`max_pool`], [`dropout`], gemm for the dense layers) run
//! stage by stage (see [`Stage`]); each stage keeps what its backward needs,
//! and the gradient goes back through one owned buffer, masked in place by
//! the ReLUs and the dropout masks. No gradient is computed that nothing
//! needs: the backward stops at the first stage with weights.
//!
//! Every other device and dtype (f64, which the gradient checks use) goes
//! through candle's autograd over [`Sequential::logits`]; the tests check
//! that both give the same gradients.

use crate::kernels::conv::{self, Float, Geom, Wanted};
use crate::kernels::{dropout, max_pool};
use crate::model::{Activation, Sequential, Shape, Stage};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Layout, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Whether [`gradients`] runs for this model: f32 weights on the CPU.
pub(crate) fn applies(model: &Sequential) -> bool {
    model.device.is_cpu() && model.dtype() == DType::F32
}

/// The loss of one batch, how many of its images the model classified
/// right, and the gradient of every weight.
pub(crate) struct Gradients {
    pub loss: f64,
    pub correct: usize,
    /// In [`Sequential::named_vars`] order; empty when the loss is not
    /// finite (there is nothing to update with).
    pub grads: Vec<Tensor>,
}

/// What a stage's forward leaves for its backward, beside its output.
enum Kept {
    Nothing,
    /// The convolution's sizes, and with fused pooling each window's argmax.
    Conv(Geom, Vec<u8>),
    Dropout(dropout::Mask),
}

/// Forward (dropout active), softmax cross-entropy against one-hot `y`, and
/// backward, for a batch `x` `[N, C, H, W]`; the model must end in a softmax.
pub(crate) fn gradients(model: &mut Sequential, x: &Tensor, y: &Tensor) -> Result<Gradients> {
    let n = x.dim(0)?;
    let plan = plan(model, n)?;
    // A narrowed or transposed batch is copied into one contiguous block.
    let (x, y) = (x.contiguous()?, y.contiguous()?);

    // Every weight's data, borrowed for the whole pass (the update comes after).
    let tensors: Vec<Option<[Tensor; 2]>> = model
        .weights
        .iter()
        .map(|w| {
            w.as_ref()
                .map(|w| [w.kernel.as_tensor().clone(), w.bias.as_tensor().clone()])
        })
        .collect();
    let guards: Vec<_> = tensors
        .iter()
        .map(|w| {
            w.as_ref()
                .map(|[k, b]| [k.storage_and_layout(), b.storage_and_layout()])
        })
        .collect();
    let weights = |layer: usize| -> Result<(&[f32], &[f32])> {
        let [(k, kl), (b, bl)] = guards[layer].as_ref().context("a layer without weights")?;
        Ok((f32_data(k, kl)?, f32_data(b, bl)?))
    };
    let (x_guard, y_guard) = (x.storage_and_layout(), y.storage_and_layout());
    let x = f32_data(&x_guard.0, x_guard.1)?;
    let y = f32_data(&y_guard.0, y_guard.1)?;

    // Forward: stage k's output is `outputs[k]`, or its input where `None`.
    let mut outputs: Vec<Option<Vec<f32>>> = Vec::with_capacity(plan.len());
    let mut kept = Vec::with_capacity(plan.len());
    for &(stage, shape) in &plan {
        let input = latest(&outputs, x);
        let (output, keep) = match stage {
            Stage::Conv {
                layer,
                pad,
                relu,
                pool,
            } => {
                let (kernel, bias) = weights(layer)?;
                let geom = conv_geom(model, layer, shape, n, pad)?;
                let (y, argmax) = conv::forward(&geom, input, kernel, bias, relu, pool)?;
                (Some(y), Kept::Conv(geom, argmax))
            }
            Stage::Dense { layer, relu } => {
                let (kernel, bias) = weights(layer)?;
                let (inputs, units) = (shape.size(), bias.len());
                let mut y = matmul(Mat::new(input, n, inputs), Mat::new(kernel, inputs, units));
                for row in y.chunks_exact_mut(units) {
                    for (v, &b) in row.iter_mut().zip(bias) {
                        *v = if relu { f32::relu(*v + b) } else { *v + b };
                    }
                }
                (Some(y), Kept::Nothing)
            }
            Stage::Activation(Activation::Relu) => (
                Some(input.par_iter().map(|&v| f32::relu(v)).collect()),
                Kept::Nothing,
            ),
            Stage::Activation(Activation::Softmax) => {
                (Some(softmax(input, last_dim(shape))), Kept::Nothing)
            }
            Stage::MaxPool(p) => {
                let Shape::Image(_, h, w) = shape else {
                    bail!("MaxPooling2D needs an image input")
                };
                (Some(max_pool::pool_fwd(input, h, w, p)), Kept::Nothing)
            }
            Stage::Dropout(rate) if rate > 0.0 => {
                let mask = dropout::Mask::draw(rate, &mut model.rng)?;
                (Some(mask.apply(input)), Kept::Dropout(mask))
            }
            Stage::Activation(Activation::Linear) | Stage::Dropout(_) | Stage::Flatten => {
                (None, Kept::Nothing)
            }
        };
        outputs.push(output);
        kept.push(keep);
    }

    let logits = latest(&outputs, x);
    let classes = y.len() / n;
    ensure!(
        logits.len() == y.len(),
        "the model outputs {} values per image, the labels have {classes}",
        logits.len() / n
    );
    let (loss, correct, mut dy) = softmax_cross_entropy(logits, y, classes);
    if !loss.is_finite() {
        return Ok(Gradients {
            loss,
            correct,
            grads: vec![],
        });
    }

    // Backward, down to the first stage with weights (whose input needs no
    // gradient).
    let has_weights = |s: &Stage| matches!(s, Stage::Conv { .. } | Stage::Dense { .. });
    let first = plan.iter().position(|(s, _)| has_weights(s));
    let mut grads: Vec<Option<[Vec<f32>; 2]>> = vec![None; model.weights.len()];
    for k in (first.unwrap_or(plan.len())..plan.len()).rev() {
        let (stage, shape) = plan[k];
        let (input, output) = (latest(&outputs[..k], x), latest(&outputs[..=k], x));
        let wants_dx = Some(k) != first;
        match (stage, &kept[k]) {
            (Stage::Conv { layer, relu, .. }, Kept::Conv(geom, argmax)) => {
                let (kernel, _) = weights(layer)?;
                let want = Wanted {
                    dx: wants_dx,
                    dk: true,
                    db: true,
                };
                let argmax = (!argmax.is_empty()).then_some(&argmax[..]);
                let y = relu.then_some(output);
                let mut dx = conv::backward(geom, input, kernel, y, &dy, argmax, want);
                let [dx_len, dk_len, _] = geom.grad_lens(want);
                let db = dx.split_off(dx_len + dk_len);
                let dk = dx.split_off(dx_len);
                grads[layer] = Some([dk, db]);
                dy = dx;
            }
            (Stage::Dense { layer, relu }, _) => {
                if relu {
                    relu_grad(&mut dy, output);
                }
                let (kernel, bias) = weights(layer)?;
                let (inputs, units) = (shape.size(), bias.len());
                let dk = matmul(Mat::new(input, n, inputs).t(), Mat::new(&dy, n, units));
                let db = column_sums(&dy, units);
                if wants_dx {
                    dy = matmul(Mat::new(&dy, n, units), Mat::new(kernel, inputs, units).t());
                }
                grads[layer] = Some([dk, db]);
            }
            (Stage::Activation(Activation::Relu), _) => relu_grad(&mut dy, output),
            (Stage::Activation(Activation::Softmax), _) => {
                softmax_grad(&mut dy, output, last_dim(shape))
            }
            (Stage::MaxPool(p), _) => {
                let Shape::Image(_, h, w) = shape else {
                    bail!("MaxPooling2D needs an image input")
                };
                dy = max_pool::pool_bwd(input, &dy, h, w, p);
            }
            (Stage::Dropout(_), Kept::Dropout(mask)) => mask.apply_in_place(&mut dy),
            _ => {}
        }
    }

    let mut out = Vec::new();
    for (tensors, grads) in tensors.iter().zip(grads) {
        if let Some(weights) = tensors {
            let grads = grads.context("a layer with weights got no gradient")?;
            for (w, g) in weights.iter().zip(grads) {
                out.push(Tensor::from_vec(g, w.shape(), w.device())?);
            }
        }
    }
    Ok(Gradients {
        loss,
        correct,
        grads: out,
    })
}

/// The model's stages with each one's input shape. A Conv2D whose pooling
/// cannot be fused (see [`Geom::pools`]) is followed by a MaxPooling2D(2)
/// stage of its own, as `conv2d_relu_max_pool2` does on candle's side.
fn plan(model: &Sequential, n: usize) -> Result<Vec<(Stage, Shape)>> {
    let mut stages = model.stages();
    ensure!(
        stages.pop() == Some(Stage::Activation(Activation::Softmax)),
        "categorical cross-entropy needs the model to end in a softmax"
    );
    let [c, h, w] = model.architecture.input_shape;
    let mut shape = Shape::Image(c, h, w);
    let mut plan = Vec::with_capacity(stages.len() + 1);
    let mut push = |stage: Stage, shape: &mut Shape| -> Result<()> {
        plan.push((stage, *shape));
        *shape = match (stage, *shape) {
            (
                Stage::Conv {
                    layer, pad, pool, ..
                },
                s,
            ) => {
                let [o, h, w] = conv_geom(model, layer, s, n, pad)?.output(pool);
                Shape::Image(o, h, w)
            }
            (Stage::Dense { layer, .. }, _) => {
                let w = model.weights[layer].as_ref().context("dense weights")?;
                Shape::Flat(w.bias.elem_count())
            }
            (Stage::MaxPool(p), Shape::Image(c, h, w)) => Shape::Image(c, h / p, w / p),
            (Stage::Flatten, s) => Shape::Flat(s.size()),
            (_, s) => s,
        };
        Ok(())
    };
    for stage in stages {
        match stage {
            Stage::Conv {
                layer,
                pad,
                relu,
                pool: true,
            } if !conv_geom(model, layer, shape, n, pad)?.pools() => {
                let unfused = Stage::Conv {
                    layer,
                    pad,
                    relu,
                    pool: false,
                };
                push(unfused, &mut shape)?;
                push(Stage::MaxPool(2), &mut shape)?;
            }
            stage => push(stage, &mut shape)?,
        }
    }
    Ok(plan)
}

/// The sizes of the convolution at `layer` on a batch of `n` images of `shape`.
fn conv_geom(model: &Sequential, layer: usize, shape: Shape, n: usize, pad: usize) -> Result<Geom> {
    let Shape::Image(c, h, w) = shape else {
        bail!("Conv2D needs an image input, got {shape}")
    };
    let weights = model.weights[layer].as_ref().context("conv weights")?;
    Ok(Geom::new(
        &[n, c, h, w],
        weights.kernel.dims(),
        weights.bias.dims(),
        pad,
    )?)
}

/// A tensor's data, which must be contiguous f32 on the CPU.
fn f32_data<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("expected contiguous f32 data on the CPU"),
    }
}

/// The most recent output up to here: the last stage that wrote one, or `x`.
fn latest<'a>(outputs: &'a [Option<Vec<f32>>], x: &'a [f32]) -> &'a [f32] {
    outputs.iter().rev().find_map(|o| o.as_deref()).unwrap_or(x)
}

/// Length of the last dimension: what a softmax normalizes over.
fn last_dim(shape: Shape) -> usize {
    match shape {
        Shape::Image(_, _, w) => w,
        Shape::Flat(n) => n,
    }
}

/// A row-major matrix `[rows, cols]`, or (after [`Mat::t`]) the transpose of one.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> Mat<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data of the wrong size");
        Mat {
            data,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }
    fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `a · b`, row-major, on all threads.
#[rustfmt::skip]
fn matmul(a: Mat, b: Mat) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "matrix sizes do not fit");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if k == 0 {
        return vec![0.0; m * n];
    }
    // Not zeroed first: gemm writes every element (it does not read `dst`).
    let mut dst = Vec::with_capacity(m * n);
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: `Mat::new` checked that each operand's data holds its rows
    // and columns at these strides; `dst` has room for [m, n] row-major,
    // all of which gemm writes (k > 0, and it is told not to read `dst`).
    unsafe {
        gemm::gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize, false,
            a.data.as_ptr(), a.col_stride, a.row_stride,
            b.data.as_ptr(), b.col_stride, b.row_stride,
            0.0, 1.0, false, false, false, par,
        );
        dst.set_len(m * n);
    }
    dst
}

/// `d` where the ReLU's output `y` is positive, else 0, in place: the
/// convolutions' own ReLU gradient ([`Float::relu_grad`]), so one rule holds.
fn relu_grad(d: &mut [f32], y: &[f32]) {
    d.par_iter_mut()
        .zip(y)
        .for_each(|(d, &y)| *d = f32::relu_grad(*d, y));
}

/// Sums of each column of `m` `[rows, cols]`.
fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let mut sums = vec![0f64; cols];
    for row in m.chunks_exact(cols) {
        sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
    }
    sums.into_iter().map(|s| s as f32).collect()
}

/// Softmax over each run of `len` values.
fn softmax(x: &[f32], len: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    for row in y.chunks_exact_mut(len) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
    y
}

/// The softmax's backward in place: `dx = y ⊙ (dy − Σ dy ⊙ y)` for each run.
fn softmax_grad(d: &mut [f32], y: &[f32], len: usize) {
    for (d, y) in d.chunks_exact_mut(len).zip(y.chunks_exact(len)) {
        let dot: f32 = d.iter().zip(y).map(|(d, y)| d * y).sum();
        d.iter_mut().zip(y).for_each(|(d, &y)| *d = y * (*d - dot));
    }
}

/// Mean categorical cross-entropy of `softmax(logits)` against `y` (rows of
/// `classes`), how many rows have their first largest logit where `y` has its
/// first largest value, and the loss's gradient with respect to the logits:
/// `(softmax · Σy − y) / N` per row.
fn softmax_cross_entropy(logits: &[f32], y: &[f32], classes: usize) -> (f64, usize, Vec<f32>) {
    let n = logits.len() / classes;
    let argmax =
        |row: &[f32]| (1..row.len()).fold(0, |best, i| if row[best] < row[i] { i } else { best });
    let (mut loss, mut correct) = (0f64, 0);
    let mut grad = vec![0f32; logits.len()];
    for ((z, t), g) in logits
        .chunks_exact(classes)
        .zip(y.chunks_exact(classes))
        .zip(grad.chunks_exact_mut(classes))
    {
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + z.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
        let total: f32 = t.iter().sum();
        for ((g, &z), &t) in g.iter_mut().zip(z).zip(t) {
            loss += (t * (lse - z)) as f64;
            *g = ((z - lse).exp() * total - t) / n as f32;
        }
        correct += (argmax(z) == argmax(t)) as usize;
    }
    (loss / n as f64, correct, grad)
}

#[cfg(test)]
mod tests {
    use crate::model::{layers::*, Layer, Sequential};
    use candle_core::{DType, Device, Tensor};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `n` random images `[n, 3, side, side]` and one-hot labels over `classes`.
    fn batch(n: usize, side: usize, classes: usize) -> (Tensor, Tensor) {
        let mut rng = StdRng::seed_from_u64(11);
        let x: Vec<f32> = (0..n * 3 * side * side).map(|_| rng.random()).collect();
        let mut y = vec![0f32; n * classes];
        for row in y.chunks_exact_mut(classes) {
            row[rng.random_range(0..classes)] = 1.0;
        }
        let dev = Device::Cpu;
        (
            Tensor::from_vec(x, (n, 3, side, side), &dev).unwrap(),
            Tensor::from_vec(y, (n, classes), &dev).unwrap(),
        )
    }

    /// The f32 step here against candle's autograd in f64 on the same
    /// weights and the same dropout masks: loss, accuracy and every gradient.
    fn assert_matches_autograd(layers: &[Layer], side: usize, n: usize) {
        let build = || {
            let mut m = Sequential::on(&[3, side, side], 5, &Device::Cpu).unwrap();
            for l in layers {
                m.add(l.clone()).unwrap();
            }
            // Biases away from zero: a unit whose inputs are all zero then
            // does not sit exactly on the ReLU's kink, where candle's own
            // ReLU passes the gradient and Keras's (and this step's) do not.
            let mut rng = StdRng::seed_from_u64(3);
            for (name, var) in m.named_vars() {
                if name.ends_with("bias") {
                    let b: Vec<f32> = (0..var.elem_count())
                        .map(|_| rng.random_range(-0.1..0.1))
                        .collect();
                    var.set(&Tensor::from_vec(b, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                }
            }
            m
        };
        let (mut fast, mut reference) = (build(), build());
        reference.to_dtype(DType::F64).unwrap();
        assert!(super::applies(&fast) && !super::applies(&reference));
        let classes = fast.output_shape().unwrap().size();
        let (x, y) = batch(n, side, classes);
        let (loss, correct, grads) = fast.gradients(&x, &y).unwrap();
        let (x64, y64) = (
            x.to_dtype(DType::F64).unwrap(),
            y.to_dtype(DType::F64).unwrap(),
        );
        let (loss64, correct64, grads64) = reference.gradients(&x64, &y64).unwrap();
        assert!(
            (loss - loss64).abs() < 1e-5 * loss64.abs(),
            "loss {loss} vs {loss64}"
        );
        assert_eq!(correct, correct64);
        let names = fast.named_vars();
        assert_eq!(grads.len(), names.len());
        for ((g, g64), (name, var)) in grads.iter().zip(&grads64).zip(names) {
            let values = |t: &Option<Tensor>| -> Vec<f64> {
                let t = t.as_ref().unwrap().to_dtype(DType::F64).unwrap();
                t.flatten_all().unwrap().to_vec1().unwrap()
            };
            let (g, g64) = (values(g), values(g64));
            assert_eq!(g.len(), var.elem_count(), "{name}");
            let scale = g64.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{name} gets no gradient");
            for (i, (&a, &b)) in g.iter().zip(&g64).enumerate() {
                assert!(
                    (a - b).abs() <= 2e-5 * scale,
                    "{name}[{i}]: {a} here, {b} from autograd (largest {scale})"
                );
            }
        }
    }

    /// The article's layers (fused Conv + ReLU + pooling on the Winograd
    /// path, dropout, Dense + ReLU), on 18×18 images: the second pooling
    /// gets an odd 7×7 map.
    #[test]
    fn article_model_matches_autograd() {
        assert_matches_autograd(&crate::model::article_layers(10), 18, 6);
    }

    /// Every other way the stages can come: pooling the im2col path cannot
    /// fuse (few channels) and a 3×3 pool, inline activations, a linear
    /// activation, a softmax inside the model, a standalone ReLU.
    #[test]
    fn other_layer_combinations_match_autograd() {
        let inline_relu = Layer::Conv2D {
            filters: 6,
            kernel_size: 3,
            padding: crate::model::Padding::Same,
            activation: crate::model::Activation::Relu,
        };
        let layers = [
            inline_relu,
            max_pooling2d(2),
            conv2d(5, 1),
            relu(),
            max_pooling2d(3),
            Layer::Activation {
                activation: crate::model::Activation::Linear,
            },
            dropout(0.3),
            flatten(),
            Layer::Dense {
                units: 12,
                activation: crate::model::Activation::Relu,
            },
            dense(8),
            softmax(),
            dense(4),
            relu(),
            dense(3),
            softmax(),
        ];
        assert_matches_autograd(&layers, 13, 5);
    }
}
