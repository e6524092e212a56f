//! Keras's `EarlyStopping`.

use super::{Callback, Logs, Mode, Monitor, RunState};
use crate::model::Sequential;
use anyhow::Result;
use candle_core::Tensor;

/// Keras's `EarlyStopping`: stops training when `monitor` has not improved
/// (by more than `min_delta`) for `patience` epochs, counting from epoch
/// `start_from_epoch` + 1. With `restore_best_weights`, the weights of the
/// best epoch are put back when training ends, as Keras 3 does: whether
/// it stopped early or ran all its epochs (Keras 2 restored only on an
/// early stop). `baseline`: a value the monitor must beat for the
/// patience to start over.
///
/// ```
/// use cifar10_cnn::train::{EarlyStopping, Mode};
/// let stop = EarlyStopping::new("val_accuracy")
///     .patience(3)
///     .mode(Mode::Max)
///     .restore_best_weights(true);
/// ```
pub struct EarlyStopping {
    monitor: Monitor,
    patience: usize,
    baseline: Option<f64>,
    restore_best_weights: bool,
    start_from_epoch: usize,
    verbose: u8,
    // The run's state (reset at the start of each fit).
    wait: usize,
    best: Option<f64>,
    best_weights: Option<Vec<Tensor>>,
    best_epoch: usize,
    stopped_epoch: usize,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        Self::new("val_loss")
    }
}

impl EarlyStopping {
    /// Watches `monitor` (Keras's default: `"val_loss"`).
    pub fn new(monitor: &str) -> Self {
        Self {
            monitor: Monitor::new(monitor),
            patience: 0,
            baseline: None,
            restore_best_weights: false,
            start_from_epoch: 0,
            verbose: 0,
            wait: 0,
            best: None,
            best_weights: None,
            best_epoch: 0,
            stopped_epoch: 0,
        }
    }
    pub fn min_delta(mut self, min_delta: f64) -> Self {
        self.monitor.min_delta = min_delta;
        self
    }
    pub fn patience(mut self, patience: usize) -> Self {
        self.patience = patience;
        self
    }
    pub fn mode(mut self, mode: Mode) -> Self {
        self.monitor.mode = mode;
        self
    }
    pub fn baseline(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self
    }
    pub fn restore_best_weights(mut self, restore: bool) -> Self {
        self.restore_best_weights = restore;
        self
    }
    pub fn start_from_epoch(mut self, epochs: usize) -> Self {
        self.start_from_epoch = epochs;
        self
    }
    /// 1: say when it stops and restores.
    pub fn verbose(mut self, verbose: u8) -> Self {
        self.verbose = verbose;
        self
    }

    /// The epoch after which it stopped training (0: it did not).
    pub fn stopped_epoch(&self) -> usize {
        self.stopped_epoch
    }

    /// The best epoch so far (0: none yet).
    pub fn best_epoch(&self) -> usize {
        self.best_epoch
    }
}

impl Callback for EarlyStopping {
    fn check(&self, logs: &[&str]) -> Result<()> {
        self.monitor.check("EarlyStopping", logs)
    }

    fn on_train_begin(&mut self, _: &mut Sequential, _: &mut RunState) -> Result<()> {
        self.wait = 0;
        self.best = None;
        self.best_weights = None;
        self.best_epoch = 0;
        self.stopped_epoch = 0;
        Ok(())
    }

    // Keras's rule step by step, with its 0-based epoch `e`.
    fn on_epoch_end(
        &mut self,
        model: &mut Sequential,
        epoch: usize,
        logs: &Logs,
        run: &mut RunState,
    ) -> Result<()> {
        let e = epoch - 1;
        let current = self.monitor.value(logs)?;
        if e < self.start_from_epoch {
            return Ok(());
        }
        if self.restore_best_weights && self.best_weights.is_none() {
            self.best_weights = Some(model.params.snapshot()?);
            self.best_epoch = epoch;
        }
        self.wait += 1;
        if self.monitor.is_improvement(current, self.best) {
            self.best = Some(current);
            self.best_epoch = epoch;
            if self.restore_best_weights {
                self.best_weights = Some(model.params.snapshot()?);
            }
            // The patience starts over only past the baseline too.
            if self
                .baseline
                .is_none_or(|b| self.monitor.is_improvement(current, Some(b)))
            {
                self.wait = 0;
            }
            return Ok(());
        }
        if self.wait >= self.patience && e > 0 {
            self.stopped_epoch = epoch;
            run.stop_training = true;
        }
        Ok(())
    }

    fn on_train_end(&mut self, model: &mut Sequential, _: &RunState) -> Result<()> {
        if self.stopped_epoch > 0 && self.verbose > 0 {
            println!("Epoch {}: early stopping", self.stopped_epoch);
        }
        if let (true, Some(best)) = (self.restore_best_weights, &self.best_weights) {
            if self.verbose > 0 {
                println!(
                    "Restoring model weights from the end of the best epoch: {}.",
                    self.best_epoch
                );
            }
            model.params.restore(best)?;
        }
        Ok(())
    }
}
