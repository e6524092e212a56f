//! The model: an [`Architecture`] (layers as data, the counterpart of
//! Keras's `model.to_json()`), a `Sequential` that owns their parameters by
//! name, Keras's initialization and `summary()`, and the [`plan`] every
//! forward pass runs.

mod architecture;
pub(crate) mod params;
pub(crate) mod plan;
mod save;

pub use architecture::Architecture;

pub use crate::layers::{self, article_layers, Activation, Layer, Padding, Shape};
pub use params::{Param, Params};
pub use save::model_paths;

use crate::kernels;
use crate::layers::Run;
use crate::optim::Optimizer;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use plan::Plan;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// A stack of layers with their parameters, on one device: Keras's `Sequential`.
pub struct Sequential {
    pub(crate) architecture: Architecture,
    pub(crate) params: Params,
    /// Rebuilt whenever a layer is added.
    pub(crate) plan: Plan,
    pub(crate) device: Device,
    /// Draws initial weights, dropout masks and the shuffling order, so that
    /// the same seed gives the same run.
    pub(crate) rng: StdRng,
    pub(crate) optimizer: Option<Box<dyn Optimizer>>,
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
            params: Params::default(),
            plan: Plan::default(),
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

    /// Appends a layer and initializes its parameters as its kind says
    /// (Keras's defaults: glorot-uniform kernels, zero biases). Fails,
    /// leaving the model as it was, when the layer cannot take the previous
    /// layer's output.
    pub fn add(&mut self, layer: impl Into<Layer>) -> Result<&mut Self> {
        let layer = layer.into();
        let input = self.output_shape()?;
        let kind = layer.kind();
        let context = || format!("cannot add {} after {input}", kind.class_name());
        kind.output_shape(input).with_context(context)?;
        let mut architecture = self.architecture.clone();
        architecture.layers.push(layer.clone());
        architecture.shapes().with_context(context)?;
        // Its parameters must fit before they are made.
        architecture.check_memory(0, false).with_context(context)?;
        let name = architecture.layer_names().pop().expect("just added");
        let new = Params::create(&name, &kind.params(input), &mut self.rng, &self.device)?;
        let mut params = self.params.clone();
        params.extend(new);
        self.plan = Plan::build(&architecture, &params)?;
        self.architecture = architecture;
        self.params = params;
        // Adding a layer after compile() invalidates the optimizer state.
        if let Some(o) = self.optimizer.as_mut() {
            o.reset();
        }
        Ok(self)
    }

    /// Builds a model from an architecture with fresh weights.
    pub fn from_architecture(
        architecture: Architecture,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        // The whole model must fit before any of it is made.
        architecture.check_memory(0, false)?;
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
        Ok(self
            .architecture
            .shapes()?
            .last()
            .copied()
            .unwrap_or(self.architecture.input()))
    }

    /// The parameters, by name (Keras's `model.weights`).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Every parameter's variable with its tensor name, in layer order:
    /// what `save` writes.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), &p.var))
            .collect()
    }

    /// The float type of the weights (f32 unless changed with `to_dtype`).
    pub fn dtype(&self) -> DType {
        self.params
            .iter()
            .next()
            .map_or(DType::F32, |p| p.var.dtype())
    }

    /// Converts the weights, e.g. to f64 for a precise gradient check.
    /// Resets the optimizer state.
    pub fn to_dtype(&mut self, dtype: DType) -> Result<()> {
        self.params
            .map_vars(|v| Ok(Var::from_tensor(&v.to_dtype(dtype)?)?))?;
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
        self.params
            .map_vars(|v| Ok(Var::from_tensor(&v.as_tensor().detach())?))
    }

    pub fn count_params(&self) -> usize {
        self.params.count(false)
    }

    /// Keras's `model.summary()`, as text.
    pub fn summary_string(&self) -> Result<String> {
        use std::fmt::Write;
        let shapes = self.architecture.shapes()?;
        let names = self.architecture.layer_names();
        let labels: Vec<String> = self
            .architecture
            .layers
            .iter()
            .zip(&names)
            .map(|(layer, name)| format!("{name} ({})", layer.kind().class_name()))
            .collect();
        // Keras's widths, with the name column widened to the longest name
        // (`batch_normalization_4 (BatchNormalization)`) so the rows stay aligned.
        let first = labels
            .iter()
            .map(|l| l.chars().count() + 2)
            .fold(32, usize::max);
        let width = first + 26 + 12;
        let rule = "_".repeat(width);
        let mut s = String::new();
        writeln!(s, "Model: \"{}\"", self.architecture.name)?;
        writeln!(s, "{rule}")?;
        writeln!(
            s,
            "{:<first$}{:<26}{:>12}",
            "Layer (type)", "Output Shape (N, C, H, W)", "Param #"
        )?;
        writeln!(s, "{}", "=".repeat(width))?;
        for ((label, shape), name) in labels.iter().zip(&shapes).zip(&names) {
            let prefix = format!("{name}.");
            let params: usize = self
                .params
                .iter()
                .filter(|p| p.name.starts_with(&prefix))
                .map(|p| p.var.elem_count())
                .sum();
            writeln!(s, "{label:<first$}{:<26}{params:>12}", shape.to_string())?;
        }
        let (total, trainable) = (self.params.count(false), self.params.count(true));
        writeln!(s, "{}", "=".repeat(width))?;
        writeln!(s, "Total params: {}", thousands(total))?;
        writeln!(s, "Trainable params: {}", thousands(trainable))?;
        writeln!(s, "Non-trainable params: {}", thousands(total - trainable))?;
        write!(s, "{rule}")?;
        Ok(s)
    }

    /// Prints the summary, as Keras's `model.summary()` does.
    pub fn summary(&self) -> Result<()> {
        println!("{}", self.summary_string()?);
        Ok(())
    }

    /// The forward pass up to the logits, i.e. without a final softmax (the
    /// loss and `predict` apply it, which is numerically safer), in candle
    /// ops: the portable path, differentiable by autograd. With `train`,
    /// dropout is active.
    pub fn logits(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut run = Run::new(train, &mut self.rng);
        self.plan.forward(&self.params, x, &mut run)
    }

    /// The portable training forward's logits, and the new values of the
    /// non-trainable parameters it computed (detached), by position.
    pub(crate) fn forward_training(
        &mut self,
        x: &Tensor,
    ) -> Result<(Tensor, Vec<(usize, Tensor)>)> {
        let mut run = Run::new(true, &mut self.rng);
        let logits = self.plan.forward(&self.params, x, &mut run)?;
        let updates = run
            .updates
            .into_iter()
            .map(|(i, t)| (i, t.detach()))
            .collect();
        Ok((logits, updates))
    }

    /// Whether the plan's CPU f32 path runs this model (else the portable one).
    pub(crate) fn runs_on_cpu_f32(&self) -> bool {
        self.device.is_cpu() && self.dtype() == DType::F32
    }

    /// The logits of a batch at inference: the plan's CPU path for f32 on
    /// the CPU, the portable path elsewhere.
    pub(crate) fn infer_logits(&mut self, x: &Tensor) -> Result<Tensor> {
        if !self.runs_on_cpu_f32() {
            return self.logits(x, false);
        }
        let n = x.dim(0)?;
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let data = params::f32_data(&storage, layout)?;
        let mut run = Run::new(false, &mut self.rng);
        let plan = &self.plan;
        let logits = self
            .params
            .with_cpu_data(|p| plan.cpu_infer(p, data, n, &mut run))?;
        let out = self
            .plan
            .steps
            .last()
            .map_or(self.architecture.input(), |s| s.output);
        let dims: Vec<usize> = std::iter::once(n).chain(out.dims()).collect();
        Ok(Tensor::from_vec(logits, dims, &self.device)?)
    }

    /// Class probabilities of a batch, `[N, classes]`, on the model's device.
    pub(crate) fn probabilities(&mut self, x: &Tensor) -> Result<Tensor> {
        let logits = self.infer_logits(x)?;
        match self.plan.softmax {
            true => Ok(candle_nn::ops::softmax_last_dim(&logits)?),
            false => Ok(logits),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Init, ParamSpec};

    /// The summary counts from the parameter collection: a non-trainable
    /// parameter (as BatchNormalization's moving statistics will be) shows
    /// under "Non-trainable params", and the optimizer is never given it.
    #[test]
    fn the_summary_counts_non_trainable_parameters_from_the_collection() {
        let mut model = Sequential::article(&[3, 32, 32], 10, 0, &Device::Cpu).unwrap();
        let spec = ParamSpec {
            name: "moving_mean",
            shape: vec![32],
            init: Init::Zeros,
            trainable: false,
        };
        let extra = Params::create("conv2d", &[spec], &mut model.rng, &model.device).unwrap();
        model.params.extend(extra);
        let s = model.summary_string().unwrap();
        assert!(s.contains("Total params: 1,250,890"), "{s}");
        assert!(s.contains("Trainable params: 1,250,858"), "{s}");
        assert!(s.contains("Non-trainable params: 32"), "{s}");
        assert!(
            s.contains(&format!(
                "{:<32}{:<26}{:>12}",
                "conv2d (Conv2D)", "(None, 32, 32, 32)", 928
            )),
            "{s}"
        );
        assert_eq!(
            model.params.get("conv2d.moving_mean").map(|p| p.trainable),
            Some(false)
        );
    }
}
