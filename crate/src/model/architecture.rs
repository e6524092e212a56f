//! The architecture: the layers as data, what `cifar10_cnn.json` holds
//! (Keras's `model.to_json()`), with the shapes, names and parameter specs
//! that follow from it.

use crate::layers::{Activation, Layer, Shape};
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// Largest number of values per image between layers, and of one
/// parameter: far above any model this crate is for, far below what overflows.
const MAX_ACTIVATIONS: usize = 1 << 26;
const MAX_WEIGHTS: usize = 1 << 30;

fn check_size(what: &str, dims: &[usize], max: usize) -> Result<()> {
    let n = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    ensure!(
        n.is_some_and(|n| n <= max),
        "{what} {dims:?} is too large (at most {max} values)"
    );
    Ok(())
}

/// Everything needed to rebuild a model: what `cifar10_cnn.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    pub name: String,
    /// channels, height, width of one input image
    pub input_shape: [usize; 3],
    pub layers: Vec<Layer>,
}

impl Architecture {
    /// The shape of one input image.
    pub fn input(&self) -> Shape {
        let [c, h, w] = self.input_shape;
        Shape::Image(c, h, w)
    }

    /// The output shape of every layer, checking that each fits the next.
    pub fn shapes(&self) -> Result<Vec<Shape>> {
        let [c, h, w] = self.input_shape;
        ensure!(
            c > 0 && h > 0 && w > 0,
            "input_shape must be positive, got {:?}",
            self.input_shape
        );
        check_size("the input", &[c, h, w], MAX_ACTIVATIONS)?;
        let mut shape = self.input();
        let mut shapes = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let kind = layer.kind();
            let context = || format!("layer {i} ({})", kind.class_name());
            // Sizes come from files too: bound them before anything is allocated.
            let out = kind.output_shape(shape).with_context(context)?;
            kind.activation().check().with_context(context)?; // the inline one
            for p in kind.params(shape) {
                check_size(&format!("its {}", p.name), &p.shape, MAX_WEIGHTS)
                    .with_context(context)?;
            }
            check_size("its output", &out.dims(), MAX_ACTIVATIONS).with_context(context)?;
            shape = out;
            shapes.push(shape);
        }
        Ok(shapes)
    }

    /// Checks that the model, with a batch of `batch` images, fits in the
    /// memory this machine allows ([`crate::config::memory_limit`]): its
    /// parameters (four copies while training: weights, gradients, two
    /// moments) and its activations (while training all of them are kept
    /// for the backward; at inference the largest input and output of one
    /// layer). An estimate, checked before anything is allocated.
    /// Refuses training batches of `n` samples a layer cannot learn from
    /// (BatchNormalization of one flat sample), naming the layer.
    pub fn check_training_batch(&self, n: usize) -> Result<()> {
        let mut input = self.input();
        for ((i, layer), out) in self.layers.iter().enumerate().zip(self.shapes()?) {
            let kind = layer.kind();
            kind.check_training_batch(input, n)
                .with_context(|| format!("layer {i} ({})", kind.class_name()))?;
            input = out;
        }
        Ok(())
    }

    pub fn check_memory(&self, batch: usize, training: bool) -> Result<()> {
        let shapes = self.shapes()?;
        let values = |s: &Shape| s.size() as u128;
        let params: u128 = self
            .weight_specs()?
            .iter()
            .map(|(_, s)| s.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        let mut input = self.input();
        let (mut peak, mut all) = (0u128, values(&input));
        for out in &shapes {
            peak = peak.max(values(&input) + values(out));
            all += values(out);
            input = *out;
        }
        let (copies, per_image) = match training {
            true => (4, 2 * all),
            false => (1, peak),
        };
        let need_params = 4 * copies * params;
        let need_batch = 4 * batch as u128 * per_image;
        let limit = crate::config::memory_limit()? as u128;
        let gib = |b: u128| crate::config::gib(b.min(u64::MAX as u128) as u64);
        ensure!(
            need_params + need_batch <= limit,
            "the model needs about {} ({} for its parameters{}, {} for the activations of a batch of {batch}), more than the {} this machine allows: use a smaller model or batch, or set MEMORY_LIMIT (e.g. MEMORY_LIMIT=64G) to allow more",
            gib(need_params + need_batch),
            gib(need_params),
            if training { " with their gradients and moments" } else { "" },
            gib(need_batch),
            gib(limit)
        );
        Ok(())
    }

    /// Keras-style unique layer names: conv2d, conv2d_1, ..., dense, dense_1.
    pub fn layer_names(&self) -> Vec<String> {
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        self.layers
            .iter()
            .map(|l| {
                let base = l.kind().base_name();
                let n = counts.entry(base).or_default();
                let name = match *n {
                    0 => base.to_string(),
                    _ => format!("{base}_{n}"),
                };
                *n += 1;
                name
            })
            .collect()
    }

    /// `(tensor name, shape)` of every parameter, in layer order.
    pub fn weight_specs(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let shapes = self.shapes()?;
        let mut input = self.input();
        let mut specs = Vec::new();
        for ((layer, name), out) in self.layers.iter().zip(self.layer_names()).zip(shapes) {
            for p in layer.kind().params(input) {
                specs.push((format!("{name}.{}", p.name), p.shape));
            }
            input = out;
        }
        Ok(specs)
    }

    /// Whether the model ends in a softmax, which categorical cross-entropy needs.
    pub fn ends_in_softmax(&self) -> bool {
        self.layers.last().is_some_and(|l| match l {
            Layer::Activation(a) => a.activation == Activation::Softmax,
            other => other.kind().activation() == Activation::Softmax,
        })
    }
}
