//! Parity of the text side with transformers (tools/reference/text.py): token ids of both
//! tokenizer kinds from both folder layouts, and CLIP / BERT encoder outputs.

use crate::common;

use std::sync::Arc;

use burn::tensor::{DType, Int, Tensor, TensorData};
use common::{assert_close, device, fixture, reference, tiny_sd};
use inkstone::Error;
use inkstone::source::{DirSource, MemorySource, ModelSource};
use inkstone::text::{PromptTokenizer, TextEncoder};

/// Must equal `PROMPTS` in tools/reference/text.py (same order).
fn prompts() -> Vec<String> {
    let long = "A very detailed painting of a cat sitting on a wooden chair, ".repeat(12) + &"春眠不觉晓处处闻啼鸟".repeat(30);
    vec![
        "a photo of a cat".into(),
        "床前明月光，疑是地上霜".into(),
        "你好，世界！（测试）「引号」🐱🎨 emoji：ok？".into(),
        "".into(),
        long,
        "  A   PHOTO\tof a Café  naïve CAT\n".into(),
        "hi!! wow! <|endoftext|> <|ENDOFTEXT|> [SEP] [cls]".into(),
    ]
}

fn dir(rel: &str) -> DirSource {
    DirSource::new(fixture(rel)).unwrap()
}

/// Encodes every prompt and compares ids and masks with the reference case, row by row.
fn check_ids(tok: &PromptTokenizer, case: &str) -> Vec<Vec<u32>> {
    let r = reference(case);
    let [n, len]: [usize; 2] = r.shape("ids").try_into().unwrap();
    let prompts = prompts();
    assert_eq!(n, prompts.len(), "{case}: prompt list out of sync with text.py");
    assert_eq!(tok.max_length(), len, "{case}: max_length");
    let (want_ids, want_mask) = (r.i64s("ids"), r.i64s("mask"));
    let mut all = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let enc = tok.encode(prompt).unwrap();
        let ids: Vec<i64> = enc.ids.iter().map(|&v| v as i64).collect();
        let mask: Vec<i64> = enc.attention_mask.iter().map(|&v| v as i64).collect();
        assert_eq!(ids, want_ids[i * len..(i + 1) * len], "{case}: ids of prompt {i} {prompt:?}");
        assert_eq!(mask, want_mask[i * len..(i + 1) * len], "{case}: mask of prompt {i} {prompt:?}");
        all.push(enc.ids);
    }
    println!("{case}: {n} prompts, ids and masks equal ({len} tokens each)");
    all
}

#[test]
fn clip_ids_from_vocab_files_sd1() {
    let tok = PromptTokenizer::load(&tiny_sd(), "tokenizer").unwrap();
    let ids = check_ids(&tok, "text_tokens_clip");
    // SD 1.x pads with <|endoftext|>; the long prompt keeps EOS as its last token.
    assert_eq!(ids[0][7], 49407);
    assert_eq!(*ids[4].last().unwrap(), 49407);
}

#[test]
fn clip_ids_from_vocab_files_open_clip_pad() {
    let tok = PromptTokenizer::load(&dir("tiny-clip-proj"), "tokenizer").unwrap();
    let ids = check_ids(&tok, "text_tokens_clip_small");
    assert_eq!(ids[0][7], 0, "Open-CLIP style repos pad with `!` (id 0)");
}

#[test]
fn clip_ids_from_tokenizer_json() {
    let tok = PromptTokenizer::load(&dir("tokenizers"), "clip-json").unwrap();
    check_ids(&tok, "text_tokens_clip_small");
}

#[test]
fn bert_ids_from_vocab_txt() {
    let tok = PromptTokenizer::load(&dir("tiny-bert"), "tokenizer").unwrap();
    let ids = check_ids(&tok, "text_tokens_bert");
    // The emoji are not in the vocabulary: [UNK] (100), as transformers, not an error.
    assert!(ids[2].contains(&100));
    assert_eq!(ids[4][76], 102, "truncation keeps [SEP] last");
}

#[test]
fn bert_ids_from_tokenizer_json_max_512() {
    let tok = PromptTokenizer::load(&dir("tokenizers"), "bert-json").unwrap();
    assert_eq!(tok.max_length(), 512);
    check_ids(&tok, "text_tokens_bert_json");
}

#[test]
fn tokenizer_folder_without_vocabulary_is_an_error() {
    let err = PromptTokenizer::load(&dir("tokenizers"), "no-vocab").unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Error::MissingFile { .. }));
    assert!(msg.contains("tokenizers/no-vocab"), "names the folder: {msg}");
    for file in ["tokenizer.json", "vocab.json", "merges.txt", "vocab.txt"] {
        assert!(msg.contains(file), "names {file}: {msg}");
    }
}

fn ids_tensor(rows: &[Vec<u32>]) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), &device())
}

/// Tokenizes the reference batch with our tokenizer and checks it against the stored ids.
fn batch(src: &dyn ModelSource, prompts: &[&str], case: &str) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let tok = PromptTokenizer::load(src, "tokenizer").unwrap();
    let enc: Vec<_> = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
    let ids = ids_tensor(&enc.iter().map(|e| e.ids.clone()).collect::<Vec<_>>());
    let mask = ids_tensor(&enc.iter().map(|e| e.attention_mask.clone()).collect::<Vec<_>>());
    let want: Vec<i64> = reference(case).i64s("ids");
    assert_eq!(ids.clone().into_data().iter::<i64>().collect::<Vec<_>>(), want, "{case}: ids");
    (ids, mask)
}

#[test]
fn clip_text_model_matches_transformers() {
    let src = tiny_sd();
    let (ids, mask) = batch(&src, &["a photo of a cat", "床前明月光，疑是地上霜"], "text_encoder_clip");
    let encoder = TextEncoder::load(&src, "text_encoder", &device(), DType::F32).unwrap();
    let TextEncoder::Clip(model) = &encoder else { panic!("expected CLIP") };
    assert!(model.text_projection.is_none());
    let r = reference("text_encoder_clip");
    let out = model.forward(ids.clone(), None);
    assert_close("clip last_hidden_state", out.last_hidden_state, r.tensor("last_hidden_state"), 1e-4);
    assert_close("clip pooler_output", out.pooler_output, r.tensor("pooler_output"), 1e-4);
    assert_close("clip penultimate hidden state", out.penultimate, r.tensor("penultimate"), 1e-4);
    assert_eq!(encoder.hidden_size(), 32);
    assert_close("clip encode()", encoder.encode(ids.clone(), mask), r.tensor("last_hidden_state"), 1e-4);
    let skip1 = model.prompt_embeds(ids.clone(), None, 1).unwrap();
    assert_close("clip prompt_embeds clip_skip=1", skip1, r.tensor("clip_skip_1"), 1e-4);
    let skip0 = model.prompt_embeds(ids.clone(), None, 0).unwrap();
    assert_close("clip prompt_embeds clip_skip=0", skip0, r.tensor("last_hidden_state"), 1e-4);
    let err = model.prompt_embeds(ids, None, 3).unwrap_err().to_string();
    assert!(err.contains("clip_skip 3"), "{err}");
}

#[test]
fn clip_pooling_rule_follows_eos_token_id() {
    // Legacy configs (eos_token_id == 2) pool at the argmax of the ids; others at the first
    // position of eos_token_id (320 = "a</w>": position 1 of row 0, absent from row 1 → 0).
    let disk = tiny_sd();
    let r = reference("text_encoder_clip");
    for eos in [2, 320] {
        let mut src = MemorySource { name: format!("tiny-sd eos {eos}"), ..Default::default() };
        for file in disk.list("text_encoder") {
            let path = format!("text_encoder/{file}");
            src.files.insert(path.clone(), disk.read(&path).unwrap());
        }
        let mut config: serde_json::Value = serde_json::from_slice(&src.files["text_encoder/config.json"]).unwrap();
        config["eos_token_id"] = eos.into();
        src.files.insert("text_encoder/config.json".into(), Arc::from(serde_json::to_vec(&config).unwrap()));
        let TextEncoder::Clip(model) = TextEncoder::load(&src, "text_encoder", &device(), DType::F32).unwrap() else { panic!() };
        let pooled = model.forward(r.int_tensor("ids"), None).pooler_output;
        assert_close(&format!("clip pooler_output eos_token_id={eos}"), pooled, r.tensor(&format!("pooler_output_eos{eos}")), 1e-4);
    }
}

#[test]
fn clip_with_projection_from_hub_style_checkpoint() {
    // Keys carry `text_model.` and an I64 `position_ids` buffer; gelu; Open-CLIP pad.
    let src = dir("tiny-clip-proj");
    let (ids, _) = batch(&src, &["a photo of a cat", "床前明月光，疑是地上霜"], "text_encoder_clip_proj");
    let TextEncoder::Clip(model) = TextEncoder::load(&src, "text_encoder", &device(), DType::F32).unwrap() else {
        panic!("expected CLIP")
    };
    let r = reference("text_encoder_clip_proj");
    let out = model.forward(ids, None);
    assert_close("clip-proj last_hidden_state", out.last_hidden_state, r.tensor("last_hidden_state"), 1e-4);
    assert_close("clip-proj penultimate", out.penultimate, r.tensor("penultimate"), 1e-4);
    assert_close("clip-proj text_embeds", out.text_embeds.unwrap(), r.tensor("text_embeds"), 1e-4);
}

#[test]
fn bert_model_matches_transformers_with_and_without_mask() {
    let src = dir("tiny-bert");
    let (ids, mask) = batch(&src, &["床前明月光，疑是地上霜", "a photo of a cat 🐱"], "text_encoder_bert");
    let r = reference("text_encoder_bert");
    assert_eq!(mask.clone().into_data().iter::<i64>().collect::<Vec<_>>(), r.i64s("mask"));
    let encoder = TextEncoder::load(&src, "text_encoder", &device(), DType::F32).unwrap();
    let TextEncoder::Bert(model) = &encoder else { panic!("expected BERT") };

    let plain = model.forward(ids.clone(), None);
    assert_close("bert last_hidden_state (no mask)", plain.last_hidden_state, r.tensor("last_hidden_state"), 1e-4);
    assert_close("bert pooler_output (no mask)", plain.pooler_output.unwrap(), r.tensor("pooler_output"), 1e-4);
    let masked = model.forward(ids.clone(), Some(mask.clone()));
    let want_masked = r.tensor::<3>("last_hidden_state_masked");
    assert_close("bert last_hidden_state (mask)", masked.last_hidden_state, want_masked.clone(), 1e-4);
    assert_close("bert pooler_output (mask)", masked.pooler_output.unwrap(), r.tensor("pooler_output_masked"), 1e-4);

    // The config has no `use_attention_mask`: diffusers passes no mask.
    assert_close("bert encode() without use_attention_mask", encoder.encode(ids, mask), r.tensor("last_hidden_state"), 1e-4);
}

/// tiny-bert held in memory, with `config.json` edited by `edit`.
fn bert_in_memory(edit: impl Fn(&mut serde_json::Value)) -> MemorySource {
    let disk = dir("tiny-bert");
    let mut src = MemorySource { name: "tiny-bert (memory)".into(), ..Default::default() };
    for folder in ["text_encoder", "tokenizer"] {
        for file in disk.list(folder) {
            let path = format!("{folder}/{file}");
            src.files.insert(path.clone(), disk.read(&path).unwrap());
        }
    }
    let mut config: serde_json::Value = serde_json::from_slice(&src.files["text_encoder/config.json"]).unwrap();
    edit(&mut config);
    src.files.insert("text_encoder/config.json".into(), Arc::from(serde_json::to_vec(&config).unwrap()));
    src
}

#[test]
fn bert_use_attention_mask_config_passes_the_mask() {
    let src = bert_in_memory(|c| c["use_attention_mask"] = true.into());
    let (ids, mask) = batch(&src, &["床前明月光，疑是地上霜", "a photo of a cat 🐱"], "text_encoder_bert");
    let encoder = TextEncoder::load(&src, "text_encoder", &device(), DType::F32).unwrap();
    let r = reference("text_encoder_bert");
    assert_close("bert encode() with use_attention_mask", encoder.encode(ids, mask), r.tensor("last_hidden_state_masked"), 1e-4);
}

#[test]
fn config_errors_name_the_file_they_were_read_from() {
    let src = bert_in_memory(|c| c["hidden_act"] = "swish".into());
    let files = src.files.into_iter().map(|(k, v)| (k.replace("text_encoder/", "text_encoder_2/"), v)).collect();
    let src = MemorySource { files, ..src };
    let msg = TextEncoder::load(&src, "text_encoder_2", &device(), DType::F32).unwrap_err().to_string();
    assert_eq!(msg, "text_encoder_2/config.json: unsupported value \"swish\" for `hidden_act`");
}

#[test]
fn unknown_text_encoder_architecture_is_an_error() {
    let src = bert_in_memory(|c| c["architectures"] = serde_json::json!(["T5EncoderModel"]));
    let msg = TextEncoder::load(&src, "text_encoder", &device(), DType::F32).unwrap_err().to_string();
    println!("{msg}");
    assert!(msg.contains("text_encoder/config.json") && msg.contains("T5EncoderModel"), "{msg}");
}

#[test]
fn leftover_tensors_other_than_buffers_are_reported() {
    // A checkpoint with fewer layers than the config says loads all its tensors, but a config
    // with fewer layers than the checkpoint leaves layer 1 over: that must be an error.
    let src = bert_in_memory(|c| c["num_hidden_layers"] = 1.into());
    let msg = TextEncoder::load(&src, "text_encoder", &device(), DType::F32).unwrap_err().to_string();
    println!("{msg}");
    assert!(msg.contains("unexpected tensors") && msg.contains("encoder.layer.1."), "{msg}");
    assert!(!msg.contains("position_ids"), "the position_ids buffer is ignored: {msg}");
}

#[test]
fn unusable_model_max_length_is_an_error() {
    // transformers writes 1e30 for "no limit"; padding to it is impossible.
    let mut src = bert_in_memory(|_| {});
    let mut config: serde_json::Value = serde_json::from_slice(&src.files["tokenizer/tokenizer_config.json"]).unwrap();
    config["model_max_length"] = serde_json::json!(1e30);
    src.files.insert("tokenizer/tokenizer_config.json".into(), Arc::from(serde_json::to_vec(&config).unwrap()));
    let msg = PromptTokenizer::load(&src, "tokenizer").unwrap_err().to_string();
    println!("{msg}");
    assert!(msg.contains("tokenizer/tokenizer_config.json") && msg.contains("model_max_length"), "{msg}");
}
