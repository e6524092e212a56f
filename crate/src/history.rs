//! Keras's `History`: the metrics of every epoch, in order.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What `fit` measured, one entry per epoch (`history.history` in Keras).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub loss: Vec<f64>,
    pub acc: Vec<f64>,
    /// Empty when `fit` ran without a validation split.
    pub val_loss: Vec<f64>,
    pub val_acc: Vec<f64>,
    /// Wall-clock seconds of each epoch.
    #[serde(default)]
    pub epoch_seconds: Vec<f64>,
}

/// The metrics of one epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochMetrics {
    pub loss: f64,
    pub acc: f64,
    pub val: Option<(f64, f64)>,
    pub seconds: f64,
}

impl History {
    pub fn epochs(&self) -> usize {
        self.loss.len()
    }

    pub fn push(&mut self, m: EpochMetrics) {
        self.loss.push(m.loss);
        self.acc.push(m.acc);
        if let Some((loss, acc)) = m.val {
            self.val_loss.push(loss);
            self.val_acc.push(acc);
        }
        self.epoch_seconds.push(m.seconds);
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json)
            .context("not a training history (JSON with loss, acc, val_loss, val_acc)")
    }

    /// Writes the history as JSON, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_atomic(path.as_ref(), self.to_json()?.as_bytes())
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read history {}", path.display()))?;
        Self::from_json(&json).with_context(|| format!("in {}", path.display()))
    }
}
