//! Optimizers: how parameters move given their gradients. Their state is
//! keyed by parameter name, so that backups and saved models can carry it
//! and a model that changes shape never mixes one parameter's moments with
//! another's. A leaf above the kernels: it knows nothing of models or
//! training.
//!
//! Keras's optimizers (SGD, RMSprop, Adam, AdamW) share one [`base`]: the
//! learning rate (a constant or a [`Schedule`]), clipping, weight decay, the
//! step count, the state and the config; each adds its settings and its
//! rule, which `kernels::optim` runs (in place on the CPU for f32).

mod adam;
mod base;
mod rmsprop;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamW};
pub use rmsprop::RMSprop;
pub use schedule::{CosineDecay, ExponentialDecay, LearningRate, PiecewiseConstantDecay, Schedule};
pub use sgd::SGD;

use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// One trainable parameter in an update: its name, variable and gradient
/// (`None`: it got none this step, and is left as it is).
pub type Update<'a> = (&'a str, &'a Var, Option<&'a Tensor>);

/// What `compile` takes: Keras's optimizer interface, reduced to what
/// training, backups and the summary need.
pub trait Optimizer: Send + std::fmt::Debug {
    /// Refuses settings that cannot train (a learning rate that is not a
    /// positive number, ...), with what is wrong; `compile` calls it.
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// Keras's name (`"adam"`): the prefix of its state in backups.
    fn name(&self) -> &'static str;
    /// The names of its per-parameter state (`["m", "v"]` for Adam).
    fn slots(&self) -> &'static [&'static str];
    /// One step over the trainable parameters.
    fn update(&mut self, params: &[Update]) -> Result<()>;
    /// The learning rate of the next update (a schedule's value at
    /// [`Optimizer::iterations`]); `fit` records it in the History.
    fn learning_rate(&self) -> f64;
    /// Sets a constant learning rate (Keras's `optimizer.learning_rate = lr`);
    /// an error when the rate is a schedule.
    fn set_learning_rate(&mut self, lr: f64) -> Result<()>;
    /// Number of updates applied so far (Keras's `optimizer.iterations`).
    fn iterations(&self) -> u64;
    /// Forgets its state (moments, step count), keeping its settings.
    fn reset(&mut self);
    /// Its state as `("{slot}.{parameter}", tensor)`, e.g. `("m.dense.kernel", m)`.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Puts back a state that [`Optimizer::state`] gave, with its step count.
    fn load_state(&mut self, iterations: u64, state: HashMap<String, Tensor>) -> Result<()>;
    /// Its settings (schedule included) as Keras's `get_config()`, which
    /// [`from_config`] turns back into the optimizer; an error when they
    /// cannot be saved (a schedule of one's own).
    fn config(&self) -> Result<serde_json::Value> {
        bail!(
            "the optimizer {} cannot be saved (it has no config())",
            self.name()
        )
    }
}

/// The optimizer named `name` ([`Optimizer::name`], e.g. `"adam"`) with the
/// settings of `config` ([`Optimizer::config`]; Keras's defaults for those
/// it does not give), checked, with no state yet.
pub fn from_config(name: &str, config: &serde_json::Value) -> Result<Box<dyn Optimizer>> {
    match name {
        "sgd" => base::from_config::<SGD>(config),
        "rmsprop" => base::from_config::<RMSprop>(config),
        "adam" => base::from_config::<Adam>(config),
        "adamw" => base::from_config::<AdamW>(config),
        _ => bail!("unknown optimizer {name:?}: known are sgd, rmsprop, adam and adamw"),
    }
}
