//! The plan: the model's layers as they run, worked out once when the model
//! changes, and run by every path (the portable forward that CUDA and the
//! f64 checks take, the CPU inference, the CPU training step).
//!
//! Building it is the one place where
//! * shapes are settled (from [`Architecture::shapes`]),
//! * fusions are decided: a Conv2D or Dense takes the ReLU after it (inline
//!   or the next layer) into its kernel, and a Conv2D also the
//!   MaxPooling2D(2) after that where its kernel can ([`LayerKind::fusable`]);
//!   an inline activation that is not fused runs as a step of its own;
//! * parameters are found by name;
//! * the final softmax is set aside: the loss and `predict` apply it to
//!   the logits, which is numerically safer.

use super::architecture::Architecture;
use super::params::Params;
use crate::layers::{
    relu, Activation, ActivationLayer, CpuGrad, Fused, Kept, Layer, LayerKind, Run, Shape,
    StepShape,
};
use anyhow::{Context, Result};
use candle_core::Tensor;

/// One step: a layer, with what it fused.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub layer: Layer,
    pub input: Shape,
    /// after the fused layers
    pub output: Shape,
    pub fused: Fused,
    /// positions in [`Params`] of the layer's parameters, in its order
    pub params: Vec<usize>,
}

impl Step {
    fn kind(&self) -> &dyn LayerKind {
        self.layer.kind()
    }
    fn shape(&self, n: usize) -> StepShape {
        StepShape {
            n,
            input: self.input,
            output: self.output,
            fused: self.fused,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// up to the logits
    pub steps: Vec<Step>,
    /// Whether the model ends in a softmax (left out of `steps`).
    pub softmax: bool,
}

/// What the CPU forward leaves for the backward: each step's output
/// (`None`: its input passed through) and what it kept.
pub(crate) struct Trace {
    outputs: Vec<Option<Vec<f32>>>,
    kept: Vec<Kept>,
}

impl Trace {
    /// The output of the steps up to `k` (exclusive): the last one written, or `x`.
    fn latest<'a>(&'a self, k: usize, x: &'a [f32]) -> &'a [f32] {
        self.outputs[..k]
            .iter()
            .rev()
            .find_map(|o| o.as_deref())
            .unwrap_or(x)
    }
    /// The logits.
    pub fn output<'a>(&'a self, x: &'a [f32]) -> &'a [f32] {
        self.latest(self.outputs.len(), x)
    }
}

impl Plan {
    pub fn build(arch: &Architecture, params: &Params) -> Result<Plan> {
        let shapes = arch.shapes()?;
        let names = arch.layer_names();
        let layers = &arch.layers;
        let mut input = arch.input();
        let mut steps = Vec::with_capacity(layers.len());
        let mut i = 0;
        while i < layers.len() {
            let kind = layers[i].kind();
            let can = kind.fusable(input);
            let inline = kind.activation();
            let mut fused = Fused::default();
            let mut last = i; // the last layer this step takes
            if can.relu {
                if inline == Activation::Relu {
                    fused.relu = true;
                } else if inline == Activation::Linear && layers.get(i + 1) == Some(&relu()) {
                    fused.relu = true;
                    last += 1;
                }
            }
            if fused.relu && can.max_pool2 && is_max_pool2(layers.get(last + 1)) {
                fused.max_pool2 = true;
                last += 1;
            }
            // an activation of its own runs between this step and the next
            let activation_step =
                inline != Activation::Linear && !(inline == Activation::Relu && fused.relu);
            fused.moments = can.moments
                && !fused.max_pool2
                && !activation_step
                && matches!(layers.get(last + 1), Some(Layer::BatchNormalization(_)));
            let params = kind
                .params(input)
                .iter()
                .map(|spec| {
                    let name = format!("{}.{}", names[i], spec.name);
                    params
                        .index(&name)
                        .with_context(|| format!("the model has no parameter {name}"))
                })
                .collect::<Result<_>>()?;
            let output = shapes[last];
            steps.push(Step {
                layer: layers[i].clone(),
                input,
                output,
                fused,
                params,
            });
            if activation_step {
                steps.push(Step {
                    layer: ActivationLayer { activation: inline }.into(),
                    input: output,
                    output,
                    fused: Fused::default(),
                    params: vec![],
                });
            }
            input = output;
            i = last + 1;
        }
        let softmax = matches!(
            steps.last().map(|s| &s.layer),
            Some(Layer::Activation(ActivationLayer {
                activation: Activation::Softmax
            }))
        );
        if softmax {
            steps.pop();
        }
        Ok(Plan { steps, softmax })
    }

    /// The portable forward up to the logits, in candle ops.
    pub fn forward(&self, params: &Params, x: &Tensor, run: &mut Run) -> Result<Tensor> {
        let n = x.dim(0)?;
        let mut x = x.clone();
        for step in &self.steps {
            let p: Vec<Tensor> = step
                .params
                .iter()
                .map(|&i| params.at(i).var.as_tensor().clone())
                .collect();
            run.step_params.clone_from(&step.params);
            x = step
                .kind()
                .forward(&x, &p, &step.shape(n), run)
                .with_context(|| step.kind().class_name())?;
        }
        Ok(x)
    }

    /// The CPU f32 forward up to the logits of a contiguous batch `x` of
    /// `n` images, keeping only the latest output (inference).
    pub fn cpu_infer(
        &self,
        data: &[&[f32]],
        x: &[f32],
        n: usize,
        run: &mut Run,
    ) -> Result<Vec<f32>> {
        let mut latest: Option<Vec<f32>> = None;
        let mut moments = None;
        for step in &self.steps {
            let p = step_params(step, data);
            let input = latest.as_deref().unwrap_or(x);
            run.step_params.clone_from(&step.params);
            run.input_moments = moments.take();
            let out = step.kind().cpu_forward(input, &p, &step.shape(n), run)?;
            moments = out.moments;
            if out.y.is_some() {
                latest = out.y;
            }
        }
        Ok(latest.unwrap_or_else(|| x.to_vec()))
    }

    /// The CPU f32 forward, keeping what the backward needs.
    pub fn cpu_forward(
        &self,
        data: &[&[f32]],
        x: &[f32],
        n: usize,
        run: &mut Run,
    ) -> Result<Trace> {
        let mut trace = Trace {
            outputs: Vec::with_capacity(self.steps.len()),
            kept: Vec::with_capacity(self.steps.len()),
        };
        let mut moments = None;
        for (k, step) in self.steps.iter().enumerate() {
            let p = step_params(step, data);
            let input = trace.latest(k, x);
            run.step_params.clone_from(&step.params);
            // (the sums a step took of its output go to the next step alone)
            run.input_moments = moments.take();
            let out = step.kind().cpu_forward(input, &p, &step.shape(n), run)?;
            moments = out.moments;
            trace.outputs.push(out.y);
            trace.kept.push(out.kept);
        }
        run.input_moments = None;
        Ok(trace)
    }

    /// The CPU backward from the logits' gradient `dy`, down to the first
    /// step with parameters (whose input needs no gradient): the gradient
    /// of every parameter, by position in [`Params`] (`None`: not reached).
    pub fn cpu_backward(
        &self,
        data: &[&[f32]],
        trace: &Trace,
        x: &[f32],
        n: usize,
        mut dy: Vec<f32>,
    ) -> Result<Vec<Option<Vec<f32>>>> {
        let mut grads = vec![None; data.len()];
        let first = self.steps.iter().position(|s| !s.params.is_empty());
        for k in (first.unwrap_or(self.steps.len())..self.steps.len()).rev() {
            let step = &self.steps[k];
            let p = step_params(step, data);
            let shape = step.shape(n);
            let (dx, param_grads) = step.kind().cpu_backward(CpuGrad {
                step: &shape,
                x: trace.latest(k, x),
                y: trace.latest(k + 1, x),
                dy,
                kept: &trace.kept[k],
                params: &p,
                wants_dx: Some(k) != first,
            })?;
            for (&i, g) in step.params.iter().zip(param_grads) {
                grads[i] = Some(g);
            }
            dy = dx;
        }
        Ok(grads)
    }
}

fn step_params<'a>(step: &Step, data: &[&'a [f32]]) -> Vec<&'a [f32]> {
    step.params.iter().map(|&i| data[i]).collect()
}

fn is_max_pool2(layer: Option<&Layer>) -> bool {
    matches!(layer, Some(Layer::MaxPooling2D(m)) if m.is_2x2())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{dense, softmax, Dense};
    use crate::model::Sequential;
    use candle_core::Device;

    /// (class name, fused ReLU, fused pooling, input, output) of each step.
    fn steps(model: &Sequential) -> Vec<(&'static str, bool, bool, Shape, Shape)> {
        let plan = &model.plan;
        plan.steps
            .iter()
            .map(|s| {
                let k = s.layer.kind().class_name();
                (k, s.fused.relu, s.fused.max_pool2, s.input, s.output)
            })
            .collect()
    }

    /// The article's 18 layers run as 10 steps: each ReLU inside its
    /// convolution or dense layer, the 2×2 poolings inside the Winograd
    /// convolutions (32 and 64 channels in), the softmax left to the loss.
    #[test]
    fn the_article_plan_fuses_relus_and_poolings() {
        let model = Sequential::article(&[3, 32, 32], 10, 0, &Device::Cpu).unwrap();
        use Shape::{Flat, Image};
        let expected = [
            ("Conv2D", true, false, Image(3, 32, 32), Image(32, 32, 32)),
            ("Conv2D", true, true, Image(32, 32, 32), Image(32, 15, 15)),
            (
                "Dropout",
                false,
                false,
                Image(32, 15, 15),
                Image(32, 15, 15),
            ),
            ("Conv2D", true, false, Image(32, 15, 15), Image(64, 15, 15)),
            ("Conv2D", true, true, Image(64, 15, 15), Image(64, 6, 6)),
            ("Dropout", false, false, Image(64, 6, 6), Image(64, 6, 6)),
            ("Flatten", false, false, Image(64, 6, 6), Flat(2304)),
            ("Dense", true, false, Flat(2304), Flat(512)),
            ("Dropout", false, false, Flat(512), Flat(512)),
            ("Dense", false, false, Flat(512), Flat(10)),
        ];
        assert_eq!(steps(&model), expected);
        assert!(model.plan.softmax);
        let names: Vec<&str> = model.plan.steps[1]
            .params
            .iter()
            .map(|&i| model.params.at(i).name.as_str())
            .collect();
        assert_eq!(names, ["conv2d_1.kernel", "conv2d_1.bias"]);
    }

    /// The article's model with a BatchNormalization after each
    /// convolution (`bench --batch-norm`): each ReLU, and each pooling
    /// after it, goes into the BatchNormalization before it.
    #[test]
    fn batch_normalization_takes_the_relu_after_it() {
        let mut model = Sequential::on(&[3, 32, 32], 0, &Device::Cpu).unwrap();
        for layer in crate::layers::article_layers(10) {
            let conv = matches!(layer, Layer::Conv2D(_));
            model.add(layer).unwrap();
            if conv {
                model.add(crate::layers::batch_normalization()).unwrap();
            }
        }
        let kinds: Vec<_> = steps(&model).iter().map(|s| (s.0, s.1, s.2)).collect();
        let mut expected = Vec::new();
        for _ in 0..2 {
            expected.extend([
                ("Conv2D", false, false),
                ("BatchNormalization", true, false),
                ("Conv2D", false, false),
                ("BatchNormalization", true, true),
                ("Dropout", false, false),
            ]);
        }
        expected.extend([
            ("Flatten", false, false),
            ("Dense", true, false),
            ("Dropout", false, false),
            ("Dense", false, false),
        ]);
        assert_eq!(kinds, expected);
        // each convolution sums its output planes for the normalization
        for step in &model.plan.steps {
            let conv = matches!(step.layer, Layer::Conv2D(_));
            assert_eq!(step.fused.moments, conv, "{}", step.kind().class_name());
        }
    }

    /// A convolution takes its output's sums only for a BatchNormalization
    /// of exactly that output: not with an activation step or a pooling
    /// between, and not for anything else.
    #[test]
    fn convolutions_sum_their_planes_for_a_batch_normalization_of_their_output() {
        let bn = || crate::layers::batch_normalization().into();
        let conv = |activation| -> Layer {
            let mut c = crate::layers::conv2d(16, 3);
            c.activation = activation;
            c.into()
        };
        let cases: [(Vec<Layer>, bool); 5] = [
            (vec![conv(Activation::Linear), bn()], true),
            (vec![conv(Activation::Relu), bn()], true),
            (vec![conv(Activation::Tanh), bn()], false),
            (
                vec![
                    conv(Activation::Relu),
                    crate::layers::max_pooling2d(2).into(),
                    bn(),
                ],
                false,
            ),
            (
                vec![conv(Activation::Linear), crate::layers::dropout(0.5), bn()],
                false,
            ),
        ];
        for (layers, sums) in cases {
            let mut model = Sequential::on(&[16, 10, 10], 0, &Device::Cpu).unwrap();
            let what = format!("{layers:?}");
            for l in layers {
                model.add(l).unwrap();
            }
            assert_eq!(model.plan.steps[0].fused.moments, sums, "{what}");
            assert!(
                model.plan.steps[1..].iter().all(|s| !s.fused.moments),
                "{what}"
            );
        }
    }

    /// An inline softmax inside the model is a step of its own; one at the
    /// end is left to the loss; a pooling the kernel cannot take (too few
    /// channels) stays a step of its own.
    #[test]
    fn unfused_activations_and_poolings_are_steps_of_their_own() {
        let mut model = Sequential::on(&[3, 8, 8], 0, &Device::Cpu).unwrap();
        let inline_softmax = Dense {
            units: 4,
            activation: Activation::Softmax,
            use_bias: true,
        };
        for l in [
            crate::layers::conv2d(4, 3).into(),
            relu(),
            crate::layers::max_pooling2d(2).into(),
            crate::layers::flatten(),
            inline_softmax.clone().into(),
            dense(3).into(),
            softmax(),
        ] {
            model.add(l).unwrap();
        }
        let kinds: Vec<_> = steps(&model).iter().map(|s| (s.0, s.1, s.2)).collect();
        assert_eq!(
            kinds,
            [
                ("Conv2D", true, false),
                ("MaxPooling2D", false, false),
                ("Flatten", false, false),
                ("Dense", false, false),
                ("Activation", false, false),
                ("Dense", false, false),
            ]
        );
        assert!(model.plan.softmax);
        model.add(inline_softmax).unwrap();
        assert!(
            model.plan.softmax,
            "an inline softmax at the end is the loss's"
        );
        assert_eq!(model.plan.steps.len(), 8);
    }
}
