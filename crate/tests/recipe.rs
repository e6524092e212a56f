//! Recipes and runs (the improving notebook): the article's network built
//! from a recipe, runs saved beside their recipe and reloaded without
//! training, runs of another recipe refused, the test-time flips and the
//! comparison table.

mod common;

use candle_core::Tensor;
use cifar10_cnn::data::flip_horizontal;
use cifar10_cnn::layers::{article_layers, Layer};
use cifar10_cnn::recipe::{flip_score, OptimizerRecipe, Recipe, Run, Runs, RunsTable};

/// 12x12 images: the smallest the article's network takes (two blocks of
/// a same and a valid convolution, each pooled).
fn data(n: usize, seed: u64) -> (Tensor, Tensor) {
    let d = common::synthetic(n, 4, 12, seed);
    (d.images_f32().unwrap(), d.labels_one_hot().unwrap())
}

fn quick() -> Recipe {
    Recipe {
        epochs: 2,
        batch_size: 16,
        ..Recipe::article()
    }
}

#[test]
fn the_article_recipe_builds_the_article_network() {
    assert_eq!(Recipe::article().layers(10), article_layers(10));
    // BatchNormalization goes between each convolution (and the dense
    // layer) and its ReLU; dropout 0 leaves the layer out.
    let r = Recipe {
        batch_norm: true,
        conv_dropout: 0.0,
        ..Recipe::article()
    };
    let layers = r.layers(10);
    let names: Vec<&str> = layers.iter().map(|l| l.kind().class_name()).collect();
    let bn: Vec<usize> = (0..names.len())
        .filter(|&i| names[i] == "BatchNormalization")
        .collect();
    assert_eq!(bn.len(), 5, "{names:?}");
    for i in bn {
        assert!(
            matches!(names[i - 1], "Conv2D" | "Dense") && names[i + 1] == "Activation",
            "{names:?}"
        );
        assert!(matches!(&layers[i + 1], l if *l == cifar10_cnn::layers::relu()));
    }
    assert_eq!(names.iter().filter(|n| **n == "Dropout").count(), 1);
    assert!(!layers
        .iter()
        .any(|l| matches!(l, Layer::Dense(d) if d.units != 512 && d.units != 10)));
}

#[test]
fn recipes_read_back_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recipe.json");
    let r = Recipe {
        optimizer: OptimizerRecipe::Sgd {
            learning_rate: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup: 0.08,
        },
        label_smoothing: 0.1,
        ..Recipe::article()
    };
    std::fs::write(&file, serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(Recipe::load(&file).unwrap(), r);
    let text = serde_json::to_string(&r)
        .unwrap()
        .replace("\"augment\"", "\"augmnet\"");
    std::fs::write(&file, text).unwrap();
    let e = format!("{:#}", Recipe::load(&file).err().unwrap());
    assert!(
        e.contains("is not a recipe") && e.contains("augmnet"),
        "{e}"
    );
    let late = Recipe {
        optimizer: OptimizerRecipe::Sgd {
            learning_rate: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            warmup: 1.0,
        },
        ..r.clone()
    };
    let e = format!("{:#}", late.check().err().unwrap());
    assert!(
        e.contains("warmup is the fraction") && e.contains("got 1"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        Recipe {
            conv_dropout: 1.0,
            ..r
        }
        .check()
        .err()
        .unwrap()
    );
    assert!(e.contains("conv_dropout must be"), "{e}");
}

/// The SGD recipe's rate climbs to its peak over the warm-up epochs and
/// falls to 0 by the last step.
#[test]
fn the_sgd_recipe_warms_up_then_decays_to_zero() {
    let (x, y) = data(80, 1);
    let r = Recipe {
        optimizer: OptimizerRecipe::Sgd {
            learning_rate: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup: 1.0 / 3.0,
        },
        epochs: 3,
        ..quick()
    };
    let mut model = r.model(&x, 4).unwrap();
    assert_eq!(model.learning_rate().unwrap(), 0.0);
    let h = model
        .fit(
            &x,
            &y,
            cifar10_cnn::train::Fit {
                verbose: 0,
                ..r.fit()
            },
        )
        .unwrap();
    let lr = &h.learning_rate;
    assert!((lr[0] - 0.05).abs() < 1e-12, "{lr:?}");
    assert!(lr[1] < 0.05 && lr[1] > 0.0, "{lr:?}");
    assert!(lr[2].abs() < 1e-12, "{lr:?}");
}

#[test]
fn a_run_is_kept_with_its_recipe_and_reloaded_without_training() {
    let (x, y) = data(96, 2);
    let (xt, yt) = data(40, 3);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("runs");
    let mut runs = Runs::new(&dir, (&x, &y), (&xt, &yt)).unwrap();
    runs.verbose = 0;
    let first = runs.train("1. The article", &quick()).unwrap();
    let folder = dir.join("1-the-article");
    assert_eq!(runs.folder("1. The article"), folder);
    for f in [
        "recipe.json",
        "run.json",
        "history.json",
        "model.json",
        "model.safetensors",
    ] {
        assert!(folder.join(f).is_file(), "{f} missing");
    }
    assert!(
        !folder.join("backup").exists(),
        "the backup outlived the saved run"
    );
    assert_eq!(first.history.epochs(), 2);
    assert_eq!(first.train_images, 96);
    assert!(first.train_seconds > 0.0 && !first.machine.is_empty());

    // Again, in a new session: loaded, not trained (training would write the model again).
    std::fs::remove_file(folder.join("model.safetensors")).unwrap();
    let mut again = Runs::new(&dir, (&x, &y), (&xt, &yt)).unwrap();
    again.verbose = 0;
    let loaded = again.train("1. The article", &quick()).unwrap();
    assert!(
        !folder.join("model.safetensors").exists(),
        "it trained again"
    );
    assert_eq!(loaded.history, first.history);
    assert_eq!(loaded.test, first.test);
    assert_eq!(again.runs.len(), 1);
    // The same name twice replaces the entry.
    again.train("1. The article", &quick()).unwrap();
    assert_eq!(again.runs.len(), 1);

    // Another recipe, or other data, under the same name: refused, saying what differs.
    let e = again
        .train(
            "1. The article",
            &Recipe {
                epochs: 3,
                ..quick()
            },
        )
        .err()
        .unwrap();
    let e = format!("{e:#}");
    assert!(
        e.contains("epochs 2 (this one: 3)") && e.contains("another name"),
        "{e}"
    );
    let (x2, y2) = data(64, 4);
    let mut other = Runs::new(&dir, (&x2, &y2), (&xt, &yt)).unwrap();
    let e = format!(
        "{:#}",
        other.train("1. The article", &quick()).err().unwrap()
    );
    assert!(
        e.contains("other training data: 96 images (this one: 64)"),
        "{e}"
    );
}

#[test]
fn test_time_flips_average_an_image_and_its_mirror() {
    let (x, y) = data(96, 5);
    let (xt, yt) = data(48, 6);
    let r = quick();
    let mut model = r.model(&x, 4).unwrap();
    model
        .fit(
            &x,
            &y,
            cifar10_cnn::train::Fit {
                verbose: 0,
                ..r.fit()
            },
        )
        .unwrap();
    // The mirror reverses each row.
    let f = flip_horizontal(&xt).unwrap();
    let row = |t: &Tensor| -> Vec<f32> {
        t.get(3)
            .unwrap()
            .get(1)
            .unwrap()
            .get(5)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut rev = row(&xt);
    rev.reverse();
    assert_eq!(row(&f), rev);
    // Both views count alike: the score of the mirrors is the same.
    let a = flip_score(&mut model, &xt, &yt).unwrap();
    let b = flip_score(&mut model, &f, &yt).unwrap();
    assert!(
        (a.loss - b.loss).abs() < 1e-6 && a.accuracy == b.accuracy,
        "{a:?} {b:?}"
    );
    // On images that are their own mirror, it is the plain score.
    let sym = ((&xt + &f).unwrap() * 0.5).unwrap();
    let plain = model.evaluate(&sym, &yt).unwrap();
    let flipped = flip_score(&mut model, &sym, &yt).unwrap();
    assert!(
        (plain.loss - flipped.loss).abs() < 1e-5,
        "{plain:?} {flipped:?}"
    );
    assert_eq!(plain.accuracy, flipped.accuracy);
}

#[test]
fn the_table_shows_every_run_and_its_time_against_the_first() {
    let (x, y) = data(64, 7);
    let (xt, yt) = data(32, 8);
    let work = tempfile::tempdir().unwrap();
    let mut runs = Runs::new(work.path(), (&x, &y), (&xt, &yt)).unwrap();
    runs.verbose = 0;
    let a = runs.train("1. article", &quick()).unwrap();
    let b = runs
        .train(
            "2. flips <both>",
            &Recipe {
                augment: true,
                flip_test: true,
                ..quick()
            },
        )
        .unwrap();
    let md = runs.table().to_string();
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 4, "{md}");
    assert!(lines[0].contains("test accuracy") && lines[0].contains("training time"));
    assert!(
        lines[2].starts_with("| 1. article | ") && lines[2].contains("(1.00×)"),
        "{md}"
    );
    assert!(
        lines[2].contains(&format!("{:.4}", a.test.accuracy)),
        "{md}"
    );
    assert!(
        lines[2].contains(" – "),
        "the article has no flip score: {md}"
    );
    let flip = format!("{:.4}", b.test_flip.unwrap().accuracy);
    assert!(lines[3].contains(&flip), "{md}");
    let ratio = format!("({:.2}×)", b.train_seconds / a.train_seconds);
    assert!(lines[3].contains(&ratio), "{md}");
    // A run trained on another machine names it instead of a time ratio.
    let elsewhere = Run {
        machine: "Other CPU, 8 threads, AVX2".into(),
        ..b.clone()
    };
    let md = RunsTable(vec![a.clone(), elsewhere]).to_string();
    let row = md.lines().nth(3).unwrap();
    assert!(
        row.contains("(on Other CPU, 8 threads, AVX2)") && !row.contains('×'),
        "{md}"
    );
    let html = runs.table().html();
    assert!(
        html.starts_with("<table") && html.matches("<tr>").count() == 3,
        "{html}"
    );
    assert!(html.contains("2. flips &lt;both&gt;"), "{html}");
    // The plot overlays both runs.
    let svg = runs.plot().unwrap().svg();
    assert!(svg.contains("1. article") && svg.contains("2. flips"));
}
