//! The direct forward: stride-1 convolutions that the Winograd path does not
//! take (the first layer's 3 input channels), in f32 on CPUs with AVX2 or
//! AVX-512. The backward stays on im2col.
//!
//! im2col copies each image nine times over (`[C·kh·kw, Ho·Wo]`, 27 rows for
//! the first layer) and gemm packs the copy again, then runs at depth 27,
//! about half its peak. Here the image is zero-padded once into planes
//! `[C, Hp, Wp]`, and every output pixel `(oh, ow)` is numbered `oh·Wp + ow`
//! on that padded grid: kernel tap `(c, i, j)` then reads the plane at a
//! fixed offset `c·Hp·Wp + i·Wp + j` from it, for all pixels at once. The
//! products ([`Products`]) take each tap's shifted view of the planes as one
//! row of `V`, straight from memory. The price is `kw − 1` extra columns per
//! output row (the pixels past `Wo`), computed and dropped: 6% for the
//! first layer's 32 + 2.

use super::geom::{take_sums, write_forward, Epilogue, Forward, Geom, OutChunk};
use super::products::Isa;
#[cfg(target_arch = "x86_64")]
use super::products::{Products, Table};
use crate::kernels::simd::Float;

/// The ISA the direct forward runs in for `g`, if it takes it: f32, stride
/// 1, not a Winograd convolution, and an output of at least one register's
/// lanes of pixels.
pub(super) fn pick<T: Float>(g: &Geom) -> Option<Isa> {
    let stride_1 = (g.sh, g.sw) == (1, 1);
    let wide = g.ho * (g.wo + g.kw - 1);
    Isa::pick::<T>(wide).filter(|_| stride_1 && !g.winograd())
}

/// The forward of one batch, as `im2col_forward` computes it: `y [N, O, Ho,
/// Wo]`, the bias added, through the ReLU when `e.relu`, the planes' sums
/// when `e.moments` (no pooling here).
pub(super) fn forward<T: Float>(
    isa: Isa,
    g: &Geom,
    x: &[T],
    kernel: &[T],
    bias: &[T],
    e: Epilogue,
) -> Forward<T> {
    let relu = e.relu;
    assert!(!e.pool, "the direct path does not pool");
    assert!(isa.present(), "this CPU has no {isa:?}");
    assert_eq!(
        T::DTYPE,
        candle_core::DType::F32,
        "the products in registers are f32"
    );
    assert!((g.sh, g.sw) == (1, 1), "the direct path is for stride 1");
    let (hp, wp) = (g.ho + g.kh - 1, g.wo + g.kw - 1);
    let (plane, wide, ckk) = (hp * wp, g.ho * wp, g.ckk());
    // The last tap's view runs `kw − 1` entries past the last plane.
    let padded_len = g.c * plane + g.kw - 1;
    // Tap (c, i, j): row c·kh·kw + i·kw + j of the kernel's [O, C, kh, kw].
    let offsets: Vec<usize> = (0..ckk)
        .map(|s| (s / g.kk()) * plane + (s / g.kw % g.kh) * wp + s % g.kw)
        .collect();
    // U [CKK, O]: one tap's weights of every output channel side by side.
    let mut u = vec![0f32; ckk * g.o];
    for (o, row) in kernel.chunks_exact(ckk).enumerate() {
        for (s, &k) in row.iter().enumerate() {
            u[s * g.o + o] = k.to_f64() as f32;
        }
    }
    let write = |x_n: &[T], out: OutChunk<'_, T>| {
        let (y_n, sums) = (out.y, out.sums);
        T::with_scratch(padded_len + g.o * wide, |scratch| {
            let (padded, out) = scratch.split_at_mut(padded_len);
            pad(g, x_n, wp, padded);
            // SAFETY (both casts): T is f32 (asserted).
            let (padded_f32, out_f32) = unsafe {
                (
                    std::slice::from_raw_parts(padded.as_ptr().cast::<f32>(), padded.len()),
                    std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len()),
                )
            };
            products(isa, wide, g.o, padded_f32, &offsets, &u, out_f32);
            let mut slots = sums.map(|s| s.iter_mut());
            for ((y_o, out_o), &b) in y_n
                .chunks_exact_mut(g.hw_out())
                .zip(out.chunks_exact(wide))
                .zip(bias)
            {
                for (y_row, out_row) in y_o.chunks_exact_mut(g.wo).zip(out_o.chunks_exact(wp)) {
                    for (y, &v) in y_row.iter_mut().zip(out_row) {
                        let v = v + b;
                        y.write(if relu { T::relu(v) } else { v });
                    }
                }
                // SAFETY: the rows above wrote the whole plane.
                unsafe { take_sums(&mut slots, y_o) };
            }
        });
    };
    // SAFETY: `write` writes every plane of its image and, with `moments`,
    // takes every plane's sums.
    unsafe { write_forward(g, e, 1, x, write) }
}

/// `x_n [C, H, W]` into `padded [C, Hp, Wp]` at offset `(pt, pl)`, zeros
/// around it and in the slack past the last plane.
fn pad<T: Float>(g: &Geom, x_n: &[T], wp: usize, padded: &mut [T]) {
    padded.fill(T::zero());
    let plane = (g.ho + g.kh - 1) * wp;
    for (c, x_c) in x_n.chunks_exact(g.h * g.w).enumerate() {
        for (ih, row) in x_c.chunks_exact(g.w).enumerate() {
            let at = c * plane + (g.pt + ih) * wp + g.pl;
            padded[at..at + g.w].copy_from_slice(row);
        }
    }
}

/// `out [O, wide] = Σ_s U [s, O] ⊗ padded[offsets[s]..][..wide]` in `isa`'s
/// registers.
fn products(
    isa: Isa,
    wide: usize,
    o: usize,
    padded: &[f32],
    offsets: &[usize],
    u: &[f32],
    out: &mut [f32],
) {
    let taps = offsets.len();
    // Every view stays inside `padded`; `wide` covers one register at least.
    assert!(offsets.iter().all(|&at| at + wide <= padded.len()));
    assert!(wide >= isa.lanes() && u.len() == taps * o && out.len() >= o * wide);
    #[cfg(target_arch = "x86_64")]
    {
        let job = Products {
            n: wide,
            c: taps,
            o,
            src: padded.as_ptr(),
            rows: Table(offsets),
            taps: [0],
            u: u.as_ptr(),
            m: out.as_mut_ptr(),
        };
        // SAFETY: every view and `U`, `out` are as long as the job reads
        // and writes (asserted).
        unsafe { isa.run(job) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no {isa:?} on this architecture")
}

#[cfg(test)]
mod tests {
    use super::super::geom::assert_sums_of_planes;
    use super::super::im2col::im2col_forward;
    use super::*;
    use crate::kernels::conv::ConvWindow;

    /// The direct forward gives im2col's values bit for bit on every ISA
    /// the CPU has: the first layer's shape, other kernel sizes, padding
    /// on some sides only, channel counts that leave partial blocks of
    /// outputs, and widths whose padded rows are not whole registers.
    #[test]
    fn direct_matches_im2col() {
        let mut next = crate::kernels::test_values(3);
        let same = |p| ConvWindow::from(p);
        let sides = |t, b, l, r| ConvWindow {
            strides: (1, 1),
            pad_h: (t, b),
            pad_w: (l, r),
        };
        // (images, in, out, height, width, kernel, window)
        let cases = [
            (3, 3, 32, 32, 32, (3, 3), same(1)),
            (2, 3, 19, 13, 11, (3, 3), same(0)),
            (2, 5, 7, 9, 14, (5, 3), sides(2, 0, 1, 3)),
            (1, 2, 40, 8, 8, (1, 1), same(0)),
        ];
        let isas: Vec<Isa> = Isa::available().collect();
        if isas.is_empty() {
            eprintln!("no AVX2 or AVX-512 here: only im2col runs");
        }
        for (n, c, o, h, w, (kh, kw), win) in cases {
            let g = Geom::new(&[n, c, h, w], &[o, c, kh, kw], &[o], win).unwrap();
            let x: Vec<f32> = (0..g.n * g.x_image()).map(|_| next()).collect();
            let kernel: Vec<f32> = (0..o * g.ckk()).map(|_| next()).collect();
            let bias: Vec<f32> = (0..o).map(|_| next()).collect();
            for relu in [false, true] {
                let e = Epilogue {
                    relu,
                    pool: false,
                    moments: true,
                };
                let want = im2col_forward(&g, &x, &kernel, &bias, e);
                assert_sums_of_planes(&want, g.hw_out(), "im2col");
                let want = want.y;
                for &isa in &isas {
                    let got = forward(isa, &g, &x, &kernel, &bias, e);
                    let case =
                        format!("{isa:?}, {n}×{c}→{o}, {h}×{w}, {kh}×{kw}, {win:?}, relu {relu}");
                    assert_sums_of_planes(&got, g.hw_out(), &case);
                    let got = got.y;
                    assert_eq!(got.len(), want.len(), "{case}");
                    let same = |a: f32, b: f32| match g.ckk() >= 9 {
                        true => a.to_bits() == b.to_bits(),
                        false => (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    };
                    let differ = got.iter().zip(&want).position(|(&a, &b)| !same(a, b));
                    if let Some(k) = differ {
                        panic!("{case}: value {k} is {}, want {}", got[k], want[k]);
                    }
                }
            }
        }
    }
}
