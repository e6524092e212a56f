//! The crate's own CPU compute, on plain buffers and as candle custom ops
//! where candle's are wrong or slow, with portable fallbacks for other
//! devices. Used by the layers; uses nothing of the crate above it.

pub(crate) mod conv;
pub(crate) mod dropout;
pub(crate) mod matmul;
pub(crate) mod max_pool;
pub mod moments;
pub(crate) mod optim;
pub(crate) mod simd;

pub use conv::{conv2d, conv2d_reference, conv2d_relu, conv2d_relu_max_pool2, ConvWindow};
pub use dropout::dropout;
pub use max_pool::{max_pool2d, max_pool2d_portable};

/// Asks glibc's allocator to keep freed memory instead of handing every large
/// block back to the kernel. Training allocates and frees tensors of many MiB
/// each step; by default each is a fresh mmap whose pages fault in again,
/// which cost about a fifth of a CPU training step. Called once, when the
/// first model is built.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes glibc's allocator thresholds; it is
        // called once, before this crate allocates its large buffers.
        ONCE.call_once(|| unsafe {
            // M_MMAP_THRESHOLD = -3 (32 MiB is the most glibc accepts; larger
            // values are refused), M_TRIM_THRESHOLD = -1, M_TOP_PAD = -2
            libc::mallopt(-3, 32 << 20);
            libc::mallopt(-1, i32::MAX);
            libc::mallopt(-2, 256 << 20);
        });
    }
}

/// Values in [-0.5, 0.5) from a linear congruential generator: the same
/// sequence for a seed on every machine, for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(mut seed: u32) -> impl FnMut() -> f32 {
    move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
    }
}
