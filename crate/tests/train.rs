//! `fit`, `evaluate` and `predict` with Keras's semantics, on data made here
//! and on the real CIFAR-10.

mod common;

use candle_core::{Device, Tensor};
use cifar10_cnn::model::{layers::*, Sequential};
use cifar10_cnn::train::{Adam, Fit};

/// A small CNN for 8x8 images, quick enough to train many times in tests.
fn small_model(seed: u64, classes: usize) -> Sequential {
    let mut m = Sequential::on(&[3, 8, 8], seed, &Device::Cpu).unwrap();
    for l in [
        conv2d(8, 3).same().into(),
        relu(),
        max_pooling2d(2).into(),
        dropout(0.25),
        flatten(),
        dense(32).into(),
        relu(),
        dense(classes).into(),
        softmax(),
    ] {
        m.add(l).unwrap();
    }
    m
}

#[test]
fn fit_learns_and_records_every_epoch() {
    let data = common::synthetic(400, 4, 8, 3);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    let mut model = small_model(0, 4);
    model.compile(Adam::default()).unwrap();
    let history = model
        .fit(
            &x,
            &y,
            Fit {
                batch_size: 32,
                epochs: 8,
                validation_split: 0.25,
                ..Fit::default()
            },
        )
        .unwrap();
    assert_eq!(history.epochs(), 8);
    assert_eq!(
        (
            history.val_loss.len(),
            history.val_acc.len(),
            history.epoch_seconds.len()
        ),
        (8, 8, 8)
    );
    assert!(
        history.loss[7] < history.loss[0] * 0.5,
        "loss {:?}",
        history.loss
    );
    assert!(history.val_acc[7] > 0.9, "val_acc {:?}", history.val_acc);
    let score = model.evaluate(&x, &y).unwrap();
    assert!(score.accuracy > 0.9, "{score:?}");
}

/// The validation set is the *last* fraction of the arrays, before shuffling,
/// and is scored with the final weights: evaluating those samples afterwards
/// gives exactly the history's last val_loss and val_acc.
#[test]
fn validation_is_the_last_fraction_of_the_data() {
    let data = common::synthetic(200, 4, 8, 4);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    let mut model = small_model(1, 4);
    let history = model
        .fit(
            &x,
            &y,
            Fit {
                batch_size: 16,
                epochs: 2,
                validation_split: 0.1,
                verbose: 0,
                ..Fit::default()
            },
        )
        .unwrap();
    let (xv, yv) = (x.narrow(0, 180, 20).unwrap(), y.narrow(0, 180, 20).unwrap());
    let score = model.evaluate(&xv, &yv).unwrap();
    assert!(
        (score.loss - history.val_loss[1]).abs() < 1e-6,
        "{score:?} vs {history:?}"
    );
    assert_eq!(score.accuracy, history.val_acc[1]);
    // and not the first 10%
    let first = model
        .evaluate(&x.narrow(0, 0, 20).unwrap(), &y.narrow(0, 0, 20).unwrap())
        .unwrap();
    assert_ne!(first.loss, history.val_loss[1]);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let data = common::synthetic(120, 4, 8, 5);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    let run = |seed| {
        let mut m = small_model(seed, 4);
        m.fit(
            &x,
            &y,
            Fit {
                batch_size: 32,
                epochs: 2,
                validation_split: 0.2,
                verbose: 0,
                ..Fit::default()
            },
        )
        .unwrap()
    };
    let (a, b, c) = (run(9), run(9), run(10));
    assert_eq!((&a.loss, &a.val_loss), (&b.loss, &b.val_loss));
    assert_ne!(a.loss, c.loss);
}

#[test]
fn the_last_partial_batch_is_trained_on() {
    // 45 training samples in batches of 32: a last batch of 13.
    let data = common::synthetic(50, 4, 8, 6);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    let mut model = small_model(2, 4);
    model.compile(Adam::default()).unwrap();
    model
        .fit(
            &x,
            &y,
            Fit {
                batch_size: 32,
                epochs: 3,
                validation_split: 0.1,
                verbose: 0,
                ..Fit::default()
            },
        )
        .unwrap();
    assert_eq!(model.optimizer_iterations(), 6);
}

#[test]
fn nan_loss_stops_training_with_a_clear_message() {
    let data = common::synthetic(64, 4, 8, 7);
    let y = data.labels_one_hot().unwrap();
    let x = data.images_f32().unwrap();
    let mut model = small_model(3, 4);
    // steps this large overflow the weights within a few updates
    model.compile(Adam::new(1e36)).unwrap();
    let e = format!(
        "{:#}",
        model
            .fit(
                &x,
                &y,
                Fit {
                    verbose: 0,
                    ..Fit::default()
                }
            )
            .err()
            .unwrap()
    );
    assert!(
        (e.contains("loss became NaN") || e.contains("loss became inf"))
            && e.contains("training stopped"),
        "{e}"
    );
}

#[test]
fn wrong_inputs_are_refused_with_the_expected_shapes() {
    let mut model = small_model(0, 4);
    let x = Tensor::zeros((4, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = format!("{:#}", model.evaluate(&x, &y).err().unwrap());
    assert!(e.contains("[N, 3, 8, 8]"), "{e}");
    let x = Tensor::zeros((4, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y10 = Tensor::zeros((4, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = format!("{:#}", model.evaluate(&x, &y10).err().unwrap());
    assert!(e.contains("to_categorical"), "{e}");
    let e = format!(
        "{:#}",
        model
            .fit(
                &x,
                &y,
                Fit {
                    batch_size: 0,
                    ..Fit::default()
                }
            )
            .err()
            .unwrap()
    );
    assert!(e.contains("batch_size"), "{e}");
    let mut no_softmax = Sequential::on(&[3, 8, 8], 0, &Device::Cpu).unwrap();
    no_softmax.add(flatten()).unwrap().add(dense(4)).unwrap();
    assert!(
        format!("{:#}", no_softmax.compile(Adam::default()).err().unwrap()).contains("softmax")
    );
}

/// One epoch on 5,000 real training images (4,500 train, 500 validation)
/// gets clearly above chance (0.10). Measured with the CLI for seeds 0, 1, 2:
/// val_acc 0.266, 0.310, 0.334 (36 steps of 128), so the bar is 0.25.
#[test]
fn one_epoch_on_5000_real_images_beats_chance() {
    let Some(dir) = common::cifar10_dir() else {
        return;
    };
    let (train, _) = cifar10_cnn::data::load_dir(dir).unwrap();
    let train = train.take(5_000);
    let (x, y) = (train.images_f32().unwrap(), train.labels_one_hot().unwrap());
    let mut model = Sequential::article(&[3, 32, 32], 10, 0, &Device::Cpu).unwrap();
    model.compile(Adam::default()).unwrap();
    let h = model
        .fit(
            &x,
            &y,
            Fit {
                batch_size: 128,
                epochs: 1,
                validation_split: 0.1,
                ..Fit::default()
            },
        )
        .unwrap();
    println!("one epoch on 5,000 real images: {h:?}");
    assert!(
        h.val_acc[0] >= 0.25,
        "val_acc {} is not clearly above chance (0.10)",
        h.val_acc[0]
    );
}

/// Keras's BackupAndRestore: kill a training run after its first epoch's
/// backup, start it again, and get exactly the history of a run that was
/// never interrupted.
#[test]
fn a_killed_run_resumes_from_its_backup_and_matches_an_uninterrupted_one() {
    let Some(dir) = common::cifar10_dir() else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_cifar10-cnn");
    let work = tempfile::tempdir().unwrap();
    let run = |out: &std::path::Path| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "train",
            "--epochs",
            "3",
            "--train-size",
            "640",
            "--test-size",
            "128",
            "--seed",
            "5",
            "--show",
            "0",
        ])
        .arg("--data")
        .arg(&dir)
        .arg("--out")
        .arg(out)
        .env("DEVICE", "cpu");
        cmd
    };
    let whole = work.path().join("whole");
    assert!(run(&whole).output().unwrap().status.success());

    let resumed = work.path().join("resumed");
    let mut child = run(&resumed)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let backup = resumed.join("backup").join("backup.safetensors");
    let start = std::time::Instant::now();
    while !backup.exists() {
        assert!(start.elapsed().as_secs() < 300, "no backup after 300 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !resumed.join("history.json").exists(),
        "killed before the end"
    );

    let out = run(&resumed).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Restored the backup"), "{stdout}");
    assert!(
        !backup.exists(),
        "the backup is removed once training completes"
    );
    let a = cifar10_cnn::history::History::load(whole.join("history.json")).unwrap();
    let b = cifar10_cnn::history::History::load(resumed.join("history.json")).unwrap();
    assert_eq!(
        (a.loss, a.acc, a.val_loss, a.val_acc),
        (b.loss, b.acc, b.val_loss, b.val_acc)
    );
}

#[test]
fn nan_keeps_the_last_good_weights() {
    let data = common::synthetic(64, 4, 8, 7);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    let mut model = small_model(3, 4);
    model.compile(Adam::new(1e36)).unwrap();
    let before: Vec<Vec<f32>> = model
        .named_vars()
        .iter()
        .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert!(model
        .fit(
            &x,
            &y,
            Fit {
                verbose: 0,
                ..Fit::default()
            }
        )
        .is_err());
    let after: Vec<Vec<f32>> = model
        .named_vars()
        .iter()
        .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(
        before, after,
        "the weights are those before the epoch that diverged"
    );
    assert!(model
        .predict(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|p| p.is_finite()));
}

/// A NaN or infinite value in the data is refused before the first step,
/// by `fit` and `train_on_batch`, naming where it is; the weights are
/// untouched.
#[test]
fn non_finite_inputs_are_refused_before_training() {
    let data = common::synthetic(40, 4, 8, 9);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    let mut v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    v[5 * 3 * 8 * 8 + 17] = f32::NAN;
    let bad = Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap();
    let mut model = small_model(4, 4);
    let before: Vec<Vec<f32>> = weights(&model);
    let fit = Fit {
        verbose: 0,
        ..Fit::default()
    };
    let e = format!("{:#}", model.fit(&bad, &y, fit).err().unwrap());
    assert!(
        e.contains("x holds 1 NaN or infinite values (the first in row 5)"),
        "{e}"
    );
    let e = format!("{:#}", model.train_on_batch(&bad, &y).err().unwrap());
    assert!(e.contains("NaN or infinite"), "{e}");
    assert_eq!(weights(&model), before);
    assert_eq!(model.optimizer_iterations(), 0);
}

fn weights(model: &Sequential) -> Vec<Vec<f32>> {
    model
        .named_vars()
        .iter()
        .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

/// However training diverges (a loss that overflows, or weights that turn
/// NaN while the ReLUs keep the loss finite), `fit` stops with an error and
/// leaves the model as it was at the end of the last good epoch: finite
/// weights, and the optimizer's step count (and moments) of then.
#[test]
fn divergence_stops_training_and_restores_the_last_good_epoch() {
    let data = common::synthetic(64, 4, 8, 7);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    for lr in [1e4, 1e12, 1e20, 1e30, 1e36, 1e38] {
        let mut model = small_model(3, 4);
        model.compile(Adam::new(lr)).unwrap();
        let initial = weights(&model);
        let fit = Fit {
            batch_size: 16,
            epochs: 4,
            verbose: 0,
            ..Fit::default()
        };
        let finite = |m: &Sequential| weights(m).iter().flatten().all(|v| v.is_finite());
        match model.fit(&x, &y, fit) {
            Ok(_) => assert!(
                finite(&model),
                "lr {lr}: fit returned Ok with non-finite weights"
            ),
            Err(e) => {
                let e = format!("{e:#}");
                assert!(e.contains("training stopped"), "lr {lr}: {e}");
                let good: usize = e
                    .split("end of epoch ")
                    .nth(1)
                    .and_then(|s| s.split('.').next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("lr {lr}: {e}"));
                assert!(finite(&model), "lr {lr}: non-finite weights after {e}");
                assert_eq!(
                    model.optimizer_iterations(),
                    4 * good as u64,
                    "lr {lr}: {e}"
                );
                if good == 0 {
                    assert_eq!(weights(&model), initial, "lr {lr}");
                }
                println!("lr {lr}: {e}");
            }
        }
    }
}

/// TerminateOnNaN on its own: weights that became NaN while the loss stayed
/// finite (what a NaN behind a ReLU does) stop training and are put back.
#[test]
fn terminate_on_nan_catches_non_finite_weights_behind_a_finite_loss() {
    use cifar10_cnn::train::{BatchLogs, Callback, TerminateOnNaN};
    let mut model = small_model(5, 4);
    model.compile(Adam::default()).unwrap();
    let before = weights(&model);
    let mut cb = TerminateOnNaN::default();
    cb.on_epoch_begin(&mut model, 3).unwrap();
    let (name, var) = model.named_vars()[2].clone();
    let var = var.clone();
    let mut poisoned: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
    poisoned[1] = f32::NAN;
    var.set(&Tensor::from_vec(poisoned, var.shape(), &Device::Cpu).unwrap())
        .unwrap();
    let logs = BatchLogs {
        loss: 0.7,
        correct: 3,
        size: 16,
        skipped: None,
    };
    let e = format!(
        "{:#}",
        cb.on_batch_end(&mut model, 3, 7, &logs).unwrap_err()
    );
    assert!(
        e.contains(&format!("1 values of {name} became NaN or infinite"))
            && e.contains("epoch 3 after 7 batches")
            && e.contains("end of epoch 2"),
        "{e}"
    );
    assert_eq!(weights(&model), before);
}

/// A model whose output is not one vector of class scores per image (a
/// convolution ending in (10, 1, 1), no Flatten) cannot be compiled,
/// trained, evaluated or asked to predict: a softmax over its last axis
/// would be over the wrong thing.
#[test]
fn outputs_that_are_not_class_vectors_are_refused() {
    let mut model = Sequential::on(&[3, 8, 8], 0, &Device::Cpu).unwrap();
    model.add(conv2d(10, 8)).unwrap().add(softmax()).unwrap();
    let e = format!("{:#}", model.compile(Adam::default()).err().unwrap());
    assert!(
        e.contains("(None, 10, 1, 1)") && e.contains("flatten()"),
        "{e}"
    );
    let data = common::synthetic(8, 10, 8, 1);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    let fit = Fit {
        verbose: 0,
        ..Fit::default()
    };
    assert!(format!("{:#}", model.fit(&x, &y, fit).err().unwrap()).contains("flatten()"));
    assert!(format!("{:#}", model.predict(&x).err().unwrap()).contains("flatten()"));
    assert!(format!("{:#}", model.evaluate(&x, &y).err().unwrap()).contains("flatten()"));
}

/// Settings that cannot train are refused when they are given, not in
/// the middle of `fit`.
#[test]
fn impossible_settings_are_refused_up_front() {
    let mut model = small_model(0, 4);
    for lr in [-1e-3, 0.0, f64::NAN, f64::INFINITY] {
        let e = format!("{:#}", model.compile(Adam::new(lr)).err().unwrap());
        assert!(
            e.contains("learning_rate must be a positive number"),
            "{lr}: {e}"
        );
    }
    let mut adam = Adam::default();
    adam.beta_2 = 1.0;
    assert!(format!("{:#}", model.compile(adam).err().unwrap()).contains("beta_2"));
    use cifar10_cnn::config::Settings;
    for (name, s) in [
        (
            "BATCH_SIZE=0",
            Settings {
                batch_size: 0,
                ..Settings::default()
            },
        ),
        (
            "TRAIN_SIZE=0",
            Settings {
                train_size: 0,
                ..Settings::default()
            },
        ),
        (
            "EPOCHS=0",
            Settings {
                epochs: 0,
                ..Settings::default()
            },
        ),
    ] {
        let e = format!("{:#}", s.check().err().unwrap());
        assert!(e.contains(name) && e.contains("at least 1"), "{e}");
    }
    assert!(Settings::default().check().is_ok());
    let file = tempfile::NamedTempFile::new().unwrap();
    let s = Settings {
        results_dir: file.path().to_path_buf(),
        ..Settings::default()
    };
    assert!(format!("{:#}", s.check().err().unwrap()).contains("is a file"));
}

/// Label smoothing trains on `y·(1 − s) + s/classes`, exactly as training
/// on labels smoothed by hand would, while the validation metrics score
/// against the true labels; values outside [0, 1) are refused.
#[test]
fn label_smoothing_softens_the_training_targets_only() {
    let data = common::synthetic(96, 4, 8, 21);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    let val = common::synthetic(40, 4, 8, 22);
    let (xv, yv) = (val.images_f32().unwrap(), val.labels_one_hot().unwrap());
    let s = 0.2;
    let soft = ((&y * (1.0 - s)).unwrap() + s / 4.0).unwrap();
    let run = |targets: &Tensor, smoothing| {
        let mut m = small_model(3, 4);
        let h = m
            .fit(
                &x,
                targets,
                Fit {
                    batch_size: 32,
                    epochs: 2,
                    verbose: 0,
                    validation_data: Some((xv.clone(), yv.clone())),
                    label_smoothing: smoothing,
                    ..Fit::default()
                },
            )
            .unwrap();
        (h, weights(&m))
    };
    let (by_fit, w_fit) = run(&y, s);
    let (by_hand, w_hand) = run(&soft, 0.0);
    let (plain, _) = run(&y, 0.0);
    assert_eq!(by_fit.loss, by_hand.loss);
    assert_eq!(by_fit.val_loss, by_hand.val_loss);
    assert_eq!(by_fit.val_acc, by_hand.val_acc);
    assert_eq!(w_fit, w_hand);
    assert_ne!(by_fit.loss, plain.loss, "the smoothing changed nothing");
    for bad in [-0.1, 1.0, f64::NAN] {
        let e = small_model(3, 4)
            .fit(
                &x,
                &y,
                Fit {
                    label_smoothing: bad,
                    verbose: 0,
                    ..Fit::default()
                },
            )
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("label_smoothing must be"),
            "{e:#}"
        );
    }
}

/// The CLI checks its arguments before it loads or trains anything: a bad
/// one fails at once and writes nothing.
#[test]
fn the_cli_refuses_bad_arguments_before_training() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let file = work.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--epochs", "0"], "--epochs 0"),
        (&["--test-size", "0"], "--test-size 0"),
        (&["--train-size", "0"], "--train-size 0"),
        (&["--batch-size", "0"], "--batch-size 0"),
        (&["--validation-split", "1.5"], "validation_split"),
        (&["--backup-dir", file.to_str().unwrap()], "is a file"),
    ];
    for (args, expected) in cases {
        let start = std::time::Instant::now();
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_cifar10-cnn"))
            .arg("train")
            .args(["--data", "/nonexistent-cifar10"])
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("nonexistent"),
            "{args:?}: checked after loading: {stderr}"
        );
        assert!(start.elapsed().as_secs() < 10, "{args:?}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_cifar10-cnn"))
        .args(["train", "--data", "/nonexistent-cifar10", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("--out") && stderr.contains("is a file"),
        "{stderr}"
    );
}

/// `train_on_batch` checks its batch against the model: another image
/// size (smaller or larger), other channels, no images, labels of another
/// shape; nothing is trained.
#[test]
fn train_on_batch_checks_its_inputs() {
    let mut model = small_model(0, 4);
    model.compile(Adam::default()).unwrap();
    let zeros =
        |dims: &[usize]| Tensor::zeros(dims, candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = zeros(&[2, 4]);
    for dims in [[2, 3, 7, 8], [2, 3, 16, 16], [2, 1, 8, 8]] {
        let e = format!(
            "{:#}",
            model.train_on_batch(&zeros(&dims), &y).err().unwrap()
        );
        assert!(e.contains("the model takes [N, 3, 8, 8]"), "{dims:?}: {e}");
    }
    let e = format!(
        "{:#}",
        model
            .train_on_batch(&zeros(&[0, 3, 8, 8]), &zeros(&[0, 4]))
            .err()
            .unwrap()
    );
    assert!(e.contains("no images"), "{e}");
    let e = format!(
        "{:#}",
        model
            .train_on_batch(&zeros(&[2, 3, 8, 8]), &zeros(&[2, 5]))
            .err()
            .unwrap()
    );
    assert!(e.contains("to_categorical"), "{e}");
    assert_eq!(model.optimizer_iterations(), 0);
}

/// A finished run is not lost if saving fails afterwards: `fit` keeps its
/// backup, so the same cell run again (a new model, the same seed) trains
/// nothing and returns the finished model and history; the backup goes once
/// the caller removes it after saving.
#[test]
fn a_finished_run_survives_until_the_caller_has_saved_it() {
    use cifar10_cnn::train::BackupAndRestore;
    let data = common::synthetic(96, 4, 8, 11);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("backup");
    let fit = || Fit {
        batch_size: 32,
        epochs: 2,
        validation_split: 0.25,
        verbose: 0,
        backup_dir: Some(dir.clone()),
        ..Fit::default()
    };
    let mut first = small_model(6, 4);
    let h1 = first.fit(&x, &y, fit()).unwrap();
    assert!(
        BackupAndRestore::file(&dir).exists(),
        "the backup was removed before saving"
    );
    // The save fails (its path is taken by a folder): nothing is lost.
    let taken = work.path().join("model");
    std::fs::create_dir_all(taken.join("cifar10_cnn.json")).unwrap();
    assert!(first.save(taken.join("cifar10_cnn")).is_err());
    let mut again = small_model(6, 4);
    let h2 = again.fit(&x, &y, fit()).unwrap();
    assert_eq!(h1, h2);
    assert_eq!(weights(&again), weights(&first));
    assert_eq!(again.optimizer_iterations(), first.optimizer_iterations());
    // A second fit of the finished model itself is a new run from there.
    let h3 = first.fit(&x, &y, fit()).unwrap();
    assert_eq!(h3.epochs(), 2);
    assert_ne!(h3.loss, h1.loss);
    BackupAndRestore::remove(&dir).unwrap();
    assert!(!BackupAndRestore::file(&dir).exists());
    BackupAndRestore::remove(&dir).unwrap(); // nothing there: fine
}

/// A backup is only carried on by its own run: another seed, other data,
/// augmentation switched on, or fewer epochs than it has done are refused
/// with what differs; the same run resumes.
#[test]
fn a_backup_refuses_to_resume_another_run() {
    let data = common::synthetic(64, 4, 8, 12);
    let (x, y) = (data.images_f32().unwrap(), data.labels_one_hot().unwrap());
    let other = common::synthetic(64, 4, 8, 13);
    let (x2, y2) = (other.images_f32().unwrap(), other.labels_one_hot().unwrap());
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("backup");
    let fit = |epochs, augment| Fit {
        batch_size: 32,
        epochs,
        verbose: 0,
        augment,
        backup_dir: Some(dir.clone()),
        ..Fit::default()
    };
    small_model(7, 4).fit(&x, &y, fit(3, false)).unwrap();
    let refused = |seed, x: &Tensor, y: &Tensor, f: Fit| {
        format!("{:#}", small_model(seed, 4).fit(x, y, f).err().unwrap())
    };
    let e = refused(8, &x, &y, fit(3, false));
    assert!(
        e.contains("backup of another run") && e.contains("another seed"),
        "{e}"
    );
    let e = refused(7, &x2, &y2, fit(3, false));
    assert!(e.contains("other training data"), "{e}");
    let e = refused(7, &x, &y, fit(3, true));
    assert!(e.contains("augment false (this run: true)"), "{e}");
    let e = refused(
        7,
        &x,
        &y,
        Fit {
            label_smoothing: 0.1,
            ..fit(3, false)
        },
    );
    assert!(e.contains("label_smoothing 0 (this run: 0.1)"), "{e}");
    let e = refused(7, &x, &y, fit(2, false));
    assert!(e.contains("3 epochs, more than the 2 asked for"), "{e}");
    // The same run, asked for more epochs, carries on.
    let h = small_model(7, 4).fit(&x, &y, fit(4, false)).unwrap();
    assert_eq!(h.epochs(), 4);
}
