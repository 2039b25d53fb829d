"""Make the bundled one-step bases: checkpoints/digits/onestep and checkpoints/shapes/onestep (issue 14).

  python benchmarks/bundle_bases.py                  # both worlds, seed 0
  python benchmarks/bundle_bases.py --worlds shapes

Each base is `sfd distill --model checkpoints/<world>/teacher --out checkpoints/<world>/onestep --save-dtype fp16`
(the world's stage-1 preset, seed 0). Two things keep checkpoints/ within 50 MB, since the working tree travels to GPU
machines:
- the components a one-step folder shares with its teacher (text encoder, tokenizer, VAE, scheduler) are relative
  symbolic links to the teacher's folders, after checking that they hold the same weights (tokenizers: that they
  tokenize alike): `from_pretrained` follows
  them, so the folder still loads on its own;
- `fake_score/` is dropped where the world's stage-2 preset starts its fake score from the teacher
  (`fake_score_init`), since nothing reads it there (shapes: BENCHMARKS.md "Two-stage SFD").
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler")


def same_weights(a: Path, b: Path) -> bool:
    """Whether two component folders hold the same tensors (values compared in fp32) and the same non-weight files."""
    from safetensors.torch import load_file

    wa, wb = sorted(a.glob("*.safetensors")), sorted(b.glob("*.safetensors"))
    if [f.name for f in wa] != [f.name for f in wb]:
        return False
    for fa, fb in zip(wa, wb):
        ta, tb = load_file(str(fa)), load_file(str(fb))
        if set(ta) != set(tb) or not all(torch.equal(ta[k].float(), tb[k].float()) for k in ta):
            return False
    others = lambda d: {f.name for f in d.iterdir() if f.suffix != ".safetensors" and f.name != "config.json"}  # noqa: E731
    return others(a) == others(b) and all((a / n).read_bytes() == (b / n).read_bytes() for n in others(a))


def same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two tokenizer folders tokenize alike (transformers may save a fast tokenizer.json where the teacher
    has vocab.json and merges.txt): the same vocabulary, length limit and ids for a few captions."""
    from transformers import AutoTokenizer

    ta, tb = AutoTokenizer.from_pretrained(str(a)), AutoTokenizer.from_pretrained(str(b))
    texts = ["a red circle", "a photo of a purple cross on a grey background", "", "an unknown word zxqv"]
    return (ta.get_vocab() == tb.get_vocab() and ta.model_max_length == tb.model_max_length
            and all(ta(t)["input_ids"] == tb(t)["input_ids"] for t in texts))


def link_shared(base: Path, teacher: Path) -> list[str]:
    linked = []
    for name in SHARED:
        mine, theirs = base / name, teacher / name
        same = same_tokenizer if name.startswith("tokenizer") else same_weights
        if mine.is_dir() and not mine.is_symlink() and theirs.is_dir() and (name == "scheduler" or same(mine, theirs)):
            if name == "scheduler" and (mine / "scheduler_config.json").read_bytes() != (theirs / "scheduler_config.json").read_bytes():
                continue
            shutil.rmtree(mine)
            os.symlink(os.path.relpath(theirs, base), mine)
            linked.append(name)
    return linked


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", default="digits,shapes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--link-only", action="store_true", help="only link the shared components of existing bases")
    a = ap.parse_args()
    from sfd.core.config import preset
    from sfd.core.families import family_for

    for world in a.worlds.split(","):
        if a.link_only:
            print(f"{world}: linked {', '.join(link_shared(ROOT / 'checkpoints' / world / 'onestep', ROOT / 'checkpoints' / world / 'teacher')) or 'nothing'}")
            continue
        teacher = Path("checkpoints") / world / "teacher"
        out = Path("checkpoints") / world / "onestep"
        cmd = [sys.executable, "-m", "sfd", "distill", "--model", str(teacher), "--out", str(out), "--save-dtype", "fp16",
               "--seed", str(a.seed), "--overwrite"]
        print(" ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        name = family_for(str(ROOT / teacher)).preset({"world": world})
        if preset(name, "erase").fake_score_init == "teacher":
            shutil.rmtree(ROOT / out / "fake_score", ignore_errors=True)
        print(f"{out}: linked to the teacher's {', '.join(link_shared(ROOT / out, ROOT / teacher)) or 'nothing'}")
    total = sum(f.stat().st_size for f in (ROOT / "checkpoints").rglob("*") if f.is_file() and not f.is_symlink())
    print(f"checkpoints/: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
