//! Each Winograd convolution of the article's model alone, forward only, at
//! batch 128 on random data, and the second one unpooled as the
//! BatchNormalization variant runs it (`conv2u`; here with the ReLU): the
//! best of several calls, so that a noisy machine still gives a steady
//! figure to compare kernels by.
//!
//!     cargo run --release -p cifar10-cnn --example conv_layers [calls]
//!
//! Prints one JSON line: milliseconds per layer and their sum.

use candle_core::{Device, Tensor};
use cifar10_cnn::kernels::{conv2d_relu, conv2d_relu_max_pool2};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::args().nth(1).map_or(Ok(15), |a| a.parse())?;
    let dev = Device::Cpu;
    // (name, input channels, output channels, side, padding, pooled)
    let layers = [
        ("conv2", 32, 32, 32, 0, true),
        ("conv2u", 32, 32, 32, 0, false),
        ("conv3", 32, 64, 15, 1, false),
        ("conv4", 64, 64, 15, 0, true),
    ];
    let mut out = Vec::new();
    let mut total = 0.0;
    for (name, c, o, side, pad, pooled) in layers {
        let x = Tensor::randn(0f32, 1.0, (128, c, side, side), &dev)?;
        let k = (Tensor::randn(0f32, 1.0, (o, c, 3, 3), &dev)? * (2.0 / (9.0 * c as f64)).sqrt())?;
        let b = Tensor::zeros(o, candle_core::DType::F32, &dev)?;
        let mut best = f64::INFINITY;
        for _ in 0..calls {
            let t = Instant::now();
            let y = match pooled {
                true => conv2d_relu_max_pool2(&x, &k, &b, pad)?,
                false => conv2d_relu(&x, &k, &b, pad)?,
            };
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
            drop(y);
        }
        total += best;
        out.push(format!("\"{name}_ms\": {best:.2}"));
    }
    println!("{{{}, \"sum_ms\": {total:.2}}}", out.join(", "));
    Ok(())
}
