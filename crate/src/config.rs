//! The article's settings, which environment variables can override so that
//! tests and quick looks can run the same notebook small.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// What a notebook run trains on and for how long.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `EPOCHS`, default 25 as in the article.
    pub epochs: usize,
    /// `BATCH_SIZE`, default 128.
    pub batch_size: usize,
    /// `TRAIN_SIZE`: train on the first N training images (default all 50,000).
    pub train_size: usize,
    /// `SEED`: initial weights, dropout, shuffling and the gallery's picks.
    pub seed: u64,
    /// `RESULTS_DIR`: where the model, history and pictures are saved.
    pub results_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            epochs: 25,
            batch_size: 128,
            train_size: 50_000,
            seed: 0,
            results_dir: PathBuf::from("results"),
        }
    }
}

impl Settings {
    /// The defaults, with `EPOCHS`, `BATCH_SIZE`, `TRAIN_SIZE`, `SEED` and
    /// `RESULTS_DIR` taken from the environment when set.
    pub fn from_env() -> Result<Self> {
        let d = Self::default();
        let settings = Self {
            epochs: var("EPOCHS")?.unwrap_or(d.epochs),
            batch_size: var("BATCH_SIZE")?.unwrap_or(d.batch_size),
            train_size: var("TRAIN_SIZE")?.unwrap_or(d.train_size),
            seed: var("SEED")?.unwrap_or(d.seed),
            results_dir: std::env::var_os("RESULTS_DIR")
                .filter(|v| !v.is_empty())
                .map_or(d.results_dir, PathBuf::from),
        };
        settings.check()?;
        Ok(settings)
    }

    /// Refuses settings that cannot run, before anything trains.
    pub fn check(&self) -> Result<()> {
        for (name, value) in [
            ("EPOCHS", self.epochs),
            ("BATCH_SIZE", self.batch_size),
            ("TRAIN_SIZE", self.train_size),
        ] {
            anyhow::ensure!(value > 0, "{name}=0: it must be at least 1");
        }
        anyhow::ensure!(
            !self.results_dir.is_file(),
            "RESULTS_DIR={} is a file: it must be a folder (it is created if missing)",
            self.results_dir.display()
        );
        Ok(())
    }
}

fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{name}={v:?} is not a valid number")),
        _ => Ok(None),
    }
}

/// How much memory a model, a batch or a load may take: `MEMORY_LIMIT`
/// (bytes, or with a `K`, `M`, `G` suffix: `MEMORY_LIMIT=40G`), else the
/// machine's physical memory, else 16 GiB. Sizes past it are refused
/// before anything is allocated, with what they would need.
pub fn memory_limit() -> Result<u64> {
    if let Ok(v) = std::env::var("MEMORY_LIMIT") {
        let v = v.trim();
        if !v.is_empty() {
            let (digits, unit) = match v.char_indices().last() {
                Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c.to_ascii_uppercase()),
                _ => (v, 'B'),
            };
            let scale: u64 = match unit {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => anyhow::bail!("MEMORY_LIMIT={v:?}: use bytes or a K, M, G or T suffix"),
            };
            let n: f64 = digits
                .trim()
                .parse()
                .with_context(|| format!("MEMORY_LIMIT={v:?} is not a size (e.g. 40G)"))?;
            return Ok((n * scale as f64) as u64);
        }
    }
    Ok(physical_memory().unwrap_or(16 << 30))
}

/// `MemTotal` of /proc/meminfo, in bytes (Linux).
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `bytes` in GiB for messages: "32.0 GiB".
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}
