//! A model on disk: the architecture as JSON (Keras's `model.to_json()`)
//! and the parameters as safetensors (the article's `.h5`), by name.

use super::{Architecture, Sequential};
use crate::io::{read_safetensors, read_safetensors_metadata, safetensors_bytes_with};
use crate::io::{write_atomic, NamedTensor};
use crate::optim::Optimizer;
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
    /// older and repairs it. The optimizer is not saved (see
    /// [`save_with_optimizer`](Self::save_with_optimizer)).
    pub fn save(&self, stem: impl AsRef<Path>) -> Result<(PathBuf, PathBuf)> {
        self.save_as(stem.as_ref(), false)
    }

    /// Like [`save`](Self::save), with the optimizer: its name, config
    /// (settings, schedule) and step count in the weights file's header and
    /// its state as tensors `optimizer.{slot}.{parameter}` beside the
    /// weights, so that the file stays one atomic whole. [`load`](Self::load)
    /// then gives the model compiled, to train on where it stopped.
    pub fn save_with_optimizer(&self, stem: impl AsRef<Path>) -> Result<(PathBuf, PathBuf)> {
        self.save_as(stem.as_ref(), true)
    }

    fn save_as(&self, stem: &Path, with_optimizer: bool) -> Result<(PathBuf, PathBuf)> {
        let (json, weights) = model_paths(stem);
        let named = |name: String, t: &candle_core::Tensor| -> Result<NamedTensor> {
            Ok(NamedTensor {
                name,
                shape: t.dims().to_vec(),
                data: t
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            })
        };
        let mut tensors = self
            .named_vars()
            .into_iter()
            .map(|(name, var)| named(name, var.as_tensor()))
            .collect::<Result<Vec<_>>>()?;
        let architecture = self.to_json()?;
        let mut meta = HashMap::from([(ARCHITECTURE_KEY.to_string(), architecture.clone())]);
        if with_optimizer {
            let o = self.optimizer.as_deref().context(
                "the model has no optimizer to save: compile() it first, or save() it without one",
            )?;
            let state = o.state();
            let saved = SavedOptimizer {
                name: o.name().to_string(),
                config: o.config()?,
                iterations: o.iterations(),
                state: state.iter().map(|(n, _)| n.clone()).collect(),
            };
            for (name, t) in &state {
                tensors.push(named(format!("{OPTIMIZER_PREFIX}{name}"), t)?);
            }
            meta.insert(OPTIMIZER_KEY.to_string(), serde_json::to_string(&saved)?);
        }
        write_atomic(&weights, &safetensors_bytes_with(&tensors, Some(meta))?)?;
        write_atomic(&json, architecture.as_bytes())?;
        Ok((json, weights))
    }

    /// The optimizer `compile` gave or `load` restored, if any.
    pub fn optimizer(&self) -> Option<&dyn Optimizer> {
        self.optimizer.as_deref()
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

    /// Loads a saved model onto `device`, compiled with its optimizer when
    /// it was saved with one.
    pub fn load_on(stem: impl AsRef<Path>, device: &candle_core::Device) -> Result<Self> {
        let (json_path, weights_path) = model_paths(stem);
        let (architecture, optimizer) = Self::saved_architecture(&json_path, &weights_path)?;
        let weights = architecture.weight_specs()?;
        let mut expected = weights.clone();
        let optimizer = match optimizer {
            Some(json) => {
                let saved: SavedOptimizer = serde_json::from_str(&json).with_context(|| {
                    format!("the optimizer in the header of {}", weights_path.display())
                })?;
                for name in &saved.state {
                    let shape = name
                        .split_once('.')
                        .and_then(|(_, p)| weights.iter().find(|(w, _)| w == p))
                        .with_context(|| {
                            format!(
                                "{}: the optimizer's state {name:?} is of no parameter of the model",
                                weights_path.display()
                            )
                        })?;
                    expected.push((format!("{OPTIMIZER_PREFIX}{name}"), shape.1.clone()));
                }
                Some(saved)
            }
            None => None,
        };
        let tensors = read_safetensors(&weights_path, &expected)?;
        let mut model = Self::from_architecture(architecture, 0, device)?;
        let mut state = HashMap::new();
        for t in tensors {
            let value = candle_core::Tensor::from_vec(t.data, t.shape, device)?;
            match t.name.strip_prefix(OPTIMIZER_PREFIX) {
                Some(name) => {
                    state.insert(name.to_string(), value);
                }
                None => model
                    .params
                    .get(&t.name)
                    .context("a tensor checked above")?
                    .var
                    .set(&value)?,
            }
        }
        if let Some(saved) = optimizer {
            let context = || format!("the optimizer saved in {}", weights_path.display());
            let mut o =
                crate::optim::from_config(&saved.name, &saved.config).with_context(context)?;
            o.load_state(saved.iterations, state)
                .with_context(context)?;
            model.optimizer = Some(o);
        }
        Ok(model)
    }
}

/// How the weights file's header describes the optimizer saved with it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedOptimizer {
    /// [`Optimizer::name`], for [`crate::optim::from_config`].
    name: String,
    config: serde_json::Value,
    iterations: u64,
    /// The names of its state tensors, `{slot}.{parameter}`.
    state: Vec<String>,
}

/// Where the weights file's header keeps the optimizer.
const OPTIMIZER_KEY: &str = "optimizer";
/// The optimizer's state tensors are named `optimizer.{slot}.{parameter}`.
const OPTIMIZER_PREFIX: &str = "optimizer.";

/// Where the weights file keeps its architecture JSON.
const ARCHITECTURE_KEY: &str = "architecture";

impl Sequential {
    /// The architecture of a saved model. Weights of this version carry
    /// their own: when the JSON beside them says otherwise (a save was
    /// killed between the two files, or the JSON is missing), the weights'
    /// is the newer, and the JSON is rewritten to match. Weights of version
    /// 0.1 have none, and the JSON decides. With it, the optimizer's entry
    /// of the header, if the model was saved with one.
    fn saved_architecture(
        json_path: &Path,
        weights_path: &Path,
    ) -> Result<(Architecture, Option<String>)> {
        let (embedded, optimizer) = match weights_path.exists() {
            true => {
                let mut meta = read_safetensors_metadata(weights_path, "model weights file")?;
                (meta.remove(ARCHITECTURE_KEY), meta.remove(OPTIMIZER_KEY))
            }
            false => (None, None),
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
            let architecture = Self::architecture_from_json(&json)
                .with_context(|| format!("in {}", json_path.display()))?;
            return Ok((architecture, optimizer));
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
        Ok((architecture, optimizer))
    }
}
