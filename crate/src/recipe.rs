//! Recipes: the article's network trained in several ways, one idea at a
//! time, each run saved beside the recipe that made it so that the
//! comparison can be redrawn (and a run reloaded) without training again.
//!
//! A [`Recipe`] is the whole of a run's settings, as one serde struct: the
//! regularization of the network (BatchNormalization, dropout), the
//! optimizer and its schedule, the data augmentation, label smoothing,
//! test-time flips, epochs, batch size and seed. The network's sizes are
//! the article's and are not in it. [`Runs`] trains recipes on one data set
//! into one folder and compares them (a plot and a table).

use crate::data::{flip_horizontal, split_sizes};
use crate::history::History;
use crate::layers::{
    batch_normalization, conv2d, dense, dropout, flatten, max_pooling2d, relu, softmax, Layer,
};
use crate::model::Sequential;
use crate::optim::{Adam, CosineDecay, SGD};
use crate::plot::{compare_curves, Figure};
use crate::train::{BackupAndRestore, Fit, Score};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How one run trains the article's network. `Recipe::default()` is the
/// article's; each step of the improving notebook changes a few fields:
/// `Recipe { augment: true, ..article }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// BatchNormalization after each convolution and after the dense layer,
    /// before its ReLU.
    pub batch_norm: bool,
    /// The dropout rate after each block of two convolutions (0: none).
    pub conv_dropout: f64,
    /// The dropout rate after the dense layer of 512 (0: none).
    pub dense_dropout: f64,
    pub optimizer: OptimizerRecipe,
    /// Random crops (padding 4) and horizontal flips of the training batches.
    pub augment: bool,
    /// Training targets `y·(1 − s) + s/10` (see [`Fit::label_smoothing`]).
    pub label_smoothing: f64,
    /// Also score the test set on the mean of each image's and its
    /// mirror's probabilities (test-time augmentation).
    pub flip_test: bool,
    pub epochs: usize,
    pub batch_size: usize,
    /// The last fraction of the training images, held out to validate.
    pub validation_split: f64,
    /// Initial weights, dropout, shuffling and augmentation.
    pub seed: u64,
}

/// The optimizer of a recipe and its learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum OptimizerRecipe {
    /// Keras's Adam at a constant rate (the article: 0.001).
    Adam { learning_rate: f64 },
    /// SGD with Nesterov momentum and decoupled weight decay; the rate
    /// rises linearly from 0 to `learning_rate` over the first `warmup` of
    /// the updates (a fraction: 0.08 is 2 of 25 epochs), then falls along a
    /// cosine to 0 at the last one.
    Sgd {
        learning_rate: f64,
        momentum: f64,
        weight_decay: f64,
        warmup: f64,
    },
}

impl Default for Recipe {
    /// The article's recipe.
    fn default() -> Self {
        Self {
            batch_norm: false,
            conv_dropout: 0.25,
            dense_dropout: 0.5,
            optimizer: OptimizerRecipe::Adam {
                learning_rate: 0.001,
            },
            augment: false,
            label_smoothing: 0.0,
            flip_test: false,
            epochs: 25,
            batch_size: 128,
            validation_split: 0.1,
            seed: 0,
        }
    }
}

impl Recipe {
    /// The article's recipe (the same as `Recipe::default()`).
    pub fn article() -> Self {
        Self::default()
    }

    /// The article's layers, with this recipe's normalization and dropout.
    pub fn layers(&self, classes: usize) -> Vec<Layer> {
        let mut layers = Vec::new();
        let activate = |layers: &mut Vec<Layer>, l: Layer| {
            layers.push(l);
            if self.batch_norm {
                layers.push(batch_normalization().into());
            }
            layers.push(relu());
        };
        for filters in [32, 64] {
            activate(&mut layers, conv2d(filters, 3).same().into());
            activate(&mut layers, conv2d(filters, 3).into());
            layers.push(max_pooling2d(2).into());
            if self.conv_dropout > 0.0 {
                layers.push(dropout(self.conv_dropout));
            }
        }
        layers.push(flatten());
        activate(&mut layers, dense(512).into());
        if self.dense_dropout > 0.0 {
            layers.push(dropout(self.dense_dropout));
        }
        layers.push(dense(classes).into());
        layers.push(softmax());
        layers
    }

    /// The model, compiled, for training images `x` (`[N, C, H, W]`) and
    /// one-hot labels of `classes`: the schedule needs the number of
    /// updates per epoch, which the training set's size decides.
    pub fn model(&self, x: &Tensor, classes: usize) -> Result<Sequential> {
        self.check()?;
        let mut model = Sequential::on(&x.dims()[1..], self.seed, x.device())?;
        for layer in self.layers(classes) {
            model.add(layer)?;
        }
        let (n_train, _) = split_sizes(x.dim(0)?, self.validation_split)?;
        let steps = n_train.div_ceil(self.batch_size) as u64;
        match self.optimizer {
            OptimizerRecipe::Adam { learning_rate } => model.compile(Adam::new(learning_rate))?,
            OptimizerRecipe::Sgd {
                learning_rate,
                momentum,
                weight_decay,
                warmup,
            } => {
                let total = steps * self.epochs as u64;
                let warmup = (total as f64 * warmup).round() as u64;
                let decay = total - warmup;
                let schedule = CosineDecay::new(0.0, decay).warmup(learning_rate, warmup);
                model.compile(
                    SGD::new(schedule)
                        .momentum(momentum)
                        .nesterov(true)
                        .weight_decay(weight_decay),
                )?
            }
        }
        Ok(model)
    }

    /// `fit`'s arguments for this recipe.
    pub fn fit(&self) -> Fit {
        Fit {
            batch_size: self.batch_size,
            epochs: self.epochs,
            validation_split: self.validation_split,
            augment: self.augment,
            label_smoothing: self.label_smoothing,
            ..Fit::default()
        }
    }

    /// Refuses a recipe that cannot run, saying which field is wrong.
    pub fn check(&self) -> Result<()> {
        ensure!(self.epochs > 0, "epochs must be at least 1");
        ensure!(self.batch_size > 0, "batch_size must be at least 1");
        for (name, rate) in [
            ("conv_dropout", self.conv_dropout),
            ("dense_dropout", self.dense_dropout),
        ] {
            ensure!(
                (0.0..1.0).contains(&rate),
                "{name} must be at least 0 and below 1, got {rate}"
            );
        }
        if let OptimizerRecipe::Sgd { warmup, .. } = self.optimizer {
            ensure!(
                (0.0..1.0).contains(&warmup),
                "warmup is the fraction of the updates that warm up: at least 0 and below 1 (0.08 is 2 of 25 epochs), got {warmup}"
            );
        }
        Ok(())
    }

    /// Reads a recipe from a JSON file (e.g. a run's `recipe.json`).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the recipe {}", path.display()))?;
        let recipe: Recipe = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a recipe (see cifar10_cnn::recipe::Recipe for its fields)",
                path.display()
            )
        })?;
        recipe.check().with_context(|| path.display().to_string())?;
        Ok(recipe)
    }

    /// The fields where `other` differs, as `epochs 25 (this one: 1)`.
    fn differences(&self, other: &Recipe) -> Vec<String> {
        let (a, b) = (serde_json::to_value(self), serde_json::to_value(other));
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (a, b) else {
            return vec!["another recipe".into()];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k} {v} (this one: {})", b[k]))
            .collect()
    }
}

/// A finished run: what made it, its epochs, and how it scored on the test set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub name: String,
    pub recipe: Recipe,
    /// Images trained and validated on, and a fingerprint of them.
    pub train_images: usize,
    pub data: u64,
    pub test: Score,
    /// The score on the mean of each test image's and its mirror's
    /// probabilities, when the recipe asks for it.
    pub test_flip: Option<Score>,
    /// The epochs' wall time, summed (validation included).
    pub train_seconds: f64,
    /// Where it ran: CPU model, threads and vector instructions.
    pub machine: String,
    /// The crate's version that trained it.
    pub version: String,
    #[serde(skip)]
    pub history: History,
}

impl Run {
    /// The finished run kept in `folder`: its `run.json` and `history.json`.
    pub fn load(folder: impl AsRef<Path>) -> Result<Run> {
        let folder = folder.as_ref();
        let file = folder.join("run.json");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let mut run: Run = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a run's record", file.display()))?;
        run.history = History::load(folder.join("history.json"))?;
        Ok(run)
    }

    /// Every finished run in the folders of `dir` (those holding a
    /// `run.json`), in the order of the folders' names: `1-the-article`
    /// first. Unfinished runs (a backup, no `run.json`) are left out.
    pub fn load_all(dir: impl AsRef<Path>) -> Result<Vec<Run>> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the runs' folder {}", dir.display()))?;
        let mut folders = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot list {}", dir.display()))?
                .path();
            if path.join("run.json").is_file() {
                folders.push(path);
            }
        }
        ensure!(
            !folders.is_empty(),
            "{} holds no finished run (a folder with a run.json)",
            dir.display()
        );
        folders.sort();
        folders.iter().map(Run::load).collect()
    }

    /// The test accuracy the recipe reports: with flips when it uses them.
    pub fn accuracy(&self) -> f64 {
        self.test_flip.unwrap_or(self.test).accuracy
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: test accuracy {:.4}, loss {:.4}",
            self.name, self.test.accuracy, self.test.loss
        )?;
        if let Some(s) = self.test_flip {
            write!(f, "; with flipped copies {:.4}", s.accuracy)?;
        }
        let epochs = self.history.epochs();
        let plural = if epochs == 1 { "" } else { "s" };
        write!(
            f,
            " ({epochs} epoch{plural} in {})",
            minutes(self.train_seconds)
        )
    }
}

/// Recipes trained on one data set, into one folder: each run in a folder
/// of its own named after it (`1. the article` → `1-the-article`), holding
/// `recipe.json`, the model, `history.json` and `run.json` (written last:
/// a run is complete when it is there).
pub struct Runs {
    dir: PathBuf,
    train: (Tensor, Tensor),
    test: (Tensor, Tensor),
    data: u64,
    /// `fit`'s `verbose` (1, the default: the progress within each epoch).
    pub verbose: u8,
    /// The runs trained or loaded, in order.
    pub runs: Vec<Run>,
}

impl Runs {
    /// Runs of the training images and one-hot labels `train` (the last
    /// `validation_split` of them validate), tested on `test`, kept in `dir`.
    pub fn new(
        dir: impl Into<PathBuf>,
        (x_train, y_train): (&Tensor, &Tensor),
        (x_test, y_test): (&Tensor, &Tensor),
    ) -> Result<Self> {
        let dir = dir.into();
        ensure!(
            !dir.is_file(),
            "{} is a file: the runs need a folder (it is created if missing)",
            dir.display()
        );
        Ok(Self {
            data: crate::train::callbacks::fingerprint(&[x_train, y_train])?,
            dir,
            train: (x_train.clone(), y_train.clone()),
            test: (x_test.clone(), y_test.clone()),
            verbose: 1,
            runs: Vec::new(),
        })
    }

    /// The folder a run of this name is kept in.
    pub fn folder(&self, name: &str) -> PathBuf {
        self.dir.join(slug(name))
    }

    /// Trains `recipe` as the run `name`, or loads the run if its folder
    /// holds one of the same recipe on the same data (a run of another
    /// recipe there is refused, saying what differs). An interrupted run
    /// carries on from its backup.
    pub fn train(&mut self, name: &str, recipe: &Recipe) -> Result<Run> {
        let run = match self.load(name, recipe)? {
            Some(run) => {
                println!(
                    "{name}: loaded from {} (trained in {} on {})",
                    self.folder(name).display(),
                    minutes(run.train_seconds),
                    run.machine
                );
                run
            }
            None => self.train_new(name, recipe)?,
        };
        println!("{run}");
        match self.runs.iter_mut().find(|r| r.name == name) {
            Some(r) => *r = run.clone(),
            None => self.runs.push(run.clone()),
        }
        Ok(run)
    }

    /// The finished run in `name`'s folder, if there is one of `recipe` on
    /// this data.
    fn load(&self, name: &str, recipe: &Recipe) -> Result<Option<Run>> {
        let folder = self.folder(name);
        if !folder.join("run.json").exists() {
            return Ok(None);
        }
        let run = Run::load(&folder)?;
        let mut differs = run.recipe.differences(recipe);
        if run.data != self.data {
            differs.push(format!(
                "other training data: {} images (this one: {})",
                run.train_images,
                self.train.0.dim(0)?
            ));
        }
        if !differs.is_empty() {
            bail!(
                "{} holds a run of another recipe or data: {}. Give this run another name, or delete that folder to train it again",
                folder.display(),
                differs.join(", ")
            );
        }
        Ok(Some(run))
    }

    fn train_new(&self, name: &str, recipe: &Recipe) -> Result<Run> {
        let folder = self.folder(name);
        let (x, y) = &self.train;
        let mut model = recipe.model(x, y.dim(1)?)?;
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        crate::io::write_atomic(
            &folder.join("recipe.json"),
            serde_json::to_string_pretty(recipe)?.as_bytes(),
        )?;
        let backup = folder.join("backup");
        let history = model.fit(
            x,
            y,
            Fit {
                verbose: self.verbose,
                backup_dir: Some(backup.clone()),
                ..recipe.fit()
            },
        )?;
        let (xt, yt) = &self.test;
        let test = model.evaluate(xt, yt)?;
        let test_flip = match recipe.flip_test {
            true => Some(flip_score(&mut model, xt, yt)?),
            false => None,
        };
        let run = Run {
            name: name.to_string(),
            recipe: recipe.clone(),
            train_images: x.dim(0)?,
            data: self.data,
            test,
            test_flip,
            train_seconds: history.epoch_seconds.iter().sum(),
            machine: crate::device::machine(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            history,
        };
        model.save(folder.join("model"))?;
        run.history.save(folder.join("history.json"))?;
        crate::io::write_atomic(
            &folder.join("run.json"),
            serde_json::to_string_pretty(&run)?.as_bytes(),
        )?;
        // Everything is saved: the backup has served.
        BackupAndRestore::remove(&backup)?;
        let _ = std::fs::remove_dir(&backup); // only if nothing else is in it
        Ok(run)
    }

    /// The validation curves of every run, overlaid.
    pub fn plot(&self) -> Result<Figure> {
        let named: Vec<(&str, &History)> = self
            .runs
            .iter()
            .map(|r| (r.name.as_str(), &r.history))
            .collect();
        compare_curves(&named)
    }

    /// The runs side by side: test accuracy and loss, wall time.
    pub fn table(&self) -> RunsTable {
        RunsTable(self.runs.clone())
    }
}

/// The score on the mean of each image's and its mirror's probabilities.
pub fn flip_score(model: &mut Sequential, x: &Tensor, y: &Tensor) -> Result<Score> {
    let p = ((model.predict(x)? + model.predict(&flip_horizontal(x)?)?)? * 0.5)?; // [N, classes]
    let y = y.to_device(p.device())?.to_dtype(DType::F64)?;
    let p = p.to_dtype(DType::F64)?;
    let n = x.dim(0)? as f64;
    // Probabilities, not logits: clamped so that a 0 cannot give an infinite loss.
    let loss = (y.clone() * p.clamp(1e-12, 1.0)?.log()?)?
        .sum_all()?
        .to_scalar::<f64>()?
        / -n;
    let right = p.argmax(D::Minus1)?.eq(&y.argmax(D::Minus1)?)?;
    let correct = right.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(Score {
        loss,
        accuracy: correct / n,
    })
}

/// The runs as a table: markdown as text, HTML in a notebook.
#[derive(Clone, Debug)]
pub struct RunsTable(pub Vec<Run>);

impl RunsTable {
    const HEADER: [&'static str; 6] = [
        "run",
        "test accuracy",
        "with flips",
        "test loss",
        "epochs",
        "training time",
    ];

    fn rows(&self) -> Vec<[String; 6]> {
        let first = self.0.first();
        self.0
            .iter()
            .map(|r| {
                // Times compare only on the same machine: a run trained elsewhere
                // names its machine instead of a ratio.
                let ratio = match first {
                    Some(f) if f.machine != r.machine => format!(" (on {})", r.machine),
                    Some(f) if f.train_seconds > 0.0 => {
                        format!(" ({:.2}×)", r.train_seconds / f.train_seconds)
                    }
                    _ => String::new(),
                };
                [
                    r.name.clone(),
                    format!("{:.4}", r.test.accuracy),
                    r.test_flip
                        .map_or("–".into(), |s| format!("{:.4}", s.accuracy)),
                    format!("{:.4}", r.test.loss),
                    r.history.epochs().to_string(),
                    format!("{}{ratio}", minutes(r.train_seconds)),
                ]
            })
            .collect()
    }

    /// The table in HTML (what a notebook shows).
    pub fn html(&self) -> String {
        let cell = |tag: &str, s: &str| format!("<{tag}>{}</{tag}>", html_escape(s));
        let mut out = String::from("<table class=\"runs\"><thead><tr>");
        for h in Self::HEADER {
            out += &cell("th", h);
        }
        out += "</tr></thead><tbody>";
        for row in self.rows() {
            out += "<tr>";
            for c in &row {
                out += &cell("td", c);
            }
            out += "</tr>";
        }
        out + "</tbody></table>"
    }

    /// evcxr shows the last expression of a cell with this: the HTML table
    /// (and the markdown as plain text).
    pub fn evcxr_display(&self) {
        print!(
            "{}{}",
            crate::plot::evcxr_block("text/html", &self.html()),
            crate::plot::evcxr_block("text/plain", &self.to_string())
        );
    }
}

impl std::fmt::Display for RunsTable {
    /// A markdown table.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| {} |", Self::HEADER.join(" | "))?;
        writeln!(f, "|{}", "---|".repeat(Self::HEADER.len()))?;
        for row in self.rows() {
            writeln!(f, "| {} |", row.join(" | "))?;
        }
        Ok(())
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `1. The article` → `1-the-article`.
fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() {
        "run".into()
    } else {
        s
    }
}

/// `754 s` → `12 min 34 s`.
fn minutes(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        _ => format!("{} min {:02} s", s / 60, s % 60),
    }
}
