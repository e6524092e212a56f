//! Keras's callbacks: small objects that `fit` calls at the start and end of
//! the run, of each epoch and after each batch. `TerminateOnNaN` and
//! `BackupAndRestore` are the two `fit` uses today.

use crate::history::History;
use crate::io::{read_safetensors, read_safetensors_metadata, safetensors_bytes_with};
use crate::io::{write_atomic, NamedTensor};
use crate::model::{Architecture, Sequential};
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a run stands, as `fit` shows it to the callbacks.
pub struct RunState {
    /// Metrics of the epochs done so far.
    pub history: History,
    /// The seed the model's generator was last reseeded with (see `fit`).
    pub rng_seed: u64,
    pub train_samples: usize,
    pub batch_size: usize,
    pub verbose: bool,
}

/// Something `fit` calls as it goes. Every method has a default that does
/// nothing; an error stops training with that error.
pub trait Callback {
    /// Before the first epoch; may restore an interrupted run into `model`
    /// and `run` (weights, optimizer state, history, generator).
    fn on_train_begin(&mut self, _model: &mut Sequential, _run: &mut RunState) -> Result<()> {
        Ok(())
    }
    fn on_epoch_begin(&mut self, _model: &Sequential, _epoch: usize) -> Result<()> {
        Ok(())
    }
    /// After the step of batch `batch` (0-based) of `epoch` (1-based).
    fn on_batch_end(
        &mut self,
        _model: &mut Sequential,
        _epoch: usize,
        _batch: usize,
        _logs: &BatchLogs,
    ) -> Result<()> {
        Ok(())
    }
    /// After the epoch's metrics are in `run.history`.
    fn on_epoch_end(&mut self, _model: &mut Sequential, _run: &RunState) -> Result<()> {
        Ok(())
    }
    fn on_train_end(&mut self, _model: &mut Sequential, _run: &RunState) -> Result<()> {
        Ok(())
    }
}

/// What one training step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchLogs {
    /// mean loss over the batch
    pub loss: f64,
    /// how many of its images were classified right
    pub correct: usize,
    pub size: usize,
    /// Why the step made no update, when it made none (a gradient that is
    /// not finite).
    pub skipped: Option<String>,
}

/// Callbacks called in order, as one.
pub struct Callbacks(pub Vec<Box<dyn Callback>>);

impl Callback for Callbacks {
    fn on_train_begin(&mut self, model: &mut Sequential, run: &mut RunState) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|c| c.on_train_begin(model, run))
    }
    fn on_epoch_begin(&mut self, model: &Sequential, epoch: usize) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|c| c.on_epoch_begin(model, epoch))
    }
    fn on_batch_end(
        &mut self,
        m: &mut Sequential,
        epoch: usize,
        b: usize,
        logs: &BatchLogs,
    ) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|c| c.on_batch_end(m, epoch, b, logs))
    }
    fn on_epoch_end(&mut self, model: &mut Sequential, run: &RunState) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|c| c.on_epoch_end(model, run))
    }
    fn on_train_end(&mut self, model: &mut Sequential, run: &RunState) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|c| c.on_train_end(model, run))
    }
}

/// Keras's `TerminateOnNaN`, and more: a step whose loss, gradients or
/// updated weights are not finite stops training, and the weights and the
/// optimizer's state go back to those of the end of the last epoch. (A NaN
/// can leave the loss finite: the ReLU turns it into 0, and `0 · NaN` puts
/// it into the gradients, so the weights are checked as well.)
#[derive(Default)]
pub struct TerminateOnNaN {
    weights: Vec<Tensor>,
    optimizer: Option<(u64, Vec<(String, Tensor)>)>,
}

impl Callback for TerminateOnNaN {
    fn on_epoch_begin(&mut self, model: &Sequential, _: usize) -> Result<()> {
        self.weights = model.params.snapshot()?;
        // Copies: the optimizer updates its state in place.
        self.optimizer = match &model.optimizer {
            Some(o) => Some((
                o.iterations(),
                o.state()
                    .into_iter()
                    .map(|(n, t)| Ok((n, t.copy()?)))
                    .collect::<Result<_>>()?,
            )),
            None => None,
        };
        Ok(())
    }

    fn on_batch_end(
        &mut self,
        model: &mut Sequential,
        epoch: usize,
        batch: usize,
        logs: &BatchLogs,
    ) -> Result<()> {
        let loss = logs.loss;
        let problem = if !loss.is_finite() {
            Some(format!("the loss became {loss}"))
        } else if let Some(why) = &logs.skipped {
            Some(why.clone())
        } else {
            model.params.first_non_finite()?.map(|(name, k)| {
                format!(
                    "{k} values of {name} became NaN or infinite (the loss was still {loss:.4})"
                )
            })
        };
        let Some(problem) = problem else {
            return Ok(());
        };
        model.params.restore(&self.weights)?;
        if let (Some(o), Some((iterations, state))) = (model.optimizer.as_mut(), &self.optimizer) {
            o.load_state(*iterations, state.iter().cloned().collect())?;
        }
        bail!(
            "{problem} in epoch {epoch} after {batch} batches: training stopped, and the weights and the optimizer's state are back to those of the end of epoch {}. Try a smaller learning rate, or check the inputs for NaN",
            epoch - 1
        )
    }
}

/// Keras's `BackupAndRestore`: everything `fit` needs to carry on after the
/// kernel died, in one safetensors file written atomically at the end of
/// every epoch (weights and optimizer state by name; in the header the
/// epoch, the history so far and the generator's next seed). The next
/// `fit` with the same folder carries on from it; it is removed when `fit`
/// completes.
pub struct BackupAndRestore {
    dir: PathBuf,
}

pub(crate) const BACKUP_FILE: &str = "backup.safetensors";

/// The header of a backup.
#[derive(serde::Serialize, serde::Deserialize)]
struct BackupState {
    epoch: usize,
    history: History,
    rng_seed: u64,
    /// the optimizer's iterations (named for the one optimizer of the
    /// first backups, so that those still load)
    adam_step: u64,
    train_samples: usize,
    batch_size: usize,
    architecture: Architecture,
}

impl BackupAndRestore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(BACKUP_FILE)
    }
}

/// `t` as f32 values with its shape, for a safetensors file.
fn named(name: String, t: &Tensor) -> Result<NamedTensor> {
    Ok(NamedTensor {
        name,
        shape: t.dims().to_vec(),
        data: t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?,
    })
}

impl Callback for BackupAndRestore {
    fn on_train_begin(&mut self, model: &mut Sequential, run: &mut RunState) -> Result<()> {
        let path = self.path();
        if !path.exists() {
            return Ok(());
        }
        let meta = read_safetensors_metadata(&path, "training backup")?;
        let state: BackupState = meta
            .get("state")
            .map(|s| serde_json::from_str(s))
            .transpose()
            .with_context(|| format!("{}: its training state is unreadable", path.display()))?
            .with_context(|| {
                format!(
                    "{} has no training state: delete it to start afresh",
                    path.display()
                )
            })?;
        ensure!(
            state.architecture == model.architecture
                && state.train_samples == run.train_samples
                && state.batch_size == run.batch_size,
            "{} is the backup of another model or run ({} samples, batch {}): delete it, or use another backup folder",
            path.display(),
            state.train_samples,
            state.batch_size
        );
        let (device, dtype) = (model.device.clone(), model.dtype());
        let optimizer = model
            .optimizer
            .as_mut()
            .context("compile() the model first")?;
        let prefix = format!("{}.", optimizer.name());
        let weights = model.architecture.weight_specs()?;
        let mut expected = weights.clone();
        if state.adam_step > 0 {
            for slot in optimizer.slots() {
                for (name, shape) in &weights {
                    expected.push((format!("{prefix}{slot}.{name}"), shape.clone()));
                }
            }
        }
        let mut opt_state = HashMap::new();
        for t in read_safetensors(&path, &expected)? {
            let value = Tensor::from_vec(t.data, t.shape, &device)?.to_dtype(dtype)?;
            match t.name.strip_prefix(&prefix) {
                Some(slot_name) => {
                    opt_state.insert(slot_name.to_string(), value);
                }
                None => model
                    .params
                    .get(&t.name)
                    .context("a weight checked above")?
                    .var
                    .set(&value)?,
            }
        }
        optimizer.load_state(state.adam_step, opt_state)?;
        if run.verbose {
            println!(
                "Restored the backup in {}: {} epochs done",
                self.dir.display(),
                state.epoch
            );
        }
        model.rng = StdRng::seed_from_u64(state.rng_seed);
        run.history = state.history;
        run.rng_seed = state.rng_seed;
        Ok(())
    }

    fn on_epoch_end(&mut self, model: &mut Sequential, run: &RunState) -> Result<()> {
        let optimizer = model
            .optimizer
            .as_ref()
            .context("compile() the model first")?;
        let mut tensors = Vec::new();
        for p in model.params.iter() {
            tensors.push(named(p.name.clone(), p.var.as_tensor())?);
        }
        for (name, t) in optimizer.state() {
            tensors.push(named(format!("{}.{name}", optimizer.name()), &t)?);
        }
        let state = BackupState {
            epoch: run.history.epochs(),
            history: run.history.clone(),
            rng_seed: run.rng_seed,
            adam_step: optimizer.iterations(),
            train_samples: run.train_samples,
            batch_size: run.batch_size,
            architecture: model.architecture.clone(),
        };
        let meta = HashMap::from([("state".to_string(), serde_json::to_string(&state)?)]);
        write_atomic(&self.path(), &safetensors_bytes_with(&tensors, Some(meta))?)
    }

    fn on_train_end(&mut self, _: &mut Sequential, _: &RunState) -> Result<()> {
        let _ = std::fs::remove_file(self.path());
        Ok(())
    }
}

/// The backup file in `dir` (for tests and tools).
pub fn backup_path(dir: &Path) -> PathBuf {
    dir.join(BACKUP_FILE)
}
