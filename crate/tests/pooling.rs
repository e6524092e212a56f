//! The poolings against Keras: outputs and input gradients of
//! `MaxPooling2D`, `AveragePooling2D` (strides, same and valid padding,
//! rectangular pools), `GlobalAveragePooling2D` and `GlobalMaxPooling2D`,
//! on both paths (the CPU f32 kernels, and the portable candle ops through
//! autograd in f64), from the fixtures `scripts/fixtures/pooling.py` wrote
//! with Keras; and their JSON and errors.

use candle_core::{DType, Device, Tensor, Var};
use cifar10_cnn::layers::*;
use cifar10_cnn::model::Sequential;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    let v = v.as_array().expect("an array of numbers");
    v.iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5, "{what}[{i}]: {g} here, {w} in Keras");
    }
}

/// Every case of `fixtures/pooling/{class}.json` through both paths.
fn matches_keras(class: &str) {
    let path = format!(
        "{}/tests/fixtures/pooling/{class}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 2, "{class}: no cases");
    for case in cases {
        let layer: Layer = serde_json::from_value(case["layer"].clone()).unwrap();
        let what = format!("{}", case["layer"]);
        let dims: Vec<usize> = serde_json::from_value(case["input"].clone()).unwrap();
        let [n, c, h, w] = dims[..] else {
            panic!("{what}: input {dims:?}")
        };
        let (x, y, dy, dx) = (
            floats(&case["x"]),
            floats(&case["y"]),
            floats(&case["dy"]),
            floats(&case["dx"]),
        );
        let kind = layer.kind();
        let input = Shape::Image(c, h, w);
        let output = kind.output_shape(input).unwrap();
        assert_eq!(n * output.size(), y.len(), "{what}: output shape {output}");
        let step = StepShape {
            n,
            input,
            output,
            fused: Fused::default(),
        };
        let mut rng = StdRng::seed_from_u64(0);
        let mut run = Run::new(true, &mut rng);

        // The CPU f32 kernels.
        let out = kind.cpu_forward(&x, &[], &step, &mut run).unwrap();
        let cpu_y = out.y.clone().unwrap();
        assert_close(&cpu_y, &y, &format!("{what} CPU y"));
        let (cpu_dx, dp) = kind
            .cpu_backward(CpuGrad {
                step: &step,
                x: &x,
                y: &cpu_y,
                dy: dy.clone(),
                kept: &out.kept,
                params: &[],
                wants_dx: true,
            })
            .unwrap();
        assert!(dp.is_empty());
        assert_close(&cpu_dx, &dx, &format!("{what} CPU dx"));

        // The portable forward, differentiated by candle's autograd in f64.
        let dev = Device::Cpu;
        let x64 = Tensor::from_slice(&x, (n, c, h, w), &dev).unwrap();
        let xv = Var::from_tensor(&x64.to_dtype(DType::F64).unwrap()).unwrap();
        let yt = kind.forward(xv.as_tensor(), &[], &step, &mut run).unwrap();
        let dyt = Tensor::from_slice(&dy, yt.shape(), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let grads = (&yt * dyt).unwrap().sum_all().unwrap().backward().unwrap();
        let f32s = |t: &Tensor| -> Vec<f32> {
            let t = t.to_dtype(DType::F32).unwrap();
            t.flatten_all().unwrap().to_vec1().unwrap()
        };
        assert_close(&f32s(&yt), &y, &format!("{what} portable y"));
        let g = grads.get(xv.as_tensor()).expect("no gradient for x");
        assert_close(&f32s(g), &dx, &format!("{what} portable dx"));
    }
}

#[test]
fn max_pooling_matches_keras() {
    matches_keras("MaxPooling2D");
}

#[test]
fn average_pooling_matches_keras() {
    matches_keras("AveragePooling2D");
}

#[test]
fn global_average_pooling_matches_keras() {
    matches_keras("GlobalAveragePooling2D");
}

#[test]
fn global_max_pooling_matches_keras() {
    matches_keras("GlobalMaxPooling2D");
}

/// Keras's field names, strides written only when given and padding only
/// when "same" (files stay as earlier versions wrote them), files of earlier
/// versions (`{"pool_size": 2}`) still read, unknown fields refused.
#[test]
fn poolings_round_trip_through_their_json() {
    let layers: Vec<Layer> = vec![
        max_pooling2d(2).into(),
        max_pooling2d(3).strides(2).same().into(),
        max_pooling2d((2, 3)).strides((1, 2)).into(),
        average_pooling2d(2).into(),
        average_pooling2d((3, 1))
            .strides(2)
            .padding(Padding::Same)
            .into(),
        global_average_pooling2d().into(),
        global_max_pooling2d().keepdims().into(),
    ];
    for layer in layers {
        let json = serde_json::to_string(&layer).unwrap();
        assert_eq!(
            serde_json::from_str::<Layer>(&json).unwrap(),
            layer,
            "{json}"
        );
    }
    let json = |l: Layer| serde_json::to_string(&l).unwrap();
    assert_eq!(
        json(max_pooling2d(2).padding(Padding::Valid).into()),
        r#"{"class_name":"MaxPooling2D","config":{"pool_size":2}}"#
    );
    assert_eq!(
        json(max_pooling2d(3).strides(2).same().into()),
        r#"{"class_name":"MaxPooling2D","config":{"pool_size":3,"strides":2,"padding":"same"}}"#
    );
    assert_eq!(
        json(average_pooling2d((2, 3)).into()),
        r#"{"class_name":"AveragePooling2D","config":{"pool_size":[2,3]}}"#
    );
    assert_eq!(
        json(global_max_pooling2d().into()),
        r#"{"class_name":"GlobalMaxPooling2D","config":{"keepdims":false}}"#
    );
    for (old, new) in [
        (
            r#"{"class_name":"MaxPooling2D","config":{"pool_size":2}}"#,
            Layer::from(max_pooling2d(2)),
        ),
        (
            r#"{"class_name":"AveragePooling2D","config":{"pool_size":3}}"#,
            average_pooling2d(3).into(),
        ),
        (
            r#"{"class_name":"GlobalAveragePooling2D","config":{}}"#,
            global_average_pooling2d().into(),
        ),
        (
            r#"{"class_name":"GlobalMaxPooling2D"}"#,
            global_max_pooling2d().into(),
        ),
    ] {
        assert_eq!(serde_json::from_str::<Layer>(old).unwrap(), new, "{old}");
    }
    let e = serde_json::from_str::<Layer>(
        r#"{"class_name":"MaxPooling2D","config":{"pool_size":2,"data_format":"channels_last"}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("MaxPooling2D") && e.contains("data_format"),
        "{e}"
    );
}

/// What `add` says to a pooling it cannot build, before anything runs.
#[test]
fn bad_poolings_are_clear_errors_at_add() {
    let add = |input: &[usize], layer: Layer| -> String {
        let mut m = Sequential::on(input, 0, &Device::Cpu).unwrap();
        format!("{:#}", m.add(layer).err().expect("an error"))
    };
    let e = add(&[1, 3, 5], max_pooling2d(4).into());
    assert!(
        e.contains("MaxPooling2D") && e.contains("height 4 is larger than the input's 3"),
        "{e}"
    );
    let e = add(&[1, 5, 3], average_pooling2d((2, 4)).into());
    assert!(
        e.contains("AveragePooling2D") && e.contains("width 4 is larger than the input's 3"),
        "{e}"
    );
    // With "same" padding a pool larger than its input is fine, as in
    // Keras; its strides are the pool's unless given.
    let mut m = Sequential::on(&[1, 3, 5], 0, &Device::Cpu).unwrap();
    m.add(max_pooling2d(4).same()).unwrap();
    assert_eq!(m.output_shape().unwrap(), Shape::Image(1, 1, 2));
    let mut m = Sequential::on(&[1, 3, 5], 0, &Device::Cpu).unwrap();
    m.add(max_pooling2d(4).strides(1).same()).unwrap();
    assert_eq!(m.output_shape().unwrap(), Shape::Image(1, 3, 5));
    m.add(average_pooling2d(3).strides(2).same()).unwrap();
    assert_eq!(m.output_shape().unwrap(), Shape::Image(1, 2, 3));
    let e = add(&[1, 4, 4], max_pooling2d(2).strides(0).into());
    assert!(e.contains("strides must be at least 1"), "{e}");
    let e = add(&[1, 4, 4], average_pooling2d((2, 0)).into());
    assert!(e.contains("width must be at least 1"), "{e}");
    let e = add(&[1, 4, 4], max_pooling2d(0).into());
    assert!(e.contains("must be at least 1"), "{e}");
    let mut m = Sequential::on(&[1, 4, 4], 0, &Device::Cpu).unwrap();
    m.add(flatten()).unwrap();
    for layer in [
        Layer::from(max_pooling2d(2)),
        global_average_pooling2d().into(),
        global_max_pooling2d().into(),
    ] {
        let e = format!("{:#}", m.add(layer).err().unwrap());
        assert!(e.contains("needs an image input"), "{e}");
    }
}
