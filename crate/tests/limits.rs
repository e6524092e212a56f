//! Sizes are checked as a whole before anything is allocated: a model's
//! parameters, a batch's activations, an image to decode. These tests set
//! MEMORY_LIMIT, so they live in a binary of their own (all set the same).

use candle_core::{DType, Device, Tensor};
use cifar10_cnn::model::{layers::*, Architecture, Sequential};

fn limit_to_1_gib() {
    // SAFETY of the race: every test of this binary sets the same value.
    std::env::set_var("MEMORY_LIMIT", "1G");
}

/// A 1×1 convolution of 65,536 filters is a small model (196,608
/// parameters) whose activations for predict's batch of 32 (Keras's
/// default) take 16 GiB: predict refuses, saying so, instead of aborting
/// the process.
#[test]
fn a_batch_that_does_not_fit_is_refused() {
    limit_to_1_gib();
    let mut m = Sequential::on(&[3, 32, 32], 0, &Device::Cpu).unwrap();
    m.add(conv2d(65_536, 1)).unwrap();
    m.add(flatten()).unwrap();
    m.add(dense(2)).unwrap();
    m.add(softmax()).unwrap();
    let x = Tensor::zeros((128, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let e = format!("{:#}", m.predict(&x).err().unwrap());
    assert!(
        e.contains("for the activations of a batch of 32") && e.contains("MEMORY_LIMIT"),
        "{e}"
    );
    let y = Tensor::zeros((128, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(format!("{:#}", m.evaluate(&x, &y).err().unwrap()).contains("more than the 1.0 GiB"));
}

/// An architecture of a dozen large Dense layers (about 19 GiB of weights)
/// is refused by `from_architecture` before a single weight is made.
#[test]
fn a_model_that_does_not_fit_is_refused_before_allocating() {
    limit_to_1_gib();
    let mut layers = vec![flatten(), dense(20_000).into()];
    layers.extend((0..12).map(|_| dense(20_000).into()));
    layers.push(softmax());
    let arch = Architecture {
        name: "huge".into(),
        input_shape: [3, 32, 32],
        layers,
    };
    let start = std::time::Instant::now();
    let e = format!(
        "{:#}",
        Sequential::from_architecture(arch, 0, &Device::Cpu)
            .err()
            .unwrap()
    );
    assert!(
        e.contains("for its parameters") && e.contains("MEMORY_LIMIT"),
        "{e}"
    );
    // Refused as a whole, not at the layer where the weights made so far
    // ran out of room.
    assert!(
        !e.contains("cannot add"),
        "it made some of the weights first: {e}"
    );
    assert!(start.elapsed().as_secs_f64() < 1.0, "it allocated first");
    // Adding layers one by one stops at the one that does not fit.
    let mut m = Sequential::on(&[3, 32, 32], 0, &Device::Cpu).unwrap();
    m.add(flatten()).unwrap().add(dense(20_000)).unwrap();
    let e = format!("{:#}", m.add(dense(20_000)).err().unwrap());
    assert!(e.contains("cannot add Dense"), "{e}");
    assert_eq!(m.architecture().layers.len(), 2);
}

/// CRC-32 of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header says 100000×100000 pixels is refused by the image
/// folder loader from its header, at once.
#[test]
fn an_image_too_large_to_decode_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("cat");
    std::fs::create_dir_all(&class).unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    std::fs::write(class.join("huge.png"), &png).unwrap();
    let dog = dir.path().join("dog");
    std::fs::create_dir_all(&dog).unwrap();
    image::RgbImage::new(4, 4)
        .save(dog.join("small.png"))
        .unwrap();
    let start = std::time::Instant::now();
    let e = format!(
        "{:#}",
        cifar10_cnn::data::load_image_folder(dir.path(), 32, 32)
            .err()
            .unwrap()
    );
    assert!(e.contains("huge.png is 100000x100000 pixels"), "{e}");
    assert!(start.elapsed().as_secs_f64() < 2.0);
}
