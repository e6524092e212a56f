//! `cifar10-cnn check`: what a GPU machine needs to show, in one run.
//!
//! 1. The time of an epoch of the article's training (45,000 images at batch
//!    128), on generated images of CIFAR-10's shape: the arithmetic does not
//!    depend on the pixels, and no dataset has to travel.
//! 2. Accuracy after a few epochs on a small real sample (files of CIFAR-10
//!    records), to show that training on the device learns.
//! 3. The trained weights loaded on the CPU: do both devices predict the same?

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor, D};
use cifar10_cnn::data;
use cifar10_cnn::device::{describe, pick_device};
use cifar10_cnn::model::Sequential;
use cifar10_cnn::train::{Adam, Fit};
use clap::Parser;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::PathBuf;

#[derive(Parser, Debug)]
pub struct CheckArgs {
    /// Images in the timed epochs (generated, of CIFAR-10's shape); the article's fit sees 45,000.
    #[arg(long, default_value_t = 45_000)]
    epoch_images: usize,
    /// Timed epochs; the first includes the device's warm-up.
    #[arg(long, default_value_t = 2)]
    timed_epochs: usize,
    /// Training records for the accuracy part: a CIFAR-10 batch file or its first N records.
    #[arg(long, requires = "test")]
    train: Option<PathBuf>,
    /// Test records for the accuracy part, in the same format.
    #[arg(long, requires = "train")]
    test: Option<PathBuf>,
    /// Epochs of the accuracy part.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Fail when the CPU and the device agree on the class of fewer than this share of images.
    #[arg(long, default_value_t = 0.99)]
    min_agreement: f64,
}

pub fn check(args: CheckArgs) -> Result<()> {
    let device = pick_device()?;
    println!("device: {}", describe(&device));
    let mut report = serde_json::Map::new();
    report.insert("device".into(), describe(&device).into());

    // 1. The timed epochs.
    let (x, y) = generated(args.epoch_images, &device)?;
    let mut model = Sequential::article(&[3, 32, 32], 10, 0, &device)?;
    model.compile(Adam::default())?;
    println!(
        "timing {} epochs of {} generated images",
        args.timed_epochs, args.epoch_images
    );
    let fit = Fit {
        batch_size: args.batch_size,
        epochs: args.timed_epochs,
        verbose: 2,
        ..Fit::default()
    };
    let timed = model.fit(&x, &y, fit)?;
    drop((x, y));
    report.insert("epoch_images".into(), args.epoch_images.into());
    report.insert("epoch_seconds".into(), timed.epoch_seconds.clone().into());

    // 2. Accuracy on a real sample, when one is given.
    let test_x = match (&args.train, &args.test) {
        (Some(train), Some(test)) => {
            let (train, test) = (data::load_records(train)?, data::load_records(test)?);
            println!(
                "training {} epochs on {} real images, testing on {}",
                args.epochs,
                train.len(),
                test.len()
            );
            model = Sequential::article(&[3, 32, 32], 10, 0, &device)?;
            model.compile(Adam::default())?;
            let fit = Fit {
                batch_size: args.batch_size,
                epochs: args.epochs,
                verbose: 2,
                ..Fit::default()
            };
            let history = model.fit(&train.images_f32()?, &train.labels_one_hot()?, fit)?;
            let test_x = test.images_f32()?;
            let score = model.evaluate(&test_x, &test.labels_one_hot()?)?;
            println!(
                "test loss {:.4}, test accuracy {:.4}",
                score.loss, score.accuracy
            );
            report.insert("train_images".into(), train.len().into());
            report.insert("test_images".into(), test.len().into());
            report.insert("train_epoch_seconds".into(), history.epoch_seconds.into());
            report.insert("test_loss".into(), score.loss.into());
            report.insert("test_accuracy".into(), score.accuracy.into());
            test_x
        }
        _ => generated(1000, &Device::Cpu)?.0,
    };

    // 3. The same weights on the CPU (on a CPU-only machine this checks the
    // save/load round trip).
    let (agreement, max_diff) = compare_with_cpu(&mut model, &test_x)?;
    println!(
        "the same weights on the CPU: same class for {:.2}% of {} images, largest probability difference {max_diff:.2e}",
        agreement * 100.0,
        test_x.dim(0)?
    );
    report.insert("cpu_agreement".into(), agreement.into());
    report.insert("cpu_max_prob_diff".into(), max_diff.into());
    ensure!(
        agreement >= args.min_agreement,
        "the CPU and {} predict different classes for {:.2}% of the images (allowed: {:.2}%): a kernel computes something different on one of them",
        describe(&device),
        (1.0 - agreement) * 100.0,
        (1.0 - args.min_agreement) * 100.0
    );
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

/// `n` uniform random images and random one-hot labels, made on `device`.
pub fn generated(n: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    ensure!(n > 0, "the number of images must be at least 1");
    let mut rng = StdRng::seed_from_u64(0);
    let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..10)).collect();
    let x = Tensor::rand(0f32, 1f32, (n, 3, 32, 32), device)?;
    Ok((x, data::to_categorical(&labels, 10)?.to_device(device)?))
}

/// Saves the model, loads it on the CPU and compares the two devices'
/// predictions: the share of images given the same class, and the largest
/// difference of any probability.
fn compare_with_cpu(model: &mut Sequential, x: &Tensor) -> Result<(f64, f64)> {
    let dir = std::env::temp_dir().join(format!("cifar10-cnn-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let stem = dir.join("model");
    model.save(&stem)?;
    let mut on_cpu = Sequential::load_on(&stem, &Device::Cpu)?;
    let _ = std::fs::remove_dir_all(&dir);
    let (p_device, p_cpu) = (model.predict(x)?, on_cpu.predict(x)?);
    let same = p_device
        .argmax(D::Minus1)?
        .eq(&p_cpu.argmax(D::Minus1)?)?
        .to_dtype(candle_core::DType::F32)?;
    let agreement = same.mean_all()?.to_scalar::<f32>()? as f64;
    let max_diff = (p_device - p_cpu)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    Ok((agreement, max_diff))
}
