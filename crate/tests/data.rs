//! The CIFAR-10 binary reader, the article's preprocessing, and bad input.

mod common;

use cifar10_cnn::data::{
    load_dir, load_records, split_sizes, to_categorical, Dataset, CLASS_NAMES,
};
use std::path::Path;

const RECORD: usize = 3073;
const FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

/// Writes a folder in the official binary format: record r of file f has
/// label (f + r) % 10 and pixel p equal to (r + p + f) % 256.
fn write_cifar_dir(dir: &Path) {
    for (f, name) in FILES.iter().enumerate() {
        let mut bytes = Vec::with_capacity(10_000 * RECORD);
        for r in 0..10_000 {
            bytes.push(((f + r) % 10) as u8);
            bytes.extend((0..3072).map(|p| ((r + p + f) % 256) as u8));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::write(
        dir.join("batches.meta.txt"),
        CLASS_NAMES.join("\n") + "\n\n",
    )
    .unwrap();
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
#[allow(clippy::identity_op)] // the pixel formulas spelled out, with their zero terms
fn reads_the_binary_format_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar_dir(dir.path());
    let (train, test) = load_dir(dir.path()).unwrap();
    assert_eq!((train.len(), test.len()), (50_000, 10_000));
    assert_eq!(train.class_names, CLASS_NAMES);
    // record 3 of data_batch_2 is training image 10003
    assert_eq!(train.labels[10_003], 4);
    assert_eq!(train.image_bytes(10_003).unwrap()[..3], [4, 5, 6]);
    // planar: pixel (y=0, x=1) has R at 1, G at 1024 + 1, B at 2048 + 1
    let row = train.image_row(10_003, 0).unwrap();
    assert_eq!(row.0[1], [5, (3 + 1025 + 1) as u8, (3 + 2049 + 1) as u8]);
    let img = test.image(7).unwrap();
    assert_eq!(
        img.get_pixel(2, 1).0,
        [
            ((7 + 34 + 5) % 256) as u8,
            ((7 + 1024 + 34 + 5) % 256) as u8,
            ((7 + 2048 + 34 + 5) % 256) as u8
        ]
    );
    assert_eq!(test.labels[7], (5 + 7) % 10);
}

#[test]
fn real_cifar10_pixels_come_out_exactly() {
    let Some(dir) = common::cifar10_dir() else {
        return;
    };
    let (train, test) = load_dir(&dir).unwrap();
    assert_eq!((train.len(), test.len()), (50_000, 10_000));
    assert_eq!(train.class_name(0).unwrap(), "frog");
    assert_eq!(train.labels[0], 6);
    let row = train.image_row(0, 0).unwrap();
    assert_eq!(row.0[0], [59, 62, 63]);
    assert_eq!(
        row.0[..5].iter().map(|p| p[0]).collect::<Vec<_>>(),
        [59, 43, 50, 68, 98]
    );
    assert_eq!(test.labels[0], 3);
    assert_eq!(test.class_name(0).unwrap(), "cat");
    // every class appears 5,000 times in training and 1,000 in test
    for k in 0..10u8 {
        assert_eq!(train.labels.iter().filter(|&&l| l == k).count(), 5_000);
        assert_eq!(test.labels.iter().filter(|&&l| l == k).count(), 1_000);
    }
    // normalization is /255 of exactly those bytes
    let x = train.take(1).images_f32().unwrap();
    let first: Vec<f32> = x
        .flatten_all()
        .unwrap()
        .narrow(0, 0, 5)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(
        first,
        [
            59.0 / 255.0,
            43.0 / 255.0,
            50.0 / 255.0,
            68.0 / 255.0,
            98.0 / 255.0
        ]
    );
    println!("{}", row.normalized());
}

#[test]
fn one_hot_and_split_follow_keras() {
    let y = to_categorical(&[6, 9, 0], 10).unwrap();
    let rows: Vec<Vec<f32>> = y.to_vec2().unwrap();
    assert_eq!(rows[0], [0., 0., 0., 0., 0., 0., 1., 0., 0., 0.]);
    assert_eq!(rows[1][9], 1.0);
    assert_eq!(rows[2][0], 1.0);
    assert_eq!(
        rows.iter()
            .map(|r| r.iter().sum::<f32>())
            .collect::<Vec<_>>(),
        [1.0, 1.0, 1.0]
    );
    assert!(to_categorical(&[10], 10).is_err());

    assert_eq!(split_sizes(50_000, 0.1).unwrap(), (45_000, 5_000));
    assert_eq!(split_sizes(5_000, 0.1).unwrap(), (4_500, 500));
    assert_eq!(split_sizes(10, 0.0).unwrap(), (10, 0));
    assert!(err_text(split_sizes(10, 1.0)).contains("validation_split"));
}

#[test]
fn printed_rows_look_like_numpy() {
    let d = Dataset::new(vec![59; 3 * 2 * 2], vec![0], vec!["a".into()], 2, 2).unwrap();
    let row = d.image_row(0, 0).unwrap();
    assert_eq!(row.to_string(), "[[ 59  59  59]\n [ 59  59  59]]");
    assert_eq!(
        row.normalized().to_string(),
        "[[0.23137255 0.23137255 0.23137255]\n [0.23137255 0.23137255 0.23137255]]"
    );
}

#[test]
fn bad_folders_and_files_give_clear_errors() {
    let missing = err_text(load_dir("/nonexistent/cifar"));
    assert!(
        missing.contains("does not exist") && missing.contains("CIFAR10_DIR"),
        "{missing}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_cifar_dir(dir.path());
    let meta = dir.path().join("batches.meta.txt");
    let batch = dir.path().join("data_batch_3.bin");
    let good = std::fs::read(&batch).unwrap();

    // truncated
    std::fs::write(&batch, &good[..good.len() - 100]).unwrap();
    let e = err_text(load_dir(dir.path()));
    assert!(
        e.contains("data_batch_3.bin") && e.contains("truncated"),
        "{e}"
    );
    // too long
    let mut long = good.clone();
    long.extend_from_slice(&[0; RECORD]);
    std::fs::write(&batch, &long).unwrap();
    let e = err_text(load_dir(dir.path()));
    assert!(
        e.contains("data_batch_3.bin") && e.contains("too long"),
        "{e}"
    );
    // a label above 9
    let mut bad_label = good.clone();
    bad_label[5 * RECORD] = 12;
    std::fs::write(&batch, &bad_label).unwrap();
    let e = err_text(load_dir(dir.path()));
    assert!(
        e.contains("data_batch_3.bin") && e.contains("record 5 has label 12"),
        "{e}"
    );
    // missing file
    std::fs::remove_file(&batch).unwrap();
    let e = err_text(load_dir(dir.path()));
    assert!(e.contains("data_batch_3.bin"), "{e}");
    std::fs::write(&batch, &good).unwrap();
    // bad meta
    std::fs::write(&meta, "airplane\nautomobile\n").unwrap();
    let e = err_text(load_dir(dir.path()));
    assert!(
        e.contains("batches.meta.txt") && e.contains("10 classes"),
        "{e}"
    );
    std::fs::remove_file(&meta).unwrap();
    let e = err_text(load_dir(dir.path()));
    assert!(e.contains("batches.meta.txt"), "{e}");
}

#[test]
fn datasets_check_their_buffers() {
    let e = err_text(Dataset::new(vec![0; 10], vec![0], vec!["a".into()], 2, 2));
    assert!(e.contains("pixel bytes"), "{e}");
    let e = err_text(Dataset::new(vec![0; 12], vec![3], vec!["a".into()], 2, 2));
    assert!(e.contains("label 3"), "{e}");
}

/// A sample cut from a batch at a record boundary (`head -c`) reads as that
/// many images; a cut inside a record is refused.
#[test]
fn record_files_of_any_whole_length_read_back() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar_dir(dir.path());
    let batch = std::fs::read(dir.path().join("test_batch.bin")).unwrap();
    let sample = dir.path().join("sample.bin");
    std::fs::write(&sample, &batch[..7 * RECORD]).unwrap();
    let d = load_records(&sample).unwrap();
    assert_eq!((d.len(), d.class_names.len()), (7, 10));
    let (_, test) = load_dir(dir.path()).unwrap();
    assert_eq!(d.labels, test.labels[..7]);
    assert_eq!(d.images, test.images[..7 * 3072]);

    std::fs::write(&sample, &batch[..7 * RECORD + 10]).unwrap();
    let e = err_text(load_records(&sample));
    assert!(
        e.contains("sample.bin") && e.contains("whole number of CIFAR-10 records"),
        "{e}"
    );
    std::fs::write(&sample, b"").unwrap();
    let e = err_text(load_records(&sample));
    assert!(e.contains("whole number"), "{e}");
    let e = err_text(load_records(dir.path().join("missing.bin")));
    assert!(e.contains("missing.bin"), "{e}");
}

/// Indices past the end are errors that say how many images there are,
/// never panics.
#[test]
fn out_of_range_indices_are_errors_not_panics() {
    let d = common::synthetic(5, 3, 8, 1);
    let says = |e: anyhow::Error, what: &str| {
        let e = format!("{e:#}");
        assert!(e.contains(what), "{e}");
    };
    says(
        d.image(5).unwrap_err(),
        "image 5 does not exist: the dataset has 5 images (0 to 4)",
    );
    says(d.image_bytes(9).unwrap_err(), "image 9 does not exist");
    says(d.class_name(5).unwrap_err(), "image 5 does not exist");
    says(
        d.image_row(0, 8).unwrap_err(),
        "row 8 does not exist: the images have 8 rows",
    );
    says(d.image_row(7, 0).unwrap_err(), "image 7 does not exist");
    says(d.select(&[0, 4, 5]).unwrap_err(), "image 5 does not exist");
    assert_eq!(d.select(&[4, 0]).unwrap().len(), 2);
    assert_eq!(d.take(99).len(), 5);
}
