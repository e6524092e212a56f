//! Reading the model's mistakes: the confusion matrix, accuracy per class,
//! the pairs of classes it confuses most, and a gallery of its errors.

use crate::data::Dataset;
use crate::gallery::Gallery;
use crate::plot::{self, Figure};
use anyhow::{ensure, Result};

/// Counts of (true class, predicted class) over a test set.
#[derive(Clone, Debug, PartialEq)]
pub struct Confusion {
    /// `matrix[true][predicted]`
    pub matrix: Vec<Vec<usize>>,
    pub class_names: Vec<String>,
}

impl Confusion {
    /// Tallies `predicted` against the labels of `test`.
    pub fn new(test: &Dataset, predicted: &[usize]) -> Result<Self> {
        let k = test.num_classes();
        ensure!(
            predicted.len() == test.len(),
            "{} predictions for {} test images",
            predicted.len(),
            test.len()
        );
        let mut matrix = vec![vec![0; k]; k];
        for (&truth, &p) in test.labels.iter().zip(predicted) {
            ensure!(p < k, "prediction {p} is not one of the {k} classes");
            matrix[truth as usize][p] += 1;
        }
        Ok(Self {
            matrix,
            class_names: test.class_names.clone(),
        })
    }

    /// Share of each class's images classified correctly (NaN for an absent class).
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.matrix
            .iter()
            .enumerate()
            .map(|(i, row)| row[i] as f64 / row.iter().sum::<usize>() as f64)
            .collect()
    }

    /// The `n` largest off-diagonal counts: (true class, predicted class, count).
    pub fn most_confused(&self, n: usize) -> Vec<(String, String, usize)> {
        let mut pairs: Vec<(usize, usize, usize)> = (0..self.matrix.len())
            .flat_map(|t| (0..self.matrix.len()).map(move |p| (t, p)))
            .filter(|(t, p)| t != p)
            .map(|(t, p)| (t, p, self.matrix[t][p]))
            .filter(|&(_, _, c)| c > 0)
            .collect();
        pairs.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        pairs.truncate(n);
        pairs
            .into_iter()
            .map(|(t, p, c)| (self.class_names[t].clone(), self.class_names[p].clone(), c))
            .collect()
    }

    /// The heat map, true classes down, predicted across.
    pub fn plot(&self) -> Result<Figure> {
        plot::confusion_matrix(&self.matrix, &self.class_names)
    }

    /// Accuracy per class and the most confused pairs, as a text report.
    pub fn report(&self, pairs: usize) -> String {
        let mut s = String::from("accuracy per class:\n");
        for (name, acc) in self.class_names.iter().zip(self.per_class_accuracy()) {
            s += &format!("  {name:<12} {acc:.3}\n");
        }
        s += "most confused (true -> predicted: count):\n";
        for (t, p, c) in self.most_confused(pairs) {
            s += &format!("  {t} -> {p}: {c}\n");
        }
        s
    }
}

/// Up to `n` misclassified test images, most confident mistakes first,
/// captioned with the prediction, its probability and the answer.
/// `probabilities` is `predict`'s output, `[N, classes]`.
pub fn mistakes_gallery(
    test: &Dataset,
    probabilities: &candle_core::Tensor,
    n: usize,
) -> Result<Gallery> {
    let probs: Vec<Vec<f32>> = probabilities.to_dtype(candle_core::DType::F32)?.to_vec2()?;
    ensure!(
        probs.len() == test.len(),
        "{} rows of probabilities for {} test images",
        probs.len(),
        test.len()
    );
    let mut wrong: Vec<(usize, usize, f32)> = probs
        .iter()
        .enumerate()
        .filter_map(|(i, row)| {
            let (p, &conf) = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
            (p != test.labels[i] as usize).then_some((i, p, conf))
        })
        .collect();
    ensure!(
        !wrong.is_empty(),
        "the model makes no mistakes on these {} images",
        test.len()
    );
    wrong.sort_by(|a, b| b.2.total_cmp(&a.2));
    wrong.truncate(n);
    let images = wrong
        .iter()
        .map(|&(i, _, _)| test.image(i))
        .collect::<Result<_>>()?;
    let captions = wrong
        .iter()
        .map(|&(i, p, conf)| {
            Ok(format!(
                "predict: {} ({:.0}%), answer: {}",
                test.class_names[p],
                conf * 100.0,
                test.class_name(i)?
            ))
        })
        .collect::<Result<_>>()?;
    // Every image here is a mistake: each gets the red frame.
    let mut gallery = Gallery::new(images, captions)?;
    gallery.mark_all_mistakes();
    Ok(gallery)
}
