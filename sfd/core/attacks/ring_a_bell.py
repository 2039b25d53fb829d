"""Ring-A-Bell (Tsai et al., ICLR 2024): a black-box search for hard prompts that carry a concept without naming it.

1. A concept vector from prompt pairs with and without the concept: the mean difference of their conditionings
   (every entry an attacker may move, `TextSurface.leaves`: hidden states and pooled embeddings, all encoders).
2. Per test prompt, the target conditioning: that of the prompt without the concept word, plus eta times the vector.
3. A genetic search over whole-word tokens of the first text encoder (the concept's own word banned): a population of
   `length`-token prompts, fitness the distance of their conditioning to the target, elitism, one-point crossover and
   per-token mutation.

It needs the text encoders only, never the image model or a gradient: an attack that no gradient-based training (robust
SFD) sees, which is why the robustness table carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sfd.core.attacks.surface import TextSurface


@dataclass(frozen=True)
class RingABellSettings:
    length: int = 8  # tokens of a found prompt (the paper: 16 for objects, 38 for nudity, on SD's 77-token CLIP)
    eta: float = 3.0  # strength of the concept vector added to the target
    population: int = 64
    generations: int = 40
    elite: int = 8  # kept unchanged each generation
    mutation: float = 0.25  # per-token replacement probability of a child
    seed: int = 0


def without(prompt: str, concept: str) -> str:
    """The prompt with its concept word removed (spaces tidied)."""
    from sfd.core.prompts import replace_concept

    return " ".join(replace_concept(prompt, concept, "").split())


def _flat(surface: TextSurface, cond: dict) -> torch.Tensor:
    return torch.cat([cond[k].float().flatten(1) for k in surface.leaves(cond)], dim=1)


@torch.no_grad()
def concept_vector(surface: TextSurface, with_concept: Sequence[str], concept: str) -> torch.Tensor:
    """Mean conditioning difference between prompts naming the concept and the same prompts without it."""
    a = _flat(surface, surface.encode(list(with_concept)))
    b = _flat(surface, surface.encode([without(p, concept) for p in with_concept]))
    return (a - b).mean(0)


@torch.no_grad()
def ring_a_bell(surface: TextSurface, prompts: Sequence[str], concept: str, settings: RingABellSettings = RingABellSettings(),
                pairs: Sequence[str] | None = None) -> list[str]:
    """One found prompt per test prompt (each naming the concept); `pairs`: the prompts the concept vector is taken from
    (default the test prompts themselves)."""
    s = settings
    vector = concept_vector(surface, pairs or prompts, concept)
    slot = surface.slots[0]
    pool = slot.allowed
    banned = set(slot.tokenizer(concept, add_special_tokens=False).input_ids) | {slot.placeholder_id}
    pool = pool[~torch.isin(pool, torch.tensor(sorted(banned), dtype=pool.dtype))]
    words = [slot.tokenizer.decode([int(t)]).strip() for t in pool.tolist()]
    gen = torch.Generator().manual_seed(s.seed)
    return [_search(surface, words, _flat(surface, surface.encode([without(p, concept)]))[0] + s.eta * vector, s, gen)
            for p in prompts]


def _search(surface: TextSurface, words: list[str], target: torch.Tensor, s: RingABellSettings, gen: torch.Generator) -> str:
    """The genetic search for one target conditioning; returns the fittest prompt's text."""
    n = len(words)
    pop = torch.randint(n, (s.population, s.length), generator=gen)

    def fitness(p: torch.Tensor) -> torch.Tensor:
        texts = [" ".join(words[i] for i in row.tolist()) for row in p]
        return -(_flat(surface, surface.encode(texts)) - target).pow(2).mean(1)

    score = fitness(pop)
    for _ in range(s.generations):
        order = score.argsort(descending=True)
        pop, score = pop[order], score[order]
        parents = pop[torch.randint(max(s.population // 2, 1), (s.population - s.elite, 2), generator=gen)]
        cut = torch.randint(1, max(s.length, 2), (s.population - s.elite, 1), generator=gen)
        children = torch.where(torch.arange(s.length).view(1, -1) < cut, parents[:, 0], parents[:, 1])
        mutate = torch.rand(children.shape, generator=gen) < s.mutation
        children = torch.where(mutate, torch.randint(n, children.shape, generator=gen), children)
        pop = torch.cat([pop[: s.elite], children])
        score = torch.cat([score[: s.elite], fitness(children)])
    best = pop[score.argmax()]
    return " ".join(words[i] for i in best.tolist())
