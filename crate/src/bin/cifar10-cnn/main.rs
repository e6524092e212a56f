//! The article end to end without Jupyter: load CIFAR-10, train the CNN,
//! save it, load it back, evaluate it and print a few predictions.
//!
//!     cargo run --release -p cifar10-cnn -- train --epochs 25 --out results
//!     cargo run --release -p cifar10-cnn -- bench
//!     cargo run --release -p cifar10-cnn -- recipe results/improving/5-label-smoothing-test-time-flips/recipe.json --seeds 1,2
//!     cargo run --release -p cifar10-cnn -- compare results/improving
//!     cifar10-cnn check --train sample_train.bin --test sample_test.bin   (on a GPU machine)

mod check;

use anyhow::Result;
use candle_core::Tensor;
use cifar10_cnn::data::{self, Dataset};
use cifar10_cnn::device::{describe, pick_device, Device};
use cifar10_cnn::layers::{article_layers, batch_normalization, Layer};
use cifar10_cnn::model::Sequential;
use cifar10_cnn::train::{Adam, BackupAndRestore, Fit};
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(version, about = "The Keras CIFAR-10 CNN tutorial in Rust")]
enum Command {
    /// Train the article's model, save it, load it, evaluate it, show predictions.
    Train(TrainArgs),
    /// Train a recipe of the improving notebook (a JSON file, such as a run's recipe.json)
    /// as one run per seed, each saved in a folder of its own, and print them as a table.
    Recipe(RecipeArgs),
    /// Compare the finished runs in a folder (such as results/improving): their table, and
    /// their validation curves overlaid, written beside them as table.md and comparison.png.
    Compare(CompareArgs),
    /// Time the article's training step and inference at one batch size; prints one JSON line.
    Bench(BenchArgs),
    /// Time an epoch of 45,000 images on this machine's device, check that training there
    /// learns on a real sample, and compare its predictions with the CPU's; one JSON line.
    Check(check::CheckArgs),
}

#[derive(Parser, Debug)]
struct BenchArgs {
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Timed training steps (after 3 warm-up steps); the median is reported.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// The article's model with a BatchNormalization after each convolution.
    #[arg(long)]
    batch_norm: bool,
    /// The model and optimizer of a recipe (a JSON file) instead of the article's.
    #[arg(long, conflicts_with = "batch_norm")]
    recipe: Option<PathBuf>,
    /// The article's step and its BatchNormalization variant's, in turn, a
    /// pair at a time in one process: the median of the pairs' ratios (issue
    /// #19's ≤ 1.25× bar), which a noisy host moves far less than separate runs.
    #[arg(long, conflicts_with_all = ["batch_norm", "recipe"])]
    batch_norm_ratio: bool,
}

#[derive(Parser, Debug)]
struct CompareArgs {
    /// The runs' folder: each subfolder with a run.json is a run.
    #[arg(default_value = "results/improving")]
    dir: PathBuf,
}

#[derive(Parser, Debug)]
struct RecipeArgs {
    /// The recipe (see cifar10_cnn::recipe::Recipe for its fields).
    recipe: PathBuf,
    /// The seeds to train, e.g. 0,1,2 (default: the recipe's).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// The runs' name (default: the recipe's folder name); with --seeds, each run's is
    /// followed by "seed S". Without --seeds the recipe trains as the run NAME, which is how
    /// the improving notebook's steps can be trained here and then loaded there.
    #[arg(long)]
    name: Option<String>,
    /// Where the runs are kept, one folder each; a finished run there is loaded, not trained.
    #[arg(long, default_value = "results/improving")]
    out: PathBuf,
    /// Train on the first N training images only (default: all 50,000).
    #[arg(long)]
    train_size: Option<usize>,
    /// Folder of the CIFAR-10 binary version (default: $CIFAR10_DIR, else download from the Hub).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Keras's verbose: 0 silent, 1 a progress bar within each epoch, 2 one line per epoch.
    #[arg(long, default_value_t = 2)]
    verbose: u8,
}

#[derive(Parser, Debug)]
struct TrainArgs {
    /// Passes over the training data.
    #[arg(long, default_value_t = 25)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Train on the first N training images only (default: all 50,000).
    #[arg(long)]
    train_size: Option<usize>,
    /// Evaluate on the first N test images only (default: all 10,000).
    #[arg(long)]
    test_size: Option<usize>,
    #[arg(long, default_value_t = 0.1)]
    validation_split: f64,
    /// Seeds the initial weights, dropout and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder of the CIFAR-10 binary version (default: $CIFAR10_DIR, else download from the Hub).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the model, history and curves go.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Where each epoch's backup goes, to resume after a crash (default: OUT/backup).
    #[arg(long)]
    backup_dir: Option<PathBuf>,
    /// How many test predictions to print.
    #[arg(long, default_value_t = 10)]
    show: usize,
    /// Random crops (padding 4) and horizontal flips of the training images; the article has none.
    #[arg(long)]
    augment: bool,
    /// Keras's verbose: 0 silent, 1 a progress bar within each epoch, 2 one line per epoch.
    #[arg(long, default_value_t = 1)]
    verbose: u8,
}

fn main() -> Result<()> {
    match Command::parse() {
        Command::Train(args) => train(args),
        Command::Recipe(args) => recipe(args),
        Command::Compare(args) => compare(args),
        Command::Bench(args) => bench(args),
        Command::Check(args) => check::check(args),
    }
}

/// Everything the run needs, checked before anything is loaded or trained.
fn check_train_args(args: &TrainArgs) -> Result<()> {
    for (flag, value) in [
        ("--epochs", Some(args.epochs)),
        ("--batch-size", Some(args.batch_size)),
        ("--train-size", args.train_size),
        ("--test-size", args.test_size),
    ] {
        anyhow::ensure!(value != Some(0), "{flag} 0: it must be at least 1");
    }
    data::split_sizes(1, args.validation_split)?;
    let backup = args
        .backup_dir
        .clone()
        .unwrap_or_else(|| args.out.join("backup"));
    for (what, dir) in [("--out", &args.out), ("the backup folder", &backup)] {
        anyhow::ensure!(
            !dir.is_file(),
            "{what} {} is a file: it must be a folder (it is created if missing)",
            dir.display()
        );
    }
    Ok(())
}

fn train(args: TrainArgs) -> Result<()> {
    check_train_args(&args)?;
    let device = pick_device()?;
    println!("device: {}", describe(&device));

    let (train, test) = match &args.data {
        Some(dir) => data::load_dir(dir)?,
        None => data::load_data()?,
    };
    let train = subset(train, args.train_size);
    let test = subset(test, args.test_size);
    println!(
        "x_train: {} images, x_test: {} images",
        train.len(),
        test.len()
    );
    let (x_train, y_train) = (train.images_f32()?, train.labels_one_hot()?);
    let (x_test, y_test) = (test.images_f32()?, test.labels_one_hot()?);

    let mut model = Sequential::article(
        &x_train.dims()[1..],
        train.num_classes(),
        args.seed,
        &device,
    )?;
    model.summary()?;
    model.compile(Adam::default())?;
    let fit = Fit {
        batch_size: args.batch_size,
        epochs: args.epochs,
        validation_split: args.validation_split,
        augment: args.augment,
        backup_dir: Some(
            args.backup_dir
                .clone()
                .unwrap_or_else(|| args.out.join("backup")),
        ),
        verbose: args.verbose,
        ..Fit::default()
    };
    let backup = fit.backup_dir.clone();
    let history = model.fit(&x_train, &y_train, fit)?;

    let stem = args.out.join("cifar10_cnn");
    let (json, weights) = model.save(&stem)?;
    history.save(args.out.join("history.json"))?;
    // Only now is the run safe on disk without its backup.
    if let Some(dir) = &backup {
        BackupAndRestore::remove(dir)?;
    }
    cifar10_cnn::plot::learning_curves(&history)?.save_png(args.out.join("learning_curves.png"))?;
    println!("saved {} and {}", json.display(), weights.display());

    let mut model = Sequential::load_on(&stem, &device)?;
    let score = model.evaluate(&x_test, &y_test)?;
    println!("Test Data loss: {:.4}", score.loss);
    println!("Test Data accuracy: {:.4}", score.accuracy);

    let predicted = model.predict_classes(&x_test)?;
    for (i, &p) in predicted.iter().enumerate().take(args.show) {
        println!(
            "test image {i}: predict: {}, answer: {}",
            test.class_names[p],
            test.class_name(i)?
        );
    }
    Ok(())
}

/// Each seed of a recipe as a run of its own, then the table of them.
fn recipe(args: RecipeArgs) -> Result<()> {
    use cifar10_cnn::recipe::{Recipe, Runs};
    let recipe = Recipe::load(&args.recipe)?;
    anyhow::ensure!(
        args.train_size != Some(0),
        "--train-size 0: it must be at least 1"
    );
    anyhow::ensure!(args.verbose <= 2, "--verbose must be 0, 1 or 2");
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .recipe
            .canonicalize()?
            .parent()
            .and_then(|d| d.file_name())
            .map_or("recipe".into(), |n| n.to_string_lossy().into_owned()),
    };
    let (train, test) = match &args.data {
        Some(dir) => data::load_dir(dir)?,
        None => data::load_data()?,
    };
    let train = subset(train, args.train_size);
    let (x_train, y_train) = (train.images_f32()?, train.labels_one_hot()?);
    let (x_test, y_test) = (test.images_f32()?, test.labels_one_hot()?);
    let mut runs = Runs::new(&args.out, (&x_train, &y_train), (&x_test, &y_test))?;
    runs.verbose = args.verbose;
    println!("device: {}", cifar10_cnn::device::machine());
    if args.seeds.is_empty() {
        runs.train(&name, &recipe)?;
    }
    for &seed in &args.seeds {
        runs.train(
            &format!("{name} seed {seed}"),
            &Recipe {
                seed,
                ..recipe.clone()
            },
        )?;
    }
    println!("\n{}", runs.table());
    Ok(())
}

/// The finished runs of a folder as a table (printed, and table.md) and
/// their curves overlaid (comparison.png), as the improving notebook ends.
fn compare(args: CompareArgs) -> Result<()> {
    use cifar10_cnn::recipe::{Run, RunsTable};
    let runs = Run::load_all(&args.dir)?;
    let named: Vec<(&str, &cifar10_cnn::history::History)> =
        runs.iter().map(|r| (r.name.as_str(), &r.history)).collect();
    let figure = cifar10_cnn::plot::compare_curves(&named)?;
    figure.save_png(args.dir.join("comparison.png"))?;
    let table = RunsTable(runs).to_string();
    cifar10_cnn::io::write_atomic(&args.dir.join("table.md"), table.as_bytes())?;
    println!("{table}");
    println!(
        "written: {} and {}",
        args.dir.join("table.md").display(),
        args.dir.join("comparison.png").display()
    );
    Ok(())
}

fn subset(data: Dataset, n: Option<usize>) -> Dataset {
    match n {
        Some(n) if n < data.len() => data.take(n),
        _ => data,
    }
}

/// Median seconds of `f` over `n` runs.
fn median_secs(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[n / 2])
}

/// The article's model on random images of CIFAR-10's shape: the training
/// step (forward, loss, backward, Adam) and inference, at one batch size.
/// The article's model, with a BatchNormalization after each convolution
/// when `batch_norm`, compiled with Adam.
fn article(batch_norm: bool, device: &Device) -> Result<Sequential> {
    let mut model = Sequential::on(&[3, 32, 32], 0, device)?;
    for layer in article_layers(10) {
        let conv = matches!(layer, Layer::Conv2D(_));
        model.add(layer)?;
        if batch_norm && conv {
            model.add(batch_normalization())?;
        }
    }
    model.compile(Adam::default())?;
    Ok(model)
}

fn bench(args: BenchArgs) -> Result<()> {
    let device = pick_device()?;
    let b = args.batch_size;
    let (x, y) = check::generated(b, &device)?;
    if args.batch_norm_ratio {
        return batch_norm_ratio(&args, &device, &x, &y);
    }
    let mut model = match &args.recipe {
        Some(file) => cifar10_cnn::recipe::Recipe::load(file)?.model(&x, 10)?,
        None => article(args.batch_norm, &device)?,
    };
    for _ in 0..3 {
        model.train_on_batch(&x, &y)?;
    }
    let step = median_secs(args.steps.max(1), || {
        model.train_on_batch(&x, &y).map(|_| ())
    })?;
    let infer = median_secs(args.steps.max(1), || model.predict_with(&x, b).map(|_| ()))?;
    eprintln!(
        "device: {}, batch {b}, {} timed steps, model: {}",
        describe(&device),
        args.steps,
        match (&args.recipe, args.batch_norm) {
            (Some(file), _) => format!("the recipe {}", file.display()),
            (None, true) => "the article's with BatchNormalization after each Conv2D".into(),
            (None, false) => "the article's".into(),
        }
    );
    println!(
        "{{\"train_step_ms\": {:.1}, \"infer_ms\": {:.1}, \"images_per_s\": {:.0}}}",
        step * 1e3,
        infer * 1e3,
        b as f64 / step
    );
    Ok(())
}

/// `bench --batch-norm-ratio`: both models' steps in turn, `steps` pairs.
fn batch_norm_ratio(args: &BenchArgs, device: &Device, x: &Tensor, y: &Tensor) -> Result<()> {
    let (mut plain, mut normed) = (article(false, device)?, article(true, device)?);
    for _ in 0..3 {
        plain.train_on_batch(x, y)?;
        normed.train_on_batch(x, y)?;
    }
    let time = |m: &mut Sequential| -> Result<f64> {
        let start = Instant::now();
        m.train_on_batch(x, y)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let n = args.steps.max(1);
    let (mut a, mut bn, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (t, u) = (time(&mut plain)?, time(&mut normed)?);
        a.push(t);
        bn.push(u);
        ratios.push(u / t);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[n / 2]
    };
    eprintln!(
        "device: {}, batch {}, {n} pairs of steps: the article's model, then with BatchNormalization after each Conv2D",
        describe(device),
        args.batch_size
    );
    println!(
        "{{\"train_step_ms\": {:.1}, \"batch_norm_step_ms\": {:.1}, \"batch_norm_ratio\": {:.3}}}",
        median(&mut a) * 1e3,
        median(&mut bn) * 1e3,
        median(&mut ratios)
    );
    Ok(())
}
