//! Training and evaluation with Keras's semantics: `compile`, `fit` (batches,
//! epochs, the validation split, shuffling, one log line per epoch),
//! `evaluate` and `predict`.

mod backprop;

use crate::data::split_sizes;
use crate::history::{EpochMetrics, History};
use crate::kernels::AdamStep;
use crate::model::Sequential;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::time::Instant;

/// Keras's Adam. candle-nn's `AdamW` differs in its defaults (eps 1e-8,
/// weight decay 0.01) and in where epsilon enters, so this follows Keras's
/// update exactly: `w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`.
#[derive(Clone, Debug)]
pub struct Adam {
    pub learning_rate: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    pub(crate) step: u64,
    pub(crate) moments: Vec<(Tensor, Tensor)>,
}

impl Default for Adam {
    fn default() -> Self {
        Self::new(1e-3)
    }
}

impl Adam {
    /// Adam with Keras's defaults (betas 0.9 / 0.999, epsilon 1e-7).
    pub fn new(learning_rate: f64) -> Self {
        Self {
            learning_rate,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            step: 0,
            moments: vec![],
        }
    }

    /// Forgets the moments and the step count, keeping the settings.
    pub(crate) fn reset(&mut self) {
        self.step = 0;
        self.moments.clear();
    }

    /// Number of updates applied so far.
    pub fn iterations(&self) -> u64 {
        self.step
    }

    /// One update of `vars` from their gradients (`None`: no gradient, no update).
    fn step(&mut self, vars: &[&Var], grads: &[Option<Tensor>]) -> Result<()> {
        if self.moments.is_empty() {
            self.moments = vars
                .iter()
                .map(|v| Ok((v.zeros_like()?, v.zeros_like()?)))
                .collect::<Result<_>>()?;
        }
        self.step += 1;
        let t = self.step as i32;
        let alpha =
            self.learning_rate * (1.0 - self.beta_2.powi(t)).sqrt() / (1.0 - self.beta_1.powi(t));
        for ((var, (m, v)), g) in vars.iter().zip(self.moments.iter_mut()).zip(grads) {
            let Some(g) = g.as_ref() else { continue };
            if crate::kernels::adam_runs_on(var.as_tensor()) {
                let c = AdamStep {
                    beta_1: self.beta_1,
                    beta_2: self.beta_2,
                    alpha,
                    epsilon: self.epsilon,
                };
                crate::kernels::adam_update(var.as_tensor(), m, v, g, c)?;
                continue;
            }
            *m = ((&*m * self.beta_1)? + (g * (1.0 - self.beta_1))?)?;
            *v = ((&*v * self.beta_2)? + (g.sqr()? * (1.0 - self.beta_2))?)?;
            let update = (m.clone() / (v.sqrt()? + self.epsilon)?)?;
            var.set(&(var.as_tensor() - (update * alpha)?)?)?;
        }
        Ok(())
    }
}

/// The arguments of Keras's `fit`; `Fit::default()` has Keras's defaults.
#[derive(Clone, Debug)]
pub struct Fit {
    pub batch_size: usize,
    pub epochs: usize,
    /// The last fraction of the samples, taken before shuffling, used to validate.
    pub validation_split: f64,
    pub shuffle: bool,
    /// Print one line per epoch (Keras's `verbose=2`).
    pub verbose: bool,
    /// Random crops (zero padding 4) and horizontal flips of each training
    /// batch. Off by default: the article trains on the images as they are.
    pub augment: bool,
    /// Keras's `BackupAndRestore`: a folder where each epoch ends with an
    /// atomic backup, from which the next `fit` carries on after the kernel
    /// died or was interrupted (at most one epoch lost). Removed when `fit`
    /// completes.
    pub backup_dir: Option<std::path::PathBuf>,
}

impl Default for Fit {
    fn default() -> Self {
        Self {
            batch_size: 32,
            epochs: 1,
            validation_split: 0.0,
            shuffle: true,
            verbose: true,
            augment: false,
            backup_dir: None,
        }
    }
}

/// What `evaluate` returns: Keras's `[loss, accuracy]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    pub loss: f64,
    pub accuracy: f64,
}

/// Sums of one pass over some batches.
#[derive(Default)]
struct Totals {
    loss: f64,
    correct: usize,
    seen: usize,
}

impl Totals {
    fn add(&mut self, loss: f64, correct: usize, n: usize) {
        self.loss += loss * n as f64;
        self.correct += correct;
        self.seen += n;
    }
    fn loss(&self) -> f64 {
        self.loss / self.seen.max(1) as f64
    }
    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
    }
}

impl Sequential {
    /// Keras's `compile`: the optimizer. The loss is categorical
    /// cross-entropy and the metric accuracy, as in the article, so the model
    /// must end in a softmax.
    pub fn compile(&mut self, optimizer: Adam) -> Result<()> {
        ensure!(
            self.architecture.ends_in_softmax(),
            "categorical cross-entropy needs class probabilities: end the model with a softmax (layers::softmax())"
        );
        self.optimizer = Some(optimizer);
        Ok(())
    }

    /// How many updates the optimizer has applied (Keras's `optimizer.iterations`).
    pub fn optimizer_iterations(&self) -> u64 {
        self.optimizer.as_ref().map_or(0, |o| o.iterations())
    }

    /// Keras's `fit`: trains on `x` (`[N, C, H, W]`) and one-hot `y`
    /// (`[N, classes]`), printing one line per epoch, and returns the history.
    pub fn fit(&mut self, x: &Tensor, y: &Tensor, args: Fit) -> Result<History> {
        if self.optimizer.is_none() {
            self.compile(Adam::default())?;
        }
        ensure!(args.batch_size > 0, "batch_size must be at least 1");
        let n = self.check_inputs(x, Some(y))?;
        let (n_train, n_val) = split_sizes(n, args.validation_split)?;
        ensure!(
            n_train > 0,
            "validation_split {} leaves no training samples out of {n}",
            args.validation_split
        );
        // Keep the data on the model's device so that a batch is a gather there.
        let x = x.to_device(&self.device)?;
        let y = y.to_device(&self.device)?;
        let (x_train, y_train) = (x.narrow(0, 0, n_train)?, y.narrow(0, 0, n_train)?);
        let val = match n_val {
            0 => None,
            _ => Some((x.narrow(0, n_train, n_val)?, y.narrow(0, n_train, n_val)?)),
        };
        let steps = n_train.div_ceil(args.batch_size);
        self.renew_vars()?;
        if args.verbose && n_val > 0 {
            println!("Train on {n_train} samples, validate on {n_val} samples");
        }

        let mut history = History::default();
        if let Some(dir) = &args.backup_dir {
            if let Some(state) = self.read_backup(dir, n_train, args.batch_size)? {
                if args.verbose {
                    println!(
                        "Restored the backup in {}: {} epochs done",
                        dir.display(),
                        state.epoch
                    );
                }
                history = state.history;
                self.rng = StdRng::seed_from_u64(state.rng_seed);
            }
        }
        for epoch in history.epochs() + 1..=args.epochs {
            let start = Instant::now();
            let last_good = self.weight_values()?;
            let mut order: Vec<u32> = (0..n_train as u32).collect();
            if args.shuffle {
                order.shuffle(&mut self.rng);
            }
            let mut totals = Totals::default();
            for batch in order.chunks(args.batch_size) {
                let idx = Tensor::from_slice(batch, batch.len(), &self.device)?;
                let mut xb = x_train.index_select(&idx, 0)?;
                if args.augment {
                    xb = augment(&xb, 4, &mut self.rng)?;
                }
                let yb = y_train.index_select(&idx, 0)?;
                let (loss, correct) = self.train_step(&xb, &yb)?;
                if !loss.is_finite() {
                    // Keras's TerminateOnNaN, but keeping the last good weights.
                    self.set_weight_values(&last_good)?;
                    bail!(
                        "the loss became {loss} in epoch {epoch} after {} batches: training stopped, and the weights are back to those of the end of epoch {}. Try a smaller learning rate, or check the inputs for NaN",
                        totals.seen / args.batch_size,
                        epoch - 1
                    );
                }
                totals.add(loss, correct, batch.len());
            }
            let val = match &val {
                Some((xv, yv)) => {
                    let s = self.evaluate_on_device(xv, yv, args.batch_size)?;
                    Some((s.loss, s.accuracy))
                }
                None => None,
            };
            let metrics = EpochMetrics {
                loss: totals.loss(),
                acc: totals.accuracy(),
                val,
                seconds: start.elapsed().as_secs_f64(),
            };
            if args.verbose {
                println!("Epoch {epoch}/{}", args.epochs);
                println!("{}", epoch_line(steps, &metrics));
                let _ = std::io::stdout().flush();
            }
            history.push(metrics);
            // A fresh generator per epoch, seeded from the last, so that a run
            // resumed from a backup continues exactly as it would have.
            let rng_seed = self.rng.random();
            self.rng = StdRng::seed_from_u64(rng_seed);
            if let Some(dir) = &args.backup_dir {
                let state = crate::persist::BackupState {
                    epoch,
                    history: history.clone(),
                    rng_seed,
                    adam_step: self.optimizer_iterations(),
                    train_samples: n_train,
                    batch_size: args.batch_size,
                    architecture: self.architecture.clone(),
                };
                self.write_backup(dir, &state)?;
            }
        }
        if let Some(dir) = &args.backup_dir {
            let _ = std::fs::remove_file(dir.join(crate::persist::BACKUP_FILE));
        }
        Ok(history)
    }

    /// Keras's `train_on_batch`: forward, loss, backward and one Adam update
    /// on a batch already on the model's device; returns the batch's mean loss
    /// and how many it classified correctly. The update is skipped when the
    /// loss is not finite.
    pub fn train_on_batch(&mut self, x: &Tensor, y: &Tensor) -> Result<(f64, usize)> {
        self.renew_vars()?;
        self.train_step(x, y)
    }

    /// `train_on_batch` without renewing the variables, for `fit`'s loop.
    fn train_step(&mut self, x: &Tensor, y: &Tensor) -> Result<(f64, usize)> {
        let (loss, correct, grads) = self.gradients(x, y)?;
        if !loss.is_finite() {
            return Ok((loss, correct));
        }
        let vars: Vec<Var> = self
            .named_vars()
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect();
        let vars: Vec<&Var> = vars.iter().collect();
        self.optimizer
            .as_mut()
            .context("compile() the model first")?
            .step(&vars, &grads)?;
        Ok((loss, correct))
    }

    /// The batch's mean loss (dropout active), how many it classified right,
    /// and the loss's gradient of every weight in `named_vars` order (none
    /// when the loss is not finite). f32 on the CPU runs the crate's own
    /// backward pass ([`backprop`]); everything else candle's autograd.
    fn gradients(&mut self, x: &Tensor, y: &Tensor) -> Result<(f64, usize, Vec<Option<Tensor>>)> {
        if backprop::applies(self) {
            let g = backprop::gradients(self, x, y)?;
            return Ok((g.loss, g.correct, g.grads.into_iter().map(Some).collect()));
        }
        let logits = self.logits(x, true)?;
        let loss = cross_entropy(&logits, y)?;
        let loss_value = scalar(&loss)?;
        let correct = count_correct(&logits, y)?;
        if !loss_value.is_finite() {
            return Ok((loss_value, correct, vec![]));
        }
        let grads = loss.backward()?;
        let grads = self
            .named_vars()
            .into_iter()
            // Gradients can carry the op that made them, and with it the
            // whole forward graph: detached, the moments keep none of it alive.
            .map(|(_, v)| grads.get(v.as_tensor()).map(|g| g.detach()))
            .collect();
        Ok((loss_value, correct, grads))
    }

    /// Keras's `evaluate`: mean categorical cross-entropy and accuracy.
    pub fn evaluate(&mut self, x: &Tensor, y: &Tensor) -> Result<Score> {
        self.check_inputs(x, Some(y))?;
        let (x, y) = (x.to_device(&self.device)?, y.to_device(&self.device)?);
        self.evaluate_on_device(&x, &y, 128)
    }

    fn evaluate_on_device(&mut self, x: &Tensor, y: &Tensor, batch_size: usize) -> Result<Score> {
        let n = x.dim(0)?;
        let mut totals = Totals::default();
        for start in (0..n).step_by(batch_size) {
            let len = batch_size.min(n - start);
            let logits = self.logits(&x.narrow(0, start, len)?, false)?;
            let yb = y.narrow(0, start, len)?;
            let loss = scalar(&cross_entropy(&logits, &yb)?)?;
            totals.add(loss, count_correct(&logits, &yb)?, len);
        }
        Ok(Score {
            loss: totals.loss(),
            accuracy: totals.accuracy(),
        })
    }

    /// Keras's `predict`: class probabilities `[N, classes]`, on the CPU.
    pub fn predict(&mut self, x: &Tensor) -> Result<Tensor> {
        self.check_inputs(x, None)?;
        let n = x.dim(0)?;
        let mut out = Vec::new();
        for start in (0..n).step_by(128) {
            let xb = x
                .narrow(0, start, 128.min(n - start))?
                .to_device(&self.device)?;
            out.push(
                self.probabilities(&xb)?
                    .to_device(&candle_core::Device::Cpu)?,
            );
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    /// The most probable class of each image (`np.argmax(predict(x), axis=1)`).
    pub fn predict_classes(&mut self, x: &Tensor) -> Result<Vec<usize>> {
        let classes = self.predict(x)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        Ok(classes.into_iter().map(|c| c as usize).collect())
    }

    /// Copies of the current weights, in `named_vars` order.
    fn weight_values(&self) -> Result<Vec<Tensor>> {
        self.named_vars()
            .into_iter()
            .map(|(_, v)| Ok(v.as_tensor().copy()?))
            .collect()
    }

    fn set_weight_values(&self, values: &[Tensor]) -> Result<()> {
        for ((_, var), value) in self.named_vars().into_iter().zip(values) {
            var.set(value)?;
        }
        Ok(())
    }

    /// Checks `x` (and `y`) against the model and returns the sample count.
    fn check_inputs(&self, x: &Tensor, y: Option<&Tensor>) -> Result<usize> {
        let [c, h, w] = self.architecture.input_shape;
        let dims = x.dims();
        ensure!(
            dims.len() == 4 && dims[1..] == [c, h, w],
            "x has shape {dims:?}, the model takes [N, {c}, {h}, {w}] (images as channels, height, width)"
        );
        let dtype = self.dtype();
        ensure!(
            x.dtype() == dtype,
            "x must be {dtype:?} like the model (use Dataset::images_f32), got {:?}",
            x.dtype()
        );
        ensure!(dims[0] > 0, "x holds no images");
        if let Some(y) = y {
            let classes = self.output_shape()?.size();
            ensure!(
                y.dims() == [dims[0], classes],
                "y has shape {:?}, expected one-hot labels [{}, {classes}] (use to_categorical)",
                y.dims(),
                dims[0]
            );
            ensure!(
                y.dtype() == dtype,
                "y must be {dtype:?} one-hot labels like the model, got {:?}",
                y.dtype()
            );
        }
        Ok(dims[0])
    }
}

/// The standard CIFAR augmentation: each image shifted by up to `pad`
/// pixels each way (a random crop of the zero-padded image) and mirrored
/// left-right with probability 1/2.
pub fn augment(x: &Tensor, pad: usize, rng: &mut impl rand::Rng) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let src: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; src.len()];
    let pad = pad as i64;
    for i in 0..n {
        let dy = rng.random_range(-pad..=pad);
        let dx = rng.random_range(-pad..=pad);
        let flip = rng.random_bool(0.5);
        for ch in 0..c {
            let plane = (i * c + ch) * h * w;
            for y in 0..h {
                let sy = y as i64 + dy;
                if sy < 0 || sy >= h as i64 {
                    continue;
                }
                for x_ in 0..w {
                    let xx = if flip { w - 1 - x_ } else { x_ };
                    let sx = xx as i64 + dx;
                    if sx >= 0 && sx < w as i64 {
                        out[plane + y * w + x_] = src[plane + sy as usize * w + sx as usize];
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, (n, c, h, w), x.device())?.to_dtype(x.dtype())?)
}

/// Categorical cross-entropy of softmax(`logits`) against one-hot `y`,
/// averaged over the batch; computed through log-softmax for stability.
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok((y * log_p)?.sum(D::Minus1)?.neg()?.mean_all()?)
}

/// A scalar tensor's value, whatever its float type.
fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// How many rows have their largest logit at the one-hot label.
fn count_correct(logits: &Tensor, y: &Tensor) -> Result<usize> {
    let predicted = logits.argmax(D::Minus1)?;
    let truth = y.argmax(D::Minus1)?;
    Ok(predicted
        .eq(&truth)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize)
}

/// Keras's `verbose=2` line: `352/352 - 41s - loss: 0.9208 - acc: 0.6753 - val_loss: 0.8062 - val_acc: 0.7172`.
pub fn epoch_line(steps: usize, m: &EpochMetrics) -> String {
    let mut line = format!(
        "{steps}/{steps} - {:.0}s - loss: {:.4} - acc: {:.4}",
        m.seconds, m.loss, m.acc
    );
    if let Some((loss, acc)) = m.val {
        line += &format!(" - val_loss: {loss:.4} - val_acc: {acc:.4}");
    }
    line
}
