//! Prompt → token ids, exactly as transformers' fast tokenizers (the `tokenizers` library) do it.
//!
//! A `tokenizer/` folder comes in one of three layouts: a `tokenizer.json` (used as is), or the
//! files hub repos usually ship instead: `vocab.json` + `merges.txt` (CLIP byte-level BPE) or
//! `vocab.txt` (BERT WordPiece), next to `tokenizer_config.json` / `special_tokens_map.json`.
//! For the vocabulary-file layouts we build the same pipeline transformers 5's
//! `CLIPTokenizer` / `BertTokenizer` constructors build (and write to `tokenizer.json` on
//! `save_pretrained`), so ids are identical whichever layout a repo ships.

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{BertNormalizer, Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, SplitDelimiterBehavior, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::config::{TokenizerConfig, from_json};
use crate::error::{Error, Result};
use crate::folder::{self, TokenizerFiles};
use crate::source::ModelSource;

/// transformers' CLIP pre-tokenization regex (OpenAI's `simple_tokenizer` pattern).
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Larger `model_max_length` values mean "no limit" in transformers (it writes 1e30); padding
/// to them is impossible, so such a folder cannot be used as diffusers uses it.
const MAX_SANE_LENGTH: f64 = 1_000_000.0;

/// The vocabulary map type the `tokenizers` model builders take (`ahash::AHashMap`), obtained
/// without naming it so `ahash` need not become a direct dependency.
macro_rules! model_vocab {
    ($entries:expr $(,)?) => {{
        let mut vocab = tokenizers::AddedVocabulary::new().get_vocab().clone();
        vocab.extend($entries);
        vocab
    }};
}

/// One tokenized prompt, padded/truncated to the tokenizer's `model_max_length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    /// Prompt tokens dropped to fit `model_max_length` (0 when the prompt fits), so callers can
    /// warn as diffusers does ("The following part of your input was truncated ...").
    pub truncated: usize,
}

/// Which vocabulary family a tokenizer folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Byte-level BPE with `</w>` suffixes (OpenAI / Open CLIP).
    ClipBpe,
    /// WordPiece with `##` continuations (BERT, Chinese BERT towers).
    BertWordPiece,
}

/// The tokenizer of a diffusers pipeline, configured as `encode_prompt` calls it
/// (`padding="max_length", max_length=model_max_length, truncation=True`).
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    /// The same pipeline without truncation and padding: counts the tokens a prompt really has.
    untruncated: Tokenizer,
    kind: TokenizerKind,
    max_length: usize,
    /// Tokens the post-processor adds around a prompt (BOS/EOS, [CLS]/[SEP]).
    specials: usize,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer").field("kind", &self.kind).field("max_length", &self.max_length).finish()
    }
}

impl PromptTokenizer {
    /// Loads `<dir>/tokenizer.json` if present, otherwise builds the tokenizer from the
    /// vocabulary files; pads/truncates to `model_max_length` with the pad token the files name.
    pub fn load(src: &dyn ModelSource, dir: &str) -> Result<Self> {
        let config = read_config(src, dir)?;
        let (mut tokenizer, kind) = match folder::tokenizer_files(src, dir)?.0 {
            TokenizerFiles::Json => from_tokenizer_json(src, &format!("{dir}/tokenizer.json"))?,
            TokenizerFiles::ClipVocab => (clip_bpe(src, dir, &config)?, TokenizerKind::ClipBpe),
            TokenizerFiles::BertVocab => (bert_wordpiece(src, dir, &config)?, TokenizerKind::BertWordPiece),
        };
        let max_length = max_length(&config, &tokenizer, dir)?;
        let pad_token = config
            .pad_token
            .as_ref()
            .map(|t| t.content().to_string())
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_token.clone()))
            .unwrap_or_else(|| default_pad(kind).to_string());
        let pad_id = token_id(&tokenizer, &pad_token, dir, "pad_token")?;
        let specials = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        if max_length < specials {
            return Err(Error::UnsupportedConfig {
                file: format!("{dir}/tokenizer_config.json"),
                field: "model_max_length".into(),
                value: max_length.to_string(),
                hint: Some(format!("the {specials} special tokens around every prompt do not fit")),
            });
        }
        let mut untruncated = tokenizer.clone();
        untruncated.with_truncation(None).map_err(tok_err(dir))?;
        untruncated.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(tok_err(dir))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self { tokenizer, untruncated, kind, max_length, specials })
    }

    /// Ids and attention mask of `prompt`, with BOS/EOS ([CLS]/[SEP]), truncated so the end
    /// token is kept, padded to [`Self::max_length`]; `truncated` counts the tokens cut off.
    pub fn encode(&self, prompt: &str) -> Result<Encoded> {
        let err = |e: tokenizers::Error| Error::Tokenizer(format!("encoding {:?}: {e}", Shortened(prompt)));
        let enc = self.tokenizer.encode(prompt, true).map_err(err)?;
        // Right truncation keeps the first `max_length - specials` prompt tokens.
        let tokens = self.untruncated.encode(prompt, false).map_err(err)?.len();
        let truncated = tokens.saturating_sub(self.max_length - self.specials);
        Ok(Encoded { ids: enc.get_ids().to_vec(), attention_mask: enc.get_attention_mask().to_vec(), truncated })
    }

    /// `model_max_length` from `tokenizer_config.json` (77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The underlying `tokenizers` pipeline (for inspection and decoding).
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// A prompt in an error message: the first 100 characters (a prompt can be megabytes long).
struct Shortened<'a>(&'a str);

impl std::fmt::Debug for Shortened<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(100) {
            Some((i, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..i], self.0.len()),
            None => write!(f, "{:?}", self.0),
        }
    }
}

fn tok_err(dir: &str) -> impl Fn(tokenizers::Error) -> Error + '_ {
    move |e| Error::Tokenizer(format!("{dir}: {e}"))
}

/// `tokenizer_config.json` with unset fields filled from `special_tokens_map.json`; both are
/// optional (transformers falls back to the class defaults).
fn read_config(src: &dyn ModelSource, dir: &str) -> Result<TokenizerConfig> {
    let read = |name: &str| -> Result<TokenizerConfig> {
        let path = format!("{dir}/{name}");
        if src.exists(&path) { from_json(&path, &src.read(&path)?) } else { Ok(TokenizerConfig::default()) }
    };
    Ok(read("tokenizer_config.json")?.merge(read("special_tokens_map.json")?))
}

fn from_tokenizer_json(src: &dyn ModelSource, path: &str) -> Result<(Tokenizer, TokenizerKind)> {
    let tokenizer = Tokenizer::from_bytes(src.read(path)?).map_err(|e| Error::Tokenizer(format!("{path}: {e}")))?;
    let kind = match tokenizer.get_model() {
        tokenizers::ModelWrapper::BPE(_) => TokenizerKind::ClipBpe,
        tokenizers::ModelWrapper::WordPiece(_) => TokenizerKind::BertWordPiece,
        _ => return Err(Error::unsupported(path, "model.type", "a model other than BPE or WordPiece")),
    };
    Ok((tokenizer, kind))
}

fn max_length(config: &TokenizerConfig, tokenizer: &Tokenizer, dir: &str) -> Result<usize> {
    let file = format!("{dir}/tokenizer_config.json");
    match config.model_max_length {
        Some(n) if (1.0..=MAX_SANE_LENGTH).contains(&n) && n.fract() == 0.0 => Ok(n as usize),
        Some(n) => Err(Error::UnsupportedConfig {
            file,
            field: "model_max_length".into(),
            value: format!("{n:?}"),
            hint: Some("prompts are padded to this length; it must be a positive token count".into()),
        }),
        None => tokenizer.get_truncation().map(|t| t.max_length).ok_or_else(|| Error::MissingFile {
            path: file,
            hint: Some("model_max_length is needed to pad prompts".into()),
        }),
    }
}

fn default_pad(kind: TokenizerKind) -> &'static str {
    match kind {
        TokenizerKind::ClipBpe => "<|endoftext|>",
        TokenizerKind::BertWordPiece => "[PAD]",
    }
}

fn token_id(tokenizer: &Tokenizer, token: &str, dir: &str, field: &str) -> Result<u32> {
    tokenizer.token_to_id(token).ok_or_else(|| Error::UnsupportedConfig {
        file: format!("{dir}/tokenizer_config.json"),
        field: field.into(),
        value: format!("{token:?}"),
        hint: Some("the token is not in the vocabulary".into()),
    })
}

/// A special token the config names, or the tokenizer class default.
fn special(named: Option<&str>, default: &str) -> String {
    named.unwrap_or(default).to_string()
}

/// transformers registers every named special token as an added token: matched verbatim in
/// the prompt before normalisation and never split (a repeated token is added once).
fn add_specials(tokenizer: &mut Tokenizer, tokens: &[&str]) {
    let added: Vec<AddedToken> =
        tokens.iter().map(|t| AddedToken::from(t.to_string(), true).normalized(false)).collect();
    tokenizer.add_special_tokens(&added);
}

/// `CLIPTokenizer(vocab=vocab.json, merges=merges.txt)`: NFC + whitespace collapse + lowercase,
/// the CLIP split regex, byte-level BPE with a `</w>` word suffix, `<|startoftext|> … <|endoftext|>`.
fn clip_bpe(src: &dyn ModelSource, dir: &str, config: &TokenizerConfig) -> Result<Tokenizer> {
    let vocab_path = format!("{dir}/vocab.json");
    let vocab: HashMap<String, u32> = from_json(&vocab_path, &src.read(&vocab_path)?)?;
    let vocab = model_vocab!(vocab);
    let merges = parse_merges(&format!("{dir}/merges.txt"), &src.read(&format!("{dir}/merges.txt"))?)?;
    let unk = special(config.unk_token.as_ref().map(|t| t.content()), "<|endoftext|>");
    let bos = special(config.bos_token.as_ref().map(|t| t.content()), "<|startoftext|>");
    let eos = special(config.eos_token.as_ref().map(|t| t.content()), "<|endoftext|>");
    let pad = special(config.pad_token.as_ref().map(|t| t.content()), "<|endoftext|>");

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk.clone())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .fuse_unk(false)
        .build()
        .map_err(tok_err(dir))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let replace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(tok_err(dir))?;
    tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![NFC.into(), replace.into(), Lowercase.into()])));
    let split = Split::new(SplitPattern::Regex(CLIP_SPLIT.into()), SplitDelimiterBehavior::Removed, true)
        .map_err(tok_err(dir))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tokenizer.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    add_specials(&mut tokenizer, &[&bos, &eos, &unk, &pad]);
    let bos_id = token_id(&tokenizer, &bos, dir, "bos_token")?;
    let eos_id = token_id(&tokenizer, &eos, dir, "eos_token")?;
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new((eos, eos_id), (bos, bos_id)).trim_offsets(false).add_prefix_space(false),
    ));
    Ok(tokenizer)
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair per line.
fn parse_merges(path: &str, bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::Tokenizer(format!("{path}: not UTF-8: {e}")))?;
    text.lines()
        .enumerate()
        .filter(|(i, line)| (*i != 0 || !line.starts_with("#version")) && !line.is_empty())
        .map(|(i, line)| match line.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Ok((a.to_string(), b.to_string())),
            _ => Err(Error::Tokenizer(format!("{path}:{}: expected two tokens, got {line:?}", i + 1))),
        })
        .collect()
}

/// `BertTokenizer(vocab=vocab.txt)`: BertNormalizer (clean text, CJK characters split,
/// lower-casing and accent stripping as configured), BertPreTokenizer, WordPiece, `[CLS] … [SEP]`.
fn bert_wordpiece(src: &dyn ModelSource, dir: &str, config: &TokenizerConfig) -> Result<Tokenizer> {
    let vocab_path = format!("{dir}/vocab.txt");
    let bytes = src.read(&vocab_path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| Error::Tokenizer(format!("{vocab_path}: not UTF-8: {e}")))?;
    // As transformers' `load_vocab`: one token per line, the line number is the id (a repeated
    // token keeps its last line).
    let vocab = model_vocab!(
        text.split_inclusive('\n').enumerate().map(|(i, l)| (l.strip_suffix('\n').unwrap_or(l).to_string(), i as u32)),
    );
    let unk = special(config.unk_token.as_ref().map(|t| t.content()), "[UNK]");
    let sep = special(config.sep_token.as_ref().map(|t| t.content()), "[SEP]");
    let pad = special(config.pad_token.as_ref().map(|t| t.content()), "[PAD]");
    let cls = special(config.cls_token.as_ref().map(|t| t.content()), "[CLS]");
    let mask = mask_token(src, dir)?;

    let wordpiece = WordPiece::builder().vocab(vocab).unk_token(unk.clone()).build().map_err(tok_err(dir))?;
    let mut tokenizer = Tokenizer::new(wordpiece);
    tokenizer.with_normalizer(Some(BertNormalizer::new(
        true,
        config.tokenize_chinese_chars.unwrap_or(true),
        config.strip_accents,
        config.do_lower_case.unwrap_or(true),
    )));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    add_specials(&mut tokenizer, &[&unk, &sep, &pad, &cls, &mask]);
    let cls_id = token_id(&tokenizer, &cls, dir, "cls_token")?;
    let sep_id = token_id(&tokenizer, &sep, dir, "sep_token")?;
    let template = TemplateProcessing::builder()
        .try_single(format!("{cls}:0 $A:0 {sep}:0"))
        .and_then(|b| b.try_pair(format!("{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1")))
        .map_err(|e| Error::Tokenizer(format!("{dir}: {e}")))?
        .special_tokens(vec![(cls, cls_id), (sep, sep_id)])
        .build()
        .map_err(|e| Error::Tokenizer(format!("{dir}: {e}")))?;
    tokenizer.with_post_processor(Some(template));
    Ok(tokenizer)
}

/// `mask_token` is not a field of the shared config struct; read it directly (BERT only).
fn mask_token(src: &dyn ModelSource, dir: &str) -> Result<String> {
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = format!("{dir}/{name}");
        if src.exists(&path) {
            let value: serde_json::Value = from_json(&path, &src.read(&path)?)?;
            // A plain string or an `AddedToken` object with `content`.
            let token = value.get("mask_token").map(|t| t.get("content").unwrap_or(t));
            if let Some(token) = token.and_then(|t| t.as_str()) {
                return Ok(token.to_string());
            }
        }
    }
    Ok("[MASK]".into())
}
