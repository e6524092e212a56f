//! The im2col path: row copies plus one `gemm` per image, for every
//! convolution the Winograd path does not take (the first layer's 3 input
//! channels, other kernel sizes, strides, asymmetric padding).

use super::geom::{
    data_chunks, gemm_parallelism, image_grad, sum_runs, take_sums, write_forward, zeroed,
    Epilogue, Forward, Geom, OutChunk, Wanted, BACKWARD_RUNS,
};
use crate::kernels::simd::{kernel_grad_dots, Float};
use candle_core::WithDType;
use gemm::Parallelism;
use rayon::prelude::*;

/// im2col of one image `[C, H, W]` into `cols` `[C·kh·kw, stride]`: row
/// `(c, ki, kj)` holds the input pixel each output pixel sees through that
/// kernel tap, zero where it falls in the padding (and past `Ho·Wo`). Copies
/// whole row runs at stride 1.
fn im2col<T: WithDType>(g: &Geom, x: &[T], cols: &mut [T], stride: usize) {
    let (hw_out, zero) = (g.hw_out(), T::zero());
    for (row, dst) in cols.chunks_exact_mut(stride).enumerate() {
        let (dst, tail) = dst.split_at_mut(hw_out);
        tail.fill(zero);
        let (c, ki, kj) = (row / g.kk(), row / g.kw % g.kh, row % g.kw);
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (lo, hi, iw0) = g.valid_cols(kj);
        for (oh, out) in dst.chunks_exact_mut(g.wo).enumerate() {
            let Some(ih) = g.input_row(oh, ki) else {
                out.fill(zero);
                continue;
            };
            let src = &plane[ih * g.w + iw0..];
            out[..lo].fill(zero);
            match g.sw {
                1 => out[lo..hi].copy_from_slice(&src[..hi - lo]),
                s => out[lo..hi]
                    .iter_mut()
                    .zip(src.iter().step_by(s))
                    .for_each(|(o, &v)| *o = v),
            }
            out[hi..].fill(zero);
        }
    }
}

/// col2im, the adjoint of [`im2col`]: adds every entry of `cols` back onto
/// the input pixel it was copied from; `dx` `[C, H, W]` must start at zero.
fn col2im<T: WithDType>(g: &Geom, cols: &[T], dx: &mut [T]) {
    for (row, src) in cols.chunks_exact(g.hw_out()).enumerate() {
        let (c, ki, kj) = (row / g.kk(), row / g.kw % g.kh, row % g.kw);
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (lo, hi, iw0) = g.valid_cols(kj);
        for (oh, from) in src.chunks_exact(g.wo).enumerate() {
            let Some(ih) = g.input_row(oh, ki) else {
                continue;
            };
            let to = plane[ih * g.w + iw0..].iter_mut().step_by(g.sw);
            for (t, &f) in to.zip(&from[lo..hi]) {
                *t += f;
            }
        }
    }
}

/// `y [O, HWp] = K [O, CKK] · cols [CKK, HWp]`, `HWp` = [`Geom::hw_padded`].
/// Written as `yᵀ = colsᵀ · Kᵀ` (pixels on gemm's `m` side), the form gemm
/// reads in place: `cols` and `y` are then column-major.
#[rustfmt::skip]
fn gemm_forward<T: WithDType>(g: &Geom, kernel: &[T], cols: &[T], y: &mut [T], par: Parallelism) {
    let (m, n, k) = (g.hw_padded(), g.o, g.ckk());
    // SAFETY: cols [k, m], kernel [n, k] and y [n, m] are row-major with
    // exactly these sizes; each is read as its column-major transpose.
    unsafe {
        gemm::gemm(
            m, n, k,
            y.as_mut_ptr(), m as isize, 1, false,
            cols.as_ptr(), m as isize, 1,
            kernel.as_ptr(), k as isize, 1,
            T::zero(), T::one(), false, false, false, par,
        )
    }
}

/// `dcols [CKK, HW] = Kᵀ · dy`, with `K [O, CKK]` read transposed and `dy [O, HW]`.
#[rustfmt::skip]
fn gemm_grad_cols<T: WithDType>(g: &Geom, kernel: &[T], dy: &[T], dcols: &mut [T], par: Parallelism) {
    let (m, n, k) = (g.ckk(), g.hw_out(), g.o);
    // SAFETY: row-major kernel [k, m] (read transposed), dy [k, n], dcols [m, n].
    unsafe {
        gemm::gemm(
            m, n, k,
            dcols.as_mut_ptr(), 1, n as isize, false,
            kernel.as_ptr(), m as isize, 1,
            dy.as_ptr(), 1, n as isize,
            T::zero(), T::one(), false, false, false, par,
        )
    }
}

/// Forward over contiguous data: per image, im2col then one gemm into
/// scratch, then bias (and the ReLU if asked for) on the way out.
pub(super) fn im2col_forward<T: Float>(
    g: &Geom,
    x: &[T],
    kernel: &[T],
    bias: &[T],
    e: Epilogue,
) -> Forward<T> {
    let relu = e.relu;
    assert!(!e.pool, "the im2col path does not pool");
    let (hw, hwp) = (g.hw_out(), g.hw_padded());
    let par = gemm_parallelism(g.n);
    let write = |x_n: &[T], out: OutChunk<'_, T>| {
        let (y_n, sums) = (out.y, out.sums);
        T::with_scratch((g.ckk() + g.o) * hwp, |scratch| {
            let (cols, out) = scratch.split_at_mut(g.ckk() * hwp);
            im2col(g, x_n, cols, hwp);
            gemm_forward(g, kernel, cols, out, par);
            let mut slots = sums.map(|s| s.iter_mut());
            for ((y_o, out_o), &b) in y_n
                .chunks_exact_mut(hw)
                .zip(out.chunks_exact(hwp))
                .zip(bias)
            {
                for (y, &v) in y_o.iter_mut().zip(out_o) {
                    y.write(if relu { T::relu(v + b) } else { v + b });
                }
                // SAFETY: the loop above wrote the whole plane.
                unsafe { take_sums(&mut slots, y_o) };
            }
        });
    };
    // SAFETY: `write` writes every plane of its image and, with `moments`,
    // takes every plane's sums.
    unsafe { write_forward(g, e, 1, x, write) }
}

/// Every gradient of the convolution in one pass over the batch, so that each
/// image's `dy` comes from memory once and is then used from cache. Per
/// image: `dy` masked by the ReLU's output `y` (when fused), the bias sums,
/// `dKᵀ += (dy · cols(x)ᵀ)ᵀ`, and `dx = col2im(Kᵀ · dy)`. Each run of images
/// sums `dK` and `db` on its own; the runs are then added in order.
///
/// Returns `[dx, dK, db]` flat: `dx` `[N, C, H, W]` (empty when not wanted),
/// `dK` `[O, C, kh, kw]`, `db` `[O]`.
pub(super) fn im2col_backward<T: Float>(
    g: &Geom,
    x: &[T],
    kernel: &[T],
    y: Option<&[T]>,
    dy: &[T],
    want: Wanted,
) -> Vec<T> {
    let (hw, ckk, [dx_len, dk_len, db_len]) = (g.hw_out(), g.ckk(), g.grad_lens(want));
    let per_run = g.n.div_ceil(BACKWARD_RUNS).max(1);
    let runs = g.n.div_ceil(per_run);
    let par = gemm_parallelism(runs);
    let mut out = Vec::with_capacity(dx_len + dk_len + db_len);
    let mut dx_runs = data_chunks(&mut out, dx_len, per_run * g.x_image(), runs);
    let partials: Vec<(Vec<T>, Vec<f64>)> = dx_runs
        .par_iter_mut()
        .enumerate()
        .map(|(r, dx_run)| {
            // Zeroed here, by the thread that fills it, rather than all at
            // once on one thread beforehand.
            let mut dx_run = dx_run.as_deref_mut().map(zeroed);
            let mut dk_t = vec![T::zero(); if want.dk { dk_len } else { 0 }];
            let mut db = vec![0f64; g.o];
            T::with_scratch(ckk * hw + g.y_image(), |scratch| {
                let (cols, masked) = scratch.split_at_mut(ckk * hw);
                for (j, i) in (r * per_run..((r + 1) * per_run).min(g.n)).enumerate() {
                    let dy_n = image_grad(g, i, dy, y, masked, want.db.then_some(&mut db[..]));
                    if want.dk {
                        im2col(g, &x[i * g.x_image()..(i + 1) * g.x_image()], cols, hw);
                        kernel_grad_dots(g.o, ckk, hw, dy_n, cols, &mut dk_t);
                    }
                    if let Some(dx_run) = dx_run.as_deref_mut() {
                        gemm_grad_cols(g, kernel, dy_n, cols, par);
                        col2im(g, cols, &mut dx_run[j * g.x_image()..(j + 1) * g.x_image()]);
                    }
                }
            });
            (dk_t, db)
        })
        .collect();
    drop(dx_runs);
    // SAFETY: the runs' chunks cover `dx` exactly, and each was zeroed and
    // then accumulated into above.
    unsafe { out.set_len(dx_len) };

    let (dk_t, db) = sum_runs(&partials, dk_len, g.o);
    // dKᵀ [CKK, O] -> dK [O, CKK]
    out.extend((0..dk_len).map(|i| dk_t[(i % ckk) * g.o + i / ckk]));
    out.extend(db.into_iter().map(T::from_f64));
    out
}
