//! The Hugging Face Hub loader, against hf-hub caches built here: no test
//! touches the network.
//!
//! Each test writes small parquet files with the Hub's schema (`img` struct
//! {bytes: PNG, path: string}, `label` int64, snappy) into a temporary folder
//! laid out the way hf-hub lays out its cache, so hf-hub finds them there and
//! never downloads.
//! `cifar10_cnn::data::load_hub` itself is tested too, through `HF_HOME`.
#![cfg(feature = "hub")]

use cifar10_cnn::data::{Dataset, CLASS_NAMES};
use hf_hub::Cache;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cifar10_cnn::data as hub;

const TRAIN: &str = "plain_text/train-00000-of-00001.parquet";
const TEST: &str = "plain_text/test-00000-of-00001.parquet";
const COMMIT: &str = "0b2714987fa478483af9968de7c934580d0bb9a2";

/// Serializes the tests that change environment variables.
static ENV: Mutex<()> = Mutex::new(());

/// One row of a Hub parquet file.
struct HubRow {
    /// `img.bytes`; `None` writes a null.
    png: Option<Vec<u8>>,
    /// `img.path`; the Hub leaves it null for CIFAR-10.
    path: Option<String>,
    label: i64,
}

/// The colour of pixel (x, y) of test image `k`: every channel differs, so
/// a mix-up of planes, rows or columns shows.
fn pixel(k: usize, x: usize, y: usize) -> [u8; 3] {
    [
        (k * 40 + x) as u8,
        (k * 50 + 100 + y) as u8,
        (x * 7 + y * 3 + k * 11) as u8,
    ]
}

fn rgb_image(k: usize, side: u32) -> image::RgbImage {
    image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb(pixel(k, x as usize, y as usize))
    })
}

fn png_bytes(img: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Image `k` as a 32x32 RGB PNG.
fn png(k: usize) -> Vec<u8> {
    png_bytes(rgb_image(k, 32).into())
}

/// Image `k` in the planar layout of `Dataset`: R plane, G plane, B plane.
fn planar(k: usize) -> Vec<u8> {
    (0..3)
        .flat_map(|c| (0..32).flat_map(move |y| (0..32).map(move |x| pixel(k, x, y)[c])))
        .collect()
}

fn row(k: usize, label: i64) -> HubRow {
    HubRow {
        png: Some(png(k)),
        path: None,
        label,
    }
}

/// Writes `rows` as the Hub does: snappy, `rows_per_group` rows per row group.
fn write_hub_parquet(path: &Path, rows: &[HubRow], rows_per_group: usize) {
    let schema = "
        message schema {
            OPTIONAL group img {
                OPTIONAL BYTE_ARRAY bytes;
                OPTIONAL BYTE_ARRAY path (UTF8);
            }
            OPTIONAL INT64 label;
        }";
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    for group in rows.chunks(rows_per_group.max(1)) {
        let mut rg = writer.next_row_group().unwrap();
        // Leaf columns in schema order: img.bytes, img.path, label.
        for column in 0..3 {
            let mut col = rg.next_column().unwrap().expect("three columns");
            match column {
                0 | 1 => {
                    let cells: Vec<Option<Vec<u8>>> = group
                        .iter()
                        .map(|r| {
                            if column == 0 {
                                r.png.clone()
                            } else {
                                r.path.clone().map(String::into_bytes)
                            }
                        })
                        .collect();
                    // Definition level 2: value present; 1: img present, field null.
                    let defs: Vec<i16> = cells
                        .iter()
                        .map(|c| if c.is_some() { 2 } else { 1 })
                        .collect();
                    let values: Vec<ByteArray> =
                        cells.into_iter().flatten().map(ByteArray::from).collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&values, Some(&defs), None)
                        .unwrap();
                }
                _ => {
                    let values: Vec<i64> = group.iter().map(|r| r.label).collect();
                    let defs = vec![1i16; values.len()];
                    col.typed::<Int64Type>()
                        .write_batch(&values, Some(&defs), None)
                        .unwrap();
                }
            }
            col.close().unwrap();
        }
        assert!(rg.next_column().unwrap().is_none());
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

/// Writes a parquet file with a single int64 column named `name`.
fn write_single_column_parquet(path: &Path, name: &str, values: &[i64]) {
    let schema = format!("message schema {{ OPTIONAL INT64 {name}; }}");
    let schema = Arc::new(parse_message_type(&schema).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut rg = writer.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let defs = vec![1i16; values.len()];
    col.typed::<Int64Type>()
        .write_batch(values, Some(&defs), None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    writer.close().unwrap();
}

/// A folder laid out as hf-hub's cache for the dataset `uoft-cs/cifar10`:
/// `datasets--uoft-cs--cifar10/refs/main` names a commit, and
/// `snapshots/<commit>/<file>` points into `blobs/`, as hf-hub leaves it.
struct HubCache {
    /// Keeps the temporary folder alive.
    _tmp: tempfile::TempDir,
    /// The cache folder: the temporary folder, or `hub` inside it.
    root: PathBuf,
}

impl HubCache {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Self::with_root(tmp, root)
    }

    /// A cache in `$HF_HOME/hub`, with `HF_HOME` the temporary folder.
    fn under_hf_home() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("hub");
        Self::with_root(tmp, root)
    }

    fn with_root(tmp: tempfile::TempDir, root: PathBuf) -> Self {
        let repo = root.join("datasets--uoft-cs--cifar10");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
        Self { _tmp: tmp, root }
    }

    /// What `HF_HOME` would be for this cache.
    fn home(&self) -> &Path {
        self._tmp.path()
    }

    fn repo(&self) -> PathBuf {
        self.root.join("datasets--uoft-cs--cifar10")
    }

    /// Where hf-hub looks for `file` of the dataset.
    fn snapshot(&self, file: &str) -> PathBuf {
        self.repo().join("snapshots").join(COMMIT).join(file)
    }

    /// Writes `file` through `write` into `blobs/`, then links it from the snapshot.
    fn add(&self, file: &str, write: impl FnOnce(&Path)) -> PathBuf {
        let blob = self.repo().join("blobs").join(file.replace('/', "-"));
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        write(&blob);
        let snapshot = self.snapshot(file);
        std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&blob, &snapshot).unwrap();
        #[cfg(not(unix))]
        std::fs::rename(&blob, &snapshot).unwrap();
        snapshot
    }

    fn add_rows(&self, file: &str, rows: &[HubRow]) -> PathBuf {
        self.add(file, |p| write_hub_parquet(p, rows, 2))
    }

    fn add_bytes(&self, file: &str, bytes: &[u8]) -> PathBuf {
        self.add(file, |p| std::fs::write(p, bytes).unwrap())
    }

    fn cache(&self) -> Cache {
        Cache::new(self.root.clone())
    }
}

/// The two splits used by the loading tests: 5 training images over three
/// row groups (one PNG stored as RGBA, one with a `path`), 2 test images.
fn standard_cache() -> HubCache {
    fill_standard(HubCache::new())
}

fn fill_standard(hub: HubCache) -> HubCache {
    let mut train: Vec<HubRow> = [(0, 6), (1, 9), (2, 0), (3, 3), (4, 1)]
        .iter()
        .map(|&(k, l)| row(k, l))
        .collect();
    train[1].png = Some(png_bytes(
        image::DynamicImage::ImageRgb8(rgb_image(1, 32))
            .to_rgba8()
            .into(),
    ));
    train[2].path = Some("0002.png".to_string());
    hub.add_rows(TRAIN, &train);
    hub.add_rows(TEST, &[row(5, 3), row(6, 8)]);
    hub
}

fn check_dataset(d: &Dataset, images: &[usize], labels: &[u8]) {
    assert_eq!((d.height, d.width), (32, 32));
    assert_eq!(d.labels, labels);
    assert_eq!(d.class_names, CLASS_NAMES.to_vec());
    assert_eq!(d.len(), images.len());
    for (i, &k) in images.iter().enumerate() {
        assert!(
            d.image_bytes(i).unwrap() == planar(k).as_slice(),
            "image {i} differs from test image {k}"
        );
    }
}

/// The error message with all its context, as `main` would print it.
fn message<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn loads_train_and_test_from_an_hf_hub_cache() {
    let hub = standard_cache();
    let (train, test) = hub::load_hub_from(hub.cache()).unwrap();
    check_dataset(&train, &[0, 1, 2, 3, 4], &[6, 9, 0, 3, 1]);
    check_dataset(&test, &[5, 6], &[3, 8]);
    assert_eq!(train.class_name(1).unwrap(), "truck");
    assert_eq!(train.image_row(0, 0).unwrap().0[1], pixel(0, 1, 0));
}

#[test]
fn read_parquet_reads_one_split() {
    let hub = standard_cache();
    let test = hub::read_parquet(&hub.snapshot(TEST)).unwrap();
    check_dataset(&test, &[5, 6], &[3, 8]);
}

#[test]
fn load_hub_uses_the_cache_under_hf_home() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    // hf-hub keeps its cache in $HF_HOME/hub.
    let hub = fill_standard(HubCache::under_hf_home());
    let saved = EnvGuard::set(&[
        ("HF_HOME", Some(hub.home().as_os_str())),
        ("HF_ENDPOINT", Some(UNREACHABLE.as_ref())),
    ]);
    let loaded = cifar10_cnn::data::load_hub();
    drop(saved);
    let (train, test) = loaded.unwrap();
    check_dataset(&train, &[0, 1, 2, 3, 4], &[6, 9, 0, 3, 1]);
    check_dataset(&test, &[5, 6], &[3, 8]);
}

/// A closed port on loopback, so that a download attempt fails at once
/// without leaving the machine.
const UNREACHABLE: &str = "http://127.0.0.1:9";

/// Sets environment variables and puts the old values back when dropped.
struct EnvGuard(Vec<(String, Option<std::ffi::OsString>)>);

impl EnvGuard {
    fn set(vars: &[(&str, Option<&std::ffi::OsStr>)]) -> Self {
        let saved = vars
            .iter()
            .map(|(k, _)| (k.to_string(), std::env::var_os(k)))
            .collect();
        for (k, v) in vars {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
        EnvGuard(saved)
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        for (k, v) in &self.0 {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
}

#[test]
fn failed_download_says_to_set_cifar10_dir() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    // The test split is missing, so hf-hub must ask the endpoint, which is a
    // closed loopback port; no proxy may carry the request elsewhere.
    let hub = HubCache::new();
    hub.add_rows(TRAIN, &[row(0, 1)]);
    let mut vars: Vec<(&str, Option<&std::ffi::OsStr>)> =
        vec![("HF_ENDPOINT", Some(UNREACHABLE.as_ref()))];
    for proxy in [
        "ALL_PROXY",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "all_proxy",
        "https_proxy",
        "http_proxy",
    ] {
        vars.push((proxy, None));
    }
    let saved = EnvGuard::set(&vars);
    let result = hub::load_hub_from(hub.cache());
    drop(saved);
    let msg = message(result);
    assert!(
        msg.contains("cannot download plain_text/test-00000-of-00001.parquet"),
        "{msg}"
    );
    assert!(msg.contains("uoft-cs/cifar10"), "{msg}");
    assert!(msg.contains("set CIFAR10_DIR"), "{msg}");
}

#[test]
fn corrupt_parquet_file_is_an_error() {
    let hub = HubCache::new();
    hub.add_bytes(TRAIN, b"PAR1 this is not a parquet file PAR1");
    hub.add_rows(TEST, &[row(0, 1)]);
    let msg = message(hub::load_hub_from(hub.cache()));
    assert!(msg.contains("not a readable parquet file"), "{msg}");
    assert!(msg.contains("train-00000-of-00001.parquet"), "{msg}");
    assert!(msg.contains("delete it to download it again"), "{msg}");
}

#[test]
fn truncated_parquet_file_is_an_error() {
    let hub = HubCache::new();
    let whole = hub.add_rows(TRAIN, &[row(0, 1), row(1, 2), row(2, 3)]);
    let bytes = std::fs::read(&whole).unwrap();
    let cut = hub.add_bytes(TEST, &bytes[..bytes.len() / 2]);
    let msg = message(hub::read_parquet(&cut));
    assert!(msg.contains("not a readable parquet file"), "{msg}");
    assert!(msg.contains("test-00000-of-00001.parquet"), "{msg}");
}

#[test]
fn damaged_column_data_is_an_error_not_a_panic() {
    let hub = HubCache::new();
    let whole = hub.add_rows(TRAIN, &[row(0, 1), row(1, 2), row(2, 3)]);
    let bytes = std::fs::read(&whole).unwrap();
    // Scribble over the data pages, keeping the footer (the last part) intact.
    let footer =
        u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap()) as usize;
    let data_end = bytes.len() - 8 - footer;
    for start in [4, data_end / 4, data_end / 2, 3 * data_end / 4] {
        let mut damaged = bytes.clone();
        for b in &mut damaged[start..(start + 64).min(data_end)] {
            *b ^= 0x5a;
        }
        let path = hub.home().join(format!("damaged-{start}.parquet"));
        std::fs::write(&path, &damaged).unwrap();
        // Any outcome but a panic will do, as long as an error names the file.
        if let Err(e) = hub::read_parquet(&path) {
            let msg = format!("{e:#}");
            assert!(msg.contains(&format!("damaged-{start}.parquet")), "{msg}");
        }
    }
}

#[test]
fn non_png_bytes_is_an_error() {
    let hub = HubCache::new();
    let mut rows = vec![row(0, 1), row(1, 2)];
    rows[1].png = Some(b"GIF89a, not a PNG at all".to_vec());
    hub.add_rows(TRAIN, &rows);
    hub.add_rows(TEST, &[row(0, 1)]);
    let msg = message(hub::load_hub_from(hub.cache()));
    assert!(msg.contains("row 1 of"), "{msg}");
    assert!(msg.contains("train-00000-of-00001.parquet"), "{msg}");
    assert!(msg.contains("is not a PNG image"), "{msg}");
}

#[test]
fn null_image_is_an_error() {
    let hub = HubCache::new();
    let mut rows = vec![row(0, 1), row(1, 2), row(2, 2)];
    rows[2].png = None;
    let path = hub.add_rows(TEST, &rows);
    let msg = message(hub::read_parquet(&path));
    assert!(msg.contains("row 2 of"), "{msg}");
    assert!(msg.contains("`img.bytes` is missing"), "{msg}");
}

#[test]
fn wrong_image_size_is_an_error() {
    let hub = HubCache::new();
    let mut rows = vec![row(0, 1), row(1, 2), row(2, 2)];
    rows[2].png = Some(png_bytes(rgb_image(2, 16).into()));
    hub.add_rows(TRAIN, &[row(0, 1)]);
    hub.add_rows(TEST, &rows);
    let msg = message(hub::load_hub_from(hub.cache()));
    assert!(msg.contains("row 2 of"), "{msg}");
    assert!(msg.contains("test-00000-of-00001.parquet"), "{msg}");
    assert!(msg.contains("16x16"), "{msg}");
    assert!(msg.contains("32x32"), "{msg}");
}

#[test]
fn label_out_of_range_is_an_error() {
    let hub = HubCache::new();
    hub.add_rows(TRAIN, &[row(0, 1), row(1, 10)]);
    hub.add_rows(TEST, &[row(0, 1)]);
    let msg = message(hub::load_hub_from(hub.cache()));
    assert!(msg.contains("row 1 of"), "{msg}");
    assert!(
        msg.contains("label 10 is not a CIFAR-10 class (expected 0..=9)"),
        "{msg}"
    );

    let negative = HubCache::new();
    let path = negative.add_rows(TEST, &[row(0, -1)]);
    let msg = message(hub::read_parquet(&path));
    assert!(msg.contains("label -1 is not a CIFAR-10 class"), "{msg}");
}

#[test]
fn missing_columns_are_errors() {
    let hub = HubCache::new();
    let no_img = hub.add(TRAIN, |p| write_single_column_parquet(p, "label", &[1, 2]));
    let msg = message(hub::read_parquet(&no_img));
    assert!(msg.contains("has no `img` column"), "{msg}");
    assert!(msg.contains("train-00000-of-00001.parquet"), "{msg}");

    let flat_img = hub.add(TEST, |p| write_single_column_parquet(p, "img", &[1, 2]));
    let msg = message(hub::read_parquet(&flat_img));
    assert!(msg.contains("column `img` of"), "{msg}");
    assert!(msg.contains("is not a struct"), "{msg}");

    let other = hub.home().join("other-columns.parquet");
    write_single_column_parquet(&other, "other", &[1]);
    let msg = message(hub::read_parquet(&other));
    assert!(msg.contains("has no `img` column"), "{msg}");
}

#[test]
fn missing_label_column_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img-only.parquet");
    let schema = "
        message schema {
            OPTIONAL group img {
                OPTIONAL BYTE_ARRAY bytes;
                OPTIONAL BYTE_ARRAY path (UTF8);
            }
        }";
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, props).unwrap();
    let mut rg = writer.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&[ByteArray::from(png(0))], Some(&[2]), None)
        .unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>()
        .write_batch(&[], Some(&[1]), None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    writer.close().unwrap();
    let msg = message(hub::read_parquet(&path));
    assert!(msg.contains("has no `label` column"), "{msg}");
    assert!(msg.contains("img-only.parquet"), "{msg}");
}

#[test]
fn missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let msg = message(hub::read_parquet(&dir.path().join("nowhere.parquet")));
    assert!(
        msg.contains("cannot open the CIFAR-10 parquet file"),
        "{msg}"
    );
    assert!(msg.contains("nowhere.parquet"), "{msg}");
}
