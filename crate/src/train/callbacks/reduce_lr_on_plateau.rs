//! Keras's `ReduceLROnPlateau`.

use super::{Callback, Logs, Mode, Monitor, RunState};
use crate::model::Sequential;
use anyhow::{ensure, Result};

/// Keras's `ReduceLROnPlateau`: multiplies the learning rate by `factor`
/// (not below `min_lr`) when `monitor` has not improved by more than
/// `min_delta` for `patience` epochs, then waits `cooldown` epochs before
/// counting again. The optimizer's rate must be a constant (not a schedule).
pub struct ReduceLROnPlateau {
    monitor: Monitor,
    factor: f64,
    patience: usize,
    cooldown: usize,
    min_lr: f64,
    verbose: u8,
    best: Option<f64>,
    wait: usize,
    cooldown_counter: usize,
}

impl Default for ReduceLROnPlateau {
    fn default() -> Self {
        Self::new("val_loss")
    }
}

impl ReduceLROnPlateau {
    /// Watches `monitor` (Keras's default: `"val_loss"`).
    pub fn new(monitor: &str) -> Self {
        let mut monitor = Monitor::new(monitor);
        monitor.min_delta = 1e-4;
        Self {
            monitor,
            factor: 0.1,
            patience: 10,
            cooldown: 0,
            min_lr: 0.0,
            verbose: 0,
            best: None,
            wait: 0,
            cooldown_counter: 0,
        }
    }
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
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
    pub fn min_delta(mut self, min_delta: f64) -> Self {
        self.monitor.min_delta = min_delta;
        self
    }
    pub fn cooldown(mut self, cooldown: usize) -> Self {
        self.cooldown = cooldown;
        self
    }
    pub fn min_lr(mut self, min_lr: f64) -> Self {
        self.min_lr = min_lr;
        self
    }
    /// 1: say when it lowers the rate.
    pub fn verbose(mut self, verbose: u8) -> Self {
        self.verbose = verbose;
        self
    }
}

impl Callback for ReduceLROnPlateau {
    fn check(&self, logs: &[&str]) -> Result<()> {
        ensure!(
            self.factor < 1.0 && self.factor > 0.0,
            "ReduceLROnPlateau needs a factor in (0, 1) (the learning rate is multiplied by it), got {}",
            self.factor
        );
        ensure!(
            self.min_lr >= 0.0,
            "ReduceLROnPlateau needs min_lr >= 0, got {}",
            self.min_lr
        );
        self.monitor.check("ReduceLROnPlateau", logs)
    }

    fn on_train_begin(&mut self, model: &mut Sequential, _: &mut RunState) -> Result<()> {
        (self.best, self.wait, self.cooldown_counter) = (None, 0, 0);
        // Refused now rather than at the first plateau: a schedule's rate.
        model.set_learning_rate(model.learning_rate()?)
    }

    // Keras's rule step by step.
    fn on_epoch_end(
        &mut self,
        model: &mut Sequential,
        epoch: usize,
        logs: &Logs,
        _: &mut RunState,
    ) -> Result<()> {
        let current = self.monitor.value(logs)?;
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.wait = 0;
        }
        if self.monitor.is_improvement(current, self.best) {
            self.best = Some(current);
            self.wait = 0;
            return Ok(());
        }
        if self.cooldown_counter > 0 {
            return Ok(());
        }
        self.wait += 1;
        if self.wait < self.patience {
            return Ok(());
        }
        let old = model.learning_rate()?;
        // Keras compares with min_lr as a float32.
        if old > self.min_lr as f32 as f64 {
            let new = (old * self.factor).max(self.min_lr);
            model.set_learning_rate(new)?;
            if self.verbose > 0 {
                println!("Epoch {epoch}: ReduceLROnPlateau reducing learning rate to {new}.");
            }
            self.cooldown_counter = self.cooldown;
            self.wait = 0;
        }
        Ok(())
    }
}
