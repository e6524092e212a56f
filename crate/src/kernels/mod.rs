//! The crate's own compute kernels, as candle custom ops where candle's are
//! wrong or slow on the CPU, with portable fallbacks for other devices.

mod max_pool;

pub use max_pool::{max_pool2d, max_pool2d_portable};
