//! Pictures of a training run: the learning curves of the article (loss and
//! accuracy per epoch, training against validation) and a confusion matrix.
//!
//! A [`Figure`] keeps the data, not pixels, and draws itself on demand with
//! one drawing function generic over the plotters backend, so the SVG shown
//! inline and the PNG saved to disk come from the same code. Text is laid
//! out with DejaVu Sans, embedded in the crate (see `assets/`), so PNGs
//! render the same on a headless machine without any installed font.

use crate::history::History;
use anyhow::{anyhow, bail, ensure, Result};
use base64::Engine as _;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;

/// The embedded font: DejaVu Sans (Bitstream Vera license, see
/// `assets/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Colour of the training series (matplotlib's first default colour).
pub const TRAIN_COLOR: [u8; 3] = [31, 119, 180];
/// Colour of the validation series (matplotlib's second default colour).
pub const VAL_COLOR: [u8; 3] = [255, 127, 14];
/// The colours of runs side by side: matplotlib's default cycle (tab10).
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// PNGs are drawn this many times larger, then reduced by averaging, which
/// smooths the lines and text that plotters' bitmap backend draws aliased.
const SUPERSAMPLE: u32 = 2;

/// Registers the embedded font as plotters' `sans-serif` family, once per
/// process. Every drawing (SVG included, which measures text with it) calls
/// this first.
pub(crate) fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Turns any plotters error into an `anyhow` error (their types are generic
/// over the backend, and not always `'static`).
pub(crate) fn drawing_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// The font at `size` (plotters' size: roughly the line height in pixels).
pub(crate) fn font(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::SansSerif, size, FontStyle::Normal)
}

/// The width and height plotters gives `text` at `size`.
pub(crate) fn text_size(text: &str, size: f64) -> Result<(u32, u32)> {
    ensure_font()?;
    font(size).box_size(text).map_err(drawing_error)
}

/// `"EVCXR_BEGIN_CONTENT <mime>\n<content>\nEVCXR_END_CONTENT\n"`.
pub(crate) fn evcxr_block(mime: &str, content: &str) -> String {
    format!("EVCXR_BEGIN_CONTENT {mime}\n{content}\nEVCXR_END_CONTENT\n")
}

/// `png` base64-encoded, as evcxr wants `image/png` content.
pub(crate) fn base64_png(png: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// Encodes an RGB picture as PNG bytes.
pub fn image_to_png(img: &image::RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| anyhow!("cannot encode a {}x{} PNG: {e}", img.width(), img.height()))?;
    Ok(out.into_inner())
}

/// Averages every `k`x`k` block of `img` into one pixel.
pub(crate) fn downsample(img: &image::RgbImage, k: u32) -> image::RgbImage {
    if k == 1 {
        return img.clone();
    }
    let (w, h) = (img.width() / k, img.height() / k);
    let n = k * k;
    image::RgbImage::from_fn(w, h, |x, y| {
        let mut sum = [0u32; 3];
        for dy in 0..k {
            for dx in 0..k {
                let p = img.get_pixel(x * k + dx, y * k + dy);
                for c in 0..3 {
                    sum[c] += p[c] as u32;
                }
            }
        }
        image::Rgb(sum.map(|s| ((s + n / 2) / n) as u8))
    })
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

const TEXT: RGBColor = RGBColor(34, 34, 34);
const AXIS: RGBColor = RGBColor(90, 90, 90);

/// What a figure shows.
#[derive(Clone, Debug)]
enum Content {
    Curves(History),
    /// Named runs, drawn over each other.
    Comparison(Vec<(String, History)>),
    Confusion(ConfusionLayout),
}

/// A picture that renders to SVG (for the notebook) and to PNG (for files),
/// from the same drawing code.
///
/// In a notebook, a cell that ends with a `Figure` shows it inline.
#[derive(Clone, Debug)]
pub struct Figure {
    content: Content,
    width: u32,
    height: u32,
}

/// The article's learning curves: loss (training and validation) on the
/// left, accuracy on the right, against epochs 1..N.
///
/// Works for a single epoch and for a history without validation (then only
/// the training curves are drawn). Errors when the history is empty or its
/// series have different lengths.
pub fn learning_curves(history: &History) -> Result<Figure> {
    let n = history.loss.len();
    ensure!(n > 0, "the history has no epochs: nothing to plot");
    ensure!(
        history.acc.len() == n,
        "the history has {n} losses but {} accuracies",
        history.acc.len()
    );
    ensure!(
        history.val_loss.len() == history.val_acc.len(),
        "the history has {} validation losses but {} validation accuracies",
        history.val_loss.len(),
        history.val_acc.len()
    );
    ensure!(
        history.val_loss.is_empty() || history.val_loss.len() == n,
        "the history has {n} epochs but {} validation results (expected {n} or none)",
        history.val_loss.len()
    );
    ensure_font()?;
    Ok(Figure {
        content: Content::Curves(history.clone()),
        width: 1000,
        height: 420,
    })
}

/// Several runs' validation loss and accuracy overlaid, one colour per
/// run, named in the legend: how each change to a recipe shows against the
/// others, epoch by epoch. Runs may have different numbers of epochs.
///
/// Errors when there is no run, or a run has no validation results.
pub fn compare_curves(runs: &[(&str, &History)]) -> Result<Figure> {
    ensure!(
        !runs.is_empty(),
        "no runs to compare: give at least one (name, history)"
    );
    for (name, h) in runs {
        ensure!(
            !h.val_loss.is_empty() && h.val_loss.len() == h.val_acc.len(),
            "run {name:?} has no validation results to compare (train it with validation_split or validation_data)"
        );
    }
    ensure_font()?;
    Ok(Figure {
        content: Content::Comparison(
            runs.iter()
                .map(|(n, h)| (n.to_string(), (*h).clone()))
                .collect(),
        ),
        width: 1000,
        height: 420,
    })
}

/// A confusion matrix as a heat map: `matrix[t][p]` is the number of images
/// of true class `t` predicted as `p` (rows: true label, columns: predicted
/// label), written in each cell, with the class names on both axes.
///
/// Errors unless `matrix` is square with one row per class name.
pub fn confusion_matrix(matrix: &[Vec<usize>], class_names: &[String]) -> Result<Figure> {
    let n = class_names.len();
    ensure!(n > 0, "a confusion matrix needs at least one class");
    ensure!(
        matrix.len() == n,
        "the confusion matrix has {} rows but there are {n} class names",
        matrix.len()
    );
    if let Some((i, row)) = matrix.iter().enumerate().find(|(_, r)| r.len() != n) {
        bail!(
            "row {i} of the confusion matrix has {} columns, expected {n}",
            row.len()
        );
    }
    let layout = ConfusionLayout::new(matrix.to_vec(), class_names.to_vec())?;
    let (width, height) = (layout.width, layout.height);
    Ok(Figure {
        content: Content::Confusion(layout),
        width,
        height,
    })
}

impl Figure {
    /// The size in pixels of the PNG (and of the SVG's canvas).
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The same figure drawn at another size. Only the learning curves can
    /// be resized (a confusion matrix sizes itself from its classes).
    pub fn with_size(mut self, width: u32, height: u32) -> Result<Self> {
        ensure!(
            !matches!(self.content, Content::Confusion(_)),
            "a confusion matrix sizes itself; it cannot be resized"
        );
        ensure!(
            (300..=8000).contains(&width) && (200..=8000).contains(&height),
            "a figure must be 300 to 8000 pixels wide and 200 to 8000 high, got {width}x{height}"
        );
        self.width = width;
        self.height = height;
        Ok(self)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, s: f64) -> Result<()> {
        ensure_font()?;
        root.fill(&WHITE).map_err(drawing_error)?;
        match &self.content {
            Content::Curves(h) => draw_curves(root, h, s)?,
            Content::Comparison(runs) => draw_comparison(root, runs, s)?,
            Content::Confusion(layout) => layout.draw(root, s)?,
        }
        root.present().map_err(drawing_error)
    }

    fn try_svg(&self) -> Result<String> {
        let mut svg = String::new();
        {
            let root =
                SVGBackend::with_string(&mut svg, (self.width, self.height)).into_drawing_area();
            self.draw(&root, 1.0)?;
        }
        Ok(svg)
    }

    /// The figure as an SVG document. Its text uses the viewer's sans-serif
    /// font. Should drawing fail, the SVG shows the error instead.
    pub fn svg(&self) -> String {
        self.try_svg().unwrap_or_else(|e| {
            let msg = e.to_string().replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"><text x="10" y="20" fill="red">{msg}</text></svg>"#,
                w = self.width,
                h = self.height
            )
        })
    }

    /// The figure as an RGB picture of [`Figure::dimensions`].
    pub fn rgb_image(&self) -> Result<image::RgbImage> {
        let (w, h) = (self.width * SUPERSAMPLE, self.height * SUPERSAMPLE);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            self.draw(&root, SUPERSAMPLE as f64)?;
        }
        let big = image::RgbImage::from_raw(w, h, buf)
            .ok_or_else(|| anyhow!("bitmap buffer has the wrong size"))?;
        Ok(downsample(&big, SUPERSAMPLE))
    }

    /// The figure as PNG bytes, drawn with the embedded font.
    pub fn png(&self) -> Result<Vec<u8>> {
        image_to_png(&self.rgb_image()?)
    }

    /// Writes the PNG to `path` (atomically).
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_atomic(path.as_ref(), &self.png()?)
    }

    /// Writes the SVG to `path` (atomically).
    pub fn save_svg(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_atomic(path.as_ref(), self.svg().as_bytes())
    }

    /// What [`Figure::evcxr_display`] prints: one output holding the figure
    /// twice, as `image/svg+xml` and as base64 `image/png`.
    ///
    /// JupyterLab shows the SVG (crisp at any zoom, small) while the notebook
    /// is trusted, i.e. when the cell has just run; SVG is not a "safe" MIME
    /// type, so a reopened, untrusted notebook (and viewers such as GitHub's)
    /// falls back to the PNG of the same bundle instead of showing nothing.
    pub fn evcxr_content(&self) -> String {
        let mut out = evcxr_block("image/svg+xml", &self.svg());
        match self.png() {
            Ok(png) => out.push_str(&evcxr_block("image/png", &base64_png(&png))),
            Err(e) => eprintln!("cannot draw the PNG: {e:#}"),
        }
        out
    }

    /// Shows the figure inline in an evcxr (Jupyter) notebook.
    pub fn evcxr_display(&self) {
        print!("{}", self.evcxr_content());
    }
}

// ---------------------------------------------------------------------------
// Learning curves.

/// The article's two panels.
fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    h: &History,
    s: f64,
) -> Result<()> {
    let panels = root
        .margin(6.0 * s, 6.0 * s, 6.0 * s, 12.0 * s)
        .split_evenly((1, 2));
    fn pair<'a>(train: &'a [f64], val: &'a [f64]) -> Vec<Line<'a>> {
        let mut lines = vec![Line {
            label: "training",
            values: train,
            color: rgb(TRAIN_COLOR),
        }];
        if !val.is_empty() {
            lines.push(Line {
                label: "validation",
                values: val,
                color: rgb(VAL_COLOR),
            });
        }
        lines
    }
    let (loss, acc) = (pair(&h.loss, &h.val_loss), pair(&h.acc, &h.val_acc));
    let upper = SeriesLabelPosition::UpperRight;
    draw_panel(&panels[0], ("Model loss", "Loss"), &loss, upper, s)?;
    let lower = SeriesLabelPosition::LowerRight;
    draw_panel(&panels[1], ("Model accuracy", "Accuracy"), &acc, lower, s)
}

/// Several runs' validation curves, one colour each: loss on the left,
/// accuracy on the right.
fn draw_comparison<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[(String, History)],
    s: f64,
) -> Result<()> {
    let panels = root
        .margin(6.0 * s, 6.0 * s, 6.0 * s, 12.0 * s)
        .split_evenly((1, 2));
    let lines = |values: fn(&History) -> &[f64]| -> Vec<Line> {
        let colors = PALETTE.iter().cycle();
        (runs.iter().zip(colors))
            .map(|((name, h), &c)| Line {
                label: name,
                values: values(h),
                color: rgb(c),
            })
            .collect()
    };
    let (loss, acc) = (lines(|h| &h.val_loss), lines(|h| &h.val_acc));
    let upper = SeriesLabelPosition::UpperRight;
    draw_panel(&panels[0], ("Validation loss", "Loss"), &loss, upper, s)?;
    let lower = SeriesLabelPosition::LowerRight;
    draw_panel(
        &panels[1],
        ("Validation accuracy", "Accuracy"),
        &acc,
        lower,
        s,
    )
}

/// Ticks for epochs 1..=n: every epoch when there are few, else multiples of
/// a round step.
fn epoch_ticks(n: usize) -> Vec<f64> {
    let step = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000]
        .into_iter()
        .find(|&st| n / st <= 10)
        .unwrap_or(n.div_ceil(10).max(1));
    if step == 1 {
        (1..=n).map(|e| e as f64).collect()
    } else {
        (1..=n / step).map(|k| (k * step) as f64).collect()
    }
}

/// The epoch axis: a linear `f64` axis whose ticks (and grid lines) are
/// exactly [`epoch_ticks`], so there is never a tick at epoch 2.5.
struct EpochAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for EpochAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (value - self.lo) / (self.hi - self.lo);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold grid lines at the ticks, no light ones in between.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// The y range of finite values, padded by 6%, never below zero (losses and
/// accuracies are not negative).
fn value_range(series: &[&[f64]]) -> (f64, f64) {
    let finite = series
        .iter()
        .flat_map(|s| s.iter().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.06
    } else {
        (hi.abs() * 0.1).max(0.05)
    };
    let lo = if lo >= 0.0 {
        (lo - pad).max(0.0)
    } else {
        lo - pad
    };
    (lo, hi + pad)
}

/// As many decimals as y tick labels need, about 8 ticks spanning `span`.
fn tick_decimals(span: f64) -> usize {
    let step = span / 8.0;
    if !step.is_finite() || step <= 0.0 {
        return 2;
    }
    (-step.log10()).ceil().clamp(0.0, 6.0) as usize
}

/// Splits a series into runs of finite points, so a NaN leaves a gap.
fn finite_runs(values: &[f64]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for (i, &v) in values.iter().enumerate() {
        if v.is_finite() {
            runs.last_mut().unwrap().push(((i + 1) as f64, v));
        } else if !runs.last().unwrap().is_empty() {
            runs.push(Vec::new());
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

/// One line of a panel: its legend label, values per epoch and colour.
struct Line<'a> {
    label: &'a str,
    values: &'a [f64],
    color: RGBColor,
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (title, y_desc): (&str, &str),
    lines: &[Line],
    legend_at: SeriesLabelPosition,
    s: f64,
) -> Result<()> {
    let n = lines
        .iter()
        .map(|l| l.values.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let pad = if n == 1 {
        0.5
    } else {
        ((n - 1) as f64 * 0.04).max(0.2)
    };
    let (x0, x1) = (1.0 - pad, n as f64 + pad);
    let all: Vec<&[f64]> = lines.iter().map(|l| l.values).collect();
    let (y0, y1) = value_range(&all);
    let decimals = tick_decimals(y1 - y0);

    let mut chart = ChartBuilder::on(area)
        .caption(title, font(21.0 * s).color(&TEXT))
        .margin(8.0 * s)
        .margin_right(18.0 * s)
        .x_label_area_size(46.0 * s)
        .y_label_area_size(66.0 * s)
        .build_cartesian_2d(
            EpochAxis {
                lo: x0,
                hi: x1,
                ticks: epoch_ticks(n),
            },
            y0..y1,
        )
        .map_err(drawing_error)?;

    chart
        .configure_mesh()
        .x_desc("Epoch")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .y_labels(8)
        .label_style(font(14.0 * s).color(&TEXT))
        .axis_desc_style(font(15.0 * s).color(&TEXT))
        .axis_style(AXIS.stroke_width(s.round() as u32))
        .bold_line_style(RGBColor(225, 225, 225).stroke_width(s.round() as u32))
        .light_line_style(TRANSPARENT)
        .x_label_offset(0)
        .set_all_tick_mark_size(4.0 * s)
        .draw()
        .map_err(drawing_error)?;

    let line_w = (2.0 * s).round() as u32;
    let markers = n <= 40;
    for line in lines {
        let color = line.color;
        let style = color.stroke_width(line_w);
        let mut labelled = false;
        for run in finite_runs(line.values) {
            let drawn = chart
                .draw_series(LineSeries::new(run.clone(), style))
                .map_err(drawing_error)?;
            // Label once, not once per finite stretch between NaNs.
            if !labelled {
                drawn.label(line.label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + (22.0 * s) as i32, y)], style)
                });
                labelled = true;
            }
            if markers {
                chart
                    .draw_series(
                        run.iter()
                            .map(|&p| Circle::new(p, (3.5 * s) as i32, color.filled())),
                    )
                    .map_err(drawing_error)?;
            }
        }
    }

    chart
        .configure_series_labels()
        .position(legend_at)
        .margin(12.0 * s)
        .legend_area_size(30.0 * s)
        .label_font(font(14.0 * s).color(&TEXT))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200).stroke_width(s.round() as u32))
        .draw()
        .map_err(drawing_error)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Confusion matrix.

/// matplotlib's "Blues" colour map (ColorBrewer), light to dark.
const BLUES: [[u8; 3]; 9] = [
    [247, 251, 255],
    [222, 235, 247],
    [198, 219, 239],
    [158, 202, 225],
    [107, 174, 214],
    [66, 146, 198],
    [33, 113, 181],
    [8, 81, 156],
    [8, 48, 107],
];

/// The colour of `t` in 0..=1 on the Blues map.
fn blues(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (BLUES.len() - 1) as f64;
    let i = (x.floor() as usize).min(BLUES.len() - 2);
    let f = x - i as f64;
    let mix =
        |c: usize| (BLUES[i][c] as f64 * (1.0 - f) + BLUES[i + 1][c] as f64 * f).round() as u8;
    RGBColor(mix(0), mix(1), mix(2))
}

/// Round colour-bar ticks from 0 to `max`.
fn count_ticks(max: usize) -> Vec<usize> {
    if max == 0 {
        return vec![0];
    }
    let raw = max as f64 / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&st| st >= raw)
        .unwrap_or(10.0 * mag);
    let step = (step.round() as usize).max(1);
    (0..=max / step).map(|k| k * step).collect()
}

/// Positions (at scale 1) of every part of a confusion matrix picture,
/// computed from the text sizes of the embedded font.
#[derive(Clone, Debug)]
struct ConfusionLayout {
    matrix: Vec<Vec<usize>>,
    names: Vec<String>,
    cell: f64,
    count_font: f64,
    /// Top-left corner of the grid.
    left: f64,
    top: f64,
    /// Column labels turned vertical when they do not fit under a cell.
    rotate_columns: bool,
    column_labels_h: f64,
    width: u32,
    height: u32,
}

const LABEL_FONT: f64 = 14.0;
const DESC_FONT: f64 = 15.0;
const TITLE_FONT: f64 = 20.0;
const BAR_W: f64 = 18.0;

impl ConfusionLayout {
    fn new(matrix: Vec<Vec<usize>>, names: Vec<String>) -> Result<Self> {
        let n = names.len();
        let cell = if n <= 10 {
            64.0
        } else {
            (640.0 / n as f64).max(26.0)
        };
        let max = matrix.iter().flatten().copied().max().unwrap_or(0);
        let digits = max.to_string().len() as f64;
        let count_font = (cell * 0.3).min(1.7 * cell / digits.max(1.0)).min(16.0);
        let widest = |texts: &[String], size: f64| -> Result<f64> {
            texts
                .iter()
                .try_fold(0.0f64, |m, t| Ok(m.max(text_size(t, size)?.0 as f64)))
        };
        let name_w = widest(&names, LABEL_FONT)?;
        let line_h = text_size("Ag", LABEL_FONT)?.1 as f64;
        let rotate_columns = name_w > cell - 6.0;
        let column_labels_h = if rotate_columns { name_w } else { line_h };
        let desc_h = text_size("Ag", DESC_FONT)?.1 as f64;
        let title_h = text_size("Ag", TITLE_FONT)?.1 as f64;
        let tick_labels: Vec<String> = count_ticks(max).iter().map(|t| t.to_string()).collect();
        let tick_w = widest(&tick_labels, LABEL_FONT)?;

        let left = 16.0 + desc_h + 14.0 + name_w + 10.0;
        let top = 14.0 + title_h + 18.0;
        let grid = n as f64 * cell;
        let right = 24.0 + BAR_W + 8.0 + tick_w + 20.0;
        let bottom = 10.0 + column_labels_h + 14.0 + desc_h + 16.0;
        Ok(Self {
            matrix,
            names,
            cell,
            count_font,
            left,
            top,
            rotate_columns,
            column_labels_h,
            width: (left + grid + right).ceil() as u32,
            height: (top + grid + bottom).ceil() as u32,
        })
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, s: f64) -> Result<()> {
        let n = self.names.len();
        let px = |v: f64| (v * s).round() as i32;
        let (left, top, cell) = (self.left, self.top, self.cell);
        let grid = n as f64 * cell;
        let max = self.matrix.iter().flatten().copied().max().unwrap_or(0);
        let style = |size: f64, color: &RGBColor, h: HPos, v: VPos| {
            font(size * s).color(color).pos(Pos::new(h, v))
        };

        // Title, centred over the grid.
        root.draw(&Text::new(
            "Confusion matrix",
            (px(left + grid / 2.0), px(14.0)),
            style(TITLE_FONT, &TEXT, HPos::Center, VPos::Top),
        ))
        .map_err(drawing_error)?;

        // Cells and counts.
        for (t, row) in self.matrix.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                let frac = if max == 0 {
                    0.0
                } else {
                    count as f64 / max as f64
                };
                let (x0, y0) = (left + p as f64 * cell, top + t as f64 * cell);
                root.draw(&Rectangle::new(
                    [(px(x0), px(y0)), (px(x0 + cell), px(y0 + cell))],
                    blues(frac).filled(),
                ))
                .map_err(drawing_error)?;
                let ink = if frac > 0.55 { WHITE } else { TEXT };
                root.draw(&Text::new(
                    count.to_string(),
                    (px(x0 + cell / 2.0), px(y0 + cell / 2.0)),
                    style(self.count_font, &ink, HPos::Center, VPos::Center),
                ))
                .map_err(drawing_error)?;
            }
        }
        root.draw(&Rectangle::new(
            [(px(left), px(top)), (px(left + grid), px(top + grid))],
            AXIS.stroke_width(s.round() as u32),
        ))
        .map_err(drawing_error)?;

        // Class names: rows on the left, columns below.
        for (i, name) in self.names.iter().enumerate() {
            let c = i as f64 * cell + cell / 2.0;
            root.draw(&Text::new(
                name.clone(),
                (px(left - 10.0), px(top + c)),
                style(LABEL_FONT, &TEXT, HPos::Right, VPos::Center),
            ))
            .map_err(drawing_error)?;
            let column = if self.rotate_columns {
                // Read bottom to top, right-aligned against the grid.
                style(LABEL_FONT, &TEXT, HPos::Right, VPos::Center)
                    .transform(FontTransform::Rotate270)
            } else {
                style(LABEL_FONT, &TEXT, HPos::Center, VPos::Top)
            };
            root.draw(&Text::new(
                name.clone(),
                (px(left + c), px(top + grid + 10.0)),
                column,
            ))
            .map_err(drawing_error)?;
        }

        // Axis titles.
        let below = top + grid + 10.0 + self.column_labels_h + 14.0;
        root.draw(&Text::new(
            "Predicted label",
            (px(left + grid / 2.0), px(below)),
            style(DESC_FONT, &TEXT, HPos::Center, VPos::Top),
        ))
        .map_err(drawing_error)?;
        root.draw(&Text::new(
            "True label",
            (px(16.0), px(top + grid / 2.0)),
            style(DESC_FONT, &TEXT, HPos::Center, VPos::Top).transform(FontTransform::Rotate270),
        ))
        .map_err(drawing_error)?;

        // Colour bar, dark (max) at the top.
        let bar_x = left + grid + 24.0;
        let (bar_top, bar_bottom) = (px(top), px(top + grid));
        for y in bar_top..bar_bottom {
            let t = (bar_bottom - 1 - y) as f64 / ((bar_bottom - bar_top - 1).max(1)) as f64;
            root.draw(&Rectangle::new(
                [(px(bar_x), y), (px(bar_x + BAR_W), y + 1)],
                blues(t).filled(),
            ))
            .map_err(drawing_error)?;
        }
        root.draw(&Rectangle::new(
            [(px(bar_x), bar_top), (px(bar_x + BAR_W), bar_bottom)],
            AXIS.stroke_width(s.round() as u32),
        ))
        .map_err(drawing_error)?;
        for tick in count_ticks(max) {
            let frac = if max == 0 {
                0.0
            } else {
                tick as f64 / max as f64
            };
            let y = top + grid - frac * grid;
            root.draw(&PathElement::new(
                vec![(px(bar_x + BAR_W), px(y)), (px(bar_x + BAR_W + 4.0), px(y))],
                AXIS.stroke_width(s.round() as u32),
            ))
            .map_err(drawing_error)?;
            root.draw(&Text::new(
                tick.to_string(),
                (px(bar_x + BAR_W + 8.0), px(y)),
                style(LABEL_FONT, &TEXT, HPos::Left, VPos::Center),
            ))
            .map_err(drawing_error)?;
        }
        Ok(())
    }
}
