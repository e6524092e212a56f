//! Keras's Adam.

use super::{LearningRate, Optimizer, Update};
use crate::kernels::{adam_runs_on, adam_update, AdamStep};
use anyhow::{Context, Result};
use candle_core::Tensor;
use std::collections::HashMap;

/// Keras's Adam. candle-nn's `AdamW` differs in its defaults (eps 1e-8,
/// weight decay 0.01) and in where epsilon enters, so this follows Keras's
/// update exactly: `w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`.
#[derive(Clone, Debug)]
pub struct Adam {
    pub learning_rate: LearningRate,
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    step: u64,
    /// (m, v) of each parameter, by name
    moments: HashMap<String, (Tensor, Tensor)>,
}

impl Default for Adam {
    fn default() -> Self {
        Self::new(1e-3)
    }
}

impl Adam {
    /// Adam with Keras's defaults (betas 0.9 / 0.999, epsilon 1e-7).
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Self {
            learning_rate: learning_rate.into(),
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            step: 0,
            moments: HashMap::new(),
        }
    }
}

impl Optimizer for Adam {
    fn name(&self) -> &'static str {
        "adam"
    }

    fn check(&self) -> Result<()> {
        self.learning_rate.check("Adam")?;
        for (name, beta) in [("beta_1", self.beta_1), ("beta_2", self.beta_2)] {
            anyhow::ensure!(
                (0.0..1.0).contains(&beta),
                "Adam's {name} must be in [0, 1), got {beta}"
            );
        }
        anyhow::ensure!(
            self.epsilon.is_finite() && self.epsilon > 0.0,
            "Adam's epsilon must be a small positive number, got {}",
            self.epsilon
        );
        Ok(())
    }

    fn slots(&self) -> &'static [&'static str] {
        &["m", "v"]
    }

    fn update(&mut self, params: &[Update]) -> Result<()> {
        for (name, var, _) in params {
            if !self.moments.contains_key(*name) {
                let zeros = (var.zeros_like()?, var.zeros_like()?);
                self.moments.insert(name.to_string(), zeros);
            }
        }
        let lr = self.learning_rate.at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let alpha = lr * (1.0 - self.beta_2.powi(t)).sqrt() / (1.0 - self.beta_1.powi(t));
        for (name, var, g) in params {
            let Some(g) = g else { continue };
            let (m, v) = self.moments.get_mut(*name).context("moments made above")?;
            if adam_runs_on(var.as_tensor()) {
                let c = AdamStep {
                    beta_1: self.beta_1,
                    beta_2: self.beta_2,
                    alpha,
                    epsilon: self.epsilon,
                };
                adam_update(var.as_tensor(), m, v, g, c)?;
                continue;
            }
            *m = ((&*m * self.beta_1)? + (*g * (1.0 - self.beta_1))?)?;
            *v = ((&*v * self.beta_2)? + (g.sqr()? * (1.0 - self.beta_2))?)?;
            let update = (m.clone() / (v.sqrt()? + self.epsilon)?)?;
            var.set(&(var.as_tensor() - (update * alpha)?)?)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.learning_rate.at(self.step)
    }

    fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        self.learning_rate.set(lr)
    }

    fn iterations(&self) -> u64 {
        self.step
    }

    fn reset(&mut self) {
        self.step = 0;
        self.moments.clear();
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut names: Vec<&String> = self.moments.keys().collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|n| {
                let (m, v) = &self.moments[n];
                [(format!("m.{n}"), m.clone()), (format!("v.{n}"), v.clone())]
            })
            .collect()
    }

    fn load_state(&mut self, iterations: u64, mut state: HashMap<String, Tensor>) -> Result<()> {
        let names: Vec<String> = state
            .keys()
            .filter_map(|k| k.strip_prefix("m.").map(String::from))
            .collect();
        let mut moments = HashMap::new();
        for n in names {
            let m = state.remove(&format!("m.{n}")).context("m just listed")?;
            let v = state
                .remove(&format!("v.{n}"))
                .with_context(|| format!("Adam's state has m but no v for {n}"))?;
            moments.insert(n, (m, v));
        }
        anyhow::ensure!(
            state.is_empty(),
            "Adam's state has entries it does not know: {:?}",
            state.keys().collect::<Vec<_>>()
        );
        self.moments = moments;
        self.step = iterations;
        Ok(())
    }
}
