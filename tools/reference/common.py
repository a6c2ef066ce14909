"""Shared helpers of the fixture generator: determinism, weight randomisation, tokenizer
vocabularies from PyPI wheels, and safetensors writing."""
import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
REF = FIXTURES / "ref"  # inputs/outputs of reference runs, one safetensors per test case
WHEELS = Path(os.environ.get("INKSTONE_REF_WHEELS", Path.home() / ".cache" / "inkstone-ref-wheels"))


def deterministic(seed: int = 0):
    """One thread and deterministic kernels: regeneration is then byte-stable."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)


def randomize_norms(model: torch.nn.Module, seed: int = 0):
    """Norm layers start as weight=1, bias=0, which would hide a swapped weight/bias; perturb
    them so parity tests see every parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if m.weight is not None:
                    m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))


def randomize_zero_params(model: torch.nn.Module, seed: int = 0, scale: float = 0.05):
    """Some diffusers layers are zero-initialised (biases, proj_out of some blocks); give every
    all-zero parameter small random values so it matters in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def save_tensors(path: Path, tensors: dict, note: str = ""):
    """Writes f32 contiguous tensors with a single metadata key (several keys are written in
    hash order, which would make regeneration non-deterministic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, v in tensors.items():
        v = torch.as_tensor(v)
        if v.is_floating_point():
            v = v.to(torch.float32)
        out[k] = v.detach().contiguous()
    save_file(out, str(path), metadata={"note": note} if note else None)


def bytes_to_unicode():
    """OpenAI CLIP's byte → printable-unicode table (simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@lru_cache(None)
def clip_vocab_and_merges():
    """vocab.json / merges.txt contents exactly as OpenAI's simple_tokenizer builds them from
    bpe_simple_vocab_16e6.txt.gz (49,408 tokens, 48,894 merges)."""
    text = gzip.open(WHEELS / "open_clip" / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8")
    merges = text.split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def write_clip_vocab_files(folder: Path):
    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def bert_chinese_vocab_path() -> Path:
    """bert-base-chinese's WordPiece vocabulary (21,128 entries) as shipped in cn_clip."""
    return WHEELS / "cn_clip" / "clip" / "vocab.txt"
