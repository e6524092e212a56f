//! Learning rates: a constant, or a schedule of the step count (Keras's
//! `keras.optimizers.schedules`). Every optimizer takes a [`LearningRate`],
//! so a schedule goes wherever a learning rate goes.

use anyhow::{ensure, Result};
use std::sync::Arc;

/// A learning rate as a function of the number of updates applied so far
/// (Keras's `LearningRateSchedule.__call__(step)`, step counting from 0).
pub trait Schedule: Send + Sync + std::fmt::Debug {
    /// Keras's class name, e.g. `"CosineDecay"`.
    fn name(&self) -> &'static str;
    /// Refuses settings that cannot give a rate (decay_steps 0, ...).
    fn check(&self) -> Result<()>;
    /// The rate of the update after `step` updates.
    fn rate(&self, step: u64) -> f64;
}

/// What an optimizer's `learning_rate` is.
#[derive(Clone, Debug)]
pub enum LearningRate {
    Constant(f64),
    Schedule(Arc<dyn Schedule>),
}

impl LearningRate {
    /// The rate of the update after `step` updates.
    pub fn at(&self, step: u64) -> f64 {
        match self {
            LearningRate::Constant(lr) => *lr,
            LearningRate::Schedule(s) => s.rate(step),
        }
    }

    /// Refuses a rate that cannot train; `who` names the optimizer.
    pub fn check(&self, who: &str) -> Result<()> {
        match self {
            LearningRate::Constant(lr) => {
                ensure!(
                    lr.is_finite() && *lr > 0.0,
                    "{who}'s learning_rate must be a positive number, got {lr}"
                );
                Ok(())
            }
            LearningRate::Schedule(s) => s.check(),
        }
    }

    /// Sets a constant rate (what `ReduceLROnPlateau` and
    /// `LearningRateScheduler` do); refused when the rate is a schedule,
    /// as in Keras, since the schedule would be lost.
    pub fn set(&mut self, lr: f64) -> Result<()> {
        match self {
            LearningRate::Constant(_) => {
                ensure!(
                    lr.is_finite() && lr > 0.0,
                    "a learning rate must be a positive number, got {lr}"
                );
                *self = LearningRate::Constant(lr);
                Ok(())
            }
            LearningRate::Schedule(s) => anyhow::bail!(
                "the learning rate is a {} schedule, which cannot be set: use a constant learning rate with this callback, or the schedule alone",
                s.name()
            ),
        }
    }
}

impl From<f64> for LearningRate {
    fn from(lr: f64) -> Self {
        LearningRate::Constant(lr)
    }
}
