//! Prompts longer than `model_max_length` are cut as diffusers cuts them (right truncation, the
//! end token kept), and `Encoded::truncated` says how many prompt tokens were dropped so the
//! caller can warn.

use crate::common;

use inkstone::source::DirSource;
use inkstone::text::PromptTokenizer;

/// Prompt tokens without any truncation or special tokens, counted independently of `encode`.
fn full_length(tok: &PromptTokenizer, prompt: &str) -> usize {
    let mut plain = tok.inner().clone();
    plain.with_truncation(None).unwrap();
    plain.with_padding(None);
    plain.encode(prompt, false).unwrap().len()
}

#[test]
fn truncated_counts_the_dropped_prompt_tokens() {
    for (root, dir) in [("tiny-sd", "tokenizer"), ("tiny-bert", "tokenizer"), ("tokenizers", "bert-json")] {
        let tok = PromptTokenizer::load(&DirSource::new(common::fixture(root)).unwrap(), dir).unwrap();
        let room = tok.max_length() - 2; // BOS/EOS or [CLS]/[SEP]
        // A piece of text that is exactly one token in this vocabulary.
        let unit = ["cat ", "猫", "a "].into_iter().find(|u| full_length(&tok, u) == 1).unwrap();
        for words in [0, 3, room - 1, room, room + 1, room + 40, 3 * room] {
            let prompt = unit.repeat(words);
            let n = full_length(&tok, &prompt);
            let enc = tok.encode(&prompt).unwrap();
            assert_eq!(enc.truncated, n.saturating_sub(room), "{root}/{dir}, {words} words ({n} tokens)");
            let kept = enc.attention_mask.iter().filter(|&&m| m == 1).count() - 2;
            assert_eq!(kept + enc.truncated, n, "{root}/{dir}: kept + dropped = all tokens");
        }
        // A prompt of exactly `room` tokens fits; one more is cut, and the end token stays last.
        let fits = tok.encode(&unit.repeat(room)).unwrap();
        let cut = tok.encode(&unit.repeat(room + 1)).unwrap();
        assert_eq!((fits.truncated, cut.truncated), (0, 1), "{root}/{dir}");
        assert_eq!(cut.ids.last(), fits.ids.last(), "{root}/{dir}: end token kept");
    }
}

#[test]
fn model_max_length_too_small_for_the_special_tokens_is_an_error() {
    let mut src = inkstone::source::MemorySource { name: "m".into(), ..Default::default() };
    let dir = common::fixture("tiny-bert/tokenizer");
    src.files.insert("tokenizer/vocab.txt".into(), std::fs::read(dir.join("vocab.txt")).unwrap().into());
    src.files.insert("tokenizer/tokenizer_config.json".into(), br#"{"model_max_length": 1}"#.to_vec().into());
    let e = PromptTokenizer::load(&src, "tokenizer").unwrap_err().to_string();
    assert!(e.contains("tokenizer/tokenizer_config.json") && e.contains("model_max_length") && e.contains("special tokens"), "{e}");
}
