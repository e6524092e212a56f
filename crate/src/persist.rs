//! Files on disk: atomic writes, and a model as architecture JSON plus
//! safetensors weights (the article's `model.to_json()` and `.h5`).

use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` so that readers see the old file or the new
/// one, never half of one: the bytes go to a temporary file beside it,
/// reach the disk, and then take its name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_string_lossy();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// The two files of a saved model: `<stem>.json` and `<stem>.safetensors`.
/// `stem` may be given with either extension or none.
pub fn model_paths(stem: impl AsRef<Path>) -> (PathBuf, PathBuf) {
    let stem = stem.as_ref();
    let stem = match stem.extension().and_then(|e| e.to_str()) {
        Some("json" | "safetensors") => stem.with_extension(""),
        _ => stem.to_path_buf(),
    };
    let with = |ext: &str| {
        let mut s = stem.clone().into_os_string();
        s.push(".");
        s.push(ext);
        PathBuf::from(s)
    };
    (with("json"), with("safetensors"))
}

/// A tensor read from a safetensors file: its shape and f32 values.
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Serializes f32 tensors to safetensors bytes, in the order given.
pub fn safetensors_bytes(tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    safetensors_bytes_with(tensors, None)
}

/// Like [`safetensors_bytes`], with string metadata in the header.
fn safetensors_bytes_with(
    tensors: &[NamedTensor],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            Ok((
                t.name.clone(),
                TensorView::new(Dtype::F32, t.shape.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}

/// Reads the f32 tensors `expected` (name, shape) from a safetensors file,
/// checking that each is present with that shape and dtype. The file's own
/// header is only trusted after safetensors has checked it against the
/// file's length, so a lying header cannot make us allocate without bound.
pub fn read_safetensors(
    path: &Path,
    expected: &[(String, Vec<usize>)],
) -> Result<Vec<NamedTensor>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read weights {}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a safetensors file: {e}", path.display()))?;
    let mut out = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        let view = file.tensor(name).map_err(|_| {
            anyhow::anyhow!(
                "{} has no tensor {name:?}: the weights do not belong to this architecture",
                path.display()
            )
        })?;
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "{}: tensor {name:?} is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        ensure!(
            view.shape() == shape.as_slice(),
            "{}: tensor {name:?} has shape {:?}, the architecture needs {:?}",
            path.display(),
            view.shape(),
            shape
        );
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(NamedTensor {
            name: name.clone(),
            shape: shape.clone(),
            data,
        });
    }
    let extra: Vec<String> = file
        .names()
        .into_iter()
        .filter(|n| !expected.iter().any(|(e, _)| e == *n))
        .map(String::from)
        .collect();
    ensure!(
        extra.is_empty(),
        "{} holds tensors the architecture does not have: {extra:?}",
        path.display()
    );
    Ok(out)
}

/// The architecture file, shaped like Keras's `model.to_json()`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelJson {
    class_name: String,
    config: crate::model::Architecture,
}

impl crate::model::Sequential {
    /// The architecture as JSON (Keras's `model.to_json()`).
    pub fn to_json(&self) -> Result<String> {
        let file = ModelJson {
            class_name: "Sequential".into(),
            config: self.architecture.clone(),
        };
        Ok(serde_json::to_string_pretty(&file)?)
    }

    /// Saves `<stem>.json` (architecture) and `<stem>.safetensors` (weights),
    /// each atomically, creating the folder if needed. Returns both paths.
    pub fn save(&self, stem: impl AsRef<Path>) -> Result<(PathBuf, PathBuf)> {
        let (json, weights) = model_paths(stem);
        let tensors = self
            .named_vars()
            .into_iter()
            .map(|(name, var)| {
                Ok(NamedTensor {
                    name,
                    shape: var.dims().to_vec(),
                    data: var.as_tensor().flatten_all()?.to_vec1::<f32>()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        write_atomic(&weights, &safetensors_bytes(&tensors)?)?;
        write_atomic(&json, self.to_json()?.as_bytes())?;
        Ok((json, weights))
    }

    /// Rebuilds a model from an architecture JSON string (no weights yet).
    pub fn architecture_from_json(json: &str) -> Result<crate::model::Architecture> {
        let file: ModelJson = serde_json::from_str(json).context(
            "not a model architecture: expected {\"class_name\": \"Sequential\", \"config\": {name, input_shape, layers}}",
        )?;
        ensure!(
            file.class_name == "Sequential",
            "only Sequential models can be loaded, got {:?}",
            file.class_name
        );
        file.config.shapes()?;
        Ok(file.config)
    }

    /// Loads a model saved with [`save`](Self::save) onto the device
    /// [`crate::device::pick_device`] picks.
    pub fn load(stem: impl AsRef<Path>) -> Result<Self> {
        Self::load_on(stem, &crate::device::pick_device()?)
    }

    /// Loads a saved model onto `device`.
    pub fn load_on(stem: impl AsRef<Path>, device: &candle_core::Device) -> Result<Self> {
        let (json_path, weights_path) = model_paths(stem);
        let json = std::fs::read_to_string(&json_path)
            .with_context(|| format!("cannot read model architecture {}", json_path.display()))?;
        let architecture = Self::architecture_from_json(&json)
            .with_context(|| format!("in {}", json_path.display()))?;
        let expected = architecture.weight_specs()?;
        let tensors = read_safetensors(&weights_path, &expected)?;
        let model = Self::from_architecture(architecture, 0, device)?;
        for ((_, var), t) in model.named_vars().into_iter().zip(tensors) {
            var.set(&candle_core::Tensor::from_vec(t.data, t.shape, device)?)?;
        }
        Ok(model)
    }
}

/// A training backup (Keras's `BackupAndRestore`): everything `fit` needs to
/// carry on after the kernel died, in one safetensors file written atomically
/// at the end of every epoch: weights, Adam's moments, and in the header the
/// epoch, the history so far and the generator's next seed.
pub(crate) const BACKUP_FILE: &str = "backup.safetensors";

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct BackupState {
    pub epoch: usize,
    pub history: crate::history::History,
    pub rng_seed: u64,
    pub adam_step: u64,
    pub train_samples: usize,
    pub batch_size: usize,
    pub architecture: crate::model::Architecture,
}

impl crate::model::Sequential {
    fn tensor_of(name: String, t: &candle_core::Tensor) -> Result<NamedTensor> {
        Ok(NamedTensor {
            name,
            shape: t.dims().to_vec(),
            data: t
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?,
        })
    }

    pub(crate) fn write_backup(&self, dir: &Path, state: &BackupState) -> Result<()> {
        let mut tensors = Vec::new();
        let vars = self.named_vars();
        let adam = self
            .optimizer
            .as_ref()
            .context("compile() the model first")?;
        for (i, (name, var)) in vars.iter().enumerate() {
            tensors.push(Self::tensor_of(name.clone(), var.as_tensor())?);
            if let Some((m, v)) = adam.moments.get(i) {
                tensors.push(Self::tensor_of(format!("adam.m.{name}"), m)?);
                tensors.push(Self::tensor_of(format!("adam.v.{name}"), v)?);
            }
        }
        let meta =
            std::collections::HashMap::from([("state".to_string(), serde_json::to_string(state)?)]);
        write_atomic(
            &dir.join(BACKUP_FILE),
            &safetensors_bytes_with(&tensors, Some(meta))?,
        )
    }

    /// Restores weights and optimizer from a backup in `dir`, if there is one,
    /// and returns its state. A backup of another model or run is an error.
    pub(crate) fn read_backup(
        &mut self,
        dir: &Path,
        train_samples: usize,
        batch_size: usize,
    ) -> Result<Option<BackupState>> {
        let path = dir.join(BACKUP_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read backup {}", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a training backup: {e}", path.display()))?;
        let state: BackupState = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("state"))
            .map(|s| serde_json::from_str(s))
            .transpose()?
            .with_context(|| {
                format!(
                    "{} has no training state: delete it to start afresh",
                    path.display()
                )
            })?;
        ensure!(
            state.architecture == self.architecture
                && state.train_samples == train_samples
                && state.batch_size == batch_size,
            "{} is the backup of another model or run ({} samples, batch {}): delete it, or use another backup folder",
            path.display(),
            state.train_samples,
            state.batch_size
        );
        let mut expected = self.architecture.weight_specs()?;
        if state.adam_step > 0 {
            for (name, shape) in self.architecture.weight_specs()? {
                expected.push((format!("adam.m.{name}"), shape.clone()));
                expected.push((format!("adam.v.{name}"), shape));
            }
        }
        let tensors = read_safetensors(&path, &expected)?;
        let by_name: std::collections::HashMap<String, NamedTensor> =
            tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
        let device = self.device.clone();
        let dtype = self.dtype();
        let load = |name: &str| -> Result<candle_core::Tensor> {
            let t = &by_name[name];
            Ok(
                candle_core::Tensor::from_slice(&t.data, t.shape.as_slice(), &device)?
                    .to_dtype(dtype)?,
            )
        };
        let names: Vec<String> = self.named_vars().into_iter().map(|(n, _)| n).collect();
        for (name, var) in names
            .iter()
            .zip(self.named_vars().into_iter().map(|(_, v)| v.clone()))
        {
            var.set(&load(name)?)?;
        }
        let moments = if state.adam_step > 0 {
            names
                .iter()
                .map(|n| Ok((load(&format!("adam.m.{n}"))?, load(&format!("adam.v.{n}"))?)))
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![]
        };
        let adam = self
            .optimizer
            .as_mut()
            .context("compile() the model first")?;
        adam.moments = moments;
        adam.step = state.adam_step;
        Ok(Some(state))
    }
}
