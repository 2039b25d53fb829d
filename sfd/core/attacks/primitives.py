"""The white-box attacks, written once for every text family: each optimises an input of a `victim` end to end through
the model that makes the image.

A victim has `surface` (a `TextSurface`), `encode(prompts) -> conditioning dict` and `render(cond, z, full=False) ->
images in [0, 1]` (one step, or a short differentiable sampler; `full` the model's own sampler, for judging). The
robustness table (sfd/evaluators/robustness.py) and `sfd attack` (sfd/evaluators/attack.py) build victims of loaded
models; `loss_fn(images)` is what an attack minimises (a CLIP scorer's vote for the concept, or the distance to the
original model's image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttackBudget:
    steps: int = 40  # gradient steps of the per-pair attacks
    lr: float = 0.05  # Adam's rate, in units of the optimised input's standard deviation
    soft_tokens: int = 3  # soft-prompt length
    inversion_steps: int = 100  # textual inversion's steps
    batch_size: int = 16  # textual inversion's batch of references
    seed: int = 0  # random starts and batches


def _adam(groups: dict[str, torch.Tensor], scales: dict[str, float], lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([{"params": [t], "lr": lr * scales[name]} for name, t in groups.items()])


def _descend(params: dict[str, torch.Tensor], opt: torch.optim.Optimizer, steps: int, loss_of: Callable[[], torch.Tensor]) -> None:
    for _ in range(steps):
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def soft_prompt_attack(victim, prompts: Sequence[str], z: torch.Tensor, budget: AttackBudget, loss_fn: LossFn) -> dict:
    """`soft_tokens` soft token embeddings before each prompt, in every text encoder, optimised against
    `loss_fn(images)`. Returns the images of the soft prompt and of the hard prompt (the soft tokens projected to the
    first encoder's nearest whole words, written as text and re-run), and the hard prompts."""
    surface = victim.surface
    k = budget.soft_tokens
    slots = surface.prefixed(prompts, k)
    soft = {n: t.requires_grad_(True) for n, t in surface.random_tokens(len(prompts), k, torch.Generator().manual_seed(budget.seed)).items()}
    with surface.tokens(soft):
        _descend(soft, _adam(soft, surface.scales(), budget.lr), budget.steps, lambda: loss_fn(victim.render(surface.encode(slots), z)))
        with torch.no_grad():
            soft_images = victim.render(surface.encode(slots), z, full=True)
    hard_prompts = surface.hard_prompts(soft, prompts)
    with torch.no_grad():
        hard_images = victim.render(victim.encode(hard_prompts), z, full=True)
    return {"soft": soft_images, "hard": hard_images, "hard_prompts": hard_prompts, "soft_tokens": {n: t.detach() for n, t in soft.items()}}


def noise_attack(victim, prompts: Sequence[str], z: torch.Tensor, budget: AttackBudget, loss_fn: LossFn) -> torch.Tensor:
    """The initial noise optimised per pair against `loss_fn`, kept on the shell ||z|| = sqrt(dim z) where Gaussian
    noise of that size lies (the typical set); returns the final images."""
    with torch.no_grad():
        cond = victim.encode(prompts)
    radius = float(z[0].numel()) ** 0.5
    x = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=budget.lr)
    for _ in range(budget.steps):
        loss = loss_fn(victim.render(cond, x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.mul_(radius / x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1))))
    with torch.no_grad():
        return victim.render(cond, x.detach(), full=True)


def conditioning_attack(victim, prompts: Sequence[str], z: torch.Tensor, budget: AttackBudget, loss_fn: LossFn
                        ) -> tuple[torch.Tensor, float]:
    """The conditioning itself optimised per pair against `loss_fn` (every entry the family lets an attacker move: the
    text encoders' outputs, pooled embeddings included; no norm bound). Returns the final images and how far it moved
    (norm of the change / norm of the start, over the moved entries)."""
    with torch.no_grad():
        start = victim.encode(prompts)
    names = victim.surface.leaves(start)
    moved = {n: start[n].detach().float().clone().requires_grad_(True) for n in names}
    scales = {n: float(start[n].float().std()) for n in names}

    def cond():
        return {**start, **{n: moved[n].to(start[n].dtype) for n in names}}
    _descend(moved, _adam(moved, scales, budget.lr), budget.steps, lambda: loss_fn(victim.render(cond(), z)))
    with torch.no_grad():
        images = victim.render(cond(), z, full=True)
        change = sum(float((moved[n] - start[n].float()).pow(2).sum()) for n in names) ** 0.5
        size = sum(float(start[n].float().pow(2).sum()) for n in names) ** 0.5
    return images, change / max(size, 1e-12)


def inversion_attack(victim, ref_prompts: Sequence[str], ref_z: torch.Tensor, ref_images: torch.Tensor,
                     test_prompts: Sequence[str], test_z: torch.Tensor, concept: str, budget: AttackBudget) -> torch.Tensor:
    """Textual inversion: one new token (a vector in every text encoder) learned from (prompt, noise, original image)
    references, in image space through the model; returns the test images with the token where the concept word was."""
    surface = victim.surface
    refs, tests = surface.with_placeholder(ref_prompts, concept), surface.with_placeholder(test_prompts, concept)
    token = {n: t.requires_grad_(True) for n, t in surface.placeholder_tokens().items()}
    g = torch.Generator().manual_seed(budget.seed)
    n = len(refs)

    def loss():
        idx = torch.randperm(n, generator=g)[: min(n, budget.batch_size)]
        images = victim.render(surface.encode([refs[i] for i in idx.tolist()]), ref_z[idx])
        return F.mse_loss(images, ref_images[idx].to(images.device))
    with surface.tokens(token):
        _descend(token, _adam(token, surface.scales(), budget.lr), budget.inversion_steps, loss)
        with torch.no_grad():
            return victim.render(surface.encode(tests), test_z, full=True)


def concept_vote_loss(scorer) -> LossFn:
    """Cross-entropy of a zero-shot scorer's vote towards the concept (its label 0), summed over images."""
    def loss(images: torch.Tensor) -> torch.Tensor:
        logits = scorer.logits(images)
        return F.cross_entropy(logits, torch.zeros(len(images), dtype=torch.long, device=logits.device), reduction="sum")
    return loss


def output_match_loss(target: torch.Tensor) -> LossFn:
    """Pixel MSE to target images (UMA / P4D output matching), summed over images."""
    def loss(images: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(images, target.to(images.device), reduction="sum")
    return loss
