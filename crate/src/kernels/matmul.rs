//! Row-major matrix products on all threads (gemm), for the dense layers.

use gemm::Parallelism;

/// A row-major matrix `[rows, cols]`, or (after [`Mat::t`]) the transpose of one.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> Mat<'a> {
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data of the wrong size");
        Mat {
            data,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }
    pub(crate) fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `a · b`, row-major, on all threads.
#[rustfmt::skip]
pub(crate) fn matmul(a: Mat, b: Mat) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "matrix sizes do not fit");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if k == 0 {
        return vec![0.0; m * n];
    }
    // Not zeroed first: gemm writes every element (it does not read `dst`).
    let mut dst = Vec::with_capacity(m * n);
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: `Mat::new` checked that each operand's data holds its rows
    // and columns at these strides; `dst` has room for [m, n] row-major,
    // all of which gemm writes (k > 0, and it is told not to read `dst`).
    unsafe {
        gemm::gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize, false,
            a.data.as_ptr(), a.col_stride, a.row_stride,
            b.data.as_ptr(), b.col_stride, b.row_stride,
            0.0, 1.0, false, false, false, par,
        );
        dst.set_len(m * n);
    }
    dst
}

/// Sums of each column of `m` `[rows, cols]`.
pub(crate) fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let mut sums = vec![0f64; cols];
    for row in m.chunks_exact(cols) {
        sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
    }
    sums.into_iter().map(|s| s as f32).collect()
}
