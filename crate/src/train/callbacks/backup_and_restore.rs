//! Keras's `BackupAndRestore`, which `fit` adds with `Fit::backup_dir`.

use super::{Callback, Logs, RunIdentity, RunState};
use crate::history::{epoch_line, History};
use crate::io::{read_safetensors, read_safetensors_metadata, safetensors_bytes_with};
use crate::io::{write_atomic, NamedTensor};
use crate::model::{Architecture, Sequential};
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Keras's `BackupAndRestore`: everything `fit` needs to carry on after the
/// kernel died, in one safetensors file written atomically at the end of
/// every epoch (weights and optimizer state by name; in the header the
/// epoch, the history so far and the generator's next seed). The next
/// `fit` with the same folder carries on from it, if it is a backup of the
/// same run (see [`RunIdentity`]). It is kept when `fit` completes, and the
/// caller removes it ([`BackupAndRestore::remove`]) after saving the model:
/// until then a rerun finds the run complete and trains nothing.
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
    /// absent in the backups of version 0.1
    #[serde(default)]
    run: Option<RunIdentity>,
    /// the fingerprint of the weights it holds
    #[serde(default)]
    weights: Option<u64>,
}

impl BackupState {
    /// Why this backup is not one of the run `run` describes, if it is not.
    fn mismatch(&self, model: &Sequential, run: &RunState) -> Option<String> {
        let mut differs = Vec::new();
        if self.architecture != model.architecture {
            differs.push("another model architecture".to_string());
        }
        if (self.train_samples, self.batch_size) != (run.train_samples, run.batch_size) {
            differs.push(format!(
                "{} training samples in batches of {} (this run: {} in batches of {})",
                self.train_samples, self.batch_size, run.train_samples, run.batch_size
            ));
        }
        if let Some(saved) = &self.run {
            let now = &run.identity;
            if saved.data != now.data {
                differs.push("other training data".into());
            }
            // A model rerun from where this backup stands is the same run.
            let here = self.weights == Some(now.initial_weights);
            if saved.initial_weights != now.initial_weights && !here {
                differs.push("other initial weights (another seed)".into());
            }
            for (what, was, is) in [
                ("augment", saved.augment, now.augment),
                ("shuffle", saved.shuffle, now.shuffle),
            ] {
                if was != is {
                    differs.push(format!("{what} {was} (this run: {is})"));
                }
            }
            if saved.label_smoothing != now.label_smoothing {
                differs.push(format!(
                    "label_smoothing {} (this run: {})",
                    saved.label_smoothing, now.label_smoothing
                ));
            }
        }
        (!differs.is_empty()).then(|| differs.join(", "))
    }
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
        // The model already is where a finished backup ends (a second `fit`
        // of the same model in one session): this is a new run from here.
        let complete = state.run.as_ref().is_some_and(|r| r.epochs == state.epoch);
        if complete && state.weights == Some(run.identity.initial_weights) {
            return Ok(());
        }
        if let Some(why) = state.mismatch(model, run) {
            bail!(
                "{} is the backup of another run ({why}): delete it to start afresh, or use another backup folder",
                path.display()
            );
        }
        ensure!(
            state.epoch <= run.identity.epochs,
            "{} holds a run of {} epochs, more than the {} asked for: ask for at least {} epochs to use it, or delete it to start afresh",
            path.display(),
            state.epoch,
            run.identity.epochs,
            state.epoch
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
        if run.verbose > 0 {
            let left = run.identity.epochs - state.epoch;
            println!(
                "Restored the backup in {}: {} epochs done, {left} to go{}",
                self.dir.display(),
                state.epoch,
                if left == 0 {
                    " (the run is complete: delete the backup folder to train afresh)"
                } else {
                    ""
                }
            );
            let steps = run.train_samples.div_ceil(run.batch_size);
            // The history holds the last epochs (a run begun at an initial_epoch).
            let first = state.epoch - state.history.epochs().min(state.epoch);
            for (i, m) in
                (0..state.history.epochs()).filter_map(|i| Some((i, state.history.epoch(i)?)))
            {
                println!(
                    "Epoch {}/{} (restored)\n{}",
                    first + i + 1,
                    run.identity.epochs,
                    epoch_line(steps, &m)
                );
            }
        }
        model.rng = StdRng::seed_from_u64(state.rng_seed);
        run.history = state.history;
        run.epoch = state.epoch;
        run.rng_seed = state.rng_seed;
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        model: &mut Sequential,
        _epoch: usize,
        _logs: &Logs,
        run: &mut RunState,
    ) -> Result<()> {
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
            epoch: run.epoch,
            history: run.history.clone(),
            rng_seed: run.rng_seed,
            adam_step: optimizer.iterations(),
            train_samples: run.train_samples,
            batch_size: run.batch_size,
            architecture: model.architecture.clone(),
            run: Some(run.identity.clone()),
            weights: Some(weights_fingerprint(model)?),
        };
        let meta = HashMap::from([("state".to_string(), serde_json::to_string(&state)?)]);
        write_atomic(&self.path(), &safetensors_bytes_with(&tensors, Some(meta))?)
    }

    // No on_train_end: the backup stays until the caller has saved what
    // it needs (see [`BackupAndRestore::remove`]). A rerun meanwhile finds
    // the run complete and trains nothing.
}

impl BackupAndRestore {
    /// The backup file in `dir`.
    pub fn file(dir: &Path) -> PathBuf {
        dir.join(BACKUP_FILE)
    }

    /// Removes the backup in `dir` (if any), and its stop file (which
    /// would stop the next run at once): call it once the trained model
    /// and its history are saved, not before.
    pub fn remove(dir: &Path) -> Result<()> {
        for file in [Self::file(dir), super::StopFile::in_dir(dir)] {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("cannot remove {}", file.display()))?
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A 64-bit hash of tensors' values (as f32 bits), in parallel chunks but
/// independent of the thread count: what identifies a run's data and
/// initial weights in its backup.
pub(crate) fn fingerprint(tensors: &[&Tensor]) -> Result<u64> {
    use candle_core::DType;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for t in tensors {
        // f32 on the CPU is read in place (the training images are large);
        // anything else is copied to the CPU as f32 first.
        let t = match t.device().is_cpu() && t.dtype() == DType::F32 {
            true => t.contiguous()?,
            false => t
                .to_dtype(DType::F32)?
                .to_device(&candle_core::Device::Cpu)?,
        };
        let (storage, layout) = t.storage_and_layout();
        let v = crate::model::params::f32_data(&storage, layout)?;
        let chunks: Vec<u64> = v
            .par_chunks(1 << 16)
            .map(|c| {
                c.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, x| {
                    (h ^ x.to_bits() as u64).wrapping_mul(0x0100_0000_01b3)
                })
            })
            .collect();
        for (i, c) in chunks.into_iter().enumerate() {
            hash = (hash ^ c ^ (i as u64))
                .wrapping_mul(0x0100_0000_01b3)
                .rotate_left(29);
        }
        hash ^= v.len() as u64;
    }
    Ok(hash)
}

/// The fingerprint of a model's weights.
fn weights_fingerprint(model: &Sequential) -> Result<u64> {
    fingerprint(
        &model
            .params
            .iter()
            .map(|p| p.var.as_tensor())
            .collect::<Vec<_>>(),
    )
}
