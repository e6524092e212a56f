//! What every optimizer shares, as in Keras's `BaseOptimizer`: the learning
//! rate, gradient clipping, decoupled weight decay, the step count, the
//! state by parameter name and the config. An optimizer adds its settings
//! and its rule ([`Keras`]); [`Optimizer`] comes with it.

use super::{LearningRate, Optimizer, Update};
use crate::kernels::optim::{self as kernel, Rule, Step};
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The settings and state common to every optimizer.
#[derive(Clone, Debug)]
pub struct Base {
    pub(crate) learning_rate: LearningRate,
    /// Keras's decoupled decay `w -= w · weight_decay · lr`, before the rule.
    pub(crate) weight_decay: Option<f64>,
    /// Each gradient rescaled to this L2 norm at most.
    pub(crate) clipnorm: Option<f64>,
    /// Each gradient clipped elementwise to `[-clipvalue, clipvalue]`.
    pub(crate) clipvalue: Option<f64>,
    /// All gradients rescaled together to this L2 norm at most.
    pub(crate) global_clipnorm: Option<f64>,
    iterations: u64,
    /// Each parameter's slots, in the order of its optimizer's `slots()`.
    state: HashMap<String, Vec<Tensor>>,
}

/// For `#[serde(skip)]`: [`from_config`] puts the real one in.
impl Default for Base {
    fn default() -> Self {
        Self::new(0.001)
    }
}

impl Base {
    pub(crate) fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Self {
            learning_rate: learning_rate.into(),
            weight_decay: None,
            clipnorm: None,
            clipvalue: None,
            global_clipnorm: None,
            iterations: 0,
            state: HashMap::new(),
        }
    }

    fn check(&self, class: &str) -> Result<()> {
        self.learning_rate.check(class)?;
        if let Some(wd) = self.weight_decay {
            ensure!(
                wd.is_finite() && wd >= 0.0,
                "{class}'s weight_decay must be a number >= 0, got {wd}"
            );
        }
        let clips = [
            ("clipnorm", self.clipnorm),
            ("clipvalue", self.clipvalue),
            ("global_clipnorm", self.global_clipnorm),
        ];
        for (name, c) in clips {
            if let Some(c) = c {
                ensure!(
                    c.is_finite() && c > 0.0,
                    "{class}'s {name} must be a positive number, got {c}"
                );
            }
        }
        let set: Vec<&str> = clips
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(n, _)| *n)
            .collect();
        ensure!(
            set.len() <= 1,
            "only one of clipnorm, clipvalue and global_clipnorm can be set (as in Keras), got {}",
            set.join(" and ")
        );
        Ok(())
    }

    /// One update: Keras's `apply` (clip, decay, the rule) at the learning
    /// rate of the step count before it, then the count goes up.
    fn apply(&mut self, rule: Rule, slots: &[&str], lr: f64, params: &[Update]) -> Result<()> {
        for (name, var, _) in params {
            if !self.state.contains_key(*name) {
                let zeros: candle_core::Result<Vec<Tensor>> =
                    slots.iter().map(|_| var.zeros_like()).collect();
                self.state.insert(name.to_string(), zeros?);
            }
        }
        self.iterations += 1;
        let global = match self.global_clipnorm {
            Some(c) => {
                let mut squares = 0.0;
                for (_, _, g) in params {
                    if let Some(g) = g {
                        squares += kernel::sum_of_squares(g)?;
                    }
                }
                let norm = squares.sqrt();
                // Keras's: NaN for a norm that is not finite.
                match norm.is_finite() {
                    true => Some(c * (1.0 / norm).min(1.0 / c)),
                    false => Some(f64::NAN),
                }
            }
            None => None,
        };
        for (name, var, g) in params {
            // Keras updates (and decays) only the variables with a gradient.
            let Some(g) = g else { continue };
            let scale = match (self.clipnorm, global) {
                (Some(c), _) => c / kernel::sum_of_squares(g)?.sqrt().max(c),
                (None, Some(s)) => s,
                (None, None) => 1.0,
            };
            let step = Step {
                rule,
                scale,
                clipvalue: self.clipvalue,
                decay: self.weight_decay.map_or(0.0, |wd| wd * lr),
            };
            let slots = self.state.get_mut(*name).context("state made above")?;
            kernel::update(&step, var, g, slots).with_context(|| format!("updating {name}"))?;
        }
        Ok(())
    }

    fn state(&self, slots: &[&str]) -> Vec<(String, Tensor)> {
        let mut names: Vec<&String> = self.state.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|n| {
                slots
                    .iter()
                    .zip(&self.state[n])
                    .map(move |(s, t)| (format!("{s}.{n}"), t.clone()))
            })
            .collect()
    }

    fn load_state(
        &mut self,
        class: &str,
        slots: &[&str],
        iterations: u64,
        state: HashMap<String, Tensor>,
    ) -> Result<()> {
        let mut by_name: HashMap<String, Vec<Option<Tensor>>> = HashMap::new();
        for (key, t) in state {
            let slot = key
                .split_once('.')
                .and_then(|(s, _)| slots.iter().position(|x| *x == s));
            let Some(i) = slot else {
                bail!("{class}'s state has an entry it does not know: {key:?} (its slots are {slots:?})");
            };
            let name = &key[slots[i].len() + 1..];
            // A copy: the update writes in place, and the caller may keep `t`.
            by_name
                .entry(name.to_string())
                .or_insert_with(|| vec![None; slots.len()])[i] = Some(t.copy()?);
        }
        let mut loaded = HashMap::new();
        for (name, ts) in by_name {
            let ts = ts
                .into_iter()
                .zip(slots)
                .map(|(t, s)| t.with_context(|| format!("{class}'s state has no {s} for {name}")));
            loaded.insert(name.clone(), ts.collect::<Result<_>>()?);
        }
        self.state = loaded;
        self.iterations = iterations;
        Ok(())
    }

    /// Keras's config keys of the base, as written in a config.
    fn config(&self) -> Result<Map<String, Value>> {
        let mut c = Map::new();
        c.insert("learning_rate".into(), self.learning_rate.config()?);
        for (key, value) in [
            ("weight_decay", self.weight_decay),
            ("clipnorm", self.clipnorm),
            ("global_clipnorm", self.global_clipnorm),
            ("clipvalue", self.clipvalue),
        ] {
            c.insert(key.into(), serde_json::to_value(value)?);
        }
        Ok(c)
    }

    /// Takes the base's keys out of a config; a missing key keeps `self`'s.
    fn take_config(&mut self, c: &mut Map<String, Value>) -> Result<()> {
        if let Some(lr) = c.remove("learning_rate") {
            self.learning_rate = LearningRate::from_config(&lr).context("learning_rate")?;
        }
        for (key, field) in [
            ("weight_decay", &mut self.weight_decay),
            ("clipnorm", &mut self.clipnorm),
            ("global_clipnorm", &mut self.global_clipnorm),
            ("clipvalue", &mut self.clipvalue),
        ] {
            if let Some(v) = c.remove(key) {
                *field = serde_json::from_value(v)
                    .with_context(|| format!("{key} must be a number or null"))?;
            }
        }
        Ok(())
    }
}

/// An optimizer in Keras's mould: its own settings (serialized as its
/// config, with Keras's names; the [`Base`] is `#[serde(skip)]`) and its
/// rule. Everything else of [`Optimizer`] is the base's.
pub(crate) trait Keras:
    Clone + Default + std::fmt::Debug + Send + Serialize + DeserializeOwned + 'static
{
    /// Keras's class name, in messages: `"SGD"`.
    const CLASS: &'static str;
    /// Keras's name: `"sgd"`.
    const NAME: &'static str;
    fn base(&self) -> &Base;
    fn base_mut(&mut self) -> &mut Base;
    /// Its per-parameter state, in the order [`Rule`] takes it.
    fn slots(&self) -> &'static [&'static str];
    /// Refuses impossible settings of its own (the base checks its own).
    fn check_settings(&self) -> Result<()>;
    /// The rule of update number `t` (from 1), at learning rate `lr`.
    fn rule(&self, lr: f64, t: u64) -> Rule;
}

impl<T: Keras> Optimizer for T {
    fn check(&self) -> Result<()> {
        self.base().check(T::CLASS)?;
        self.check_settings()
    }

    fn name(&self) -> &'static str {
        T::NAME
    }

    fn slots(&self) -> &'static [&'static str] {
        Keras::slots(self)
    }

    fn update(&mut self, params: &[Update]) -> Result<()> {
        let lr = self.learning_rate();
        let rule = self.rule(lr, self.base().iterations + 1);
        let slots = Keras::slots(self);
        self.base_mut().apply(rule, slots, lr, params)
    }

    fn learning_rate(&self) -> f64 {
        let b = self.base();
        b.learning_rate.at(b.iterations)
    }

    fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        self.base_mut().learning_rate.set(lr)
    }

    fn iterations(&self) -> u64 {
        self.base().iterations
    }

    fn reset(&mut self) {
        let b = self.base_mut();
        b.iterations = 0;
        b.state.clear();
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.base().state(Keras::slots(self))
    }

    fn load_state(&mut self, iterations: u64, state: HashMap<String, Tensor>) -> Result<()> {
        let slots = Keras::slots(self);
        self.base_mut()
            .load_state(T::CLASS, slots, iterations, state)
    }

    fn config(&self) -> Result<Value> {
        let mut c = self.base().config()?;
        match serde_json::to_value(self)? {
            Value::Object(own) => c.extend(own),
            _ => bail!("{}'s settings are not a JSON object", T::CLASS),
        }
        Ok(Value::Object(c))
    }
}

/// An optimizer of type `T` from its config, Keras's defaults for what it
/// does not say; checked.
pub(crate) fn from_config<T: Keras>(config: &Value) -> Result<Box<dyn Optimizer>> {
    let Value::Object(mut c) = config.clone() else {
        bail!("{}'s config must be a JSON object, got {config}", T::CLASS);
    };
    let mut base = T::default().base().clone();
    base.take_config(&mut c)?;
    let mut o: T = serde_json::from_value(Value::Object(c))
        .with_context(|| format!("in {}'s config", T::CLASS))?;
    *o.base_mut() = base;
    o.check()?;
    Ok(Box::new(o))
}

/// Keras's keyword arguments of every optimizer, as builder methods.
macro_rules! base_options {
    ($t:ty) => {
        impl $t {
            /// Rescales each gradient to this L2 norm at most (Keras's `clipnorm`).
            pub fn clipnorm(mut self, clipnorm: f64) -> Self {
                self.base.clipnorm = Some(clipnorm);
                self
            }

            /// Clips each gradient elementwise to `[-clipvalue, clipvalue]`
            /// (Keras's `clipvalue`).
            pub fn clipvalue(mut self, clipvalue: f64) -> Self {
                self.base.clipvalue = Some(clipvalue);
                self
            }

            /// Rescales all gradients together to this L2 norm at most
            /// (Keras's `global_clipnorm`).
            pub fn global_clipnorm(mut self, global_clipnorm: f64) -> Self {
                self.base.global_clipnorm = Some(global_clipnorm);
                self
            }

            /// Decoupled weight decay, `w -= w · weight_decay · lr` before
            /// each update (Keras's `weight_decay`).
            pub fn weight_decay(mut self, weight_decay: f64) -> Self {
                self.base.weight_decay = Some(weight_decay);
                self
            }
        }
    };
}
pub(crate) use base_options;
