//! The CLI's `check` subcommand (the GPU check's engine), run on the CPU.

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
