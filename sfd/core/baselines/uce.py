"""Unified Concept Editing (UCE; Gandikota, Orgad, Belinkov, Materzynska & Bau, WACV 2024), on the family interface.

A closed-form edit of every linear layer that reads the text conditioning (the cross-attention keys and values;
in the shapes world also the attention pooling of its pooled-text embedding, which carries the caption into every
resnet). For a layer W, with the layer's inputs c_i for the forget prompts, v*_i = W c'_i its outputs for the same
positions of the override (guide) prompts, and c_j its inputs for the preserved prompts:

    W' = (s_e sum_i v*_i c_i^T / n_e + s_p sum_j W c_j c_j^T / n_p + lam W)
         (s_e sum_i c_i c_i^T / n_e + s_p sum_j c_j c_j^T / n_p + lam I)^-1

the least-squares solution that maps the forget inputs to the guide outputs while keeping the preserved ones
(and, through lam, W itself). Sums are averaged over their rows so that the two sets weigh as the scales say
whatever their sizes; lam is relative to the mean eigenvalue of the preserved term.

Rows are token positions. A causal text encoder carries the concept into every position after its word (and the
padding), so the forget rows are the positions where the forget and override prompts' layer inputs differ, paired
position by position: exact when the concept and the override tokenize to the same number of tokens (as a colour or
shape of the shapes world does), an approximation otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from sfd.kernel.errors import SFDError

# Layers whose input is the text conditioning: cross-attention keys and values (the paper's edit), and the
# key/value/query projections of diffusers' TextTimeEmbedding pooling (addition_embed_type "text").
TEXT_INPUT_LAYERS = ("attn2.to_k", "attn2.to_v", "add_embedding.pool.k_proj", "add_embedding.pool.v_proj",
                     "add_embedding.pool.q_proj")
PAPER = {"erase_scale": 1.0, "preserve_scale": None, "lamb": 0.5, "note": "UCE repository defaults for objects/art "
         "(sums, not means; preserve scale chosen per task)"}


@dataclass(frozen=True)
class UCEConfig:
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    lamb: float = 0.1
    tolerance: float = 1e-4  # a position is a forget row when forget and override inputs differ by more

    def validate(self) -> "UCEConfig":
        if self.erase_scale <= 0 or self.preserve_scale < 0 or self.lamb <= 0:
            raise SFDError(f"UCE scales must be positive (erase {self.erase_scale}, preserve {self.preserve_scale}, lamb {self.lamb})")
        return self

    def describe(self) -> dict:
        return {**asdict(self), "paper": PAPER}


def text_input_layers(network: nn.Module) -> dict[str, nn.Linear]:
    layers = {n: m for n, m in network.named_modules() if isinstance(m, nn.Linear) and n.endswith(TEXT_INPUT_LAYERS)}
    if not layers:
        raise SFDError("UCE found no cross-attention key/value layers (attn2.to_k / to_v) in this network")
    return layers


@torch.no_grad()
def layer_inputs(denoiser, layers: dict[str, nn.Linear], cond: dict, latent_shape: tuple[int, ...], device: str) -> dict[str, torch.Tensor]:
    """What each layer receives for the conditioning rows of `cond`: {name: (n, tokens, features)}."""
    from sfd.kernel.tree import tree_leaves

    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0].detach().float()))
             for name, m in layers.items()]
    try:
        n = tree_leaves(cond)[0].shape[0]
        denoiser(torch.zeros((n, *latent_shape), device=device), torch.ones(n, device=device), cond)
    finally:
        for h in hooks:
            h.remove()
    missing = sorted(set(layers) - set(seen))
    if missing:
        raise SFDError(f"UCE: layer {missing[0]} was not called with the text conditioning")
    return {k: v if v.ndim == 3 else v.unsqueeze(1) for k, v in seen.items()}


def edit_weight(w: torch.Tensor, forget: torch.Tensor, guide: torch.Tensor, preserve: torch.Tensor, cfg: UCEConfig) -> torch.Tensor:
    """The closed-form W' for rows `forget` (n_e, d) mapped to W @ `guide` rows, keeping `preserve` rows (n_p, d)."""
    w = w.double()
    xe, xg, xp = forget.double(), guide.double(), preserve.double()
    c_p = xp.T @ xp / max(len(xp), 1)
    lam = cfg.lamb * float(torch.diagonal(c_p).mean()) if len(xp) else cfg.lamb
    eye = torch.eye(w.shape[1], dtype=w.dtype)
    lhs = cfg.erase_scale * (w @ xg.T @ xe) / len(xe) + cfg.preserve_scale * (w @ c_p) + lam * w
    rhs = cfg.erase_scale * (xe.T @ xe) / len(xe) + cfg.preserve_scale * c_p + lam * eye
    return torch.linalg.solve(rhs, lhs.T).T  # lhs @ rhs^-1 (rhs is symmetric)


@torch.no_grad()
def apply_uce(denoiser, forget_cond: dict, override_cond: dict, preserve_cond: dict, latent_shape: tuple[int, ...],
              cfg: UCEConfig, device: str = "cpu") -> dict:
    """Edit `denoiser.unet`'s text-input layers in place; returns what was edited."""
    cfg.validate()
    layers = text_input_layers(denoiser.unet)
    f_in = layer_inputs(denoiser, layers, forget_cond, latent_shape, device)
    o_in = layer_inputs(denoiser, layers, override_cond, latent_shape, device)
    p_in = layer_inputs(denoiser, layers, preserve_cond, latent_shape, device)
    record = {}
    for name, layer in layers.items():
        f, o = f_in[name], o_in[name]
        if f.shape != o.shape:
            raise SFDError(f"UCE: forget and override prompts give {name} inputs of different shapes {tuple(f.shape)} vs {tuple(o.shape)}")
        rows = (f - o).abs().amax(-1) > cfg.tolerance
        if not rows.any():
            raise SFDError("UCE: the forget and override prompts are encoded identically; nothing to edit")
        p = p_in[name].reshape(-1, p_in[name].shape[-1])
        new = edit_weight(layer.weight.float().cpu(), f[rows].cpu(), o[rows].cpu(), p.cpu(), cfg)
        change = float((new.float() - layer.weight.float().cpu()).norm() / layer.weight.float().norm())
        layer.weight.copy_(new.to(layer.weight.dtype))
        record[name] = {"forget_rows": int(rows.sum()), "preserve_rows": len(p), "relative_change": change}
    return {"layers": len(record), "edited": record}
