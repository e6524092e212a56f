//! The article end to end without Jupyter: load CIFAR-10, train the CNN,
//! save it, load it back, evaluate it and print a few predictions.
//!
//!     cargo run --release -p cifar10-cnn -- --epochs 25 --out results

use anyhow::Result;
use cifar10_cnn::data::{self, Dataset};
use cifar10_cnn::device::{describe, pick_device};
use cifar10_cnn::model::Sequential;
use cifar10_cnn::train::{Adam, Fit};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(version, about = "Train the Keras CIFAR-10 CNN tutorial's model, save, load, evaluate, predict")]
struct Args {
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
    /// How many test predictions to print.
    #[arg(long, default_value_t = 10)]
    show: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = pick_device()?;
    println!("device: {}", describe(&device));

    let (train, test) = match &args.data {
        Some(dir) => data::load_dir(dir)?,
        None => data::load_data()?,
    };
    let train = subset(train, args.train_size);
    let test = subset(test, args.test_size);
    println!("x_train: {} images, x_test: {} images", train.len(), test.len());
    let (x_train, y_train) = (train.images_f32()?, train.labels_one_hot()?);
    let (x_test, y_test) = (test.images_f32()?, test.labels_one_hot()?);

    let mut model = Sequential::article(&x_train.dims()[1..], train.num_classes(), args.seed, &device)?;
    model.summary()?;
    model.compile(Adam::default())?;
    let fit = Fit {
        batch_size: args.batch_size,
        epochs: args.epochs,
        validation_split: args.validation_split,
        ..Fit::default()
    };
    let history = model.fit(&x_train, &y_train, fit)?;

    let stem = args.out.join("cifar10_cnn");
    let (json, weights) = model.save(&stem)?;
    history.save(args.out.join("history.json"))?;
    cifar10_cnn::plot::learning_curves(&history)?.save_png(args.out.join("learning_curves.png"))?;
    println!("saved {} and {}", json.display(), weights.display());

    let mut model = Sequential::load_on(&stem, &device)?;
    let score = model.evaluate(&x_test, &y_test)?;
    println!("Test Data loss: {:.4}", score.loss);
    println!("Test Data accuracy: {:.4}", score.accuracy);

    let predicted = model.predict_classes(&x_test)?;
    for i in 0..args.show.min(test.len()) {
        println!("test image {i}: predict: {}, answer: {}", test.class_names[predicted[i]], test.class_name(i));
    }
    Ok(())
}

fn subset(data: Dataset, n: Option<usize>) -> Dataset {
    match n {
        Some(n) if n < data.len() => data.take(n),
        _ => data,
    }
}
