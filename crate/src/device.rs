//! Where the model runs: CUDA when this build has it and a GPU is there,
//! otherwise the CPU; `DEVICE=cpu` or `DEVICE=cuda` forces the choice.

use anyhow::{bail, Result};
pub use candle_core::Device;

/// The device to train on, chosen as the module doc says.
pub fn pick_device() -> Result<Device> {
    match std::env::var("DEVICE").ok().as_deref().map(str::trim) {
        None | Some("") | Some("auto") => Ok(auto()),
        Some("cpu") => Ok(Device::Cpu),
        Some("cuda") => cuda(),
        Some(other) => bail!("DEVICE={other:?} is not a device: use cpu, cuda or auto"),
    }
}

fn auto() -> Device {
    if candle_core::utils::cuda_is_available() {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}

fn cuda() -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        bail!("DEVICE=cuda, but this build has no CUDA support: rebuild with `--features cuda`");
    }
    Device::new_cuda(0)
        .map_err(|e| anyhow::anyhow!("DEVICE=cuda, but no CUDA GPU could be opened: {e}"))
}

/// A short description for logs: `cpu (2 threads)` or `cuda:0`.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => "cuda:0".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

/// The set-up cell's last line: the crate's version, how it was built and
/// the device the cells will use, e.g. `cifar10-cnn 0.1.0 (optimized),
/// device: cpu (2 threads), AVX-512`.
pub fn about() -> Result<String> {
    let build = if cfg!(debug_assertions) {
        "debug build: about 3x slower, use :opt 3"
    } else {
        "optimized"
    };
    let device = pick_device()?;
    let simd = if device.is_cpu() { simd() } else { "" };
    Ok(format!(
        "cifar10-cnn {} ({build}), device: {}{simd}",
        env!("CARGO_PKG_VERSION"),
        describe(&device),
    ))
}

/// The machine, for the records of runs and benchmarks: `lscpu`'s model
/// name, the threads the kernels use and the widest vector instructions,
/// e.g. `AMD EPYC, 2 threads, AVX-512`.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!(
        "{model}, {} threads{}",
        candle_core::utils::get_num_threads(),
        simd()
    )
}

/// The widest vector instructions the CPU kernels will use here.
fn simd() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return ", AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return ", AVX2";
        }
    }
    ""
}
