//! The CLI's `check` subcommand (the GPU check's engine), run on the CPU,
//! and its `recipe` subcommand.

mod common;

use std::process::Command;

/// Writes `n` CIFAR-10 records: image i is filled with a brightness that
/// depends on its label, so that a few epochs can learn something.
fn write_records(path: &std::path::Path, n: usize) {
    let mut bytes = Vec::with_capacity(n * 3073);
    for i in 0..n {
        let label = (i % 10) as u8;
        bytes.push(label);
        bytes.extend((0..3072).map(|p| (label as usize * 25 + p % 7) as u8));
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn check_times_epochs_trains_on_a_sample_and_compares_with_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train.bin"), dir.path().join("test.bin"));
    write_records(&train, 200);
    write_records(&test, 50);
    let out = Command::new(env!("CARGO_BIN_EXE_cifar10-cnn"))
        .args([
            "check",
            "--epoch-images",
            "64",
            "--timed-epochs",
            "1",
            "--epochs",
            "8",
            "--batch-size",
            "32",
        ])
        .arg("--train")
        .arg(&train)
        .arg("--test")
        .arg(&test)
        .env("DEVICE", "cpu")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(
        report["device"].as_str().unwrap().starts_with("cpu"),
        "{report}"
    );
    assert_eq!(report["epoch_images"], 64);
    assert_eq!(report["epoch_seconds"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            report["train_images"].clone(),
            report["test_images"].clone()
        ),
        (200.into(), 50.into())
    );
    // Each label has its own brightness: eight epochs learn it well above
    // chance (accuracy 0.1, loss ln 10 = 2.30); measured 0.40 and 1.55.
    let accuracy = report["test_accuracy"].as_f64().unwrap();
    let loss = report["test_loss"].as_f64().unwrap();
    assert!(accuracy >= 0.3 && loss < 2.0, "not learning: {report}");
    // On the CPU the comparison is the save/load round trip: identical.
    assert_eq!(report["cpu_agreement"], 1.0);
    assert_eq!(report["cpu_max_prob_diff"], 0.0);
}

#[test]
fn check_refuses_a_broken_sample_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, [0u8; 100]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cifar10-cnn"))
        .args(["check", "--epoch-images", "16", "--timed-epochs", "1"])
        .arg("--train")
        .arg(&bad)
        .arg("--test")
        .arg(&bad)
        .env("DEVICE", "cpu")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.bin") && stderr.contains("whole number of CIFAR-10 records"),
        "{stderr}"
    );
}

/// `recipe` without `--seeds` trains the recipe as the run NAME (so that a
/// step of the improving notebook can be trained here and loaded there), and
/// a second call loads it; with `--seeds`, each seed is a run "NAME seed S".
#[test]
fn recipe_trains_the_named_run_then_loads_it_and_adds_seeds() {
    let Some(data) = common::cifar10_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("recipe.json");
    let article = cifar10_cnn::recipe::Recipe {
        epochs: 1,
        batch_size: 64,
        ..cifar10_cnn::recipe::Recipe::article()
    };
    std::fs::write(&recipe, serde_json::to_string(&article).unwrap()).unwrap();
    let out = dir.path().join("runs");
    let cli = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cifar10-cnn"))
            .arg("recipe")
            .arg(&recipe)
            .args([
                "--name",
                "1. the article",
                "--train-size",
                "300",
                "--verbose",
                "0",
            ])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let read = |folder: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(out.join(folder).join("run.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };

    let first = cli(&[]);
    assert!(!first.contains("loaded from"), "{first}");
    let run = read("1-the-article");
    assert_eq!(run["name"], "1. the article");
    assert_eq!(run["train_images"], 300);
    assert_eq!(run["recipe"]["seed"], 0);

    let again = cli(&[]);
    assert!(again.contains("1. the article: loaded from"), "{again}");

    cli(&["--seeds", "1"]);
    let seeded = read("1-the-article-seed-1");
    assert_eq!(seeded["name"], "1. the article seed 1");
    assert_eq!(seeded["recipe"]["seed"], 1);

    // `compare` tables the finished runs (an unfinished one has no run.json)
    // and draws their curves, without training.
    std::fs::create_dir_all(out.join("2-unfinished/backup")).unwrap();
    let compare = |dir: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_cifar10-cnn"))
            .arg("compare")
            .arg(dir)
            .output()
            .unwrap()
    };
    let done = compare(&out);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| 1. the article"))
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[0].starts_with("| 1. the article |")
            && rows[1].starts_with("| 1. the article seed 1 |"),
        "{table}"
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains(&table));
    let png = std::fs::read(out.join("comparison.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "comparison.png is not a PNG");
    let empty = compare(&out.join("2-unfinished"));
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(
        !empty.status.success() && stderr.contains("holds no finished run"),
        "{stderr}"
    );
}

/// `bench` prints one JSON line: the article's step and inference, or with
/// `--batch-norm-ratio` the two models' steps taken in turn and the median
/// of their ratios (which the BatchNormalization variant's bar reads).
#[test]
fn bench_prints_its_json_line_and_the_batch_normalization_ratio() {
    let bench = |extra: &[&str]| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_cifar10-cnn"))
            .args(["bench", "--batch-size", "4", "--steps", "3"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "bench {extra:?} failed: {stderr}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let plain = bench(&[]);
    assert_eq!(keys(&plain), ["images_per_s", "infer_ms", "train_step_ms"]);
    let pair = bench(&["--batch-norm-ratio"]);
    assert_eq!(
        keys(&pair),
        ["batch_norm_ratio", "batch_norm_step_ms", "train_step_ms"]
    );
    let f = |k: &str| pair[k].as_f64().unwrap();
    assert!(f("train_step_ms") > 0.0 && f("batch_norm_step_ms") > 0.0);
    // the median of the pairs' ratios, near the medians' ratio
    let ratio = f("batch_norm_step_ms") / f("train_step_ms");
    assert!(f("batch_norm_ratio") > 0.3 * ratio && f("batch_norm_ratio") < 3.0 * ratio);
}
