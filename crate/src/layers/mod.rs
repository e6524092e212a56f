//! The layer kinds, one file each, and what they all answer to.
//!
//! A kind's file holds everything about it side by side: its config (the
//! architecture JSON's `config`), the Keras-like constructor, its output
//! shape, its parameters (named, shaped, initialized, trainable or not), its
//! portable forward in candle ops (what CUDA and the f64 gradient checks
//! run, differentiated by candle's autograd), and its CPU f32 forward and
//! backward on buffers (the fast training step and inference).
//!
//! The model never looks inside a kind: it asks [`LayerKind`]. To add one,
//! write its file and register it in the `layer_kinds!` list below (see
//! `docs/ARCHITECTURE.md`).

use crate::kernels::moments::PlaneSums;
use anyhow::Result;
use candle_core::Tensor;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::any::Any;

/// Declares the layer kinds: `Variant(Type) => module` for each. Makes the
/// modules, re-exports their contents, the [`Layer`] enum with a variant per
/// kind, its dispatch to [`LayerKind`], and its JSON form.
macro_rules! layer_kinds {
    ($($variant:ident($ty:ident) => $module:ident),* $(,)?) => {
        $(mod $module; pub use $module::*;)*

        /// One layer of a `Sequential`, as saved in the architecture JSON:
        /// `{"class_name": "Conv2D", "config": {...}}`.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Layer {
            $($variant($ty)),*
        }

        impl Layer {
            /// What the model asks of the layer.
            pub fn kind(&self) -> &dyn LayerKind {
                match self {
                    $(Layer::$variant(l) => l),*
                }
            }
            /// The Keras class names this crate knows.
            pub const CLASS_NAMES: &'static [&'static str] = &[$(stringify!($variant)),*];

            fn from_config(class_name: &str, config: serde_json::Value) -> Result<Layer, String> {
                match class_name {
                    $(stringify!($variant) => serde_json::from_value(config)
                        .map(Layer::$variant)
                        .map_err(|e| format!("{class_name}: {e}")),)*
                    other => Err(format!(
                        "unknown layer class_name {other:?}: this version knows {}",
                        Layer::CLASS_NAMES.join(", ")
                    )),
                }
            }
        }

        impl Serialize for Layer {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                match self {
                    $(Layer::$variant(config) => {
                        // A kind without settings (Flatten) is written
                        // without a config, as earlier versions wrote it.
                        let empty = serde_json::to_value(config)
                            .is_ok_and(|v| v.as_object().is_some_and(|m| m.is_empty()));
                        let mut st = s.serialize_struct("Layer", 2 - empty as usize)?;
                        st.serialize_field("class_name", config.class_name())?;
                        if !empty {
                            st.serialize_field("config", config)?;
                        }
                        st.end()
                    })*
                }
            }
        }

        $(impl From<$ty> for Layer {
            fn from(l: $ty) -> Layer {
                Layer::$variant(l)
            }
        })*
    };
}

layer_kinds! {
    Conv2D(Conv2D) => conv2d,
    Activation(ActivationLayer) => activation,
    MaxPooling2D(MaxPooling2D) => max_pooling2d,
    Dropout(Dropout) => dropout,
    Flatten(Flatten) => flatten,
    Dense(Dense) => dense,
    AveragePooling2D(AveragePooling2D) => average_pooling2d,
    BatchNormalization(BatchNormalization) => batch_normalization,
    GlobalAveragePooling2D(GlobalAveragePooling2D) => global_average_pooling2d,
    GlobalMaxPooling2D(GlobalMaxPooling2D) => global_max_pooling2d,
    SpatialDropout2D(SpatialDropout2D) => spatial_dropout2d,
    LeakyReLU(LeakyReLU) => leaky_relu,
}

/// What every layer kind tells the model.
pub trait LayerKind: std::fmt::Debug {
    /// Keras's class name, e.g. `"Conv2D"` (summaries, the JSON).
    fn class_name(&self) -> &'static str;
    /// The base of Keras's unique layer names, e.g. `"conv2d"`, `"conv2d_1"`.
    fn base_name(&self) -> &'static str;
    /// The shape this layer outputs for `input`, or why it cannot take it.
    fn output_shape(&self, input: Shape) -> Result<Shape>;
    /// Its parameters for `input`, in the order its forward takes them.
    fn params(&self, _input: Shape) -> Vec<ParamSpec> {
        Vec::new()
    }
    /// The activation given inline (`Dense(10, activation='softmax')`). The
    /// plan runs it: fused into this layer's kernel as [`Fused::relu`]
    /// when it can be, else as a step of its own.
    fn activation(&self) -> Activation {
        Activation::Linear
    }
    /// Which of the next layers' work this kind's kernels can take on for
    /// `input`; the plan decides from this, once.
    fn fusable(&self, _input: Shape) -> Fused {
        Fused::default()
    }
    /// Refuses a training batch of `n` samples this kind cannot learn from
    /// (BatchNormalization of one flat sample); `fit` asks before training.
    fn check_training_batch(&self, _input: Shape, _n: usize) -> Result<()> {
        Ok(())
    }
    /// The portable forward, in candle ops: any device, any float type,
    /// differentiable by candle's autograd. `p` as [`LayerKind::params`].
    fn forward(&self, x: &Tensor, p: &[Tensor], step: &StepShape, run: &mut Run) -> Result<Tensor>;
    /// The CPU forward in f32 on a contiguous batch `x` `[N, ..input]`.
    fn cpu_forward(
        &self,
        x: &[f32],
        p: &[&[f32]],
        step: &StepShape,
        run: &mut Run,
    ) -> Result<CpuOut>;
    /// The CPU backward: from the output's gradient, the input's (when
    /// [`CpuGrad::wants_dx`]) and every parameter's, in `params` order.
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)>;
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
    pub fn dims(&self) -> Vec<usize> {
        match *self {
            Shape::Image(c, h, w) => vec![c, h, w],
            Shape::Flat(n) => vec![n],
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

/// Padding, as in Keras: `valid` shrinks the image by the window size
/// minus one, `same` keeps its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    #[default]
    Valid,
    Same,
}

/// A size in two dimensions, as Keras takes `kernel_size`, `strides` and
/// `pool_size`: `3` or `(3, 5)` (height, width). Written as one number when
/// square, as earlier versions wrote it, else as `[h, w]`; both are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size2 {
    pub h: usize,
    pub w: usize,
}

impl Size2 {
    pub fn square(n: usize) -> Self {
        Size2 { h: n, w: n }
    }
    pub fn is_square(&self) -> bool {
        self.h == self.w
    }
}

impl From<usize> for Size2 {
    fn from(n: usize) -> Self {
        Size2::square(n)
    }
}

impl From<(usize, usize)> for Size2 {
    fn from((h, w): (usize, usize)) -> Self {
        Size2 { h, w }
    }
}

impl From<[usize; 2]> for Size2 {
    fn from([h, w]: [usize; 2]) -> Self {
        Size2 { h, w }
    }
}

impl std::fmt::Display for Size2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.h, self.w)
    }
}

impl Serialize for Size2 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_square() {
            s.serialize_u64(self.h as u64)
        } else {
            [self.h, self.w].serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Size2 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(usize),
            Two([usize; 2]),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a size: a number or [height, width]"))?
        {
            Raw::One(n) => Ok(Size2::square(n)),
            Raw::Two(hw) => Ok(hw.into()),
        }
    }
}

/// Where a sliding window (a convolution's kernel, a pooling's pool) goes
/// along one axis of `input` values, as TensorFlow places it: `valid` takes
/// the whole windows, `out = (input - k) / stride + 1`; `same` gives
/// `out = ceil(input / stride)` and pads
/// `total = max((out - 1) * stride + k - input, 0)`, the smaller half before
/// (`before = total / 2`) and the rest after (Keras's asymmetric "same").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window1 {
    pub out: usize,
    /// padding before the first value (the rest of the padding is after)
    pub before: usize,
}

/// One axis of a window, or a clear error naming `kind` and `axis`.
pub(crate) fn window1(
    kind: &str,
    axis: &str,
    input: usize,
    k: usize,
    stride: usize,
    padding: Padding,
) -> Result<Window1> {
    anyhow::ensure!(
        k > 0,
        "{kind}: the window's {axis} must be at least 1, got 0"
    );
    anyhow::ensure!(
        stride > 0,
        "{kind}: strides must be at least 1, got 0 along the {axis}"
    );
    match padding {
        Padding::Valid => {
            anyhow::ensure!(
                k <= input,
                "{kind}: the window's {axis} {k} is larger than the input's {input} with padding=\"valid\" (use padding=\"same\" or a smaller window)"
            );
            Ok(Window1 {
                out: (input - k) / stride + 1,
                before: 0,
            })
        }
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = ((out - 1) * stride + k).saturating_sub(input);
            Ok(Window1 {
                out,
                before: total / 2,
            })
        }
    }
}

/// One parameter of a layer: its name within the layer (`"kernel"`), shape,
/// initial values and whether the optimizer trains it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub init: Init,
    pub trainable: bool,
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(-l, l), l = sqrt(6 / (fan_in + fan_out)): Keras's default kernels.
    GlorotUniform {
        fan_in: usize,
        fan_out: usize,
    },
    Zeros,
    Ones,
}

/// The work of the next layers a step does inside its own kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fused {
    /// a ReLU on the output
    pub relu: bool,
    /// after the ReLU, a 2×2 max-pooling (stride 2, valid)
    pub max_pool2: bool,
    /// while training, each output plane's sums for the BatchNormalization
    /// right after, taken as each plane is written ([`CpuOut::moments`]):
    /// it then needs no pass of its own over this step's output
    pub moments: bool,
}

/// The sizes of one step of the plan as it runs: batch, input and output
/// (after what it fused), and what it fused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepShape {
    pub n: usize,
    pub input: Shape,
    pub output: Shape,
    pub fused: Fused,
}

/// The run a forward belongs to: training (dropout active) or inference,
/// and the model's generator (dropout masks), so that a seed repeats a run.
pub struct Run<'a> {
    pub training: bool,
    pub rng: &'a mut StdRng,
    /// The positions in the model's parameters of the running step's
    /// (the plan sets them), for [`Run::update`].
    pub(crate) step_params: Vec<usize>,
    /// New values of non-trainable parameters computed by a training
    /// forward (BatchNormalization's moving statistics), by position in
    /// the model's parameters; the training step applies them with the
    /// optimizer's update, and not when it skips the update.
    pub updates: Vec<(usize, Tensor)>,
    /// The sums of the running step's input planes, when the step before
    /// took them ([`Fused::moments`]); the plan hands them over.
    pub(crate) input_moments: Option<Vec<PlaneSums>>,
}

impl<'a> Run<'a> {
    pub fn new(training: bool, rng: &'a mut StdRng) -> Self {
        Run {
            training,
            rng,
            step_params: Vec::new(),
            updates: Vec::new(),
            input_moments: None,
        }
    }
    /// A new value for the running layer's parameter `slot` (its index in
    /// the layer's [`LayerKind::params`]).
    pub fn update(&mut self, slot: usize, value: Tensor) {
        if let Some(&i) = self.step_params.get(slot) {
            self.updates.push((i, value));
        }
    }
}

/// What a step's CPU forward kept for its backward, besides its input and
/// output (the pooling argmax, a dropout mask's seed), in the kind's own type.
pub type Kept = Option<Box<dyn Any + Send + Sync>>;

/// A CPU forward's result.
pub struct CpuOut {
    /// `None`: the output is the input unchanged (Flatten, inference dropout).
    pub y: Option<Vec<f32>>,
    pub kept: Kept,
    /// With [`Fused::moments`] while training: each plane's sums of `y`,
    /// for the next step.
    pub moments: Option<Vec<PlaneSums>>,
}

impl CpuOut {
    pub fn new(y: Vec<f32>) -> Self {
        CpuOut {
            y: Some(y),
            kept: None,
            moments: None,
        }
    }
    pub fn unchanged() -> Self {
        CpuOut {
            y: None,
            kept: None,
            moments: None,
        }
    }
}

/// What a CPU backward gets.
pub struct CpuGrad<'a> {
    pub step: &'a StepShape,
    /// the forward's input and output
    pub x: &'a [f32],
    pub y: &'a [f32],
    /// the gradient of the output, which the backward may reuse for `dx`
    pub dy: Vec<f32>,
    pub kept: &'a Kept,
    pub params: &'a [&'a [f32]],
    /// false for the first step with parameters: nothing needs its `dx`
    pub wants_dx: bool,
}

/// The kind's own [`Kept`] value.
pub fn kept<'a, T: 'static>(kept: &'a Kept, what: &str) -> Result<&'a T> {
    kept.as_ref()
        .and_then(|k| k.downcast_ref::<T>())
        .ok_or_else(|| anyhow::anyhow!("{what}: backward without its forward"))
}

/// Where the windows of a pooling (MaxPooling2D, AveragePooling2D) go on
/// `input`: its channels and the windows' geometry, placed by [`window1`]
/// along each axis, or a clear error naming `kind`. `strides` defaults to
/// the pool, as in Keras.
pub(crate) fn pool_geom(
    kind: &str,
    input: Shape,
    pool: Size2,
    strides: Option<Size2>,
    padding: Padding,
) -> Result<(usize, crate::kernels::max_pool::PoolGeom)> {
    let (c, h, w) = image_input(kind, input)?;
    let s = strides.unwrap_or(pool);
    let rows = window1(kind, "height", h, pool.h, s.h, padding)?;
    let cols = window1(kind, "width", w, pool.w, s.w, padding)?;
    let geom = crate::kernels::max_pool::PoolGeom {
        h,
        w,
        kh: pool.h,
        kw: pool.w,
        sh: s.h,
        sw: s.w,
        ho: rows.out,
        wo: cols.out,
        top: rows.before,
        left: cols.before,
    };
    Ok((c, geom))
}

/// The poolings write their padding only when it is not the default, so
/// that their JSON stays that of earlier versions (`{"pool_size": 2}`).
pub(crate) fn is_valid(padding: &Padding) -> bool {
    *padding == Padding::Valid
}

/// The image a layer needs, or a clear error naming it.
pub(crate) fn image_input(kind: &str, input: Shape) -> Result<(usize, usize, usize)> {
    match input {
        Shape::Image(c, h, w) => Ok((c, h, w)),
        Shape::Flat(n) => anyhow::bail!(
            "{kind} needs an image input (channels, height, width), got a flat vector of {n}"
        ),
    }
}

impl<'de> Deserialize<'de> for Layer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            class_name: String,
            #[serde(default)]
            config: Option<serde_json::Value>,
        }
        let raw = Raw::deserialize(d)?;
        let config = raw
            .config
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        Layer::from_config(&raw.class_name, config).map_err(serde::de::Error::custom)
    }
}

/// The article's model, layer by layer (1,250,858 parameters on CIFAR-10).
pub fn article_layers(num_classes: usize) -> Vec<Layer> {
    vec![
        conv2d(32, 3).same().into(),
        relu(),
        conv2d(32, 3).into(),
        relu(),
        max_pooling2d(2).into(),
        dropout(0.25),
        conv2d(64, 3).same().into(),
        relu(),
        conv2d(64, 3).into(),
        relu(),
        max_pooling2d(2).into(),
        dropout(0.25),
        flatten(),
        dense(512).into(),
        relu(),
        dropout(0.5),
        dense(num_classes).into(),
        softmax(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind: its JSON names it by its class name, which the reader
    /// knows, and reads back to the same layer; a kind without settings has
    /// no config; unknown kinds and fields are clear errors.
    #[test]
    fn layers_round_trip_through_their_json() {
        let mut layers = article_layers(10);
        layers.push(
            Dense {
                units: 3,
                activation: Activation::Softmax,
                use_bias: true,
            }
            .into(),
        );
        for layer in layers {
            let json = serde_json::to_value(&layer).unwrap();
            let name = json["class_name"].as_str().unwrap();
            assert_eq!(name, layer.kind().class_name());
            assert!(
                Layer::CLASS_NAMES.contains(&name),
                "{name} is not registered"
            );
            assert_eq!(json.get("config").is_none(), layer == flatten(), "{json}");
            let back: Layer = serde_json::from_value(json).unwrap();
            assert_eq!(back, layer);
        }
        let e = serde_json::from_str::<Layer>(r#"{"class_name": "Conv3D", "config": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown layer class_name \"Conv3D\"") && e.contains("Dense"),
            "{e}"
        );
        let e = serde_json::from_str::<Layer>(
            r#"{"class_name": "Dropout", "config": {"rate": 0.5, "seed": 1}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Dropout") && e.contains("seed"), "{e}");
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    /// TensorFlow's placement: "same" pads the smaller half before.
    #[test]
    fn windows_are_placed_as_tensorflow_places_them() {
        let w = |i, k, s, p| window1("T", "height", i, k, s, p).unwrap();
        assert_eq!(w(32, 3, 1, Padding::Same), Window1 { out: 32, before: 1 });
        assert_eq!(w(32, 3, 2, Padding::Same), Window1 { out: 16, before: 0 });
        assert_eq!(w(7, 3, 2, Padding::Same), Window1 { out: 4, before: 1 });
        assert_eq!(w(6, 2, 2, Padding::Same), Window1 { out: 3, before: 0 });
        assert_eq!(w(5, 4, 1, Padding::Same), Window1 { out: 5, before: 1 });
        assert_eq!(w(32, 3, 1, Padding::Valid), Window1 { out: 30, before: 0 });
        assert_eq!(w(7, 3, 2, Padding::Valid), Window1 { out: 3, before: 0 });
        assert_eq!(w(8, 2, 2, Padding::Valid), Window1 { out: 4, before: 0 });
        let e = window1("MaxPooling2D", "height", 2, 3, 1, Padding::Valid).unwrap_err();
        assert!(e.to_string().contains("larger than the input's 2"), "{e}");
        let e = window1("Conv2D", "width", 8, 3, 0, Padding::Same).unwrap_err();
        assert!(e.to_string().contains("strides must be at least 1"), "{e}");
    }

    #[test]
    fn sizes_read_as_numbers_or_pairs() {
        let s: Size2 = serde_json::from_str("3").unwrap();
        assert_eq!(s, Size2::square(3));
        let s: Size2 = serde_json::from_str("[3, 5]").unwrap();
        assert_eq!(s, Size2 { h: 3, w: 5 });
        assert_eq!(serde_json::to_string(&Size2::square(2)).unwrap(), "2");
        assert_eq!(
            serde_json::to_string(&Size2::from((1, 4))).unwrap(),
            "[1,4]"
        );
        assert!(serde_json::from_str::<Size2>("[1, 2, 3]").is_err());
    }
}
