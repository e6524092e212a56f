//! Training frees each step's memory: measured as this process's resident
//! memory, so these tests live in a binary of their own and take turns
//! (other tests running beside them would move the figure).

mod common;

use candle_core::Device;
use cifar10_cnn::model::Sequential;
use cifar10_cnn::train::{Adam, Fit};
use std::sync::Mutex;

/// Held by each test while it measures.
static MEASURING: Mutex<()> = Mutex::new(());

/// Resident memory of this process, in MiB (Linux).
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Each step's memory must be freed. On the CPU in f32 (the plan's own
/// step) nothing of a step may outlive it; on the portable path (candle's
/// autograd, what CUDA runs; here in f64 on the CPU) the optimizer's
/// moments once kept every step's gradients, and through them every
/// forward pass, alive (23 GB into the article's first epoch).
fn assert_steps_are_freed(dtype: candle_core::DType, images: usize) {
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_) = rss_mib() else { return };
    let data = common::synthetic(images, 10, 32, 8);
    let x = data.images_f32().unwrap().to_dtype(dtype).unwrap();
    let y = data.labels_one_hot().unwrap().to_dtype(dtype).unwrap();
    let mut model = Sequential::article(&[3, 32, 32], 10, 0, &Device::Cpu).unwrap();
    model.to_dtype(dtype).unwrap();
    model.compile(Adam::default()).unwrap();
    let fit = || Fit {
        batch_size: images,
        epochs: 5,
        verbose: 0,
        ..Fit::default()
    };
    model.fit(&x, &y, fit()).unwrap();
    let before = rss_mib().unwrap();
    model
        .fit(
            &x,
            &y,
            Fit {
                epochs: 30,
                ..fit()
            },
        )
        .unwrap();
    let grown = rss_mib().unwrap() - before;
    // one step of these batches holds about 60 MiB of activations and gradients
    assert!(grown < 60.0, "memory grew by {grown:.0} MiB over 30 steps");
}

#[test]
fn training_does_not_keep_old_steps_alive() {
    assert_steps_are_freed(candle_core::DType::F32, 64);
}

#[test]
fn training_through_autograd_does_not_keep_old_steps_alive() {
    assert_steps_are_freed(candle_core::DType::F64, 16);
}
