//! Keras's Adam, and AdamW (Adam with decoupled weight decay).

use super::base::{base_options, Base, Keras};
use super::LearningRate;
use crate::kernels::optim::Rule;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

fn beta_1() -> f64 {
    0.9
}

fn beta_2() -> f64 {
    0.999
}

fn epsilon() -> f64 {
    1e-7
}

fn check(class: &str, beta_1: f64, beta_2: f64, epsilon: f64) -> Result<()> {
    for (name, beta) in [("beta_1", beta_1), ("beta_2", beta_2)] {
        ensure!(
            (0.0..1.0).contains(&beta),
            "{class}'s {name} must be in [0, 1), got {beta}"
        );
    }
    ensure!(
        epsilon.is_finite() && epsilon > 0.0,
        "{class}'s epsilon must be a small positive number, got {epsilon}"
    );
    Ok(())
}

/// Keras's update `t` (from 1); the bias corrections go into the rate.
fn rule(lr: f64, t: u64, beta_1: f64, beta_2: f64, epsilon: f64) -> Rule {
    Rule::Adam {
        lr,
        t,
        beta_1,
        beta_2,
        epsilon,
    }
}

/// Defines Adam and AdamW: the same rule and state, other defaults.
macro_rules! adam_kind {
    ($(#[$doc:meta])* $t:ident, $class:literal, $name:literal, $weight_decay:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $t {
            #[serde(default = "beta_1")]
            pub beta_1: f64,
            #[serde(default = "beta_2")]
            pub beta_2: f64,
            #[serde(default = "epsilon")]
            pub epsilon: f64,
            #[serde(skip)]
            base: Base,
        }

        impl Default for $t {
            fn default() -> Self {
                Self::new(1e-3)
            }
        }

        impl $t {
            pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
                let mut base = Base::new(learning_rate);
                base.weight_decay = $weight_decay;
                Self {
                    beta_1: beta_1(),
                    beta_2: beta_2(),
                    epsilon: epsilon(),
                    base,
                }
            }

            /// Keras's `beta_1`, the decay of the gradients' average.
            pub fn beta_1(mut self, beta_1: f64) -> Self {
                self.beta_1 = beta_1;
                self
            }

            /// Keras's `beta_2`, the decay of the squared gradients' average.
            pub fn beta_2(mut self, beta_2: f64) -> Self {
                self.beta_2 = beta_2;
                self
            }

            /// Keras's `epsilon`.
            pub fn epsilon(mut self, epsilon: f64) -> Self {
                self.epsilon = epsilon;
                self
            }
        }

        base_options!($t);

        impl Keras for $t {
            const CLASS: &'static str = $class;
            const NAME: &'static str = $name;

            fn base(&self) -> &Base {
                &self.base
            }

            fn base_mut(&mut self) -> &mut Base {
                &mut self.base
            }

            fn slots(&self) -> &'static [&'static str] {
                &["m", "v"]
            }

            fn check_settings(&self) -> Result<()> {
                ensure!(
                    $weight_decay.is_none() || self.base.weight_decay.is_some(),
                    "{} needs a weight_decay (0.004 by default); use Adam for none",
                    $class
                );
                check($class, self.beta_1, self.beta_2, self.epsilon)
            }

            fn rule(&self, lr: f64, t: u64) -> Rule {
                rule(lr, t, self.beta_1, self.beta_2, self.epsilon)
            }
        }
    };
}

adam_kind!(
    /// Keras's `Adam` (learning_rate 0.001, beta_1 0.9, beta_2 0.999,
    /// epsilon 1e-7). candle-nn's `AdamW` differs in its defaults and in
    /// where epsilon enters, so this follows Keras's update exactly:
    /// `w -= lr · sqrt(1 - b2^t) / (1 - b1^t) · m / (sqrt(v) + eps)`.
    Adam,
    "Adam",
    "adam",
    None::<f64>
);

adam_kind!(
    /// Keras's `AdamW`: Adam (same defaults) with decoupled weight decay
    /// (`weight_decay` 0.004), `w -= w · weight_decay · lr` before each step.
    AdamW,
    "AdamW",
    "adamw",
    Some(0.004)
);
