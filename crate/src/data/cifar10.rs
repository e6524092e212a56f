//! The official binary version of CIFAR-10 (`cifar-10-batches-bin`):
//! `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, each 10,000
//! records of one label byte and 3,072 pixel bytes (R plane, G plane, B
//! plane, rows of 32), and `batches.meta.txt`, one class name a line.

use super::Dataset;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const SIDE: usize = 32;
const RECORD: usize = 1 + 3 * SIDE * SIDE;
const RECORDS_PER_FILE: usize = 10_000;
const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const TEST_FILE: &str = "test_batch.bin";
const META_FILE: &str = "batches.meta.txt";

/// Keras's `cifar10.load_data()`: `(train, test)`, 50,000 and 10,000 images.
///
/// Reads the folder named by `CIFAR10_DIR` when it is set; otherwise, with
/// the `hub` feature, downloads the dataset from the Hugging Face Hub into
/// hf-hub's cache (once).
pub fn load_data() -> Result<(Dataset, Dataset)> {
    match std::env::var_os("CIFAR10_DIR") {
        Some(dir) if !dir.is_empty() => load_dir(PathBuf::from(dir)),
        _ => from_hub(),
    }
}

#[cfg(feature = "hub")]
fn from_hub() -> Result<(Dataset, Dataset)> {
    super::load_hub()
}

#[cfg(not(feature = "hub"))]
fn from_hub() -> Result<(Dataset, Dataset)> {
    bail!("CIFAR10_DIR is not set, and this build has no `hub` feature to download CIFAR-10: set CIFAR10_DIR to a folder holding the binary version (data_batch_1.bin .. test_batch.bin)")
}

/// Loads `(train, test)` from a folder holding the binary version.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<(Dataset, Dataset)> {
    let dir = dir.as_ref();
    ensure!(
        dir.is_dir(),
        "CIFAR-10 folder {} does not exist: point CIFAR10_DIR at the unpacked binary version (cifar-10-batches-bin)",
        dir.display()
    );
    let class_names = read_meta(&dir.join(META_FILE))?;
    let train = read_batches(&TRAIN_FILES.map(|f| dir.join(f)), &class_names)?;
    let test = read_batches(&[dir.join(TEST_FILE)], &class_names)?;
    Ok((train, test))
}

/// The class names, one a line; they must be the ten CIFAR-10 classes' count.
fn read_meta(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the class names from {}", path.display()))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    ensure!(
        names.len() == CLASS_NAMES.len(),
        "{} should name {} classes, one a line, but names {}",
        path.display(),
        CLASS_NAMES.len(),
        names.len()
    );
    Ok(names)
}

fn read_batches(paths: &[PathBuf], class_names: &[String]) -> Result<Dataset> {
    let n = paths.len() * RECORDS_PER_FILE;
    let mut images = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for path in paths {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read CIFAR-10 batch {}", path.display()))?;
        parse_batch(&bytes, class_names.len(), &mut images, &mut labels)
            .with_context(|| format!("{} is not a CIFAR-10 binary batch", path.display()))?;
    }
    Dataset::new(images, labels, class_names.to_vec(), SIDE, SIDE)
}

/// Appends the records of one batch file (10,000 records) to `images` and `labels`.
pub fn parse_batch(
    bytes: &[u8],
    classes: usize,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    let expected = RECORDS_PER_FILE * RECORD;
    if bytes.len() != expected {
        bail!(
            "expected {expected} bytes ({RECORDS_PER_FILE} records of {RECORD}), found {} ({})",
            bytes.len(),
            if bytes.len() < expected {
                "truncated"
            } else {
                "too long"
            }
        );
    }
    parse_records(bytes, classes, images, labels)
}

/// Loads a file of whole CIFAR-10 records with the ten CIFAR-10 classes: a
/// batch file, or its first N records (`head -c $((N * 3073))`), which is how
/// a small real sample travels to a machine without the dataset.
pub fn load_records(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read CIFAR-10 records {}", path.display()))?;
    ensure!(
        !bytes.is_empty() && bytes.len() % RECORD == 0,
        "{} holds {} bytes, not a whole number of CIFAR-10 records ({RECORD} bytes each)",
        path.display(),
        bytes.len()
    );
    let (mut images, mut labels) = (
        Vec::with_capacity(bytes.len()),
        Vec::with_capacity(bytes.len() / RECORD),
    );
    parse_records(&bytes, CLASS_NAMES.len(), &mut images, &mut labels)
        .with_context(|| format!("in {}", path.display()))?;
    Dataset::new(
        images,
        labels,
        CLASS_NAMES.map(String::from).to_vec(),
        SIDE,
        SIDE,
    )
}

/// Appends whole CIFAR-10 records (a label byte below `classes`, then 3,072
/// pixel bytes) to `images` and `labels`.
pub fn parse_records(
    bytes: &[u8],
    classes: usize,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    ensure!(classes > 0, "records need at least one class");
    ensure!(
        bytes.len().is_multiple_of(RECORD),
        "{} bytes are not a whole number of CIFAR-10 records ({RECORD} bytes each)",
        bytes.len()
    );
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        let label = record[0];
        ensure!(
            (label as usize) < classes,
            "record {i} has label {label}, but labels go from 0 to {}",
            classes - 1
        );
        labels.push(label);
        images.extend_from_slice(&record[1..]);
    }
    Ok(())
}
