//! Keras's `ModelCheckpoint`.

use super::{Callback, Logs, Mode, Monitor, RunState};
use crate::model::Sequential;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Keras's `ModelCheckpoint` (`save_freq="epoch"`): saves the model at the
/// end of every epoch through [`Sequential::save`] (atomic: a checkpoint on
/// disk is always whole), or with `save_best_only` only when `monitor`
/// improved. `filepath` is the stem `save` takes (`<stem>.json` and
/// `<stem>.safetensors`), formatted as Keras does with the epoch (1-based)
/// and the epoch's logs: `"ckpt/model-{epoch:02d}-{val_loss:.2f}"`.
/// Keras's `save_weights_only` has no counterpart: the weights file already
/// carries the architecture.
pub struct ModelCheckpoint {
    filepath: String,
    monitor: Monitor,
    save_best_only: bool,
    verbose: u8,
    best: Option<f64>,
    initial_value_threshold: Option<f64>,
}

impl ModelCheckpoint {
    /// Saves to `filepath` (see above), monitoring `"val_loss"` as Keras does.
    pub fn new(filepath: impl Into<String>) -> Self {
        Self {
            filepath: filepath.into(),
            monitor: Monitor::new("val_loss"),
            save_best_only: false,
            verbose: 0,
            best: None,
            initial_value_threshold: None,
        }
    }
    pub fn monitor(mut self, monitor: &str) -> Self {
        self.monitor.name = monitor.into();
        self
    }
    pub fn save_best_only(mut self, best_only: bool) -> Self {
        self.save_best_only = best_only;
        self
    }
    pub fn mode(mut self, mode: Mode) -> Self {
        self.monitor.mode = mode;
        self
    }
    /// The value the first checkpoint of `save_best_only` must beat.
    pub fn initial_value_threshold(mut self, value: f64) -> Self {
        self.initial_value_threshold = Some(value);
        self
    }
    /// 1: say what it saves.
    pub fn verbose(mut self, verbose: u8) -> Self {
        self.verbose = verbose;
        self
    }

    /// The file stem for `epoch` and its logs.
    fn path(&self, epoch: usize, logs: &Logs) -> Result<PathBuf> {
        format_path(&self.filepath, &|name| match name {
            "epoch" => Some(epoch as f64),
            _ => logs.get(name),
        })
        .map(PathBuf::from)
    }
}

/// Python's `str.format` for the fields a checkpoint path uses: `{name}`,
/// `{name:02d}` (an integer, zero padded), `{name:.2f}` / `{name:.3e}`.
fn format_path(pattern: &str, value: &dyn Fn(&str) -> Option<f64>) -> Result<String> {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out += &rest[..open];
        let close = rest[open..].find('}').with_context(|| {
            format!("ModelCheckpoint filepath {pattern:?}: a '{{' is not closed")
        })? + open;
        let field = &rest[open + 1..close];
        let (name, spec) = field.split_once(':').unwrap_or((field, ""));
        let Some(v) = value(name) else {
            bail!("ModelCheckpoint filepath {pattern:?} names {name:?}, which is neither epoch nor a logged metric");
        };
        out += &format_value(v, spec).with_context(|| {
            format!("ModelCheckpoint filepath {pattern:?}: the format {{{field}}} is not one of {{name}}, {{name:02d}}, {{name:.2f}}, {{name:.2e}}")
        })?;
        rest = &rest[close + 1..];
    }
    Ok(out + rest)
}

/// One value in a Python format spec (`""`, `"02d"`, `"d"`, `".4f"`, `".2e"`).
fn format_value(v: f64, spec: &str) -> Option<String> {
    if spec.is_empty() {
        return Some(format!("{v}"));
    }
    if let Some(width) = spec.strip_suffix('d') {
        let zero = width.starts_with('0');
        let width: usize = match width {
            "" => 0,
            w => w.parse().ok()?,
        };
        let n = v.round() as i64;
        return Some(match zero {
            true => format!("{n:0width$}"),
            false => format!("{n:width$}"),
        });
    }
    let digits = spec.strip_prefix('.')?;
    let (digits, kind) = digits.split_at(digits.len().checked_sub(1)?);
    let p: usize = digits.parse().ok()?;
    match kind {
        "f" => Some(format!("{v:.p$}")),
        // Python writes the exponent with a sign and two digits: 1.50e-03.
        "e" => {
            let s = format!("{v:.p$e}");
            let (m, e) = s.split_once('e')?;
            let e: i32 = e.parse().ok()?;
            Some(format!(
                "{m}e{}{:02}",
                if e < 0 { '-' } else { '+' },
                e.abs()
            ))
        }
        _ => None,
    }
}

impl Callback for ModelCheckpoint {
    fn check(&self, logs: &[&str]) -> Result<()> {
        if self.save_best_only {
            self.monitor.check("ModelCheckpoint", logs)?;
        }
        match format_path(&self.filepath, &|name| {
            (name == "epoch" || logs.contains(&name)).then_some(1.0)
        }) {
            Ok(_) => Ok(()),
            Err(e) => bail!("{e:#}; the names it can use: epoch, {}", logs.join(", ")),
        }
    }

    fn on_train_begin(&mut self, _: &mut Sequential, _: &mut RunState) -> Result<()> {
        self.best = self.initial_value_threshold;
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        model: &mut Sequential,
        epoch: usize,
        logs: &Logs,
        _: &mut RunState,
    ) -> Result<()> {
        let path = self.path(epoch, logs)?;
        if self.save_best_only {
            let current = self.monitor.value(logs)?;
            if !self.monitor.is_improvement(current, self.best) {
                if self.verbose > 0 {
                    println!(
                        "Epoch {epoch}: {} did not improve from {:.5}",
                        self.monitor.name,
                        self.best.unwrap_or(f64::NAN)
                    );
                }
                return Ok(());
            }
            if self.verbose > 0 {
                let best = self.best.map_or("None".into(), |b| format!("{b:.5}"));
                println!(
                    "Epoch {epoch}: {} improved from {best} to {current:.5}, saving model to {}",
                    self.monitor.name,
                    path.display()
                );
            }
            self.best = Some(current);
        } else if self.verbose > 0 {
            println!("Epoch {epoch}: saving model to {}", path.display());
        }
        model
            .save(&path)
            .with_context(|| format!("ModelCheckpoint could not save {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python's formatting of the fields Keras's examples use.
    #[test]
    fn formats_paths_as_python_does() {
        let v = |name: &str| match name {
            "epoch" => Some(3.0),
            "val_loss" => Some(0.71828),
            "lr" => Some(0.0015),
            _ => None,
        };
        let f = |p| format_path(p, &v);
        assert_eq!(
            f("m-{epoch:02d}-{val_loss:.2f}").unwrap(),
            "m-03-0.72".to_string()
        );
        assert_eq!(f("{epoch}/{epoch:3d}").unwrap(), "3/  3");
        assert_eq!(f("{lr:.1e}").unwrap(), "1.5e-03");
        assert!(f("{val_acc:.2f}").is_err());
        assert!(f("{epoch:x}").is_err());
        assert!(f("{epoch").is_err());
    }
}
