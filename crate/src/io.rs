//! Bytes on disk, for every module that writes or reads files: atomic
//! writes, and safetensors reading and writing with sizes checked. A leaf:
//! it uses nothing of this crate.

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` so that readers see the old file or the new
/// one, never half of one: the bytes go to a temporary file beside it,
/// reach the disk, and then take its name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_string_lossy();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    remove_stale_temporaries(&dir, &name);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Removes the temporary files that writes of `name` in `dir` left when
/// their process was killed (`.{name}.{pid}.{n}.tmp` of a process that is
/// gone; on Linux, where /proc says which are alive). A live process's
/// temporaries may be a write in flight and stay.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.strip_suffix(".tmp").and_then(|r| r.split('.').next()) else {
            continue;
        };
        let gone = pid
            .parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A tensor read from a safetensors file: its shape and f32 values.
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Serializes f32 tensors to safetensors bytes, in the order given.
pub fn safetensors_bytes(tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    safetensors_bytes_with(tensors, None)
}

/// Like [`safetensors_bytes`], with string metadata in the header.
pub fn safetensors_bytes_with(
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            Ok((
                t.name.clone(),
                TensorView::new(Dtype::F32, t.shape.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}

/// Reads the f32 tensors `expected` (name, shape) from a safetensors file,
/// checking that each is present with that shape and dtype. The file's own
/// header is only trusted after safetensors has checked it against the
/// file's length, so a lying header cannot make us allocate without bound.
pub fn read_safetensors(
    path: &Path,
    expected: &[(String, Vec<usize>)],
) -> Result<Vec<NamedTensor>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read weights {}", path.display()))?;
    parse_safetensors(&bytes, expected, path)
}

/// [`read_safetensors`] of bytes already read from `path` (named in errors).
pub fn parse_safetensors(
    bytes: &[u8],
    expected: &[(String, Vec<usize>)],
    path: &Path,
) -> Result<Vec<NamedTensor>> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a safetensors file: {e}", path.display()))?;
    let mut out = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        let view = file.tensor(name).map_err(|_| {
            anyhow::anyhow!(
                "{} has no tensor {name:?}: the weights do not belong to this architecture",
                path.display()
            )
        })?;
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "{}: tensor {name:?} is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        ensure!(
            view.shape() == shape.as_slice(),
            "{}: tensor {name:?} has shape {:?}, the architecture needs {:?}",
            path.display(),
            view.shape(),
            shape
        );
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(NamedTensor {
            name: name.clone(),
            shape: shape.clone(),
            data,
        });
    }
    let extra: Vec<String> = file
        .names()
        .into_iter()
        .filter(|n| !expected.iter().any(|(e, _)| e == *n))
        .map(String::from)
        .collect();
    ensure!(
        extra.is_empty(),
        "{} holds tensors the architecture does not have: {extra:?}",
        path.display()
    );
    Ok(out)
}

/// The string metadata of a safetensors file's header (empty when it has
/// none), read without loading its tensors.
pub fn read_safetensors_metadata(path: &Path, what: &str) -> Result<HashMap<String, String>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    parse_safetensors_metadata(&bytes, what, path)
}

/// [`read_safetensors_metadata`] of bytes already read from `path`.
pub fn parse_safetensors_metadata(
    bytes: &[u8],
    what: &str,
    path: &Path,
) -> Result<HashMap<String, String>> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a {what}: {e}", path.display()))?;
    Ok(header.metadata().clone().unwrap_or_default())
}
