//! Keras's callbacks: values passed to `fit` (`Fit::callbacks`) that it
//! calls at the start and end of the run, of each epoch and after each
//! batch. One callback, one file; the [`Monitor`] rule (which value is an
//! improvement) is shared by those that watch a metric.
//!
//! A callback of your own is a struct and `impl Callback`, e.g. in a
//! notebook cell; this one stops training once the accuracy passes 0.9:
//!
//! ```no_run
//! use cifar10_cnn::prelude::*;
//! use cifar10_cnn::train::{Logs, RunState};
//!
//! struct StopAt(f64);
//!
//! impl Callback for StopAt {
//!     fn on_epoch_end(
//!         &mut self,
//!         _model: &mut Sequential,
//!         epoch: usize,
//!         logs: &Logs,
//!         run: &mut RunState,
//!     ) -> Result<()> {
//!         if logs.get("accuracy").is_some_and(|a| a > self.0) {
//!             println!("epoch {epoch}: accuracy above {}, stopping", self.0);
//!             run.stop_training = true;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<()> {
//! # let x = Tensor::rand(0f32, 1f32, (64, 3, 32, 32), &Device::Cpu)?;
//! # let y = Tensor::zeros((64, 10), candle_core::DType::F32, &Device::Cpu)?; // one-hot labels
//! # let mut model = Sequential::article(&[3, 32, 32], 10, 0, &candle_core::Device::Cpu)?;
//! let history = model.fit(&x, &y, Fit {
//!     epochs: 50,
//!     callbacks: vec![StopAt(0.9).into(), EarlyStopping::new("loss").patience(3).into()],
//!     ..Fit::default()
//! })?;
//! # Ok(())
//! # }
//! ```

mod backup_and_restore;
mod csv_logger;
mod early_stopping;
mod learning_rate_scheduler;
mod model_checkpoint;
mod reduce_lr_on_plateau;
mod stop_file;
mod terminate_on_nan;

pub(crate) use backup_and_restore::fingerprint;
pub use backup_and_restore::BackupAndRestore;
pub use csv_logger::CSVLogger;
pub use early_stopping::EarlyStopping;
pub use learning_rate_scheduler::LearningRateScheduler;
pub use model_checkpoint::ModelCheckpoint;
pub use reduce_lr_on_plateau::ReduceLROnPlateau;
pub use stop_file::StopFile;
pub use terminate_on_nan::TerminateOnNaN;

use crate::history::{EpochMetrics, History};
use crate::model::Sequential;
use anyhow::{bail, Result};
use std::any::Any;

/// Where a run stands, as `fit` shows it to the callbacks.
pub struct RunState {
    /// Metrics of the epochs run so far (a run resumed with `initial_epoch`
    /// holds only those it ran, as in Keras).
    pub history: History,
    /// The last epoch done (1-based; `initial_epoch` before the first).
    pub epoch: usize,
    /// The epoch the run ends with (`Fit::epochs`).
    pub epochs: usize,
    /// Keras's `model.stop_training`: a callback sets it in `on_epoch_end`
    /// to end training after this epoch (the other callbacks still see it).
    pub stop_training: bool,
    /// The seed the model's generator was last reseeded with (see `fit`).
    pub rng_seed: u64,
    pub train_samples: usize,
    pub batch_size: usize,
    /// `Fit::verbose`: 0 silent, 1 progress within the epoch, 2 a line per epoch.
    pub verbose: u8,
    /// What the run is: everything a backup must match to be carried on.
    pub identity: RunIdentity,
}

/// What makes two runs the same run: the epochs asked for, the settings
/// that change the updates, and fingerprints of the training data and of
/// the model's initial weights (which the seed decides).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunIdentity {
    pub epochs: usize,
    pub augment: bool,
    pub shuffle: bool,
    /// absent in the backups of version 0.2 and before (which had none)
    #[serde(default)]
    pub label_smoothing: f64,
    /// a hash of the training images and labels
    pub data: u64,
    /// a hash of the weights before training
    pub initial_weights: u64,
}

/// Something `fit` calls as it goes. Every method has a default that does
/// nothing; an error stops training with that error. Epochs are 1-based, as
/// `fit` prints them.
pub trait Callback: Any {
    /// Refuses settings this run cannot honour (a metric it does not log),
    /// before anything trains; `logs` are the names `on_epoch_end` will see.
    fn check(&self, _logs: &[&str]) -> Result<()> {
        Ok(())
    }
    /// Before the first epoch; may restore an interrupted run into `model`
    /// and `run` (weights, optimizer state, history, generator).
    fn on_train_begin(&mut self, _model: &mut Sequential, _run: &mut RunState) -> Result<()> {
        Ok(())
    }
    fn on_epoch_begin(&mut self, _model: &mut Sequential, _epoch: usize) -> Result<()> {
        Ok(())
    }
    /// After the step of batch `batch` (0-based) of `epoch`.
    fn on_batch_end(
        &mut self,
        _model: &mut Sequential,
        _epoch: usize,
        _batch: usize,
        _logs: &BatchLogs,
    ) -> Result<()> {
        Ok(())
    }
    /// After the epoch's metrics are in `logs` (by Keras name: see [`Logs`])
    /// and in `run.history`; set `run.stop_training` to end training.
    fn on_epoch_end(
        &mut self,
        _model: &mut Sequential,
        _epoch: usize,
        _logs: &Logs,
        _run: &mut RunState,
    ) -> Result<()> {
        Ok(())
    }
    fn on_train_end(&mut self, _model: &mut Sequential, _run: &RunState) -> Result<()> {
        Ok(())
    }
}

/// `vec![EarlyStopping::new("val_loss").into()]`: any callback into the
/// `Box` that `Fit::callbacks` holds.
impl<C: Callback> From<C> for Box<dyn Callback> {
    fn from(c: C) -> Self {
        Box::new(c)
    }
}

/// What one training step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchLogs {
    /// mean loss over the batch
    pub loss: f64,
    /// how many of its images were classified right
    pub correct: usize,
    pub size: usize,
    /// Why the step made no update, when it made none (a gradient that is
    /// not finite).
    pub skipped: Option<String>,
}

/// An epoch's metrics by Keras name, in the order `fit` logs them:
/// `loss`, `accuracy`, then with validation data `val_loss`,
/// `val_accuracy`, and `learning_rate` (the rate of the next update).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Logs(Vec<(String, f64)>);

impl Logs {
    /// Logs with these values, e.g. to drive a callback in a test.
    pub fn new<S: Into<String>>(values: impl IntoIterator<Item = (S, f64)>) -> Self {
        Self(values.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The epoch's logs as `fit` makes them.
    pub(crate) fn of(m: &EpochMetrics) -> Self {
        let mut logs = vec![("loss", m.loss), ("accuracy", m.acc)];
        if let Some((loss, acc)) = m.val {
            logs.extend([("val_loss", loss), ("val_accuracy", acc)]);
        }
        logs.push(("learning_rate", m.learning_rate));
        Self::new(logs)
    }

    /// The names `fit` will log, with or without validation data.
    pub(crate) fn names_for(validation: bool) -> Vec<String> {
        let m = EpochMetrics {
            loss: 0.0,
            acc: 0.0,
            val: validation.then_some((0.0, 0.0)),
            learning_rate: 0.0,
            seconds: 0.0,
        };
        Self::of(&m).0.into_iter().map(|(k, _)| k).collect()
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| k == name).map(|&(_, v)| v)
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// Keras's `mode`: whether the monitored value should go down or up;
/// `Auto` decides from its name (`loss`, `val_loss`: down; `accuracy`,
/// `val_accuracy`: up; anything else must say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Auto,
    Min,
    Max,
}

/// Keras's `MonitorCallback`: the value a callback watches, and when a new
/// value of it is an improvement.
#[derive(Clone, Debug)]
pub(crate) struct Monitor {
    pub name: String,
    pub mode: Mode,
    /// always counted as its absolute value, as in Keras
    pub min_delta: f64,
}

impl Monitor {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            mode: Mode::Auto,
            min_delta: 0.0,
        }
    }

    /// Whether lower is better, or `None` when `Auto` cannot tell.
    fn lower_is_better(&self) -> Option<bool> {
        match self.mode {
            Mode::Min => Some(true),
            Mode::Max => Some(false),
            Mode::Auto => match self.name.strip_prefix("val_").unwrap_or(&self.name) {
                "loss" => Some(true),
                "accuracy" => Some(false),
                _ => None,
            },
        }
    }

    /// The name must be one `fit` logs, and its direction known.
    pub fn check(&self, callback: &str, logs: &[&str]) -> Result<()> {
        if !logs.contains(&self.name.as_str()) {
            let hint = match self.name.starts_with("val_") && !logs.contains(&"val_loss") {
                true => " (validation metrics need validation_split or validation_data)",
                false => "",
            };
            bail!(
                "{callback} monitors {:?}, which fit does not log{hint}: use one of {}",
                self.name,
                logs.join(", ")
            );
        }
        if self.lower_is_better().is_none() {
            bail!(
                "{callback} cannot tell whether {:?} should go down or up: pass .mode(Mode::Min) or .mode(Mode::Max)",
                self.name
            );
        }
        Ok(())
    }

    /// Keras's `_is_improvement`: better than `reference` by more than
    /// `min_delta` (anything is, against no reference; NaN never is).
    pub fn is_improvement(&self, current: f64, reference: Option<f64>) -> bool {
        let Some(reference) = reference else {
            return true;
        };
        let delta = self.min_delta.abs();
        match self.lower_is_better() {
            Some(false) => current - delta > reference,
            _ => current + delta < reference,
        }
    }

    /// Its value in `logs` (checked to be there when fit started).
    pub fn value(&self, logs: &Logs) -> Result<f64> {
        match logs.get(&self.name) {
            Some(v) => Ok(v),
            None => bail!(
                "{:?} is not in this epoch's logs ({})",
                self.name,
                logs.names().join(", ")
            ),
        }
    }
}

/// Callbacks called in order, as one.
pub struct Callbacks(pub Vec<Box<dyn Callback>>);

impl Callbacks {
    /// Whether one of them is a `C`.
    pub(crate) fn has<C: Callback>(&self) -> bool {
        self.0.iter().any(|c| (c.as_ref() as &dyn Any).is::<C>())
    }
}

impl Callback for Callbacks {
    fn check(&self, logs: &[&str]) -> Result<()> {
        self.0.iter().try_for_each(|c| c.check(logs))
    }
    fn on_train_begin(&mut self, model: &mut Sequential, run: &mut RunState) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|c| c.on_train_begin(model, run))
    }
    fn on_epoch_begin(&mut self, model: &mut Sequential, epoch: usize) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|c| c.on_epoch_begin(model, epoch))
    }
    fn on_batch_end(
        &mut self,
        m: &mut Sequential,
        epoch: usize,
        b: usize,
        logs: &BatchLogs,
    ) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|c| c.on_batch_end(m, epoch, b, logs))
    }
    fn on_epoch_end(
        &mut self,
        model: &mut Sequential,
        epoch: usize,
        logs: &Logs,
        run: &mut RunState,
    ) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|c| c.on_epoch_end(model, epoch, logs, run))
    }
    fn on_train_end(&mut self, model: &mut Sequential, run: &RunState) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|c| c.on_train_end(model, run))
    }
}
