//! CIFAR-10 in memory: the images as bytes, the labels, the class names, and
//! the steps the article applies to them (normalization, one-hot, the
//! validation split).

mod augment;
mod cifar10;
mod folder;
#[cfg(feature = "hub")]
mod hub;

pub use augment::{augment, flip_horizontal, Jitter};
pub use cifar10::{load_data, load_dir, load_records, parse_batch, parse_records, CLASS_NAMES};
pub use folder::{load_image_folder, load_image_folders};
#[cfg(feature = "hub")]
pub use hub::{load_hub, load_hub_from, read_parquet, HUB_DATASET, HUB_TEST_FILE, HUB_TRAIN_FILE};

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};

/// A set of labelled images, kept as the raw bytes the files hold.
///
/// Pixels are stored image after image, each as three planes (R, then G,
/// then B) of `height` rows of `width` bytes: the layout of the CIFAR-10
/// binary files and of candle's NCHW convolutions, so no copy reorders them.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub class_names: Vec<String>,
    pub height: usize,
    pub width: usize,
}

/// Bytes of one image: three colour planes.
pub const CHANNELS: usize = 3;

impl Dataset {
    /// Builds a dataset, checking that the buffers agree with each other.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        class_names: Vec<String>,
        height: usize,
        width: usize,
    ) -> Result<Self> {
        let image_len = CHANNELS * height * width;
        ensure!(
            image_len > 0,
            "images must have a non-zero size, got {height}x{width}"
        );
        ensure!(
            images.len() == labels.len() * image_len,
            "{} labels need {} pixel bytes ({}x{}x{} each), got {}",
            labels.len(),
            labels.len() * image_len,
            height,
            width,
            CHANNELS,
            images.len()
        );
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= class_names.len())
        {
            anyhow::bail!(
                "label {l} of image {i} is not a class: there are {} classes",
                class_names.len()
            );
        }
        Ok(Self {
            images,
            labels,
            class_names,
            height,
            width,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    fn image_len(&self) -> usize {
        CHANNELS * self.height * self.width
    }

    /// Image `i`, or an error saying how many there are.
    fn check_index(&self, i: usize) -> Result<()> {
        ensure!(
            i < self.len(),
            "image {i} does not exist: the dataset has {} images (0 to {})",
            self.len(),
            self.len().saturating_sub(1)
        );
        Ok(())
    }

    /// The planar bytes of image `i`.
    pub fn image_bytes(&self, i: usize) -> Result<&[u8]> {
        self.check_index(i)?;
        let n = self.image_len();
        Ok(&self.images[i * n..(i + 1) * n])
    }

    /// Image `i` as an RGB picture (for galleries and for saving).
    pub fn image(&self, i: usize) -> Result<image::RgbImage> {
        Ok(rgb_from_planes(
            self.image_bytes(i)?,
            self.height,
            self.width,
        ))
    }

    /// The name of the class of image `i`.
    pub fn class_name(&self, i: usize) -> Result<&str> {
        self.check_index(i)?;
        let label = self.labels[i] as usize;
        self.class_names
            .get(label)
            .map(String::as_str)
            .with_context(|| format!("image {i} has label {label}, which has no class name"))
    }

    /// Row `row` of image `i` as `[[R G B] ...]`, the way the article prints
    /// `x_train[0][0]` before normalizing.
    pub fn image_row(&self, i: usize, row: usize) -> Result<PixelRow> {
        let (h, w) = (self.height, self.width);
        let planes = self.image_bytes(i)?;
        ensure!(
            row < h,
            "row {row} does not exist: the images have {h} rows (0 to {})",
            h - 1
        );
        let pixels = (0..w)
            .map(|x| {
                let p = row * w + x;
                [planes[p], planes[h * w + p], planes[2 * h * w + p]]
            })
            .collect();
        Ok(PixelRow(pixels))
    }

    /// The first `n` images (all of them when `n` is larger).
    pub fn take(&self, n: usize) -> Dataset {
        self.gather(&(0..n.min(self.len())).collect::<Vec<_>>())
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Result<Dataset> {
        for &i in indices {
            self.check_index(i)?;
        }
        Ok(self.gather(indices))
    }

    /// [`Dataset::select`] of indices known to be in range.
    fn gather(&self, indices: &[usize]) -> Dataset {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            images.extend_from_slice(&self.images[i * n..(i + 1) * n]);
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
            height: self.height,
            width: self.width,
        }
    }

    /// The pixels as an `[N, 3, H, W]` f32 tensor on the CPU, divided by 255
    /// as the article does (`x_train.astype('float32') / 255`).
    pub fn images_f32(&self) -> Result<Tensor> {
        let data: Vec<f32> = self.images.iter().map(|&b| b as f32 / 255.0).collect();
        Ok(Tensor::from_vec(
            data,
            (self.len(), CHANNELS, self.height, self.width),
            &Device::Cpu,
        )?)
    }

    /// The labels one-hot encoded, as `[N, classes]` f32.
    pub fn labels_one_hot(&self) -> Result<Tensor> {
        to_categorical(&self.labels, self.num_classes())
    }
}

/// One image's three colour planes (`[3, H, W]`, as the dataset keeps it)
/// as an RGB picture.
pub fn rgb_from_planes(planes: &[u8], h: usize, w: usize) -> image::RgbImage {
    image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = y as usize * w + x as usize;
        image::Rgb([planes[p], planes[h * w + p], planes[2 * h * w + p]])
    })
}

/// Keras's `to_categorical`: label `l` becomes a row of zeros with a one at `l`.
pub fn to_categorical(labels: &[u8], num_classes: usize) -> Result<Tensor> {
    let mut data = vec![0f32; labels.len() * num_classes];
    for (i, &l) in labels.iter().enumerate() {
        ensure!(
            (l as usize) < num_classes,
            "label {l} at {i} is not below num_classes = {num_classes}"
        );
        data[i * num_classes + l as usize] = 1.0;
    }
    Ok(Tensor::from_vec(
        data,
        (labels.len(), num_classes),
        &Device::Cpu,
    )?)
}

/// Keras's `validation_split`: the *last* `fraction` of the samples, taken
/// before any shuffling, become the validation set. Returns the sizes
/// `(train, validation)`; 50,000 with 0.1 gives (45,000, 5,000).
pub fn split_sizes(n: usize, fraction: f64) -> Result<(usize, usize)> {
    ensure!(
        (0.0..1.0).contains(&fraction),
        "validation_split must be in [0, 1), got {fraction}"
    );
    // Keras: split_at = int(n * (1 - validation_split)).
    let train = (n as f64 * (1.0 - fraction)) as usize;
    Ok((train, n - train))
}

/// Row `row` of image `i` of an `[N, 3, H, W]` tensor, printed like numpy
/// prints `x_train[0][0]` after normalization.
pub fn tensor_row(x: &Tensor, i: usize, row: usize) -> Result<NormalizedRow> {
    let planes: Vec<Vec<f32>> = x
        .get(i)?
        .narrow(1, row, 1)?
        .squeeze(1)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2()?;
    ensure!(
        planes.len() == CHANNELS,
        "expected {CHANNELS} colour planes, got {}",
        planes.len()
    );
    Ok(NormalizedRow(
        (0..planes[0].len())
            .map(|x| [planes[0][x], planes[1][x], planes[2][x]])
            .collect(),
    ))
}

/// One row of an image, printed like numpy prints `x_train[0][0]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelRow(pub Vec<[u8; 3]>);

impl PixelRow {
    /// The same row divided by 255, as after normalization.
    pub fn normalized(&self) -> NormalizedRow {
        NormalizedRow(self.0.iter().map(|p| p.map(|c| c as f32 / 255.0)).collect())
    }
}

impl std::fmt::Display for PixelRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows: Vec<String> = self
            .0
            .iter()
            .map(|[r, g, b]| format!("[{r:3} {g:3} {b:3}]"))
            .collect();
        write!(f, "[{}]", rows.join("\n "))
    }
}

/// A row of normalized pixels, printed like numpy's floats.
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizedRow(pub Vec<[f32; 3]>);

impl std::fmt::Display for NormalizedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows: Vec<String> = self
            .0
            .iter()
            .map(|[r, g, b]| format!("[{r:.8} {g:.8} {b:.8}]"))
            .collect();
        write!(f, "[{}]", rows.join("\n "))
    }
}
