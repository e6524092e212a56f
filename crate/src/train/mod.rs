//! Training and evaluation with Keras's semantics: `compile`, `fit` (batches,
//! epochs, validation, shuffling, progress, callbacks), `evaluate` and
//! `predict`.
//!
//! f32 on the CPU trains through the plan's own backward ([`step`]);
//! every other device and dtype through candle's autograd over the plan's
//! portable forward.

pub mod callbacks;
mod progress;
pub(crate) mod step;

pub use crate::data::augment;
pub use crate::history::epoch_line;
pub use crate::optim::{Adam, Optimizer};
pub use callbacks::{
    BackupAndRestore, BatchLogs, CSVLogger, Callback, Callbacks, EarlyStopping,
    LearningRateScheduler, Logs, Mode, ModelCheckpoint, ReduceLROnPlateau, RunIdentity, RunState,
    StopFile, TerminateOnNaN,
};

use crate::data::split_sizes;
use crate::history::{EpochMetrics, History};
use crate::model::Sequential;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, D};
use progress::Progress;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::time::Instant;

/// The arguments of Keras's `fit`; `Fit::default()` has Keras's defaults.
pub struct Fit {
    pub batch_size: usize,
    /// The epoch training ends with (with `initial_epoch`, not how many it runs).
    pub epochs: usize,
    /// Keras's `verbose`: 0 silent, 1 the progress within each epoch (the
    /// default: Keras's "auto"), 2 one line per epoch.
    pub verbose: u8,
    /// Called as training goes, in order, after the two `fit` adds itself:
    /// `TerminateOnNaN` (unless given one) and `BackupAndRestore` (with
    /// `backup_dir`). `vec![EarlyStopping::new("val_loss").patience(3).into()]`.
    pub callbacks: Vec<Box<dyn Callback>>,
    /// The last fraction of the samples, taken before shuffling, used to validate.
    pub validation_split: f64,
    /// Images and one-hot labels to validate on, instead of the split.
    pub validation_data: Option<(Tensor, Tensor)>,
    pub shuffle: bool,
    /// The epoch to start after: epochs `initial_epoch + 1 ..= epochs` run
    /// (to resume an earlier run; its History holds those only, as Keras's).
    pub initial_epoch: usize,
    /// Random crops (zero padding 4) and horizontal flips of each training
    /// batch. Off by default: the article trains on the images as they are.
    pub augment: bool,
    /// Keras's `CategoricalCrossentropy(label_smoothing=…)`: training
    /// targets `y·(1 − s) + s/classes`, so that the model is not pushed
    /// towards certainty. Only the training batches: the validation
    /// metrics (and `evaluate`) score against the true labels, so that
    /// runs with and without it compare. 0 (the default) is off.
    pub label_smoothing: f64,
    /// Keras's `BackupAndRestore`: a folder where each epoch ends with an
    /// atomic backup, from which the next `fit` of the same run carries on
    /// after the kernel died or was interrupted (at most one epoch lost).
    /// It is kept when `fit` completes (a rerun then trains nothing):
    /// remove it with `BackupAndRestore::remove` once the model is saved.
    ///
    /// It also holds the safe stop ([`StopFile`]): while the file `STOP`
    /// is in this folder, training ends after the current epoch, and a
    /// rerun (after the kernel was killed) restores the backup and trains
    /// no further. Delete `STOP` to train on.
    pub backup_dir: Option<std::path::PathBuf>,
}

impl Default for Fit {
    fn default() -> Self {
        Self {
            batch_size: 32,
            epochs: 1,
            verbose: 1,
            callbacks: Vec::new(),
            validation_split: 0.0,
            validation_data: None,
            shuffle: true,
            initial_epoch: 0,
            augment: false,
            label_smoothing: 0.0,
            backup_dir: None,
        }
    }
}

impl std::fmt::Debug for Fit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fit")
            .field("batch_size", &self.batch_size)
            .field("epochs", &self.epochs)
            .field("verbose", &self.verbose)
            .field("callbacks", &self.callbacks.len())
            .field("validation_split", &self.validation_split)
            .field("validation_data", &self.validation_data.is_some())
            .field("shuffle", &self.shuffle)
            .field("initial_epoch", &self.initial_epoch)
            .field("augment", &self.augment)
            .field("label_smoothing", &self.label_smoothing)
            .field("backup_dir", &self.backup_dir)
            .finish()
    }
}

/// Keras's batch size of `evaluate` and `predict` when none is given.
pub const INFERENCE_BATCH_SIZE: usize = 32;

/// What `evaluate` returns: Keras's `[loss, accuracy]`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
    pub fn compile(&mut self, optimizer: impl Optimizer + 'static) -> Result<()> {
        self.check_loss_fits()?;
        optimizer.check()?;
        self.optimizer = Some(Box::new(optimizer));
        Ok(())
    }

    /// Categorical cross-entropy needs class probabilities: one softmax
    /// over a flat output `(None, classes)`.
    fn check_loss_fits(&self) -> Result<()> {
        ensure!(
            self.plan.softmax,
            "categorical cross-entropy needs class probabilities: end the model with a softmax (layers::softmax())"
        );
        self.check_flat_output()
    }

    /// The model's output must be one vector per image.
    fn check_flat_output(&self) -> Result<()> {
        let out = self.output_shape()?;
        ensure!(
            matches!(out, crate::model::Shape::Flat(_)),
            "the model outputs an image {out} per input, not a vector of class scores (None, classes): add flatten() before its last Dense layer"
        );
        Ok(())
    }

    /// How many updates the optimizer has applied (Keras's `optimizer.iterations`).
    pub fn optimizer_iterations(&self) -> u64 {
        self.optimizer.as_ref().map_or(0, |o| o.iterations())
    }

    /// The optimizer's learning rate: the rate of its next update (Keras's
    /// `model.optimizer.learning_rate`).
    pub fn learning_rate(&self) -> Result<f64> {
        Ok(self
            .optimizer
            .as_ref()
            .context("compile() the model first")?
            .learning_rate())
    }

    /// Sets a constant learning rate (an error when it is a schedule).
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        self.optimizer
            .as_mut()
            .context("compile() the model first")?
            .set_learning_rate(lr)
    }

    /// Keras's `fit`: trains on `x` (`[N, C, H, W]`) and one-hot `y`
    /// (`[N, classes]`) and returns the history. Everything is checked
    /// before the first epoch: the arguments, the arrays, and the
    /// callbacks against the names the epochs will log.
    pub fn fit(&mut self, x: &Tensor, y: &Tensor, mut args: Fit) -> Result<History> {
        let (train, val) = self.fit_data(x, y, &args)?;
        let given = std::mem::take(&mut args.callbacks);
        let mut callbacks = fit_callbacks(&args, given, val.is_some())?;
        let mut run = self.run_state(&args, &train, &callbacks)?;
        let steps = run.train_samples.div_ceil(args.batch_size);
        callbacks.on_train_begin(self, &mut run)?;
        while run.epoch < args.epochs && !run.stop_training {
            let epoch = run.epoch + 1;
            let start = Instant::now();
            if args.verbose > 0 {
                println!("Epoch {epoch}/{}", args.epochs);
            }
            callbacks.on_epoch_begin(self, epoch)?;
            let mut progress = (args.verbose == 1).then(|| Progress::new(steps));
            let (loss, acc) =
                self.train_epoch(&train, &args, epoch, &mut callbacks, progress.as_mut())?;
            let val = match &val {
                Some((xv, yv)) => Some(self.evaluate_on_device(xv, yv, args.batch_size)?),
                None => None,
            };
            let metrics = EpochMetrics {
                loss,
                acc,
                val: val.map(|s| (s.loss, s.accuracy)),
                learning_rate: self.learning_rate()?,
                seconds: start.elapsed().as_secs_f64(),
            };
            run.history.push(metrics);
            match (progress, args.verbose) {
                (Some(mut p), _) => {
                    p.finish(&metrics);
                    // The learning curve so far, while the plot must wait
                    // for the cell's end (evcxr sends pictures only then).
                    let watched = if val.is_some() { "val_loss" } else { "loss" };
                    let curve = run.history.sparkline(watched, 50);
                    if let (Some(curve), 2..) = (curve, run.history.epochs()) {
                        println!("  {curve}");
                    }
                }
                (None, 2) => println!("{}", epoch_line(steps, &metrics)),
                _ => {}
            }
            let _ = std::io::stdout().flush();
            run.epoch = epoch;
            // A fresh generator per epoch, seeded from the last, so that a run
            // resumed from a backup continues exactly as it would have.
            run.rng_seed = self.rng.random();
            self.rng = StdRng::seed_from_u64(run.rng_seed);
            callbacks.on_epoch_end(self, epoch, &Logs::of(&metrics), &mut run)?;
        }
        callbacks.on_train_end(self, &run)?;
        Ok(run.history)
    }

    /// The run as the callbacks first see it.
    fn run_state(
        &self,
        args: &Fit,
        train: &(Tensor, Tensor),
        callbacks: &Callbacks,
    ) -> Result<RunState> {
        let identity = match callbacks.has::<BackupAndRestore>() {
            // Hashing the data costs a pass over it: only for backups.
            true => RunIdentity {
                epochs: args.epochs,
                augment: args.augment,
                shuffle: args.shuffle,
                label_smoothing: args.label_smoothing,
                data: callbacks::fingerprint(&[&train.0, &train.1])?,
                initial_weights: callbacks::fingerprint(
                    &self
                        .params
                        .iter()
                        .map(|p| p.var.as_tensor())
                        .collect::<Vec<_>>(),
                )?,
            },
            false => RunIdentity::default(),
        };
        Ok(RunState {
            history: History::default(),
            epoch: args.initial_epoch,
            epochs: args.epochs,
            stop_training: false,
            rng_seed: 0,
            train_samples: train.0.dim(0)?,
            batch_size: args.batch_size,
            verbose: args.verbose,
            identity,
        })
    }

    /// `fit`'s checks and data: compiles with Adam if not compiled, checks
    /// the arguments and the arrays, and splits off the validation set (the
    /// last fraction, before shuffling) on the model's device.
    #[allow(clippy::type_complexity)]
    fn fit_data(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        args: &Fit,
    ) -> Result<((Tensor, Tensor), Option<(Tensor, Tensor)>)> {
        if self.optimizer.is_none() {
            self.compile(Adam::default())?;
        }
        // Layers may have been added since compile().
        self.check_loss_fits()?;
        ensure!(args.batch_size > 0, "batch_size must be at least 1");
        ensure!(
            (0.0..1.0).contains(&args.label_smoothing),
            "label_smoothing must be at least 0 and below 1 (0.1 is usual), got {}",
            args.label_smoothing
        );
        ensure!(
            args.verbose <= 2,
            "verbose must be 0 (silent), 1 (progress within each epoch) or 2 (one line per epoch), got {}",
            args.verbose
        );
        self.architecture.check_memory(args.batch_size, true)?;
        let n = self.check_inputs(x, Some(y))?;
        check_finite("x", x)?;
        check_finite("y", y)?;
        // Keras: validation_data, when given, overrides validation_split.
        let split = match args.validation_data {
            Some(_) => 0.0,
            None => args.validation_split,
        };
        let (n_train, n_val) = split_sizes(n, split)?;
        ensure!(
            n_train > 0,
            "validation_split {} leaves no training samples out of {n}",
            args.validation_split
        );
        // Every batch size the epochs will have: the full one and the last.
        for b in [args.batch_size.min(n_train), n_train % args.batch_size] {
            if b > 0 {
                self.architecture.check_training_batch(b).with_context(|| {
                    format!(
                        "{n_train} training samples in batches of {}",
                        args.batch_size
                    )
                })?;
            }
        }
        // Keep the data on the model's device so that a batch is a gather there.
        let x = x.to_device(&self.device)?;
        let y = y.to_device(&self.device)?;
        let train = (x.narrow(0, 0, n_train)?, y.narrow(0, 0, n_train)?);
        let val = match (&args.validation_data, n_val) {
            (Some((xv, yv)), _) => {
                self.check_inputs(xv, Some(yv))
                    .context("in validation_data")?;
                check_finite("validation_data's x", xv)?;
                check_finite("validation_data's y", yv)?;
                Some((xv.to_device(&self.device)?, yv.to_device(&self.device)?))
            }
            (None, 0) => None,
            (None, _) => Some((x.narrow(0, n_train, n_val)?, y.narrow(0, n_train, n_val)?)),
        };
        self.renew_vars()?;
        if let (Some((xv, _)), 1..) = (&val, args.verbose) {
            println!(
                "Train on {n_train} samples, validate on {} samples",
                xv.dim(0)?
            );
        }
        Ok((train, val))
    }

    /// One pass over the training data in shuffled batches: the epoch's
    /// mean loss and accuracy.
    fn train_epoch(
        &mut self,
        (x, y): &(Tensor, Tensor),
        args: &Fit,
        epoch: usize,
        callbacks: &mut Callbacks,
        mut progress: Option<&mut Progress>,
    ) -> Result<(f64, f64)> {
        let mut order: Vec<u32> = (0..x.dim(0)? as u32).collect();
        if args.shuffle {
            order.shuffle(&mut self.rng);
        }
        let mut totals = Totals::default();
        for (b, batch) in order.chunks(args.batch_size).enumerate() {
            let idx = Tensor::from_slice(batch, batch.len(), &self.device)?;
            let mut xb = x.index_select(&idx, 0)?;
            if args.augment {
                xb = augment(&xb, 4, &mut self.rng)?;
            }
            let mut yb = y.index_select(&idx, 0)?;
            if args.label_smoothing > 0.0 {
                let s = args.label_smoothing;
                yb = ((yb * (1.0 - s))? + s / y.dim(1)? as f64)?; // [b, classes]
            }
            let logs = self.train_step(&xb, &yb)?;
            callbacks.on_batch_end(self, epoch, b, &logs)?;
            totals.add(logs.loss, logs.correct, batch.len());
            if let Some(p) = progress.as_deref_mut() {
                p.update(b + 1, totals.loss(), totals.accuracy());
            }
        }
        Ok((totals.loss(), totals.accuracy()))
    }

    /// Keras's `train_on_batch`: forward, loss, backward and one optimizer
    /// update on a batch already on the model's device; returns the batch's
    /// mean loss and how many it classified correctly. Inputs that are not
    /// finite are refused; the update is skipped when the loss is not
    /// finite, and refused (an error) when a gradient is not.
    pub fn train_on_batch(&mut self, x: &Tensor, y: &Tensor) -> Result<(f64, usize)> {
        self.check_inputs(x, Some(y))?;
        self.architecture.check_memory(x.dim(0)?, true)?;
        self.architecture.check_training_batch(x.dim(0)?)?;
        check_finite("x", x)?;
        check_finite("y", y)?;
        self.renew_vars()?;
        let logs = self.train_step(x, y)?;
        match logs.skipped {
            Some(why) => bail!("{why}: the update was skipped, the weights are unchanged"),
            None => Ok((logs.loss, logs.correct)),
        }
    }

    /// `train_on_batch` without the checks, for `fit`'s loop: no update when
    /// the loss or a gradient is not finite (the logs say why).
    fn train_step(&mut self, x: &Tensor, y: &Tensor) -> Result<BatchLogs> {
        let step::Gradients {
            loss,
            correct,
            grads,
            updates: moving,
        } = self.gradients(x, y)?;
        let mut logs = BatchLogs {
            loss,
            correct,
            size: x.dim(0)?,
            skipped: None,
        };
        if !loss.is_finite() {
            return Ok(logs);
        }
        for (p, g) in self.params.iter().zip(&grads) {
            let (bad, _) = match g {
                Some(g) => crate::model::params::non_finite(g)?,
                None => (0, None),
            };
            if bad > 0 {
                logs.skipped = Some(format!(
                    "the gradient of {} has {bad} NaN or infinite values (the loss was still {loss:.4})",
                    p.name
                ));
                return Ok(logs);
            }
        }
        let trainable: Vec<_> = self
            .params
            .iter()
            .zip(&grads)
            .filter(|(p, _)| p.trainable)
            .map(|(p, g)| (p.name.as_str(), &p.var, g.as_ref()))
            .collect();
        self.optimizer
            .as_mut()
            .context("compile() the model first")?
            .update(&trainable)?;
        // The moving statistics, with the update it belongs to.
        for (i, value) in moving {
            let var = &self.params.at(i).var;
            var.set(&value.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(logs)
    }

    /// The batch's mean loss (dropout active), how many it classified right,
    /// and the loss's gradient of every parameter in the model's order (none
    /// when the loss is not finite). f32 on the CPU runs the plan's own
    /// backward pass ([`step`]); everything else candle's autograd.
    fn gradients(&mut self, x: &Tensor, y: &Tensor) -> Result<step::Gradients> {
        if self.runs_on_cpu_f32() {
            return step::gradients(self, x, y);
        }
        let (logits, updates) = self.forward_training(x)?;
        let loss = cross_entropy(&logits, y)?;
        let loss_value = scalar(&loss)?;
        let correct = count_correct(&logits, y)?;
        if !loss_value.is_finite() {
            return Ok(step::Gradients {
                loss: loss_value,
                correct,
                grads: vec![],
                updates: vec![],
            });
        }
        let grads = loss.backward()?;
        let grads = self
            .params
            .iter()
            // Gradients can carry the op that made them, and with it the
            // whole forward graph: detached, the moments keep none of it alive.
            .map(|p| grads.get(p.var.as_tensor()).map(|g| g.detach()))
            .collect();
        Ok(step::Gradients {
            loss: loss_value,
            correct,
            grads,
            updates,
        })
    }

    /// Keras's `evaluate`: mean categorical cross-entropy and accuracy, in
    /// batches of Keras's 32.
    pub fn evaluate(&mut self, x: &Tensor, y: &Tensor) -> Result<Score> {
        self.evaluate_with(x, y, INFERENCE_BATCH_SIZE)
    }

    /// `evaluate` in batches of `batch_size` (Keras's `batch_size=`): the
    /// same score, computed with more or less memory at a time.
    pub fn evaluate_with(&mut self, x: &Tensor, y: &Tensor, batch_size: usize) -> Result<Score> {
        ensure!(batch_size > 0, "batch_size must be at least 1");
        let n = self.check_inputs(x, Some(y))?;
        self.architecture.check_memory(n.min(batch_size), false)?;
        let (x, y) = (x.to_device(&self.device)?, y.to_device(&self.device)?);
        self.evaluate_on_device(&x, &y, batch_size)
    }

    fn evaluate_on_device(&mut self, x: &Tensor, y: &Tensor, batch_size: usize) -> Result<Score> {
        let n = x.dim(0)?;
        let mut totals = Totals::default();
        for start in (0..n).step_by(batch_size) {
            let len = batch_size.min(n - start);
            let logits = self.infer_logits(&x.narrow(0, start, len)?)?;
            let yb = y.narrow(0, start, len)?;
            let loss = scalar(&cross_entropy(&logits, &yb)?)?;
            totals.add(loss, count_correct(&logits, &yb)?, len);
        }
        Ok(Score {
            loss: totals.loss(),
            accuracy: totals.accuracy(),
        })
    }

    /// Keras's `predict`: class probabilities `[N, classes]`, on the CPU, in
    /// batches of Keras's 32.
    pub fn predict(&mut self, x: &Tensor) -> Result<Tensor> {
        self.predict_with(x, INFERENCE_BATCH_SIZE)
    }

    /// `predict` in batches of `batch_size` (Keras's `batch_size=`).
    pub fn predict_with(&mut self, x: &Tensor, batch_size: usize) -> Result<Tensor> {
        ensure!(batch_size > 0, "batch_size must be at least 1");
        let n = self.check_inputs(x, None)?;
        self.architecture.check_memory(n.min(batch_size), false)?;
        let mut out = Vec::new();
        for start in (0..n).step_by(batch_size) {
            let xb = x
                .narrow(0, start, batch_size.min(n - start))?
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

    /// Checks `x` (and `y`) against the model and returns the sample count.
    fn check_inputs(&self, x: &Tensor, y: Option<&Tensor>) -> Result<usize> {
        self.check_flat_output()?;
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

/// `fit`'s callbacks: `TerminateOnNaN` (unless the caller passes one),
/// `BackupAndRestore` with `backup_dir`, then the caller's, in order;
/// checked against the names the epochs will log.
fn fit_callbacks(args: &Fit, given: Vec<Box<dyn Callback>>, validation: bool) -> Result<Callbacks> {
    let given = Callbacks(given);
    let mut all: Vec<Box<dyn Callback>> = Vec::new();
    if !given.has::<TerminateOnNaN>() {
        all.push(TerminateOnNaN::default().into());
    }
    if let Some(dir) = &args.backup_dir {
        ensure!(
            !given.has::<BackupAndRestore>(),
            "both backup_dir and a BackupAndRestore callback are given: pass one of them"
        );
        all.push(BackupAndRestore::new(dir).into());
        // After the restore, so that it knows the epoch the run is at.
        all.push(StopFile::new(StopFile::in_dir(dir)).into());
    }
    all.extend(given.0);
    let all = Callbacks(all);
    let names = Logs::names_for(validation);
    all.check(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(all)
}

/// Refuses arrays with NaN or infinite values, which would corrupt the
/// weights in the first step (a NaN pixel survives the ReLU as 0 and puts
/// NaN into the gradients).
fn check_finite(what: &str, t: &Tensor) -> Result<()> {
    let (bad, first) = crate::model::params::non_finite(t)?;
    if bad == 0 {
        return Ok(());
    }
    let per_row = t.elem_count() / t.dim(0)?.max(1);
    let at = first.map_or(String::new(), |i| {
        format!(" (the first in row {})", i / per_row)
    });
    bail!("{what} holds {bad} NaN or infinite values{at}: training on them would corrupt the weights; fix or drop those rows first")
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
