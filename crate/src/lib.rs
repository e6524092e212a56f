//! The Keras CIFAR-10 CNN tutorial, in Rust on candle.
//!
//! Data flows one way: files → [`data`] (tensors) → [`train`] (`fit`,
//! `evaluate`, `predict`) → [`history`] → [`plot`]. `train` runs a
//! [`model`]: its layers ([`layers`], one file per kind) turned once into a
//! plan that every forward and backward pass runs, its parameters by name,
//! and an optimizer from [`optim`]. The layers compute with [`kernels`].
//! [`io`] (atomic writes, safetensors) is the leaf every file goes through;
//! [`gallery`], [`mistakes`] and [`plot`] draw. [`recipe`], at the top, is
//! the improving notebook's: a run's settings as one struct, trained into a
//! folder beside them, and runs compared. No module uses one above it.
//! Every notebook cell is a few calls into these modules.

pub mod config;
pub mod data;
pub mod device;
pub mod gallery;
pub mod history;
pub mod io;
pub mod kernels;
pub mod layers;
pub mod mistakes;
pub mod model;
pub mod optim;
pub mod plot;
pub mod recipe;
pub mod train;

/// Everything a notebook needs, in one `use`.
pub mod prelude {
    pub use crate::config::Settings;
    pub use crate::data::{
        self as cifar10, load_data, tensor_row, to_categorical, Dataset, CLASS_NAMES,
    };
    pub use crate::device::describe as describe_device;
    pub use crate::device::{about, pick_device, Device};
    pub use crate::gallery::Gallery;
    pub use crate::history::History;
    pub use crate::layers::*;
    pub use crate::mistakes::{mistakes_gallery, Confusion};
    pub use crate::model::Sequential;
    pub use crate::optim::{
        Adam, AdamW, CosineDecay, ExponentialDecay, LearningRate, Optimizer,
        PiecewiseConstantDecay, RMSprop, Schedule, SGD,
    };
    pub use crate::plot::{compare_curves, confusion_matrix, learning_curves, Figure};
    pub use crate::recipe::{OptimizerRecipe, Recipe, Run, Runs, RunsTable};
    pub use crate::train::{
        BackupAndRestore, CSVLogger, Callback, EarlyStopping, Fit, LearningRateScheduler, Logs,
        Mode, ModelCheckpoint, ReduceLROnPlateau, RunState, Score, StopFile, TerminateOnNaN,
    };
    pub use anyhow::{anyhow, bail, ensure, Result};
    pub use candle_core::Tensor;
}
