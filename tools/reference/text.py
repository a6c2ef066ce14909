"""Text side references: token ids of transformers' fast tokenizers for CLIP (BPE) and BERT
(WordPiece), from hub-style vocab files and from tokenizer.json, and the outputs of
CLIPTextModel / CLIPTextModelWithProjection / BertModel.

Writes
  tests/fixtures/tiny-bert/{text_encoder,tokenizer}   BertModel (F16) + vocab.txt tokenizer (max 77)
  tests/fixtures/tiny-clip-proj/{text_encoder,tokenizer}
                                                     CLIPTextModelWithProjection (gelu, hub-style
                                                     `text_model.` keys + I64 position_ids buffer)
                                                     over a reduced CLIP vocab, Open-CLIP pad "!"
  tests/fixtures/tokenizers/clip-json/               the same reduced CLIP tokenizer as tokenizer.json
  tests/fixtures/tokenizers/bert-json/               the BERT tokenizer as tokenizer.json (max 512)
  tests/fixtures/tokenizers/no-vocab/                a tokenizer folder with neither layout
  tests/fixtures/ref/text_*.safetensors              ids, masks and encoder outputs
"""
import json
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from common import (
    FIXTURES,
    REF,
    bert_chinese_vocab_path,
    clip_vocab_and_merges,
    randomize_norms,
    randomize_zero_params,
    save_tensors,
)

# The prompts the issue names: English, Chinese poetry, full-width punctuation + emoji, empty,
# longer than every max length (> 512 tokens for both vocabularies), plus case/whitespace/accents
# and special-token strings.
LONG = "A very detailed painting of a cat sitting on a wooden chair, " * 12 + "春眠不觉晓处处闻啼鸟" * 30
PROMPTS = [
    "a photo of a cat",
    "床前明月光，疑是地上霜",
    "你好，世界！（测试）「引号」🐱🎨 emoji：ok？",
    "",
    LONG,
    "  A   PHOTO\tof a Café  naïve CAT\n",
    "hi!! wow! <|endoftext|> <|ENDOFTEXT|> [SEP] [cls]",  # special tokens typed in the prompt
]
ENCODE_PROMPTS = ["a photo of a cat", "床前明月光，疑是地上霜"]

SMALL_MERGES = 3000  # reduced CLIP vocabulary: 512 byte tokens + these merges + 2 specials


def tokenize(tok, prompts):
    """As StableDiffusionPipeline.encode_prompt calls the tokenizer."""
    out = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    return out.input_ids, out.attention_mask


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def compact_tokenizer_json(folder):
    """save_pretrained pretty-prints tokenizer.json; the compact form is the same JSON at a
    third of the size."""
    path = folder / "tokenizer.json"
    path.write_text(json.dumps(json.loads(path.read_text()), ensure_ascii=False, separators=(",", ":")))


def keep_only(folder, names):
    for f in folder.iterdir():
        if f.name not in names:
            f.unlink()


# ---------------------------------------------------------------------------------------- CLIP


def clip_sd1():
    """tiny-sd: SD 1.x tokenizer (vocab.json + merges.txt, pads with <|endoftext|>) and encoder."""
    folder = FIXTURES / "tiny-sd"
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    ids, mask = tokenize(tok, PROMPTS)
    save_tensors(REF / "text_tokens_clip.safetensors", {"ids": ids, "mask": mask}, "tiny-sd/tokenizer, PROMPTS")

    model = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32).eval()
    ids, mask = tokenize(tok, ENCODE_PROMPTS)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        # StableDiffusionPipeline.encode_prompt with clip_skip=1.
        clip_skip_1 = model.final_layer_norm(out.hidden_states[-2])
        # Pooling rules: legacy configs (eos_token_id == 2) take the argmax of the ids; others
        # the first position of eos_token_id (320 = "a</w>" here, so the rules differ; a row
        # without it pools position 0).
        pooled = {}
        for eos in (2, 320):
            m = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32, eos_token_id=eos)
            pooled[f"pooler_output_eos{eos}"] = m.eval()(ids).pooler_output
    save_tensors(
        REF / "text_encoder_clip.safetensors",
        {
            "ids": ids,
            "last_hidden_state": out.last_hidden_state,
            "pooler_output": out.pooler_output,
            "penultimate": out.hidden_states[-2],
            "clip_skip_1": clip_skip_1,
            **pooled,
        },
        "tiny-sd/text_encoder on ENCODE_PROMPTS",
    )


def small_clip_vocab(folder):
    """A reduced CLIP BPE vocabulary (same construction as OpenAI's, fewer merges) so the
    tokenizer.json copy stays small."""
    _, merges = clip_vocab_and_merges()
    full, _ = clip_vocab_and_merges()
    merges = merges[:SMALL_MERGES]
    tokens = [t for t, _ in sorted(full.items(), key=lambda kv: kv[1])][:512]
    tokens += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return len(tokens)


def clip_open_clip_style():
    """Open-CLIP style (SD 2.x / SD-Turbo): pads with "!" (id 0); CLIPTextModelWithProjection with
    gelu; hub-style keys (`text_model.` prefix, I64 position_ids buffer). Its tokenizer also goes
    to tokenizers/clip-json as tokenizer.json."""
    root = FIXTURES / "tiny-clip-proj"
    if root.exists():
        shutil.rmtree(root)
    tok_dir = root / "tokenizer"
    vocab_size = small_clip_vocab(tok_dir)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}
    write_json(tok_dir / "special_tokens_map.json", special)
    write_json(
        tok_dir / "tokenizer_config.json",
        {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
         "tokenizer_class": "CLIPTokenizer"},
    )
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    assert tok.pad_token_id == 0

    json_dir = FIXTURES / "tokenizers" / "clip-json"
    if json_dir.exists():
        shutil.rmtree(json_dir)
    tok.save_pretrained(json_dir)
    keep_only(json_dir, {"tokenizer.json", "tokenizer_config.json"})
    compact_tokenizer_json(json_dir)
    tok_json = CLIPTokenizer.from_pretrained(json_dir)

    ids, mask = tokenize(tok, PROMPTS)
    ids_json, mask_json = tokenize(tok_json, PROMPTS)
    assert torch.equal(ids, ids_json) and torch.equal(mask, mask_json), "layouts disagree"
    save_tensors(REF / "text_tokens_clip_small.safetensors", {"ids": ids, "mask": mask},
                 "tiny-clip-proj/tokenizer == tokenizers/clip-json, PROMPTS")

    torch.manual_seed(4)
    eos = tok.eos_token_id
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, projection_dim=24, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", bos_token_id=tok.bos_token_id,
        eos_token_id=eos, pad_token_id=0,
    )
    model = CLIPTextModelWithProjection(cfg)
    randomize_norms(model, 41)
    randomize_zero_params(model, 42)
    model.eval().half()
    enc_dir = root / "text_encoder"
    model.save_pretrained(enc_dir)
    # Rewrite the weights as older hub checkpoints store them.
    weights = load_file(str(enc_dir / "model.safetensors"))
    hub = {}
    for k, v in weights.items():
        hub[k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k] = v
    hub["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    save_file(hub, str(enc_dir / "model.safetensors"), metadata={"format": "pt"})

    model = CLIPTextModelWithProjection.from_pretrained(enc_dir, torch_dtype=torch.float32).eval()
    ids, mask = tokenize(tok, ENCODE_PROMPTS)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    save_tensors(
        REF / "text_encoder_clip_proj.safetensors",
        {
            "ids": ids,
            "last_hidden_state": out.last_hidden_state,
            "text_embeds": out.text_embeds,
            "penultimate": out.hidden_states[-2],
        },
        "tiny-clip-proj/text_encoder on ENCODE_PROMPTS",
    )


# ---------------------------------------------------------------------------------------- BERT

BERT_SPECIAL = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]"}


def bert_hub_tokenizer(folder, max_length):
    """Taiyi-style hub tokenizer folder: vocab.txt + tokenizer_config.json + special_tokens_map.json."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(bert_chinese_vocab_path(), folder / "vocab.txt")
    write_json(folder / "special_tokens_map.json", BERT_SPECIAL)
    write_json(
        folder / "tokenizer_config.json",
        {**BERT_SPECIAL, "do_lower_case": True, "model_max_length": max_length, "strip_accents": None,
         "tokenize_chinese_chars": True, "tokenizer_class": "BertTokenizer"},
    )


def bert():
    root = FIXTURES / "tiny-bert"
    if root.exists():
        shutil.rmtree(root)
    tok_dir = root / "tokenizer"
    bert_hub_tokenizer(tok_dir, 77)
    tok = BertTokenizer.from_pretrained(tok_dir)
    ids, mask = tokenize(tok, PROMPTS)
    assert (ids == tok.unk_token_id).any(), "no prompt exercises [UNK]"
    save_tensors(REF / "text_tokens_bert.safetensors", {"ids": ids, "mask": mask}, "tiny-bert/tokenizer, PROMPTS")

    # tokenizer.json layout, with the model_max_length 512 Taiyi's files say.
    json_dir = FIXTURES / "tokenizers" / "bert-json"
    if json_dir.exists():
        shutil.rmtree(json_dir)
    tmp = FIXTURES / ".tmp-bert-vocab"
    bert_hub_tokenizer(tmp, 512)
    BertTokenizer.from_pretrained(tmp).save_pretrained(json_dir)
    shutil.rmtree(tmp)
    keep_only(json_dir, {"tokenizer.json", "tokenizer_config.json"})
    compact_tokenizer_json(json_dir)
    tok_json = BertTokenizer.from_pretrained(json_dir)
    assert tok_json.model_max_length == 512
    ids_json, mask_json = tokenize(tok_json, PROMPTS)
    assert torch.equal(ids_json[:, :40], ids[:, :40])
    save_tensors(REF / "text_tokens_bert_json.safetensors", {"ids": ids_json, "mask": mask_json},
                 "tokenizers/bert-json (max 512), PROMPTS")

    torch.manual_seed(5)
    cfg = BertConfig(
        vocab_size=21128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
    )
    model = BertModel(cfg)
    randomize_norms(model, 51)
    randomize_zero_params(model, 52)
    model.eval().half()
    enc_dir = root / "text_encoder"
    model.save_pretrained(enc_dir)
    # Older checkpoints (Taiyi) carry the position_ids buffer; keep one so the loader must skip it.
    weights = load_file(str(enc_dir / "model.safetensors"))
    weights["embeddings.position_ids"] = torch.arange(512, dtype=torch.int64)[None]
    save_file(weights, str(enc_dir / "model.safetensors"), metadata={"format": "pt"})

    model = BertModel.from_pretrained(enc_dir, torch_dtype=torch.float32).eval()
    ids, mask = tokenize(tok, ["床前明月光，疑是地上霜", "a photo of a cat 🐱"])
    with torch.no_grad():
        plain = model(ids)
        masked = model(ids, attention_mask=mask)
    save_tensors(
        REF / "text_encoder_bert.safetensors",
        {
            "ids": ids,
            "mask": mask,
            "last_hidden_state": plain.last_hidden_state,
            "pooler_output": plain.pooler_output,
            "last_hidden_state_masked": masked.last_hidden_state,
            "pooler_output_masked": masked.pooler_output,
        },
        "tiny-bert/text_encoder, without and with attention_mask",
    )


def no_vocab():
    folder = FIXTURES / "tokenizers" / "no-vocab"
    if folder.exists():
        shutil.rmtree(folder)
    write_json(folder / "tokenizer_config.json", {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})


def generate():
    clip_sd1()
    clip_open_clip_style()
    bert()
    no_vocab()
    print("  wrote text fixtures")
