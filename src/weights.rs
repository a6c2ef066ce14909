//! safetensors → burn tensors, from bytes (the browser has no file paths).
//!
//! The header is parsed and validated here rather than by the `safetensors` crate because we
//! need two things it does not give: parsing a header from the first bytes of a file that is
//! still on its way (IndexedDB chunks, HTTP ranges) so tensors can be streamed to the GPU one by
//! one, and errors that name the file and the tensor.
//!
//! Modules are built candle-style: a [`VarBuilder`] walks the state-dict key space
//! (`down_blocks.0.resnets.1.conv1.weight`), every parameter is created from a stored tensor
//! (never randomly initialised), and [`Weights::finish`] rejects leftovers, so a loaded
//! module has full coverage by construction.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::limits::{self, DeviceLimits};

/// A tensor created on the device: its stored shape and its flattened values, in pieces of whole
/// rows (along the first dimension) when the whole would exceed the device's largest binding
/// ([`DeviceLimits::row_pieces`]); one piece otherwise.
pub type Uploaded = (Vec<usize>, Vec<Tensor<1>>);

/// Headers above this size are rejected before any allocation: real ones are a few hundred KiB
/// (the `safetensors` crate uses the same 100 MB bound).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Storage dtypes we convert to floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
    /// Any other dtype is kept so the error can name it when (and only if) the tensor is used.
    Other(&'static str, usize),
}

impl StoredDtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F32" => Self::F32,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "F64" => Self::Other("F64", 8),
            "I64" => Self::Other("I64", 8),
            "U64" => Self::Other("U64", 8),
            "I32" => Self::Other("I32", 4),
            "U32" => Self::Other("U32", 4),
            "I16" => Self::Other("I16", 2),
            "U16" => Self::Other("U16", 2),
            "I8" => Self::Other("I8", 1),
            "U8" => Self::Other("U8", 1),
            "BOOL" => Self::Other("BOOL", 1),
            "F8_E4M3" => Self::Other("F8_E4M3", 1),
            "F8_E5M2" => Self::Other("F8_E5M2", 1),
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Other(_, n) => n,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Other(n, _) => n,
        }
    }
}

/// One tensor entry of a safetensors header. Offsets are absolute positions in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// A validated safetensors header.
#[derive(Debug, Clone)]
pub struct Header {
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The free-form `__metadata__` string map.
    pub metadata: BTreeMap<String, String>,
    /// Absolute offset of the data section (8 + header length).
    pub data_start: usize,
}

impl Header {
    /// Bytes needed from the start of the file to parse the header; `None` if `prefix` is too
    /// short to tell (fewer than 8 bytes).
    pub fn needed_len(prefix: &[u8]) -> Option<u64> {
        let n = u64::from_le_bytes(prefix.get(..8)?.try_into().ok()?);
        Some(8u64.saturating_add(n))
    }

    /// Bytes [`Header::parse`] needs from the start of a file of `file_len` bytes (8 + the
    /// header length), read from its first 8 (`prefix`), with the header-length checks of
    /// `parse` (too short, over the limit, past the end of the file) naming `file`.
    pub fn checked_len(file: &str, prefix: &[u8], file_len: u64) -> Result<usize> {
        let corrupt = |reason: String| Error::CorruptSafetensors { file: file.to_string(), reason };
        if file_len < 8 || prefix.len() < 8 {
            return Err(corrupt(format!("file is {file_len} bytes, too short for a header")));
        }
        // Offsets are `usize`: on wasm32 a file over 4 GiB could not be addressed.
        if usize::try_from(file_len).is_err() {
            return Err(corrupt(format!("file is {file_len} bytes, too large for this platform")));
        }
        let n = u64::from_le_bytes(prefix[..8].try_into().unwrap());
        if n > MAX_HEADER_LEN {
            return Err(corrupt(format!("header length {n} exceeds the {MAX_HEADER_LEN} byte limit")));
        }
        if 8 + n > file_len {
            return Err(corrupt(format!(
                "header length {n} runs past the end of the file ({file_len} bytes); truncated?"
            )));
        }
        Ok(8 + n as usize)
    }

    /// Parses and validates the header at the start of `prefix`, for a file of `file_len` bytes.
    ///
    /// Checks: header length within bounds and within the file, UTF-8 JSON object, known
    /// dtypes, `end - start == numel * dtype size`, every range inside the data section, and
    /// the ranges covering the data section exactly (see [`check_coverage`]).
    pub fn parse(file: &str, prefix: &[u8], file_len: u64) -> Result<Self> {
        let corrupt = |reason: String| Error::CorruptSafetensors { file: file.to_string(), reason };
        let data_start = Self::checked_len(file, prefix, file_len)?;
        let n = data_start as u64 - 8;
        let json = prefix
            .get(8..data_start)
            .ok_or_else(|| corrupt(format!("need {data_start} bytes to read the header")))?;
        let json = std::str::from_utf8(json).map_err(|e| corrupt(format!("header is not UTF-8: {e}")))?;
        let RawHeader { entries, metadata } = serde_json::from_str(json).map_err(|e| {
            // Entry errors already say what is wrong and where; syntax errors need the context.
            corrupt(if e.is_data() { e.to_string() } else { format!("header is not a JSON object: {e}") })
        })?;

        let data_len = (file_len - 8 - n) as usize;
        let mut tensors = BTreeMap::new();
        for (key, entry) in entries {
            let dtype = StoredDtype::parse(&entry.dtype)
                .ok_or_else(|| corrupt(format!("tensor `{key}`: unknown dtype {}", entry.dtype)))?;
            let [start, end] = entry.data_offsets;
            let numel = entry.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let bytes = numel.and_then(|n| n.checked_mul(dtype.size()));
            if start > end || end > data_len {
                return Err(corrupt(format!(
                    "tensor `{key}`: data offsets [{start}, {end}] outside the data section of {data_len} bytes; truncated?"
                )));
            }
            if bytes != Some(end - start) {
                return Err(corrupt(format!(
                    "tensor `{key}`: {} bytes for shape {:?} of {}, header says {}",
                    bytes.map(|b| b.to_string()).unwrap_or_else(|| "overflowing".into()),
                    entry.shape,
                    dtype.name(),
                    end - start
                )));
            }
            tensors.insert(
                key,
                TensorInfo { dtype, shape: entry.shape, start: data_start + start, end: data_start + end },
            );
        }

        check_coverage(file, &tensors, data_start, file_len)?;
        Ok(Header { tensors, metadata, data_start })
    }
}

/// The safetensors rule (what the `safetensors` crate's `validate` enforces): sorted by offset,
/// the tensors tile the data section exactly, from its first byte to the end of the file, with
/// no hole and no overlap. This is what catches a header length a few bytes off: the JSON may
/// end in padding spaces, so it still parses, but every tensor would be read shifted.
fn check_coverage(file: &str, tensors: &BTreeMap<String, TensorInfo>, data_start: usize, file_len: u64) -> Result<()> {
    let corrupt = |reason: String| Error::CorruptSafetensors { file: file.to_string(), reason };
    let mut ranges: Vec<(&str, usize, usize)> = tensors.iter().map(|(k, t)| (k.as_str(), t.start, t.end)).collect();
    ranges.sort_by_key(|r| (r.1, r.2));
    let (mut at, mut prev) = (data_start, None::<&str>);
    for (key, start, end) in ranges {
        if start < at {
            let other = prev.unwrap_or("the header");
            return Err(corrupt(format!("tensors `{other}` and `{key}` overlap")));
        }
        if start > at {
            let gap = bytes(start - at);
            return Err(corrupt(match prev {
                None => format!("tensor `{key}` starts at data offset {}, not 0: a hole of {gap} before it", start - data_start),
                Some(p) => format!("a hole of {gap} between tensors `{p}` and `{key}`"),
            }));
        }
        (at, prev) = (end, Some(key));
    }
    if at as u64 > file_len {
        let last = prev.unwrap_or("the header");
        return Err(corrupt(format!("`{last}` ends at byte {at}, past the end of the file ({file_len} bytes); truncated?")));
    }
    let extra = file_len - at as u64;
    if extra > 0 {
        let extra = bytes(extra as usize);
        return Err(corrupt(match prev {
            Some(p) => format!("{extra} left over after the last tensor `{p}`; header length off, or trailing bytes?"),
            None => format!("{extra} left over after a header that lists no tensors"),
        }));
    }
    Ok(())
}

fn bytes(n: usize) -> String {
    if n == 1 { "1 byte".into() } else { format!("{n} bytes") }
}

/// The header JSON read straight into entries (no intermediate `Value` tree, so a nested
/// duplicate field is caught as the `safetensors` crate catches it), rejecting a key that
/// appears twice: a JSON map would silently keep the last one.
struct RawHeader {
    entries: Vec<(String, RawEntry)>,
    metadata: BTreeMap<String, String>,
}

impl<'de> serde::Deserialize<'de> for RawHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(RawHeaderVisitor)
    }
}

struct RawHeaderVisitor;

impl<'de> serde::de::Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of tensor entries")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawHeader, A::Error> {
        use serde::de::Error as _;
        let (mut entries, mut metadata, mut seen) = (Vec::new(), None, BTreeSet::new());
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(A::Error::custom(format!("`{key}` appears twice in the header")));
            }
            if key == "__metadata__" {
                // `null` is no metadata, as the `safetensors` crate reads it.
                let m: Option<BTreeMap<String, String>> = map
                    .next_value()
                    .map_err(|e| A::Error::custom(format!("`__metadata__` is not a string map: {e}")))?;
                metadata = m;
            } else {
                let entry = map
                    .next_value()
                    .map_err(|e| A::Error::custom(format!("tensor `{key}`: bad header entry: {e}")))?;
                entries.push((key, entry));
            }
        }
        Ok(RawHeader { entries, metadata: metadata.unwrap_or_default() })
    }
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// One safetensors file held in memory.
#[derive(Clone)]
pub struct SafetensorsFile {
    pub name: String,
    pub header: Header,
    bytes: Arc<[u8]>,
}

impl SafetensorsFile {
    /// Validates `bytes` as a complete safetensors file named `name` (used in errors).
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Result<Self> {
        let name = name.into();
        let bytes = bytes.into();
        let header = Header::parse(&name, &bytes, bytes.len() as u64)?;
        Ok(Self { name, header, bytes })
    }

    /// The raw stored bytes of a tensor.
    pub fn raw(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes[info.start..info.end]
    }
}

/// Converts stored bytes to f32 values.
pub fn to_f32(file: &str, key: &str, dtype: StoredDtype, raw: &[u8]) -> Result<Vec<f32>> {
    let words = |n: usize| raw.chunks_exact(n);
    Ok(match dtype {
        StoredDtype::F32 => words(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        StoredDtype::F16 => {
            words(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect()
        }
        StoredDtype::BF16 => {
            words(2).map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect()
        }
        StoredDtype::Other(name, _) => {
            return Err(Error::UnsupportedDtype {
                file: file.to_string(),
                key: key.to_string(),
                dtype: name.to_string(),
            });
        }
    })
}

/// Converts stored bytes to f16 values (F16 is copied as is; F32 and BF16 are rounded), for
/// GPUs that compute in half precision: half the upload and half the memory of f32.
pub fn to_f16(file: &str, key: &str, dtype: StoredDtype, raw: &[u8]) -> Result<Vec<half::f16>> {
    let words = |n: usize| raw.chunks_exact(n);
    Ok(match dtype {
        StoredDtype::F16 => words(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap())).collect(),
        StoredDtype::BF16 => words(2)
            .map(|b| half::f16::from_f32(half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32()))
            .collect(),
        other => to_f32(file, key, other, raw)?.into_iter().map(half::f16::from_f32).collect(),
    })
}

/// Stored bytes → host tensor data of `shape` in the working float type `dtype` (F32 or F16),
/// converted straight from the stored type (an F16 file read for an F16 model is never widened).
pub fn tensor_data(file: &str, key: &str, stored: StoredDtype, raw: &[u8], shape: Vec<usize>, dtype: DType) -> Result<TensorData> {
    Ok(match dtype {
        DType::F16 => TensorData::new(to_f16(file, key, stored, raw)?, shape),
        _ => TensorData::new(to_f32(file, key, stored, raw)?, shape),
    })
}

/// The tensors of one component (one file, or the shards of an `*.index.json`; or tensors
/// already on the device; or generated ones), with the keys used so far, so that leftovers can
/// be reported.
pub struct Weights {
    /// What errors call the component, e.g. `unet/diffusion_pytorch_model.safetensors`.
    pub name: String,
    store: Store,
    /// Lookup key → stored key: they differ by a stripped prefix or a rename.
    index: BTreeMap<String, String>,
    used: RefCell<BTreeSet<String>>,
    device: Device,
    dtype: DType,
    /// What the device was granted: the row pieces tensors come in, and what the layers built
    /// from them keep ([`VarBuilder::limits`]).
    limits: DeviceLimits,
}

/// Makes the values of tensor `key` of `shape` (row-major f32).
pub type Generator = Box<dyn Fn(&str, &[usize]) -> Vec<f32>>;

/// Where a component's tensors are kept; each mode hands out row pieces its own way.
enum Store {
    /// safetensors files in memory: stored bytes, converted when a tensor is asked for.
    Files(Files),
    /// Tensors already on the device (the browser uploads them one by one while streaming
    /// from IndexedDB, so no model file is ever whole in the wasm heap): stored key →
    /// (shape, flattened pieces).
    Resident(BTreeMap<String, Uploaded>),
    /// No stored tensors: every requested one is made on request ([`Weights::generated`]).
    Generated(Generator),
}

/// safetensors files with the file each stored key is in.
struct Files {
    files: Vec<SafetensorsFile>,
    file_of: BTreeMap<String, usize>,
}

/// The shape of the piece of `rows` rows of a tensor of `shape` (cut along its first dimension).
fn piece_shape<const D: usize>(mut shape: [usize; D], rows: usize) -> [usize; D] {
    if D > 0 {
        shape[0] = rows;
    }
    shape
}

/// Values per row (along the first dimension) of a tensor of `shape`.
fn row_len(shape: &[usize]) -> usize {
    shape.iter().skip(1).product()
}

impl Files {
    /// Indexes the stored keys of `files`; a key present in two shards is an error.
    fn new(files: Vec<SafetensorsFile>) -> Result<Self> {
        let mut file_of = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for key in f.header.tensors.keys() {
                if let Some(j) = file_of.insert(key.clone(), i) {
                    return Err(Error::CorruptSafetensors {
                        file: f.name.clone(),
                        reason: format!("tensor `{key}` is also in {}", files[j].name),
                    });
                }
            }
        }
        Ok(Self { files, file_of })
    }

    fn get(&self, stored: &str) -> (&SafetensorsFile, &TensorInfo) {
        let file = &self.files[self.file_of[stored]];
        (file, &file.header.tensors[stored])
    }

    /// Stored tensor `stored` (asked for as `key`) converted to `dtype` on `device`, as the row
    /// ranges `pieces`.
    fn pieces<const D: usize>(
        &self,
        (key, stored): (&str, &str),
        shape: [usize; D],
        pieces: &[(usize, usize)],
        (device, dtype): (&Device, DType),
    ) -> Result<Vec<Tensor<D>>> {
        let (file, info) = self.get(stored);
        if info.shape != shape {
            return Err(Error::ShapeMismatch {
                file: file.name.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (raw, row, elem) = (file.raw(info), row_len(&shape), info.dtype.size());
        pieces
            .iter()
            .map(|&(start, rows)| {
                let bytes = &raw[start * row * elem..(start + rows) * row * elem];
                let data = tensor_data(&file.name, key, info.dtype, bytes, piece_shape(shape, rows).to_vec(), dtype)?;
                Ok(Tensor::from_data(data, (device, dtype)))
            })
            .collect()
    }

    /// Every stored tensor in `stored` (skipping what the pipeline never runs for `component`)
    /// created on `device`, flattened, in the row pieces `limits` allows: the cut the browser
    /// uploads in.
    fn upload<'a>(
        &self,
        component: &str,
        stored: impl Iterator<Item = &'a String>,
        limits: DeviceLimits,
        (device, dtype): (&Device, DType),
    ) -> Result<BTreeMap<String, Uploaded>> {
        let mut out = BTreeMap::new();
        for stored in stored.filter(|k| !crate::folder::is_unused_extra(component, k)) {
            let (file, info) = self.get(stored);
            let (rows, row) = (info.shape.first().copied().unwrap_or(1), row_len(&info.shape));
            if row as u64 * 4 > limits.max_tensor_bytes() {
                return Err(too_large(&file.name, stored, row as u64 * 4, DType::F32, limits));
            }
            let (raw, elem) = (file.raw(info), info.dtype.size());
            let pieces = limits
                .row_pieces(rows, row)
                .into_iter()
                .map(|(start, n)| {
                    let bytes = &raw[start * row * elem..(start + n) * row * elem];
                    let data = tensor_data(&file.name, stored, info.dtype, bytes, vec![n * row], dtype)?;
                    Ok(Tensor::from_data(data, (device, dtype)))
                })
                .collect::<Result<Vec<_>>>()?;
            out.insert(stored.clone(), (info.shape.clone(), pieces));
        }
        Ok(out)
    }
}

/// Resident tensor `uploaded` as the row ranges `pieces` of `shape`, in `dtype`: reshaped
/// where it was uploaded in the same cut, else joined once and sliced.
fn resident_pieces<const D: usize>(
    uploaded: &[Tensor<1>],
    shape: [usize; D],
    pieces: &[(usize, usize)],
    dtype: DType,
) -> Vec<Tensor<D>> {
    let row = row_len(&shape);
    // The cast is a no-op when uploaded in the working dtype (the browser uploads in it).
    let same = uploaded.len() == pieces.len()
        && uploaded.iter().zip(pieces).all(|(t, &(_, rows))| t.dims()[0] == rows * row);
    if same {
        return uploaded
            .iter()
            .zip(pieces)
            .map(|(t, &(_, rows))| t.clone().reshape(piece_shape(shape, rows)).cast(dtype))
            .collect();
    }
    // Pieces cut by another rule (or a whole tensor asked for): one cat, then slices.
    let whole = limits::join_pieces(uploaded.to_vec(), 0);
    pieces
        .iter()
        .map(|&(start, rows)| {
            whole.clone().slice(start * row..(start + rows) * row).reshape(piece_shape(shape, rows)).cast(dtype)
        })
        .collect()
}

/// Generated tensor `key` of `shape` as the row ranges `pieces`.
fn generated_pieces<const D: usize>(
    generate: &Generator,
    key: &str,
    shape: [usize; D],
    pieces: &[(usize, usize)],
    (device, dtype): (&Device, DType),
) -> Vec<Tensor<D>> {
    let (values, row) = (generate(key, &shape), row_len(&shape));
    pieces
        .iter()
        .map(|&(start, rows)| {
            let data = TensorData::new(values[start * row..(start + rows) * row].to_vec(), piece_shape(shape, rows));
            Tensor::from_data(data, (device, dtype))
        })
        .collect()
}

impl Weights {
    fn with_store(name: String, store: Store, index: BTreeMap<String, String>, device: &Device) -> Self {
        let (used, device, dtype, limits) = (RefCell::default(), device.clone(), DType::F32, DeviceLimits::NONE);
        Self { name, store, index, used, device, dtype, limits }
    }

    /// Builds the key index over one or more files; a key present in two shards is an error.
    pub fn new(files: Vec<SafetensorsFile>, device: &Device) -> Result<Self> {
        let name = files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ");
        let files = Files::new(files)?;
        let index = files.file_of.keys().map(|k| (k.clone(), k.clone())).collect();
        Ok(Self::with_store(name, Store::Files(files), index, device))
    }

    /// A component with no files whose every requested tensor is made by `generate`, so a
    /// full-size model can be built without a checkpoint through the same loading code (the
    /// benchmarks' seeded random weights: `benches/random_weights.rs`).
    pub fn generated(name: &str, generate: Generator, device: &Device) -> Self {
        Self::with_store(name.to_string(), Store::Generated(generate), BTreeMap::new(), device)
    }

    /// Whether tensors are made on request ([`Weights::generated`]) rather than stored.
    pub fn is_generated(&self) -> bool {
        matches!(self.store, Store::Generated(_))
    }

    /// A component whose tensors were already created on `device`, flattened (in row pieces
    /// where [`DeviceLimits::row_pieces`] splits them), with their stored shapes. Lookups, shape
    /// checks, prefix/rename and `finish` behave as with files; `tensor()` only reshapes (the
    /// tensors keep the dtype they were uploaded with).
    pub fn from_tensors(
        name: impl Into<String>,
        tensors: BTreeMap<String, Uploaded>,
        device: &Device,
    ) -> Result<Self> {
        let name = name.into();
        for (key, (shape, pieces)) in &tensors {
            let numel: usize = shape.iter().product();
            let row = row_len(shape).max(1);
            let lens: Vec<usize> = pieces.iter().map(|t| t.dims()[0]).collect();
            if lens.iter().sum::<usize>() != numel || lens.iter().any(|n| n % row != 0) {
                return Err(Error::CorruptSafetensors {
                    file: name.clone(),
                    reason: format!(
                        "tensor `{key}`: pieces of {lens:?} values uploaded for shape {shape:?}"
                    ),
                });
            }
        }
        let index = tensors.keys().map(|k| (k.clone(), k.clone())).collect();
        Ok(Self::with_store(name, Store::Resident(tensors), index, device))
    }

    /// The tensors of this component created on its device, in the pieces the browser uploads
    /// them in ([`DeviceLimits::row_pieces`]), keyed by stored key, skipping what the pipeline
    /// never runs ([`crate::folder::is_unused_extra`] for `component`), as the browser does.
    /// Already resident weights are shared (handles only). What LoRA fusion keeps
    /// (`crate::lora`): the model built from these shares their device memory.
    pub fn resident(&self, component: &str) -> Result<BTreeMap<String, Uploaded>> {
        match &self.store {
            Store::Files(files) => {
                files.upload(component, self.index.values(), self.limits, (&self.device, self.dtype))
            }
            Store::Resident(tensors) => Ok(tensors.clone()),
            Store::Generated(_) => Ok(BTreeMap::new()),
        }
    }

    /// Convenience for a single file held in memory.
    pub fn from_bytes(name: &str, bytes: impl Into<Arc<[u8]>>, device: &Device) -> Result<Self> {
        Self::new(vec![SafetensorsFile::from_bytes(name, bytes)?], device)
    }

    /// The float dtype tensors are created with (F32 by default; F16 on `shader-f16` GPUs).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The limits of the device the tensors are created on ([`DeviceLimits::NONE`] by default:
    /// the CPU); a browser's or a GPU's come from the shell that made the device.
    pub fn with_limits(mut self, limits: DeviceLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> DeviceLimits {
        self.limits
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The float dtype of the tensors this component hands out.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Makes keys reachable without `prefix` (e.g. `text_model.`): hub CLIP checkpoints carry
    /// it, transformers 5 `save_pretrained` drops it. Keys lacking the prefix stay as they are.
    pub fn strip_prefix(mut self, prefix: &str) -> Self {
        self.index = std::mem::take(&mut self.index)
            .into_iter()
            .map(|(k, v)| (k.strip_prefix(prefix).map(str::to_string).unwrap_or(k), v))
            .collect();
        self
    }

    /// Renames keys before lookup, for alternative checkpoint layouts (e.g. original TAESD).
    pub fn rename(mut self, f: impl Fn(&str) -> String) -> Self {
        self.index = std::mem::take(&mut self.index).into_iter().map(|(k, v)| (f(&k), v)).collect();
        self
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key) || self.is_generated()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Shape of a stored tensor, if present (used to infer sizes the config leaves implicit).
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        let stored = self.index.get(key)?;
        match &self.store {
            Store::Files(files) => Some(&files.get(stored).1.shape),
            Store::Resident(tensors) => Some(&tensors[stored].0),
            Store::Generated(_) => None,
        }
    }

    /// Loads `key` as a float tensor of exactly `shape`, whole. A tensor too big for one
    /// binding on this device is an error naming it: modules that can work on pieces use
    /// [`Self::tensor_rows`].
    pub fn tensor<const D: usize>(&self, key: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let bytes = shape.iter().product::<usize>() as u64 * self.dtype.size() as u64;
        let limits = self.limits;
        if bytes > limits.max_tensor_bytes() {
            return Err(too_large(&self.name, key, bytes, self.dtype, limits));
        }
        let pieces = self.tensor_pieces(key, shape, &[(0, shape.first().copied().unwrap_or(1))])?;
        Ok(limits::join_pieces(pieces, 0))
    }

    /// Loads `key` (of exactly `shape`) in pieces of whole rows along its first dimension, each
    /// within the device's largest binding ([`DeviceLimits::row_pieces`]); one piece, the
    /// whole tensor, wherever it fits. For weights whose rows are independent: embedding rows,
    /// output channels of a linear or a convolution.
    pub fn tensor_rows<const D: usize>(&self, key: &str, shape: [usize; D]) -> Result<Vec<Tensor<D>>> {
        let limits = self.limits;
        let row = row_len(&shape);
        if row as u64 * 4 > limits.max_tensor_bytes() {
            return Err(too_large(&self.name, key, row as u64 * 4, DType::F32, limits));
        }
        self.tensor_pieces(key, shape, &limits.row_pieces(shape[0], row))
    }

    /// `key` as the row ranges `pieces` (`(first row, rows)`), from wherever it is stored;
    /// marked used once found in its stored shape.
    fn tensor_pieces<const D: usize>(
        &self,
        key: &str,
        shape: [usize; D],
        pieces: &[(usize, usize)],
    ) -> Result<Vec<Tensor<D>>> {
        let on = (&self.device, self.dtype);
        let tensors = match (&self.store, self.index.get(key)) {
            (Store::Generated(generate), _) => generated_pieces(generate, key, shape, pieces, on),
            (_, None) => return Err(Error::MissingTensor { file: self.name.clone(), key: key.to_string() }),
            (Store::Files(files), Some(stored)) => files.pieces((key, stored), shape, pieces, on)?,
            (Store::Resident(tensors), Some(stored)) => {
                let (found, uploaded) = &tensors[stored];
                if found[..] != shape {
                    return Err(Error::ShapeMismatch {
                        file: self.name.clone(),
                        key: key.to_string(),
                        expected: shape.to_vec(),
                        found: found.clone(),
                    });
                }
                resident_pieces(uploaded, shape, pieces, self.dtype)
            }
        };
        self.used.borrow_mut().insert(key.to_string());
        Ok(tensors)
    }

    /// Fails with every key that no module asked for: the checkpoint is not the model the
    /// config describes, and silently dropping weights would produce a wrong image.
    pub fn finish(&self) -> Result<()> {
        let used = self.used.borrow();
        let left: Vec<String> = self.index.keys().filter(|k| !used.contains(*k)).cloned().collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::UnexpectedTensors { file: self.name.clone(), keys: left })
        }
    }

    /// Root builder over the whole key space.
    pub fn root(&self) -> VarBuilder<'_> {
        VarBuilder { weights: self, prefix: String::new() }
    }
}

/// A position in the state-dict key space, as candle's `VarBuilder`.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> VarBuilder<'a> {
    /// Descends into a sub-module: `vb.pp("resnets").pp(0)` → `resnets.0.`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self { weights: self.weights, prefix: self.key(&name.to_string()) }
    }

    /// The full key for `name` under this prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    pub fn get<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        self.weights.tensor(&self.key(name), shape)
    }

    /// [`Weights::tensor_rows`]: `name` in row pieces that each fit one binding.
    pub fn get_rows<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Vec<Tensor<D>>> {
        self.weights.tensor_rows(&self.key(name), shape)
    }

    /// Whether `name` exists under this prefix (for optional parameters such as biases).
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.key(name))
    }

    /// Whether any key starts with this prefix (for optional sub-modules).
    pub fn has_prefix(&self) -> bool {
        let p = format!("{}.", self.prefix);
        self.weights.index.range(p.clone()..).next().is_some_and(|(k, _)| k.starts_with(&p))
    }

    pub fn shape(&self, name: &str) -> Option<&'a [usize]> {
        self.weights.shape(&self.key(name))
    }

    pub fn device(&self) -> &'a Device {
        &self.weights.device
    }

    /// The device's limits, for layers that must keep activations within them.
    pub fn limits(&self) -> DeviceLimits {
        self.weights.limits
    }
}

/// Reassembles the tensors of a safetensors file that arrives in pieces, in file order (HTTP
/// chunks, IndexedDB records), so each tensor can be uploaded to the GPU as soon as its bytes
/// are complete while only one tensor at a time is buffered.
pub struct TensorStream {
    file: String,
    /// Tensors sorted by their start offset.
    order: Vec<(String, TensorInfo)>,
    next: usize,
    /// Absolute file offset of the next byte fed.
    pos: usize,
    file_len: usize,
    /// Bytes of tensor `next` received so far, when it spans pieces.
    partial: Vec<u8>,
}

impl TensorStream {
    /// Errors unless `header`'s tensors cover a file of `file_len` bytes exactly: the stream
    /// relies on it (every fed byte belongs to the header or to exactly one tensor).
    pub fn new(file: impl Into<String>, header: &Header, file_len: u64) -> Result<Self> {
        let file = file.into();
        let file_len_usize = usize::try_from(file_len).map_err(|_| Error::CorruptSafetensors {
            file: file.clone(),
            reason: format!("file is {file_len} bytes, too large for this platform"),
        })?;
        check_coverage(&file, &header.tensors, header.data_start, file_len)?;
        let mut order: Vec<(String, TensorInfo)> =
            header.tensors.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
        order.sort_by_key(|(_, t)| (t.start, t.end));
        Ok(Self { file, order, next: 0, pos: 0, file_len: file_len_usize, partial: Vec::new() })
    }

    /// Feeds the next `bytes` of the file; calls `done(key, info, raw)` for every tensor whose
    /// bytes are now complete (borrowing from `bytes` when a tensor lies inside one piece).
    pub fn feed(
        &mut self,
        bytes: &[u8],
        mut done: impl FnMut(&str, &TensorInfo, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let (base, end) = (self.pos, self.pos + bytes.len());
        if end > self.file_len {
            return Err(Error::CorruptSafetensors {
                file: self.file.clone(),
                reason: format!("received more than the {} bytes announced", self.file_len),
            });
        }
        while let Some((key, info)) = self.order.get(self.next) {
            let from = info.start + self.partial.len();
            // A zero-length tensor at `end` is complete now; anything else needs more bytes.
            if from > end || (from == end && info.end > from) {
                break;
            }
            let upto = info.end.min(end);
            let piece = &bytes[from.max(base) - base..upto - base];
            if self.partial.is_empty() && upto == info.end && from >= base {
                done(key, info, piece)?;
            } else {
                if self.partial.is_empty() {
                    // Exactly once: doubling growth would hold 1.5-3x a 152 MB table at a time.
                    self.partial.reserve_exact(info.end - info.start);
                }
                self.partial.extend_from_slice(piece);
                if upto < info.end {
                    break;
                }
                done(key, info, &self.partial)?;
                // Freed, not kept: the next big tensor reserves its own size.
                self.partial = Vec::new();
            }
            self.next += 1;
        }
        self.pos = end;
        Ok(())
    }

    /// Whether every tensor has been delivered.
    pub fn is_complete(&self) -> bool {
        self.next == self.order.len()
    }

    /// Errors unless the whole file arrived (a truncated stream must not look like a model).
    pub fn finish(&self) -> Result<()> {
        if self.is_complete() && self.pos == self.file_len {
            return Ok(());
        }
        Err(Error::CorruptSafetensors {
            file: self.file.clone(),
            reason: format!(
                "stream ended at byte {} of {}; {} of {} tensors complete",
                self.pos,
                self.file_len,
                self.next,
                self.order.len()
            ),
        })
    }
}

/// A tensor (or one row of it) bigger than any kernel on this device can bind.
pub fn too_large(file: &str, key: &str, bytes: u64, dtype: DType, limits: DeviceLimits) -> Error {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let advice = if dtype == DType::F16 {
        ""
    } else {
        "load with dtype 'f16' where the GPU has shader-f16, or "
    };
    Error::InvalidArgument(format!(
        "{file}: tensor `{key}` needs {:.1} MiB in {dtype:?} in one piece, more than this GPU's largest \
         buffer binding ({:.1} MiB); {advice}use a browser/GPU that offers higher WebGPU limits",
        mb(bytes),
        mb(limits.max_tensor_bytes())
    ))
}
