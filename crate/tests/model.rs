//! The article's model: its layers, parameter count, initialization, and a
//! finite-difference check of every layer's gradients.

mod common;

use candle_core::{DType, Device, Tensor, D};
use cifar10_cnn::model::{article_layers, layers::*, Sequential, Shape};

#[test]
fn article_model_has_1_250_858_parameters() {
    let model = Sequential::article(&[3, 32, 32], 10, 0, &Device::Cpu).unwrap();
    assert_eq!(model.count_params(), 1_250_858);
    let summary = model.summary_string().unwrap();
    assert!(summary.contains("Total params: 1,250,858"), "{summary}");
    assert!(summary.contains("conv2d_1 (Conv2D)"), "{summary}");
    assert!(summary.contains("(None, 64, 6, 6)"), "{summary}"); // 13x13 pooled to 6x6
    assert!(summary.contains("(None, 2304)"), "{summary}");
    let shapes = model.architecture().shapes().unwrap();
    assert_eq!(shapes[2], Shape::Image(32, 30, 30));
    assert_eq!(*shapes.last().unwrap(), Shape::Flat(10));
    let per_layer: Vec<usize> = model
        .named_vars()
        .iter()
        .map(|(_, v)| v.elem_count())
        .collect();
    assert_eq!(
        per_layer,
        [864, 32, 9216, 32, 18432, 64, 36864, 64, 1179648, 512, 5120, 10]
    );
}

#[test]
fn initialization_is_glorot_uniform_seeded() {
    let a = Sequential::article(&[3, 32, 32], 10, 7, &Device::Cpu).unwrap();
    let b = Sequential::article(&[3, 32, 32], 10, 7, &Device::Cpu).unwrap();
    let c = Sequential::article(&[3, 32, 32], 10, 8, &Device::Cpu).unwrap();
    for (((name, va), (_, vb)), (_, vc)) in a
        .named_vars()
        .into_iter()
        .zip(b.named_vars())
        .zip(c.named_vars())
    {
        let (xa, xb, xc): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            va.flatten_all().unwrap().to_vec1().unwrap(),
            vb.flatten_all().unwrap().to_vec1().unwrap(),
            vc.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(xa, xb, "{name}: same seed, same weights");
        if name.ends_with(".bias") {
            assert!(xa.iter().all(|&v| v == 0.0), "{name}: biases start at zero");
            continue;
        }
        assert_ne!(xa, xc, "{name}: another seed, other weights");
        let dims = va.dims();
        let (fan_in, fan_out) = match dims {
            [i, o] => (*i, *o),
            [o, i, kh, kw] => (i * kh * kw, o * kh * kw),
            _ => unreachable!(),
        };
        let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
        let max = xa.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            max <= limit && max > 0.95 * limit,
            "{name}: max {max} vs limit {limit}"
        );
        let mean = xa.iter().map(|&v| v as f64).sum::<f64>() / xa.len() as f64;
        let var = xa.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / xa.len() as f64;
        let expected_var = (limit as f64).powi(2) / 3.0; // variance of U(-l, l)
        assert!(mean.abs() < 0.1 * limit as f64, "{name}: mean {mean}");
        assert!(
            (var / expected_var - 1.0).abs() < 0.15,
            "{name}: variance {var} vs {expected_var}"
        );
    }
}

#[test]
fn impossible_layers_are_refused_and_leave_the_model_as_it_was() {
    let mut model = Sequential::on(&[3, 32, 32], 0, &Device::Cpu).unwrap();
    model.add(conv2d(8, 3)).unwrap();
    let e = format!("{:#}", model.add(dense(10)).err().unwrap());
    assert!(e.contains("Flatten"), "{e}");
    let e = format!("{:#}", model.add(conv2d(8, 31)).err().unwrap());
    assert!(e.contains("larger than its 30x30 input"), "{e}");
    let e = format!("{:#}", model.add(dropout(1.5)).err().unwrap());
    assert!(e.contains("Dropout rate"), "{e}");
    assert_eq!(model.architecture().layers.len(), 1);
    assert!(Sequential::on(&[32, 32], 0, &Device::Cpu).is_err());
}

/// Finite differences in f64 against autograd, on a sample of the weights of
/// every layer of the article's architecture (on 16x16 inputs to keep it quick,
/// which still pools an odd 7x7 map to 3x3).
#[test]
fn gradients_of_every_layer_match_finite_differences() {
    let mut model = Sequential::on(&[3, 16, 16], 3, &Device::Cpu).unwrap();
    for layer in article_layers(10) {
        model.add(layer).unwrap();
    }
    model.to_dtype(DType::F64).unwrap();
    let data = common::synthetic(4, 10, 16, 1);
    let x = data.images_f32().unwrap().to_dtype(DType::F64).unwrap();
    let y = data.labels_one_hot().unwrap().to_dtype(DType::F64).unwrap();

    let loss_of = |m: &mut Sequential| -> Tensor {
        let logits = m.logits(&x, false).unwrap();
        cifar10_cnn::train::cross_entropy(&logits, &y).unwrap()
    };
    let loss = loss_of(&mut model);
    let grads = loss.backward().unwrap();

    let eps = 1e-6;
    let vars: Vec<(String, candle_core::Var)> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.clone()))
        .collect();
    let mut checked = 0;
    for (name, var) in &vars {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w0: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        let n = w0.len();
        // a spread of positions, plus the largest gradient of the tensor
        let argmax = (0..n)
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        let mut positions: Vec<usize> = (0..6).map(|k| (k * 7919 + 13) % n).collect();
        positions.push(argmax);
        for &p in &positions {
            let at = |delta: f64, m: &mut Sequential| {
                let mut w = w0.clone();
                w[p] += delta;
                var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let l: f64 = loss_of(m).to_scalar().unwrap();
                l
            };
            let numeric = (at(eps, &mut model) - at(-eps, &mut model)) / (2.0 * eps);
            var.set(&Tensor::from_vec(w0.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let err = (numeric - g[p]).abs();
            assert!(
                err <= 1e-6 + 1e-4 * g[p].abs().max(numeric.abs()),
                "{name}[{p}]: autograd {} vs finite differences {numeric}",
                g[p]
            );
            checked += 1;
        }
        assert!(
            g.iter().any(|v| *v != 0.0),
            "{name} gets no gradient at all"
        );
    }
    assert_eq!(checked, 12 * 7);
}

#[test]
fn predictions_are_probabilities() {
    let mut model = Sequential::article(&[3, 32, 32], 10, 0, &Device::Cpu).unwrap();
    let data = common::synthetic(5, 10, 32, 2);
    let p = model.predict(&data.images_f32().unwrap()).unwrap();
    assert_eq!(p.dims(), [5, 10]);
    let sums: Vec<f32> = p.sum(D::Minus1).unwrap().to_vec1().unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
    let classes = model.predict_classes(&data.images_f32().unwrap()).unwrap();
    let argmax: Vec<u32> = p.argmax(D::Minus1).unwrap().to_vec1().unwrap();
    assert_eq!(
        classes,
        argmax.iter().map(|&c| c as usize).collect::<Vec<_>>()
    );
}

/// Files written by version 0.1 (commit 5cf63b8, before the layers became
/// self-contained kinds, by `make_fixture` in that tree): a small trained
/// model with every layer kind and inline activations loads, predicts the
/// same f32 bits, and writes the same architecture JSON back; the article
/// model's JSON is written byte for byte as then.
#[test]
fn models_saved_by_version_0_1_load_and_predict_bit_identically() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut model = Sequential::load_on(dir.join("v0.1-small"), &Device::Cpu).unwrap();
    let x: Vec<f32> = (0..5 * 3 * 8 * 8)
        .map(|i| ((i as f32) * 0.37).sin() * 0.5 + 0.5)
        .collect();
    let x = Tensor::from_vec(x, (5, 3, 8, 8), &Device::Cpu).unwrap();
    let p: Vec<u32> = model
        .predict(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let expected: Vec<u32> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("v0.1-small-predictions.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(p, expected, "predictions differ from version 0.1's");
    let json = std::fs::read_to_string(dir.join("v0.1-small.json")).unwrap();
    assert_eq!(model.to_json().unwrap(), json);
    let article = Sequential::article(&[3, 32, 32], 10, 0, &Device::Cpu).unwrap();
    let json = std::fs::read_to_string(dir.join("v0.1-article.json")).unwrap();
    assert_eq!(article.to_json().unwrap(), json);
}

/// Long names (`batch_normalization_4 (BatchNormalization)`) widen the name
/// column: every row is as wide as the rules, with its count at the right edge.
#[test]
fn the_summary_keeps_its_columns_with_long_names() {
    let recipe = cifar10_cnn::recipe::Recipe {
        batch_norm: true,
        ..cifar10_cnn::recipe::Recipe::article()
    };
    let mut model = Sequential::on(&[3, 32, 32], 0, &Device::Cpu).unwrap();
    for layer in recipe.layers(10) {
        model.add(layer).unwrap();
    }
    let summary = model.summary_string().unwrap();
    let lines: Vec<&str> = summary.lines().collect();
    let width = lines[1].chars().count();
    let rows: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.starts_with('='))
        .skip(1)
        .take_while(|l| !l.starts_with('='))
        .copied()
        .collect();
    assert!(
        rows.iter()
            .any(|r| r.starts_with("batch_normalization_4 (BatchNormalization)")),
        "{summary}"
    );
    for row in &rows {
        assert_eq!(
            row.chars().count(),
            width,
            "row {row:?} is not as wide as the rules:\n{summary}"
        );
    }
    // The shapes start in one column.
    let column: Vec<usize> = rows.iter().map(|r| r.find("(None").unwrap()).collect();
    assert!(column.windows(2).all(|w| w[0] == w[1]), "{summary}");
}
