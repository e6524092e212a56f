//! Data augmentation for training batches.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};

/// One image's draw of the standard CIFAR augmentation: the offset of a
/// crop of the zero-padded image, and whether it is mirrored left-right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jitter {
    /// The crop's offset: output pixel `(y, x)` is input pixel `(y + dy, x + dx)`
    /// (of the mirrored image, when `flip`), zero outside the image.
    pub dy: i64,
    pub dx: i64,
    pub flip: bool,
}

impl Jitter {
    /// Offsets up to `pad` each way, and a mirror with probability 1/2.
    pub fn draw(pad: usize, rng: &mut impl rand::Rng) -> Self {
        let pad = pad as i64;
        // This order of draws is what every run so far was trained with.
        let dy = rng.random_range(-pad..=pad);
        let dx = rng.random_range(-pad..=pad);
        let flip = rng.random_bool(0.5);
        Self { dy, dx, flip }
    }

    /// `src` (one image, `[C, H, W]`) jittered into `out` (same shape).
    pub fn apply<T: Copy + Default>(&self, src: &[T], out: &mut [T], (h, w): (usize, usize)) {
        for (src, out) in src.chunks_exact(h * w).zip(out.chunks_exact_mut(h * w)) {
            for y in 0..h {
                let sy = y as i64 + self.dy;
                let row = &mut out[y * w..(y + 1) * w];
                if sy < 0 || sy >= h as i64 {
                    row.fill(T::default());
                    continue;
                }
                for (x, o) in row.iter_mut().enumerate() {
                    let xx = if self.flip { w - 1 - x } else { x };
                    let sx = xx as i64 + self.dx;
                    *o = match sx >= 0 && sx < w as i64 {
                        true => src[sy as usize * w + sx as usize],
                        false => T::default(),
                    };
                }
            }
        }
    }

    /// What the eye sees: `mirrored, 3 right, 2 up` (the picture's content
    /// moves opposite to the crop), or `as is`.
    pub fn describe(&self) -> String {
        // Content at input column sx lands at x = sx - dx, or, mirrored, the
        // mirrored image's content moves by +dx.
        let right = if self.flip { self.dx } else { -self.dx };
        let down = -self.dy;
        let mut parts = Vec::new();
        if self.flip {
            parts.push("mirrored".to_string());
        }
        match right {
            0 => {}
            r if r > 0 => parts.push(format!("{r} right")),
            l => parts.push(format!("{} left", -l)),
        }
        match down {
            0 => {}
            d if d > 0 => parts.push(format!("{d} down")),
            u => parts.push(format!("{} up", -u)),
        }
        match parts.is_empty() {
            true => "as is".into(),
            false => parts.join(", "),
        }
    }
}

/// The standard CIFAR augmentation: each image of `x` (`[N, C, H, W]`)
/// shifted by up to `pad` pixels each way (a random crop of the zero-padded
/// image) and mirrored left-right with probability 1/2.
pub fn augment(x: &Tensor, pad: usize, rng: &mut impl rand::Rng) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    ensure!(
        n * c * h * w > 0,
        "nothing to augment: the images are {:?}",
        x.dims()
    );
    let src: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; src.len()];
    let image = c * h * w;
    for (src, out) in src.chunks_exact(image).zip(out.chunks_exact_mut(image)) {
        Jitter::draw(pad, rng).apply(src, out, (h, w));
    }
    Ok(Tensor::from_vec(out, (n, c, h, w), x.device())?.to_dtype(x.dtype())?)
}

/// Each image mirrored left-right (`[N, C, H, W]`, the last axis reversed):
/// the copies test-time augmentation scores beside the originals.
pub fn flip_horizontal(x: &Tensor) -> Result<Tensor> {
    let w = x.dim(3)?;
    let reversed: Vec<u32> = (0..w as u32).rev().collect();
    let reversed = Tensor::from_vec(reversed, w, x.device())?;
    Ok(x.index_select(&reversed, 3)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    /// A 1-channel 8x8 image with one lit pixel at (y, x).
    fn dot(y: usize, x: usize) -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[y * 8 + x] = 9;
        v
    }

    fn lit(img: &[u8]) -> Option<(usize, usize)> {
        img.iter().position(|&v| v == 9).map(|p| (p / 8, p % 8))
    }

    #[test]
    fn a_jitter_moves_the_content_as_it_says() {
        let mut out = vec![0u8; 64];
        let j = Jitter {
            dy: 2,
            dx: 3,
            flip: false,
        };
        j.apply(&dot(4, 5), &mut out, (8, 8));
        assert_eq!(lit(&out), Some((2, 2)));
        assert_eq!(j.describe(), "3 left, 2 up");
        // Mirrored: column 5 becomes 2, then the mirrored picture moves 3 right.
        let j = Jitter {
            dy: -1,
            dx: 3,
            flip: true,
        };
        j.apply(&dot(4, 5), &mut out, (8, 8));
        assert_eq!(lit(&out), Some((5, 5)));
        assert_eq!(j.describe(), "mirrored, 3 right, 1 down");
        // Moved out of the frame: all zeros (the padding).
        Jitter {
            dy: 0,
            dx: -4,
            flip: false,
        }
        .apply(&dot(0, 5), &mut out, (8, 8));
        assert_eq!(out, vec![0u8; 64]);
        assert_eq!(
            Jitter {
                dy: 0,
                dx: 0,
                flip: false
            }
            .describe(),
            "as is"
        );
    }

    #[test]
    fn augment_draws_one_jitter_per_image_in_order() {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 8.0 * 8.0, &candle_core::Device::Cpu)
            .unwrap()
            .reshape((2, 3, 8, 8))
            .unwrap();
        let got: Vec<f32> = augment(&x, 4, &mut StdRng::seed_from_u64(5))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let src: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        let mut want = vec![0f32; src.len()];
        for i in 0..2 {
            let r = i * 192..(i + 1) * 192;
            Jitter::draw(4, &mut rng).apply(&src[r.clone()], &mut want[r], (8, 8));
        }
        assert_eq!(got, want);
    }

    /// The loop every run so far was trained with (before `Jitter`): the
    /// same draws and the same pixels, so those runs are reproducible.
    fn augment_before(x: &Tensor, pad: usize, rng: &mut impl rand::Rng) -> Vec<f32> {
        let (n, c, h, w) = x.dims4().unwrap();
        let src: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let mut out = vec![0f32; src.len()];
        let pad = pad as i64;
        for i in 0..n {
            let dy = rng.random_range(-pad..=pad);
            let dx = rng.random_range(-pad..=pad);
            let flip = rng.random_bool(0.5);
            for ch in 0..c {
                let plane = (i * c + ch) * h * w;
                for y in 0..h {
                    let sy = y as i64 + dy;
                    if sy < 0 || sy >= h as i64 {
                        continue;
                    }
                    for x_ in 0..w {
                        let xx = if flip { w - 1 - x_ } else { x_ };
                        let sx = xx as i64 + dx;
                        if sx >= 0 && sx < w as i64 {
                            out[plane + y * w + x_] = src[plane + sy as usize * w + sx as usize];
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn augment_is_what_every_run_so_far_trained_with() {
        let x = Tensor::rand(0f32, 1.0, (64, 3, 32, 32), &candle_core::Device::Cpu).unwrap();
        let got: Vec<f32> = augment(&x, 4, &mut StdRng::seed_from_u64(11))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, augment_before(&x, 4, &mut StdRng::seed_from_u64(11)));
    }
}
