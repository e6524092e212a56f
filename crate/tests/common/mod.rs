//! Helpers shared by the integration tests.
#![allow(dead_code)]

use cifar10_cnn::data::Dataset;
use std::path::PathBuf;

/// The real CIFAR-10 (binary version) when `CIFAR10_DIR` names it. In CI
/// (`CI` set, where the data is always there) a missing `CIFAR10_DIR` fails
/// the test instead of letting it pass without checking anything.
pub fn cifar10_dir() -> Option<PathBuf> {
    match std::env::var_os("CIFAR10_DIR") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") => {
            panic!("CIFAR10_DIR is not set, and CI always has the real CIFAR-10: set it (.ci/run does)")
        }
        _ => {
            eprintln!("CIFAR10_DIR is not set: SKIPPING the checks on the real CIFAR-10");
            None
        }
    }
}

/// A small learnable dataset: class k's images are mostly colour channel
/// k % 3 with a bright square whose position depends on k, plus noise.
pub fn synthetic(n: usize, classes: usize, side: usize, seed: u64) -> Dataset {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut images = Vec::with_capacity(n * 3 * side * side);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % classes;
        labels.push(k as u8);
        for c in 0..3 {
            for y in 0..side {
                for x in 0..side {
                    let base = if c == k % 3 { 150 } else { 40 };
                    let square = (y < side / 2) == k.is_multiple_of(2)
                        && (x < side / 2) == (k / 2).is_multiple_of(2);
                    let v = base + if square { 80 } else { 0 } + (next() % 25) as i32;
                    images.push(v.min(255) as u8);
                }
            }
        }
    }
    let names = (0..classes).map(|k| format!("class{k}")).collect();
    Dataset::new(images, labels, names, side, side).unwrap()
}
