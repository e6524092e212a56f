//! Each Winograd convolution of the article's model alone at batch 128 on
//! random data, and the second one unpooled as the BatchNormalization
//! variant runs it (`conv2u`; here with the ReLU): its forward, then its
//! backward (both gradients, through autograd, from a gradient of ones),
//! each the best of several calls, so that a noisy machine still gives a
//! steady figure to compare kernels by.
//!
//!     cargo run --release -p cifar10-cnn --example conv_layers [calls] [layer]
//!
//! Prints one JSON line: milliseconds per layer and pass, and the sums.
//! With a layer's name (`conv2`, `conv2u`, `conv3`, `conv4`), only that
//! one runs: what `perf record` of one layer's kernels needs.

use candle_core::{Device, Tensor, Var};
use cifar10_cnn::kernels::{conv2d_relu, conv2d_relu_max_pool2};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::args().nth(1).map_or(Ok(15), |a| a.parse())?;
    let only = std::env::args().nth(2);
    let dev = Device::Cpu;
    // (name, input channels, output channels, side, padding, pooled)
    let layers = [
        ("conv2", 32, 32, 32, 0, true),
        ("conv2u", 32, 32, 32, 0, false),
        ("conv3", 32, 64, 15, 1, false),
        ("conv4", 64, 64, 15, 0, true),
    ];
    let best_of = |f: &mut dyn FnMut() -> anyhow::Result<f64>| -> anyhow::Result<f64> {
        (0..calls).try_fold(f64::INFINITY, |best, _| Ok(best.min(f()?)))
    };
    let (mut out, mut fwd_sum, mut bwd_sum) = (Vec::new(), 0.0, 0.0);
    if let Some(only) = only.as_deref().filter(|&n| layers.iter().all(|l| l.0 != n)) {
        anyhow::bail!("no layer `{only}` here: name one of conv2, conv2u, conv3, conv4");
    }
    for (name, c, o, side, pad, pooled) in layers {
        if only.as_deref().is_some_and(|n| n != name) {
            continue;
        }
        let x = Var::randn(0f32, 1.0, (128, c, side, side), &dev)?;
        let std = (2.0 / (9.0 * c as f64)).sqrt();
        let k = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (o, c, 3, 3), &dev)? * std)?)?;
        let b = Var::zeros(o, candle_core::DType::F32, &dev)?;
        let layer = || match pooled {
            true => conv2d_relu_max_pool2(&x, &k, &b, pad),
            false => conv2d_relu(&x, &k, &b, pad),
        };
        let fwd = best_of(&mut || {
            let t = Instant::now();
            let y = layer()?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(y);
            Ok(ms)
        })?;
        let bwd = best_of(&mut || {
            let y = layer()?;
            let t = Instant::now();
            let grads = y.backward()?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(grads);
            Ok(ms)
        })?;
        fwd_sum += fwd;
        bwd_sum += bwd;
        out.push(format!(
            "\"{name}_ms\": {fwd:.2}, \"{name}_bwd_ms\": {bwd:.2}"
        ));
    }
    println!(
        "{{{}, \"sum_ms\": {fwd_sum:.2}, \"bwd_sum_ms\": {bwd_sum:.2}}}",
        out.join(", ")
    );
    Ok(())
}
