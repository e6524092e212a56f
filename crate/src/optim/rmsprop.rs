//! Keras's RMSprop, plain, with momentum, centered.

use super::base::{base_options, Base, Keras};
use super::LearningRate;
use crate::kernels::optim::Rule;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Keras's `RMSprop` (learning_rate 0.001, rho 0.9, momentum 0, epsilon
/// 1e-7, centered false): `v = rho·v + (1-rho)·g²`, `w -= lr·g / sqrt(v +
/// eps)`; centered, `v` less the square of the gradients' moving average;
/// with momentum, the steps are accumulated.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RMSprop {
    #[serde(default = "rho")]
    pub rho: f64,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default = "epsilon")]
    pub epsilon: f64,
    #[serde(default)]
    pub centered: bool,
    #[serde(skip)]
    base: Base,
}

fn rho() -> f64 {
    0.9
}

fn epsilon() -> f64 {
    1e-7
}

impl Default for RMSprop {
    fn default() -> Self {
        Self::new(1e-3)
    }
}

impl RMSprop {
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Self {
            rho: rho(),
            momentum: 0.0,
            epsilon: epsilon(),
            centered: false,
            base: Base::new(learning_rate),
        }
    }

    /// The discounting factor of the squared gradients' average (Keras's `rho`).
    pub fn rho(mut self, rho: f64) -> Self {
        self.rho = rho;
        self
    }

    /// Keras's `momentum`, in [0, 1).
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// Keras's `epsilon`.
    pub fn epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }

    /// Normalizes by the gradients' estimated variance (Keras's `centered`).
    pub fn centered(mut self, centered: bool) -> Self {
        self.centered = centered;
        self
    }
}

base_options!(RMSprop);

impl Keras for RMSprop {
    const CLASS: &'static str = "RMSprop";
    const NAME: &'static str = "rmsprop";

    fn base(&self) -> &Base {
        &self.base
    }

    fn base_mut(&mut self) -> &mut Base {
        &mut self.base
    }

    fn slots(&self) -> &'static [&'static str] {
        // Keras's variables, in the order the rule takes them.
        match (self.momentum > 0.0, self.centered) {
            (false, false) => &["velocity"],
            (true, false) => &["velocity", "momentum"],
            (false, true) => &["velocity", "average_gradient"],
            (true, true) => &["velocity", "momentum", "average_gradient"],
        }
    }

    fn check_settings(&self) -> Result<()> {
        for (name, x) in [("rho", self.rho), ("momentum", self.momentum)] {
            ensure!(
                (0.0..1.0).contains(&x),
                "RMSprop's {name} must be in [0, 1), got {x}"
            );
        }
        ensure!(
            self.epsilon.is_finite() && self.epsilon > 0.0,
            "RMSprop's epsilon must be a small positive number, got {}",
            self.epsilon
        );
        Ok(())
    }

    fn rule(&self, lr: f64, _: u64) -> Rule {
        Rule::RmsProp {
            lr,
            rho: self.rho,
            momentum: self.momentum,
            epsilon: self.epsilon,
            centered: self.centered,
        }
    }
}
