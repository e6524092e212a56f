//! Learning rates: a constant, or a schedule of the step count (Keras's
//! `keras.optimizers.schedules`). Every optimizer takes a [`LearningRate`],
//! so a schedule goes wherever a learning rate goes.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
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
    /// Its settings as Keras's `get_config()`, for saving the optimizer with
    /// the model; `None` (the default) when it cannot be saved.
    fn config(&self) -> Option<Value> {
        None
    }
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

    /// As in Keras's optimizer config: a number, or
    /// `{"class_name": "CosineDecay", "config": {...}}`.
    pub fn config(&self) -> Result<Value> {
        match self {
            LearningRate::Constant(lr) => Ok(json!(lr)),
            LearningRate::Schedule(s) => {
                let config = s.config().with_context(|| {
                    format!(
                        "the learning rate schedule {} cannot be saved (it has no config()): save the model without its optimizer",
                        s.name()
                    )
                })?;
                Ok(json!({"class_name": s.name(), "config": config}))
            }
        }
    }

    /// The inverse of [`LearningRate::config`], for Keras's three schedules.
    pub fn from_config(config: &Value) -> Result<Self> {
        if let Some(lr) = config.as_f64() {
            return Ok(LearningRate::Constant(lr));
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Serialized {
            class_name: String,
            config: Value,
        }
        let s: Serialized = serde_json::from_value(config.clone())
            .context("a learning rate is a number or {\"class_name\": ..., \"config\": {...}}")?;
        let c = s.config;
        let schedule: Arc<dyn Schedule> = match s.class_name.as_str() {
            "ExponentialDecay" => Arc::new(serde_json::from_value::<ExponentialDecay>(c)?),
            "PiecewiseConstantDecay" => {
                Arc::new(serde_json::from_value::<PiecewiseConstantDecay>(c)?)
            }
            "CosineDecay" => Arc::new(serde_json::from_value::<CosineDecay>(c)?),
            other => bail!(
                "unknown learning rate schedule {other:?}: known are ExponentialDecay, PiecewiseConstantDecay and CosineDecay"
            ),
        };
        schedule.check()?;
        Ok(LearningRate::Schedule(schedule))
    }
}

impl<S: Schedule + 'static> From<S> for LearningRate {
    fn from(s: S) -> Self {
        LearningRate::Schedule(Arc::new(s))
    }
}

impl From<f64> for LearningRate {
    fn from(lr: f64) -> Self {
        LearningRate::Constant(lr)
    }
}

/// A rate that must be a positive number.
fn positive(who: &str, what: &str, x: f64) -> Result<()> {
    ensure!(
        x.is_finite() && x > 0.0,
        "{who}'s {what} must be a positive number, got {x}"
    );
    Ok(())
}

/// Keras's `ExponentialDecay`:
/// `initial_learning_rate · decay_rate ^ (step / decay_steps)`, the exponent
/// rounded down with `staircase`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExponentialDecay {
    pub initial_learning_rate: f64,
    pub decay_steps: u64,
    pub decay_rate: f64,
    #[serde(default)]
    pub staircase: bool,
}

impl ExponentialDecay {
    pub fn new(initial_learning_rate: f64, decay_steps: u64, decay_rate: f64) -> Self {
        Self {
            initial_learning_rate,
            decay_steps,
            decay_rate,
            staircase: false,
        }
    }

    /// Decays at whole multiples of `decay_steps` only.
    pub fn staircase(mut self, staircase: bool) -> Self {
        self.staircase = staircase;
        self
    }
}

impl Schedule for ExponentialDecay {
    fn name(&self) -> &'static str {
        "ExponentialDecay"
    }

    fn check(&self) -> Result<()> {
        positive(
            self.name(),
            "initial_learning_rate",
            self.initial_learning_rate,
        )?;
        positive(self.name(), "decay_rate", self.decay_rate)?;
        ensure!(
            self.decay_steps > 0,
            "ExponentialDecay's decay_steps must be > 0 (the steps over which the rate is multiplied by decay_rate), got 0"
        );
        Ok(())
    }

    fn rate(&self, step: u64) -> f64 {
        let mut p = step as f64 / self.decay_steps as f64;
        if self.staircase {
            p = p.floor();
        }
        self.initial_learning_rate * self.decay_rate.powf(p)
    }

    fn config(&self) -> Option<Value> {
        serde_json::to_value(self).ok()
    }
}

/// Keras's `PiecewiseConstantDecay`: `values[0]` while `step <=
/// boundaries[0]`, `values[i]` while `boundaries[i-1] < step <=
/// boundaries[i]`, and `values[n]` after the last boundary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiecewiseConstantDecay {
    pub boundaries: Vec<u64>,
    pub values: Vec<f64>,
}

impl PiecewiseConstantDecay {
    pub fn new(boundaries: impl Into<Vec<u64>>, values: impl Into<Vec<f64>>) -> Self {
        Self {
            boundaries: boundaries.into(),
            values: values.into(),
        }
    }
}

impl Schedule for PiecewiseConstantDecay {
    fn name(&self) -> &'static str {
        "PiecewiseConstantDecay"
    }

    fn check(&self) -> Result<()> {
        let (b, v) = (&self.boundaries, &self.values);
        ensure!(
            v.len() == b.len() + 1,
            "PiecewiseConstantDecay needs one more value than boundaries (a value before the first boundary and one after each), got {} boundaries and {} values",
            b.len(),
            v.len()
        );
        ensure!(
            b.windows(2).all(|w| w[0] < w[1]),
            "PiecewiseConstantDecay's boundaries must be strictly increasing, got {b:?}"
        );
        for &x in v {
            positive(self.name(), "values", x)?;
        }
        Ok(())
    }

    fn rate(&self, step: u64) -> f64 {
        let i = self.boundaries.iter().take_while(|&&b| step > b).count();
        self.values[i]
    }

    fn config(&self) -> Option<Value> {
        serde_json::to_value(self).ok()
    }
}

/// Keras's `CosineDecay`: with a warmup, the rate goes linearly from
/// `initial_learning_rate` to `warmup_target` over `warmup_steps`, then
/// decays from `warmup_target`; without one it decays from
/// `initial_learning_rate`. The decay over `decay_steps` is
/// `((1 - alpha) · (1 + cos(π · step / decay_steps)) / 2 + alpha) · from`,
/// and stays at `alpha · from` after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosineDecay {
    pub initial_learning_rate: f64,
    pub decay_steps: u64,
    #[serde(default)]
    pub alpha: f64,
    #[serde(default)]
    pub warmup_target: Option<f64>,
    #[serde(default)]
    pub warmup_steps: u64,
}

impl CosineDecay {
    pub fn new(initial_learning_rate: f64, decay_steps: u64) -> Self {
        Self {
            initial_learning_rate,
            decay_steps,
            alpha: 0.0,
            warmup_target: None,
            warmup_steps: 0,
        }
    }

    /// The floor of the decay, as a fraction of the rate it decays from.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// A linear warmup to `target` over `steps` before the decay (Keras's
    /// `warmup_target`, `warmup_steps`).
    pub fn warmup(mut self, target: f64, steps: u64) -> Self {
        self.warmup_target = Some(target);
        self.warmup_steps = steps;
        self
    }
}

impl Schedule for CosineDecay {
    fn name(&self) -> &'static str {
        "CosineDecay"
    }

    fn check(&self) -> Result<()> {
        let lr = self.initial_learning_rate;
        match self.warmup_target {
            // A warmup usually starts from 0.
            Some(target) => {
                ensure!(
                    lr.is_finite() && lr >= 0.0,
                    "CosineDecay's initial_learning_rate must be a number >= 0, got {lr}"
                );
                positive(self.name(), "warmup_target", target)?;
            }
            None => positive(self.name(), "initial_learning_rate", lr)?,
        }
        ensure!(
            self.decay_steps > 0,
            "CosineDecay's decay_steps must be > 0 (the steps over which the rate decays), got 0"
        );
        ensure!(
            (0.0..=1.0).contains(&self.alpha),
            "CosineDecay's alpha (the floor, a fraction of the rate) must be in [0, 1], got {}",
            self.alpha
        );
        Ok(())
    }

    fn rate(&self, step: u64) -> f64 {
        let decay = |step: f64, from: f64| {
            let cosine =
                0.5 * (1.0 + (std::f64::consts::PI * step / self.decay_steps as f64).cos());
            from * ((1.0 - self.alpha) * cosine + self.alpha)
        };
        let (step, decay_steps) = (step as f64, self.decay_steps as f64);
        let Some(target) = self.warmup_target else {
            return decay(step.min(decay_steps), self.initial_learning_rate);
        };
        let warmup_steps = self.warmup_steps as f64;
        let step = step.min(decay_steps + warmup_steps);
        match step < warmup_steps {
            true => {
                (target - self.initial_learning_rate) * (step / warmup_steps)
                    + self.initial_learning_rate
            }
            false => decay(step - warmup_steps, target),
        }
    }

    fn config(&self) -> Option<Value> {
        serde_json::to_value(self).ok()
    }
}
