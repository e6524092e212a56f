//! Keras's SGD, with momentum and Nesterov momentum.

use super::base::{base_options, Base, Keras};
use super::LearningRate;
use crate::kernels::optim::Rule;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Keras's `SGD` (learning_rate 0.01, momentum 0, nesterov false):
/// `m = momentum·m - lr·g`, `w += m` (Nesterov: `w += momentum·m - lr·g`);
/// without momentum `w -= lr·g`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SGD {
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(skip)]
    base: Base,
}

impl Default for SGD {
    fn default() -> Self {
        Self::new(0.01)
    }
}

impl SGD {
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Self {
            momentum: 0.0,
            nesterov: false,
            base: Base::new(learning_rate),
        }
    }

    /// Accelerates along directions the gradients keep (Keras's `momentum`, in [0, 1)).
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// Nesterov momentum (Keras's `nesterov`).
    pub fn nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }
}

base_options!(SGD);

impl Keras for SGD {
    const CLASS: &'static str = "SGD";
    const NAME: &'static str = "sgd";

    fn base(&self) -> &Base {
        &self.base
    }

    fn base_mut(&mut self) -> &mut Base {
        &mut self.base
    }

    fn slots(&self) -> &'static [&'static str] {
        // Keras makes no momentum variables without momentum.
        match self.momentum != 0.0 {
            true => &["momentum"],
            false => &[],
        }
    }

    fn check_settings(&self) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&self.momentum),
            "SGD's momentum must be in [0, 1) (0: none; 0.9 is usual), got {}",
            self.momentum
        );
        Ok(())
    }

    fn rule(&self, lr: f64, _: u64) -> Rule {
        Rule::Sgd {
            lr,
            momentum: self.momentum,
            nesterov: self.nesterov,
        }
    }
}
