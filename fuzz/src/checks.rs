//! Fuzz oracles shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*`) and the bounded run in
//! plain `cargo test` (`tests/fuzz_smoke.rs`, which includes this file by path). Each oracle
//! takes arbitrary bytes and asserts: no panic, errors that name the file, results that are
//! self-consistent (and agree with the `safetensors` crate), and no allocation beyond what the
//! input can justify (see [`Guard`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

use inkstone::config::{
    AutoencoderKLConfig, AutoencoderTinyConfig, BertConfig, ClipTextConfig, ModelIndex, SchedulerConfig,
    TokenizerConfig, UNet2DConditionConfig, from_json,
};
use inkstone::source::DirSource;
use inkstone::text::{Encoded, PromptTokenizer, TokenizerKind};
use inkstone::weights::{Header, SafetensorsFile, TensorStream};

/// The name every fuzzed safetensors file goes by; each error must contain it.
pub const FILE: &str = "fuzz/model.safetensors";

// ---------------------------------------------------------------------------------------------
// Allocation guard

/// A global allocator that, inside [`within`], fails any allocation that would take the bytes
/// live on this thread over the budget (the process then aborts with "memory allocation of N
/// bytes failed", which libFuzzer reports as a crash and `cargo test` as a failure). Outside a
/// window it only forwards to the system allocator.
pub struct Guard;

thread_local! {
    static BUDGET: Cell<usize> = const { Cell::new(usize::MAX) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn charge(n: usize) -> bool {
    let ok = LIVE.try_with(|live| {
        let now = live.get().saturating_add(n);
        if now > BUDGET.with(Cell::get) {
            return false;
        }
        live.set(now);
        PEAK.with(|p| p.set(p.get().max(now)));
        true
    });
    ok.unwrap_or(true)
}

fn release(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !charge(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !charge(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        release(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !charge(new_size - old) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size < old && !p.is_null() {
            release(old - new_size);
        }
        p
    }
}

/// Runs `f` with at most `budget` bytes live on this thread; returns its result and the peak.
pub fn within<T>(budget: usize, f: impl FnOnce() -> T) -> (T, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    BUDGET.with(|b| b.set(budget));
    let out = f();
    BUDGET.with(|b| b.set(usize::MAX));
    (out, PEAK.with(Cell::get))
}

/// What parsing `len` input bytes may cost: JSON trees take tens of bytes per input byte
/// (a `serde_json::Value` is 32 bytes, a `[0,0,...]` element 2 input bytes), never more.
pub fn parse_budget(len: usize) -> usize {
    (1 << 20) + len.saturating_mul(64)
}

/// What tokenizing a prompt of `len` bytes may cost: normalised copies with per-byte
/// alignments, offsets and pre-token splits, plus the regex engines' lazy DFA caches, which grow
/// up to a fixed capacity (2 MiB each) as new inputs reach new states.
pub fn tokenize_budget(len: usize) -> usize {
    (32 << 20) + len.saturating_mul(1024)
}

/// Deterministic pseudo-random numbers (xorshift64*): chunk sizes, and the smoke mutator.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn assert_names(e: &inkstone::Error, file: &str) {
    let msg = e.to_string();
    assert!(msg.contains(file), "error does not name {file}: {msg}");
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// `data` as a whole safetensors file: parse it, check the result against the format's rules
/// and against the `safetensors` crate. Returns whether the file is valid.
pub fn header(data: &[u8]) -> bool {
    let (ours, _) = within(parse_budget(data.len()), || Header::parse(FILE, data, data.len() as u64));
    match &ours {
        Err(e) => assert_names(e, FILE),
        Ok(h) => check_layout(h, data.len()),
    }
    let theirs = safetensors::SafeTensors::deserialize(data);
    match (&ours, &theirs) {
        (Ok(h), Ok(st)) => same_as_crate(h, st),
        (Ok(_), Err(e)) => panic!("accepted a file the safetensors crate rejects: {e}"),
        (Err(e), Ok(st)) => {
            // We know every dtype a float model can need; the crate also knows sub-byte and
            // complex ones. And a key given twice is an error here, while the crate keeps the
            // last one. Anything else it accepts, we must accept.
            let exotic = st.tensors().iter().any(|(_, t)| !OUR_DTYPES.contains(&format!("{:?}", t.dtype()).as_str()));
            let twice = e.to_string().contains("appears twice in the header");
            assert!(exotic || twice, "rejected a file the safetensors crate accepts: {e}");
        }
        (Err(_), Err(_)) => {}
    }
    ours.is_ok()
}

/// The dtypes `Header::parse` knows (the `safetensors` crate also has F4, F6_*, F8_E8M0, C64).
const OUR_DTYPES: [&str; 15] =
    ["F32", "F16", "BF16", "F64", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"];

/// The safetensors invariants: tensors sorted by offset tile the data section exactly, and
/// each holds exactly `numel * dtype size` bytes.
fn check_layout(h: &Header, len: usize) {
    let mut ranges: Vec<_> = h.tensors.values().map(|t| (t.start, t.end, t)).collect();
    ranges.sort_by_key(|r| (r.0, r.1));
    let mut at = h.data_start;
    for (start, end, t) in ranges {
        assert_eq!(start, at, "hole or overlap accepted");
        let numel: usize = t.shape.iter().product();
        assert_eq!(end - start, numel * t.dtype.size(), "size disagrees with shape {:?}", t.shape);
        at = end;
    }
    assert_eq!(at, len, "bytes after the last tensor accepted");
}

fn same_as_crate(h: &Header, st: &safetensors::SafeTensors) {
    let theirs = st.tensors();
    assert_eq!(h.tensors.len(), theirs.len(), "tensor count");
    for (name, view) in theirs {
        let t = &h.tensors[&name];
        assert_eq!(t.shape, view.shape(), "{name}: shape");
        assert_eq!(t.dtype.name(), format!("{:?}", view.dtype()), "{name}: dtype");
        assert_eq!(t.end - t.start, view.data().len(), "{name}: length");
    }
}

/// First 8 bytes: the seed of the chunk sizes; the rest: a safetensors file, parsed whole and
/// streamed in random pieces from a header parsed on a prefix. Both must agree: the same
/// tensors with the same bytes, or the same error. Returns whether the file is valid.
pub fn stream(data: &[u8]) -> bool {
    let (seed, file) = if data.len() >= 8 { data.split_at(8) } else { (&[][..], data) };
    let seed = seed.iter().fold(0u64, |a, &b| a << 8 | b as u64);
    let whole = SafetensorsFile::from_bytes(FILE, file.to_vec());
    let (streamed, _) = within(parse_budget(file.len()), || stream_pieces(file, seed));
    match (whole, streamed) {
        (Ok(f), Ok(got)) => {
            assert_eq!(got.len(), f.header.tensors.len(), "tensors streamed");
            for (key, info) in &f.header.tensors {
                assert_eq!(got[key], f.raw(info), "{key}: streamed bytes");
            }
            true
        }
        (Err(a), Err(b)) => {
            assert_names(&b, FILE);
            assert_eq!(a.to_string(), b.to_string(), "whole-file and streamed errors differ");
            false
        }
        (Ok(_), Err(e)) => panic!("streaming rejects a valid file: {e}"),
        (Err(e), Ok(_)) => panic!("streaming accepts a file the full parse rejects: {e}"),
    }
}

fn stream_pieces(file: &[u8], seed: u64) -> inkstone::Result<BTreeMap<String, Vec<u8>>> {
    let len = file.len() as u64;
    let prefix = Header::needed_len(file).map_or(file.len(), |n| n.min(len) as usize);
    let header = Header::parse(FILE, &file[..prefix], len)?;
    // A header is only ever good for the file length it was checked against.
    for wrong in [len + 1, len - 1] {
        let e = TensorStream::new(FILE, &header, wrong).err().expect("stream accepted a wrong file length");
        assert_names(&e, FILE);
    }
    let mut s = TensorStream::new(FILE, &header, len)?;
    let mut rng = Rng::new(seed);
    let mut got = BTreeMap::new();
    let mut at = 0;
    while at < file.len() {
        let left = file.len() - at;
        // Mostly tiny pieces (tensors split across many), sometimes large ones, sometimes empty.
        let n = match rng.below(8) {
            0 => 0,
            1..=5 => 1 + rng.below(left.min(16)),
            _ => 1 + rng.below(left),
        };
        s.feed(&file[at..at + n], |k, info, raw| {
            assert_eq!(raw.len(), info.end - info.start, "{k}: delivered length");
            assert!(got.insert(k.to_string(), raw.to_vec()).is_none(), "{k} delivered twice");
            Ok(())
        })?;
        at += n;
        if at + 1 == file.len() {
            // One byte short: the stream must not pass for complete.
            assert!(s.finish().is_err(), "a stream one byte short passed");
        }
    }
    s.finish()?;
    let e = s.feed(&[0], |_, _, _| Ok(())).expect_err("bytes past the end accepted");
    assert_names(&e, FILE);
    Ok(got)
}

// ---------------------------------------------------------------------------------------------
// configs

const UNET: &str = "unet/config.json";
const TEXT: &str = "text_encoder/config.json";
const TOKENIZER: &str = "tokenizer/tokenizer_config.json";
const VAE: &str = "vae/config.json";
const SCHEDULER: &str = "scheduler/scheduler_config.json";

/// The parsers [`configs`] runs, in the order of the bits it returns.
pub const CONFIG_PARSERS: [&str; 8] =
    ["model_index", "unet", "clip_text", "bert", "tokenizer_config", "autoencoder_tiny", "autoencoder_kl", "scheduler"];

/// Every config parser (and what loading derives from a validated config) on the same bytes.
/// Returns which accepted them: bit `i` for `CONFIG_PARSERS[i]`.
pub fn configs(data: &[u8]) -> u8 {
    let (accepted, _) = within(parse_budget(data.len()), || {
        [
        named(ModelIndex::from_json(data).map(drop), "model_index.json"),
        named(
            from_json::<UNet2DConditionConfig>(UNET, data).and_then(|c| {
                c.validate()?;
                c.levels()?;
                c.time_embed_dim();
                Ok(())
            }),
            UNET,
        ),
        named(from_json::<ClipTextConfig>(TEXT, data).and_then(|c| c.validate()), TEXT),
        named(from_json::<BertConfig>(TEXT, data).and_then(|c| c.validate()), TEXT),
        named(from_json::<TokenizerConfig>(TOKENIZER, data).map(drop), TOKENIZER),
        named(
            from_json::<AutoencoderTinyConfig>(VAE, data).and_then(|c| {
                c.validate()?;
                c.pixels_per_latent();
                Ok(())
            }),
            VAE,
        ),
        named(
            from_json::<AutoencoderKLConfig>(VAE, data).and_then(|c| {
                c.validate()?;
                c.pixels_per_latent();
                Ok(())
            }),
            VAE,
        ),
        named(SchedulerConfig::from_json(data).map(drop), SCHEDULER),
        ]
        .into_iter()
        .enumerate()
        .fold(0, |bits, (i, ok)| bits | (ok as u8) << i)
    });
    accepted
}

/// Whether `r` is `Ok`; an error must name `file`.
fn named(r: inkstone::Result<()>, file: &str) -> bool {
    r.map_err(|e| assert_names(&e, file)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// prompt tokenizer

/// The committed tokenizers: CLIP BPE and BERT WordPiece, from vocabulary files and from
/// `tokenizer.json`.
pub fn tokenizers(fixtures: &Path) -> Vec<PromptTokenizer> {
    [("tiny-sd", "tokenizer"), ("tiny-bert", "tokenizer"), ("tokenizers", "clip-json"), ("tokenizers", "bert-json")]
        .iter()
        .map(|(root, dir)| {
            let src = DirSource::new(fixtures.join(root)).expect("fixture folder");
            PromptTokenizer::load(&src, dir).expect("fixture tokenizer")
        })
        .collect()
}

/// First byte: which tokenizer; the rest: the prompt (invalid UTF-8 replaced, as a browser's
/// TextDecoder would). The encoding must be exactly `max_length` long, start and end with the
/// special tokens, pad only at the end, and report truncation consistently. Returns the
/// encoding and the peak allocation.
pub fn prompt(toks: &[PromptTokenizer], data: &[u8]) -> Option<(Encoded, usize)> {
    let (&which, rest) = data.split_first()?;
    let tok = &toks[which as usize % toks.len()];
    let text = String::from_utf8_lossy(rest);
    let (enc, peak) = within(tokenize_budget(text.len()), || tok.encode(&text));
    let enc = enc.unwrap_or_else(|e| panic!("encoding failed: {e}"));
    let n = tok.max_length();
    assert_eq!((enc.ids.len(), enc.attention_mask.len()), (n, n), "encoded length");
    let real = enc.attention_mask.iter().take_while(|&&m| m == 1).count();
    assert!(enc.attention_mask[real..].iter().all(|&m| m == 0), "padding not at the end");
    let (bos, eos) = match tok.kind() {
        TokenizerKind::ClipBpe => ("<|startoftext|>", "<|endoftext|>"),
        TokenizerKind::BertWordPiece => ("[CLS]", "[SEP]"),
    };
    let id = |t: &str| tok.inner().token_to_id(t).expect("special token");
    assert!(real >= 2, "no room for the special tokens");
    assert_eq!((enc.ids[0], enc.ids[real - 1]), (id(bos), id(eos)), "special tokens");
    assert!(enc.truncated == 0 || real == n, "truncated {} tokens but padded", enc.truncated);
    Some((enc, peak))
}
