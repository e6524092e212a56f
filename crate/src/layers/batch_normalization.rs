//! Keras's `BatchNormalization` over the channels (axis 1 of our `[N, C, H,
//! W]`, Keras's `axis=-1` of its `[N, H, W, C]`), or over the features of a
//! flat input. While training it normalizes with the batch's statistics and
//! moves the moving mean and variance towards them; at inference it uses the
//! moving ones:
//!
//! `y = gamma * (x - mean) / sqrt(var + epsilon) + beta`,
//! `moving = moving * momentum + batch * (1 - momentum)`.
//!
//! As in Keras the variance is the biased one (divided by the count), in the
//! normalization and in the moving variance alike. A ReLU after it, and a
//! 2×2 max-pooling after that, are fused into its pass over the output:
//! the full-size normalized image is then never written.

use super::{CpuGrad, CpuOut, Fused, Init, LayerKind, ParamSpec, Run, Shape, StepShape};
use crate::kernels::moments::{self, PlaneSums};
use crate::kernels::simd::{multiversion, Float};
use anyhow::{ensure, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::mem::MaybeUninit;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNormalization {
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// a learned offset `beta`
    #[serde(default = "yes")]
    pub center: bool,
    /// a learned scale `gamma`
    #[serde(default = "yes")]
    pub scale: bool,
}

fn default_momentum() -> f64 {
    0.99
}
fn default_epsilon() -> f64 {
    1e-3
}
fn yes() -> bool {
    true
}

impl Default for BatchNormalization {
    fn default() -> Self {
        BatchNormalization {
            momentum: default_momentum(),
            epsilon: default_epsilon(),
            center: true,
            scale: true,
        }
    }
}

/// `BatchNormalization()`, Keras's defaults (momentum 0.99, epsilon 1e-3,
/// center and scale).
pub fn batch_normalization() -> BatchNormalization {
    BatchNormalization::default()
}

impl BatchNormalization {
    pub fn momentum(self, momentum: f64) -> Self {
        BatchNormalization { momentum, ..self }
    }
    pub fn epsilon(self, epsilon: f64) -> Self {
        BatchNormalization { epsilon, ..self }
    }
    pub fn center(self, center: bool) -> Self {
        BatchNormalization { center, ..self }
    }
    pub fn scale(self, scale: bool) -> Self {
        BatchNormalization { scale, ..self }
    }

    /// Where each parameter is in the layer's list (gamma and beta only
    /// when scale and center ask for them, as in Keras).
    fn slots(&self) -> Slots {
        let gamma = self.scale.then_some(0);
        let beta = self.center.then_some(self.scale as usize);
        let moving = self.scale as usize + self.center as usize;
        Slots {
            gamma,
            beta,
            mean: moving,
            var: moving + 1,
        }
    }
}

struct Slots {
    gamma: Option<usize>,
    beta: Option<usize>,
    mean: usize,
    var: usize,
}

/// Channels, and values per channel in one sample (`H·W`, or 1 when flat).
fn layout(input: Shape) -> (usize, usize) {
    match input {
        Shape::Image(c, h, w) => (c, h * w),
        Shape::Flat(f) => (f, 1),
    }
}

/// What the backward needs: each channel's batch mean and `1 / sqrt(var +
/// eps)`, and with a fused pooling where each window's maximum was.
struct Stats {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// row-major position (0..4) of each 2×2 window's first maximum
    argmax: Vec<u8>,
    /// the forward's `y = x·a + b` per channel: the backward finds the
    /// fused ReLU's mask from `x` with the same rounding, instead of
    /// reading `y` (and writing the masked `dy` back) in a pass of its own
    a: Vec<f32>,
    b: Vec<f32>,
}

impl LayerKind for BatchNormalization {
    fn class_name(&self) -> &'static str {
        "BatchNormalization"
    }
    fn base_name(&self) -> &'static str {
        "batch_normalization"
    }
    fn output_shape(&self, input: Shape) -> Result<Shape> {
        let m = self.momentum;
        ensure!(
            (0.0..=1.0).contains(&m),
            "BatchNormalization's momentum must be in [0, 1], got {m} (Keras's default is 0.99)"
        );
        let e = self.epsilon;
        ensure!(
            e.is_finite() && e > 0.0,
            "BatchNormalization's epsilon must be a small positive number, got {e} (Keras's default is 0.001)"
        );
        Ok(input)
    }
    /// Keras's order: gamma, beta, moving_mean, moving_variance, each `[C]`.
    fn params(&self, input: Shape) -> Vec<ParamSpec> {
        let c = layout(input).0;
        let spec = |name, init, trainable| ParamSpec {
            name,
            shape: vec![c],
            init,
            trainable,
        };
        let mut p = Vec::with_capacity(4);
        if self.scale {
            p.push(spec("gamma", Init::Ones, true));
        }
        if self.center {
            p.push(spec("beta", Init::Zeros, true));
        }
        p.push(spec("moving_mean", Init::Zeros, false));
        p.push(spec("moving_variance", Init::Ones, false));
        p
    }
    fn fusable(&self, input: Shape) -> Fused {
        Fused {
            relu: true,
            max_pool2: matches!(input, Shape::Image(_, h, w) if h >= 2 && w >= 2),
            ..Fused::default()
        }
    }
    /// One sample's statistics over a flat layer's features are those of a
    /// single value: its variance is 0 and the output is `beta` whatever
    /// the input, with no gradient. Refused before training starts.
    fn check_training_batch(&self, input: Shape, n: usize) -> Result<()> {
        ensure!(
            n > 1 || matches!(input, Shape::Image(_, h, w) if h * w > 1),
            "BatchNormalization on a flat input {input} would normalize a batch of 1 sample over itself (its output would be beta whatever the input): train with batches of at least 2 (and a sample count that leaves no last batch of 1)"
        );
        Ok(())
    }

    fn forward(&self, x: &Tensor, p: &[Tensor], s: &StepShape, run: &mut Run) -> Result<Tensor> {
        let slots = self.slots();
        let (c, _) = layout(s.input);
        let image = matches!(s.input, Shape::Image(..));
        // Per-channel values broadcast over the batch (and the image).
        let shape: Vec<usize> = if image { vec![1, c, 1, 1] } else { vec![1, c] };
        let per_channel = |t: &Tensor| t.reshape(shape.as_slice());
        let (mean, var) = if run.training {
            let dims: &[usize] = if image { &[0, 2, 3] } else { &[0] };
            let mean = x.mean_keepdim(dims)?;
            let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(dims)?;
            let m = self.momentum;
            for (slot, batch) in [(slots.mean, &mean), (slots.var, &var)] {
                let moving = ((&p[slot] * m)? + (batch.flatten_all()?.detach() * (1.0 - m))?)?;
                run.update(slot, moving);
            }
            (mean, var)
        } else {
            (per_channel(&p[slots.mean])?, per_channel(&p[slots.var])?)
        };
        let mut y = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + self.epsilon)?.sqrt()?)?;
        if let Some(g) = slots.gamma {
            y = y.broadcast_mul(&per_channel(&p[g])?)?;
        }
        if let Some(b) = slots.beta {
            y = y.broadcast_add(&per_channel(&p[b])?)?;
        }
        if s.fused.relu {
            y = y.relu()?;
        }
        if s.fused.max_pool2 {
            let pool = super::max_pooling2d(2);
            let shape = StepShape {
                output: s.output,
                fused: Fused::default(),
                ..*s
            };
            y = pool.forward(&y, &[], &shape, run)?;
        }
        Ok(y)
    }

    fn cpu_forward(&self, x: &[f32], p: &[&[f32]], s: &StepShape, run: &mut Run) -> Result<CpuOut> {
        let slots = self.slots();
        let (c, hw) = layout(s.input);
        let (mean, inv_std) = if run.training {
            // each plane's sums: taken by the step before as it wrote them,
            // else here in a pass of their own
            let planes = match run.input_moments.take() {
                Some(planes) => {
                    ensure!(
                        planes.len() * hw == x.len(),
                        "BatchNormalization: the step before summed {} planes, the input has {}",
                        planes.len(),
                        x.len() / hw
                    );
                    planes
                }
                None => plane_sums_of(x, c * hw, hw),
            };
            let (mean, var) = moments::channel_moments(&planes, c, hw);
            let m = self.momentum;
            for (slot, batch) in [(slots.mean, &mean), (slots.var, &var)] {
                let moving: Vec<f32> = p[slot]
                    .iter()
                    .zip(batch)
                    .map(|(&old, &b)| (old as f64 * m + b * (1.0 - m)) as f32)
                    .collect();
                run.update(slot, Tensor::new(moving, &candle_core::Device::Cpu)?);
            }
            let inv: Vec<f32> = var
                .iter()
                .map(|&v| (1.0 / (v + self.epsilon).sqrt()) as f32)
                .collect();
            (mean.iter().map(|&m| m as f32).collect(), inv)
        } else {
            let inv = p[slots.var]
                .iter()
                .map(|&v| (1.0 / (v as f64 + self.epsilon).sqrt()) as f32)
                .collect();
            (p[slots.mean].to_vec(), inv)
        };
        // y = x·a + b per channel, a = gamma/σ, b = beta − mean·a
        let a: Vec<f32> = (0..c)
            .map(|k| slots.gamma.map_or(1.0, |g| p[g][k]) * inv_std[k])
            .collect();
        let b: Vec<f32> = (0..c)
            .map(|k| slots.beta.map_or(0.0, |i| p[i][k]) - mean[k] * a[k])
            .collect();
        let (y, argmax) = match s.input {
            Shape::Image(_, h, w) if s.fused.max_pool2 => pooled_forward(x, c, h, w, &a, &b),
            _ => {
                // (not zeroed first: a calloc of up to 16 MB a layer was
                // a memset, 1–2% of the step, of values overwritten below)
                let mut y = Vec::with_capacity(x.len());
                let relu = s.fused.relu;
                y.spare_capacity_mut()[..x.len()]
                    .par_chunks_exact_mut(c * hw)
                    .zip(x.par_chunks_exact(c * hw))
                    .for_each(|(ys, xs)| {
                        // one sample: [C, H·W]
                        for (k, (yc, xc)) in ys.chunks_exact_mut(hw).zip(xs.chunks_exact(hw)).enumerate() {
                            scale_shift(xc, yc, a[k], b[k], relu);
                        }
                    });
                // SAFETY: `x` is whole samples of `c` planes of `hw` (the
                // layout), so the loop above wrote every element.
                unsafe { y.set_len(x.len()) };
                (y, Vec::new())
            }
        };
        Ok(CpuOut {
            y: Some(y),
            kept: Some(Box::new(Stats {
                mean,
                inv_std,
                argmax,
                a,
                b,
            })),
            moments: None,
        })
    }

    /// With `x̂ = (x − mean)·inv_std` and `M` values per channel:
    /// `dgamma = Σ dy·x̂`, `dbeta = Σ dy`,
    /// `dx = gamma·inv_std·(dy − Σdy/M − x̂·Σ(dy·x̂)/M)`.
    fn cpu_backward(&self, g: CpuGrad) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let slots = self.slots();
        let stats: &Stats = super::kept(g.kept, "BatchNormalization")?;
        let (c, hw) = layout(g.step.input);
        let (mean, inv) = (&stats.mean, &stats.inv_std);
        let pooled = match g.step.input {
            Shape::Image(_, h, w) if g.step.fused.max_pool2 => Some((h, w)),
            _ => None,
        };
        // Each plane's [Σ dy, Σ dy·(x − mean)], through the fused ReLU (and
        // pooling), then added per channel in plane order: the same result
        // whatever the thread count.
        let mut dy = g.dy;
        // the fused ReLU as the forward applied it, from x (see Stats::a)
        let relu_of = |k: usize| g.step.fused.relu.then(|| [stats.a[k], stats.b[k]]);
        let partial: Vec<[f32; 2]> = match pooled {
            Some((h, w)) => pooled_grad_sums(&dy, g.y, &stats.argmax, g.x, h, w, |p| mean[p % c]),
            None => dy
                .par_chunks_exact(hw)
                .zip(g.x.par_chunks_exact(hw))
                .enumerate()
                .map(|(p, (d, u))| {
                    let mut sums = [0f32; 2];
                    grad_sums(d, u, mean[p % c], relu_of(p % c), &mut sums);
                    sums
                })
                .collect(),
        };
        let (mut sum_dy, mut sum_dy_xhat) = (vec![0f64; c], vec![0f64; c]);
        for (p, &[sd, sdx]) in partial.iter().enumerate() {
            sum_dy[p % c] += sd as f64;
            sum_dy_xhat[p % c] += sdx as f64 * inv[p % c] as f64;
        }
        let count = (g.step.n * hw) as f64;
        let dx = if g.wants_dx {
            // dx = scale·(dy − mean_dy − (x − mean)·inv·mean_dyx)
            //    = scale·dy − scale·offset − x·scale·slope
            let gamma = |k: usize| slots.gamma.map_or(1.0, |i| g.params[i][k]);
            let per_channel: Vec<[f32; 3]> = (0..c)
                .map(|k| {
                    let scale = gamma(k) * inv[k];
                    let slope = inv[k] * (sum_dy_xhat[k] / count) as f32;
                    [scale, (sum_dy[k] / count) as f32 - mean[k] * slope, slope]
                })
                .collect();
            match pooled {
                Some((h, w)) => pooled_dx(&dy, g.y, &stats.argmax, g.x, h, w, |p| per_channel[p % c]),
                None => {
                    dy.par_chunks_exact_mut(hw)
                        .zip(g.x.par_chunks_exact(hw))
                        .enumerate()
                        .for_each(|(p, (d, u))| {
                            let [scale, offset, slope] = per_channel[p % c];
                            grad_apply(d, u, scale, offset, slope, relu_of(p % c));
                        });
                    dy
                }
            }
        } else {
            Vec::new()
        };
        let mut grads = Vec::with_capacity(2);
        if slots.gamma.is_some() {
            grads.push(sum_dy_xhat.iter().map(|&v| v as f32).collect());
        }
        if slots.beta.is_some() {
            grads.push(sum_dy.iter().map(|&v| v as f32).collect());
        }
        Ok((dx, grads))
    }
}

/// Each window of a plane `w` wide, row by row (`wo = w/2` a row): its
/// index and where its first pixel lies in the plane. (Its maximum `k`,
/// row-major in the window, is then `k/2` rows and `k%2` columns past
/// that; see [`at_max`].) Without a division a window: with `i / wo` and
/// `i % wo` for each, [`pooled_grad_sums`] took 10–30% longer (an Ice
/// Lake Xeon, the BatchNormalization variant's second and fourth layers).
#[inline(always)]
fn windows(ho: usize, wo: usize, w: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..ho).flat_map(move |oh| (0..wo).map(move |ow| (oh * wo + ow, 2 * oh * w + 2 * ow)))
}

/// Where a window's maximum `k` lies, from its first pixel `at`.
#[inline(always)]
fn at_max(at: usize, k: u8, w: usize) -> usize {
    at + (k as usize >> 1) * w + (k as usize & 1)
}

/// [`grad_sums`] with the ReLU and 2×2 pooling fused: the normalized
/// image's gradient is the pooled one on each window's maximum where the
/// output `y` is positive, 0 elsewhere, so each plane's sums run over the
/// windows alone (`dy`, `y`: `[planes, h/2, w/2]`; `x`: `[planes, h, w]`).
fn pooled_grad_sums(
    dy: &[f32],
    y: &[f32],
    argmax: &[u8],
    x: &[f32],
    h: usize,
    w: usize,
    mean: impl Fn(usize) -> f32 + Sync,
) -> Vec<[f32; 2]> {
    let (ho, wo) = (h / 2, w / 2);
    dy.par_chunks_exact(ho * wo)
        .zip(y.par_chunks_exact(ho * wo))
        .zip(argmax.par_chunks_exact(ho * wo).zip(x.par_chunks_exact(h * w)))
        .enumerate()
        .with_min_len(16)
        .map(|(p, ((d, y), (a, x)))| {
            let m = mean(p);
            let (mut sd, mut sdx) = (0f32, 0f32);
            for (i, at) in windows(ho, wo, w) {
                let d = if y[i] > 0.0 { d[i] } else { 0.0 };
                sd += d;
                sdx += d * (x[at_max(at, a[i], w)] - m);
            }
            [sd, sdx]
        })
        .collect()
}

/// [`grad_apply`] with the ReLU and 2×2 pooling fused: the input's
/// gradient `[planes, h, w]`, `−scale·offset − x·scale·slope` everywhere
/// (vectorized), plus `scale·dy` on each window's maximum the ReLU passed.
fn pooled_dx(
    dy: &[f32],
    y: &[f32],
    argmax: &[u8],
    x: &[f32],
    h: usize,
    w: usize,
    coefficients: impl Fn(usize) -> [f32; 3] + Sync,
) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let mut dx = Vec::with_capacity(x.len());
    dx.spare_capacity_mut()[..x.len()]
        .par_chunks_exact_mut(h * w)
        .zip(x.par_chunks_exact(h * w))
        .zip(dy.par_chunks_exact(ho * wo).zip(y.par_chunks_exact(ho * wo)))
        .zip(argmax.par_chunks_exact(ho * wo))
        .enumerate()
        .with_min_len(16)
        .for_each(|(p, (((dx, x), (d, y)), a))| {
            let [scale, offset, slope] = coefficients(p);
            scale_shift(x, dx, -scale * slope, -scale * offset, false);
            // SAFETY: `scale_shift` wrote every element of the plane.
            let dx = unsafe { &mut *(dx as *mut [MaybeUninit<f32>] as *mut [f32]) };
            for (i, at) in windows(ho, wo, w) {
                if y[i] > 0.0 {
                    dx[at_max(at, a[i], w)] += scale * d[i];
                }
            }
        });
    // SAFETY: `x` is whole planes of `h·w`, each written above.
    unsafe { dx.set_len(x.len()) };
    dx
}

/// [`moments::plane_sums`] of every plane `[hw]` of a batch, a sample
/// (`sample` values) a task.
fn plane_sums_of(x: &[f32], sample: usize, hw: usize) -> Vec<PlaneSums> {
    let per_sample: Vec<Vec<PlaneSums>> = x
        .par_chunks_exact(sample)
        .map(|xs| xs.chunks_exact(hw).map(moments::plane_sums).collect())
        .collect();
    per_sample.concat()
}

/// Normalization (`x·a + b` per channel), ReLU and 2×2 max-pooling of a
/// batch `[N, C, h, w]` in one pass: the pooled output `[N, C, h/2, w/2]`
/// and where each window's first maximum was (rows and columns past the
/// last whole window are dropped, as the pooling drops them).
fn pooled_forward(x: &[f32], c: usize, h: usize, w: usize, a: &[f32], b: &[f32]) -> (Vec<f32>, Vec<u8>) {
    let (ho, wo) = (h / 2, w / 2);
    let planes = x.len() / (h * w);
    let len = planes * ho * wo;
    // (not zeroed first: the kernels write every window, and the zeroing
    // was a memset of the whole output, 0.4% of the variant's step)
    let (mut y, mut arg) = (Vec::with_capacity(len), Vec::with_capacity(len));
    y.spare_capacity_mut()[..len]
        .par_chunks_exact_mut(ho * wo)
        .zip(arg.spare_capacity_mut()[..len].par_chunks_exact_mut(ho * wo))
        .zip(x.par_chunks_exact(h * w))
        .enumerate()
        .with_min_len(16)
        .for_each(|(plane, ((yp, ap), xp))| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: this CPU has AVX2 and FMA.
                return unsafe { avx2_pool::pool_plane(xp, yp, ap, w, a[plane % c], b[plane % c]) };
            }
            pool_plane(xp, yp, ap, w, a[plane % c], b[plane % c]);
        });
    // SAFETY: both are whole planes of `ho·wo` windows, each written above.
    unsafe { (y.set_len(len), arg.set_len(len)) };
    (y, arg)
}

multiversion! {
    /// One plane of [`pooled_forward`]: each 2×2 window normalized and its
    /// first maximum taken (row-major, a NaN winning, as MaxPooling2D picks
    /// it) as a small tournament, each row's pair first and then the two
    /// rows: the same pick, without branches, so that the loop vectorizes.
    fn pool_plane<T>(xp: &[T], yp: &mut [MaybeUninit<T>], ap: &mut [MaybeUninit<u8>], w: usize, a: T, b: T) {
        let wo = w / 2;
        for (oh, (yr, ar)) in yp.chunks_exact_mut(wo).zip(ap.chunks_exact_mut(wo)).enumerate() {
            let (r0, r1) = (&xp[2 * oh * w..][..2 * wo], &xp[(2 * oh + 1) * w..][..2 * wo]);
            for (ow, (y, k)) in yr.iter_mut().zip(ar.iter_mut()).enumerate() {
                // (no closure: it would be compiled without the vector ISA)
                let a0 = T::mul_add(r0[2 * ow], a, b);
                let a1 = T::mul_add(r0[2 * ow + 1], a, b);
                let b0 = T::mul_add(r1[2 * ow], a, b);
                let b1 = T::mul_add(r1[2 * ow + 1], a, b);
                let (t0, t1) = (takes_over(a1, a0), takes_over(b1, b0));
                let m0 = if t0 { a1 } else { a0 };
                let m1 = if t1 { b1 } else { b0 };
                let t = takes_over(m1, m0);
                y.write(T::relu(if t { m1 } else { m0 }));
                k.write(if t { 2 + t1 as u8 } else { t0 as u8 });
            }
        }
    }
}

/// [`pool_plane`] for f32 in AVX2 registers, 8 windows at a time. The
/// generic loop vectorizes only whole groups of the ISA's width, and the
/// maps after this model's convolutions have rows of 15 and 6 windows: on
/// AVX2 half of them, on AVX-512 all of them, ran as a scalar remainder
/// that branched on the data. Here a row's last partial group runs through
/// the same vector code with masked loads and stores (the lanes past the
/// row read as zeros and are not written back): a zero-padded copy of the
/// tail cost four `memmove` calls of run-time length a row, 0.6% of the
/// BatchNormalization variant's step. The same tournament, so the same
/// pick (and NaN rule) as [`pool_plane`], which a test checks.
#[cfg(target_arch = "x86_64")]
mod avx2_pool {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Windows per vector group.
    const G: usize = 8;

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pool_plane(
        xp: &[f32],
        yp: &mut [MaybeUninit<f32>],
        ap: &mut [MaybeUninit<u8>],
        w: usize,
        a: f32,
        b: f32,
    ) {
        let wo = w / 2;
        let full = wo / G * G;
        let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
        for (oh, (yr, ar)) in yp.chunks_exact_mut(wo).zip(ap.chunks_exact_mut(wo)).enumerate() {
            let (r0, r1) = (&xp[2 * oh * w..][..2 * wo], &xp[(2 * oh + 1) * w..][..2 * wo]);
            for i in (0..full).step_by(G) {
                // r0, r1: two rows of 2·G inputs; yr, ar: G windows
                let (r0, r1) = (&r0[2 * i..][..2 * G], &r1[2 * i..][..2 * G]);
                // SAFETY: each row holds 2·G = 16 f32s, two unaligned loads
                // of 8 each.
                let [e0, o0, e1, o1] = unsafe {
                    let (e0, o0) = deinterleave(_mm256_loadu_ps(r0.as_ptr()), _mm256_loadu_ps(r0.as_ptr().add(G)));
                    let (e1, o1) = deinterleave(_mm256_loadu_ps(r1.as_ptr()), _mm256_loadu_ps(r1.as_ptr().add(G)));
                    [e0, o0, e1, o1]
                };
                let (y, k) = group([e0, o0, e1, o1].map(|v| _mm256_fmadd_ps(v, va, vb)));
                // SAFETY: yr and ar hold G = 8 windows from i (i + G <= full
                // <= wo): one unaligned store each.
                unsafe {
                    _mm256_storeu_ps(yr[i..i + G].as_mut_ptr().cast(), y);
                    ar[i..i + G].as_mut_ptr().cast::<u64>().write_unaligned(k);
                }
            }
            let rest = wo - full;
            if rest > 0 {
                // r0, r1: two rows of 2·rest < 2·G inputs; yr, ar: rest windows
                let (r0, r1) = (&r0[2 * full..], &r1[2 * full..]);
                let (lo, hi) = (mask(2 * rest), mask((2 * rest).saturating_sub(G)));
                // SAFETY: the masks keep the loads to the row's 2·rest
                // f32s (lanes past them read as 0.0, as a zero-padded copy
                // would) and the store to yr's last `rest` f32s.
                unsafe {
                    let ((e0, o0), (e1, o1)) = (masked_pair(r0, lo, hi), masked_pair(r1, lo, hi));
                    let (y, k) = group([e0, o0, e1, o1].map(|v| _mm256_fmadd_ps(v, va, vb)));
                    _mm256_maskstore_ps(yr[full..].as_mut_ptr().cast(), mask(rest), y);
                    // (a byte loop: a copy of a run-time length is a
                    // library call)
                    for (j, k) in (0..rest).zip(k.to_le_bytes()) {
                        ar[full + j].write(k);
                    }
                }
            }
        }
    }

    /// The even and the odd elements of a row's first 16 f32s, lanes `lo`
    /// of the first 8 and `hi` of the next 8 loaded, the rest zeros.
    ///
    /// # Safety
    /// The lanes set in `lo` and `hi` lie in `r`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn masked_pair(r: &[f32], lo: __m256i, hi: __m256i) -> (__m256, __m256) {
        // (wrapping: with `hi` empty, the second address may lie past the
        // slice, and a masked load touches none of its unset lanes)
        let p = r.as_ptr();
        // SAFETY: the caller's promise.
        unsafe { deinterleave(_mm256_maskload_ps(p, lo), _mm256_maskload_ps(p.wrapping_add(G), hi)) }
    }

    /// The first `n` lanes (at most 8) of eight set, for masked loads and
    /// stores.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn mask(n: usize) -> __m256i {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(G) as i32), lanes)
    }

    /// `G` windows from their four normalized inputs (each row's even and
    /// odd columns): the pooled outputs, and the maxima's places as `G`
    /// bytes of a little-endian `u64`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn group([a0, a1, b0, b1]: [__m256; 4]) -> (__m256, u64) {
        // the tournament of `pool_plane`: each row's pair, then the rows
        let (t0, t1) = (takes_over(a1, a0), takes_over(b1, b0));
        let m0 = _mm256_blendv_ps(a0, a1, t0);
        let m1 = _mm256_blendv_ps(b0, b1, t1);
        let t = takes_over(m1, m0);
        // max(NaN, 0) is 0, as f32::max gives
        let y = _mm256_max_ps(_mm256_blendv_ps(m0, m1, t), _mm256_setzero_ps());
        // k = t ? 2 + t1 : t0, from the all-ones masks: (t & 2) | (pick & 1)
        let pick = _mm256_castps_si256(_mm256_blendv_ps(t0, t1, t));
        let k = _mm256_or_si256(
            _mm256_and_si256(_mm256_castps_si256(t), _mm256_set1_epi32(2)),
            _mm256_and_si256(pick, _mm256_set1_epi32(1)),
        );
        // 8 × i32 → 8 × u8 (packs work within each 128-bit half)
        let k16 = _mm256_packs_epi32(k, k);
        let k8 = _mm256_packus_epi16(k16, k16);
        let lo = _mm_cvtsi128_si32(_mm256_castsi256_si128(k8)) as u32;
        let hi = _mm_cvtsi128_si32(_mm256_extracti128_si256::<1>(k8)) as u32;
        (y, lo as u64 | (hi as u64) << 32)
    }

    /// The even and the odd elements of `x0 ++ x1` (16 inputs), in order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn deinterleave(x0: __m256, x1: __m256) -> (__m256, __m256) {
        // shuffles work within 128-bit halves: [0 2 8 10 | 4 6 12 14], then
        // the 64-bit pairs reordered to [0 2 4 6 8 10 12 14]
        let order = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
        (
            order(_mm256_shuffle_ps::<0b10_00_10_00>(x0, x1)),
            order(_mm256_shuffle_ps::<0b11_01_11_01>(x0, x1)),
        )
    }

    /// [`super::takes_over`] as a mask: `v > best`, or `v` is NaN.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn takes_over(v: __m256, best: __m256) -> __m256 {
        _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, best), _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v))
    }
}

/// Whether `v` replaces `best` as a window's maximum: larger, or NaN.
#[inline(always)]
#[allow(clippy::eq_op)] // v != v: NaN, for any float type
fn takes_over<T: PartialOrd>(v: T, best: T) -> bool {
    v > best || v != v
}

/// Lanes of the sums below: a whole AVX-512 register of f32s.
const LANES: usize = 16;

/// `[Σ a, Σ b]` of two lane accumulators.
#[inline(always)]
fn total<T: Float>(a: [T; LANES], b: [T; LANES], out: &mut [T; 2]) {
    out[0] = a.iter().fold(T::zero(), |s, &v| s + v);
    out[1] = b.iter().fold(T::zero(), |s, &v| s + v);
}

multiversion! {
    /// `y = x·a + b` over one plane, then the fused ReLU: writes every
    /// element of `y` (as long as `x`).
    fn scale_shift<T>(x: &[T], y: &mut [MaybeUninit<T>], a: T, b: T, relu: bool) {
        assert_eq!(x.len(), y.len(), "a plane in, a plane out");
        // one pass each way (a second pass for the ReLU read the plane again)
        if relu {
            for (v, &u) in y.iter_mut().zip(x) {
                v.write(T::relu(T::mul_add(u, a, b)));
            }
        } else {
            for (v, &u) in y.iter_mut().zip(x) {
                v.write(T::mul_add(u, a, b));
            }
        }
    }
}

multiversion! {
    /// Over one plane, `[Σ dy, Σ dy·(x − mean)]`, with `dy` masked by the
    /// fused ReLU `relu = [a, b]` where `x·a + b > 0` (the forward's `y`).
    fn grad_sums<T>(dy: &[T], x: &[T], mean: T, relu: Option<[T; 2]>, out: &mut [T; 2]) {
        let (mut s, mut sx) = ([T::zero(); LANES], [T::zero(); LANES]);
        let (groups, tail) = dy.as_chunks::<LANES>();
        let (xg, xt) = x.as_chunks::<LANES>();
        for (g, u) in groups.iter().zip(xg) {
            for l in 0..LANES {
                let d = masked(g[l], u[l], relu);
                s[l] += d;
                sx[l] = T::mul_add(d, u[l] - mean, sx[l]);
            }
        }
        for (l, (&d, &u)) in tail.iter().zip(xt).enumerate() {
            let d = masked(d, u, relu);
            s[l] += d;
            sx[l] = T::mul_add(d, u - mean, sx[l]);
        }
        total(s, sx, out);
    }
}

/// `d` where the fused ReLU passed `x` (`x·a + b > 0`, rounded as
/// [`scale_shift`] rounds it), else 0; `d` without a ReLU.
#[inline(always)]
fn masked<T: Float>(d: T, x: T, relu: Option<[T; 2]>) -> T {
    match relu {
        Some([a, b]) => T::relu_grad(d, T::mul_add(x, a, b)),
        None => d,
    }
}

multiversion! {
    /// `dx = scale · (dy − offset − x·slope)` over one plane, in place,
    /// with `dy` masked as in [`grad_sums`].
    fn grad_apply<T>(dy: &mut [T], x: &[T], scale: T, offset: T, slope: T, relu: Option<[T; 2]>) {
        for (d, &u) in dy.iter_mut().zip(x) {
            *d = scale * (masked(*d, u, relu) - offset - u * slope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::*;
    use crate::model::Sequential;
    use crate::train::step::check::{assert_inference_matches_portable, assert_matches_autograd};
    use candle_core::{DType, Device, Var};
    use rand::SeedableRng;

    /// After convolutions (even and odd maps, with the ReLU and the 2×2
    /// pooling after it fused) and on flat features (with a fused ReLU), without center or scale: the CPU step
    /// against candle's autograd in f64, gradients and moving statistics.
    /// (A bias right before a BatchNormalization gets a gradient of exactly
    /// zero, which f32 only approximates: each one here has a ReLU between.)
    fn layers() -> Vec<Layer> {
        let relu_conv = |filters, k| -> Layer {
            let mut c = conv2d(filters, k);
            c.activation = Activation::Relu;
            c.into()
        };
        let mut relu_dense = dense(6);
        relu_dense.activation = Activation::Relu;
        vec![
            relu_conv(4, 3),
            batch_normalization().into(),
            relu(),
            max_pooling2d(2).into(),
            relu_conv(3, 3),
            batch_normalization().center(false).momentum(0.5).into(),
            flatten(),
            relu_dense.into(),
            batch_normalization().scale(false).into(),
            relu(),
            dense(3).into(),
            softmax(),
        ]
    }

    #[test]
    fn the_cpu_step_matches_autograd() {
        assert_matches_autograd(&layers(), 9, 5);
        assert_matches_autograd(&layers(), 10, 2);
        // One image: the statistics are over its height and width.
        let image_only = [
            relu_conv_for_one(),
            batch_normalization().into(),
            flatten(),
            dense(2).into(),
            softmax(),
        ];
        assert_matches_autograd(&image_only, 7, 1);
        // Keras's usual block: a convolution without bias (strided and
        // rectangular in the second), normalized, then the ReLU.
        let block = [
            conv2d(4, 3).same().use_bias(false).into(),
            batch_normalization().into(),
            relu(),
            conv2d(5, (3, 2)).strides(2).use_bias(false).into(),
            batch_normalization().into(),
            relu(),
            max_pooling2d(2).into(),
            flatten(),
            dense(3).into(),
            softmax(),
        ];
        assert_matches_autograd(&block, 11, 3);
        assert_matches_autograd(&block, 12, 1);
    }

    /// The AVX2 pooling kernel against the generic loop, which the tests
    /// above check against autograd: every row width from 1 to 40 windows
    /// (whole groups of 8, partial ones, both), with ties (values on a grid
    /// of four) and NaNs, the same outputs and the same maxima's places.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_pooling_picks_as_the_generic_loop() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            eprintln!("no AVX2 + FMA on this CPU: nothing to compare");
            return;
        }
        use rand::Rng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for w in 2..=81 {
            for h in [2, 3, 5] {
                let x: Vec<f32> = (0..h * w)
                    .map(|_| match rng.random_range(0..20) {
                        0 => f32::NAN,
                        _ => rng.random_range(-2i32..2) as f32,
                    })
                    .collect();
                let n = (h / 2) * (w / 2);
                let (a, b) = (rng.random_range(-1.5f32..1.5), rng.random_range(-1f32..1.0));
                let (mut y0, mut k0) = (vec![7f32; n], vec![9u8; n]);
                let (mut y1, mut k1) = (vec![7f32; n], vec![9u8; n]);
                pool_plane(&x, uninit(&mut y0), uninit(&mut k0), w, a, b);
                // SAFETY: AVX2 and FMA are here (checked above).
                unsafe { avx2_pool::pool_plane(&x, uninit(&mut y1), uninit(&mut k1), w, a, b) };
                assert_eq!(k0, k1, "maxima's places, {h}×{w}");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y0), bits(&y1), "outputs, {h}×{w}");
            }
        }
    }

    /// An initialized slice to be written over, as the kernels take their
    /// outputs.
    fn uninit<T>(v: &mut [T]) -> &mut [MaybeUninit<T>] {
        // SAFETY: MaybeUninit<T> has T's layout, and the kernels write only
        // initialized values.
        unsafe { &mut *(v as *mut [T] as *mut [MaybeUninit<T>]) }
    }

    fn relu_conv_for_one() -> Layer {
        let mut c = conv2d(3, 3);
        c.activation = Activation::Relu;
        c.into()
    }

    /// The sums a convolution takes of its output planes (`Fused::moments`)
    /// give the normalization exactly what its own pass over the output
    /// gives: the output, the kept statistics and the moving ones, bit for
    /// bit, on every path the convolution takes (direct, Winograd F(2×2)
    /// and F(4×4), im2col), with and without its ReLU.
    #[test]
    fn statistics_from_the_convolution_match_its_own_pass() {
        let mut next = crate::kernels::test_values(5);
        // (images, channels in, out, side, padding)
        for (n, c, o, side, pad) in [(3, 3, 32, 32, 1), (2, 16, 32, 32, 0), (2, 32, 64, 15, 1), (3, 2, 5, 7, 0)] {
            for activation in [Activation::Linear, Activation::Relu] {
                let mut conv = conv2d(o, 3);
                conv.activation = activation;
                if pad == 1 {
                    conv = conv.same();
                }
                let input = Shape::Image(c, side, side);
                let output = conv.output_shape(input).unwrap();
                let specs = conv.params(input);
                let p: Vec<Vec<f32>> = specs
                    .iter()
                    .map(|s| (0..s.shape.iter().product()).map(|_| next()).collect())
                    .collect();
                let p: Vec<&[f32]> = p.iter().map(Vec::as_slice).collect();
                let x: Vec<f32> = (0..n * input.size()).map(|_| next()).collect();
                let fused = Fused {
                    relu: activation == Activation::Relu,
                    moments: true,
                    ..Fused::default()
                };
                let s = StepShape { n, input, output, fused };
                let mut rng = rand::rngs::StdRng::seed_from_u64(0);
                let mut run = Run::new(true, &mut rng);
                let out = conv.cpu_forward(&x, &p, &s, &mut run).unwrap();
                let (y, sums) = (out.y.unwrap(), out.moments);
                let what = format!("{n}×{c}→{o}, {side}², pad {pad}, {activation:?}");
                assert_eq!(sums.as_ref().map(Vec::len), Some(n * o), "{what}: one sum a plane");

                let bn = batch_normalization().momentum(0.7);
                let bn_p: Vec<Vec<f32>> = bn
                    .params(output)
                    .iter()
                    .map(|_| (0..o).map(|_| 1.0 + next()).collect())
                    .collect();
                let bn_p: Vec<&[f32]> = bn_p.iter().map(Vec::as_slice).collect();
                let s = StepShape { n, input: output, output, fused: Fused::default() };
                run.step_params = (0..bn_p.len()).collect();
                let mut normalize = |handed: Option<Vec<PlaneSums>>| {
                    run.input_moments = handed;
                    run.updates.clear();
                    let out = bn.cpu_forward(&y, &bn_p, &s, &mut run).unwrap();
                    assert!(run.input_moments.is_none(), "{what}: the sums were taken");
                    let stats: &Stats = kept(&out.kept, "BatchNormalization").unwrap();
                    let moving: Vec<Vec<f32>> = run
                        .updates
                        .iter()
                        .map(|(_, t)| t.to_vec1().unwrap())
                        .collect();
                    (out.y.unwrap(), stats.mean.clone(), stats.inv_std.clone(), moving)
                };
                let (own, handed) = (normalize(None), normalize(sums));
                assert_eq!(handed.3.len(), 2, "{what}: the moving mean and variance");
                assert!(own == handed, "{what}: the statistics differ");
            }
        }
    }

    /// Inference uses the moving statistics (set at random by the check).
    #[test]
    fn inference_matches_the_portable_path() {
        assert_inference_matches_portable(&layers(), 9, 4);
    }

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        shape: Vec<usize>,
        settings: BatchNormalization,
        weights: std::collections::HashMap<String, Vec<f32>>,
        x: Vec<f32>,
        g: Vec<f32>,
        y_training: Vec<f32>,
        dx: Vec<f32>,
        dgamma: Option<Vec<f32>>,
        dbeta: Option<Vec<f32>>,
        moving_after: std::collections::HashMap<String, Vec<f32>>,
        y_inference: Vec<f32>,
    }

    fn close(what: &str, ours: &[f32], keras: &[f32], tol: f32) {
        assert_eq!(ours.len(), keras.len(), "{what}");
        let scale = keras.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in ours.iter().zip(keras).enumerate() {
            assert!((a - b).abs() <= tol * scale, "{what}[{i}]: {a} here, {b} in Keras");
        }
    }

    /// Outputs, gradients and moving statistics against Keras's own layer
    /// (`scripts/fixtures/batch_normalization.py`), on the CPU path and on
    /// the portable path, in training and at inference.
    #[test]
    fn matches_keras() {
        let cases: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/batch_normalization/keras.json"
        ))
        .unwrap();
        let cases: Vec<Case> = serde_json::from_value(cases["cases"].clone()).unwrap();
        assert_eq!(cases.len(), 4);
        for case in cases {
            let bn = &case.settings;
            let input = match case.shape[1..] {
                [c, h, w] => Shape::Image(c, h, w),
                [f] => Shape::Flat(f),
                _ => unreachable!(),
            };
            let n = case.shape[0];
            let specs = bn.params(input);
            let p: Vec<Vec<f32>> = specs.iter().map(|s| case.weights[s.name].clone()).collect();
            let step = StepShape {
                n,
                input,
                output: input,
                fused: Fused::default(),
            };
            let what = |w: &str| format!("{}: {w}", case.name);
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            let moving = |updates: &[(usize, Tensor)], f: &dyn Fn(&str, Vec<f32>)| {
                assert_eq!(updates.len(), 2);
                for (slot, t) in updates {
                    let v = t.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
                    f(specs[*slot].name, v);
                }
            };

            // The CPU path.
            let refs: Vec<&[f32]> = p.iter().map(|v| v.as_slice()).collect();
            let mut run = Run::new(true, &mut rng);
            run.step_params = (0..p.len()).collect();
            let out = bn.cpu_forward(&case.x, &refs, &step, &mut run).unwrap();
            let y = out.y.unwrap();
            close(&what("y (CPU)"), &y, &case.y_training, 1e-5);
            moving(&run.updates, &|name, v| {
                close(&what(name), &v, &case.moving_after[name], 1e-6)
            });
            let (dx, grads) = bn
                .cpu_backward(CpuGrad {
                    step: &step,
                    x: &case.x,
                    y: &y,
                    dy: case.g.clone(),
                    kept: &out.kept,
                    params: &refs,
                    wants_dx: true,
                })
                .unwrap();
            close(&what("dx (CPU)"), &dx, &case.dx, 1e-5);
            let expected: Vec<&Vec<f32>> =
                [&case.dgamma, &case.dbeta].into_iter().flatten().collect();
            assert_eq!(grads.len(), expected.len(), "{}", case.name);
            for (g, e) in grads.iter().zip(expected.iter()) {
                close(&what("dgamma/dbeta (CPU)"), g, e, 1e-5);
            }
            let mut run = Run::new(false, &mut rng);
            let y = bn.cpu_forward(&case.x, &refs, &step, &mut run).unwrap().y.unwrap();
            close(&what("inference (CPU)"), &y, &case.y_inference, 1e-5);
            assert!(run.updates.is_empty());

            // The portable path, in f64, differentiated by autograd.
            let dev = Device::Cpu;
            let t = |v: &[f32], dims: &[usize]| {
                Var::from_tensor(
                    &Tensor::from_slice(v, dims, &dev).unwrap().to_dtype(DType::F64).unwrap(),
                )
                .unwrap()
            };
            let x = t(&case.x, &case.shape);
            let pv: Vec<Var> = p.iter().map(|v| t(v, &[v.len()])).collect();
            let pt: Vec<Tensor> = pv.iter().map(|v| v.as_tensor().clone()).collect();
            let g = t(&case.g, &case.shape);
            let mut run = Run::new(true, &mut rng);
            run.step_params = (0..p.len()).collect();
            let y = bn.forward(x.as_tensor(), &pt, &step, &mut run).unwrap();
            let values = |t: &Tensor| -> Vec<f32> {
                t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
            };
            close(&what("y (portable)"), &values(&y), &case.y_training, 1e-5);
            moving(&run.updates, &|name, v| {
                close(&what(name), &v, &case.moving_after[name], 1e-6)
            });
            let grads = (y * g.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            close(&what("dx (portable)"), &values(grads.get(&x).unwrap()), &case.dx, 1e-5);
            for (var, e) in pv.iter().zip(expected.iter()) {
                close(&what("dgamma/dbeta (portable)"), &values(grads.get(var).unwrap()), e, 1e-5);
            }
            let mut run = Run::new(false, &mut rng);
            let y = bn.forward(x.as_tensor(), &pt, &step, &mut run).unwrap();
            close(&what("inference (portable)"), &values(&y), &case.y_inference, 1e-5);
        }
    }

    fn small_model(layers: Vec<Layer>) -> Sequential {
        let mut m = Sequential::on(&[3, 8, 8], 1, &Device::Cpu).unwrap();
        for l in layers {
            m.add(l).unwrap();
        }
        m
    }

    /// Training moves the moving statistics (non-trainable: the optimizer
    /// has no state for them, the summary counts them apart), a save
    /// carries them, and the loaded model predicts bit for bit the same.
    #[test]
    fn trains_saves_and_loads_its_moving_statistics() {
        let mut m = small_model(vec![
            conv2d(4, 3).into(),
            batch_normalization().momentum(0.5).into(),
            relu(),
            flatten(),
            dense(3).into(),
            softmax(),
        ]);
        let summary = m.summary_string().unwrap();
        assert!(summary.contains("Non-trainable params: 8"), "{summary}");
        m.compile(crate::optim::Adam::default()).unwrap();
        let (x, y) = crate::train::step::check::batch(6, 8, 3);
        let before = m.params.get("batch_normalization.moving_mean").unwrap().var.to_vec1::<f32>().unwrap();
        m.train_on_batch(&x, &y).unwrap();
        let after = m.params.get("batch_normalization.moving_mean").unwrap().var.to_vec1::<f32>().unwrap();
        assert_eq!(before, [0.0; 4]);
        assert!(after.iter().all(|v| *v != 0.0), "{after:?}");
        let state: Vec<String> = m.optimizer.as_ref().unwrap().state().into_iter().map(|(k, _)| k).collect();
        assert!(state.iter().all(|k| !k.contains("moving")), "{state:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bn");
        m.save(&path).unwrap();
        let mut back = Sequential::load(&path).unwrap();
        let (a, b) = (m.predict(&x).unwrap(), back.predict(&x).unwrap());
        let bits = |t: Tensor| -> Vec<u32> {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(a), bits(b));
    }

    /// A flat BatchNormalization cannot learn from batches of one sample:
    /// `fit` says so before training, also when only the last batch has one.
    #[test]
    fn a_flat_batch_of_one_is_refused_before_training() {
        let mut m = small_model(vec![
            flatten(),
            dense(4).into(),
            batch_normalization().into(),
            dense(3).into(),
            softmax(),
        ]);
        let (x, y) = crate::train::step::check::batch(9, 8, 3);
        let weights = m.params.snapshot().unwrap();
        for batch_size in [1, 4] {
            let args = crate::train::Fit {
                batch_size,
                verbose: 0,
                ..Default::default()
            };
            let e = format!("{:#}", m.fit(&x, &y, args).unwrap_err());
            assert!(e.contains("layer 2 (BatchNormalization)") && e.contains("batch of 1 sample"), "{e}");
        }
        let e = format!("{:#}", m.train_on_batch(&x.narrow(0, 0, 1).unwrap(), &y.narrow(0, 0, 1).unwrap()).unwrap_err());
        assert!(e.contains("batch of 1 sample"), "{e}");
        let same = m.params.snapshot().unwrap();
        for (a, b) in weights.iter().zip(&same) {
            assert_eq!(a.to_vec1::<f32>().ok(), b.to_vec1::<f32>().ok());
        }
        // Batches of 3 (9 samples): trains.
        let args = crate::train::Fit { batch_size: 3, verbose: 0, ..Default::default() };
        m.fit(&x, &y, args).unwrap();
    }

    #[test]
    fn settings_are_checked_and_round_trip() {
        let mut m = Sequential::on(&[3, 8, 8], 0, &Device::Cpu).unwrap();
        let e = format!("{:#}", m.add(batch_normalization().momentum(1.5)).err().unwrap());
        assert!(e.contains("momentum must be in [0, 1]"), "{e}");
        let e = format!("{:#}", m.add(batch_normalization().epsilon(0.0)).err().unwrap());
        assert!(e.contains("epsilon"), "{e}");
        let layer: Layer = batch_normalization().center(false).into();
        let json = serde_json::to_string(&layer).unwrap();
        assert_eq!(
            json,
            r#"{"class_name":"BatchNormalization","config":{"momentum":0.99,"epsilon":0.001,"center":false,"scale":true}}"#
        );
        assert_eq!(serde_json::from_str::<Layer>(&json).unwrap(), layer);
        let keras_defaults: Layer =
            serde_json::from_str(r#"{"class_name":"BatchNormalization","config":{}}"#).unwrap();
        assert_eq!(keras_defaults, batch_normalization().into());
    }
}
