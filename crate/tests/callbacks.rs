//! `fit`'s arguments and Keras's callbacks: EarlyStopping and
//! ReduceLROnPlateau against Keras 3 itself (fixtures made by
//! `scripts/fixtures/keras_callbacks.py`), and each callback inside `fit`
//! on a tiny model, with metric sequences scripted through the learning rate.

mod common;

use candle_core::{Device, Tensor};
use cifar10_cnn::model::{layers::*, Sequential};
use cifar10_cnn::train::{
    Adam, CSVLogger, Callback, EarlyStopping, Fit, LearningRateScheduler, Logs, Mode,
    ModelCheckpoint, ReduceLROnPlateau, RunIdentity, RunState,
};
use std::cell::RefCell;
use std::rc::Rc;

/// Flatten, Dense, softmax on 4x4 images: a few milliseconds an epoch.
fn tiny_model(seed: u64) -> Sequential {
    let mut m = Sequential::on(&[3, 4, 4], seed, &Device::Cpu).unwrap();
    for l in [flatten(), dense(4).into(), softmax()] {
        m.add(l).unwrap();
    }
    m.compile(Adam::default()).unwrap();
    m
}

fn data(n: usize, seed: u64) -> (Tensor, Tensor) {
    let d = common::synthetic(n, 4, 4, seed);
    (d.images_f32().unwrap(), d.labels_one_hot().unwrap())
}

fn weights(m: &Sequential) -> Vec<Vec<f32>> {
    m.params()
        .iter()
        .map(|p| p.var.flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

fn quiet() -> Fit {
    Fit {
        batch_size: 16,
        verbose: 0,
        ..Fit::default()
    }
}

/// The weights at the end of every epoch, and the epochs that began.
#[derive(Clone, Default)]
struct Recorder {
    weights: Rc<RefCell<Vec<Vec<Vec<f32>>>>>,
    began: Rc<RefCell<Vec<usize>>>,
}

impl Callback for Recorder {
    fn on_epoch_begin(&mut self, _: &mut Sequential, epoch: usize) -> anyhow::Result<()> {
        self.began.borrow_mut().push(epoch);
        Ok(())
    }
    fn on_epoch_end(
        &mut self,
        model: &mut Sequential,
        _: usize,
        _: &Logs,
        _: &mut RunState,
    ) -> anyhow::Result<()> {
        self.weights.borrow_mut().push(weights(model));
        Ok(())
    }
}

/// The learning rate of epoch e (0-based) is `rates[e]`: a metric sequence
/// a callback can monitor as `learning_rate`.
fn scripted(rates: &'static [f64]) -> LearningRateScheduler {
    LearningRateScheduler::new(move |e, _| rates[e])
}

fn run_state() -> RunState {
    RunState {
        history: Default::default(),
        epoch: 0,
        epochs: 100,
        stop_training: false,
        rng_seed: 0,
        train_samples: 1,
        batch_size: 1,
        verbose: 0,
        identity: RunIdentity::default(),
    }
}

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keras_callbacks.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn mode(config: &serde_json::Value) -> Mode {
    match config["mode"].as_str() {
        Some("min") => Mode::Min,
        Some("max") => Mode::Max,
        _ => Mode::Auto,
    }
}

/// Keras 3's EarlyStopping, given the same values, stops after the same
/// epoch and finds the same best one: patience, min_delta (also negative),
/// baseline, start_from_epoch, both directions.
#[test]
fn early_stopping_stops_where_keras_does() {
    let cases = fixture()["early_stopping"].as_array().unwrap().clone();
    assert_eq!(cases.len(), 9);
    let mut model = tiny_model(0);
    for case in cases {
        let c = &case["config"];
        let monitor = c["monitor"].as_str().unwrap();
        let mut cb = EarlyStopping::new(monitor)
            .patience(c["patience"].as_u64().unwrap_or(0) as usize)
            .min_delta(c["min_delta"].as_f64().unwrap_or(0.0))
            .start_from_epoch(c["start_from_epoch"].as_u64().unwrap_or(0) as usize)
            .mode(mode(c));
        if let Some(b) = c["baseline"].as_f64() {
            cb = cb.baseline(b);
        }
        let mut run = run_state();
        cb.on_train_begin(&mut model, &mut run).unwrap();
        let mut ran = 0;
        for (i, v) in case["values"].as_array().unwrap().iter().enumerate() {
            ran = i + 1;
            let logs = Logs::new([(monitor, v.as_f64().unwrap())]);
            cb.on_epoch_end(&mut model, i + 1, &logs, &mut run).unwrap();
            if run.stop_training {
                break;
            }
        }
        let got = (ran, run.stop_training, cb.best_epoch(), cb.stopped_epoch());
        let stopped = case["stopped"].as_bool().unwrap();
        let want = (
            case["epochs_run"].as_u64().unwrap() as usize,
            stopped,
            case["best_epoch"].as_u64().unwrap() as usize,
            if stopped { ran } else { 0 },
        );
        assert_eq!(got, want, "{c}");
    }
}

/// Keras 3's ReduceLROnPlateau, given the same values, logs the same rate
/// each epoch and trains the next with the same (Keras's rates are f32).
#[test]
fn reduce_lr_on_plateau_lowers_the_rate_where_keras_does() {
    let cases = fixture()["reduce_lr_on_plateau"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let c = &case["config"];
        let monitor = c["monitor"].as_str().unwrap();
        let mut model = tiny_model(0);
        model
            .compile(Adam::new(c["learning_rate"].as_f64().unwrap()))
            .unwrap();
        let mut cb = ReduceLROnPlateau::new(monitor)
            .mode(mode(c))
            .factor(c["factor"].as_f64().unwrap_or(0.1))
            .patience(c["patience"].as_u64().unwrap_or(10) as usize)
            .cooldown(c["cooldown"].as_u64().unwrap_or(0) as usize)
            .min_lr(c["min_lr"].as_f64().unwrap_or(0.0));
        if let Some(d) = c["min_delta"].as_f64() {
            cb = cb.min_delta(d);
        }
        let mut run = run_state();
        cb.on_train_begin(&mut model, &mut run).unwrap();
        let values = case["values"].as_array().unwrap();
        let want = case["learning_rates"].as_array().unwrap();
        for (i, (v, w)) in values.iter().zip(want).enumerate() {
            let logged = model.learning_rate().unwrap();
            let logs = Logs::new([(monitor, v.as_f64().unwrap())]);
            cb.on_epoch_end(&mut model, i + 1, &logs, &mut run).unwrap();
            let next = model.learning_rate().unwrap();
            for (got, want) in [(logged, &w[0]), (next, &w[1])] {
                let want = want.as_f64().unwrap();
                assert!(
                    (got - want).abs() <= 1e-6 * want,
                    "{c}, epoch {}: {got} vs Keras's {want}",
                    i + 1
                );
            }
        }
    }
}

/// Scripted `learning_rate` 1, 3, 2, 2.5 (e-3), patience 2, mode max: the
/// best is epoch 2 and training stops after epoch 4, with epoch 2's weights
/// back bit for bit. Run to its end without stopping (3 epochs), Keras 3
/// still restores the best epoch's weights.
#[test]
fn early_stopping_in_fit_stops_and_restores_the_best_weights() {
    const RATES: &[f64] = &[1e-3, 3e-3, 2e-3, 2.5e-3, 1e-3, 1e-3];
    let (x, y) = data(64, 1);
    for epochs in [6, 3] {
        let mut model = tiny_model(1);
        let rec = Recorder::default();
        let history = model
            .fit(
                &x,
                &y,
                Fit {
                    epochs,
                    callbacks: vec![
                        scripted(RATES).into(),
                        rec.clone().into(),
                        EarlyStopping::new("learning_rate")
                            .mode(Mode::Max)
                            .patience(2)
                            .restore_best_weights(true)
                            .into(),
                    ],
                    ..quiet()
                },
            )
            .unwrap();
        let ran = epochs.min(4);
        assert_eq!(history.learning_rate, RATES[..ran], "epochs {epochs}");
        let snaps = rec.weights.borrow();
        assert_eq!(snaps.len(), ran);
        assert_ne!(snaps[1], snaps[ran - 1]);
        assert_eq!(weights(&model), snaps[1], "epochs {epochs}");
    }
}

/// Without restore_best_weights the last weights stay.
#[test]
fn early_stopping_without_restore_keeps_the_last_weights() {
    let (x, y) = data(64, 1);
    let mut model = tiny_model(1);
    let rec = Recorder::default();
    let history = model
        .fit(
            &x,
            &y,
            Fit {
                epochs: 6,
                callbacks: vec![
                    scripted(&[1e-3, 3e-3, 2e-3, 2.5e-3, 1e-3, 1e-3]).into(),
                    rec.clone().into(),
                    EarlyStopping::new("learning_rate")
                        .mode(Mode::Max)
                        .patience(2)
                        .into(),
                ],
                ..quiet()
            },
        )
        .unwrap();
    assert_eq!(history.epochs(), 4);
    assert_eq!(weights(&model), rec.weights.borrow()[3]);
}

/// Reads the checkpoint back at the end of each epoch (after the
/// checkpoint wrote it): it must load whole and hold the model's weights.
struct LoadsBack(std::path::PathBuf, Rc<RefCell<usize>>);

impl Callback for LoadsBack {
    fn on_epoch_end(
        &mut self,
        model: &mut Sequential,
        epoch: usize,
        _: &Logs,
        _: &mut RunState,
    ) -> anyhow::Result<()> {
        let path = self.0.join(format!("m-{epoch:02}"));
        let loaded = Sequential::load_on(&path, &Device::Cpu)?;
        assert_eq!(weights(&loaded), weights(model), "{}", path.display());
        *self.1.borrow_mut() += 1;
        Ok(())
    }
}

/// ModelCheckpoint saves every epoch under its formatted name, each file
/// loadable as it is written; with save_best_only, only improvements, so
/// that the file holds the best epoch's weights.
#[test]
fn model_checkpoint_writes_loadable_models_and_keeps_the_best() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    let (x, y) = data(64, 2);
    let mut model = tiny_model(2);
    let rec = Recorder::default();
    let loaded = Rc::new(RefCell::new(0));
    let every = dir.join("m-{epoch:02d}").to_str().unwrap().to_string();
    let best = dir
        .join("best-{learning_rate:.4f}")
        .to_str()
        .unwrap()
        .to_string();
    model
        .fit(
            &x,
            &y,
            Fit {
                epochs: 4,
                validation_split: 0.25,
                callbacks: vec![
                    scripted(&[1e-3, 3e-3, 2e-3, 2.5e-3]).into(),
                    rec.clone().into(),
                    ModelCheckpoint::new(every).into(),
                    LoadsBack(dir.clone(), loaded.clone()).into(),
                    ModelCheckpoint::new(best)
                        .monitor("learning_rate")
                        .mode(Mode::Max)
                        .save_best_only(true)
                        .into(),
                ],
                ..quiet()
            },
        )
        .unwrap();
    assert_eq!(*loaded.borrow(), 4);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "best-0.0010.json",
            "best-0.0030.json",
            "m-01.json",
            "m-02.json",
            "m-03.json",
            "m-04.json"
        ]
    );
    let best = Sequential::load_on(dir.join("best-0.0030"), &Device::Cpu).unwrap();
    assert_eq!(weights(&best), rec.weights.borrow()[1]);
}

/// Never improving (min_delta 10 on a loss near 1.4), patience 1, factor
/// 0.5, cooldown 2, min_lr 3e-4: the History's rates, as Keras logs them
/// (the rate the epoch trained with).
#[test]
fn reduce_lr_on_plateau_in_fit_respects_cooldown_and_min_lr() {
    let (x, y) = data(64, 3);
    let mut model = tiny_model(3);
    let history = model
        .fit(
            &x,
            &y,
            Fit {
                epochs: 6,
                callbacks: vec![ReduceLROnPlateau::new("loss")
                    .min_delta(10.0)
                    .patience(1)
                    .factor(0.5)
                    .cooldown(2)
                    .min_lr(3e-4)
                    .into()],
                ..quiet()
            },
        )
        .unwrap();
    let want = [1e-3, 1e-3, 5e-4, 5e-4, 3e-4, 3e-4];
    for (got, want) in history.learning_rate.iter().zip(want) {
        assert!((got - want).abs() < 1e-12, "{:?}", history.learning_rate);
    }
    assert_eq!(history.learning_rate.len(), 6);
}

/// The schedule gets Keras's 0-based epoch and the current rate, and sets
/// the rate the epoch trains with, as the History shows; without it the
/// History holds the optimizer's constant rate.
#[test]
fn learning_rate_scheduler_sets_the_rate_of_each_epoch() {
    let (x, y) = data(32, 4);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let mut model = tiny_model(4);
    let history = model
        .fit(
            &x,
            &y,
            Fit {
                epochs: 4,
                initial_epoch: 1,
                callbacks: vec![LearningRateScheduler::new(move |e, lr| {
                    s.borrow_mut().push((e, lr));
                    if e == 1 {
                        4e-3
                    } else {
                        lr * 0.5
                    }
                })
                .into()],
                ..quiet()
            },
        )
        .unwrap();
    assert_eq!(history.learning_rate, [4e-3, 2e-3, 1e-3]);
    assert_eq!(*seen.borrow(), [(1, 1e-3), (2, 4e-3), (3, 2e-3)]);

    let mut model = tiny_model(4);
    model.compile(Adam::new(2e-3)).unwrap();
    let history = model
        .fit(
            &x,
            &y,
            Fit {
                epochs: 2,
                ..quiet()
            },
        )
        .unwrap();
    assert_eq!(history.learning_rate, [2e-3, 2e-3]);
}

/// CSVLogger's file is Keras's: `epoch` 0-based, the names sorted, the
/// values as the History has them; without validation the `val_` columns
/// are `NA`; `append` adds rows under the same header; a separator.
#[test]
fn csv_logger_writes_keras_rows() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("log.csv");
    let (x, y) = data(64, 5);
    let mut model = tiny_model(5);
    let fit = |model: &mut Sequential, split, append| {
        model
            .fit(
                &x,
                &y,
                Fit {
                    epochs: 2,
                    validation_split: split,
                    callbacks: vec![CSVLogger::new(&path).append(append).into()],
                    ..quiet()
                },
            )
            .unwrap()
    };
    let h = fit(&mut model, 0.25, false);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss"
    );
    assert_eq!(lines.len(), 3);
    for (i, line) in lines[1..].iter().enumerate() {
        let row: Vec<f64> = line.split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(
            row,
            [
                i as f64,
                h.acc[i],
                h.learning_rate[i],
                h.loss[i],
                h.val_acc[i],
                h.val_loss[i]
            ]
        );
    }
    let h2 = fit(&mut model, 0.0, true);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(
        lines[3],
        format!("0,{},0.001,{},NA,NA", h2.acc[0], h2.loss[0])
    );

    let mut model = tiny_model(5);
    model
        .fit(
            &x,
            &y,
            Fit {
                callbacks: vec![CSVLogger::new(&path).separator(";").into()],
                ..quiet()
            },
        )
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "not appended: {text}");
    assert!(text.starts_with("epoch;accuracy;learning_rate;loss;val_accuracy;val_loss\n0;"));
}

/// A callback written here, as in a notebook cell, stops training by
/// setting `run.stop_training`; `on_train_end` still runs.
#[test]
fn a_user_callback_stops_training() {
    struct StopAt(usize, Rc<RefCell<bool>>);
    impl Callback for StopAt {
        fn on_epoch_end(
            &mut self,
            _: &mut Sequential,
            epoch: usize,
            logs: &Logs,
            run: &mut RunState,
        ) -> anyhow::Result<()> {
            assert_eq!(logs.names(), ["loss", "accuracy", "learning_rate"]);
            run.stop_training |= epoch == self.0;
            Ok(())
        }
        fn on_train_end(&mut self, _: &mut Sequential, run: &RunState) -> anyhow::Result<()> {
            *self.1.borrow_mut() = run.stop_training;
            Ok(())
        }
    }
    let (x, y) = data(32, 6);
    let mut model = tiny_model(6);
    let ended = Rc::new(RefCell::new(false));
    let history = model
        .fit(
            &x,
            &y,
            Fit {
                epochs: 10,
                callbacks: vec![StopAt(3, ended.clone()).into()],
                ..quiet()
            },
        )
        .unwrap();
    assert_eq!(history.epochs(), 3);
    assert_eq!(model.optimizer_iterations(), 3 * 2);
    assert!(*ended.borrow());
}

/// A monitor fit does not log, a path naming one, or a name whose
/// direction auto cannot tell, is refused before any training, with the
/// names that exist.
#[test]
fn unknown_monitors_are_refused_before_training() {
    let (x, y) = data(32, 7);
    let refused = |split: f64, cb: Box<dyn Callback>| {
        let mut model = tiny_model(7);
        let before = weights(&model);
        let e = model
            .fit(
                &x,
                &y,
                Fit {
                    epochs: 2,
                    validation_split: split,
                    callbacks: vec![cb],
                    ..quiet()
                },
            )
            .unwrap_err();
        assert_eq!(model.optimizer_iterations(), 0);
        assert_eq!(weights(&model), before);
        format!("{e:#}")
    };
    let e = refused(0.25, EarlyStopping::new("val_acc").into());
    assert!(
        e.contains("\"val_acc\"")
            && e.contains("loss, accuracy, val_loss, val_accuracy, learning_rate"),
        "{e}"
    );
    let e = refused(0.0, EarlyStopping::default().into());
    assert!(
        e.contains("\"val_loss\"") && e.contains("validation_split or validation_data"),
        "{e}"
    );
    let e = refused(0.0, ReduceLROnPlateau::new("val_accuracy").into());
    assert!(e.contains("ReduceLROnPlateau"), "{e}");
    let e = refused(0.0, ModelCheckpoint::new("m-{val_loss:.2f}").into());
    assert!(e.contains("val_loss") && e.contains("epoch, loss"), "{e}");
    let e = refused(
        0.25,
        ModelCheckpoint::new("m")
            .monitor("learning_rate")
            .save_best_only(true)
            .into(),
    );
    assert!(e.contains("Mode::Min"), "{e}");
    let e = refused(0.0, ReduceLROnPlateau::new("loss").factor(1.5).into());
    assert!(e.contains("factor"), "{e}");
}

/// validation_data is what the epochs validate on (the split is then
/// ignored: every sample trains), and it is checked like x and y.
#[test]
fn validation_data_is_used_and_checked() {
    let (x, y) = data(48, 8);
    let (xv, yv) = data(20, 9);
    let mut model = tiny_model(8);
    let history = model
        .fit(
            &x,
            &y,
            Fit {
                validation_split: 0.5,
                validation_data: Some((xv.clone(), yv.clone())),
                ..quiet()
            },
        )
        .unwrap();
    assert_eq!(model.optimizer_iterations(), 3);
    let score = model.evaluate_with(&xv, &yv, 16).unwrap();
    assert_eq!(
        (history.val_loss[0], history.val_acc[0]),
        (score.loss, score.accuracy)
    );

    let bad = Tensor::zeros((20, 3, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = model
        .fit(
            &x,
            &y,
            Fit {
                validation_data: Some((bad, yv.clone())),
                ..quiet()
            },
        )
        .unwrap_err();
    assert!(format!("{e:#}").contains("validation_data"), "{e:#}");
    let nan = (xv.clone() * f64::NAN).unwrap();
    let e = model
        .fit(
            &x,
            &y,
            Fit {
                validation_data: Some((nan, yv)),
                ..quiet()
            },
        )
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("validation_data's x holds"),
        "{e:#}"
    );
    assert_eq!(model.optimizer_iterations(), 3);
}

/// initial_epoch 2 of 5: epochs 3, 4, 5 run, the History holds those;
/// initial_epoch at epochs trains nothing, as in Keras.
#[test]
fn initial_epoch_numbers_the_epochs() {
    let (x, y) = data(32, 10);
    let mut model = tiny_model(10);
    let rec = Recorder::default();
    let fit = |initial_epoch, rec: &Recorder| Fit {
        epochs: 5,
        initial_epoch,
        callbacks: vec![rec.clone().into()],
        ..quiet()
    };
    let history = model.fit(&x, &y, fit(2, &rec)).unwrap();
    assert_eq!(*rec.began.borrow(), [3, 4, 5]);
    assert_eq!(history.epochs(), 3);
    assert_eq!(model.optimizer_iterations(), 3 * 2);
    let history = model.fit(&x, &y, fit(5, &Recorder::default())).unwrap();
    assert_eq!(history.epochs(), 0);
    assert_eq!(model.optimizer_iterations(), 3 * 2);
}

/// The batch size of evaluate and predict changes how much runs at once,
/// not the result.
#[test]
fn evaluate_and_predict_batch_sizes_give_the_default_results() {
    let (x, y) = data(45, 11);
    let mut model = tiny_model(11);
    model.fit(&x, &y, quiet()).unwrap();
    let default = model.evaluate(&x, &y).unwrap();
    let probs = model.predict(&x).unwrap();
    for b in [1, 7, 32, 128] {
        let s = model.evaluate_with(&x, &y, b).unwrap();
        assert!((s.loss - default.loss).abs() < 1e-6, "batch {b}");
        assert_eq!(s.accuracy, default.accuracy, "batch {b}");
        let p = model.predict_with(&x, b).unwrap();
        let diff = (p - &probs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "batch {b}: {diff}");
    }
    assert!(model.evaluate_with(&x, &y, 0).is_err());
    assert!(model.predict_with(&x, 0).is_err());
}

#[test]
fn fit_defaults_are_keras_defaults() {
    let f = Fit::default();
    assert_eq!(
        (
            f.batch_size,
            f.epochs,
            f.verbose,
            f.shuffle,
            f.initial_epoch
        ),
        (32, 1, 1, true, 0)
    );
    assert!(f.validation_split == 0.0 && f.validation_data.is_none() && f.callbacks.is_empty());
    let e = tiny_model(0)
        .fit(
            &data(8, 0).0,
            &data(8, 0).1,
            Fit {
                verbose: 3,
                ..Fit::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("verbose must be 0"), "{e}");
}

/// The child of `verbose_prints_what_keras_does`: one fit between markers.
#[test]
fn verbose_child() {
    let Ok(v) = std::env::var("CIFAR10_CNN_VERBOSE_CHILD") else {
        return;
    };
    let (x, y) = data(32, 12);
    let mut model = tiny_model(12);
    println!("<<<");
    model
        .fit(
            &x,
            &y,
            Fit {
                epochs: 2,
                batch_size: 8,
                verbose: v.parse().unwrap(),
                ..Fit::default()
            },
        )
        .unwrap();
    println!(">>>");
}

/// verbose 0 prints nothing; 2 an `Epoch k/n` line and a line per epoch;
/// 1 into a pipe (no terminal) Keras's bar at the quarters of each epoch
/// (here steps 1, 2, 3 of 4), the full bar with the epoch's metrics, and
/// from the second epoch the curve so far.
#[test]
fn verbose_prints_what_keras_does() {
    for (v, lines) in [(0, 0), (1, 11), (2, 4)] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "verbose_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CIFAR10_CNN_VERBOSE_CHILD", v.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let printed = text
            .split("<<<\n")
            .nth(1)
            .and_then(|t| t.split(">>>").next())
            .unwrap_or_else(|| panic!("no markers in {text}"));
        assert_eq!(printed.lines().count(), lines, "verbose {v}: {printed:?}");
        match v {
            2 => assert!(printed.starts_with("Epoch 1/2\n4/4 - "), "{printed:?}"),
            1 => {
                let l: Vec<&str> = printed.lines().collect();
                assert_eq!(l[0], "Epoch 1/2");
                assert!(
                    l[1].starts_with("1/4 [======>.......................] - ETA: "),
                    "{printed:?}"
                );
                assert!(
                    l[3].starts_with("3/4 [=====================>........] - ETA: "),
                    "{printed:?}"
                );
                assert!(
                    l[4].starts_with("4/4 [==============================] - "),
                    "{printed:?}"
                );
                assert!(
                    l[4].contains("s - loss: ") && l[4].contains(" - acc: "),
                    "{printed:?}"
                );
                assert_eq!(l[5], "Epoch 2/2");
                assert!(
                    l[10].starts_with("  loss ") && l[10].contains("(best "),
                    "{printed:?}"
                );
            }
            _ => {}
        }
    }
}
