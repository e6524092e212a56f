//! The Keras CIFAR-10 CNN tutorial, in Rust on candle.
//!
//! Data flows one way: files → [`data`] → [`train`] (through [`model`]) →
//! [`history`] → [`plot`]; [`persist`] and [`gallery`] sit at the side.
//! Every notebook cell is a few calls into these modules.

pub mod config;
pub mod data;
pub mod device;
pub mod gallery;
pub mod history;
pub mod kernels;
pub mod mistakes;
pub mod model;
pub mod persist;
pub mod plot;
pub mod train;

/// Everything a notebook needs, in one `use`.
pub mod prelude {
    pub use crate::config::Settings;
    pub use crate::data::{
        self as cifar10, load_data, tensor_row, to_categorical, Dataset, CLASS_NAMES,
    };
    pub use crate::device::describe as describe_device;
    pub use crate::device::{pick_device, Device};
    pub use crate::gallery::Gallery;
    pub use crate::history::History;
    pub use crate::mistakes::{mistakes_gallery, Confusion};
    pub use crate::model::{layers::*, Activation, Layer, Padding, Sequential};
    pub use crate::plot::{confusion_matrix, learning_curves, Figure};
    pub use crate::train::{Adam, Fit, Score};
    pub use anyhow::{anyhow, bail, ensure, Result};
    pub use candle_core::Tensor;
}
