//! Bounded fuzzing in plain `cargo test`: the oracles of the cargo-fuzz targets (fuzz/, shared
//! by path) on a few thousand seeded mutations of the committed fixtures per target, so every CI
//! run covers them with no extra tooling. Deterministic: a failure reproduces with its case
//! number. The long unbounded runs and their figures: docs/reliability.md.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::time::Instant;

use checks::Rng;
use inkstone::text::TokenizerKind;
use serde_json::{Value, json};

#[global_allocator]
static GUARD: checks::Guard = checks::Guard;

/// Small real files written by the reference stack (Python safetensors): F32 and I64 tensors,
/// a `__metadata__` entry, header padding.
const SAFETENSORS_SEEDS: [&[u8]; 4] = [
    include_bytes!("fixtures/ref/unet_guidance_embedding.safetensors"),
    include_bytes!("fixtures/ref/text_tokens_clip.safetensors"),
    include_bytes!("fixtures/ref/sched_lcm_default.safetensors"),
    include_bytes!("fixtures/ref/vae_kl_variant.safetensors"),
];

/// Every kind of committed config, plus the scheduler classes no fixture folder ships.
const CONFIG_SEEDS: [&[u8]; 15] = [
    include_bytes!("fixtures/tiny-sd/model_index.json"),
    include_bytes!("fixtures/tiny-sd/unet/config.json"),
    include_bytes!("fixtures/unets/no-mid/config.json"),
    include_bytes!("fixtures/tiny-flow/unet/config.json"),
    include_bytes!("fixtures/tiny-sd/text_encoder/config.json"),
    include_bytes!("fixtures/tiny-bert/text_encoder/config.json"),
    include_bytes!("fixtures/tiny-sd/tokenizer/tokenizer_config.json"),
    include_bytes!("fixtures/tiny-bert/tokenizer/tokenizer_config.json"),
    include_bytes!("fixtures/tiny-sd/vae/config.json"),
    include_bytes!("fixtures/tiny-taesd/config.json"),
    include_bytes!("fixtures/tiny-sd/scheduler/scheduler_config.json"),
    include_bytes!("fixtures/tiny-flow/scheduler/scheduler_config.json"),
    br#"{"_class_name": "LCMScheduler", "num_train_timesteps": 1000, "original_inference_steps": 50}"#,
    br#"{"_class_name": "DDIMScheduler", "timestep_spacing": "trailing", "rescale_betas_zero_snr": true}"#,
    br#"{"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true, "trained_betas": [0.1, 0.2]}"#,
];

/// Values of the wrong type, out of range or absurd, for any config field or header entry.
fn odd_value(rng: &mut Rng) -> Value {
    match rng.below(16) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 1),
        2 => json!(-1 - rng.below(1000) as i64),
        3 => json!(u64::MAX),
        4 => json!(1e30),
        5 => json!(0),
        6 => json!(rng.below(70)),
        7 => json!(0.5),
        8 => json!("x"),
        9 => json!(""),
        10 => json!([]),
        11 => json!({}),
        12 => json!([rng.below(5), rng.next()]),
        13 => json!(usize::MAX / 3),
        14 => Value::Array((0..rng.below(100)).map(|_| json!(32)).collect()),
        _ => json!(1u64 << (rng.below(40) + 20)),
    }
}

/// Replaces one random node of `v` (any depth) with an odd value, or removes an object key.
fn mutate_value(rng: &mut Rng, v: &mut Value) {
    let n = match v {
        Value::Object(m) if !m.is_empty() => m.len(),
        Value::Array(a) if !a.is_empty() => a.len(),
        _ => {
            *v = odd_value(rng);
            return;
        }
    };
    let i = rng.below(n);
    let stop = rng.below(3) == 0;
    match v {
        Value::Object(m) => {
            let key = m.keys().nth(i).unwrap().clone();
            match rng.below(8) {
                0 => drop(m.remove(&key)),
                _ if stop => drop(m.insert(key, odd_value(rng))),
                _ => mutate_value(rng, m.get_mut(&key).unwrap()),
            }
        }
        Value::Array(a) => {
            if stop { a[i] = odd_value(rng) } else { mutate_value(rng, &mut a[i]) }
        }
        _ => unreachable!(),
    }
}

/// Byte-level damage: flips, overwrites, truncation, appended or removed bytes.
fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>, hot: usize) {
    if b.is_empty() {
        b.push(rng.next() as u8);
        return;
    }
    let at = if rng.below(4) > 0 { rng.below(hot.clamp(1, b.len())) } else { rng.below(b.len()) };
    match rng.below(6) {
        0 => b[at] ^= 1 << rng.below(8),
        1 => b[at] = rng.next() as u8,
        2 => b.truncate(at),
        3 => b.extend((0..1 + rng.below(9)).map(|_| rng.next() as u8)),
        4 => drop(b.remove(at)),
        _ => b.insert(at, rng.next() as u8),
    }
}

/// A safetensors file made of `data` and a header JSON padded with spaces to a multiple of 8,
/// with the length field off by `skew`.
fn wrap(header: &str, data: &[u8], skew: i64) -> Vec<u8> {
    let padded = format!("{header:<w$}", w = header.len().div_ceil(8) * 8);
    let mut out = (padded.len() as i64 + skew).max(0).to_le_bytes().to_vec();
    out.extend_from_slice(padded.as_bytes());
    out.extend_from_slice(data);
    out
}

/// One mutated safetensors file: structural edits of the header (dtype, shape, offsets, keys,
/// metadata, length field) or raw damage of the header and length bytes.
fn mutated_safetensors(rng: &mut Rng) -> Vec<u8> {
    let seed = SAFETENSORS_SEEDS[rng.below(SAFETENSORS_SEEDS.len())];
    let n = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&seed[8..8 + n]).unwrap();
    let mut data = seed[8 + n..].to_vec();
    if rng.below(10) == 0 {
        // Valid: the same tensors behind a header re-serialised with other padding.
        let header = format!("{header}{}", " ".repeat(rng.below(24)));
        return wrap(&header, &data, 0);
    }
    if rng.below(4) == 0 {
        let mut bytes = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            mutate_bytes(rng, &mut bytes, 8 + n);
        }
        return bytes;
    }
    let keys: Vec<String> = header.as_object().unwrap().keys().cloned().collect();
    for _ in 0..1 + rng.below(3) {
        let key = &keys[rng.below(keys.len())];
        let entry = &mut header[key.as_str()];
        let Some(fields) = entry.as_object_mut() else { continue };
        match rng.below(9) {
            0 => drop(fields.insert(
                "dtype".into(),
                json!(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "C64", "F4", "f32"][rng.below(10)]),
            )),
            1 | 2 => {
                if let Some([a, b]) = fields.get_mut("data_offsets").and_then(Value::as_array_mut).map(|v| &mut v[..]) {
                    let d = if rng.below(2) == 0 { a } else { b };
                    *d = json!((d.as_i64().unwrap_or(0) + rng.below(17) as i64 - 8).max(0));
                }
            }
            3 => drop(fields.insert("shape".into(), json!([rng.below(4), rng.below(1 << 20), usize::MAX / (1 + rng.below(8))]))),
            4 => {
                let clone = entry.clone();
                header[format!("{key}.copy")] = clone;
            }
            5 => data.truncate(rng.below(data.len() + 1)),
            6 => data.extend(std::iter::repeat_n(0, 1 + rng.below(8))),
            _ => mutate_value(rng, entry),
        }
    }
    let skew = if rng.below(3) == 0 { rng.below(17) as i64 - 8 } else { 0 };
    wrap(&header.to_string(), &data, skew)
}

/// Runs `check` on `cases` inputs from `make`; `check` says how many parsers accepted the
/// input. Prints the counts and the time taken, and returns the number of accepting cases (so
/// a test can tell its mutator still reaches the paths behind a successful parse).
fn run(what: &str, cases: usize, mut make: impl FnMut(&mut Rng) -> Vec<u8>, check: impl Fn(&[u8]) -> usize) -> usize {
    let t = Instant::now();
    let mut rng = Rng::new(0x5eed ^ what.len() as u64);
    let (mut bytes, mut accepted) = (0, 0);
    for case in 0..cases {
        let input = make(&mut rng);
        bytes += input.len();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        let n = r.unwrap_or_else(|_| panic!("{what}: case {case} failed on input {:?}", String::from_utf8_lossy(&input)));
        accepted += (n > 0) as usize;
    }
    println!("fuzz_smoke {what}: {cases} cases ({} KiB), {accepted} accepted, in {:.2?}, no panic", bytes / 1024, t.elapsed());
    accepted
}

#[test]
fn safetensors_header() {
    let valid = run("safetensors_header", 20_000, mutated_safetensors, |b| checks::header(b) as usize);
    // Mostly broken files, but enough valid ones to reach the checks behind a good parse.
    assert!((1000..10_000).contains(&valid), "{valid} of 20000 mutated files valid: the mutator is off");
}

#[test]
fn tensor_stream() {
    let valid = run(
        "tensor_stream",
        10_000,
        |rng| {
            // Half the files valid: the random chunking is what is fuzzed here.
            let mut input = rng.next().to_le_bytes().to_vec();
            if rng.below(2) == 0 {
                input.extend_from_slice(SAFETENSORS_SEEDS[rng.below(SAFETENSORS_SEEDS.len())]);
            } else {
                input.extend(mutated_safetensors(rng));
            }
            input
        },
        |b| checks::stream(b) as usize,
    );
    assert!((3000..8000).contains(&valid), "{valid} of 10000 files valid: the generator is off");
}

#[test]
fn configs() {
    let tally = std::cell::RefCell::new([0usize; 8]);
    let accepted = run(
        "configs",
        20_000,
        |rng| {
            let seed = CONFIG_SEEDS[rng.below(CONFIG_SEEDS.len())];
            if rng.below(5) == 0 {
                let mut bytes = seed.to_vec();
                mutate_bytes(rng, &mut bytes, usize::MAX);
                return bytes;
            }
            let mut v: Value = serde_json::from_slice(seed).unwrap();
            for _ in 0..1 + rng.below(3) {
                mutate_value(rng, &mut v);
            }
            v.to_string().into_bytes()
        },
        |b| {
            let bits = checks::configs(b);
            for (i, n) in tally.borrow_mut().iter_mut().enumerate() {
                *n += (bits >> i & 1) as usize;
            }
            bits as usize
        },
    );
    // Most mutations keep the JSON well-formed, and each parser accepts some: the mutator
    // reaches every validator, and past it.
    assert!(accepted > 10_000, "{accepted} of 20000 mutated configs parsed: the mutator is off");
    let tally = tally.into_inner();
    println!("accepted per parser: {:?}", checks::CONFIG_PARSERS.iter().zip(tally).collect::<Vec<_>>());
    assert!(tally.iter().all(|&n| n > 100), "a parser never accepts: {tally:?}");
}

/// Characters that stress normalisation and pre-tokenisation: ASCII, accents and combining
/// marks, CJK and full-width punctuation, emoji with joiners, controls, RTL, special tokens.
fn random_prompt(rng: &mut Rng, max_chars: usize) -> String {
    const PIECES: [&str; 14] = [
        " ", "a", "Cat", "\t\n", "é", "e\u{301}", "床前明月光", "，！「」", "🐱‍👤", "\u{200b}\u{feff}", "\u{0}\u{7f}", "שלום",
        "<|endoftext|>", "[SEP][cls]",
    ];
    let len = rng.below(max_chars + 1);
    let mut s = String::new();
    while s.chars().count() < len {
        if rng.below(3) == 0 {
            s.extend(char::from_u32(rng.below(0x11_0000) as u32));
        } else {
            s.push_str(PIECES[rng.below(PIECES.len())]);
        }
    }
    s
}

#[test]
fn tokenizer() {
    let toks = checks::tokenizers(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    run(
        "tokenizer",
        3000,
        |rng| {
            let mut input = vec![rng.next() as u8];
            if rng.below(4) == 0 {
                input.extend((0..rng.below(400)).map(|_| rng.next() as u8));
            } else {
                input.extend(random_prompt(rng, 300).into_bytes());
            }
            input
        },
        |input| checks::prompt(&toks, input).is_some() as usize,
    );
}

#[test]
fn tokenizer_on_very_long_prompts() {
    // 256 KiB as one word, as words, and as mixed text: bounded memory, truncated.
    let toks = checks::tokenizers(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    let mut rng = Rng::new(7);
    let prompts = ["a".repeat(1 << 18), "cat ".repeat(1 << 16), "猫".repeat(1 << 16), random_prompt(&mut rng, 1 << 16)];
    for (i, tok) in toks.iter().enumerate() {
        for p in &prompts {
            let t = Instant::now();
            let mut input = vec![i as u8];
            input.extend_from_slice(p.as_bytes());
            let (enc, peak) = checks::prompt(&toks, &input).unwrap();
            // WordPiece maps a word over 100 characters to one [UNK]: nothing to truncate.
            let one_unk = tok.kind() == TokenizerKind::BertWordPiece && !p.contains(' ') && p.is_ascii();
            assert!(enc.truncated > 0 || one_unk, "a {} byte prompt was not truncated", p.len());
            println!(
                "tokenizer {i}: {} bytes in {:.2?}, {} tokens dropped, peak {} bytes per prompt byte",
                p.len(),
                t.elapsed(),
                enc.truncated,
                peak / p.len()
            );
        }
    }
}
