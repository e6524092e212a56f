//! The training step's forward and backward passes on the CPU in f32,
//! through the model's plan ([`crate::model::plan`]), without candle's
//! autograd.
//!
//! candle's autograd is generic: for every tensor of the graph it first
//! makes a zero tensor of the same size (on one thread) and then adds the
//! gradient to it, and every tensor op allocates its result. For the
//! article's model that is about 9 million values zero-filled and added a
//! step, outside the kernels that do the work. Here each step of the plan
//! runs its layer's CPU forward, keeping what its backward needs, and the
//! gradient goes back through one owned buffer, masked in place by the
//! ReLUs and the dropout masks. No gradient is computed that nothing
//! needs: the backward stops at the first step with parameters.
//!
//! Every other device and dtype (f64, which the gradient checks use) goes
//! through candle's autograd over the plan's portable forward; the tests
//! check that both give the same gradients.

use crate::layers::Run;
use crate::model::params::f32_data;
use crate::model::Sequential;
use anyhow::{ensure, Context, Result};
use candle_core::Tensor;

/// The loss of one batch, how many of its images the model classified
/// right, and the gradient of every parameter.
pub(crate) struct Gradients {
    pub loss: f64,
    pub correct: usize,
    /// By position in the model's parameters; empty when the loss is not
    /// finite (there is nothing to update with).
    pub grads: Vec<Option<Tensor>>,
    /// New values of non-trainable parameters (moving statistics), by
    /// position, to apply with the update.
    pub updates: Vec<(usize, Tensor)>,
}

/// Forward (dropout active), softmax cross-entropy against one-hot `y`, and
/// backward, for a batch `x` `[N, C, H, W]`; the model must end in a softmax.
pub(crate) fn gradients(model: &mut Sequential, x: &Tensor, y: &Tensor) -> Result<Gradients> {
    ensure!(
        model.plan.softmax,
        "categorical cross-entropy needs the model to end in a softmax"
    );
    let n = x.dim(0)?;
    // A narrowed or transposed batch is copied into one contiguous block.
    let (x, y) = (x.contiguous()?, y.contiguous()?);
    let (x_guard, y_guard) = (x.storage_and_layout(), y.storage_and_layout());
    let x = f32_data(&x_guard.0, x_guard.1)?;
    let y = f32_data(&y_guard.0, y_guard.1)?;
    let Sequential {
        plan, params, rng, ..
    } = model;
    let mut run = Run::new(true, rng);
    let (loss, correct, grads) = params.with_cpu_data(|data| {
        let trace = plan.cpu_forward(data, x, n, &mut run)?;
        let logits = trace.output(x);
        let classes = y.len() / n;
        ensure!(
            logits.len() == y.len(),
            "the model outputs {} values per image, the labels have {classes}",
            logits.len() / n
        );
        let (loss, correct, dy) = softmax_cross_entropy(logits, y, classes);
        if !loss.is_finite() {
            return Ok((loss, correct, vec![]));
        }
        Ok((loss, correct, plan.cpu_backward(data, &trace, x, n, dy)?))
    })?;
    let grads = grads
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let var = &params.at(i).var;
            g.map(|g| Ok(Tensor::from_vec(g, var.shape(), var.device())?))
                .transpose()
        })
        .collect::<Result<Vec<_>>>()
        .context("the step's gradients")?;
    Ok(Gradients {
        loss,
        correct,
        grads,
        updates: run.updates,
    })
}

/// Mean categorical cross-entropy of `softmax(logits)` against `y` (rows of
/// `classes`), how many rows have their first largest logit where `y` has its
/// first largest value, and the loss's gradient with respect to the logits:
/// `(softmax · Σy − y) / N` per row.
pub(crate) fn softmax_cross_entropy(
    logits: &[f32],
    y: &[f32],
    classes: usize,
) -> (f64, usize, Vec<f32>) {
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

/// Checks every layer kind's tests run: the CPU f32 paths against the
/// portable path and candle's autograd in f64.
#[cfg(test)]
pub(crate) mod check {
    use crate::model::{Layer, Sequential};
    use candle_core::{DType, Device, Tensor};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `n` random images `[n, 3, side, side]` and one-hot labels over `classes`.
    pub(crate) fn batch(n: usize, side: usize, classes: usize) -> (Tensor, Tensor) {
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

    /// Parameters that start at constants, set at random: biases and
    /// BatchNormalization's beta away from zero (a unit whose inputs are all
    /// zero then does not sit exactly on the ReLU's kink, where candle's own
    /// ReLU passes the gradient and Keras's, and this step's, do not),
    /// gamma around 1, moving statistics that are not the identity.
    pub(crate) fn randomize(m: &Sequential) {
        let mut rng = StdRng::seed_from_u64(3);
        for (name, var) in m.named_vars() {
            let range = match name.rsplit('.').next().unwrap() {
                "bias" | "beta" => -0.1..0.1,
                "gamma" => 0.5..1.5,
                "moving_mean" => -0.3..0.3,
                "moving_variance" => 0.2..2.0,
                _ => continue,
            };
            let b: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(range.clone()))
                .collect();
            var.set(&Tensor::from_vec(b, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }

    /// The f32 step here against candle's autograd in f64 on the same
    /// weights and the same dropout masks: loss, accuracy and every gradient.
    pub(crate) fn assert_matches_autograd(layers: &[Layer], side: usize, n: usize) {
        let build = || {
            let mut m = Sequential::on(&[3, side, side], 5, &Device::Cpu).unwrap();
            for l in layers {
                m.add(l.clone()).unwrap();
            }
            randomize(&m);
            m
        };
        let (mut fast, mut reference) = (build(), build());
        reference.to_dtype(DType::F64).unwrap();
        assert!(fast.runs_on_cpu_f32() && !reference.runs_on_cpu_f32());
        let classes = fast.output_shape().unwrap().size();
        let (x, y) = batch(n, side, classes);
        let g = fast.gradients(&x, &y).unwrap();
        let (loss, correct, grads) = (g.loss, g.correct, g.grads);
        let (x64, y64) = (
            x.to_dtype(DType::F64).unwrap(),
            y.to_dtype(DType::F64).unwrap(),
        );
        let g64 = reference.gradients(&x64, &y64).unwrap();
        let (loss64, correct64, grads64) = (g64.loss, g64.correct, g64.grads);
        // The moving statistics a training forward computes, alike.
        assert_eq!(g.updates.len(), g64.updates.len());
        for ((i, u), (i64, u64)) in g.updates.iter().zip(&g64.updates) {
            assert_eq!(i, i64);
            let (u, u64) = (
                u.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap(),
                u64.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap(),
            );
            for (a, b) in u.iter().zip(&u64) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "update of parameter {i}: {a} vs {b}"
                );
            }
        }
        assert!(
            (loss - loss64).abs() < 1e-5 * loss64.abs(),
            "loss {loss} vs {loss64}"
        );
        assert_eq!(correct, correct64);
        let names = fast.named_vars();
        assert_eq!(grads.len(), names.len());
        for ((g, g64), (name, var)) in grads.iter().zip(&grads64).zip(names) {
            if !fast.params.get(&name).unwrap().trainable {
                assert!(g.is_none() && g64.is_none(), "{name} is not trainable");
                continue;
            }
            let values = |t: &Option<Tensor>| -> Vec<f64> {
                let t = t.as_ref().unwrap().to_dtype(DType::F64).unwrap();
                t.flatten_all().unwrap().to_vec1().unwrap()
            };
            let (g, g64) = (values(g), values(g64));
            assert_eq!(g.len(), var.elem_count(), "{name}");
            let scale = g64.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{name} gets no gradient");
            // (f32 against f64 through several layers: 2e-5 held until
            // BatchNormalization's statistics became exact to f64 on its
            // f32 input; then one gradient of its check, over 5 samples of
            // 1×1 with a dead channel, came to 2.6e-5)
            for (i, (&a, &b)) in g.iter().zip(&g64).enumerate() {
                assert!(
                    (a - b).abs() <= 3e-5 * scale,
                    "{name}[{i}]: {a} here, {b} from autograd (largest {scale})"
                );
            }
        }
    }

    /// The plan's CPU inference against its portable forward (candle ops)
    /// on the same weights: the logits agree to f32 rounding.
    pub(crate) fn assert_inference_matches_portable(layers: &[Layer], side: usize, n: usize) {
        let mut m = Sequential::on(&[3, side, side], 5, &Device::Cpu).unwrap();
        for l in layers {
            m.add(l.clone()).unwrap();
        }
        randomize(&m);
        let (x, _) = batch(n, side, 2);
        let values = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let fast = values(m.infer_logits(&x).unwrap());
        let portable = values(m.logits(&x, false).unwrap());
        assert_eq!(fast.len(), portable.len());
        let scale = portable.iter().fold(0f32, |s, v| s.max(v.abs()));
        for (i, (a, b)) in fast.iter().zip(&portable).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * scale.max(1.0),
                "logit {i}: {a} on the CPU path, {b} portable"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check::{assert_inference_matches_portable, assert_matches_autograd};
    use crate::model::{layers::*, Layer};

    /// The article's layers (fused Conv + ReLU + pooling on the Winograd
    /// path, dropout, Dense + ReLU), on 18×18 images: the second pooling
    /// gets an odd 7×7 map.
    #[test]
    fn article_model_matches_autograd() {
        assert_matches_autograd(&crate::model::article_layers(10), 18, 6);
    }

    /// Inference through the plan's CPU path (what `evaluate` and
    /// `predict` run) gives the portable path's logits, on the article's
    /// model and on every other combination below.
    #[test]
    fn inference_matches_the_portable_path() {
        assert_inference_matches_portable(&crate::model::article_layers(10), 18, 6);
        assert_inference_matches_portable(&other_layers(), 13, 5);
    }

    /// Every other way the stages can come: pooling the im2col path cannot
    /// fuse (few channels) and a 3×3 pool, inline activations, a linear
    /// activation, a softmax inside the model, a standalone ReLU.
    #[test]
    fn other_layer_combinations_match_autograd() {
        assert_matches_autograd(&other_layers(), 13, 5);
    }

    fn other_layers() -> Vec<Layer> {
        let inline_relu: Layer = conv2d(6, 3)
            .same()
            .activation(crate::model::Activation::Relu)
            .into();
        let layers = [
            inline_relu,
            max_pooling2d(2).into(),
            conv2d(5, 1).into(),
            relu(),
            max_pooling2d(3).into(),
            crate::layers::ActivationLayer {
                activation: crate::model::Activation::Linear,
            }
            .into(),
            dropout(0.3),
            flatten(),
            crate::layers::Dense {
                units: 12,
                activation: crate::model::Activation::Relu,
                use_bias: true,
            }
            .into(),
            dense(8).into(),
            softmax(),
            dense(4).into(),
            relu(),
            dense(3).into(),
            softmax(),
        ];
        layers.to_vec()
    }
}
