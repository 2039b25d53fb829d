"""Attacks on the class conditioning of class-conditional models (the digits world), through the family's attack hook
(`ModelFamily.class_embedding`): the class-embedding vector itself is what the attacker moves.

- `class_embedding_attack`: per pair, the erased class's embedding vector optimised (white-box, no norm bound) so that
  the model's image matches the original model's image of that class and noise (UMA's data-free objective).
- `transplant_attack`: the original model's embedding of the class plugged into the erased model, no optimisation: an
  erasure that only moved the class's embedding (and kept what draws it) comes back at once.

A victim here has `surface` (a `ClassSurface`), `encode(labels) -> {"class_labels": ...}` and `render(cond, z,
full=False) -> images in [0, 1]`, as the text victims of `primitives`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from sfd.core.attacks.primitives import AttackBudget, LossFn, _adam, _descend
from sfd.kernel.errors import SFDError


class _Replace:
    """Forward hook on the class-embedding layer: rows whose label is not `skip` (the guidance's null class) take
    `values` in order (rows x dim, or one row for all)."""

    def __init__(self, values: torch.Tensor, skip: int | None):
        self.values, self.skip = values, skip

    def __call__(self, module, inputs, output):
        labels = inputs[0]
        mask = labels != self.skip if self.skip is not None else torch.ones_like(labels, dtype=torch.bool)
        v = self.values.to(output.device, output.dtype)
        order = (mask.cumsum(0) - 1).clamp(min=0) % v.shape[0]
        return torch.where(mask.unsqueeze(-1), v[order], output)


class ClassSurface:
    """A class-conditional model's attack surface: its class-embedding layer."""

    def __init__(self, family, pipe, null_class: int | None = None):
        self.layer = family.class_embedding(pipe)
        if self.layer is None:
            raise SFDError(f"{family.description} models have no class embedding to attack")
        self.null_class = null_class

    @property
    def table(self) -> torch.Tensor:
        return self.layer.weight.detach()

    @contextmanager
    def embeddings(self, values: torch.Tensor):
        """While active, the embedding of every non-null row is `values` (rows x dim, or 1 x dim)."""
        handle = self.layer.register_forward_hook(_Replace(values, self.null_class))
        try:
            yield
        finally:
            handle.remove()


def class_embedding_attack(victim, labels: torch.Tensor, z: torch.Tensor, budget: AttackBudget, loss_fn: LossFn) -> torch.Tensor:
    """Each pair's class-embedding vector, started at its class's own, optimised against `loss_fn`; the final images."""
    surface: ClassSurface = victim.surface
    vec = {"class": surface.table[labels.to(surface.table.device)].clone().float().requires_grad_(True)}
    cond = victim.encode(labels)
    with surface.embeddings(vec["class"]):
        _descend(vec, _adam(vec, {"class": float(surface.table.float().std())}, budget.lr), budget.steps,
                 lambda: loss_fn(victim.render(cond, z)))
        with torch.no_grad():
            return victim.render(cond, z, full=True)


@torch.no_grad()
def transplant_attack(victim, original_table: torch.Tensor, labels: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The erased model's images with the original model's embedding of each pair's class in place of its own."""
    with victim.surface.embeddings(original_table[labels.to(original_table.device)]):
        return victim.render(victim.encode(labels), z, full=True)
