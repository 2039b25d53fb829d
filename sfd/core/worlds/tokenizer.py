"""An offline `CLIPTokenizer` built from the BPE vocabulary that open_clip ships inside its package.

Stable Diffusion pipelines need a transformers `CLIPTokenizer`, which normally comes from the hub. The
vocabulary is the same one OpenAI's CLIP uses, and open_clip bundles it as `bpe_simple_vocab_16e6.txt.gz`,
so the tokenizer can be rebuilt without a network: write `vocab.json`/`merges.txt` in the order open_clip's
`SimpleTokenizer` assigns ids (256 byte symbols, the same with an end-of-word mark, one entry per merge,
then the two special tokens) and load them with transformers. Ids then equal open_clip's (and SD's):
start-of-text 49406, end-of-text 49407, vocabulary size 49408.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
VOCAB_SIZE = 49408
# open_clip keeps the merges on lines 1 .. 48894 of the file (line 0 is a version header): 49408 - 2*256 - 2.
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
MODEL_MAX_LENGTH = 77  # SD pipelines pad to this; a smaller value makes their padding overflow the text encoder


def open_clip_bpe_path() -> Path:
    """The gzipped BPE merges file bundled with open_clip (no download)."""
    import open_clip

    path = Path(open_clip.__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open_clip's BPE vocabulary is missing at {path}; reinstall open-clip-torch")
    return path


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE uses, in CLIP's order.

    Printable latin-1 bytes map to themselves; the others are shifted to code points 256+ so that no
    symbol is whitespace or a control character. The order (printable ones first) fixes the ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shift)
            shift += 1
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]


def clip_vocab_and_merges(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[str]]:
    """(token -> id, merges as "a b" lines) exactly as open_clip's SimpleTokenizer numbers them."""
    lines = gzip.open(bpe_path or open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    byte_syms = _byte_symbols()
    tokens = byte_syms + [s + "</w>" for s in byte_syms] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"expected {VOCAB_SIZE} distinct tokens from {bpe_path}, got {len(vocab)}")
    return vocab, merges


def write_clip_tokenizer_files(out_dir: str | Path, bpe_path: str | Path | None = None) -> Path:
    """Write vocab.json and merges.txt (the files a hub CLIP tokenizer folder holds) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(bpe_path)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return out


def _tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json as in Stable Diffusion's tokenizer folder (pad = end-of-text)."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }


def save_clip_tokenizer(out_dir: str | Path, model_max_length: int = MODEL_MAX_LENGTH) -> Path:
    """Write a tokenizer folder (vocab.json, merges.txt, tokenizer_config.json).

    We write these files rather than `save_pretrained`'s: recent transformers would save only a 3.6 MB
    tokenizer.json, which older versions' slow `CLIPTokenizer` cannot read and which is twice the size.
    """
    out = write_clip_tokenizer_files(out_dir)
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(model_max_length), indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2)
    )
    return out


def build_clip_tokenizer(out_dir: str | Path | None = None, model_max_length: int = MODEL_MAX_LENGTH):
    """A transformers `CLIPTokenizer` with CLIP's real vocabulary, built offline.

    Special tokens and padding follow Stable Diffusion's tokenizer (pad = end-of-text). If `out_dir` is
    given the tokenizer folder is kept there, ready to sit in a pipeline folder as `tokenizer/`.
    """
    from transformers import CLIPTokenizer

    if out_dir is not None:
        return CLIPTokenizer.from_pretrained(save_clip_tokenizer(out_dir, model_max_length))
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(save_clip_tokenizer(tmp, model_max_length))
