//! Learning curves, confusion matrix and gallery: real pictures, decoded and
//! inspected pixel by pixel.
//!
//! Set `CIFAR10_PLOTS_PREVIEW=some/dir` to also keep the pictures there for
//! a look.

use base64::Engine as _;
use cifar10_cnn::data::{Dataset, CLASS_NAMES};
use cifar10_cnn::gallery::{Gallery, CAPTION_COLOR, GAP, MISTAKE_COLOR};
use cifar10_cnn::history::History;
use cifar10_cnn::plot::{self, image_to_png, TRAIN_COLOR, VAL_COLOR};
use image::{Rgb, RgbImage};

fn class_names() -> Vec<String> {
    CLASS_NAMES.iter().map(|s| s.to_string()).collect()
}

fn preview(name: &str, bytes: &[u8]) {
    if let Ok(dir) = std::env::var("CIFAR10_PLOTS_PREVIEW") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
    }
}

/// A plausible 10-epoch run: loss falls, accuracy rises, validation lags.
fn history(epochs: usize, validation: bool) -> History {
    let mut h = History::default();
    for e in 0..epochs {
        let t = e as f64;
        h.loss.push(1.9 * (-0.12 * t).exp() + 0.6);
        h.acc.push(0.75 - 0.42 * (-0.2 * t).exp());
        if validation {
            h.val_loss.push(1.7 * (-0.1 * t).exp() + 0.75 + 0.01 * t);
            h.val_acc.push(0.70 - 0.36 * (-0.22 * t).exp());
        }
        h.epoch_seconds.push(12.5);
    }
    h
}

fn decode(png: &[u8]) -> RgbImage {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG signature");
    image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .expect("PNG decodes")
        .to_rgb8()
}

fn near(p: &Rgb<u8>, c: [u8; 3], tol: i32) -> bool {
    (0..3).all(|i| (p[i] as i32 - c[i] as i32).abs() <= tol)
}

fn count_near(img: &RgbImage, c: [u8; 3], tol: i32) -> usize {
    img.pixels().filter(|p| near(p, c, tol)).count()
}

/// Pixels of `img` in the rectangle `(x, y, w, h)`.
fn pixels_in(img: &RgbImage, (x, y, w, h): (u32, u32, u32, u32)) -> Vec<Rgb<u8>> {
    let mut out = Vec::new();
    for py in y..y + h {
        for px in x..x + w {
            out.push(*img.get_pixel(px, py));
        }
    }
    out
}

fn is_dark(p: &Rgb<u8>) -> bool {
    p.0.iter().all(|&c| c < 110)
}

/// The text of every `<text>` element of an SVG.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .map(|t| {
            let start = t.find('>').unwrap() + 1;
            let end = t.find("</text>").unwrap();
            t[start..end].trim().to_string()
        })
        .collect()
}

fn has_text(svg: &str, text: &str) -> bool {
    svg_texts(svg).iter().any(|t| t == text)
}

fn is_red(p: &Rgb<u8>) -> bool {
    p[0] > 150 && p[1] < 110 && p[2] < 110
}

fn is_white(p: &Rgb<u8>) -> bool {
    p.0 == [255, 255, 255]
}

/// One evcxr output block: `(mime, content)`, and the rest of the string.
fn evcxr_block(s: &str) -> ((String, String), &str) {
    let rest = s
        .strip_prefix("EVCXR_BEGIN_CONTENT ")
        .expect("block starts with EVCXR_BEGIN_CONTENT");
    let (mime, rest) = rest.split_once('\n').expect("mime line");
    let (content, rest) = rest
        .split_once("\nEVCXR_END_CONTENT\n")
        .expect("block ends with EVCXR_END_CONTENT");
    ((mime.to_string(), content.to_string()), rest)
}

// ---------------------------------------------------------------------------
// Learning curves.

#[test]
fn curves_png_has_the_size_and_the_colours_of_both_series() {
    let fig = plot::learning_curves(&history(10, true)).unwrap();
    let png = fig.png().unwrap();
    preview("curves.png", &png);
    let img = decode(&png);
    assert_eq!(img.dimensions(), fig.dimensions());
    assert_eq!(fig.dimensions(), (1000, 420));

    let white = img.pixels().filter(|p| is_white(p)).count();
    let total = (img.width() * img.height()) as usize;
    assert!(
        white > total / 2,
        "the background should be white, only {white} of {total} pixels are"
    );
    // Lines 2 px wide and markers: hundreds of pixels of each colour, in
    // both panels.
    for (name, color) in [("training", TRAIN_COLOR), ("validation", VAL_COLOR)] {
        let left = img
            .pixels()
            .enumerate()
            .filter(|(i, p)| (*i as u32 % img.width()) < 500 && near(p, color, 30))
            .count();
        let right = img
            .pixels()
            .enumerate()
            .filter(|(i, p)| (*i as u32 % img.width()) >= 500 && near(p, color, 30))
            .count();
        assert!(
            left > 300 && right > 300,
            "{name} colour {color:?}: {left} pixels left, {right} right"
        );
    }
    // Text: dark pixels (titles, ticks, axis labels).
    assert!(
        img.pixels().filter(|p| is_dark(p)).count() > 1000,
        "no text or axes drawn"
    );
}

#[test]
fn curves_svg_has_titles_axis_labels_and_legend() {
    let svg = plot::learning_curves(&history(10, true)).unwrap().svg();
    preview("curves.svg", svg.as_bytes());
    assert!(
        svg.starts_with("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(80)]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    for text in [
        "Model loss",
        "Model accuracy",
        "Epoch",
        "Loss",
        "Accuracy",
        "training",
        "validation",
    ] {
        assert!(has_text(&svg, text), "the SVG has no text {text:?}");
    }
    // Epoch ticks are whole epochs, 1 to 10.
    for e in 1..=10 {
        assert!(has_text(&svg, &e.to_string()), "no tick for epoch {e}");
    }
    assert!(!has_text(&svg, "2.5"), "fractional epoch tick");
}

#[test]
fn curves_of_one_epoch_without_validation() {
    let fig = plot::learning_curves(&history(1, false)).unwrap();
    let svg = fig.svg();
    assert!(has_text(&svg, "training"));
    assert!(
        !svg.contains("validation"),
        "no validation series without validation data"
    );
    assert!(has_text(&svg, "1"), "the single epoch has its tick");
    assert!(
        !has_text(&svg, "0") && !has_text(&svg, "2"),
        "only epoch 1 has a tick"
    );
    let png = fig.png().unwrap();
    preview("curves_one_epoch.png", &png);
    let img = decode(&png);
    assert_eq!(img.dimensions(), (1000, 420));
    // The single point is a marker; the legend has a line.
    assert!(
        count_near(&img, TRAIN_COLOR, 30) > 40,
        "the training point is not drawn"
    );
    assert_eq!(
        count_near(&img, VAL_COLOR, 30),
        0,
        "a validation colour appeared"
    );
}

#[test]
fn curves_of_many_epochs_and_a_nan() {
    let mut h = history(120, true);
    h.loss[50] = f64::NAN;
    let fig = plot::learning_curves(&h)
        .unwrap()
        .with_size(800, 300)
        .unwrap();
    let png = fig.png().unwrap();
    preview("curves_120_epochs.png", &png);
    let img = decode(&png);
    assert_eq!(img.dimensions(), (800, 300));
    let svg = fig.svg();
    assert!(
        has_text(&svg, "100") && !has_text(&svg, "101"),
        "ticks should be round epochs"
    );
    assert!(count_near(&img, TRAIN_COLOR, 30) > 200);
}

#[test]
fn curves_reject_bad_histories() {
    let err = plot::learning_curves(&History::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no epochs"), "{err}");

    let mut h = history(3, true);
    h.acc.pop();
    let err = plot::learning_curves(&h).unwrap_err().to_string();
    assert!(err.contains("3 losses but 2 accuracies"), "{err}");

    let mut h = history(3, true);
    h.val_acc.pop();
    let err = plot::learning_curves(&h).unwrap_err().to_string();
    assert!(
        err.contains("3 validation losses but 2 validation accuracies"),
        "{err}"
    );

    let mut h = history(3, true);
    h.val_loss.pop();
    h.val_acc.pop();
    let err = plot::learning_curves(&h).unwrap_err().to_string();
    assert!(err.contains("3 epochs but 2 validation results"), "{err}");

    let fig = plot::learning_curves(&history(3, true)).unwrap();
    assert!(fig.with_size(10, 10).is_err());
}

#[test]
fn figure_saves_readable_png_and_svg_files() {
    let dir = tempfile::tempdir().unwrap();
    let fig = plot::learning_curves(&history(5, true)).unwrap();
    let png_path = dir.path().join("curves.png");
    fig.save_png(&png_path).unwrap();
    let img = image::open(&png_path).expect("saved PNG opens").to_rgb8();
    assert_eq!(img.dimensions(), fig.dimensions());
    assert!(count_near(&img, VAL_COLOR, 30) > 100);

    let svg_path = dir.path().join("curves.svg");
    fig.save_svg(&svg_path).unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && has_text(&svg, "Model loss"));

    // Overwriting works, and leaves no temporary file behind.
    fig.save_png(&png_path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Missing folders are created; a folder in the way is an error.
    let nested = dir.path().join("figures/run1/curves.png");
    fig.save_png(&nested).unwrap();
    assert_eq!(image::open(&nested).unwrap().width(), fig.dimensions().0);
    let err = fig.save_png(dir.path().join("figures")).unwrap_err();
    assert!(format!("{err:#}").contains("figures"), "{err:#}");
}

#[test]
fn figure_evcxr_content_is_one_svg_and_one_png() {
    let fig = plot::learning_curves(&history(4, true)).unwrap();
    let out = fig.evcxr_content();
    let ((mime, svg), rest) = evcxr_block(&out);
    assert_eq!(mime, "image/svg+xml");
    assert!(svg.starts_with("<svg") && has_text(&svg, "Model accuracy"));
    let ((mime, b64), rest) = evcxr_block(rest);
    assert_eq!(mime, "image/png");
    assert!(!b64.contains('\n'), "base64 must be one line");
    let png = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .expect("valid base64");
    assert_eq!(decode(&png).dimensions(), fig.dimensions());
    assert_eq!(rest, "", "nothing after the two blocks");
}

// ---------------------------------------------------------------------------
// Confusion matrix.

fn confusion() -> Vec<Vec<usize>> {
    (0..10)
        .map(|t| {
            (0..10)
                .map(|p| {
                    if t == p {
                        700 + 20 * t
                    } else {
                        (t * 7 + p * 3) % 40
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn confusion_matrix_draws_counts_names_and_a_heat_map() {
    let m = confusion();
    let fig = plot::confusion_matrix(&m, &class_names()).unwrap();
    let svg = fig.svg();
    preview("confusion.svg", svg.as_bytes());
    for name in CLASS_NAMES {
        // Once on each axis.
        assert_eq!(
            svg_texts(&svg).iter().filter(|t| *t == name).count(),
            2,
            "class {name}"
        );
    }
    for text in [
        "Confusion matrix",
        "True label",
        "Predicted label",
        "880",
        "700",
        "39",
    ] {
        assert!(has_text(&svg, text), "no text {text:?}");
    }

    let png = fig.png().unwrap();
    preview("confusion.png", &png);
    let img = decode(&png);
    assert_eq!(img.dimensions(), fig.dimensions());
    let (w, h) = fig.dimensions();
    assert!(
        (700..1400).contains(&w) && (700..1400).contains(&h),
        "{w}x{h}"
    );
    // The largest count (880) is the darkest blue; the smallest almost white.
    assert!(
        count_near(&img, [8, 48, 107], 6) > 1500,
        "no dark blue cell"
    );
    assert!(count_near(&img, [247, 251, 255], 6) > 1500, "no pale cell");
    // White digits on the dark diagonal.
    assert!(img.pixels().filter(|p| is_white(p)).count() > 1000);
}

#[test]
fn confusion_matrix_of_two_classes_and_all_zeros() {
    let names = vec!["no".to_string(), "yes".to_string()];
    let fig = plot::confusion_matrix(&[vec![0, 0], vec![0, 0]], &names).unwrap();
    decode(&fig.png().unwrap());
    assert!(has_text(&fig.svg(), "0"));
}

#[test]
fn confusion_matrix_rejects_bad_shapes() {
    let names = class_names();
    let err = plot::confusion_matrix(&confusion()[..9], &names)
        .unwrap_err()
        .to_string();
    assert!(err.contains("9 rows but there are 10 class names"), "{err}");
    let mut m = confusion();
    m[4].pop();
    let err = plot::confusion_matrix(&m, &names).unwrap_err().to_string();
    assert!(err.contains("row 4") && err.contains("9 columns"), "{err}");
    assert!(plot::confusion_matrix(&[], &[]).is_err());
}

// ---------------------------------------------------------------------------
// Gallery.

/// The source colour of pixel (x, y) of image `i`: every pixel differs.
fn source_color(i: usize, x: usize, y: usize) -> [u8; 3] {
    [(i * 25) as u8, (x * 8) as u8, (y * 8) as u8]
}

/// `n` 32x32 images, planar bytes as CIFAR-10 stores them, image `i` of
/// class `i % 10`.
fn dataset(n: usize) -> Dataset {
    let (h, w) = (32, 32);
    let mut images = Vec::with_capacity(n * 3 * h * w);
    for i in 0..n {
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    images.push(source_color(i, x, y)[c]);
                }
            }
        }
    }
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Dataset::new(images, labels, class_names(), h, w).unwrap()
}

#[test]
fn gallery_of_ten_predictions_has_the_grid_pixels_and_captions() {
    let test = dataset(12);
    let predicted: Vec<usize> = test.labels.iter().map(|&l| l as usize).collect();
    let indices: Vec<usize> = (0..10).collect();
    let gallery = Gallery::predictions(&test, &predicted, &indices).unwrap();
    assert_eq!(gallery.captions()[3], "predict: cat, answer: cat");
    assert!(gallery.mistakes().iter().all(|&m| !m));

    let png = gallery.png().unwrap();
    preview("gallery_correct.png", &png);
    let img = decode(&png);
    let layout = gallery.layout().unwrap();
    assert_eq!(img.dimensions(), (layout.width, layout.height));
    // 5 columns of 128 px images, 2 rows.
    assert_eq!(layout.width, 5 * 128 + 6 * GAP);
    let xs: std::collections::BTreeSet<u32> = layout.image_rects.iter().map(|r| r.0).collect();
    let ys: std::collections::BTreeSet<u32> = layout.image_rects.iter().map(|r| r.1).collect();
    assert_eq!((xs.len(), ys.len()), (5, 2), "{:?}", layout.image_rects);
    assert!(layout.height > 2 * 128 + 3 * GAP);

    for (i, &(x0, y0, w, h)) in layout.image_rects.iter().enumerate() {
        assert_eq!((w, h), (128, 128));
        // Every source pixel is a 4x4 block of the same colour.
        for y in 0..32u32 {
            for x in 0..32u32 {
                let want = source_color(i, x as usize, y as usize);
                for (dx, dy) in [(0, 0), (3, 3), (1, 2)] {
                    let got = img.get_pixel(x0 + 4 * x + dx, y0 + 4 * y + dy).0;
                    assert_eq!(got, want, "image {i}, source pixel ({x}, {y})");
                }
            }
        }
        // The caption area above holds dark text in the caption colour,
        // proving the embedded font rendered.
        let caption = pixels_in(&img, layout.caption_rects[i]);
        let ink = caption.iter().filter(|p| is_dark(p)).count();
        assert!(ink > 150, "caption {i}: only {ink} text pixels");
        assert!(
            caption.iter().any(|p| near(p, CAPTION_COLOR, 10)),
            "caption {i}: no pixel of the caption colour"
        );
        assert!(!caption.iter().any(is_red), "caption {i} is red");
        assert_eq!(layout.caption_lines[i].join(" "), gallery.captions()[i]);
    }
}

#[test]
fn gallery_marks_wrong_predictions_in_red() {
    let test = dataset(10);
    let mut predicted: Vec<usize> = test.labels.iter().map(|&l| l as usize).collect();
    predicted[3] = 5; // a cat taken for a dog
    let gallery = Gallery::predictions(&test, &predicted, &[2, 3, 4]).unwrap();
    assert_eq!(gallery.captions()[1], "predict: dog, answer: cat");
    assert_eq!(gallery.mistakes(), [false, true, false]);
    let png = gallery.png().unwrap();
    preview("gallery_mistake.png", &png);
    let img = decode(&png);
    let layout = gallery.layout().unwrap();
    assert_eq!(
        layout.width,
        3 * 128 + 4 * GAP,
        "3 images make one row of 3"
    );

    let red = |i: usize| {
        pixels_in(&img, layout.caption_rects[i])
            .iter()
            .filter(|p| is_red(p))
            .count()
    };
    assert!(red(1) > 150, "the wrong caption is not red");
    assert_eq!(red(0) + red(2), 0, "a right caption is red");
    // A red frame just outside the wrong image, none around the others.
    for (i, want) in [(0, false), (1, true), (2, false)] {
        let (x, y, w, h) = layout.image_rects[i];
        for p in [
            (x - 1, y + h / 2),
            (x + w, y + h / 2),
            (x + w / 2, y + h + 1),
        ] {
            assert_eq!(
                near(img.get_pixel(p.0, p.1), MISTAKE_COLOR, 0),
                want,
                "image {i} at {p:?}"
            );
        }
    }
}

#[test]
fn gallery_columns_and_scale() {
    let images: Vec<RgbImage> = (0..10)
        .map(|i| RgbImage::from_pixel(32, 32, Rgb([i * 20, 100, 200])))
        .collect();
    let captions: Vec<String> = (0..10).map(|i| format!("image {i}")).collect();
    let g = Gallery::new(images, captions).unwrap().columns(3).scale(2);
    let layout = g.layout().unwrap();
    assert_eq!(layout.width, 3 * 64 + 4 * GAP);
    let ys: std::collections::BTreeSet<u32> = layout.image_rects.iter().map(|r| r.1).collect();
    assert_eq!(ys.len(), 4, "10 images in 3 columns make 4 rows");
    let img = decode(&g.png().unwrap());
    let (x, y, w, h) = layout.image_rects[9];
    assert_eq!((w, h), (64, 64));
    assert_eq!(img.get_pixel(x + 10, y + 10).0, [180, 100, 200]);
    // columns(0) is one column, not a panic.
    let one = g.clone().columns(0).layout().unwrap();
    assert_eq!(one.width, 64 + 2 * GAP);
}

#[test]
fn gallery_random_picks_distinct_images_reproducibly() {
    let test = dataset(40);
    let predicted: Vec<usize> = test.labels.iter().map(|&l| l as usize).collect();
    // Which test image a gallery cell holds: its red channel is 25 * index.
    let picked = |g: &Gallery| -> Vec<usize> {
        let img = decode(&g.png().unwrap());
        g.layout()
            .unwrap()
            .image_rects
            .iter()
            .map(|r| img.get_pixel(r.0, r.1).0[0] as usize / 25)
            .collect()
    };
    let a = Gallery::random(&test, &predicted, 10, 7).unwrap();
    let b = Gallery::random(&test, &predicted, 10, 7).unwrap();
    let c = Gallery::random(&test, &predicted, 10, 8).unwrap();
    assert_eq!(a.len(), 10);
    assert_eq!(a.captions(), b.captions());
    let (pa, pc) = (picked(&a), picked(&c));
    let distinct: std::collections::BTreeSet<_> = pa.iter().collect();
    assert_eq!(distinct.len(), 10, "{pa:?}");
    assert_eq!(pa, picked(&b), "same seed, same images");
    assert_ne!(pa, pc, "another seed, other images");
    // All of them.
    assert_eq!(
        Gallery::random(&test.clone(), &predicted, 40, 1)
            .unwrap()
            .len(),
        40
    );
}

#[test]
fn gallery_errors_say_what_is_wrong() {
    let img = || RgbImage::new(32, 32);
    let err = Gallery::new(vec![img(), img()], vec!["a".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 images and 1 captions"), "{err}");
    let err = Gallery::new(vec![], vec![]).unwrap_err().to_string();
    assert!(err.contains("at least one image"), "{err}");

    let test = dataset(10);
    let predicted: Vec<usize> = vec![0; 10];
    let err = Gallery::predictions(&test, &predicted, &[1, 10])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("index 10 is out of range") && err.contains("10 images"),
        "{err}"
    );
    let err = Gallery::predictions(&test, &predicted[..9], &[1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("9 predictions for 10 test images"), "{err}");
    let err = Gallery::predictions(&test, &[10; 10], &[1])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prediction 10") && err.contains("not a class"),
        "{err}"
    );
    let err = Gallery::predictions(&test, &predicted, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least one image"), "{err}");
    let err = Gallery::random(&test, &predicted, 11, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("11 distinct images") && err.contains("of 10"),
        "{err}"
    );
    assert!(Gallery::random(&test, &predicted, 0, 0).is_err());
}

#[test]
fn gallery_evcxr_content_is_a_base64_png() {
    let test = dataset(10);
    let predicted: Vec<usize> = (0..10).map(|i| (i + 1) % 10).collect();
    let g = Gallery::random(&test, &predicted, 10, 0).unwrap();
    let out = g.evcxr_content().unwrap();
    let ((mime, b64), rest) = evcxr_block(&out);
    assert_eq!(mime, "image/png");
    assert_eq!(rest, "");
    let png = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .unwrap();
    preview("gallery_all_wrong.png", &png);
    assert_eq!(png, g.png().unwrap(), "the same PNG as png()");
}

#[test]
fn gallery_saves_a_png_file() {
    let dir = tempfile::tempdir().unwrap();
    let test = dataset(3);
    let g = Gallery::predictions(&test, &[0, 1, 2], &[0, 1, 2]).unwrap();
    let path = dir.path().join("gallery.png");
    g.save_png(&path).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    let layout = g.layout().unwrap();
    assert_eq!(img.dimensions(), (layout.width, layout.height));
}

#[test]
fn image_to_png_round_trips() {
    let src = RgbImage::from_fn(7, 5, |x, y| Rgb([x as u8 * 30, y as u8 * 40, 9]));
    let back = decode(&image_to_png(&src).unwrap());
    assert_eq!(back, src);
}

/// Three runs of different lengths: each run's colour of the palette in
/// both panels, its name in the legend, the panels' titles.
#[test]
fn compare_curves_overlays_each_run_in_its_own_colour() {
    // Apart from each other, so no run's line hides another's.
    let shifted = |epochs: usize, by: f64| {
        let mut h = history(epochs, true);
        h.val_loss.iter_mut().for_each(|v| *v += by);
        h.val_acc.iter_mut().for_each(|v| *v -= by / 2.0);
        h
    };
    let (a, b, c) = (shifted(10, 0.0), shifted(6, 0.3), shifted(12, -0.3));
    let runs = [
        ("1. article", &a),
        ("2. augmentation", &b),
        ("3. batch norm", &c),
    ];
    let fig = plot::compare_curves(&runs).unwrap();
    let png = fig.png().unwrap();
    preview("compare.png", &png);
    let img = decode(&png);
    assert_eq!(img.dimensions(), (1000, 420));
    for (i, color) in plot::PALETTE.iter().take(3).enumerate() {
        let side = |left: bool| {
            img.enumerate_pixels()
                .filter(|(x, _, p)| (*x < 500) == left && near(p, *color, 30))
                .count()
        };
        let (left, right) = (side(true), side(false));
        assert!(
            left > 200 && right > 200,
            "run {i} colour {color:?}: {left} pixels left, {right} right"
        );
    }
    assert_eq!(
        count_near(&img, plot::PALETTE[3], 20),
        0,
        "a fourth run's colour is drawn, with three runs"
    );
    let svg = fig.svg();
    for text in [
        "Validation loss",
        "Validation accuracy",
        "1. article",
        "2. augmentation",
        "3. batch norm",
    ] {
        assert!(has_text(&svg, text), "the SVG has no text {text:?}");
    }
    // The longest run sets the epoch axis.
    assert!(
        has_text(&svg, "12"),
        "no tick for the longest run's last epoch"
    );
}

#[test]
fn compare_curves_says_what_is_missing() {
    let err = plot::compare_curves(&[]).unwrap_err().to_string();
    assert!(err.contains("no runs to compare"), "{err}");
    let (with, without) = (history(3, true), history(3, false));
    let err = plot::compare_curves(&[("ok", &with), ("plain", &without)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"plain\"") && err.contains("no validation"),
        "{err}"
    );
}

/// Each row: the image as it is, then augmented copies whose captions say
/// where the picture moved; a lit pixel is found where the caption puts it.
#[test]
fn augmented_gallery_shows_each_copy_moved_as_its_caption_says() {
    let (h, w) = (32usize, 32usize);
    let mut images = vec![0u8; 2 * 3 * h * w];
    for i in 0..2 {
        for c in 0..3 {
            images[(i * 3 + c) * h * w + 16 * w + 10] = 255; // a white dot at (16, 10)
        }
    }
    let data = Dataset::new(images, vec![3, 5], class_names(), h, w).unwrap();
    let copies = 6;
    let g = Gallery::augmented(&data, 2, copies, 4, 0).unwrap();
    assert_eq!(g.len(), 2 * (copies + 1));
    assert_eq!(g.captions()[0], CLASS_NAMES[3]);
    assert_eq!(g.captions()[copies + 1], CLASS_NAMES[5]);
    let layout = g.layout().unwrap();
    // One row per image: the first column's images sit at one x.
    assert_eq!(layout.image_rects[0].0, layout.image_rects[copies + 1].0);
    assert!(layout.image_rects[copies + 1].1 > layout.image_rects[0].1);
    let img = g.rgb_image().unwrap();
    let mut moved = 0;
    for (k, caption) in g.captions().iter().enumerate() {
        let (mut x, mut y) = (10i64, 16i64);
        if k % (copies + 1) != 0 {
            for part in caption.split(", ") {
                let (v, dir) = part.split_once(' ').unwrap_or((part, ""));
                match (v, dir) {
                    ("mirrored", _) => x = w as i64 - 1 - x,
                    ("as", "is") => {}
                    (v, "right") => x += v.parse::<i64>().unwrap(),
                    (v, "left") => x -= v.parse::<i64>().unwrap(),
                    (v, "down") => y += v.parse::<i64>().unwrap(),
                    (v, "up") => y -= v.parse::<i64>().unwrap(),
                    _ => panic!("caption {caption:?}"),
                }
            }
            moved += (caption != "as is") as usize;
        }
        let (rx, ry, rw, _) = layout.image_rects[k];
        let s = rw / w as u32; // the enlargement
        let lit = |x: i64, y: i64| {
            img.get_pixel(rx + x as u32 * s + s / 2, ry + y as u32 * s + s / 2)
                .0
                == [255; 3]
        };
        assert!(lit(x, y), "copy {k} ({caption}): no dot at ({x}, {y})");
        let lit_count = (0..w as i64)
            .flat_map(|x| (0..h as i64).map(move |y| (x, y)))
            .filter(|&(x, y)| lit(x, y))
            .count();
        assert_eq!(lit_count, 1, "copy {k} ({caption})");
    }
    assert!(
        moved >= copies,
        "the copies should mostly move: {:?}",
        g.captions()
    );
    assert!(Gallery::augmented(&data, 3, 1, 4, 0).is_err());
}
