//! Keras's optimizer updates (SGD, RMSprop, Adam/AdamW) with their gradient
//! clipping and decoupled weight decay, for one variable: on the CPU for f32
//! in place, in one pass over the weights, the gradient and the slots
//! (instead of a dozen tensor ops that each allocate a result); elsewhere as
//! candle ops (the portable path, also the reference of the tests).

use candle_core::{bail, CpuStorage, DType, InplaceOp1, InplaceOp2, Layout, Result, Tensor, Var};
use rayon::prelude::*;
use std::cell::RefCell;

/// Values a rayon task takes at least.
const MIN_LEN: usize = 1 << 14;

/// One optimizer's rule, with its coefficients for this step. Its slots
/// come in the order of the optimizer's `slots()`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// Slots: `[momentum]` when `momentum > 0`, else none.
    /// `m = momentum·m - lr·g`; `w += m` (nesterov: `w += momentum·m - lr·g`),
    /// or without momentum `w -= lr·g`.
    Sgd {
        lr: f64,
        momentum: f64,
        nesterov: bool,
    },
    /// Slots: `[velocity]`, then `momentum` when `momentum > 0`, then
    /// `average_gradient` when centered.
    /// `v = rho·v + (1-rho)·g²`, (centered: `a = rho·a + (1-rho)·g`),
    /// `inc = lr·g / sqrt(v (- a²) + eps)`; `w -= inc`, or with momentum
    /// `mo = momentum·mo + inc; w -= mo`.
    RmsProp {
        lr: f64,
        rho: f64,
        momentum: f64,
        epsilon: f64,
        centered: bool,
    },
    /// Slots: `[m, v]`. `m += (g - m)·(1-b1)`, `v += (g² - v)·(1-b2)`,
    /// `w -= m·alpha / (sqrt(v) + eps)`, where `alpha` is the learning rate
    /// with both bias corrections of update `t` (from 1).
    Adam {
        lr: f64,
        t: u64,
        beta_1: f64,
        beta_2: f64,
        epsilon: f64,
    },
}

/// Adam's `alpha = lr · sqrt(1 - b2^t) / (1 - b1^t)`, computed as Keras
/// does, in the variable's dtype: in f32, `1 - b2^t` loses digits (up to
/// 1e-5 of alpha), and Keras's f32 updates have those rounding errors.
fn adam_alpha(lr: f64, t: u64, beta_1: f64, beta_2: f64, dtype: DType) -> f64 {
    let t = t.min(i32::MAX as u64) as i32;
    match dtype {
        DType::F64 => lr * (1.0 - beta_2.powi(t)).sqrt() / (1.0 - beta_1.powi(t)),
        _ => {
            let (lr, b1, b2, t) = (lr as f32, beta_1 as f32, beta_2 as f32, t as f32);
            (lr * (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t))) as f64
        }
    }
}

impl Rule {
    /// How many slots the rule reads and writes.
    pub fn slot_count(&self) -> usize {
        match *self {
            Rule::Sgd { momentum, .. } => (momentum > 0.0) as usize,
            Rule::RmsProp {
                momentum, centered, ..
            } => 1 + (momentum > 0.0) as usize + centered as usize,
            Rule::Adam { .. } => 2,
        }
    }
}

/// One variable's update: the rule, and what Keras does to the gradient and
/// the weights before it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    pub rule: Rule,
    /// The gradient's factor from norm clipping (`clipnorm` or
    /// `global_clipnorm`); 1 when there is none.
    pub scale: f64,
    /// Clips the (scaled) gradient elementwise to `[-c, c]`.
    pub clipvalue: Option<f64>,
    /// `weight_decay · lr`: Keras's decoupled decay `w -= w·wd·lr`, applied
    /// before the rule; 0 when there is none.
    pub decay: f64,
}

/// Whether [`update_in_place`] runs for this variable and its slots (f32 on
/// the CPU, all contiguous).
pub fn runs_in_place(w: &Tensor, slots: &[Tensor]) -> bool {
    std::iter::once(w)
        .chain(slots)
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// Updates `w` and its slots from the gradient `g`: in place when
/// [`runs_in_place`], else with candle ops (the slots are replaced).
pub fn update(step: &Step, w: &Var, g: &Tensor, slots: &mut [Tensor]) -> Result<()> {
    match runs_in_place(w.as_tensor(), slots) {
        true => update_in_place(step, w.as_tensor(), g, slots),
        false => update_portable(step, w, g, slots),
    }
}

/// The sum of the gradient's squares (for norm clipping), in f64.
pub fn sum_of_squares(g: &Tensor) -> Result<f64> {
    if !(g.device().is_cpu() && g.dtype() == DType::F32) {
        return g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>();
    }
    let g = g.contiguous()?;
    let (storage, layout) = g.storage_and_layout();
    let g = match &*storage {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => slice(v, layout, "sum-of-squares")?,
        _ => bail!("sum-of-squares: expected f32 data"),
    };
    // Fixed chunks summed in order: the same result for any thread count.
    let partial: Vec<f64> = g
        .par_chunks(MIN_LEN)
        .map(|c| c.iter().map(|&x| x as f64 * x as f64).sum::<f64>())
        .collect();
    Ok(partial.iter().sum())
}

/// The portable path: Keras's ops, in the variable's dtype and on its device.
pub fn update_portable(step: &Step, w: &Var, g: &Tensor, slots: &mut [Tensor]) -> Result<()> {
    check_slots(step, slots.len())?;
    let mut g = g.clone();
    if step.scale != 1.0 {
        g = (g * step.scale)?;
    }
    if let Some(c) = step.clipvalue {
        g = g.clamp(-c, c)?;
    }
    let mut wt = w.as_tensor().clone();
    if step.decay != 0.0 {
        wt = (&wt - (&wt * step.decay)?)?;
    }
    let wt = match step.rule {
        Rule::Sgd {
            lr,
            momentum,
            nesterov,
        } => match slots.first_mut() {
            None => (wt - (g * lr)?)?,
            Some(m) => {
                *m = ((&*m * momentum)? - (&g * lr)?)?;
                match nesterov {
                    true => (wt + ((&*m * momentum)? - (g * lr)?)?)?,
                    false => (wt + &*m)?,
                }
            }
        },
        Rule::RmsProp {
            lr,
            rho,
            momentum,
            epsilon,
            centered,
        } => {
            let (v, rest) = slots.split_first_mut().expect("slots checked");
            *v = ((&*v * rho)? + (g.sqr()? * (1.0 - rho))?)?;
            let (mo, rest) = match momentum > 0.0 {
                true => {
                    let (mo, rest) = rest.split_first_mut().expect("slots checked");
                    (Some(mo), rest)
                }
                false => (None, rest),
            };
            let denominator = match centered {
                true => {
                    let a = &mut rest[0];
                    *a = ((&*a * rho)? + (&g * (1.0 - rho))?)?;
                    ((&*v - a.sqr()?)? + epsilon)?
                }
                false => (&*v + epsilon)?,
            };
            let increment = ((g * lr)? / denominator.sqrt()?)?;
            match mo {
                Some(mo) => {
                    *mo = ((&*mo * momentum)? + increment)?;
                    (wt - &*mo)?
                }
                None => (wt - increment)?,
            }
        }
        Rule::Adam {
            lr,
            t,
            beta_1,
            beta_2,
            epsilon,
        } => {
            let alpha = adam_alpha(lr, t, beta_1, beta_2, w.dtype());
            let [m, v] = slots else {
                bail!("Adam has two slots")
            };
            *m = (&*m + ((&g - &*m)? * (1.0 - beta_1))?)?;
            *v = (&*v + ((g.sqr()? - &*v)? * (1.0 - beta_2))?)?;
            (wt - ((&*m * alpha)? / (v.sqrt()? + epsilon)?)?)?
        }
    };
    w.set(&wt)
}

/// The CPU path: `w`, `g` and the slots as f32 buffers, one pass.
pub fn update_in_place(step: &Step, w: &Tensor, g: &Tensor, slots: &[Tensor]) -> Result<()> {
    check_slots(step, slots.len())?;
    let g = g.contiguous()?;
    let step = *step;
    // `w` in place with `g` beside it, then each slot in place inside: the
    // one pass sees all the buffers at once.
    w.inplace_op2(
        &g,
        &Buffers(RefCell::new(Some(move |w: &mut [f32], g: &[f32]| {
            with_slots(slots, |s| {
                let n = w.len();
                if g.len() != n || s.iter().take(slots.len()).any(|s| s.len() != n) {
                    bail!(
                        "optimizer update: {n} weights, {} gradients, slots of other sizes",
                        g.len()
                    );
                }
                split_run(Chunk { w, g, s }, &|c| chunk(&step, c));
                Ok(())
            })
        }))),
    )
}

fn check_slots(step: &Step, n: usize) -> Result<()> {
    if n != step.rule.slot_count() {
        bail!(
            "optimizer update: {:?} needs {} slots, got {n}",
            step.rule,
            step.rule.slot_count()
        );
    }
    Ok(())
}

fn slice<'a>(v: &'a [f32], l: &Layout, name: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{name}: expected contiguous data"),
    }
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, name: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => bail!("{name}: expected contiguous f32 data"),
    }
}

/// An in-place op that hands the buffers to a closure, once (candle's ops
/// take `&self`, hence the cell).
struct Buffers<F>(RefCell<Option<F>>);

impl<F: FnOnce(&mut [f32], &[f32]) -> Result<()>> InplaceOp2 for Buffers<F> {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let f = self.0.borrow_mut().take().expect("called once");
        let g = match s2 {
            CpuStorage::F32(v) => slice(v, l2, "gradient")?,
            _ => bail!("optimizer update: the gradient is not f32"),
        };
        f(slice_mut(s1, l1, "weights")?, g)
    }
}

/// One slot's buffer handed to a closure.
struct Slot<F>(RefCell<Option<F>>);

impl<F: FnOnce(&mut [f32]) -> Result<()>> InplaceOp1 for Slot<F> {
    fn name(&self) -> &'static str {
        "optimizer-slot"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let f = self.0.borrow_mut().take().expect("called once");
        f(slice_mut(s, l, "optimizer slot")?)
    }
}

fn with_slot(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    t.inplace_op1(&Slot(RefCell::new(Some(f))))
}

/// Runs `f` with the slots' buffers (at most three; unused ones empty).
fn with_slots(slots: &[Tensor], f: impl FnOnce([&mut [f32]; 3]) -> Result<()>) -> Result<()> {
    match slots {
        [] => f([&mut [], &mut [], &mut []]),
        [a] => with_slot(a, |a| f([a, &mut [], &mut []])),
        [a, b] => with_slot(a, |a| with_slot(b, |b| f([a, b, &mut []]))),
        [a, b, c] => with_slot(a, |a| with_slot(b, |b| with_slot(c, |c| f([a, b, c])))),
        _ => bail!("optimizer update: at most three slots, got {}", slots.len()),
    }
}

/// Parts of the buffers at the same positions.
struct Chunk<'a> {
    w: &'a mut [f32],
    g: &'a [f32],
    s: [&'a mut [f32]; 3],
}

impl<'a> Chunk<'a> {
    fn split(self, mid: usize) -> (Chunk<'a>, Chunk<'a>) {
        let (w1, w2) = self.w.split_at_mut(mid);
        let (g1, g2) = self.g.split_at(mid);
        let [a, b, c] = self.s.map(|s| match s.is_empty() {
            true => (<&mut [f32]>::default(), <&mut [f32]>::default()),
            false => s.split_at_mut(mid),
        });
        (
            Chunk {
                w: w1,
                g: g1,
                s: [a.0, b.0, c.0],
            },
            Chunk {
                w: w2,
                g: g2,
                s: [a.1, b.1, c.1],
            },
        )
    }
}

/// Halves the buffers across rayon tasks down to [`MIN_LEN`] values.
fn split_run(c: Chunk, f: &(impl Fn(Chunk) + Sync)) {
    if c.w.len() <= MIN_LEN {
        return f(c);
    }
    let mid = c.w.len() / 2;
    let (a, b) = c.split(mid);
    rayon::join(|| split_run(a, f), || split_run(b, f));
}

/// The update of one chunk, elementwise, in f32, in Keras's order of ops.
fn chunk(step: &Step, c: Chunk) {
    let Chunk {
        w,
        g,
        s: [s0, s1, s2],
    } = c;
    let scale = step.scale as f32;
    let clip = step.clipvalue.map_or(f32::INFINITY, |c| c as f32);
    let decay = step.decay as f32;
    // [`f32::clamp`] keeps a NaN, as Keras's clip does.
    let grad = |g: f32| {
        match scale == 1.0 {
            true => g,
            false => g * scale,
        }
        .clamp(-clip, clip)
    };
    let decayed = |w: f32| match decay == 0.0 {
        true => w,
        false => w - w * decay,
    };
    match step.rule {
        Rule::Sgd {
            lr,
            momentum,
            nesterov,
        } => {
            let (lr, mom) = (lr as f32, momentum as f32);
            if momentum == 0.0 {
                for (w, &g) in w.iter_mut().zip(g) {
                    *w = decayed(*w) - grad(g) * lr;
                }
                return;
            }
            for ((w, &g), m) in w.iter_mut().zip(g).zip(s0.iter_mut()) {
                let g = grad(g);
                *m = *m * mom - g * lr;
                let d = match nesterov {
                    true => *m * mom - g * lr,
                    false => *m,
                };
                *w = decayed(*w) + d;
            }
        }
        Rule::RmsProp {
            lr,
            rho,
            momentum,
            epsilon,
            centered,
        } => {
            // Keras's `1 - rho` is a Python float, then cast.
            let rest = (1.0 - rho) as f32;
            let (lr, rho, mom, eps) = (lr as f32, rho as f32, momentum as f32, epsilon as f32);
            // The optional slots after velocity, in order.
            let (mo, avg) = match momentum > 0.0 {
                true => (s1, s2),
                false => (<&mut [f32]>::default(), s1),
            };
            for (i, (w, &g)) in w.iter_mut().zip(g).enumerate() {
                let g = grad(g);
                let v = &mut s0[i];
                *v = rho * *v + rest * (g * g);
                let denominator = match centered {
                    true => {
                        let a = &mut avg[i];
                        *a = rho * *a + rest * g;
                        *v - *a * *a + eps
                    }
                    false => *v + eps,
                };
                let increment = lr * g / denominator.sqrt();
                let d = match momentum > 0.0 {
                    true => {
                        mo[i] = mom * mo[i] + increment;
                        mo[i]
                    }
                    false => increment,
                };
                *w = decayed(*w) - d;
            }
        }
        Rule::Adam {
            lr,
            t,
            beta_1,
            beta_2,
            epsilon,
        } => {
            let alpha = adam_alpha(lr, t, beta_1, beta_2, DType::F32) as f32;
            let eps = epsilon as f32;
            let (r1, r2) = ((1.0 - beta_1) as f32, (1.0 - beta_2) as f32);
            for (((w, &g), m), v) in w.iter_mut().zip(g).zip(s0.iter_mut()).zip(s1.iter_mut()) {
                let g = grad(g);
                *m += (g - *m) * r1;
                *v += (g * g - *v) * r2;
                *w = decayed(*w) - *m * alpha / (v.sqrt() + eps);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rules() -> Vec<Rule> {
        let sgd = |momentum, nesterov| Rule::Sgd {
            lr: 0.05,
            momentum,
            nesterov,
        };
        let rms = |momentum, centered| Rule::RmsProp {
            lr: 0.01,
            rho: 0.9,
            momentum,
            epsilon: 1e-7,
            centered,
        };
        vec![
            sgd(0.0, false),
            sgd(0.9, false),
            sgd(0.9, true),
            rms(0.0, false),
            rms(0.5, false),
            rms(0.0, true),
            rms(0.5, true),
            Rule::Adam {
                lr: 1e-2,
                t: 3,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
        ]
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Every rule, with and without clipping and decay, three steps in place
    /// against the portable path on the same f32 values, on a variable large
    /// enough to be split across tasks (odd size) and a non-contiguous
    /// gradient.
    #[test]
    fn in_place_matches_the_portable_path() {
        let dev = Device::Cpu;
        let shape = (67, 301);
        let w0 = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        for rule in rules() {
            for (scale, clipvalue, decay) in [(1.0, None, 0.0), (0.7, Some(0.5), 4e-3)] {
                let step = Step {
                    rule,
                    scale,
                    clipvalue,
                    decay,
                };
                let n = rule.slot_count();
                let w = w0.copy().unwrap();
                let slots: Vec<Tensor> = (0..n).map(|_| w0.zeros_like().unwrap()).collect();
                let wr = Var::from_tensor(&w0).unwrap();
                let mut sr: Vec<Tensor> = (0..n).map(|_| w0.zeros_like().unwrap()).collect();
                for _ in 0..3 {
                    let g = Tensor::randn(0f32, 1.0, (301, 67), &dev)
                        .unwrap()
                        .t()
                        .unwrap();
                    update_in_place(&step, &w, &g, &slots).unwrap();
                    update_portable(&step, &wr, &g, &mut sr).unwrap();
                }
                let d = max_diff(&w, wr.as_tensor());
                assert!(d < 1e-5, "{step:?}: weights differ by {d}");
                for (a, b) in slots.iter().zip(&sr) {
                    let d = max_diff(a, b);
                    assert!(d < 1e-5, "{step:?}: a slot differs by {d}");
                }
                assert!(max_diff(&w, &w0) > 1e-3, "{step:?}: w moved");
            }
        }
    }

    /// The sum of squares reads a non-contiguous gradient right.
    #[test]
    fn sum_of_squares_is_the_sum_of_squares() {
        let g = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap()
            .t()
            .unwrap();
        assert_eq!(sum_of_squares(&g).unwrap(), 55.0);
        assert_eq!(
            sum_of_squares(&g.to_dtype(DType::F64).unwrap()).unwrap(),
            55.0
        );
    }
}
