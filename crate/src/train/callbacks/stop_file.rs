//! A safe stop: training ends after the current epoch when a file appears,
//! and the model keeps what it learnt. `fit` adds it with `Fit::backup_dir`
//! (the file `STOP` in that folder).
//!
//! Why a file: a notebook cannot take input while a cell runs, and
//! Jupyter's interrupt (■) makes evcxr kill the kernel's process, losing
//! every variable. A file can be made from JupyterLab's file browser or a
//! terminal while `fit` runs, and it outlives a killed kernel: after a kill,
//! re-running the cells restores the backup and, with the file there,
//! trains no further, so the model of the last completed epoch is at hand
//! to evaluate, plot and save.

use super::{Callback, RunState};
use crate::model::Sequential;
use anyhow::Result;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// The file's name in the backup folder.
pub(crate) const STOP_FILE: &str = "STOP";

/// Stops training after the current epoch while the file `path` exists;
/// with it there when `fit` starts, trains nothing (after any backup has
/// been restored). Deleting the file lets the next `fit` carry on.
pub struct StopFile {
    path: PathBuf,
    /// seen during this epoch (it is looked for after every batch)
    seen: bool,
    /// `Fit::verbose`, to say nothing when 0
    verbose: u8,
}

impl StopFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            seen: false,
            verbose: 1,
        }
    }

    /// The stop file of a backup folder.
    pub fn in_dir(dir: &Path) -> PathBuf {
        dir.join(STOP_FILE)
    }
}

impl Callback for StopFile {
    fn on_train_begin(&mut self, _model: &mut Sequential, run: &mut RunState) -> Result<()> {
        self.verbose = run.verbose;
        let path = self.path.display();
        if self.path.exists() {
            run.stop_training = true;
            if run.verbose > 0 {
                let left = run.epochs.saturating_sub(run.epoch);
                println!(
                    "{path} is there: no further training, the model is the one of epoch {} of {}{}",
                    run.epoch,
                    run.epochs,
                    match left {
                        0 => String::new(),
                        _ => format!(" ({left} left: delete {path} to train on)"),
                    }
                );
            }
        } else if run.verbose > 0 && run.epoch < run.epochs {
            println!("To stop after the current epoch and keep the model, create the file {path}");
        }
        Ok(())
    }

    fn on_batch_end(
        &mut self,
        _model: &mut Sequential,
        epoch: usize,
        _batch: usize,
        _logs: &super::BatchLogs,
    ) -> Result<()> {
        // A stat per batch (microseconds, against a step of 100 ms).
        if !self.seen && self.path.exists() {
            self.seen = true;
            if self.verbose == 0 {
                return Ok(());
            }
            let mut out = std::io::stdout().lock();
            // After a progress bar drawn in place, on a line of its own.
            let newline = if out.is_terminal() { "\n" } else { "" };
            let _ = writeln!(
                out,
                "{newline}found {}: stopping at the end of epoch {epoch}",
                self.path.display()
            );
            let _ = out.flush();
        }
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        _model: &mut Sequential,
        epoch: usize,
        _logs: &super::Logs,
        run: &mut RunState,
    ) -> Result<()> {
        if !(self.seen || self.path.exists()) {
            return Ok(());
        }
        run.stop_training = true;
        let left = run.epochs.saturating_sub(epoch);
        if run.verbose > 0 && left > 0 {
            println!(
                "Stopped after epoch {epoch} of {} ({}): the model is the one of this epoch ({left} left: delete the file to train on)",
                run.epochs,
                self.path.display()
            );
        }
        Ok(())
    }
}
