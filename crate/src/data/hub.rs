//! CIFAR-10 from the Hugging Face Hub, for machines without a local copy.
//!
//! The Hub's [`HUB_DATASET`] keeps each split as one parquet file whose rows
//! hold `img`, a struct `{bytes: binary, path: string}` where `bytes` is a
//! 32x32 PNG file, and `label`, an int64 class index (0 = airplane .. 9 =
//! truck). The files were written by the `datasets` library through pyarrow,
//! whose default codec is snappy, so the parquet crate needs only its `snap`
//! feature. hf-hub downloads them once into its cache (`$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), and every later run reads them from there.
//!
//! Only `super::` paths are used here, so the integration tests can compile
//! this file as a module of their own and reach every function in it.

use super::{Dataset, CLASS_NAMES};
use anyhow::{anyhow, bail, ensure, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;
use image::codecs::png::PngDecoder;
use image::{DynamicImage, ImageDecoder};
use parquet::basic::Type as PhysicalType;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::{Type, TypePtr};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The Hub dataset that holds CIFAR-10 in the Keras split (50,000 + 10,000).
pub const HUB_DATASET: &str = "uoft-cs/cifar10";
/// The training split, inside [`HUB_DATASET`].
pub const HUB_TRAIN_FILE: &str = "plain_text/train-00000-of-00001.parquet";
/// The test split, inside [`HUB_DATASET`].
pub const HUB_TEST_FILE: &str = "plain_text/test-00000-of-00001.parquet";

/// Side of a CIFAR-10 image, in pixels.
const SIDE: u32 = 32;
/// The env var hf-hub reads to move its cache (`$HF_HOME/hub`).
const HF_HOME: &str = "HF_HOME";
/// The env var hf-hub reads to talk to a mirror instead of huggingface.co.
const HF_ENDPOINT: &str = "HF_ENDPOINT";
/// What to do when the Hub is out of reach.
const OFFLINE_HINT: &str = "without network access, set CIFAR10_DIR to a folder holding a local copy of the binary version of CIFAR-10 (cifar-10-batches-bin: data_batch_1.bin .. data_batch_5.bin, test_batch.bin, batches.meta.txt)";

/// `(train, test)` from [`HUB_DATASET`], through hf-hub's default cache.
///
/// The cache is the one hf-hub itself picks (`$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`), so a copy fetched by any other hf-hub or
/// `huggingface_hub` user is reused, and nothing is downloaded twice.
pub fn load_hub() -> Result<(Dataset, Dataset)> {
    load_hub_from(default_cache()?)
}

/// `(train, test)` from [`HUB_DATASET`], through the hf-hub cache `cache`.
///
/// A file already in the cache is read without any network access (the same
/// look-up hf-hub's `get` does first); a missing one is downloaded into the
/// cache with hf-hub's sync API, with a line on stderr. Taking the cache as
/// an argument lets tests point it at a folder they built themselves.
pub fn load_hub_from(cache: Cache) -> Result<(Dataset, Dataset)> {
    let train = fetch(&cache, HUB_TRAIN_FILE)?;
    let test = fetch(&cache, HUB_TEST_FILE)?;
    Ok((read_cached(&train)?, read_cached(&test)?))
}

/// hf-hub's `Cache::from_env`, without its panic when there is no home folder.
fn default_cache() -> Result<Cache> {
    if std::env::var(HF_HOME).is_err() {
        #[allow(deprecated)] // Fine on Unix, and fixed on Windows since Rust 1.85.
        let home = std::env::home_dir();
        ensure!(
            home.is_some(),
            "no home folder for hf-hub's cache of CIFAR-10: set HF_HOME to a folder for it, or {OFFLINE_HINT}"
        );
    }
    Ok(Cache::from_env())
}

/// The local path of `file` of [`HUB_DATASET`], downloading it if needed.
fn fetch(cache: &Cache, file: &str) -> Result<PathBuf> {
    if let Some(path) = cache.dataset(HUB_DATASET.to_string()).get(file) {
        return Ok(path);
    }
    eprintln!(
        "Downloading {file} of the Hugging Face dataset {HUB_DATASET} into {} (once)",
        cache.path().display()
    );
    let download_error = |e: &dyn std::fmt::Display| {
        anyhow!(
            "cannot download {file} of the Hugging Face dataset {HUB_DATASET} into {}: {e}; {OFFLINE_HINT}",
            cache.path().display()
        )
    };
    let mut builder = ApiBuilder::from_cache(cache.clone());
    if let Ok(endpoint) = std::env::var(HF_ENDPOINT) {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| download_error(&e))?;
    api.dataset(HUB_DATASET.to_string())
        .get(file)
        .map_err(|e| download_error(&e))
}

/// [`read_parquet`], with the way out when the cached copy is damaged (the
/// problem first, since it names the file already).
fn read_cached(path: &Path) -> Result<Dataset> {
    read_parquet(path).map_err(|e| {
        anyhow!("{e:#}; this file is hf-hub's cached copy of {HUB_DATASET}: delete it to download it again")
    })
}

/// Reads one split of [`HUB_DATASET`]: PNG images in `img.bytes`, classes in
/// `label`, into a [`Dataset`] of 32x32 planar images with the CIFAR-10
/// class names.
///
/// Uses the parquet crate's row API, which walks the nested `img` struct
/// without pulling in arrow. Every problem is an error that names the file,
/// and the row when it is about one row.
pub fn read_parquet(path: &Path) -> Result<Dataset> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the CIFAR-10 parquet file {}", path.display()))?;
    let corrupt = |e: &dyn std::fmt::Display| {
        anyhow!(
            "{} is not a readable parquet file (corrupt or truncated?): {e}",
            path.display()
        )
    };
    let reader = SerializedFileReader::new(file).map_err(|e| corrupt(&e))?;
    let metadata = reader.metadata();
    let projection = projection(path, metadata.file_metadata().schema())?;

    // The row count comes from the file, so cap what it may reserve.
    let expected = usize::try_from(metadata.file_metadata().num_rows())
        .unwrap_or(0)
        .min(100_000);
    let mut images = Vec::with_capacity(expected * 3 * (SIDE * SIDE) as usize);
    let mut labels = Vec::with_capacity(expected);
    // Row groups one by one: the file-level row iterator panics when a row
    // group cannot be read, this loop turns that into an error.
    for group in 0..metadata.num_row_groups() {
        let group_reader = reader.get_row_group(group).map_err(|e| corrupt(&e))?;
        let rows = group_reader
            .get_row_iter(Some(projection.clone()))
            .map_err(|e| corrupt(&e))?;
        for row in rows {
            let row = row.map_err(|e| corrupt(&e))?;
            let i = labels.len();
            let at_row = |e: anyhow::Error| anyhow!("row {i} of {}: {e}", path.display());
            let (png, label) = split_row(&row).map_err(at_row)?;
            let label = check_label(label).map_err(at_row)?;
            decode_planar(png, &mut images).map_err(at_row)?;
            labels.push(label);
        }
    }
    let class_names = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    Dataset::new(images, labels, class_names, SIDE as usize, SIDE as usize)
        .with_context(|| format!("CIFAR-10 parquet file {}", path.display()))
}

/// The file's schema cut down to `img.bytes` and `label`, after checking that
/// they exist with the types the Hub uses (so `img.path` is never read).
fn projection(path: &Path, schema: &Type) -> Result<Type> {
    let expected = "expected the Hugging Face CIFAR-10 columns `img` (struct {bytes: binary, path: string}) and `label` (int64)";
    let columns: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
    let column = |name: &str| -> Result<&TypePtr> {
        schema
            .get_fields()
            .iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                anyhow!(
                    "{} has no `{name}` column: {expected}, found {columns:?}",
                    path.display()
                )
            })
    };
    let img = column("img")?;
    ensure!(
        img.is_group(),
        "column `img` of {} is not a struct: {expected}",
        path.display()
    );
    let bytes = img
        .get_fields()
        .iter()
        .find(|f| f.name() == "bytes")
        .ok_or_else(|| {
            anyhow!(
                "column `img` of {} has no `bytes` field: {expected}",
                path.display()
            )
        })?;
    ensure!(
        bytes.is_primitive() && bytes.get_physical_type() == PhysicalType::BYTE_ARRAY,
        "field `img.bytes` of {} is not binary: {expected}",
        path.display()
    );
    let label = column("label")?;
    ensure!(
        label.is_primitive()
            && matches!(
                label.get_physical_type(),
                PhysicalType::INT32 | PhysicalType::INT64
            ),
        "column `label` of {} is not an integer: {expected}",
        path.display()
    );
    let img_bytes = Type::group_type_builder(img.name())
        .with_repetition(img.get_basic_info().repetition())
        .with_fields(vec![bytes.clone()])
        .build()?;
    Ok(Type::group_type_builder(schema.name())
        .with_fields(vec![Arc::new(img_bytes), label.clone()])
        .build()?)
}

/// The PNG bytes and the label of one projected row.
fn split_row(row: &Row) -> Result<(&[u8], i64)> {
    let mut png = None;
    let mut label = None;
    for (name, field) in row.get_column_iter() {
        match (name.as_str(), field) {
            ("img", Field::Group(img)) => {
                for (name, field) in img.get_column_iter() {
                    if let ("bytes", Field::Bytes(b)) = (name.as_str(), field) {
                        png = Some(b.data());
                    }
                }
            }
            ("label", Field::Long(l)) => label = Some(*l),
            ("label", Field::Int(l)) => label = Some(i64::from(*l)),
            _ => {}
        }
    }
    let png = png.ok_or_else(|| anyhow!("`img.bytes` is missing (null), expected a PNG file"))?;
    let label = label.ok_or_else(|| anyhow!("`label` is missing (null)"))?;
    Ok((png, label))
}

/// A label as a byte, if it names one of the CIFAR-10 classes.
fn check_label(label: i64) -> Result<u8> {
    match u8::try_from(label) {
        Ok(l) if (l as usize) < CLASS_NAMES.len() => Ok(l),
        _ => bail!(
            "label {label} is not a CIFAR-10 class (expected 0..={})",
            CLASS_NAMES.len() - 1
        ),
    }
}

/// Decodes a 32x32 PNG to RGB and appends it as three planes (R, G, B).
///
/// The size is checked from the header, before any pixel is decoded, so a
/// bad file cannot make it allocate much.
fn decode_planar(png: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let decoder = PngDecoder::new(Cursor::new(png))
        .map_err(|e| anyhow!("`img.bytes` is not a PNG image: {e}"))?;
    let (w, h) = decoder.dimensions();
    ensure!(
        (w, h) == (SIDE, SIDE),
        "the image is {w}x{h}, CIFAR-10 images are {SIDE}x{SIDE}"
    );
    let rgb = DynamicImage::from_decoder(decoder)
        .map_err(|e| anyhow!("`img.bytes` is not a valid PNG image: {e}"))?
        .into_rgb8();
    let pixels = rgb.as_raw();
    let plane = (SIDE * SIDE) as usize;
    for c in 0..3 {
        out.extend((0..plane).map(|p| pixels[3 * p + c]));
    }
    Ok(())
}
