"""What an attacker may perturb in a text-to-image model, asked of its family (`ModelFamily.text_encoders`,
`ModelFamily.encode`, `ModelFamily.attack_leaves`): the token embeddings of every text encoder, and the conditioning.

Soft tokens ride on a placeholder word. A prompt carries the word where the attacker's tokens go (k times before the
prompt for a soft prompt, in place of the concept word for textual inversion); a forward hook on each text encoder's
token-embedding layer replaces the word's embedding, occurrence by occurrence, with the attacker's vectors. So the
family's own `encode` runs unchanged, through one CLIP encoder (SD), two (SDXL), CLIP and T5 (FLUX) or all three (SD3),
and every encoder sees the attack in its own embedding space.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from sfd.kernel.errors import SFDError

# Candidate placeholder words: the first that is one token in every encoder's tokenizer is used. "sks" is the
# DreamBooth / textual-inversion convention in the CLIP vocabulary; T5's sentencepiece splits it, but not the others.
PLACEHOLDER_WORDS = ("sks", "thing", "object", "it")


@dataclass
class EncoderSlot:
    """One text encoder as the attacks see it."""

    name: str
    tokenizer: object
    encoder: torch.nn.Module
    placeholder_id: int

    @property
    def layer(self) -> torch.nn.Module:
        return self.encoder.get_input_embeddings()

    @property
    def table(self) -> torch.Tensor:
        return self.layer.weight.detach()

    @functools.cached_property
    def banned(self) -> torch.Tensor:
        """Ids a hard prompt may not use (`banned_tokens`), computed once: the attacks ask for them every step."""
        return banned_tokens(self.tokenizer, self.table.shape[0])

    @functools.cached_property
    def allowed(self) -> torch.Tensor:
        keep = torch.ones(self.table.shape[0], dtype=torch.bool)
        keep[self.banned] = False
        return keep.nonzero().flatten()


def _single_token(tokenizer, word: str) -> int | None:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


class _Swap:
    """Forward hook: the k-th occurrence of the placeholder id in each row takes values[row, k] (values: rows x k x dim,
    or 1 x k x dim shared by every row); occurrences past k keep the last vector."""

    def __init__(self, placeholder_id: int, values: torch.Tensor):
        self.pid, self.values = placeholder_id, values

    def __call__(self, module, inputs, output):
        mask = inputs[0] == self.pid
        if not bool(mask.any()):
            return output
        v = self.values.to(output.device, output.dtype)
        k = v.shape[1]
        occurrence = (mask.cumsum(1) - 1).clamp(0, k - 1)
        rows = torch.arange(mask.shape[0], device=mask.device) % v.shape[0]
        picked = v[rows.view(-1, 1), occurrence]
        return torch.where(mask.unsqueeze(-1), picked, output)


class TextSurface:
    """A text-to-image pipeline's attack surface: its encoders' token embeddings, and its conditioning."""

    def __init__(self, family, pipe):
        self.family, self.pipe = family, pipe
        encoders = family.text_encoders(pipe)
        if not encoders:
            raise SFDError(f"{family.description} models have no text encoder to attack")
        for _, _, enc in encoders:
            enc.requires_grad_(False)  # gradients go to the attacker's vectors only
        for word in PLACEHOLDER_WORDS:
            ids = [_single_token(tok, word) for _, tok, _ in encoders]
            if all(i is not None for i in ids):
                break
        else:
            raise SFDError(f"no placeholder word is a single token in every text encoder of this {family.description} model "
                           f"(tried {', '.join(PLACEHOLDER_WORDS)})")
        self.word = word
        self.slots = [EncoderSlot(name, tok, enc, pid) for (name, tok, enc), pid in zip(encoders, ids)]

    @property
    def device(self):
        return self.slots[0].table.device

    # ------------------------------------------------------------------------------------------ prompts
    def prefixed(self, prompts: Sequence[str], k: int) -> list[str]:
        """Each prompt with k placeholder words before it: the slots of a soft prompt."""
        return [" ".join([self.word] * k + [p]).strip() for p in prompts]

    def with_placeholder(self, prompts: Sequence[str], concept: str) -> list[str]:
        """Each prompt with its concept word replaced by the placeholder (prepended where it has none)."""
        from sfd.core.prompts import mentions, replace_concept

        return [replace_concept(p, concept, self.word) if mentions(p, concept) else f"{self.word} {p}" for p in prompts]

    # ----------------------------------------------------------------------------------------- encoding
    def encode(self, prompts: Sequence[str]) -> dict:
        """The network's conditioning of the prompts, differentiable (the attacker's tokens included while
        `tokens` is active): always a dict."""
        cond = self.family.encode(self.pipe, list(prompts), self.device, grad=True)
        return cond if isinstance(cond, dict) else {"encoder_hidden_states": cond}

    @contextmanager
    def tokens(self, values: dict[str, torch.Tensor]):
        """While active, the placeholder's occurrences take `values[slot name]` (rows x k x dim of that encoder)."""
        with ExitStack() as stack:
            for slot in self.slots:
                handle = slot.layer.register_forward_hook(_Swap(slot.placeholder_id, values[slot.name]))
                stack.callback(handle.remove)
            yield

    def random_tokens(self, rows: int, k: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Start vectors for k soft tokens per row: embeddings of random whole-word tokens of each encoder."""
        out = {}
        for slot in self.slots:
            pick = slot.allowed[torch.randint(len(slot.allowed), (rows, k), generator=gen)]
            out[slot.name] = slot.table[pick.to(slot.table.device)].clone().float()
        return out

    def placeholder_tokens(self) -> dict[str, torch.Tensor]:
        """The placeholder word's own embedding in each encoder (1 x 1 x dim): textual inversion's start."""
        return {s.name: s.table[s.placeholder_id].clone().float().view(1, 1, -1) for s in self.slots}

    def scales(self) -> dict[str, float]:
        """Each encoder's token-embedding standard deviation: the unit of an attacker's step."""
        return {s.name: float(s.table.float().std()) for s in self.slots}

    def hard_prompts(self, values: dict[str, torch.Tensor], prompts: Sequence[str]) -> list[str]:
        """The soft prompt written as text: each of the first encoder's soft tokens projected to its nearest whole-word
        token, then placed before the prompt (what an attacker with only a prompt box can type)."""
        slot = self.slots[0]
        ids = nearest_tokens(values[slot.name].detach(), slot.table, slot.banned.to(slot.table.device)).cpu()
        words = [" ".join(slot.tokenizer.decode([t]).strip() for t in row.tolist()) for row in ids]
        return [f"{w} {p}".strip() for w, p in zip(words, prompts)]

    def leaves(self, cond: dict) -> list[str]:
        """Which entries of a conditioning dict the conditioning attack moves (the family's `attack_leaves`)."""
        return [k for k in cond if k in self.family.attack_leaves]


def banned_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """Ids a hard prompt may not use: special tokens, and sub-word pieces (CLIP BPE tokens without the end-of-word
    mark '</w>'), so that a hard prompt written as space-separated words tokenizes back to the same tokens."""
    special = {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    vocab = tokenizer.get_vocab()
    whole = {i for t, i in vocab.items() if t.endswith("</w>") and i < vocab_size}
    banned = [i for i in range(vocab_size) if i in special or (whole and i not in whole)]
    return torch.tensor(banned, dtype=torch.long)


def nearest_tokens(soft: torch.Tensor, table: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """Ids of the nearest (L2) real token embeddings, banned ids excluded."""
    d = torch.cdist(soft.reshape(-1, soft.shape[-1]).float(), table.float())
    d[:, banned] = float("inf")
    return d.argmin(-1).view(soft.shape[:-1])
