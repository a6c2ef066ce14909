#![no_main]

use std::sync::LazyLock;

use inkstone::text::PromptTokenizer;
use inkstone_fuzz::checks;

/// Built once: loading the vocabularies is not what is fuzzed here.
static TOKENIZERS: LazyLock<Vec<PromptTokenizer>> =
    LazyLock::new(|| checks::tokenizers(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::prompt(&TOKENIZERS, data);
});
