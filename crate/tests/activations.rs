//! The activations against Keras 3's values and derivatives (fixtures
//! from `scripts/fixtures/activations.py`), at large inputs, through the
//! architecture JSON, and their errors.

use candle_core::{DType, Device, Tensor, Var};
use cifar10_cnn::model::{layers::*, Activation, Layer, Sequential};
use serde_json::{json, Value};
use std::path::Path;

/// Every activation, with Keras's defaults and with other parameters.
fn every() -> Vec<Activation> {
    use Activation::*;
    vec![
        Linear,
        Relu,
        Softmax,
        Sigmoid,
        Tanh,
        Elu,
        Selu,
        Gelu { approximate: false },
        Gelu { approximate: true },
        Silu,
        Softplus,
        LeakyRelu {
            negative_slope: 0.2,
        },
        LeakyRelu {
            negative_slope: 0.05,
        },
    ]
}

/// The CPU f32 values and derivatives of an elementwise activation.
fn cpu(a: Activation, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let y = a.cpu_forward(x, x.len());
    let dy = a.cpu_backward(vec![1.0; x.len()], x, &y, x.len());
    (y, dy)
}

/// The portable path's values and derivatives (candle's autograd) in `dtype`.
fn portable(a: Activation, x: &[f32], dtype: DType) -> (Vec<f64>, Vec<f64>) {
    let x = Tensor::new(x, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let x = Var::from_tensor(&x).unwrap();
    let y = a.forward(x.as_tensor()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let values = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    (values(&y), values(grads.get(x.as_tensor()).unwrap()))
}

/// f32's precision: relative above 1, absolute below.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 2e-6 * b.abs().max(1.0)
}

/// Each fixture: Keras's activation (read from the JSON the way a saved
/// model's is, parameters included) at 28 points from -100 to 100, against
/// the CPU path and the portable path in f32 and f64, values and
/// derivatives.
#[test]
fn values_and_derivatives_are_keras_s() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/activations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 12, "{files:?}");
    for file in files {
        let fixture: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let a: Activation = serde_json::from_value(fixture["activation"].clone()).unwrap();
        let column = |k: &str| -> Vec<f64> {
            let v = fixture[k].as_array().unwrap();
            v.iter().map(|v| v.as_f64().unwrap()).collect()
        };
        let (x, y, dy) = (column("x"), column("y"), column("dy"));
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let (cpu_y, cpu_dy) = cpu(a, &x32);
        let cpu = (
            cpu_y.iter().map(|&v| v as f64).collect(),
            cpu_dy.iter().map(|&v| v as f64).collect(),
        );
        let paths = [
            ("CPU f32", cpu),
            ("portable f32", portable(a, &x32, DType::F32)),
            ("portable f64", portable(a, &x32, DType::F64)),
        ];
        for (path, (ours_y, ours_dy)) in paths {
            for i in 0..x.len() {
                let at = format!("{a:?} ({}) at {} on the {path} path", file.display(), x[i]);
                assert!(
                    close(ours_y[i], y[i]),
                    "{at}: {} here, Keras {}",
                    ours_y[i],
                    y[i]
                );
                // candle's own ReLU passes the gradient at 0; Keras's does not
                if path.starts_with("portable") && a == Activation::Relu && x[i] == 0.0 {
                    continue;
                }
                assert!(
                    close(ours_dy[i], dy[i]),
                    "{at}: derivative {} here, Keras {}",
                    ours_dy[i],
                    dy[i]
                );
            }
        }
    }
}

/// Inputs far out (where exp overflows, or x³ in the tanh GELU) give
/// finite values and derivatives, on every path.
#[test]
fn large_inputs_stay_finite() {
    let x = [-1e30f32, -1e4, -1000.0, -100.0, 100.0, 1000.0, 1e4, 1e30];
    for a in every() {
        let (y, dy) = cpu(a, &x);
        let (py, pdy) = portable(a, &x, DType::F32);
        for (i, v) in y.iter().zip(&dy).enumerate() {
            assert!(
                v.0.is_finite() && v.1.is_finite(),
                "{a:?} at {}: CPU {v:?}",
                x[i]
            );
        }
        for (i, v) in py.iter().zip(&pdy).enumerate() {
            assert!(
                v.0.is_finite() && v.1.is_finite(),
                "{a:?} at {}: portable {v:?}",
                x[i]
            );
        }
    }
}

/// Keras's strings, and `{name: parameters}` where a parameter is not
/// Keras's default; `swish` reads as `silu`; earlier files still load.
#[test]
fn activations_are_written_as_keras_names() {
    use Activation::*;
    let written = |a: Activation| serde_json::to_value(a).unwrap();
    assert_eq!(written(Relu), json!("relu"));
    assert_eq!(written(Linear), json!("linear"));
    assert_eq!(written(Silu), json!("silu"));
    assert_eq!(written(Gelu { approximate: false }), json!("gelu"));
    assert_eq!(
        written(Gelu { approximate: true }),
        json!({"gelu": {"approximate": true}})
    );
    assert_eq!(
        written(LeakyRelu {
            negative_slope: 0.2
        }),
        json!("leaky_relu")
    );
    assert_eq!(
        written(LeakyRelu {
            negative_slope: 0.1
        }),
        json!({"leaky_relu": {"negative_slope": 0.1}})
    );
    let read = |v: Value| serde_json::from_value::<Activation>(v).unwrap();
    assert_eq!(read(json!("swish")), Silu);
    assert_eq!(read(json!("selu")), Selu);
    assert_eq!(
        read(json!({"leaky_relu": {}})),
        LeakyRelu {
            negative_slope: 0.2
        }
    );
    assert_eq!(
        read(json!({"gelu": {"approximate": false}})),
        Gelu { approximate: false }
    );
    for a in every() {
        assert_eq!(read(written(a)), a, "{a:?}");
    }
    // Earlier versions' Dense: no use_bias, so a bias.
    let old: Layer = serde_json::from_value(json!(
        {"class_name": "Dense", "config": {"units": 10, "activation": "softmax"}}
    ))
    .unwrap();
    assert_eq!(old, dense(10).activation(Softmax).into());
    let l: Layer = serde_json::from_value(json!({"class_name": "LeakyReLU"})).unwrap();
    assert_eq!(
        l,
        leaky_relu(0.3),
        "Keras's LeakyReLU layer defaults to 0.3"
    );
}

/// A model with every activation as a layer, inline in Conv2D and Dense
/// (one without a bias), and the LeakyReLU layer: its JSON reads back to
/// the same model, whose parameters are named as Keras names them.
#[test]
fn every_activation_round_trips_inline_and_as_a_layer() {
    let mut layers: Vec<Layer> = vec![];
    for a in every() {
        layers.push(
            Conv2D {
                activation: a,
                ..conv2d(2, 1)
            }
            .into(),
        );
        layers.push(activation(a));
    }
    layers.extend([
        leaky_relu(0.3),
        leaky_relu(0.01),
        flatten(),
        dense(4).use_bias(false).into(),
    ]);
    for a in every() {
        layers.push(dense(3).activation(a).into());
        layers.push(dense(3).activation(a).use_bias(false).into());
    }
    let mut model = Sequential::on(&[3, 4, 4], 0, &Device::Cpu).unwrap();
    for l in &layers {
        model.add(l.clone()).unwrap();
    }
    let json = model.to_json().unwrap();
    let arch = Sequential::architecture_from_json(&json).unwrap();
    assert_eq!(arch.layers, layers);
    let back = Sequential::from_architecture(arch, 0, &Device::Cpu).unwrap();
    assert_eq!(back.to_json().unwrap(), json);
    let v: Value = serde_json::from_str(&json).unwrap();
    let written = &v["config"]["layers"];
    assert_eq!(
        written[26],
        json!({"class_name": "LeakyReLU", "config": {"negative_slope": 0.3}})
    );
    assert_eq!(
        written[29],
        json!({"class_name": "Dense", "config": {"units": 4, "activation": "linear", "use_bias": false}})
    );
    let names: Vec<String> = model.named_vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"dense.kernel".to_string()), "{names:?}");
    assert!(!names.contains(&"dense.bias".to_string()), "{names:?}");
    assert!(names.contains(&"dense_1.bias".to_string()), "{names:?}");
    let summary = model.summary_string().unwrap();
    assert!(summary.contains("leaky_re_lu_1 (LeakyReLU)"), "{summary}");
}

/// `use_bias=False`: the kernel only, `inputs × units` parameters.
#[test]
fn dense_without_a_bias_has_only_its_kernel() {
    let mut model = Sequential::on(&[3, 2, 2], 0, &Device::Cpu).unwrap();
    model.add(flatten()).unwrap();
    model.add(dense(5).use_bias(false)).unwrap();
    assert_eq!(model.count_params(), 12 * 5);
    let names: Vec<String> = model.named_vars().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["dense.kernel"]);
}

/// Bad parameters and unknown names: clear errors when the model is built
/// or its file read.
#[test]
fn bad_activations_are_clear_errors() {
    let add = |l: Layer| {
        let mut m = Sequential::on(&[3, 4, 4], 0, &Device::Cpu).unwrap();
        m.add(flatten()).unwrap();
        format!("{:#}", m.add(l).err().expect("an error"))
    };
    let nan = Activation::LeakyRelu {
        negative_slope: f64::NAN,
    };
    let e = add(leaky_relu(f64::NAN));
    assert!(
        e.contains("LeakyReLU") && e.contains("negative_slope") && e.contains("NaN"),
        "{e}"
    );
    let e = add(leaky_relu(-0.1));
    assert!(e.contains("at least 0") && e.contains("got -0.1"), "{e}");
    let e = add(activation(nan));
    assert!(e.contains("Activation") && e.contains("NaN"), "{e}");
    let e = add(dense(3).activation(nan).into());
    assert!(e.contains("Dense") && e.contains("negative_slope"), "{e}");
    let mut m = Sequential::on(&[3, 4, 4], 0, &Device::Cpu).unwrap();
    let inline = Conv2D {
        activation: nan,
        ..conv2d(2, 3)
    };
    let e = format!("{:#}", m.add(inline).err().expect("an error"));
    assert!(e.contains("Conv2D") && e.contains("negative_slope"), "{e}");

    let read = |v: Value| {
        serde_json::from_value::<Activation>(v)
            .unwrap_err()
            .to_string()
    };
    let e = read(json!("swishy"));
    assert!(
        e.contains("unknown activation \"swishy\"") && e.contains("gelu, silu, swish"),
        "{e}"
    );
    let e = read(json!({"tanh": {}}));
    assert!(e.contains("\"tanh\" takes no parameters"), "{e}");
    let e = read(json!({"leaky_relu": {"alpha": 0.1}}));
    assert!(
        e.contains("leaky_relu") && e.contains("unknown field `alpha`"),
        "{e}"
    );
    let e = read(json!({"leaky_relu": {"negative_slope": -1.0}}));
    assert!(e.contains("at least 0") && e.contains("got -1"), "{e}");
    let e = read(json!({"gelu": {"approximate": 1}}));
    assert!(
        e.contains("gelu") && e.contains("expected a boolean"),
        "{e}"
    );
    let e = read(json!(3));
    assert!(e.contains("expected an activation"), "{e}");
    let e = serde_json::from_value::<Layer>(json!(
        {"class_name": "LeakyReLU", "config": {"alpha": 0.1}}
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("LeakyReLU") && e.contains("alpha"), "{e}");
}
