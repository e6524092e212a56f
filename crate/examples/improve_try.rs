//! Throwaway: try a recipe quickly (env vars), before the notebook exists.
use anyhow::Result;
use cifar10_cnn::prelude::*;
use std::time::Instant;

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() -> Result<()> {
    let epochs: usize = env("EPOCHS", 25);
    let seed: u64 = env("SEED", 0);
    let lr: f64 = env("LR", 0.1);
    let wd: f64 = env("WD", 5e-4);
    let ls: f64 = env("LS", 0.1);
    let d1: f64 = env("D1", 0.1);
    let d2: f64 = env("D2", 0.3);
    let warm: usize = env("WARM", 2);
    let n: usize = env("TRAIN_SIZE", 50_000);
    let (train, test) = cifar10::load_data()?;
    let train = train.take(n);
    let x_train = train.images_f32()?;
    let x_test = test.images_f32()?;
    let mut y_train = to_categorical(&train.labels, 10)?;
    let y_test = to_categorical(&test.labels, 10)?;
    if ls > 0.0 {
        y_train = ((y_train * (1.0 - ls))? + ls / 10.0)?;
    }
    let mut model = Sequential::new(&x_train.dims()[1..], seed)?;
    for (f, same) in [
        (32, true),
        (32, false),
        (0, false),
        (64, true),
        (64, false),
        (0, false),
    ] {
        if f == 0 {
            model.add(max_pooling2d(2))?;
            model.add(dropout(d1))?;
            continue;
        }
        let c = conv2d(f, 3);
        model.add(if same { c.same() } else { c })?;
        model.add(batch_normalization())?;
        model.add(relu())?;
    }
    model.add(flatten())?;
    model.add(dense(512))?;
    model.add(batch_normalization())?;
    model.add(relu())?;
    model.add(dropout(d2))?;
    model.add(dense(10))?;
    model.add(softmax())?;
    let steps = (45_000usize.min(n * 9 / 10)).div_ceil(128) as u64;
    let sched =
        CosineDecay::new(0.0, steps * (epochs - warm) as u64).warmup(lr, steps * warm as u64);
    model.compile(
        SGD::new(sched)
            .momentum(0.9)
            .nesterov(true)
            .weight_decay(wd),
    )?;
    let t = Instant::now();
    let h = model.fit(
        &x_train,
        &y_train,
        Fit {
            batch_size: 128,
            epochs,
            validation_split: 0.1,
            augment: true,
            verbose: 2,
            ..Fit::default()
        },
    )?;
    let secs = t.elapsed().as_secs_f64();
    let s = model.evaluate(&x_test, &y_test)?;
    let rev: Vec<u32> = (0..32u32).rev().collect();
    let rev = Tensor::from_slice(&rev, 32, x_test.device())?;
    let xf = x_test.index_select(&rev, 3)?;
    let p = ((model.predict(&x_test)? + model.predict(&xf)?)? * 0.5)?;
    let pred = p.argmax(1)?.to_vec1::<u32>()?;
    let tta = pred
        .iter()
        .zip(&test.labels)
        .filter(|(a, b)| **a as usize == **b as usize)
        .count() as f64
        / 1e4;
    println!("RESULT seed={seed} lr={lr} wd={wd} ls={ls} d1={d1} d2={d2} test_loss={:.4} test_acc={:.4} tta_acc={tta:.4} secs={secs:.0}", s.loss, s.accuracy);
    h.save(format!("/tmp/try-{seed}-{lr}-{ls}-{d1}-{d2}.json"))?;
    Ok(())
}
