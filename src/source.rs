//! Where a diffusers-format model folder's files come from: a local directory natively, a map
//! of byte buffers in the browser (files picked by the user or read back from IndexedDB). Which
//! files a component reads is [`crate::folder`]'s business.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{DType, Device};

use crate::error::{Error, Result};
use crate::folder;
use crate::weights::{SafetensorsFile, Weights};

/// Read access to the files of a model folder, by `/`-separated relative path.
pub trait ModelSource {
    fn read(&self, path: &str) -> Result<Arc<[u8]>>;
    fn exists(&self, path: &str) -> bool;
    /// How to name the whole source in messages.
    fn describe(&self) -> String;

    /// Bytes `[start, start + len)` of a file (clamped to its end). Sources that can seek
    /// override this so that a header can be read without reading the whole file.
    fn read_range(&self, path: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        let all = self.read(path)?;
        let start = (start as usize).min(all.len());
        let end = start.saturating_add(len as usize).min(all.len());
        Ok(all[start..end].to_vec())
    }

    /// Size of a file in bytes.
    fn size(&self, path: &str) -> Result<u64> {
        Ok(self.read(path)?.len() as u64)
    }

    /// Sizes of `paths` (`None`: absent), asked together so that a source answering over the
    /// network can fetch them in one round ([`crate::folder`]).
    fn probe(&self, paths: &[String]) -> Result<Vec<Option<u64>>> {
        Ok(paths.iter().map(|p| if self.exists(p) { self.size(p).ok() } else { None }).collect())
    }

    /// The weights of `component`, created in `dtype` (the file is chosen for it: the `.fp16`
    /// variant first for F16). By default its safetensors files are read and parsed here; the
    /// browser overrides this to hand over tensors it already streamed to the GPU.
    fn weights(&self, component: &str, device: &Device, dtype: DType) -> Result<Weights> {
        load_weights_in(self, component, device, dtype)
    }

    /// The weights of one named file (an original-layout `taesd_decoder.safetensors`, whose
    /// keys must not mix with a sibling encoder file's), in `dtype`. The browser overrides this too.
    fn weights_file(&self, path: &str, device: &Device, dtype: DType) -> Result<Weights> {
        Ok(Weights::new(vec![SafetensorsFile::from_bytes(path, self.read(path)?)?], device)?.with_dtype(dtype))
    }
}

/// A model folder on disk.
pub struct DirSource {
    pub root: PathBuf,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::MissingFile {
                path: root.display().to_string(),
                hint: Some("expected a diffusers-format model folder".into()),
            });
        }
        Ok(Self { root })
    }

    /// The files of a sub-folder (names only, sorted). The folder rules never list (a URL
    /// cannot be listed, so they probe named candidates); tests and tools do.
    pub fn list(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl ModelSource for DirSource {
    fn read(&self, path: &str) -> Result<Arc<[u8]>> {
        let full = self.root.join(path);
        std::fs::read(&full).map(Arc::from).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingFile { path: full.display().to_string(), hint: None },
            _ => Error::io(&full, e),
        })
    }

    fn exists(&self, path: &str) -> bool {
        self.root.join(path).is_file()
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn read_range(&self, path: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let full = self.root.join(path);
        let mut f = std::fs::File::open(&full).map_err(|e| Error::io(&full, e))?;
        f.seek(SeekFrom::Start(start)).map_err(|e| Error::io(&full, e))?;
        let mut out = Vec::new();
        f.take(len).read_to_end(&mut out).map_err(|e| Error::io(&full, e))?;
        Ok(out)
    }

    fn size(&self, path: &str) -> Result<u64> {
        let full = self.root.join(path);
        std::fs::metadata(&full).map(|m| m.len()).map_err(|e| Error::io(&full, e))
    }
}

/// A model folder held in memory, keyed by relative path.
#[derive(Default, Clone)]
pub struct MemorySource {
    pub name: String,
    pub files: BTreeMap<String, Arc<[u8]>>,
}

impl MemorySource {
    /// The files of a sub-folder (names only).
    pub fn list(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        self.files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(String::from)
            .collect()
    }
}

/// `path` inside the folder or URL `folder` as errors name it (a URL folder ends in `/`).
pub fn in_folder(folder: &str, path: &str) -> String {
    format!("{}/{path}", folder.trim_end_matches('/'))
}

impl ModelSource for MemorySource {
    fn read(&self, path: &str) -> Result<Arc<[u8]>> {
        self.files.get(path).cloned().ok_or_else(|| Error::MissingFile {
            path: in_folder(&self.name, path),
            hint: None,
        })
    }

    fn exists(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Reads and validates only the header of a safetensors file.
pub fn read_header(src: &dyn ModelSource, path: &str) -> Result<crate::weights::Header> {
    let size = src.size(path)?;
    let first = src.read_range(path, 0, 8)?;
    let needed = crate::weights::Header::needed_len(&first)
        .unwrap_or(8)
        .min(crate::weights::MAX_HEADER_LEN + 8)
        .min(size);
    let prefix = src.read_range(path, 0, needed)?;
    crate::weights::Header::parse(path, &prefix, size)
}

/// Reads and validates every weight file of `component` into one [`Weights`] in f32 (the
/// full-precision variant preferred).
pub fn load_weights(src: &dyn ModelSource, component: &str, device: &Device) -> Result<Weights> {
    load_weights_in(src, component, device, DType::F32)
}

/// [`load_weights`] for a load in `dtype`: the file is chosen by [`folder::weight_files`] (the
/// `.fp16` variant first for F16) and its tensors are created in `dtype`.
pub fn load_weights_in<S: ModelSource + ?Sized>(src: &S, component: &str, device: &Device, dtype: DType) -> Result<Weights> {
    let files = folder::weight_files(src, component, dtype)?
        .into_iter()
        .map(|path| SafetensorsFile::from_bytes(path.clone(), src.read(&path)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Weights::new(files, device)?.with_dtype(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker names a URL model by its folder URL, which ends in `/`.
    #[test]
    fn a_missing_file_is_named_with_one_slash() {
        let src = MemorySource { name: "https://host/models/m/".into(), files: BTreeMap::new() };
        let err = src.read("model_index.json").unwrap_err().to_string();
        assert_eq!(err, "https://host/models/m/model_index.json: not found");
        assert_eq!(in_folder("/models/m", "unet/config.json"), "/models/m/unet/config.json");
    }
}
