//! Our optimizers and schedules against Keras 3's, on the numbers
//! `scripts/fixtures/optim.py` recorded (crate/tests/fixtures/optim), and
//! their settings' checks, configs and state.

use candle_core::{DType, Device, Tensor, Var};
use cifar10_cnn::optim::{self, Optimizer};
use cifar10_cnn::optim::{Adam, AdamW, CosineDecay, ExponentialDecay, LearningRate};
use cifar10_cnn::optim::{PiecewiseConstantDecay, RMSprop, SGD};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Deserialize)]
struct Fixture {
    shapes: Vec<Vec<usize>>,
    init: Vec<Vec<f64>>,
    grads: Vec<Vec<Vec<f64>>>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    config: Value,
    /// Each variable after each step.
    after: Vec<Vec<Vec<f64>>>,
}

fn fixture(name: &str) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/optim/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tensor(values: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Relative `rel`, with a floor for values near 0.
fn assert_close(ours: &[f64], keras: &[f64], rel: f64, what: &str) {
    assert_eq!(ours.len(), keras.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(keras).enumerate() {
        assert!(
            (a - b).abs() <= rel * b.abs() + 1e-7,
            "{what}, value {i}: ours {a}, Keras {b}"
        );
    }
}

/// Replays every case of `name`'s fixture through our optimizer made from
/// the case's Keras config: f32 on the CPU (the in-place kernel) and f64
/// (the portable candle ops), step by step against Keras's weights, which
/// Keras computed in f32: the f32 path within 1e-5, the f64 path within
/// Keras's own f32 rounding (Adam's `1 - 0.999^t` alone costs 1e-5).
fn replay(name: &str) {
    let f = fixture(name);
    for case in &f.cases {
        for dtype in [DType::F32, DType::F64] {
            let mut o = optim::from_config(name, &case.config).unwrap();
            let vars: Vec<Var> = f
                .init
                .iter()
                .zip(&f.shapes)
                .map(|(v, s)| Var::from_tensor(&tensor(v, s, dtype)).unwrap())
                .collect();
            for (t, (grads, after)) in f.grads.iter().zip(&case.after).enumerate() {
                let grads: Vec<Tensor> = grads
                    .iter()
                    .zip(&f.shapes)
                    .map(|(g, s)| tensor(g, s, dtype))
                    .collect();
                let updates = [
                    ("a", &vars[0], Some(&grads[0])),
                    ("b", &vars[1], Some(&grads[1])),
                ];
                o.update(&updates).unwrap();
                for (v, (k, expected)) in vars.iter().zip(after.iter().enumerate()) {
                    let what = format!(
                        "{name} {} {dtype:?}, step {}, variable {k}",
                        case.config,
                        t + 1
                    );
                    let rel = if dtype == DType::F32 { 1e-5 } else { 5e-5 };
                    assert_close(&values(v.as_tensor()), expected, rel, &what);
                }
            }
            assert_eq!(o.iterations(), f.grads.len() as u64);
        }
    }
}

#[test]
fn sgd_matches_keras() {
    replay("sgd");
}

#[test]
fn rmsprop_matches_keras() {
    replay("rmsprop");
}

#[test]
fn adam_matches_keras() {
    replay("adam");
}

#[test]
fn adamw_matches_keras() {
    replay("adamw");
}

/// Each schedule, made from its Keras config, gives Keras's rates.
#[test]
fn schedules_match_keras() {
    #[derive(Deserialize)]
    struct Schedules {
        steps: Vec<u64>,
        cases: Vec<ScheduleCase>,
    }
    #[derive(Deserialize)]
    struct ScheduleCase {
        class_name: String,
        config: Value,
        rates: Vec<f64>,
    }
    let path = format!(
        "{}/tests/fixtures/optim/schedules.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let f: Schedules = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for c in f.cases {
        let lr =
            LearningRate::from_config(&json!({"class_name": c.class_name, "config": c.config}))
                .unwrap();
        let ours: Vec<f64> = f.steps.iter().map(|&s| lr.at(s)).collect();
        assert_close(
            &ours,
            &c.rates,
            1e-6,
            &format!("{} {}", c.class_name, c.config),
        );
    }
}

/// The builders give the configs Keras's keyword arguments describe, and
/// every config comes back as the same optimizer.
#[test]
fn builders_and_configs_agree() {
    let case = |name: &str, i: usize| {
        let config = &fixture(name).cases[i].config;
        optim::from_config(name, config).unwrap().config().unwrap()
    };
    let built: Vec<(Box<dyn Optimizer>, Value)> = vec![
        (Box::new(SGD::default()), case("sgd", 0)),
        (
            Box::new(SGD::new(0.1).momentum(0.9).nesterov(true)),
            case("sgd", 2),
        ),
        (
            Box::new(SGD::new(0.1).momentum(0.5).clipvalue(0.3)),
            case("sgd", 4),
        ),
        (
            Box::new(SGD::new(0.1).global_clipnorm(1.0).weight_decay(0.05)),
            case("sgd", 5),
        ),
        (
            Box::new(SGD::new(PiecewiseConstantDecay::new([1, 3], [0.3, 0.1, 0.02])).momentum(0.8)),
            case("sgd", 6),
        ),
        (Box::new(RMSprop::default()), case("rmsprop", 0)),
        (
            Box::new(RMSprop::new(0.01).centered(true).momentum(0.5).rho(0.8)),
            case("rmsprop", 3),
        ),
        (
            Box::new(RMSprop::new(0.01).clipnorm(0.5).epsilon(1e-3)),
            case("rmsprop", 4),
        ),
        (Box::new(Adam::default()), case("adam", 0)),
        (
            Box::new(Adam::new(0.05).beta_1(0.8).beta_2(0.99)),
            case("adam", 1),
        ),
        (
            Box::new(Adam::new(
                ExponentialDecay::new(0.05, 2, 0.5).staircase(true),
            )),
            case("adam", 5),
        ),
        (Box::new(AdamW::default()), case("adamw", 0)),
        (
            Box::new(AdamW::new(0.05).weight_decay(0.1).clipnorm(0.5)),
            case("adamw", 2),
        ),
        (
            Box::new(AdamW::new(
                CosineDecay::new(0.0, 4).alpha(0.1).warmup(0.05, 2),
            )),
            case("adamw", 3),
        ),
    ];
    for (o, expected) in built {
        let config = o.config().unwrap();
        assert_eq!(config, expected, "{}", o.name());
        let again = optim::from_config(o.name(), &config).unwrap();
        assert_eq!(again.config().unwrap(), config);
        assert_eq!(again.slots(), o.slots());
    }
    // Keras's defaults for what a config leaves out.
    let sgd = optim::from_config("sgd", &json!({}))
        .unwrap()
        .config()
        .unwrap();
    assert_eq!(sgd["learning_rate"], json!(0.01));
    assert_eq!(sgd["momentum"], json!(0.0));
    let adamw = optim::from_config("adamw", &json!({}))
        .unwrap()
        .config()
        .unwrap();
    assert_eq!(adamw["weight_decay"], json!(0.004));
    assert_eq!(adamw["epsilon"], json!(1e-7));
}

/// Impossible settings are refused when compiled (check), saying which.
#[test]
fn impossible_settings_are_refused() {
    let refused: Vec<(Box<dyn Optimizer>, &str)> = vec![
        (
            Box::new(SGD::new(0.1).momentum(1.0)),
            "momentum must be in [0, 1)",
        ),
        (
            Box::new(SGD::new(0.1).momentum(-0.1)),
            "momentum must be in [0, 1)",
        ),
        (
            Box::new(SGD::new(0.0)),
            "learning_rate must be a positive number",
        ),
        (
            Box::new(SGD::new(0.1).clipnorm(0.0)),
            "clipnorm must be a positive number",
        ),
        (
            Box::new(SGD::new(0.1).clipvalue(-1.0)),
            "clipvalue must be a positive number",
        ),
        (
            Box::new(SGD::new(0.1).global_clipnorm(f64::NAN)),
            "global_clipnorm must be a positive number",
        ),
        (
            Box::new(Adam::default().clipnorm(1.0).clipvalue(1.0)),
            "only one of clipnorm, clipvalue and global_clipnorm",
        ),
        (
            Box::new(RMSprop::default().rho(1.0)),
            "rho must be in [0, 1)",
        ),
        (
            Box::new(RMSprop::default().momentum(1.5)),
            "momentum must be in [0, 1)",
        ),
        (Box::new(RMSprop::default().epsilon(0.0)), "epsilon must be"),
        (
            Box::new(AdamW::default().weight_decay(-0.1)),
            "weight_decay must be a number >= 0",
        ),
        (
            Box::new(Adam::default().beta_2(1.0)),
            "beta_2 must be in [0, 1)",
        ),
        (
            Box::new(SGD::new(ExponentialDecay::new(0.1, 0, 0.5))),
            "decay_steps must be > 0",
        ),
        (
            Box::new(SGD::new(ExponentialDecay::new(0.1, 10, 0.0))),
            "decay_rate must be a positive number",
        ),
        (
            Box::new(SGD::new(PiecewiseConstantDecay::new([10], [0.1]))),
            "one more value than boundaries",
        ),
        (
            Box::new(SGD::new(PiecewiseConstantDecay::new(
                [10, 5],
                [0.1, 0.2, 0.3],
            ))),
            "strictly increasing",
        ),
        (
            Box::new(SGD::new(PiecewiseConstantDecay::new(
                [5, 10],
                [0.1, -0.2, 0.3],
            ))),
            "values must be a positive number",
        ),
        (
            Box::new(SGD::new(CosineDecay::new(0.1, 0))),
            "decay_steps must be > 0",
        ),
        (
            Box::new(SGD::new(CosineDecay::new(0.1, 10).alpha(1.5))),
            "alpha",
        ),
        (
            Box::new(SGD::new(CosineDecay::new(0.0, 10))),
            "initial_learning_rate must be a positive number",
        ),
        (
            Box::new(SGD::new(CosineDecay::new(0.0, 10).warmup(0.0, 5))),
            "warmup_target must be a positive number",
        ),
    ];
    for (o, why) in refused {
        let e = format!("{:#}", o.check().expect_err(&format!("{o:?} was accepted")));
        assert!(e.contains(why), "{o:?}: {e}");
    }
    // A warmup may start from 0, as Keras's documentation does.
    SGD::new(CosineDecay::new(0.0, 10).warmup(0.1, 5))
        .check()
        .unwrap();
    // Configs are checked, and unknown or mistyped keys refused.
    for (name, config) in [
        ("sgd", json!({"momentum": 1.0})),
        ("sgd", json!({"momentun": 0.9})),
        ("adam", json!({"amsgrad": true})),
        ("adamw", json!({"weight_decay": null})),
        ("rmsprop", json!({"learning_rate": "fast"})),
        ("adagrad", json!({})),
    ] {
        assert!(
            optim::from_config(name, &config).is_err(),
            "{name} {config}"
        );
    }
}

/// Keras evaluates the schedule at `iterations` before counting the update:
/// the first update uses the rate of step 0. A schedule's rate cannot be set.
#[test]
fn the_schedule_is_read_at_the_step_count_before_the_update() {
    let mut o = SGD::new(PiecewiseConstantDecay::new([1], [0.5, 0.1]));
    let w = Var::from_tensor(&Tensor::new(&[1f32], &Device::Cpu).unwrap()).unwrap();
    let g = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    let mut seen = vec![];
    for _ in 0..3 {
        seen.push(o.learning_rate());
        o.update(&[("w", &w, Some(&g))]).unwrap();
    }
    assert_eq!(seen, [0.5, 0.5, 0.1]);
    assert!((values(w.as_tensor())[0] - (1.0 - 1.1)).abs() < 1e-6);
    let e = format!("{:#}", o.set_learning_rate(0.2).unwrap_err());
    assert!(e.contains("PiecewiseConstantDecay"), "{e}");
    let mut c = SGD::new(0.1);
    c.set_learning_rate(0.2).unwrap();
    assert_eq!(c.learning_rate(), 0.2);
}

/// The state by name (`{slot}.{parameter}`, Keras's slot names) comes back
/// into a fresh optimizer, which then moves as the original; a parameter
/// without a gradient is neither updated nor decayed; reset forgets.
#[test]
fn state_round_trips_and_steps_on_alike() {
    let optimizers: Vec<(Box<dyn Optimizer>, &[&str])> = vec![
        (Box::new(SGD::new(0.1)), &[]),
        (Box::new(SGD::new(0.1).momentum(0.9)), &["momentum"]),
        (
            Box::new(RMSprop::default().momentum(0.5).centered(true)),
            &["velocity", "momentum", "average_gradient"],
        ),
        (Box::new(AdamW::default()), &["m", "v"]),
    ];
    for (mut o, slots) in optimizers {
        assert_eq!(o.slots(), slots);
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3), &dev).unwrap()).unwrap();
        let frozen = Var::from_tensor(&Tensor::ones(3, DType::F32, &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (4, 3), &dev).unwrap();
        for _ in 0..2 {
            o.update(&[("w", &w, Some(&g)), ("f", &frozen, None)])
                .unwrap();
        }
        assert_eq!(values(frozen.as_tensor()), [1.0; 3], "{}", o.name());
        let state: HashMap<String, Tensor> = o.state().into_iter().collect();
        let mut keys: Vec<&String> = state.keys().collect();
        keys.sort();
        let mut expected: Vec<String> = slots
            .iter()
            .flat_map(|s| [format!("{s}.f"), format!("{s}.w")])
            .collect();
        expected.sort();
        assert_eq!(keys, expected.iter().collect::<Vec<_>>());
        let mut fresh = optim::from_config(o.name(), &o.config().unwrap()).unwrap();
        fresh.load_state(o.iterations(), state).unwrap();
        let w2 = Var::from_tensor(&w.as_tensor().copy().unwrap()).unwrap();
        o.update(&[("w", &w, Some(&g))]).unwrap();
        fresh.update(&[("w", &w2, Some(&g))]).unwrap();
        assert_eq!(
            values(w.as_tensor()),
            values(w2.as_tensor()),
            "{}",
            o.name()
        );
        assert_eq!(fresh.iterations(), 3);
        o.reset();
        assert_eq!((o.iterations(), o.state().len()), (0, 0));
    }
    let mut adam = Adam::default();
    let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let e = adam
        .load_state(1, HashMap::from([("m.w".to_string(), t.clone())]))
        .unwrap_err();
    assert!(format!("{e:#}").contains("no v for w"), "{e:#}");
    let e = adam
        .load_state(1, HashMap::from([("momentum.w".to_string(), t)]))
        .unwrap_err();
    assert!(format!("{e:#}").contains("does not know"), "{e:#}");
}
