"""Conditioning as nested dicts of tensors (batch-first): SDXL passes `added_cond_kwargs` inside the UNet kwargs."""

from __future__ import annotations

from typing import Callable

import torch


def tree_map(fn: Callable[[torch.Tensor], torch.Tensor], tree):
    """`fn` applied to every tensor of a nested dict (other values kept)."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    return fn(tree) if isinstance(tree, torch.Tensor) else tree


def tree_cat(trees: list):
    """Concatenate nested dicts of the same structure along the batch dimension."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: tree_cat([t[k] for t in trees]) for k in first}
    return torch.cat(trees) if isinstance(first, torch.Tensor) else first


def tree_len(tree) -> int:
    """The batch size: the first dimension of the first tensor."""
    if isinstance(tree, dict):
        return tree_len(next(iter(tree.values())))
    return len(tree)


def tree_where(mask: torch.Tensor, a, b):
    """Rows of `a` where `mask` (one bool per row), else rows of `b`; a table of one row broadcasts to all rows."""
    if isinstance(a, dict):
        return {k: tree_where(mask, a[k], b[k]) for k in a}
    m = mask.view(-1, *([1] * (max(a.ndim, b.ndim) - 1))).to(b.device)
    return torch.where(m, a.to(b.device), b)


def tree_leaves(tree) -> list[torch.Tensor]:
    """The tensors of a nested dict, in key order."""
    if isinstance(tree, dict):
        return [leaf for k in tree for leaf in tree_leaves(tree[k])]
    return [tree] if isinstance(tree, torch.Tensor) else []
