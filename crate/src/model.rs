//! The model: layers as data (the counterpart of Keras's `model.to_json()`),
//! a `Sequential` that owns their weights, Keras's initialization and
//! `summary()`, and the forward pass.

use crate::kernels;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::distr::{Distribution, Uniform};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Convolution padding, as in Keras: `valid` shrinks the image by the
/// kernel size minus one, `same` keeps its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    #[default]
    Valid,
    Same,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Linear,
    Relu,
    Softmax,
}

/// One layer of a `Sequential`, as saved in the architecture JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "class_name", content = "config", deny_unknown_fields)]
pub enum Layer {
    Conv2D {
        filters: usize,
        kernel_size: usize,
        #[serde(default)]
        padding: Padding,
        #[serde(default)]
        activation: Activation,
    },
    Activation {
        activation: Activation,
    },
    MaxPooling2D {
        pool_size: usize,
    },
    Dropout {
        rate: f64,
    },
    Flatten,
    Dense {
        units: usize,
        #[serde(default)]
        activation: Activation,
    },
}

/// Keras-like constructors, so that a model reads like the article's.
pub mod layers {
    use super::{Activation, Layer, Padding};

    /// `Conv2D(filters, (k, k))`, valid padding; `.same()` for `padding='same'`.
    pub fn conv2d(filters: usize, kernel_size: usize) -> Layer {
        Layer::Conv2D {
            filters,
            kernel_size,
            padding: Padding::Valid,
            activation: Activation::Linear,
        }
    }
    pub fn relu() -> Layer {
        Layer::Activation {
            activation: Activation::Relu,
        }
    }
    pub fn softmax() -> Layer {
        Layer::Activation {
            activation: Activation::Softmax,
        }
    }
    pub fn max_pooling2d(pool_size: usize) -> Layer {
        Layer::MaxPooling2D { pool_size }
    }
    pub fn dropout(rate: f64) -> Layer {
        Layer::Dropout { rate }
    }
    pub fn flatten() -> Layer {
        Layer::Flatten
    }
    pub fn dense(units: usize) -> Layer {
        Layer::Dense {
            units,
            activation: Activation::Linear,
        }
    }

    impl Layer {
        /// `padding='same'` for a convolution.
        pub fn same(self) -> Layer {
            match self {
                Layer::Conv2D {
                    filters,
                    kernel_size,
                    activation,
                    ..
                } => Layer::Conv2D {
                    filters,
                    kernel_size,
                    padding: Padding::Same,
                    activation,
                },
                other => other,
            }
        }
    }
}

/// The article's model, layer by layer (1,250,858 parameters on CIFAR-10).
pub fn article_layers(num_classes: usize) -> Vec<Layer> {
    use layers::*;
    vec![
        conv2d(32, 3).same(),
        relu(),
        conv2d(32, 3),
        relu(),
        max_pooling2d(2),
        dropout(0.25),
        conv2d(64, 3).same(),
        relu(),
        conv2d(64, 3),
        relu(),
        max_pooling2d(2),
        dropout(0.25),
        flatten(),
        dense(512),
        relu(),
        dropout(0.5),
        dense(num_classes),
        softmax(),
    ]
}

/// What flows between layers, without the batch dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// channels, height, width
    Image(usize, usize, usize),
    Flat(usize),
}

impl Shape {
    pub fn size(&self) -> usize {
        match *self {
            Shape::Image(c, h, w) => c * h * w,
            Shape::Flat(n) => n,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Image(c, h, w) => write!(f, "(None, {c}, {h}, {w})"),
            Shape::Flat(n) => write!(f, "(None, {n})"),
        }
    }
}

/// One step of the forward pass: a layer, or a few that run as one op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Stage {
    /// The Conv2D at `layer`, with its ReLU when it has one (inline or the
    /// next layer), and with `pool` the MaxPooling2D(2) after that.
    Conv {
        layer: usize,
        pad: usize,
        relu: bool,
        pool: bool,
    },
    /// The Dense at `layer`, with its ReLU when it has one.
    Dense {
        layer: usize,
        relu: bool,
    },
    /// An activation on its own (and a softmax given inline).
    Activation(Activation),
    MaxPool(usize),
    Dropout(f64),
    Flatten,
}

impl Layer {
    /// Keras's class name, used in summaries and weight names.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Conv2D { .. } => "Conv2D",
            Layer::Activation { .. } => "Activation",
            Layer::MaxPooling2D { .. } => "MaxPooling2D",
            Layer::Dropout { .. } => "Dropout",
            Layer::Flatten => "Flatten",
            Layer::Dense { .. } => "Dense",
        }
    }

    /// The shape this layer outputs for `input`, or why it cannot take it.
    pub fn output_shape(&self, input: Shape) -> Result<Shape> {
        match (self, input) {
            (
                Layer::Conv2D {
                    filters,
                    kernel_size: k,
                    padding,
                    ..
                },
                Shape::Image(_, h, w),
            ) => {
                ensure!(
                    *filters > 0 && *k > 0,
                    "Conv2D needs filters and kernel_size above 0"
                );
                match padding {
                    Padding::Same => {
                        ensure!(
                            k % 2 == 1,
                            "Conv2D with padding 'same' needs an odd kernel_size, got {k}"
                        );
                        Ok(Shape::Image(*filters, h, w))
                    }
                    Padding::Valid => {
                        ensure!(
                            *k <= h && *k <= w,
                            "Conv2D kernel {k}x{k} is larger than its {h}x{w} input"
                        );
                        Ok(Shape::Image(*filters, h - k + 1, w - k + 1))
                    }
                }
            }
            (Layer::MaxPooling2D { pool_size: p }, Shape::Image(c, h, w)) => {
                ensure!(*p > 0, "MaxPooling2D needs a pool_size above 0");
                ensure!(
                    *p <= h && *p <= w,
                    "MaxPooling2D pool {p}x{p} is larger than its {h}x{w} input"
                );
                Ok(Shape::Image(c, h / p, w / p))
            }
            (Layer::Conv2D { .. } | Layer::MaxPooling2D { .. }, Shape::Flat(n)) => {
                bail!(
                    "{} needs an image input (channels, height, width), got a flat vector of {n}",
                    self.kind()
                )
            }
            (Layer::Dense { units, .. }, Shape::Flat(_)) => {
                ensure!(*units > 0, "Dense needs units above 0");
                Ok(Shape::Flat(*units))
            }
            (Layer::Dense { .. }, Shape::Image(..)) => {
                bail!(
                    "Dense needs a flat input, got an image {input}: add a Flatten layer before it"
                )
            }
            (Layer::Dropout { rate }, s) => {
                ensure!(
                    (0.0..1.0).contains(rate),
                    "Dropout rate must be in [0, 1), got {rate}"
                );
                Ok(s)
            }
            (Layer::Activation { .. }, s) => Ok(s),
            (Layer::Flatten, s) => Ok(Shape::Flat(s.size())),
        }
    }

    /// Shapes of (kernel, bias) for layers with weights. Kernels are kept in
    /// candle's layouts: `[out, in, k, k]` for convolutions and `[in, out]`
    /// for dense layers (Keras keeps `[k, k, in, out]` and `[in, out]`).
    fn weight_shapes(&self, input: Shape) -> Option<(Vec<usize>, Vec<usize>)> {
        match (self, input) {
            (
                Layer::Conv2D {
                    filters,
                    kernel_size: k,
                    ..
                },
                Shape::Image(c, _, _),
            ) => Some((vec![*filters, c, *k, *k], vec![*filters])),
            (Layer::Dense { units, .. }, s) => Some((vec![s.size(), *units], vec![*units])),
            _ => None,
        }
    }
}

/// Largest number of values per image between layers, and of weights in one
/// kernel: far above any model this crate is for, far below what overflows.
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
    /// The output shape of every layer, checking that each fits the next.
    pub fn shapes(&self) -> Result<Vec<Shape>> {
        let [c, h, w] = self.input_shape;
        ensure!(
            c > 0 && h > 0 && w > 0,
            "input_shape must be positive, got {:?}",
            self.input_shape
        );
        let mut shape = Shape::Image(c, h, w);
        check_size("the input", &[c, h, w], MAX_ACTIVATIONS)?;
        let mut shapes = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let context = || format!("layer {i} ({})", layer.kind());
            // Sizes come from files too: bound them before anything is allocated.
            if let Some((kernel, _)) = layer.weight_shapes(shape) {
                check_size("its kernel", &kernel, MAX_WEIGHTS).with_context(context)?;
            }
            let out = layer.output_shape(shape).with_context(context)?;
            let dims = match out {
                Shape::Image(c, h, w) => vec![c, h, w],
                Shape::Flat(n) => vec![n],
            };
            check_size("its output", &dims, MAX_ACTIVATIONS).with_context(context)?;
            shape = out;
            shapes.push(shape);
        }
        Ok(shapes)
    }

    /// Keras-style unique layer names: conv2d, conv2d_1, ..., dense, dense_1.
    pub fn layer_names(&self) -> Vec<String> {
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        self.layers
            .iter()
            .map(|l| {
                let base = match l {
                    Layer::Conv2D { .. } => "conv2d",
                    Layer::Activation { .. } => "activation",
                    Layer::MaxPooling2D { .. } => "max_pooling2d",
                    Layer::Dropout { .. } => "dropout",
                    Layer::Flatten => "flatten",
                    Layer::Dense { .. } => "dense",
                };
                let n = counts.entry(base).or_default();
                let name = if *n == 0 {
                    base.to_string()
                } else {
                    format!("{base}_{n}")
                };
                *n += 1;
                name
            })
            .collect()
    }

    /// `(tensor name, shape)` of every weight, in layer order.
    pub fn weight_specs(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let shapes = self.shapes()?;
        let [c, h, w] = self.input_shape;
        let mut input = Shape::Image(c, h, w);
        let mut specs = Vec::new();
        for ((layer, name), out) in self.layers.iter().zip(self.layer_names()).zip(shapes) {
            if let Some((kernel, bias)) = layer.weight_shapes(input) {
                specs.push((format!("{name}.kernel"), kernel));
                specs.push((format!("{name}.bias"), bias));
            }
            input = out;
        }
        Ok(specs)
    }

    /// Whether the model ends in a softmax, which categorical cross-entropy needs.
    pub fn ends_in_softmax(&self) -> bool {
        matches!(
            self.layers.last(),
            Some(Layer::Activation {
                activation: Activation::Softmax
            }) | Some(Layer::Dense {
                activation: Activation::Softmax,
                ..
            })
        )
    }
}

/// A kernel and bias of one layer.
pub(crate) struct Weights {
    pub kernel: Var,
    pub bias: Var,
}

/// A stack of layers with their weights, on one device: Keras's `Sequential`.
pub struct Sequential {
    pub(crate) architecture: Architecture,
    /// One entry per layer; `Some` for layers with weights.
    pub(crate) weights: Vec<Option<Weights>>,
    pub(crate) device: Device,
    /// Draws initial weights, dropout masks and the shuffling order, so that
    /// the same seed gives the same run.
    pub(crate) rng: StdRng,
    pub(crate) optimizer: Option<crate::train::Adam>,
}

impl Sequential {
    /// An empty model for inputs of shape (channels, height, width), e.g.
    /// `&x_train.dims()[1..]`, on the device [`crate::device::pick_device`] picks.
    pub fn new(input_shape: &[usize], seed: u64) -> Result<Self> {
        Self::on(input_shape, seed, &crate::device::pick_device()?)
    }

    /// Like [`Sequential::new`], on the given device.
    pub fn on(input_shape: &[usize], seed: u64, device: &Device) -> Result<Self> {
        let input_shape: [usize; 3] = input_shape.try_into().map_err(|_| {
            anyhow::anyhow!("input_shape must be (channels, height, width), got {input_shape:?}")
        })?;
        kernels::keep_freed_memory();
        let architecture = Architecture {
            name: "sequential".into(),
            input_shape,
            layers: vec![],
        };
        architecture.shapes()?;
        Ok(Self {
            architecture,
            weights: vec![],
            device: device.clone(),
            rng: StdRng::seed_from_u64(seed),
            optimizer: None,
        })
    }

    /// The article's CNN for `num_classes` classes, built and initialized.
    pub fn article(
        input_shape: &[usize],
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut model = Self::on(input_shape, seed, device)?;
        for layer in article_layers(num_classes) {
            model.add(layer)?;
        }
        Ok(model)
    }

    /// Appends a layer and initializes its weights as Keras does: glorot-uniform
    /// kernels, zero biases. Fails, leaving the model as it was, when the layer
    /// cannot take the previous layer's output.
    pub fn add(&mut self, layer: Layer) -> Result<&mut Self> {
        let input = self.output_shape()?;
        layer
            .output_shape(input)
            .with_context(|| format!("cannot add {} after {input}", layer.kind()))?;
        let weights = match layer.weight_shapes(input) {
            Some((kernel, bias)) => Some(Weights {
                kernel: glorot_uniform(&kernel, &mut self.rng, &self.device)?,
                bias: Var::zeros(bias, DType::F32, &self.device)?,
            }),
            None => None,
        };
        self.architecture.layers.push(layer);
        self.weights.push(weights);
        // Adding a layer after compile() invalidates the optimizer state.
        self.optimizer = None;
        Ok(self)
    }

    /// Builds a model from an architecture with fresh weights.
    pub fn from_architecture(
        architecture: Architecture,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut model = Self::on(&architecture.input_shape, seed, device)?;
        model.architecture.name = architecture.name.clone();
        for (i, layer) in architecture.layers.into_iter().enumerate() {
            model
                .add(layer)
                .with_context(|| format!("layer {i} of the architecture"))?;
        }
        Ok(model)
    }

    pub fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The shape of what the last layer outputs (the input's shape when empty).
    pub fn output_shape(&self) -> Result<Shape> {
        let [c, h, w] = self.architecture.input_shape;
        Ok(self
            .architecture
            .shapes()?
            .last()
            .copied()
            .unwrap_or(Shape::Image(c, h, w)))
    }

    /// Every trainable variable with its tensor name, in layer order.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let names = self.architecture.layer_names();
        let mut out = Vec::new();
        for (name, w) in names.iter().zip(&self.weights) {
            if let Some(w) = w {
                out.push((format!("{name}.kernel"), &w.kernel));
                out.push((format!("{name}.bias"), &w.bias));
            }
        }
        out
    }

    /// The float type of the weights (f32 unless changed with `to_dtype`).
    pub fn dtype(&self) -> DType {
        self.named_vars()
            .first()
            .map_or(DType::F32, |(_, v)| v.dtype())
    }

    /// Converts the weights, e.g. to f64 for a precise gradient check.
    /// Resets the optimizer state.
    pub fn to_dtype(&mut self, dtype: DType) -> Result<()> {
        for w in self.weights.iter_mut().flatten() {
            w.kernel = Var::from_tensor(&w.kernel.to_dtype(dtype)?)?;
            w.bias = Var::from_tensor(&w.bias.to_dtype(dtype)?)?;
        }
        if let Some(o) = self.optimizer.as_mut() {
            o.reset();
        }
        Ok(())
    }

    /// Gives every weight a new variable (same values) made by the code that
    /// runs now. Why: evcxr links a copy of candle into each notebook cell,
    /// and each copy numbers tensors from its own counter, so weights made in
    /// one cell can share ids with tensors made in another, and candle's
    /// backward pass, which keys gradients by id, would mix them up. Calling
    /// this before a backward pass keeps every id of that pass from one counter.
    pub(crate) fn renew_vars(&mut self) -> Result<()> {
        for w in self.weights.iter_mut().flatten() {
            w.kernel = Var::from_tensor(&w.kernel.as_tensor().detach())?;
            w.bias = Var::from_tensor(&w.bias.as_tensor().detach())?;
        }
        Ok(())
    }

    pub fn count_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Keras's `model.summary()`, as text.
    pub fn summary_string(&self) -> Result<String> {
        use std::fmt::Write;
        let shapes = self.architecture.shapes()?;
        let rule = "_".repeat(72);
        let mut s = String::new();
        writeln!(s, "Model: \"{}\"", self.architecture.name)?;
        writeln!(s, "{rule}")?;
        writeln!(
            s,
            "{:<32}{:<26}{:>12}",
            "Layer (type)", "Output Shape (N, C, H, W)", "Param #"
        )?;
        writeln!(s, "{}", "=".repeat(72))?;
        let names = self.architecture.layer_names();
        for (i, (layer, shape)) in self.architecture.layers.iter().zip(&shapes).enumerate() {
            let params = self.weights[i]
                .as_ref()
                .map_or(0, |w| w.kernel.elem_count() + w.bias.elem_count());
            let label = format!("{} ({})", names[i], layer.kind());
            writeln!(s, "{label:<32}{:<26}{params:>12}", shape.to_string())?;
        }
        writeln!(s, "{}", "=".repeat(72))?;
        writeln!(s, "Total params: {}", thousands(self.count_params()))?;
        writeln!(s, "Trainable params: {}", thousands(self.count_params()))?;
        writeln!(s, "Non-trainable params: 0")?;
        write!(s, "{rule}")?;
        Ok(s)
    }

    /// Prints the summary, as Keras's `model.summary()` does.
    pub fn summary(&self) -> Result<()> {
        println!("{}", self.summary_string()?);
        Ok(())
    }

    /// The layers as they run: the article's Conv2D + ReLU (+ MaxPooling2D(2))
    /// and Dense + ReLU each as one stage (see [`Stage`]).
    pub(crate) fn stages(&self) -> Vec<Stage> {
        let layers = &self.architecture.layers;
        let is = |at: usize, layer: Layer| layers.get(at) == Some(&layer);
        // Whether a Conv2D or Dense at `at` applies a ReLU, inline or as the
        // next layer, and how many layers that ReLU takes.
        let relu_of = |at: usize, activation: Activation| match activation {
            Activation::Relu => (true, 0),
            Activation::Linear if is(at + 1, layers::relu()) => (true, 1),
            _ => (false, 0),
        };
        let mut stages = Vec::with_capacity(layers.len());
        let mut i = 0;
        while i < layers.len() {
            let (stage, taken) = match layers[i] {
                Layer::Conv2D {
                    padding,
                    kernel_size,
                    activation,
                    ..
                } => {
                    let (relu, r) = relu_of(i, activation);
                    let pool = relu && is(i + 1 + r, layers::max_pooling2d(2));
                    let pad = match padding {
                        Padding::Same => kernel_size / 2,
                        Padding::Valid => 0,
                    };
                    let conv = Stage::Conv {
                        layer: i,
                        pad,
                        relu,
                        pool,
                    };
                    (conv, 1 + r + pool as usize)
                }
                Layer::Dense { activation, .. } => {
                    let (relu, r) = relu_of(i, activation);
                    (Stage::Dense { layer: i, relu }, 1 + r)
                }
                Layer::Activation { activation } => (Stage::Activation(activation), 1),
                Layer::MaxPooling2D { pool_size } => (Stage::MaxPool(pool_size), 1),
                Layer::Dropout { rate } => (Stage::Dropout(rate), 1),
                Layer::Flatten => (Stage::Flatten, 1),
            };
            stages.push(stage);
            // A softmax given inline runs as a stage of its own.
            if let Layer::Conv2D {
                activation: Activation::Softmax,
                ..
            }
            | Layer::Dense {
                activation: Activation::Softmax,
                ..
            } = layers[i]
            {
                stages.push(Stage::Activation(Activation::Softmax));
            }
            i += taken;
        }
        stages
    }

    /// The forward pass up to the logits, i.e. without a final softmax (the
    /// loss and `predict` apply it, which is numerically safer). With `train`,
    /// dropout is active.
    pub fn logits(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let stages = self.stages();
        let mut x = x.clone();
        for (k, stage) in stages.iter().enumerate() {
            x = match *stage {
                Stage::Conv {
                    layer,
                    pad,
                    relu,
                    pool,
                } => {
                    let w = self.weights[layer].as_ref().expect("conv has weights");
                    match (relu, pool) {
                        (true, true) => {
                            kernels::conv2d_relu_max_pool2(&x, &w.kernel, &w.bias, pad)?
                        }
                        (true, false) => kernels::conv2d_relu(&x, &w.kernel, &w.bias, pad)?,
                        (false, _) => kernels::conv2d(&x, &w.kernel, &w.bias, pad)?,
                    }
                }
                Stage::Dense { layer, relu } => {
                    let w = self.weights[layer].as_ref().expect("dense has weights");
                    let y = x.matmul(&w.kernel)?.broadcast_add(&w.bias)?;
                    if relu {
                        y.relu()?
                    } else {
                        y
                    }
                }
                Stage::Activation(Activation::Relu) => x.relu()?,
                // The last softmax is left to the loss and to `probabilities`.
                Stage::Activation(Activation::Softmax) if k + 1 == stages.len() => x,
                Stage::Activation(Activation::Softmax) => candle_nn::ops::softmax(&x, D::Minus1)?,
                Stage::Activation(Activation::Linear) => x,
                Stage::MaxPool(pool_size) => kernels::max_pool2d(&x, pool_size)?,
                Stage::Dropout(rate) if train && rate > 0.0 => {
                    kernels::dropout(&x, rate, &mut self.rng)?
                }
                Stage::Dropout(_) => x,
                Stage::Flatten => x.flatten_from(1)?,
            };
        }
        Ok(x)
    }

    /// Class probabilities of a batch, `[N, classes]`, on the model's device.
    pub(crate) fn probabilities(&mut self, x: &Tensor) -> Result<Tensor> {
        let logits = self.logits(x, false)?;
        if self.architecture.ends_in_softmax() {
            Ok(candle_nn::ops::softmax_last_dim(&logits)?)
        } else {
            Ok(logits)
        }
    }
}

/// Glorot (Xavier) uniform: U(-l, l) with l = sqrt(6 / (fan_in + fan_out)),
/// Keras's default kernel initializer.
fn glorot_uniform(shape: &[usize], rng: &mut StdRng, device: &Device) -> Result<Var> {
    let (fan_in, fan_out) = match shape {
        [inp, out] => (*inp, *out),
        [out, inp, kh, kw] => (inp * kh * kw, out * kh * kw),
        _ => bail!("no glorot fan for a kernel of shape {shape:?}"),
    };
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
    let uniform = Uniform::new_inclusive(-limit, limit)?;
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| uniform.sample(rng))
        .collect();
    Ok(Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?)
}

/// 1250858 → "1,250,858"
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
