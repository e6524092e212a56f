//! Keras's `History`: the metrics of every epoch, in order.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What `fit` measured, one entry per epoch (`history.history` in Keras).
///
/// JSON has no NaN or infinity: serde_json writes them as `null`, and they
/// read back as NaN, so that a history of a run that diverged still loads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(deserialize_with = "nullable")]
    pub loss: Vec<f64>,
    #[serde(deserialize_with = "nullable")]
    pub acc: Vec<f64>,
    /// Empty when `fit` ran without a validation split.
    #[serde(deserialize_with = "nullable")]
    pub val_loss: Vec<f64>,
    #[serde(deserialize_with = "nullable")]
    pub val_acc: Vec<f64>,
    /// Wall-clock seconds of each epoch.
    #[serde(default, deserialize_with = "nullable")]
    pub epoch_seconds: Vec<f64>,
    /// The optimizer's learning rate at the end of each epoch (Keras 3's
    /// `learning_rate`); empty in histories saved before it was recorded.
    #[serde(default, deserialize_with = "nullable")]
    pub learning_rate: Vec<f64>,
}

/// Numbers, with `null` (how JSON writes NaN and infinities) as NaN.
fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
    let values: Vec<Option<f64>> = Deserialize::deserialize(d)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// The metrics of one epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochMetrics {
    pub loss: f64,
    pub acc: f64,
    pub val: Option<(f64, f64)>,
    /// the rate of the next update, at the end of the epoch (NaN: unknown)
    pub learning_rate: f64,
    pub seconds: f64,
}

impl History {
    pub fn epochs(&self) -> usize {
        self.loss.len()
    }

    /// The metrics of epoch `i` (0-based), if it was recorded.
    pub fn epoch(&self, i: usize) -> Option<EpochMetrics> {
        Some(EpochMetrics {
            loss: *self.loss.get(i)?,
            acc: *self.acc.get(i)?,
            val: self
                .val_loss
                .get(i)
                .copied()
                .zip(self.val_acc.get(i).copied()),
            learning_rate: self.learning_rate.get(i).copied().unwrap_or(f64::NAN),
            seconds: self.epoch_seconds.get(i).copied().unwrap_or(0.0),
        })
    }

    pub fn push(&mut self, m: EpochMetrics) {
        self.loss.push(m.loss);
        self.acc.push(m.acc);
        if let Some((loss, acc)) = m.val {
            self.val_loss.push(loss);
            self.val_acc.push(acc);
        }
        self.epoch_seconds.push(m.seconds);
        self.learning_rate.push(m.learning_rate);
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

impl History {
    /// The metric `name` (`loss`, `acc`, `val_loss`, `val_acc`) over the
    /// epochs so far as one line of block characters, lowest `▁` to highest
    /// `█` (a NaN as `?`), with its last value and its best: the shape of
    /// the learning curve while the plot can only come after `fit`.
    /// The last `width` epochs at most. None for an unknown or empty metric.
    pub fn sparkline(&self, name: &str, width: usize) -> Option<String> {
        const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let values = match name {
            "loss" => &self.loss,
            "acc" => &self.acc,
            "val_loss" => &self.val_loss,
            "val_acc" => &self.val_acc,
            _ => return None,
        };
        let shown = &values[values.len().saturating_sub(width)..];
        let last = *shown.last()?;
        let finite = || shown.iter().copied().filter(|v| v.is_finite());
        let (lo, hi) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let line: String = shown
            .iter()
            .map(|&v| match v.is_finite() {
                false => '?',
                // A flat curve sits in the middle.
                true if hi - lo <= 0.0 => BLOCKS[3],
                true => BLOCKS[(((v - lo) / (hi - lo)) * 7.0).round() as usize],
            })
            .collect();
        let lower_is_better = name.ends_with("loss");
        let best = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .reduce(|a, b| match (b.1 < a.1) == lower_is_better && b.1 != a.1 {
                true => b,
                false => a,
            });
        Some(match best {
            Some((i, v)) => format!("{name} {line} {last:.4} (best {v:.4}, epoch {})", i + 1),
            None => format!("{name} {line}"),
        })
    }
}

/// Keras's `verbose=2` line: `352/352 - 41s - loss: 0.9208 - acc: 0.6753 - val_loss: 0.8062 - val_acc: 0.7172`.
pub fn epoch_line(steps: usize, m: &EpochMetrics) -> String {
    let mut line = format!(
        "{steps}/{steps} - {:.0}s - loss: {:.4} - acc: {:.4}",
        m.seconds, m.loss, m.acc
    );
    if let Some((loss, acc)) = m.val {
        line += &format!(" - val_loss: {loss:.4} - val_acc: {acc:.4}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(val_loss: &[f64]) -> History {
        let mut h = History::default();
        for &v in val_loss {
            h.push(EpochMetrics {
                loss: v,
                acc: 0.5,
                val: Some((v, 0.5)),
                learning_rate: 1e-3,
                seconds: 1.0,
            });
        }
        h
    }

    /// Lowest to highest as ▁ to █, the last value, the best and its epoch.
    #[test]
    fn the_sparkline_draws_the_curve_so_far() {
        let h = of(&[1.4, 1.0, 0.8, 0.7, 0.65, 0.7, 0.95]);
        assert_eq!(
            h.sparkline("val_loss", 25).unwrap(),
            "val_loss █▄▂▁▁▁▄ 0.9500 (best 0.6500, epoch 5)"
        );
        // The last `width` epochs, scaled among themselves; the best of all.
        assert_eq!(
            h.sparkline("val_loss", 3).unwrap(),
            "val_loss ▁▂█ 0.9500 (best 0.6500, epoch 5)"
        );
        // Accuracy: higher is better; the first of equal bests.
        let mut h = of(&[1.0, 1.0]);
        h.val_acc = vec![0.5, 0.7, 0.7];
        assert_eq!(
            h.sparkline("val_acc", 25).unwrap(),
            "val_acc ▁██ 0.7000 (best 0.7000, epoch 2)"
        );
        assert_eq!(
            h.sparkline("loss", 25).unwrap(),
            "loss ▄▄ 1.0000 (best 1.0000, epoch 1)"
        );
        assert!(h.sparkline("lr", 25).is_none());
        assert!(History::default().sparkline("val_loss", 25).is_none());
    }

    /// A run whose loss became NaN or infinite still saves and loads.
    #[test]
    fn non_finite_values_round_trip_as_nan() {
        let mut h = History::default();
        for loss in [1.5, f64::NAN, f64::INFINITY] {
            h.push(EpochMetrics {
                loss,
                acc: 0.5,
                val: Some((loss, 0.25)),
                learning_rate: 1e-3,
                seconds: 1.0,
            });
        }
        let back = History::from_json(&h.to_json().unwrap()).unwrap();
        assert_eq!(back.loss[0], 1.5);
        assert!(back.loss[1].is_nan() && back.val_loss[2].is_nan());
        assert_eq!(
            h.sparkline("val_loss", 25).unwrap(),
            "val_loss ▄?? inf (best 1.5000, epoch 1)"
        );
        assert_eq!(back.acc, h.acc);
        assert_eq!(back.learning_rate, h.learning_rate);
    }

    /// Histories saved before the learning rate was recorded still load,
    /// and a rate that was not known (null) reads as NaN.
    #[test]
    fn learning_rate_column_is_optional() {
        let old = r#"{"loss":[1.0,0.5],"acc":[0.2,0.4],"val_loss":[],"val_acc":[]}"#;
        let h = History::from_json(old).unwrap();
        assert!(h.learning_rate.is_empty());
        assert!(h.epoch(1).unwrap().learning_rate.is_nan());
        let new = r#"{"loss":[1.0],"acc":[0.2],"val_loss":[],"val_acc":[],"learning_rate":[null]}"#;
        assert!(History::from_json(new).unwrap().learning_rate[0].is_nan());
        let json = h.to_json().unwrap();
        assert!(json.contains("\"learning_rate\""), "{json}");
    }
}
