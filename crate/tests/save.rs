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
