//! Activations: the functions (given inline to Conv2D and Dense, or as a
//! layer of their own) and Keras's `Activation` layer.
//!
//! Each function is here three times, side by side: the portable forward in
//! candle ops (differentiated by candle's autograd), and the CPU f32
//! forward and derivative on buffers. The formulas are Keras 3's (its
//! TensorFlow backend), checked against Keras's values and derivatives in
//! `crate/tests/activations.rs`.
//!
//! In the architecture JSON an activation is its Keras name (`"relu"`,
//! `"gelu"`, `"leaky_relu"`: Keras's defaults); one whose parameter is not
//! Keras's default is its name with its Keras keyword arguments,
//! `{"leaky_relu": {"negative_slope": 0.1}}`, `{"gelu": {"approximate": true}}`.
//! `"swish"` reads as `"silu"`, the name Keras 3 writes.

use super::{CpuGrad, CpuOut, Layer, LayerKind, Run, Shape, StepShape};
use crate::kernels::simd::Float;
use anyhow::{ensure, Result};
use candle_core::{Tensor, D};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// An activation function, by its Keras name.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Activation {
    #[default]
    Linear,
    Relu,
    /// over the last axis
    Softmax,
    Sigmoid,
    Tanh,
    /// `x` if `x > 0`, else `exp(x) - 1` (Keras's `alpha=1.0`)
    Elu,
    /// `SELU_SCALE * elu(x)` with `alpha = SELU_ALPHA`
    Selu,
    /// `x · Φ(x)`, `Φ` the standard normal CDF (the erf form); with
    /// `approximate`, the tanh approximation
    Gelu { approximate: bool },
    /// `x · sigmoid(x)` (Keras's `swish` too)
    Silu,
    /// `log(exp(x) + 1)`
    Softplus,
    /// `x` if `x > 0`, else `negative_slope · x`
    LeakyRelu { negative_slope: f64 },
}

/// Keras's `leaky_relu` function's default slope (its `LeakyReLU` layer's
/// is 0.3: see [`super::LeakyReLU`]).
pub const LEAKY_RELU_SLOPE: f64 = 0.2;
/// SELU's constants (Klambauer et al., 2017), as TensorFlow has them.
pub const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
pub const SELU_SCALE: f64 = 1.050_700_987_355_480_5;
/// The tanh approximation of GELU: `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
const GELU_SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044715;
/// Beyond this the approximation's tanh is ±1 in f32 and f64 alike:
/// clamping its argument there changes no value and keeps `x³` from
/// overflowing (whose gradient would then be `0 · ∞`).
const GELU_TANH_CLAMP: f64 = 10.0;

/// Keras's `Activation(name)` layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationLayer {
    pub activation: Activation,
}

/// `Activation(a)`, e.g. `activation(Activation::Gelu { approximate: true })`.
pub fn activation(activation: Activation) -> Layer {
    ActivationLayer { activation }.into()
}

/// `Activation('relu')`
pub fn relu() -> Layer {
    activation(Activation::Relu)
}

/// `Activation('softmax')`
pub fn softmax() -> Layer {
    activation(Activation::Softmax)
}

/// `Activation('sigmoid')`
pub fn sigmoid() -> Layer {
    activation(Activation::Sigmoid)
}

/// `Activation('tanh')`
pub fn tanh() -> Layer {
    activation(Activation::Tanh)
}

/// `Activation('elu')`
pub fn elu() -> Layer {
    activation(Activation::Elu)
}

/// `Activation('selu')`
pub fn selu() -> Layer {
    activation(Activation::Selu)
}

/// `Activation('gelu')`: the exact (erf) form, Keras's default.
pub fn gelu() -> Layer {
    activation(Activation::Gelu { approximate: false })
}

/// `Activation('silu')`
pub fn silu() -> Layer {
    activation(Activation::Silu)
}

/// `Activation('swish')`: the same function as [`silu`], saved as `"silu"`.
pub fn swish() -> Layer {
    silu()
}

/// `Activation('softplus')`
pub fn softplus() -> Layer {
    activation(Activation::Softplus)
}

impl Activation {
    /// The names an activation is read by (`"swish"` is `"silu"`).
    pub const NAMES: &'static [&'static str] = &[
        "linear",
        "relu",
        "softmax",
        "sigmoid",
        "tanh",
        "elu",
        "selu",
        "gelu",
        "silu",
        "swish",
        "softplus",
        "leaky_relu",
    ];

    /// Keras's name of the function.
    pub fn name(self) -> &'static str {
        use Activation::*;
        match self {
            Linear => "linear",
            Relu => "relu",
            Softmax => "softmax",
            Sigmoid => "sigmoid",
            Tanh => "tanh",
            Elu => "elu",
            Selu => "selu",
            Gelu { .. } => "gelu",
            Silu => "silu",
            Softplus => "softplus",
            LeakyRelu { .. } => "leaky_relu",
        }
    }

    /// The function of a name, with Keras's default parameters.
    fn from_name(name: &str) -> Option<Activation> {
        use Activation::*;
        Some(match name {
            "linear" => Linear,
            "relu" => Relu,
            "softmax" => Softmax,
            "sigmoid" => Sigmoid,
            "tanh" => Tanh,
            "elu" => Elu,
            "selu" => Selu,
            "gelu" => Gelu { approximate: false },
            "silu" | "swish" => Silu,
            "softplus" => Softplus,
            "leaky_relu" => LeakyRelu {
                negative_slope: LEAKY_RELU_SLOPE,
            },
            _ => return None,
        })
    }

    /// Whether its parameters are usable; the model checks this when a
    /// layer is added or read, before anything runs.
    pub fn check(self) -> Result<()> {
        if let Activation::LeakyRelu { negative_slope } = self {
            ensure!(
                negative_slope.is_finite() && negative_slope >= 0.0,
                "leaky_relu's negative_slope must be a finite number of at least 0 (as in Keras's LeakyReLU), got {negative_slope}"
            );
        }
        Ok(())
    }

    /// The function on a tensor, in candle ops whose backward candle's
    /// autograd implements.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        use Activation::*;
        let sigmoid = candle_nn::ops::sigmoid;
        Ok(match self {
            Linear => x.clone(),
            Relu => x.relu()?,
            Softmax => candle_nn::ops::softmax(x, D::Minus1)?,
            Sigmoid => sigmoid(x)?,
            Tanh => x.tanh()?,
            Elu => x.elu(1.0)?,
            Selu => {
                // At 0 TensorFlow's derivative is the positive side's; candle's
                // elu takes the negative side's. exp of x ≤ 0 only: no overflow.
                let neg = ((x.minimum(0.0)?.exp()? - 1.0)? * (SELU_SCALE * SELU_ALPHA))?;
                x.ge(0.0)?.where_cond(&(x * SELU_SCALE)?, &neg)?
            }
            Gelu { approximate: false } => {
                let phi = ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)?; // 2 Φ(x)
                ((x * 0.5)? * phi)?
            }
            Gelu { approximate: true } => {
                let c = x.clamp(-GELU_TANH_CLAMP, GELU_TANH_CLAMP)?;
                let inner = ((&c + ((c.sqr()? * &c)? * GELU_CUBIC)?)? * GELU_SQRT_2_OVER_PI)?;
                ((x * 0.5)? * (inner.tanh()? + 1.0)?)?
            }
            Silu => (x * sigmoid(x)?)?,
            Softplus => {
                // m + log(exp(x - m) + exp(-m)) with m = max(x, 0): no
                // overflow, and the gradient is sigmoid(x) whatever m's is,
                // so m is held constant (candle's ReLU has a kink at 0).
                let m = x.relu()?.detach();
                let sum = ((x - &m)?.exp()? + m.neg()?.exp()?)?;
                (sum.log()? + &m)?
            }
            LeakyRelu { negative_slope } => {
                // where, not max: the gradient at 0 is the slope, as in TensorFlow
                x.gt(0.0)?.where_cond(x, &(x * negative_slope)?)?
            }
        })
    }

    /// The function on a CPU f32 buffer; a softmax over each run of
    /// `last_axis` values.
    pub fn cpu_forward(self, x: &[f32], last_axis: usize) -> Vec<f32> {
        use Activation::*;
        match self {
            Linear => x.to_vec(),
            Relu => x.par_iter().map(|&v| f32::relu(v)).collect(),
            Softmax => softmax_rows(x, last_axis),
            Sigmoid => map(x, f::sigmoid),
            Tanh => map(x, f32::tanh),
            Elu => map(x, f::elu),
            Selu => map(x, f::selu),
            Gelu { approximate: false } => map(x, f::gelu),
            Gelu { approximate: true } => map(x, f::gelu_tanh),
            Silu => map(x, f::silu),
            Softplus => map(x, f::softplus),
            LeakyRelu { negative_slope } => {
                let s = negative_slope as f32;
                map(x, move |x| if x > 0.0 { x } else { s * x })
            }
        }
    }

    /// The CPU backward: from the output's gradient `dy` (reused for the
    /// input's), the input `x` and output `y` of [`Activation::cpu_forward`].
    /// The derivative comes from `y` where the formula allows, else from `x`.
    pub fn cpu_backward(self, dy: Vec<f32>, x: &[f32], y: &[f32], last_axis: usize) -> Vec<f32> {
        use Activation::*;
        let mut d = dy;
        match self {
            Linear => {}
            Relu => relu_grad(&mut d, y),
            Softmax => softmax_grad(&mut d, y, last_axis),
            Sigmoid => chain(&mut d, y, |y| y * (1.0 - y)),
            Tanh => chain(&mut d, y, |y| 1.0 - y * y),
            // x < 0: y = exp(x) - 1, so the derivative exp(x) is y + 1; at 0
            // the positive side's, as TensorFlow's
            Elu => chain(&mut d, y, |y| if y >= 0.0 { 1.0 } else { y + 1.0 }),
            Selu => {
                let (scale, scale_alpha) = (SELU_SCALE as f32, (SELU_SCALE * SELU_ALPHA) as f32);
                chain(&mut d, y, move |y| if y >= 0.0 { scale } else { y + scale_alpha })
            }
            Gelu { approximate: false } => chain(&mut d, x, f::gelu_grad),
            Gelu { approximate: true } => chain(&mut d, x, f::gelu_tanh_grad),
            Silu => chain(&mut d, x, f::silu_grad),
            Softplus => chain(&mut d, x, f::sigmoid),
            LeakyRelu { negative_slope } => {
                let s = negative_slope as f32;
                chain(&mut d, x, move |x| if x > 0.0 { 1.0 } else { s })
            }
        }
        d
    }
}

/// The functions and their derivatives on one f32 value.
mod f {
    use super::*;

    pub fn sigmoid(x: f32) -> f32 {
        // exp of a non-positive number only: no overflow
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            let e = x.exp();
            e / (1.0 + e)
        }
    }
    pub fn elu(x: f32) -> f32 {
        if x > 0.0 {
            x
        } else {
            x.exp_m1()
        }
    }
    pub fn selu(x: f32) -> f32 {
        let (scale, alpha) = (SELU_SCALE as f32, SELU_ALPHA as f32);
        if x > 0.0 {
            scale * x
        } else {
            scale * alpha * x.exp_m1()
        }
    }
    /// Φ(x) = erfc(-x / √2) / 2: erfc keeps its precision for negative x,
    /// where 1 + erf(x / √2) cancels (TensorFlow's form).
    fn phi(x: f32) -> f32 {
        0.5 * candle_core::cpu::erf::erfc_f32(-x * std::f32::consts::FRAC_1_SQRT_2)
    }
    pub fn gelu(x: f32) -> f32 {
        x * phi(x)
    }
    /// Φ(x) + x φ(x), φ the standard normal density.
    pub fn gelu_grad(x: f32) -> f32 {
        const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
        phi(x) + x * FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
    }
    /// The tanh approximation's tanh, and the derivative of its argument.
    fn gelu_tanh_parts(x: f32) -> (f32, f32) {
        let (k, c) = (GELU_SQRT_2_OVER_PI as f32, GELU_CUBIC as f32);
        let clamp = GELU_TANH_CLAMP as f32;
        let v = x.clamp(-clamp, clamp);
        let inner_grad = if v == x { k * (1.0 + 3.0 * c * x * x) } else { 0.0 };
        ((k * (v + c * v * v * v)).tanh(), inner_grad)
    }
    pub fn gelu_tanh(x: f32) -> f32 {
        0.5 * x * (1.0 + gelu_tanh_parts(x).0)
    }
    pub fn gelu_tanh_grad(x: f32) -> f32 {
        let (t, inner_grad) = gelu_tanh_parts(x);
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * inner_grad
    }
    pub fn silu(x: f32) -> f32 {
        x * sigmoid(x)
    }
    pub fn silu_grad(x: f32) -> f32 {
        let s = sigmoid(x);
        s * (1.0 + x * (1.0 - s))
    }
    pub fn softplus(x: f32) -> f32 {
        x.max(0.0) + (-x.abs()).exp().ln_1p()
    }
}

/// Values per task of the parallel loops below: enough work to outweigh
/// handing it to a thread. Elementwise, so results do not depend on the
/// number of threads.
const CHUNK: usize = 1 << 14;

/// `f` of each value of `x`.
fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    // (not zero-filled first: that was a memset of the whole output)
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            y.iter_mut().zip(x).for_each(|(y, &x)| {
                y.write(f(x));
            })
        });
    // SAFETY: the chunks of `y` and `x` pair up one to one, of equal
    // lengths, so every element was written above.
    unsafe { y.set_len(x.len()) };
    y
}

/// `d ⊙ f(v)` in place: the chain rule through a derivative `f` computed
/// from `v`, the function's input or output.
fn chain(d: &mut [f32], v: &[f32], f: impl Fn(f32) -> f32 + Sync) {
    d.par_chunks_mut(CHUNK)
        .zip(v.par_chunks(CHUNK))
        .for_each(|(d, v)| d.iter_mut().zip(v).for_each(|(d, &v)| *d *= f(v)));
}

/// Length of the last axis: what a softmax normalizes over.
fn last_axis(shape: Shape) -> usize {
    match shape {
        Shape::Image(_, _, w) => w,
        Shape::Flat(n) => n,
    }
}

impl LayerKind for ActivationLayer {
    fn class_name(&self) -> &'static str {
        "Activation"
    }
    fn base_name(&self) -> &'static str {
        "activation"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.activation.check()?;
        Ok(input)
    }
    fn forward(&self, x: &Tensor, _: &[Tensor], _: &StepShape, _: &mut Run) -> Result<Tensor> {
        self.activation.forward(x)
    }
    fn cpu_forward(&self, x: &[f32], _: &[&[f32]], s: &StepShape, _: &mut Run) -> Result<CpuOut> {
        Ok(match self.activation {
            Activation::Linear => CpuOut::unchanged(),
            a => CpuOut::new(a.cpu_forward(x, last_axis(s.input))),
        })
    }
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let len = last_axis(g.step.input);
        Ok((self.activation.cpu_backward(g.dy, g.x, g.y, len), vec![]))
    }
}

/// `d` where the ReLU's output `y` is positive, else 0, in place: the
/// convolutions' own ReLU gradient ([`Float::relu_grad`]), so one rule holds.
pub(crate) fn relu_grad(d: &mut [f32], y: &[f32]) {
    d.par_iter_mut()
        .zip(y)
        .for_each(|(d, &y)| *d = f32::relu_grad(*d, y));
}

/// Softmax over each run of `len` values.
pub(crate) fn softmax_rows(x: &[f32], len: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    for row in y.chunks_exact_mut(len) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
    y
}

/// The softmax's backward in place: `dx = y ⊙ (dy − Σ dy ⊙ y)` for each run.
fn softmax_grad(d: &mut [f32], y: &[f32], len: usize) {
    for (d, y) in d.chunks_exact_mut(len).zip(y.chunks_exact(len)) {
        let dot: f32 = d.iter().zip(y).map(|(d, y)| d * y).sum();
        d.iter_mut().zip(y).for_each(|(d, &y)| *d = y * (*d - dot));
    }
}

/// The parameters of the activations that have some, in the JSON's
/// `{"name": {...}}` form; Keras's keyword names and defaults.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeluConfig {
    #[serde(default)]
    approximate: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeakyReluConfig {
    #[serde(default = "leaky_relu_slope")]
    negative_slope: f64,
}

fn leaky_relu_slope() -> f64 {
    LEAKY_RELU_SLOPE
}

impl Serialize for Activation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Activation::Gelu { approximate: true } => {
                with_config(s, self.name(), &GeluConfig { approximate: true })
            }
            Activation::LeakyRelu { negative_slope } if negative_slope != LEAKY_RELU_SLOPE => {
                with_config(s, self.name(), &LeakyReluConfig { negative_slope })
            }
            a => s.serialize_str(a.name()),
        }
    }
}

/// `{name: config}`
fn with_config<S: serde::Serializer, T: Serialize>(
    s: S,
    name: &str,
    config: &T,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(1))?;
    m.serialize_entry(name, config)?;
    m.end()
}

impl<'de> Deserialize<'de> for Activation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = serde_json::Value::deserialize(d)?;
        Activation::from_json(json).map_err(serde::de::Error::custom)
    }
}

impl Activation {
    /// An activation from its JSON: a name, or `{name: parameters}`; checked.
    fn from_json(json: serde_json::Value) -> Result<Activation, String> {
        use serde_json::{from_value, Value};
        let unknown = |name: &str| {
            format!(
                "unknown activation {name:?}: this version knows {}",
                Activation::NAMES.join(", ")
            )
        };
        let a = match json {
            Value::String(name) => Activation::from_name(&name).ok_or_else(|| unknown(&name))?,
            Value::Object(m) if m.len() == 1 => {
                let (name, config) = m.into_iter().next().expect("one entry");
                let bad = |e: serde_json::Error| format!("activation {name:?}: {e}");
                match name.as_str() {
                    "gelu" => {
                        let c: GeluConfig = from_value(config).map_err(bad)?;
                        Activation::Gelu {
                            approximate: c.approximate,
                        }
                    }
                    "leaky_relu" => {
                        let c: LeakyReluConfig = from_value(config).map_err(bad)?;
                        Activation::LeakyRelu {
                            negative_slope: c.negative_slope,
                        }
                    }
                    other if Activation::from_name(other).is_some() => {
                        return Err(format!(
                            "activation {other:?} takes no parameters: write it as \"{other}\""
                        ))
                    }
                    other => return Err(unknown(other)),
                }
            }
            other => {
                return Err(format!(
                    "expected an activation: a name such as \"relu\", or a name with its parameters such as {{\"leaky_relu\": {{\"negative_slope\": 0.1}}}}; got {other}"
                ))
            }
        };
        a.check().map_err(|e| e.to_string())?;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::Activation::{self, *};
    use crate::layers::*;
    use crate::train::step::check::{assert_inference_matches_portable, assert_matches_autograd};

    /// Every activation, with Keras's defaults and with other parameters.
    fn every() -> Vec<Activation> {
        vec![
            Linear,
            Relu,
            Softmax,
            Sigmoid,
            Tanh,
            Elu,
            Selu,
            Gelu { approximate: false },
            Gelu { approximate: true },
            Silu,
            Softplus,
            LeakyRelu {
                negative_slope: LEAKY_RELU_SLOPE,
            },
            LeakyRelu {
                negative_slope: 1.5,
            },
        ]
    }

    /// A softmax's output does not change when all its inputs shift, as a
    /// convolution's bias shifts a channel's along the last axis: its bias
    /// would get no gradient to check. So a softmax on images comes after a
    /// tanh, and a convolution's inline activation is a tanh instead.
    fn on_images(a: Activation) -> Vec<Layer> {
        match a {
            Softmax => vec![tanh(), activation(a)],
            _ => vec![activation(a)],
        }
    }

    /// As layers of their own: after a same and a valid (even-kernel)
    /// convolution on images, and on flat vectors between dense layers.
    fn as_layers(a: Activation) -> Vec<Layer> {
        let mut layers = vec![conv2d(3, 3).same().into()];
        layers.extend(on_images(a));
        layers.push(conv2d(4, 2).into());
        layers.extend(on_images(a));
        layers.extend([
            flatten(),
            dense(7).into(),
            activation(a),
            dense(3).into(),
            softmax(),
        ]);
        layers
    }

    /// Inline: in a convolution, a dense layer with a bias and one without.
    fn inline(a: Activation) -> Vec<Layer> {
        let on_images = if a == Softmax { Tanh } else { a };
        vec![
            Conv2D {
                activation: on_images,
                ..conv2d(3, 3).same()
            }
            .into(),
            flatten(),
            dense(6).activation(a).into(),
            dense(5).activation(a).use_bias(false).into(),
            dense(3).into(),
            softmax(),
        ]
    }

    /// Each activation's CPU forward and backward against candle's autograd
    /// in f64 over its portable forward, as a layer and inline, on odd and
    /// even images, batches of 1 and 4.
    #[test]
    fn every_activation_matches_autograd() {
        for a in every() {
            for (side, n) in [(5, 1), (6, 4)] {
                eprintln!("{a:?} on {side}x{side} images, batch {n}"); // shown on failure
                assert_matches_autograd(&as_layers(a), side, n);
                assert_matches_autograd(&inline(a), side, n);
            }
        }
    }

    #[test]
    fn every_activation_infers_as_the_portable_path() {
        for a in every() {
            for (side, n) in [(5, 1), (6, 4)] {
                eprintln!("{a:?} on {side}x{side} images, batch {n}"); // shown on failure
                assert_inference_matches_portable(&as_layers(a), side, n);
                assert_inference_matches_portable(&inline(a), side, n);
            }
        }
    }

    /// The LeakyReLU layer, after a convolution and a dense layer.
    #[test]
    fn the_leaky_relu_layer_matches_autograd() {
        let layers = vec![
            conv2d(3, 3).into(),
            leaky_relu(0.3),
            flatten(),
            dense(4).use_bias(false).into(),
            LeakyReLU::default().into(),
            dense(3).into(),
            softmax(),
        ];
        assert_matches_autograd(&layers, 5, 3);
        assert_inference_matches_portable(&layers, 5, 3);
    }
}
