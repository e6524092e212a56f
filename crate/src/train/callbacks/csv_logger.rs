//! Keras's `CSVLogger`.

use super::{Callback, Logs, RunState};
use crate::model::Sequential;
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

/// Keras's `CSVLogger`: one row per epoch, written (and flushed) as the
/// epoch ends, under Keras's header: `epoch` (Keras's 0-based index), then
/// the logged names sorted, e.g. `epoch,accuracy,learning_rate,loss,val_accuracy,val_loss`.
/// Without validation data the `val_` columns of the metrics are there
/// too, as `NA`, as in Keras (not one for the learning rate, which is no
/// metric). With `append`, rows go after those of an earlier run, and the
/// header only into an empty file.
pub struct CSVLogger {
    filename: PathBuf,
    separator: String,
    append: bool,
    file: Option<File>,
    /// the columns, from the first epoch's logs
    keys: Option<Vec<String>>,
    header_due: bool,
}

impl CSVLogger {
    pub fn new(filename: impl Into<PathBuf>) -> Self {
        Self {
            filename: filename.into(),
            separator: ",".into(),
            append: false,
            file: None,
            keys: None,
            header_due: false,
        }
    }
    pub fn separator(mut self, separator: &str) -> Self {
        self.separator = separator.into();
        self
    }
    pub fn append(mut self, append: bool) -> Self {
        self.append = append;
        self
    }

    fn write(&mut self, line: &str) -> Result<()> {
        let file = self
            .file
            .as_mut()
            .context("CSVLogger: the file is not open")?;
        file.write_all(line.as_bytes())
            .and_then(|_| file.flush())
            .with_context(|| format!("CSVLogger cannot write {}", self.filename.display()))
    }
}

/// A number as Python's `csv` writes it (`nan`, `inf` for the others).
fn value(v: f64) -> String {
    match v {
        v if v.is_nan() => "nan".into(),
        v if v.is_infinite() => if v > 0.0 { "inf" } else { "-inf" }.into(),
        v => format!("{v}"),
    }
}

impl Callback for CSVLogger {
    fn on_train_begin(&mut self, _: &mut Sequential, _: &mut RunState) -> Result<()> {
        let empty = std::fs::metadata(&self.filename).map_or(true, |m| m.len() == 0);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.append)
            .truncate(!self.append)
            .open(&self.filename)
            .with_context(|| format!("CSVLogger cannot open {}", self.filename.display()))?;
        self.file = Some(file);
        self.keys = None;
        self.header_due = !self.append || empty;
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        _: &mut Sequential,
        epoch: usize,
        logs: &Logs,
        _: &mut RunState,
    ) -> Result<()> {
        let keys = match &self.keys {
            Some(keys) => keys.clone(),
            None => {
                let mut keys: Vec<String> = logs.names().iter().map(|k| k.to_string()).collect();
                keys.sort();
                if !keys.iter().any(|k| k.starts_with("val_")) {
                    let val: Vec<String> = keys
                        .iter()
                        .filter(|k| *k != "learning_rate")
                        .map(|k| format!("val_{k}"))
                        .collect();
                    keys.extend(val);
                }
                self.keys = Some(keys.clone());
                keys
            }
        };
        if std::mem::take(&mut self.header_due) {
            let line = format!("epoch{}{}\n", self.separator, keys.join(&self.separator));
            self.write(&line)?;
        }
        let mut row = vec![(epoch - 1).to_string()];
        row.extend(keys.iter().map(|k| logs.get(k).map_or("NA".into(), value)));
        let line = row.join(&self.separator) + "\n";
        self.write(&line)
    }

    fn on_train_end(&mut self, _: &mut Sequential, _: &RunState) -> Result<()> {
        self.file = None;
        Ok(())
    }
}
