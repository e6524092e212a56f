//! How fast can the article's training step be when the convolutions do
//! their full multiply count, as `kernels::conv`'s im2col path (im2col + one
//! gemm per image) does? Times gemm alone on the exact products one step
//! would make that way, with the same shapes and strides, each on one thread
//! (as in training, where the images are spread over the threads), and
//! divides the sum by the thread count. Everything else in the step (im2col,
//! col2im, pooling, dropout, Adam, candle's autograd) comes on top of this
//! floor. (This floor, above the ≤ 90 ms target, is why layers 2–4 now take
//! the Winograd path, which does 2.25x fewer multiplies; see BENCHMARKS.md.)
//!
//!     cargo run --release -p cifar10-cnn --example conv_gemm_floor
//!
//! Prints a line per product and then one JSON line.

use gemm::Parallelism;
use std::time::Instant;

/// One convolution of the article's model: input channels, output channels,
/// input side, padding (3x3 kernels, stride 1).
struct Conv {
    name: &'static str,
    c: usize,
    o: usize,
    side: usize,
    pad: usize,
    input_grad: bool,
}

const BATCH: usize = 128;

#[rustfmt::skip]
const CONVS: [Conv; 4] = [
    Conv { name: "conv1", c: 3, o: 32, side: 32, pad: 1, input_grad: false },
    Conv { name: "conv2", c: 32, o: 32, side: 32, pad: 0, input_grad: true },
    Conv { name: "conv3", c: 32, o: 64, side: 15, pad: 1, input_grad: true },
    Conv { name: "conv4", c: 64, o: 64, side: 15, pad: 0, input_grad: true },
];

/// One gemm call `dst [m, n] = lhs [m, k] · rhs [k, n]`, strides as
/// (column stride, row stride) in gemm's argument order.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    dst: (isize, isize),
    lhs: (isize, isize),
    rhs: (isize, isize),
}

impl Product {
    fn flop(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }

    /// Seconds per call, the best of several rounds of `calls` calls.
    #[rustfmt::skip]
    fn seconds(&self, calls: usize) -> f64 {
        let lhs = vec![0.5f32; self.m * self.k];
        let rhs = vec![0.5f32; self.k * self.n];
        let mut dst = vec![0f32; self.m * self.n];
        (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..calls {
                    // SAFETY: every buffer holds m·k, k·n or m·n values, and
                    // the strides describe a dense row- or column-major matrix.
                    unsafe {
                        gemm::gemm(
                            self.m, self.n, self.k,
                            dst.as_mut_ptr(), self.dst.0, self.dst.1, true,
                            lhs.as_ptr(), self.lhs.0, self.lhs.1,
                            rhs.as_ptr(), self.rhs.0, self.rhs.1,
                            1.0, 1.0, false, false, false, Parallelism::None,
                        )
                    }
                }
                start.elapsed().as_secs_f64() / calls as f64
            })
            .fold(f64::INFINITY, f64::min)
    }
}

/// The three products `kernels::conv`'s im2col path makes per image (see its
/// gemm_* functions).
#[rustfmt::skip]
fn products(conv: &Conv) -> Vec<(&'static str, Product)> {
    let out = conv.side + 2 * conv.pad - 2;
    let (hw, ckk, o) = (out * out, conv.c * 9, conv.o);
    let hwp = hw.next_multiple_of(16);
    let (hw_i, hwp_i, ckk_i, o_i) = (hw as isize, hwp as isize, ckk as isize, o as isize);
    let mut list = vec![
        // yᵀ [HWp, O] = colsᵀ [HWp, CKK] · Kᵀ [CKK, O]
        ("forward", Product { m: hwp, n: o, k: ckk, dst: (hwp_i, 1), lhs: (hwp_i, 1), rhs: (ckk_i, 1) }),
        // dKᵀ [CKK, O] += (dy [O, HW] · colsᵀ [HW, CKK])ᵀ
        ("kernel grad", Product { m: o, n: ckk, k: hw, dst: (o_i, 1), lhs: (1, hw_i), rhs: (hw_i, 1) }),
    ];
    if conv.input_grad {
        // dcols [CKK, HW] = Kᵀ [CKK, O] · dy [O, HW]
        list.push(("input grad", Product { m: ckk, n: hw, k: o, dst: (1, hw_i), lhs: (ckk_i, 1), rhs: (1, hw_i) }));
    }
    list
}

fn main() {
    let threads = rayon::current_num_threads();
    let square = Product {
        m: 512,
        n: 512,
        k: 512,
        dst: (512, 1),
        lhs: (512, 1),
        rhs: (512, 1),
    };
    let peak = square.flop() / square.seconds(20) / 1e9;
    println!("one core, 512x512x512 gemm: {peak:.0} GFLOP/s");

    let (mut seconds, mut flop) = (0.0, 0.0);
    for conv in &CONVS {
        for (what, p) in products(conv) {
            let s = p.seconds(BATCH);
            seconds += s * BATCH as f64;
            flop += p.flop() * BATCH as f64;
            println!(
                "{} {what:12} m {:5} n {:4} k {:4}: {:5.0} GFLOP/s, {:5.1} ms per batch on one core",
                conv.name, p.m, p.n, p.k, p.flop() / s / 1e9, s * BATCH as f64 * 1e3
            );
        }
    }
    let floor_ms = seconds / threads as f64 * 1e3;
    println!(
        "{{\"threads\": {threads}, \"core_peak_gflops\": {peak:.0}, \"conv_gflop_per_step\": {:.1}, \"conv_gemm_ms_per_step\": {floor_ms:.1}}}",
        flop / 1e9
    );
}
