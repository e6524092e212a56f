//! The model's parameters: one ordered collection of named variables
//! (`conv2d.kernel`, `dense_1.bias`, ...), trainable or not, as candle's
//! `VarMap` keeps them. Everything that reads or writes weights (the plan,
//! the optimizer, saving, backups) finds them here by name.

use crate::layers::{Init, ParamSpec};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Layout, Storage, Tensor, Var};
use rand::distr::{Distribution, Uniform};
use rand::rngs::StdRng;
use rayon::prelude::*;

/// One parameter: its full name, variable and whether it is trained.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub trainable: bool,
}

/// The parameters of a model, in layer order.
#[derive(Clone, Debug, Default)]
pub struct Params {
    list: Vec<Param>,
}

impl Params {
    /// Makes the parameters of the layer `layer` (its unique name) from its
    /// specs, drawing initial values from `rng` in order.
    pub(crate) fn create(
        layer: &str,
        specs: &[ParamSpec],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Vec<Param>> {
        specs
            .iter()
            .map(|spec| {
                Ok(Param {
                    name: format!("{layer}.{}", spec.name),
                    var: initial(spec, rng, device)?,
                    trainable: spec.trainable,
                })
            })
            .collect()
    }

    pub(crate) fn extend(&mut self, params: Vec<Param>) {
        self.list.extend(params);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The position of the parameter `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|p| p.name == name)
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.list.iter().find(|p| p.name == name)
    }

    pub(crate) fn at(&self, i: usize) -> &Param {
        &self.list[i]
    }

    /// Replaces every variable by `f` of it (a dtype change, a fresh id).
    pub(crate) fn map_vars(&mut self, f: impl Fn(&Var) -> Result<Var>) -> Result<()> {
        for p in &mut self.list {
            p.var = f(&p.var)?;
        }
        Ok(())
    }

    /// Number of values, of all parameters or only of the trainable ones.
    pub fn count(&self, trainable_only: bool) -> usize {
        self.list
            .iter()
            .filter(|p| p.trainable || !trainable_only)
            .map(|p| p.var.elem_count())
            .sum()
    }

    /// Copies of every value, to put back with [`Params::restore`].
    pub(crate) fn snapshot(&self) -> Result<Vec<Tensor>> {
        self.list
            .iter()
            .map(|p| Ok(p.var.as_tensor().copy()?))
            .collect()
    }

    pub(crate) fn restore(&self, values: &[Tensor]) -> Result<()> {
        for (p, v) in self.list.iter().zip(values) {
            p.var.set(v)?;
        }
        Ok(())
    }

    /// The first parameter holding NaN or infinite values, with how many.
    pub(crate) fn first_non_finite(&self) -> Result<Option<(&str, usize)>> {
        for p in &self.list {
            let (count, _) = non_finite(p.var.as_tensor())?;
            if count > 0 {
                return Ok(Some((&p.name, count)));
            }
        }
        Ok(None)
    }

    /// Runs `f` on every parameter's f32 data on the CPU, borrowed for the
    /// call (indexed as the parameters).
    pub(crate) fn with_cpu_data<R>(&self, f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
        let tensors: Vec<Tensor> = self
            .list
            .iter()
            .map(|p| p.var.as_tensor().clone())
            .collect();
        let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
        let data = guards
            .iter()
            .zip(&self.list)
            .map(|((s, l), p)| f32_data(s, l).with_context(|| p.name.clone()))
            .collect::<Result<Vec<_>>>()?;
        f(&data)
    }
}

/// How many values of `t` are NaN or infinite, and the flat index of the
/// first (known on the CPU for f32; elsewhere counted with tensor ops).
pub(crate) fn non_finite(t: &Tensor) -> Result<(usize, Option<usize>)> {
    if t.device().is_cpu() && t.dtype() == DType::F32 {
        let t = t.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        let data = f32_data(&storage, layout)?;
        // In parallel: the training step checks every gradient and weight.
        let count = data
            .par_chunks(1 << 16)
            .map(|c| c.iter().filter(|v| !v.is_finite()).count())
            .sum();
        let first = match count {
            0 => None,
            _ => data.iter().position(|v| !v.is_finite()),
        };
        return Ok((count, first));
    }
    // x - x is 0 for every finite x, NaN otherwise.
    let bad = t.sub(t)?.ne(0.0)?.to_dtype(DType::U32)?.sum_all()?;
    Ok((bad.to_scalar::<u32>()? as usize, None))
}

/// A tensor's data, which must be contiguous f32 on the CPU.
pub(crate) fn f32_data<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("expected contiguous f32 data on the CPU"),
    }
}

/// A parameter's starting values, as its spec says.
fn initial(spec: &ParamSpec, rng: &mut StdRng, device: &Device) -> Result<Var> {
    let shape = spec.shape.as_slice();
    Ok(match spec.init {
        Init::GlorotUniform { fan_in, fan_out } => {
            glorot_uniform(shape, fan_in, fan_out, rng, device)?
        }
        Init::Zeros => Var::zeros(shape, DType::F32, device)?,
        Init::Ones => Var::ones(shape, DType::F32, device)?,
    })
}

/// Glorot (Xavier) uniform: U(-l, l) with l = sqrt(6 / (fan_in + fan_out)),
/// Keras's default kernel initializer.
fn glorot_uniform(
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Var> {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
    let uniform = Uniform::new_inclusive(-limit, limit)?;
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| uniform.sample(rng))
        .collect();
    Ok(Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?)
}
