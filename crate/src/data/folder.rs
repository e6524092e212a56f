//! Your own images: a folder with one subfolder per class (the subfolder's
//! name is the class name), holding PNG or JPEG files of any size, resized to
//! the model's input. The article's closing advice, made concrete.

use super::{Dataset, CHANNELS};
use anyhow::{bail, ensure, Context, Result};
use image::imageops::FilterType;
use std::path::{Path, PathBuf};

/// Loads every image under `dir/<class>/`, resized to `height` x `width`.
/// Classes are the subfolders in name order, so labels are stable; files
/// that are not PNG or JPEG are skipped, and an unreadable image is an error
/// naming it.
pub fn load_image_folder(dir: impl AsRef<Path>, height: usize, width: usize) -> Result<Dataset> {
    let dir = dir.as_ref();
    ensure!(
        dir.is_dir(),
        "image folder {} does not exist: it should hold one subfolder per class",
        dir.display()
    );
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    ensure!(
        classes.len() >= 2,
        "{} has {} class subfolders; it needs at least 2 (one per class, e.g. cats/ and dogs/)",
        dir.display(),
        classes.len()
    );
    ensure!(
        classes.len() <= 256,
        "{} has {} classes; at most 256 are supported",
        dir.display(),
        classes.len()
    );
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut class_names = Vec::new();
    for (label, class_dir) in classes.iter().enumerate() {
        class_names.push(
            class_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(class_dir)
            .with_context(|| format!("cannot list {}", class_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        files.sort();
        ensure!(
            !files.is_empty(),
            "class folder {} holds no PNG or JPEG images",
            class_dir.display()
        );
        for file in files {
            let img = open_image(&file)?;
            let img = img
                .resize_exact(width as u32, height as u32, FilterType::Triangle)
                .to_rgb8();
            append_planar(&img, &mut images);
            labels.push(label as u8);
        }
    }
    Dataset::new(images, labels, class_names, height, width)
}

/// The most pixels an image may have (a 100-megapixel photo, 300 MB
/// decoded): it is resized to the model's few pixels anyway.
const MAX_PIXELS: u64 = 100_000_000;

/// Reads an image, refusing one whose header declares more than
/// [`MAX_PIXELS`] before anything is decoded.
fn open_image(file: &Path) -> Result<image::DynamicImage> {
    let reader = || {
        image::ImageReader::open(file)
            .and_then(|r| r.with_guessed_format())
            .with_context(|| format!("cannot read image {}", file.display()))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .with_context(|| format!("cannot read image {}", file.display()))?;
    ensure!(
        w as u64 * h as u64 <= MAX_PIXELS,
        "image {} is {w}x{h} pixels, more than the {} megapixels this loader takes: resize it first (it is resized to the model's input anyway)",
        file.display(),
        MAX_PIXELS / 1_000_000
    );
    reader()?
        .decode()
        .with_context(|| format!("cannot read image {}", file.display()))
}

/// A training folder and a test folder of the same classes, as
/// [`load_image_folder`] reads each.
pub fn load_image_folders(
    train_dir: impl AsRef<Path>,
    test_dir: impl AsRef<Path>,
    height: usize,
    width: usize,
) -> Result<(Dataset, Dataset)> {
    let train = load_image_folder(&train_dir, height, width)?;
    let test = load_image_folder(&test_dir, height, width)?;
    ensure!(
        train.class_names == test.class_names,
        "the training folder {} has classes {:?} but the test folder {} has {:?}: they need the same subfolders",
        train_dir.as_ref().display(),
        train.class_names,
        test_dir.as_ref().display(),
        test.class_names
    );
    Ok((train, test))
}

fn is_image(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    path.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Appends an RGB image as three planes (R, G, B), the dataset's layout.
pub(crate) fn append_planar(img: &image::RgbImage, out: &mut Vec<u8>) {
    for c in 0..CHANNELS {
        out.extend(img.pixels().map(|p| p.0[c]));
    }
}

impl Dataset {
    /// Splits into `(train, test)` with `test_fraction` of each class in the
    /// test set, after a seeded shuffle, so that both sets see every class.
    pub fn split_stratified(&self, test_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        if !(0.0..1.0).contains(&test_fraction) {
            bail!("test_fraction must be in [0, 1), got {test_fraction}");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for class in 0..self.num_classes() {
            let mut members: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] as usize == class)
                .collect();
            members.shuffle(&mut rng);
            let n_test = (members.len() as f64 * test_fraction).round() as usize;
            test.extend_from_slice(&members[..n_test]);
            train.extend_from_slice(&members[n_test..]);
        }
        // Mix the classes, so that Keras's validation split (the last part of
        // the training arrays) is not one class.
        train.shuffle(&mut rng);
        test.shuffle(&mut rng);
        Ok((self.select(&train)?, self.select(&test)?))
    }
}
