//! Where a diffusers-format model folder's files come from: a local directory natively, a map
//! of byte buffers in the browser (files picked by the user or read back from IndexedDB), and
//! how a component's weight files are found in it (single file, `.fp16` variant, or shards
//! listed by an `*.index.json`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{DType, Device};

use crate::error::{Error, Result};
use crate::weights::{SafetensorsFile, Weights};

/// Read access to the files of a model folder, by `/`-separated relative path.
pub trait ModelSource {
    fn read(&self, path: &str) -> Result<Arc<[u8]>>;
    fn exists(&self, path: &str) -> bool;
    /// Entries of a sub-folder (file names only), for finding weight files.
    fn list(&self, dir: &str) -> Vec<String>;
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

    /// The weights of `component`. By default its safetensors files are read and parsed here;
    /// the browser overrides this to hand over tensors it already streamed to the GPU.
    fn weights(&self, component: &str, device: &Device) -> Result<Weights> {
        load_weights(self, component, device)
    }

    /// The weights of one named file (an original-layout `taesd_decoder.safetensors`, whose
    /// keys must not mix with a sibling encoder file's). The browser overrides this too.
    fn weights_file(&self, path: &str, device: &Device) -> Result<Weights> {
        Weights::new(vec![SafetensorsFile::from_bytes(path, self.read(path)?)?], device)
    }
}

/// `inner` with its components' weights created in `dtype` (F16 for half-precision GPUs):
/// stored tensors are converted once, at load, straight from their stored type.
pub struct WithDtype<'a> {
    pub inner: &'a dyn ModelSource,
    pub dtype: DType,
}

impl ModelSource for WithDtype<'_> {
    fn read(&self, path: &str) -> Result<Arc<[u8]>> {
        self.inner.read(path)
    }

    fn exists(&self, path: &str) -> bool {
        self.inner.exists(path)
    }

    fn list(&self, dir: &str) -> Vec<String> {
        self.inner.list(dir)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn read_range(&self, path: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.read_range(path, start, len)
    }

    fn size(&self, path: &str) -> Result<u64> {
        self.inner.size(path)
    }

    fn weights(&self, component: &str, device: &Device) -> Result<Weights> {
        Ok(self.inner.weights(component, device)?.with_dtype(self.dtype))
    }

    fn weights_file(&self, path: &str, device: &Device) -> Result<Weights> {
        Ok(self.inner.weights_file(path, device)?.with_dtype(self.dtype))
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

    fn list(&self, dir: &str) -> Vec<String> {
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

impl ModelSource for MemorySource {
    fn read(&self, path: &str) -> Result<Arc<[u8]>> {
        self.files.get(path).cloned().ok_or_else(|| Error::MissingFile {
            path: format!("{}/{path}", self.name),
            hint: None,
        })
    }

    fn exists(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    fn list(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        self.files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(String::from)
            .collect()
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Weight file stems in order of preference: diffusers, then transformers naming.
const STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];

/// Which files hold a component's weights: full-precision names first, then the `.fp16`
/// variant, each as a single file or as shards listed by `<name>.safetensors.index.json`.
pub fn weight_files<S: ModelSource + ?Sized>(src: &S, component: &str) -> Result<Vec<String>> {
    for variant in ["", ".fp16"] {
        for stem in STEMS {
            let single = format!("{component}/{stem}{variant}.safetensors");
            if src.exists(&single) {
                return Ok(vec![single]);
            }
            let index = format!("{single}.index.json");
            if src.exists(&index) {
                return shard_files(src, component, &index);
            }
        }
    }
    Err(Error::MissingFile {
        path: format!("{}/{component}", src.describe()),
        hint: Some(format!(
            "no {} (.safetensors, .fp16.safetensors or .safetensors.index.json)",
            STEMS.join(" / ")
        )),
    })
}

/// The distinct shard files named by an `*.index.json` `weight_map`, in first-use order.
fn shard_files<S: ModelSource + ?Sized>(src: &S, component: &str, index: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let parsed: Index = crate::config::from_json(index, &src.read(index)?)?;
    let mut files: Vec<String> = Vec::new();
    for shard in parsed.weight_map.values() {
        let path = format!("{component}/{shard}");
        if !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
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

/// Reads and validates every weight file of `component` into one [`Weights`].
pub fn load_weights<S: ModelSource + ?Sized>(src: &S, component: &str, device: &Device) -> Result<Weights> {
    let files = weight_files(src, component)?
        .into_iter()
        .map(|path| SafetensorsFile::from_bytes(path.clone(), src.read(&path)?))
        .collect::<Result<Vec<_>>>()?;
    Weights::new(files, device)
}
