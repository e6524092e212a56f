//! Property-based fuzzing of the three readers of outside bytes: the CIFAR-10
//! binary batch, the architecture JSON and the safetensors weights. Each must
//! answer every input with a value or an error, never a panic, a hang or an
//! allocation a header asked for. `FUZZ_CASES` sets the cases per target.

use cifar10_cnn::data::parse_batch;
use cifar10_cnn::io::read_safetensors;
use cifar10_cnn::model::{Architecture, Sequential};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

const RECORD: usize = 3073;

/// A valid batch with a few bytes overwritten, cut or extended.
fn mutated_batch() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((0..10_000 * RECORD, any::<u8>()), 0..8),
        prop_oneof![Just(0i64), -5000i64..5000],
    )
        .prop_map(|(edits, resize)| {
            let mut bytes: Vec<u8> = (0..10_000 * RECORD)
                .map(|i| {
                    if i % RECORD == 0 {
                        (i / RECORD % 10) as u8
                    } else {
                        i as u8
                    }
                })
                .collect();
            for (at, value) in edits {
                bytes[at] = value;
            }
            let len = (bytes.len() as i64 + resize).max(0) as usize;
            bytes.resize(len, 7);
            bytes
        })
}

fn article_json() -> String {
    let model = Sequential::article(&[3, 32, 32], 10, 0, &candle_core::Device::Cpu).unwrap();
    model.to_json().unwrap()
}

/// What the JSON fuzzers put in place of a few characters: nothing, extreme
/// numbers, stray syntax, a class name.
const JSON_EDITS: &[&str] = &[
    "",
    "0",
    "99999999999999999999",
    "-1",
    "\"",
    "{",
    "]",
    "null",
    "1e308",
    "Dense",
    "[]",
    "2",
    "true",
];

/// The article's architecture JSON with characters replaced, removed or
/// inserted, and numbers swapped for extreme ones.
fn mutated_json() -> impl Strategy<Value = String> {
    let base = article_json();
    let n = base.len();
    (prop::collection::vec(
        (0..n, prop::sample::select(JSON_EDITS.to_vec())),
        1..4,
    ),)
        .prop_map(move |(edits,)| {
            let mut s = base.clone();
            for (at, text) in edits {
                let at = at.min(s.len());
                if !s.is_char_boundary(at) {
                    continue;
                }
                let end = (at + 1).min(s.len());
                s.replace_range(at..end, text);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn batch_reader_never_panics(bytes in mutated_batch()) {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        let result = parse_batch(&bytes, 10, &mut images, &mut labels);
        let valid_labels = bytes.len() == 10_000 * RECORD && bytes.chunks(RECORD).all(|r| r[0] < 10);
        prop_assert_eq!(result.is_ok(), valid_labels);
    }

    #[test]
    fn random_bytes_are_not_a_batch(bytes in prop::collection::vec(any::<u8>(), 0..20_000)) {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        prop_assert!(parse_batch(&bytes, 10, &mut images, &mut labels).is_err());
    }

    #[test]
    fn architecture_parser_never_panics(json in mutated_json()) {
        if let Ok(arch) = Sequential::architecture_from_json(&json) {
            // whatever parses must also have bounded, computable shapes
            let specs = arch.weight_specs().unwrap();
            let total: usize = specs.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
            prop_assert!(total < 1 << 34);
            let _: &Architecture = &arch;
        }
    }

    #[test]
    fn weights_reader_never_panics(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
        let model = Sequential::article(&[3, 16, 16], 10, 0, &candle_core::Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (_, weights) = model.save(dir.path().join("m")).unwrap();
        let mut bytes = std::fs::read(&weights).unwrap();
        // mostly the header, where the interesting lies are told
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for (at, value) in edits {
            let at = at.index(header.min(bytes.len()));
            bytes[at] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        std::fs::write(&weights, &bytes).unwrap();
        let expected = model.architecture().weight_specs().unwrap();
        let _ = read_safetensors(&weights, &expected);
        let _ = Sequential::load_on(dir.path().join("m"), &candle_core::Device::Cpu);
    }
}

#[test]
fn a_header_that_promises_a_huge_tensor_is_refused_without_allocating_it() {
    let dir = tempfile::tempdir().unwrap();
    let header = br#"{"conv2d.kernel":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 16]);
    let path = dir.path().join("w.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let e = read_safetensors(&path, &[("conv2d.kernel".into(), vec![1000000, 1000000])])
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("not a safetensors file"), "{e:#}");
}

#[test]
fn an_architecture_with_absurd_sizes_is_refused_before_allocating() {
    let json = article_json().replacen("\"units\": 512", "\"units\": 99999999999", 1);
    let e = format!(
        "{:#}",
        Sequential::architecture_from_json(&json).err().unwrap()
    );
    assert!(e.contains("too large"), "{e}");
    let json =
        article_json().replacen("\"class_name\": \"Dense\"", "\"class_name\": \"Lambda\"", 1);
    let e = format!(
        "{:#}",
        Sequential::architecture_from_json(&json).err().unwrap()
    );
    assert!(
        e.contains("not a model architecture") && e.contains("Lambda"),
        "{e}"
    );
}

/// A fuzzing campaign of the three readers, in memory, with a small
/// seeded mutator: `FUZZ_EXECUTIONS` runs of each (default 2,000, which CI
/// runs; the README has the command for a million). Every input must give
/// a value or an error; what a reader accepts must be what it should.
#[test]
fn fuzz_campaign_of_the_three_readers() {
    let runs: u64 = std::env::var("FUZZ_EXECUTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let start = std::time::Instant::now();

    // 1. CIFAR-10 records: a few valid records, bytes changed, cut or added.
    let valid: Vec<u8> = (0..6 * RECORD)
        .map(|i| {
            if i % RECORD == 0 {
                (i / RECORD) as u8
            } else {
                i as u8
            }
        })
        .collect();
    let (mut accepted, mut images, mut labels) = (0u64, Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut bytes = valid.clone();
        for _ in 0..next() % 4 {
            let at = next() as usize % bytes.len();
            bytes[at] = next() as u8;
        }
        match next() % 4 {
            0 => bytes.truncate(next() as usize % (bytes.len() + 1)),
            1 => bytes.extend((0..next() % 7000).map(|_| next() as u8)),
            _ => {}
        }
        let classes = (next() % 12) as usize;
        images.clear();
        labels.clear();
        let ok =
            cifar10_cnn::data::parse_records(&bytes, classes, &mut images, &mut labels).is_ok();
        let should = classes > 0
            && bytes.len().is_multiple_of(RECORD)
            && bytes.chunks(RECORD).all(|r| (r[0] as usize) < classes);
        assert_eq!(ok, should, "{} bytes, {classes} classes", bytes.len());
        if ok {
            accepted += 1;
            assert_eq!(
                (labels.len(), images.len()),
                (bytes.len() / RECORD, bytes.len() / RECORD * 3072)
            );
        }
        // The batch reader takes exactly 10,000 records, and nothing else.
        assert!(parse_batch(&bytes, 10, &mut Vec::new(), &mut Vec::new()).is_err());
    }
    println!("records: {runs} runs, {accepted} accepted");

    // 2. The architecture JSON: tokens replaced, removed or inserted.
    let base = article_json();

    let mut accepted = 0u64;
    for _ in 0..runs {
        let mut s = base.clone();
        for _ in 0..1 + next() % 3 {
            let at = next() as usize % (s.len() + 1);
            if !s.is_char_boundary(at) {
                continue;
            }
            let end = (at + (next() % 3) as usize).min(s.len());
            if !s.is_char_boundary(end) {
                continue;
            }
            s.replace_range(at..end, JSON_EDITS[next() as usize % JSON_EDITS.len()]);
        }
        if let Ok(arch) = Sequential::architecture_from_json(&s) {
            accepted += 1;
            let specs = arch.weight_specs().unwrap();
            let total: usize = specs.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
            assert!(total < 1 << 34);
        }
    }
    println!("architecture JSON: {runs} runs, {accepted} accepted");

    // 3. Safetensors weights (with the architecture in the header), mostly
    // the header changed, or cut anywhere.
    let mut model = Sequential::on(&[3, 8, 8], 0, &candle_core::Device::Cpu).unwrap();
    for l in [
        cifar10_cnn::model::layers::conv2d(4, 3).into(),
        cifar10_cnn::model::layers::flatten(),
        cifar10_cnn::model::layers::dense(3).into(),
    ] {
        model.add(l).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, weights) = model.save(dir.path().join("m")).unwrap();
    let valid = std::fs::read(&weights).unwrap();
    let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let expected = model.architecture().weight_specs().unwrap();
    let mut accepted = 0u64;
    for _ in 0..runs {
        let mut bytes = valid.clone();
        for _ in 0..next() % 6 {
            let span = if next() % 4 == 0 {
                bytes.len()
            } else {
                header.min(bytes.len())
            };
            let at = next() as usize % span.max(1);
            if at < bytes.len() {
                bytes[at] = next() as u8;
            }
        }
        if next() % 3 == 0 {
            bytes.truncate(next() as usize % (bytes.len() + 1));
        }
        let read = cifar10_cnn::io::parse_safetensors(&bytes, &expected, &weights);
        let _ = cifar10_cnn::io::parse_safetensors_metadata(&bytes, "weights", &weights);
        if let Ok(tensors) = read {
            accepted += 1;
            for (t, (name, shape)) in tensors.iter().zip(&expected) {
                assert_eq!((&t.name, &t.shape), (name, shape));
                assert_eq!(t.data.len(), shape.iter().product::<usize>());
            }
        }
    }
    println!("safetensors: {runs} runs, {accepted} accepted");
    println!(
        "{} runs of each reader in {:.1} s",
        runs,
        start.elapsed().as_secs_f64()
    );
}
