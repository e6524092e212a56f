//! Beyond the article: image folders, the confusion matrix, mistakes, and
//! augmentation.

mod common;

use candle_core::{Device, Tensor};
use cifar10_cnn::data::load_image_folder;
use cifar10_cnn::mistakes::{mistakes_gallery, Confusion};
use cifar10_cnn::train::augment;
use image::{Rgb, RgbImage};
use rand::SeedableRng;

/// Writes `dir/<class>/<i>.png|jpg` images of different sizes and colours.
fn write_folder(dir: &std::path::Path) {
    let colours = [
        ("apples", [200u8, 30, 30]),
        ("leaves", [30, 180, 40]),
        ("sky", [40, 90, 220]),
    ];
    for (class, colour) in colours {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..6u32 {
            let img = RgbImage::from_pixel(40 + i * 7, 30 + i * 5, Rgb(colour));
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            img.save(dir.join(class).join(format!("{i}.{ext}")))
                .unwrap();
        }
        std::fs::write(dir.join(class).join("notes.txt"), "not an image").unwrap();
    }
}

#[test]
fn image_folders_load_resized_with_class_names_from_subfolders() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path());
    let data = load_image_folder(dir.path(), 32, 32).unwrap();
    assert_eq!(data.len(), 18);
    assert_eq!(data.class_names, ["apples", "leaves", "sky"]);
    assert_eq!((data.height, data.width), (32, 32));
    // a uniform image stays that colour after resizing (JPEG within a few levels)
    let px = data.image(7).unwrap().get_pixel(16, 16).0; // leaves, 1.jpg
    assert_eq!(data.labels[7], 1);
    assert!(
        px.iter()
            .zip([30, 180, 40])
            .all(|(&a, b)| (a as i32 - b).abs() <= 6),
        "{px:?}"
    );

    let (train, test) = data.split_stratified(1.0 / 3.0, 0).unwrap();
    assert_eq!((train.len(), test.len()), (12, 6));
    for k in 0..3u8 {
        assert_eq!(
            test.labels.iter().filter(|&&l| l == k).count(),
            2,
            "every class in the test set"
        );
    }
}

#[test]
fn bad_image_folders_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        load_image_folder(dir.path().join("missing"), 32, 32)
            .err()
            .unwrap()
    );
    assert!(e.contains("does not exist"), "{e}");
    std::fs::create_dir_all(dir.path().join("only")).unwrap();
    let e = format!("{:#}", load_image_folder(dir.path(), 32, 32).err().unwrap());
    assert!(e.contains("at least 2"), "{e}");
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    let e = format!("{:#}", load_image_folder(dir.path(), 32, 32).err().unwrap());
    assert!(e.contains("no PNG or JPEG"), "{e}");
    std::fs::write(dir.path().join("only/a.png"), b"not a png").unwrap();
    std::fs::write(dir.path().join("other/b.png"), b"not a png").unwrap();
    let e = format!("{:#}", load_image_folder(dir.path(), 32, 32).err().unwrap());
    assert!(e.contains("a.png"), "{e}");
}

#[test]
fn confusion_matrix_counts_and_ranks_mistakes() {
    let data = common::synthetic(8, 4, 4, 0); // labels 0 1 2 3 0 1 2 3
    let predicted = [0, 1, 2, 3, 3, 0, 2, 0];
    let c = Confusion::new(&data, &predicted).unwrap();
    assert_eq!(c.matrix[3][3], 1);
    assert_eq!(c.matrix[3][0], 1);
    assert_eq!(c.matrix[1][0], 1);
    assert_eq!(c.matrix.iter().flatten().sum::<usize>(), 8);
    assert_eq!(c.per_class_accuracy(), [0.5, 0.5, 1.0, 0.5]);
    let pairs = c.most_confused(2);
    assert_eq!(pairs[0], ("class0".to_string(), "class3".to_string(), 1));
    assert!(c.report(3).contains("class1 -> class0: 1"));
    let png = c.plot().unwrap().png().unwrap();
    assert!(image::load_from_memory(&png).is_ok());
    assert!(Confusion::new(&data, &predicted[..7]).is_err());
}

#[test]
fn mistakes_gallery_shows_the_most_confident_errors_first() {
    let data = common::synthetic(3, 3, 8, 0); // labels 0 1 2
    let probs = Tensor::new(
        &[[0.9f32, 0.05, 0.05], [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]],
        &Device::Cpu,
    )
    .unwrap();
    let g = mistakes_gallery(&data, &probs, 10).unwrap();
    assert_eq!(g.captions(), ["predict: class0 (70%), answer: class1"]);
    // The notebook says mistakes are framed in red: so are these, and the
    // picture has the frame's colour.
    assert_eq!(g.mistakes(), [true]);
    let png = image::load_from_memory(&g.png().unwrap())
        .unwrap()
        .to_rgb8();
    let red = cifar10_cnn::gallery::MISTAKE_COLOR;
    assert!(
        png.pixels().any(|p| p.0 == red),
        "no red frame in the picture"
    );
    let right = Tensor::new(
        &[[0.9f32, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.3, 0.6]],
        &Device::Cpu,
    )
    .unwrap();
    assert!(mistakes_gallery(&data, &right, 10).is_err());
}

#[test]
fn augmentation_shifts_and_flips_without_changing_content() {
    // one 1-channel 6x6 image with a single bright pixel
    let mut v = vec![0f32; 36];
    v[2 * 6 + 3] = 1.0;
    let x = Tensor::from_vec(v, (1, 1, 6, 6), &Device::Cpu).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut moved = 0;
    for _ in 0..50 {
        let y: Vec<f32> = augment(&x, 1, &mut rng)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ones = y.iter().filter(|&&p| p == 1.0).count();
        assert!(ones == 1, "the pixel stays inside with pad 1");
        assert_eq!(y.iter().filter(|&&p| p != 0.0 && p != 1.0).count(), 0);
        if y[2 * 6 + 3] != 1.0 {
            moved += 1;
        }
    }
    assert!(moved > 20, "most draws move the pixel: {moved}");
}
