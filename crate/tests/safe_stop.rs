//! The safe stop: a file `STOP` in the backup folder ends training after the
//! current epoch, with the model of that epoch; after a real kill, a rerun
//! restores the backup and, with the file there, trains no further; deleting
//! the file carries the run on exactly as if it had never stopped.

mod common;

use candle_core::{Device, Tensor};
use cifar10_cnn::model::{layers::*, Sequential};
use cifar10_cnn::train::{Adam, BackupAndRestore, BatchLogs, Callback, Fit, StopFile};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Flatten, Dense, softmax on 4x4 images: a few milliseconds an epoch.
fn tiny_model(seed: u64) -> Sequential {
    let mut m = Sequential::on(&[3, 4, 4], seed, &Device::Cpu).unwrap();
    for l in [flatten(), dense(4).into(), softmax()] {
        m.add(l).unwrap();
    }
    m.compile(Adam::default()).unwrap();
    m
}

fn data(n: usize) -> (Tensor, Tensor) {
    let d = common::synthetic(n, 4, 4, 5);
    (d.images_f32().unwrap(), d.labels_one_hot().unwrap())
}

fn fit(epochs: usize, backup: Option<&Path>, verbose: u8) -> Fit {
    Fit {
        batch_size: 8,
        epochs,
        verbose,
        validation_split: 0.25,
        backup_dir: backup.map(Path::to_path_buf),
        ..Fit::default()
    }
}

fn predictions(m: &mut Sequential, x: &Tensor) -> Vec<f32> {
    m.predict(x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// What a learner does from a terminal: creates the stop file while
/// batch `batch` of epoch `epoch` trains.
struct UserCreatesStop {
    path: PathBuf,
    epoch: usize,
    batch: usize,
}

impl Callback for UserCreatesStop {
    fn on_batch_end(
        &mut self,
        _: &mut Sequential,
        epoch: usize,
        batch: usize,
        _: &BatchLogs,
    ) -> anyhow::Result<()> {
        if (epoch, batch) == (self.epoch, self.batch) {
            std::fs::write(&self.path, "").unwrap();
        }
        Ok(())
    }
}

/// Fails `fit` at its first trained batch (which would otherwise train
/// the killed run's million epochs).
struct NoTraining;

impl Callback for NoTraining {
    fn on_batch_end(
        &mut self,
        _: &mut Sequential,
        epoch: usize,
        _: usize,
        _: &BatchLogs,
    ) -> anyhow::Result<()> {
        anyhow::bail!("epoch {epoch} trained, with STOP there")
    }
}

#[test]
fn a_stop_file_ends_training_after_the_epoch_and_deleting_it_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    let stop = StopFile::in_dir(&backup);
    let (x, y) = data(48); // 36 to train: 5 batches an epoch
    let mut model = tiny_model(3);
    let mut args = fit(6, Some(&backup), 0);
    args.callbacks = vec![Box::new(UserCreatesStop {
        path: stop.clone(),
        epoch: 2,
        batch: 1,
    })];
    let history = model.fit(&x, &y, args).unwrap();
    // Epoch 2 was finished, not cut: 2 epochs of 5 updates.
    assert_eq!(history.epochs(), 2);
    assert_eq!(model.optimizer_iterations(), 10);
    let at_stop = predictions(&mut model, &x);
    let mut two = tiny_model(3);
    two.fit(&x, &y, fit(2, None, 0)).unwrap();
    assert_eq!(
        at_stop,
        predictions(&mut two, &x),
        "the model is not that of epoch 2"
    );

    // A rerun of the cells while STOP is there: restored, nothing trained.
    let mut again = tiny_model(3);
    let history = again.fit(&x, &y, fit(6, Some(&backup), 0)).unwrap();
    assert_eq!(history.epochs(), 2);
    assert_eq!(again.optimizer_iterations(), 10);
    assert_eq!(predictions(&mut again, &x), at_stop);

    // Deleting it trains the 4 epochs left, as the run would have.
    std::fs::remove_file(&stop).unwrap();
    let mut resumed = tiny_model(3);
    let history = resumed.fit(&x, &y, fit(6, Some(&backup), 0)).unwrap();
    assert_eq!(history.epochs(), 6);
    let mut straight = tiny_model(3);
    let whole = straight.fit(&x, &y, fit(6, None, 0)).unwrap();
    assert_eq!(history.val_loss, whole.val_loss);
    assert_eq!(
        predictions(&mut resumed, &x),
        predictions(&mut straight, &x)
    );

    // Once the model is saved, removing the backup removes STOP with it,
    // so that the next run is not stopped at once.
    std::fs::write(&stop, "").unwrap();
    BackupAndRestore::remove(&backup).unwrap();
    assert!(!stop.exists() && !BackupAndRestore::file(&backup).exists());
}

/// The child of the kill test: trains "forever" with a backup, until killed.
#[test]
fn killed_child() {
    let Ok(dir) = std::env::var("CIFAR10_CNN_KILLED_CHILD") else {
        return;
    };
    let (x, y) = data(48);
    tiny_model(3)
        .fit(&x, &y, fit(1_000_000, Some(Path::new(&dir)), 0))
        .unwrap();
}

/// A real kill (SIGKILL, as evcxr's interrupt does) in the middle of a run;
/// then STOP, and the cells run again: the model of the last completed
/// epoch, restored, and no training.
#[test]
fn after_a_kill_the_stop_file_keeps_the_last_completed_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["killed_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("CIFAR10_CNN_KILLED_CHILD", &backup)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let file = BackupAndRestore::file(&backup);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !file.exists() {
        assert!(Instant::now() < deadline, "the child wrote no backup");
        assert!(child.try_wait().unwrap().is_none(), "the child ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Some epochs later, at no particular moment.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    let done = backup_epoch(&file);
    assert!(done >= 1);

    std::fs::write(StopFile::in_dir(&backup), "").unwrap();
    let (x, y) = data(48);
    let mut model = tiny_model(3);
    let mut rerun = fit(1_000_000, Some(&backup), 0);
    rerun.callbacks = vec![Box::new(NoTraining)];
    let history = model.fit(&x, &y, rerun).unwrap();
    assert_eq!(history.epochs(), done);
    assert_eq!(backup_epoch(&file), done, "it trained on");
    assert_eq!(model.optimizer_iterations(), 5 * done as u64, "it trained");
    // Bit for bit the model of epoch `done`, trained without a break.
    let mut reference = tiny_model(3);
    let straight = reference.fit(&x, &y, fit(done, None, 0)).unwrap();
    assert_eq!(history.val_loss, straight.val_loss);
    assert_eq!(predictions(&mut model, &x), predictions(&mut reference, &x));
}

/// The epoch a backup holds, read from its file's header.
fn backup_epoch(file: &Path) -> usize {
    let bytes = std::fs::read(file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let state = &meta.metadata().as_ref().unwrap()["state"];
    let state: serde_json::Value = serde_json::from_str(state).unwrap();
    state["epoch"].as_u64().unwrap() as usize
}

/// The child of `the_stop_is_announced_and_explained`.
#[test]
fn talking_child() {
    let Ok(dir) = std::env::var("CIFAR10_CNN_TALKING_CHILD") else {
        return;
    };
    let backup = PathBuf::from(dir);
    let (x, y) = data(48);
    let mut args = fit(5, Some(&backup), 1);
    args.callbacks = vec![Box::new(UserCreatesStop {
        path: StopFile::in_dir(&backup),
        epoch: 2,
        batch: 1,
    })];
    println!("<<<");
    tiny_model(3).fit(&x, &y, args).unwrap();
    println!("===");
    tiny_model(3).fit(&x, &y, fit(5, Some(&backup), 1)).unwrap();
    println!(">>>");
}

/// The first lines say how to stop; the stop says when it takes effect and
/// how to carry on; a rerun with the file there says why it trains nothing.
#[test]
fn the_stop_is_announced_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "talking_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CIFAR10_CNN_TALKING_CHILD", &backup)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let text = text.split("<<<\n").nth(1).unwrap();
    let (first, rerun) = text.split_once("===\n").unwrap();
    let stop = StopFile::in_dir(&backup).display().to_string();
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines[0], "Train on 36 samples, validate on 12 samples");
    assert_eq!(
        lines[1],
        format!("To stop after the current epoch and keep the model, create the file {stop}")
    );
    assert_eq!(lines[2], "Epoch 1/5");
    let found = format!("found {stop}: stopping at the end of epoch 2");
    assert!(lines.contains(&found.as_str()), "{first}");
    assert_eq!(
        *lines.last().unwrap(),
        format!("Stopped after epoch 2 of 5 ({stop}): the model is the one of this epoch (3 left: delete the file to train on)")
    );
    assert!(!first.contains("Epoch 3/5"), "{first}");
    assert!(
        rerun.contains(&format!(
            "{stop} is there: no further training, the model is the one of epoch 2 of 5 (3 left: delete {stop} to train on)"
        )),
        "{rerun}"
    );
    assert!(!rerun.contains("Epoch 3/5"), "{rerun}");
}
