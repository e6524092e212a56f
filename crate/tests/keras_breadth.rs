//! One step past the article, as a notebook cell writes it: the issue's
//! model and `fit` (BatchNormalization, a strided convolution without bias,
//! global pooling, SGD with Nesterov momentum on a cosine schedule,
//! validation data, EarlyStopping), and every layer kind in one model,
//! trained, saved and loaded back with bit-identical predictions.

mod common;

use cifar10_cnn::prelude::*;

fn data(n: usize, side: usize, seed: u64) -> (Tensor, Tensor) {
    let d = common::synthetic(n, 10, side, seed);
    (d.images_f32().unwrap(), d.labels_one_hot().unwrap())
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter().map(|v| v.to_bits()).collect()
}

/// The cell from the issue, word for word but for the data's size.
#[test]
fn the_issues_cell_runs_as_written() -> Result<()> {
    let (x, y) = data(96, 12, 1);
    let (x_val, y_val) = data(32, 12, 2);
    let mut model = Sequential::on(&[3, 12, 12], 0, &Device::Cpu)?;
    model.add(conv2d(64, 3).same().use_bias(false))?;
    model.add(batch_normalization())?;
    model.add(relu())?;
    model.add(conv2d(64, (3, 3)).strides(2))?;
    model.add(global_average_pooling2d())?;
    model.add(dense(10))?;
    model.add(softmax())?;
    model.compile(
        SGD::new(CosineDecay::new(0.05, 10_000))
            .momentum(0.9)
            .nesterov(true),
    )?;
    let history = model.fit(
        &x,
        &y,
        Fit {
            validation_data: Some((x_val, y_val)),
            callbacks: vec![EarlyStopping::new("val_loss")
                .patience(3)
                .restore_best_weights(true)
                .into()],
            epochs: 3,
            verbose: 0,
            ..Fit::default()
        },
    )?;
    assert_eq!(history.epochs(), 3);
    let summary = model.summary_string()?;
    // 64 moving means and 64 moving variances
    assert!(summary.contains("Non-trainable params: 128"), "{summary}");
    Ok(())
}

/// Every layer kind, with non-default settings, in two models: trained for
/// an epoch (so that the moving statistics and every weight move), saved
/// with the optimizer, loaded: the same architecture JSON, bit for bit the
/// same predictions, the optimizer where it was.
#[test]
fn every_layer_kind_round_trips_with_bit_identical_predictions() -> Result<()> {
    let first: Vec<Layer> = vec![
        conv2d(6, (3, 2))
            .strides((1, 2))
            .same()
            .use_bias(false)
            .into(),
        batch_normalization().momentum(0.9).into(),
        relu(),
        max_pooling2d(3).strides(2).same().into(),
        conv2d(8, 3).activation(Activation::Tanh).into(),
        leaky_relu(0.1),
        average_pooling2d(2).same().into(),
        spatial_dropout2d(0.2),
        gelu(),
        global_average_pooling2d().into(),
        dense(12).activation(Activation::Selu).into(),
        batch_normalization().center(false).into(),
        dropout(0.3),
        dense(10).use_bias(false).into(),
        softmax(),
    ];
    let second: Vec<Layer> = vec![
        conv2d(5, 3).into(),
        elu(),
        average_pooling2d((2, 3)).into(),
        sigmoid(),
        conv2d(4, 1).activation(Activation::Silu).into(),
        max_pooling2d(2).into(),
        softplus(),
        global_max_pooling2d().into(),
        tanh(),
        dense(7).into(),
        selu(),
        dense(10).into(),
        softmax(),
    ];
    for (k, layers) in [first, second].into_iter().enumerate() {
        let mut model = Sequential::on(&[3, 12, 12], 3, &Device::Cpu)?;
        for l in layers {
            model.add(l)?;
        }
        match k {
            0 => model.compile(AdamW::new(1e-3).clipnorm(1.0))?,
            _ => model.compile(RMSprop::new(1e-3).momentum(0.5))?,
        }
        let (x, y) = data(48, 12, 4);
        let args = Fit {
            batch_size: 16,
            verbose: 0,
            ..Fit::default()
        };
        model.fit(&x, &y, args)?;
        let dir = tempfile::tempdir()?;
        let stem = dir.path().join("model");
        model.save_with_optimizer(&stem)?;
        let mut back = Sequential::load(&stem)?;
        assert_eq!(back.to_json()?, model.to_json()?);
        assert_eq!(bits(&back.predict(&x)?), bits(&model.predict(&x)?));
        assert_eq!(back.optimizer_iterations(), model.optimizer_iterations());
    }
    Ok(())
}
