//! A grid of small images with a caption above each, like the article's
//! `plt.imshow` grid of test images titled "predict: cat, answer: dog".
//!
//! The 32x32 images are enlarged by repeating pixels (4x by default, so a
//! CIFAR-10 image becomes 128x128) and the captions are drawn with the
//! embedded DejaVu Sans, into one PNG that a notebook shows inline.

use crate::data::{rgb_from_planes, Dataset, Jitter};
use crate::plot::{
    base64_png, downsample, drawing_error, ensure_font, evcxr_block, font, image_to_png, text_size,
};
use anyhow::{anyhow, bail, ensure, Result};
use image::{imageops::FilterType, Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use rand::{rngs::StdRng, SeedableRng};
use std::path::Path;

/// Pixels between cells, and around the grid.
pub const GAP: u32 = 16;
/// Default number of images per row.
pub const DEFAULT_COLUMNS: usize = 5;
/// Default enlargement of each image.
pub const DEFAULT_SCALE: u32 = 4;
/// Colour of captions.
pub const CAPTION_COLOR: [u8; 3] = [34, 34, 34];
/// Colour of the caption and frame of a wrong prediction.
pub const MISTAKE_COLOR: [u8; 3] = [204, 32, 32];

/// Caption font size (plotters' size, about the line height in pixels).
const CAPTION_FONT: f64 = 15.0;
/// Space between a caption and its image.
const CAPTION_GAP: u32 = 5;
/// Width of the frame around a wrong prediction.
const FRAME: u32 = 3;
/// Captions are drawn this many times larger, then reduced, for smooth text.
const SUPERSAMPLE: u32 = 2;

/// Images in a grid, each with a caption above it.
///
/// In a notebook, a cell that ends with a `Gallery` shows it inline.
#[derive(Clone, Debug)]
pub struct Gallery {
    images: Vec<RgbImage>,
    captions: Vec<String>,
    /// Wrong predictions, drawn with a red caption and frame.
    mistakes: Vec<bool>,
    columns: usize,
    scale: u32,
}

/// Where everything of a gallery goes, in pixels of its PNG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GalleryLayout {
    pub width: u32,
    pub height: u32,
    /// `(x, y, width, height)` of each enlarged image.
    pub image_rects: Vec<(u32, u32, u32, u32)>,
    /// `(x, y, width, height)` of the caption area above each image.
    pub caption_rects: Vec<(u32, u32, u32, u32)>,
    /// Each caption, wrapped into lines that fit its cell.
    pub caption_lines: Vec<Vec<String>>,
}

impl Gallery {
    /// A gallery of `images`, `captions[i]` above `images[i]`.
    pub fn new(images: Vec<RgbImage>, captions: Vec<String>) -> Result<Gallery> {
        ensure!(
            !images.is_empty(),
            "a gallery needs at least one image, got none"
        );
        ensure!(
            images.len() == captions.len(),
            "a gallery needs one caption per image: got {} images and {} captions",
            images.len(),
            captions.len()
        );
        if let Some(i) = images
            .iter()
            .position(|im| im.width() == 0 || im.height() == 0)
        {
            bail!("image {i} of the gallery is empty (0 pixels)");
        }
        let mistakes = vec![false; images.len()];
        Ok(Gallery {
            images,
            captions,
            mistakes,
            columns: DEFAULT_COLUMNS,
            scale: DEFAULT_SCALE,
        })
    }

    /// Test images `indices` of `test` captioned "predict: X, answer: Y",
    /// where `predicted[i]` is the class predicted for test image `i`.
    /// Wrong predictions get a red caption and a red frame.
    pub fn predictions(test: &Dataset, predicted: &[usize], indices: &[usize]) -> Result<Gallery> {
        ensure!(
            predicted.len() == test.len(),
            "there are {} predictions for {} test images: predict the whole test set",
            predicted.len(),
            test.len()
        );
        ensure!(
            !indices.is_empty(),
            "a gallery needs at least one image, got no indices"
        );
        let mut images = Vec::with_capacity(indices.len());
        let mut captions = Vec::with_capacity(indices.len());
        let mut mistakes = Vec::with_capacity(indices.len());
        for &i in indices {
            ensure!(
                i < test.len(),
                "index {i} is out of range: the test set has {} images",
                test.len()
            );
            let p = predicted[i];
            let guess = test.class_names.get(p).ok_or_else(|| {
                anyhow!(
                    "prediction {p} for image {i} is not a class: there are {} classes",
                    test.class_names.len()
                )
            })?;
            let answer = test.class_name(i)?;
            images.push(test.image(i)?);
            captions.push(format!("predict: {guess}, answer: {answer}"));
            mistakes.push(p != test.labels[i] as usize);
        }
        let mut gallery = Gallery::new(images, captions)?;
        gallery.mistakes = mistakes;
        Ok(gallery)
    }

    /// The first `n` images of a dataset (all when it has fewer), each
    /// captioned with its class.
    pub fn first(data: &Dataset, n: usize) -> Result<Gallery> {
        let first = 0..n.min(data.len());
        let images = first
            .clone()
            .map(|i| data.image(i))
            .collect::<Result<_>>()?;
        let names = first
            .map(|i| Ok(data.class_name(i)?.to_string()))
            .collect::<Result<_>>()?;
        Gallery::new(images, names)
    }

    /// What augmentation shows the model: each of the first `n` images of
    /// `data` in a row, as it is and then `copies` augmented copies (crops
    /// of the image padded by `pad`, and mirrors), each captioned with what
    /// moved. The draws come from `seed`.
    pub fn augmented(
        data: &Dataset,
        n: usize,
        copies: usize,
        pad: usize,
        seed: u64,
    ) -> Result<Gallery> {
        ensure!(
            n > 0 && copies > 0,
            "show at least one image and one copy, asked for {n} and {copies}"
        );
        ensure!(
            n <= data.len(),
            "cannot show {n} images of a dataset of {}",
            data.len()
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let (h, w) = (data.height, data.width);
        let mut images = Vec::with_capacity(n * (copies + 1));
        let mut captions = Vec::with_capacity(n * (copies + 1));
        for i in 0..n {
            images.push(data.image(i)?);
            captions.push(data.class_name(i)?.to_string());
            let src = data.image_bytes(i)?; // [C, H, W]
            let mut out = vec![0u8; src.len()];
            for _ in 0..copies {
                let jitter = Jitter::draw(pad, &mut rng);
                jitter.apply(src, &mut out, (h, w));
                images.push(rgb_from_planes(&out, h, w));
                captions.push(jitter.describe());
            }
        }
        Ok(Gallery::new(images, captions)?.columns(copies + 1))
    }

    /// `n` distinct test images picked at random (reproducibly, from
    /// `seed`), captioned like [`Gallery::predictions`].
    pub fn random(test: &Dataset, predicted: &[usize], n: usize, seed: u64) -> Result<Gallery> {
        ensure!(n > 0, "a gallery needs at least one image, asked for 0");
        ensure!(
            n <= test.len(),
            "cannot pick {n} distinct images from a test set of {}",
            test.len()
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let indices = rand::seq::index::sample(&mut rng, test.len(), n).into_vec();
        Self::predictions(test, predicted, &indices)
    }

    /// Images per row (default 5; 0 counts as 1).
    pub fn columns(mut self, n: usize) -> Self {
        self.columns = n.max(1);
        self
    }

    /// How many times each image is enlarged (default 4; kept in 1..=16).
    pub fn scale(mut self, k: u32) -> Self {
        self.scale = k.clamp(1, 16);
        self
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn captions(&self) -> &[String] {
        &self.captions
    }

    /// Which images are wrong predictions (all `false` for [`Gallery::new`]).
    /// Frames every image in red, as the mistakes of a gallery of mistakes.
    pub fn mark_all_mistakes(&mut self) {
        self.mistakes.iter_mut().for_each(|m| *m = true);
    }

    pub fn mistakes(&self) -> &[bool] {
        &self.mistakes
    }

    /// The grid: picture size and where each image and caption goes.
    pub fn layout(&self) -> Result<GalleryLayout> {
        let cell_w = self.images.iter().map(|im| im.width()).max().unwrap_or(1) * self.scale;
        let cell_h = self.images.iter().map(|im| im.height()).max().unwrap_or(1) * self.scale;
        let caption_w = cell_w + GAP - 4;
        let caption_lines = self
            .captions
            .iter()
            .map(|c| wrap(c, caption_w as f64))
            .collect::<Result<Vec<_>>>()?;
        let line_h = line_height()?;
        let lines = caption_lines.iter().map(Vec::len).max().unwrap_or(1).max(1) as u32;
        let caption_h = lines * line_h;

        let columns = self.columns.min(self.images.len()) as u32;
        let rows = self.images.len().div_ceil(self.columns) as u32;
        let row_h = caption_h + CAPTION_GAP + cell_h;
        let width = columns * cell_w + (columns + 1) * GAP;
        let height = rows * row_h + (rows + 1) * GAP;

        let mut image_rects = Vec::with_capacity(self.images.len());
        let mut caption_rects = Vec::with_capacity(self.images.len());
        for (i, im) in self.images.iter().enumerate() {
            let (col, row) = ((i % self.columns) as u32, (i / self.columns) as u32);
            let x = GAP + col * (cell_w + GAP);
            let y = GAP + row * (row_h + GAP);
            caption_rects.push((x, y, cell_w, caption_h));
            let (w, h) = (im.width() * self.scale, im.height() * self.scale);
            // Smaller images sit centred in their cell, right under the caption.
            image_rects.push((x + (cell_w - w) / 2, y + caption_h + CAPTION_GAP, w, h));
        }
        Ok(GalleryLayout {
            width,
            height,
            image_rects,
            caption_rects,
            caption_lines,
        })
    }

    /// The gallery as one RGB picture.
    pub fn rgb_image(&self) -> Result<RgbImage> {
        ensure_font()?;
        let layout = self.layout()?;
        let (w, h) = (layout.width, layout.height);

        // Captions first, drawn large and reduced for smooth text.
        let k = SUPERSAMPLE;
        let mut buf = vec![255u8; (w * k * h * k * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w * k, h * k)).into_drawing_area();
            let line_h = line_height()? as f64;
            for (i, lines) in layout.caption_lines.iter().enumerate() {
                let (x, y, cw, ch) = layout.caption_rects[i];
                let color = if self.mistakes[i] {
                    MISTAKE_COLOR
                } else {
                    CAPTION_COLOR
                };
                let style = font(CAPTION_FONT * k as f64)
                    .color(&RGBColor(color[0], color[1], color[2]))
                    .pos(Pos::new(HPos::Center, VPos::Center));
                // Lines sit at the bottom of the caption area, next to the image.
                let first = y as f64 + ch as f64 - lines.len() as f64 * line_h;
                for (j, line) in lines.iter().enumerate() {
                    let cy = first + (j as f64 + 0.5) * line_h;
                    let pos = (
                        ((x as f64 + cw as f64 / 2.0) * k as f64) as i32,
                        (cy * k as f64).round() as i32,
                    );
                    root.draw(&Text::new(line.as_str(), pos, style.clone()))
                        .map_err(drawing_error)?;
                }
            }
            root.present().map_err(drawing_error)?;
        }
        let big = RgbImage::from_raw(w * k, h * k, buf)
            .ok_or_else(|| anyhow!("bitmap buffer has the wrong size"))?;
        let mut out = downsample(&big, k);

        // Then the images, pixel for pixel, and the frames of the mistakes.
        let red = Rgb(MISTAKE_COLOR);
        for (i, im) in self.images.iter().enumerate() {
            let (x, y, iw, ih) = layout.image_rects[i];
            let big = image::imageops::resize(im, iw, ih, FilterType::Nearest);
            image::imageops::replace(&mut out, &big, x as i64, y as i64);
            if self.mistakes[i] {
                let (x0, y0) = (x.saturating_sub(FRAME), y.saturating_sub(FRAME));
                let (x1, y1) = ((x + iw + FRAME).min(w), (y + ih + FRAME).min(h));
                for py in y0..y1 {
                    for px in x0..x1 {
                        let inside = px >= x && px < x + iw && py >= y && py < y + ih;
                        if !inside {
                            out.put_pixel(px, py, red);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The gallery as PNG bytes.
    pub fn png(&self) -> Result<Vec<u8>> {
        image_to_png(&self.rgb_image()?)
    }

    /// Writes the PNG to `path` (atomically).
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_atomic(path.as_ref(), &self.png()?)
    }

    /// What [`Gallery::evcxr_display`] prints: the PNG, base64-encoded, as
    /// one `image/png` output (a bitmap gains nothing from SVG, and PNG
    /// shows in untrusted notebooks too).
    pub fn evcxr_content(&self) -> Result<String> {
        Ok(evcxr_block("image/png", &base64_png(&self.png()?)))
    }

    /// Shows the gallery inline in an evcxr (Jupyter) notebook.
    pub fn evcxr_display(&self) {
        match self.evcxr_content() {
            Ok(content) => print!("{content}"),
            Err(e) => eprintln!("cannot draw the gallery: {e:#}"),
        }
    }
}

/// Height of one caption line.
fn line_height() -> Result<u32> {
    Ok(text_size("Ag", CAPTION_FONT)?.1 + 3)
}

/// Splits `text` into lines no wider than `max_w` at the caption font. A
/// caption that does not fit on one line breaks after its commas first
/// ("predict: cat," / "answer: dog"), then between words; a word wider than
/// a line gets a line of its own.
fn wrap(text: &str, max_w: f64) -> Result<Vec<String>> {
    let fits =
        |line: &str| -> Result<bool> { Ok(text_size(line, CAPTION_FONT)?.0 as f64 <= max_w) };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if fits(&text)? {
        return Ok(vec![text]);
    }
    let mut lines: Vec<String> = Vec::new();
    for part in text.split_inclusive(", ") {
        let mut current = String::new();
        for word in part.split_whitespace() {
            let candidate = if current.is_empty() {
                word.to_string()
            } else {
                format!("{current} {word}")
            };
            if current.is_empty() || fits(&candidate)? {
                current = candidate;
            } else {
                lines.push(std::mem::replace(&mut current, word.to_string()));
            }
        }
        if !current.is_empty() {
            lines.push(current);
        }
    }
    Ok(lines)
}
