"""Prompt construction for text-to-image erasure, and prompt files.

Rules (DESIGN.md section 2):
- forget prompts name the concept: the world's own captions that mention it, or templates such as
  "a photo of {}" filled with the concept;
- the override prompt of a forget prompt is the same text with every case-insensitive occurrence of the
  concept (as a whole word or phrase) replaced by the override text;
- retain prompts come from a file (`sfd.evaluators.prompt_sets.read_prompt_file`) or a built-in list and must not
  mention a forgotten concept.
"""

from __future__ import annotations

import re

from sfd.kernel.errors import SFDError

FORGET_TEMPLATES = (
    "{}",
    "a photo of {}",
    "a picture of {}",
    "a painting of {}",
    "a drawing of {}",
    "an image of {}",
    "a close-up photo of {}",
    "a high quality photo of {}",
    "{}, highly detailed",
    "a portrait of {}",
)

# Generic retain prompts for Stable-Diffusion-scale models (varied subjects, no single dominant concept).
RETAIN_PROMPTS = (
    "a photo of a dog on a beach",
    "a bowl of fruit on a wooden table",
    "a mountain lake at sunrise",
    "a city street at night with neon lights",
    "a portrait of an old man with a beard",
    "a red sports car parked in front of a house",
    "a cat sleeping on a sofa",
    "a watercolor painting of a forest",
    "a plate of pasta with tomato sauce",
    "a lighthouse on a rocky coast",
    "a child playing football in a park",
    "a snowy village in the mountains",
    "a vase of sunflowers",
    "an astronaut floating in space",
    "a sailing boat on a calm sea",
    "a woman reading a book in a cafe",
    "a bicycle leaning against a brick wall",
    "a bridge over a river in autumn",
    "a cup of coffee and a croissant",
    "a horse running in a field",
)


def _pattern(concept: str) -> re.Pattern:
    body = re.escape(concept.strip())
    left = r"(?<!\w)" if concept.strip()[:1].isalnum() else ""
    right = r"(?!\w)" if concept.strip()[-1:].isalnum() else ""
    return re.compile(left + body + right, re.IGNORECASE)


def mentions(prompt: str, concept: str) -> bool:
    return bool(_pattern(concept).search(prompt))


def replace_concept(prompt: str, concept: str, override: str) -> str:
    """`prompt` with each case-insensitive whole-word occurrence of `concept` replaced by `override`."""
    return _pattern(concept).sub(lambda _: override, prompt)


def check_concept(text: str, what: str) -> str:
    t = (text or "").strip()
    if not t:
        raise SFDError(f"{what} is empty")
    if len(t) > 200:
        raise SFDError(f"{what} is longer than 200 characters")
    return t


def forget_prompt_pairs(concepts: list[str], override: str, candidates: list[str] | None = None, templates=FORGET_TEMPLATES) -> list[tuple[str, str]]:
    """(forget prompt, override prompt) pairs: candidates that mention a concept, else the templates filled in."""
    pairs: list[tuple[str, str]] = []
    for concept in concepts:
        found = [p for p in (candidates or []) if mentions(p, concept)]
        prompts = found or [t.format(concept) for t in templates]
        pairs += [(p, replace_concept(p, concept, override)) for p in prompts]
    return list(dict.fromkeys(pairs))
