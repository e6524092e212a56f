//! A model on disk: the architecture as JSON (Keras's `model.to_json()`)
//! and the parameters as safetensors (the article's `.h5`), by name.

use super::{Architecture, Sequential};
use crate::io::{read_safetensors, read_safetensors_metadata, safetensors_bytes_with};
use crate::io::{write_atomic, NamedTensor};
use anyhow::{ensure, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// The architecture file, shaped like Keras's `model.to_json()`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelJson {
    class_name: String,
    config: Architecture,
}

impl Sequential {
    /// The architecture as JSON (Keras's `model.to_json()`).
    pub fn to_json(&self) -> Result<String> {
        let file = ModelJson {
            class_name: "Sequential".into(),
            config: self.architecture.clone(),
        };
        Ok(serde_json::to_string_pretty(&file)?)
    }

    /// Saves `<stem>.json` (architecture) and `<stem>.safetensors` (weights,
    /// with the architecture in its header too), each atomically, creating
    /// the folder if needed; returns both paths. The weights go first and
    /// carry their architecture, so a save killed between the two files
    /// leaves a whole model: [`load`](Self::load) finds that the JSON is
    /// older and repairs it.
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
        let architecture = self.to_json()?;
        let meta = HashMap::from([(ARCHITECTURE_KEY.to_string(), architecture.clone())]);
        write_atomic(&weights, &safetensors_bytes_with(&tensors, Some(meta))?)?;
        write_atomic(&json, architecture.as_bytes())?;
        Ok((json, weights))
    }

    /// Rebuilds a model from an architecture JSON string (no weights yet).
    pub fn architecture_from_json(json: &str) -> Result<Architecture> {
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
        let architecture = Self::saved_architecture(&json_path, &weights_path)?;
        let expected = architecture.weight_specs()?;
        let tensors = read_safetensors(&weights_path, &expected)?;
        let model = Self::from_architecture(architecture, 0, device)?;
        for t in tensors {
            let param = model
                .params
                .get(&t.name)
                .context("a tensor checked above")?;
            param
                .var
                .set(&candle_core::Tensor::from_vec(t.data, t.shape, device)?)?;
        }
        Ok(model)
    }
}

/// Where the weights file keeps its architecture JSON.
const ARCHITECTURE_KEY: &str = "architecture";

impl Sequential {
    /// The architecture of a saved model. Weights of this version carry
    /// their own: when the JSON beside them says otherwise (a save was
    /// killed between the two files, or the JSON is missing), the weights'
    /// is the newer, and the JSON is rewritten to match. Weights of version
    /// 0.1 have none, and the JSON decides.
    fn saved_architecture(json_path: &Path, weights_path: &Path) -> Result<Architecture> {
        let embedded = match weights_path.exists() {
            true => read_safetensors_metadata(weights_path, "model weights file")?
                .remove(ARCHITECTURE_KEY),
            false => None,
        };
        let json = match std::fs::read_to_string(json_path) {
            Ok(json) => Some(json),
            Err(_) if embedded.is_some() => None,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read model architecture {}", json_path.display())
                })
            }
        };
        let Some(embedded) = embedded else {
            let json = json.context("read above")?;
            return Self::architecture_from_json(&json)
                .with_context(|| format!("in {}", json_path.display()));
        };
        let architecture = Self::architecture_from_json(&embedded)
            .with_context(|| format!("in the header of {}", weights_path.display()))?;
        let agrees = json
            .as_deref()
            .and_then(|j| Self::architecture_from_json(j).ok())
            .is_some_and(|a| a == architecture);
        if !agrees {
            eprintln!(
                "note: {} does not describe the weights in {} (a save was interrupted between the two files); loading the model the weights file holds, and rewriting the JSON to match",
                json_path.display(),
                weights_path.display()
            );
            write_atomic(json_path, embedded.as_bytes())?;
        }
        Ok(architecture)
    }
}
