//! A saved model is whole or absent: saves killed at any moment, saves torn
//! between the two files, and the temporaries of killed saves.

use candle_core::{Device, Tensor};
use cifar10_cnn::model::{layers::*, Sequential};
use std::path::Path;

/// Model `k` of two that differ in architecture and weights.
fn model(k: u64) -> Sequential {
    let mut m = Sequential::on(&[3, 8, 8], k, &Device::Cpu).unwrap();
    m.add(conv2d(4 + k as usize, 3)).unwrap();
    m.add(relu()).unwrap();
    m.add(flatten()).unwrap();
    m.add(dense(3)).unwrap();
    m.add(softmax()).unwrap();
    m
}

fn predictions(m: &mut Sequential) -> Vec<f32> {
    let x: Vec<f32> = (0..2 * 3 * 64).map(|i| (i as f32 * 0.1).sin()).collect();
    let x = Tensor::from_vec(x, (2, 3, 8, 8), &Device::Cpu).unwrap();
    m.predict(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// A save killed after the weights reached their name but before the JSON
/// did: the weights carry their architecture, so loading gives that whole
/// model (not model 1's architecture over model 2's weights) and repairs
/// the JSON.
#[test]
fn a_save_torn_between_its_two_files_loads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    model(1).save(&a).unwrap();
    let (mut m2, json_1) = (
        model(2),
        std::fs::read_to_string(a.with_extension("json")).unwrap(),
    );
    m2.save(&b).unwrap();
    std::fs::copy(
        b.with_extension("safetensors"),
        a.with_extension("safetensors"),
    )
    .unwrap();
    let mut loaded = Sequential::load_on(&a, &Device::Cpu).unwrap();
    assert_eq!(predictions(&mut loaded), predictions(&mut m2));
    let repaired = std::fs::read_to_string(a.with_extension("json")).unwrap();
    assert_ne!(repaired, json_1);
    assert_eq!(repaired, m2.to_json().unwrap());
    // The JSON lost altogether: the weights still make the whole model.
    std::fs::remove_file(a.with_extension("json")).unwrap();
    assert_eq!(
        predictions(&mut Sequential::load_on(&a, &Device::Cpu).unwrap()),
        predictions(&mut m2)
    );
}

/// Temporaries left by killed saves (of processes that are gone) are
/// removed by the next save of that file; a live process's are kept.
#[test]
fn the_next_save_removes_the_temporaries_of_killed_saves() {
    let dir = tempfile::tempdir().unwrap();
    let stale = [
        ".m.safetensors.4000000000.0.tmp",
        ".m.json.4000000001.3.tmp",
    ];
    let live = format!(".m.json.{}.999.tmp", std::process::id());
    for f in stale.iter().copied().chain([live.as_str()]) {
        std::fs::write(dir.path().join(f), b"half a file").unwrap();
    }
    model(1).save(dir.path().join("m")).unwrap();
    assert_eq!(temporaries(dir.path()), [live]);
}

/// Kill a process that saves two different models to one stem over and
/// over, at random moments: every time, what is on disk loads, and it is
/// one of the two models, whole; the temporaries do not pile up.
#[test]
fn saves_killed_at_random_moments_leave_a_whole_model() {
    if let Some(stem) = std::env::var_os("SAVE_LOOP_STEM") {
        // The child: save models 1 and 2 in turn until killed.
        let models = [model(1), model(2)];
        for i in 0.. {
            models[i % 2].save(&stem).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("m");
    let expected = [predictions(&mut model(1)), predictions(&mut model(2))];
    model(1).save(&stem).unwrap();
    let (mut seen, mut rng) = ([0usize; 2], 0x2545f4914f6cdd1du64);
    for _ in 0..24 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "saves_killed_at_random_moments_leave_a_whole_model",
                "--nocapture",
            ])
            .env("SAVE_LOOP_STEM", &stem)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(std::time::Duration::from_millis(30 + rng % 170));
        child.kill().unwrap();
        child.wait().unwrap();
        let mut loaded = Sequential::load_on(&stem, &Device::Cpu)
            .unwrap_or_else(|e| panic!("a killed save left an unloadable model: {e:#}"));
        let p = predictions(&mut loaded);
        let which = expected.iter().position(|e| *e == p);
        let which = which.expect("the loaded model is neither of the two saved");
        seen[which] += 1;
        assert!(
            temporaries(dir.path()).len() <= 2,
            "{:?}",
            temporaries(dir.path())
        );
    }
    println!(
        "loaded model 1 {} times, model 2 {} times",
        seen[0], seen[1]
    );
}

/// A small batch for `model(k)` and labels over its three classes.
fn batch() -> (Tensor, Tensor) {
    let x: Vec<f32> = (0..4 * 3 * 64).map(|i| (i as f32 * 0.37).cos()).collect();
    let y: Vec<f32> = (0..4 * 3).map(|i| (i % 4 == 0) as u8 as f32).collect();
    (
        Tensor::from_vec(x, (4, 3, 8, 8), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, (4, 3), &Device::Cpu).unwrap(),
    )
}

fn weights(m: &Sequential) -> Vec<Vec<f32>> {
    m.named_vars()
        .into_iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

/// Trains `model(1)` compiled with `o` three steps, saves it with its
/// optimizer, loads it, and trains both one more step.
fn trains_on_where_it_stopped(o: impl cifar10_cnn::optim::Optimizer + Clone + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = batch();
    let mut m = model(1);
    m.compile(o.clone()).unwrap();
    for _ in 0..3 {
        m.train_on_batch(&x, &y).unwrap();
    }
    let stem = dir.path().join("m");
    m.save_with_optimizer(&stem).unwrap();
    let mut loaded = Sequential::load_on(&stem, &Device::Cpu).unwrap();
    let restored = loaded.optimizer().expect("loaded compiled");
    assert_eq!(restored.name(), o.name());
    assert_eq!(restored.iterations(), 3);
    assert_eq!(restored.config().unwrap(), o.config().unwrap());
    let original = m.optimizer().unwrap();
    assert_eq!(restored.learning_rate(), original.learning_rate());
    assert_eq!(restored.state().len(), original.state().len());
    assert_eq!(weights(&loaded), weights(&m));
    m.train_on_batch(&x, &y).unwrap();
    loaded.train_on_batch(&x, &y).unwrap();
    assert_eq!(weights(&loaded), weights(&m), "{}", o.name());
    assert_eq!(loaded.optimizer_iterations(), 4);
}

/// Saved with its optimizer (state, step count, settings and schedule), a
/// model loads compiled and trains on exactly as if it had not stopped: one
/// more step on both gives bit-identical weights.
#[test]
fn a_model_saved_with_its_optimizer_trains_on_where_it_stopped() {
    use cifar10_cnn::optim::{AdamW, CosineDecay, RMSprop, SGD};
    trains_on_where_it_stopped(SGD::new(CosineDecay::new(0.1, 10).warmup(0.2, 2)).momentum(0.9));
    trains_on_where_it_stopped(
        RMSprop::default()
            .centered(true)
            .momentum(0.5)
            .clipnorm(1.0),
    );
    trains_on_where_it_stopped(AdamW::default().global_clipnorm(1.0));
}

/// A model saved without its optimizer (as by every earlier version) loads
/// uncompiled, as before; saving the optimizer of an uncompiled model, or
/// one whose schedule cannot be saved, is refused with what to do.
#[test]
fn a_model_saved_without_optimizer_loads_uncompiled() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = model(2);
    m.compile(cifar10_cnn::optim::Adam::default()).unwrap();
    let (x, y) = batch();
    m.train_on_batch(&x, &y).unwrap();
    m.save(dir.path().join("plain")).unwrap();
    let loaded = Sequential::load_on(dir.path().join("plain"), &Device::Cpu).unwrap();
    assert!(loaded.optimizer().is_none());
    assert_eq!(weights(&loaded), weights(&m));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0.1-small");
    assert!(Sequential::load_on(fixtures, &Device::Cpu)
        .unwrap()
        .optimizer()
        .is_none());
    let e = model(1)
        .save_with_optimizer(dir.path().join("none"))
        .unwrap_err();
    assert!(format!("{e:#}").contains("compile() it first"), "{e:#}");

    #[derive(Debug)]
    struct Halving;
    impl cifar10_cnn::optim::Schedule for Halving {
        fn name(&self) -> &'static str {
            "Halving"
        }
        fn check(&self) -> anyhow::Result<()> {
            Ok(())
        }
        fn rate(&self, step: u64) -> f64 {
            0.1 / (1 << step.min(30)) as f64
        }
    }
    let mut m = model(1);
    m.compile(cifar10_cnn::optim::SGD::new(Halving)).unwrap();
    let e = m.save_with_optimizer(dir.path().join("own")).unwrap_err();
    assert!(
        format!("{e:#}").contains("Halving cannot be saved"),
        "{e:#}"
    );
    assert!(!dir.path().join("own.safetensors").exists());
}
