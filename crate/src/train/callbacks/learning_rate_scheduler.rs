//! Keras's `LearningRateScheduler`.

use super::{Callback, RunState};
use crate::model::Sequential;
use anyhow::{Context, Result};

/// Keras's `LearningRateScheduler`: at the start of each epoch, sets the
/// learning rate to `schedule(epoch, lr)`, with Keras's 0-based epoch index
/// (the first epoch `fit` prints as 1 is 0 here) and the current rate. The
/// optimizer's rate must be a constant (not a schedule).
///
/// ```
/// use cifar10_cnn::train::LearningRateScheduler;
/// // Keras's example: constant for 10 epochs, then decaying.
/// let s = LearningRateScheduler::new(|epoch, lr| if epoch < 10 { lr } else { lr * (-0.1f64).exp() });
/// ```
pub struct LearningRateScheduler {
    schedule: Box<dyn Fn(usize, f64) -> f64>,
    verbose: u8,
}

impl LearningRateScheduler {
    pub fn new(schedule: impl Fn(usize, f64) -> f64 + 'static) -> Self {
        Self {
            schedule: Box::new(schedule),
            verbose: 0,
        }
    }
    /// 1: say the rate it sets each epoch.
    pub fn verbose(mut self, verbose: u8) -> Self {
        self.verbose = verbose;
        self
    }
}

impl Callback for LearningRateScheduler {
    fn on_train_begin(&mut self, model: &mut Sequential, _: &mut RunState) -> Result<()> {
        // Refused now rather than in the first epoch: a schedule's rate.
        model.set_learning_rate(model.learning_rate()?)
    }

    fn on_epoch_begin(&mut self, model: &mut Sequential, epoch: usize) -> Result<()> {
        let lr = (self.schedule)(epoch - 1, model.learning_rate()?);
        model
            .set_learning_rate(lr)
            .with_context(|| format!("LearningRateScheduler, epoch {epoch}"))?;
        if self.verbose > 0 {
            println!("Epoch {epoch}: LearningRateScheduler setting learning rate to {lr}.");
        }
        Ok(())
    }
}
