//! Data augmentation for training batches.

use anyhow::Result;
use candle_core::{DType, Tensor};

/// The standard CIFAR augmentation: each image shifted by up to `pad`
/// pixels each way (a random crop of the zero-padded image) and mirrored
/// left-right with probability 1/2.
pub fn augment(x: &Tensor, pad: usize, rng: &mut impl rand::Rng) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let src: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
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
