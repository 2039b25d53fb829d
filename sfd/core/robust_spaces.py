"""Robust SFD's perturbation spaces (DESIGN.md section 6): where the inner attack of `sfd.core.robust` moves a forget row.

Each space keeps one perturbation per forget item (prompt or class) across iterations (fast adversarial training) and
answers the same calls:
- `start(idx, z)`: the kept perturbations of forget items `idx` (a dict of tensors requiring grad), for noise z;
- `condition(idx, params)`: the conditioning those perturbations give (through the frozen text encoders for tokens);
- `noise(params, z)`: the noise the generator starts from (z itself, except in the `noise` space);
- `step(idx, params, grads, size)`: one normalised step down the inner loss, projected back into the budget;
- `store(idx, params)`, `state()`, `load_state(tensors)`: the kept perturbations, for the next iteration and a resume.

Text spaces: `conditioning` (a bounded delta on the encoder output), `soft-tokens` (soft tokens before the prompt),
`token` (a learned token in place of the concept word), all through the attack library's `TextSurface`. `noise`: the
initial noise moved on the Gaussian shell (the noise attack's space). Class-conditional models: `class-embedding`, a
bounded delta on the class-embedding vector (the class attack's space), through a hook on the class-embedding layer.
"""

from __future__ import annotations

import torch

from sfd.kernel.tree import tree_map


def zip_map(fn, a, b):
    """`fn(x, y)` over the tensors of two nested dicts of the same structure."""
    if isinstance(a, dict):
        return {k: zip_map(fn, a[k], b[k]) for k in a}
    return fn(a, b) if isinstance(a, torch.Tensor) else a


def _named_map(fn, tree, name: str = ""):
    """`fn(key, leaf)` over a nested dict's tensors, each with the key it sits under."""
    if isinstance(tree, dict):
        return {k: _named_map(fn, v, k) for k, v in tree.items()}
    return fn(name, tree)


def row_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1))).clamp(min=1e-12)


def leaves(tree) -> list[torch.Tensor]:
    if isinstance(tree, dict):
        return [leaf for k in tree for leaf in leaves(tree[k])]
    return [tree]


def rebuild(tree, values: list[torch.Tensor]):
    """A tree of `tree`'s structure holding `values` in `leaves` order."""
    it = iter(values)

    def build(t):
        return {k: build(v) for k, v in t.items()} if isinstance(t, dict) else next(it)
    return build(tree)


def _flat_state(tree, prefix: str) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}

    def walk(t, p):
        for k, v in t.items():
            walk(v, f"{p}{k}.") if isinstance(v, dict) else flat.__setitem__(f"{p}{k}", v)
    walk(tree, prefix)
    return flat


class _Space:
    """What every space shares: the noise is z, and a state of named tensors copied back in place on a resume."""

    def noise(self, params, z: torch.Tensor) -> torch.Tensor:
        return z

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, value in self.state().items():
            value.copy_(tensors[key])


class ConditioningDelta(_Space):
    """One delta per forget prompt on the encoder output (the conditioning entries the family lets an attacker move:
    `ModelFamily.attack_leaves`; SDXL's size ids stay as they are), each row kept within `budget` times that row's own
    norm: a bounded version of the conditioning attack of the robustness table."""

    name = "conditioning"

    def __init__(self, forget: dict, budget: float, gen: torch.Generator, attack_leaves=("encoder_hidden_states",)):
        self.forget = forget
        self.budget = _named_map(lambda name, c: budget if name in attack_leaves else 0.0, forget)  # per entry
        # Random start inside the ball (fast adversarial training's random init): a zero delta is a stationary point
        # of the inner loss on a generator that still equals its base.
        def init(c, b):
            d = torch.randn(c.shape, generator=gen).to(c.device, torch.float32)
            return d * (0.5 * b * row_norm(c.float()) / row_norm(d))
        self.delta = zip_map(init, forget, self.budget)

    def start(self, idx: torch.Tensor, z: torch.Tensor, gen: torch.Generator):
        return tree_map(lambda d: d[idx.to(d.device)].clone().requires_grad_(True), self.delta)

    def condition(self, idx: torch.Tensor, params) -> dict:
        return zip_map(lambda c, d: c[idx.to(c.device)] + d.to(c.dtype), self.forget, params)

    def step(self, idx: torch.Tensor, params, grads, size: float):
        """A normalised gradient step down the inner loss, then the projection onto the ball."""
        def move(c, d, g, b):
            bound = b * row_norm(c[idx.to(c.device)].float())
            d = d.detach() - size * bound * g / row_norm(g)
            return d * (bound / row_norm(d)).clamp(max=1.0)
        trees = (self.forget, params, grads, self.budget)
        return rebuild(params, [move(*ls) for ls in zip(*map(leaves, trees))])

    def store(self, idx: torch.Tensor, params) -> None:
        zip_map(lambda d, p: d.index_copy_(0, idx.to(d.device), p.detach().to(d.dtype)), self.delta, params)

    def state(self) -> dict[str, torch.Tensor]:
        return _flat_state(self.delta, "delta.")


class SoftTokens(_Space):
    """k soft token embeddings per forget prompt, placed before it and run through the frozen text encoders, each in
    its own embedding space (UnlearnDiffAtk's / AdvUnlearn's space; the attack library's `TextSurface`, so every text
    family). Each soft token is kept within the norm of its encoder's largest real token."""

    name = "soft-tokens"

    def __init__(self, surface, prompts, k: int, gen: torch.Generator):
        self.surface, self.k = surface, k
        self.prompts = surface.prefixed(prompts, k)
        tables = {s.name: s.table.float() for s in surface.slots}
        self.max_norm = {n: float(tb.norm(dim=1).max()) for n, tb in tables.items()}
        self.scale = {n: float(tb.std()) * tb.shape[1] ** 0.5 for n, tb in tables.items()}  # a typical token's norm: the step's unit
        self.soft = surface.random_tokens(len(prompts), k, gen)

    def start(self, idx: torch.Tensor, z: torch.Tensor, gen: torch.Generator):
        return {n: v[idx.to(v.device)].clone().requires_grad_(True) for n, v in self.soft.items()}

    def condition(self, idx: torch.Tensor, params) -> dict:
        with self.surface.tokens(params):
            return self.surface.encode([self.prompts[i] for i in idx.tolist()])

    def step(self, idx: torch.Tensor, params, grads, size: float):
        def move(n):
            s = params[n].detach() - size * self.scale[n] * grads[n] / grads[n].norm(dim=-1, keepdim=True).clamp(min=1e-12)
            return s * (self.max_norm[n] / s.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)
        return {n: move(n) for n in params}

    def store(self, idx: torch.Tensor, params) -> None:
        for n, v in self.soft.items():
            v.index_copy_(0, idx.to(v.device), params[n].detach().to(v.dtype))

    def state(self) -> dict[str, torch.Tensor]:
        return {f"soft.{n}": v for n, v in self.soft.items()}


class ConceptToken(SoftTokens):
    """A learned token in place of the concept word of each forget prompt, through the frozen text encoders (textual
    inversion's space, CCE). One token per prompt: one token shared by all prompts (as textual inversion learns) left
    more to the inversion attack on the shapes world (64% against 48%, one seed each; BENCHMARKS.md)."""

    name = "token"

    def __init__(self, surface, prompts, concepts, gen: torch.Generator):
        from sfd.core.prompts import mentions

        super().__init__(surface, prompts, 1, gen)
        hit = lambda p: next((c for c in concepts if mentions(p, c)), concepts[0])  # noqa: E731
        self.prompts = [surface.with_placeholder([p], hit(p))[0] for p in prompts]


class NoiseShell(_Space):
    """The initial noise itself, moved from the iteration's draw z and kept on the shell ||z|| = sqrt(dim z) where
    Gaussian noise lies (the noise attack's space); each step moves it by `size` times that radius at most. Nothing is
    kept across iterations: every adversarial iteration starts from fresh noise, moved at random by `jitter` times the
    radius (z itself is a stationary point of the inner loss on a generator that still equals its base)."""

    name = "noise"

    def __init__(self, forget: dict, jitter: float):
        self.forget, self.jitter = forget, jitter

    def start(self, idx: torch.Tensor, z: torch.Tensor, gen: torch.Generator):
        radius = float(z[0].numel()) ** 0.5
        d = torch.randn(z.shape, generator=gen).to(z.device, z.dtype)
        x = z.detach() + self.jitter * radius * d / row_norm(d)
        return {"z": (x * (radius / row_norm(x))).requires_grad_(True)}

    def condition(self, idx: torch.Tensor, params) -> dict:
        return tree_map(lambda c: c[idx.to(c.device)], self.forget)

    def noise(self, params, z: torch.Tensor) -> torch.Tensor:
        return params["z"]

    def step(self, idx: torch.Tensor, params, grads, size: float):
        z, g = params["z"].detach(), grads["z"]
        radius = float(z[0].numel()) ** 0.5
        z = z - size * radius * g / row_norm(g)
        return {"z": z * (radius / row_norm(z))}

    def store(self, idx: torch.Tensor, params) -> None:
        pass


class _ClassRows:
    """Forward hooks on a class-embedding layer: a row whose label is `offset + j` is embedded as the class
    `classes[j]`, plus `deltas[j]`; every other label as it is. So an adversarial row travels through the trainer,
    its micro-batches and DDP split as a plain integer label."""

    def __init__(self, offset: int):
        self.offset = offset
        self.classes: torch.Tensor | None = None
        self.deltas: torch.Tensor | None = None
        self._picked: torch.Tensor | None = None

    def before(self, module, inputs):
        labels = inputs[0]
        mark = labels >= self.offset
        if self.classes is None or not bool(mark.any()):
            self._picked = None
            return None
        j = (labels - self.offset).clamp(min=0)
        self._picked = torch.where(mark, j, -1)
        return (torch.where(mark, self.classes.to(labels.device)[j.clamp(max=len(self.classes) - 1)], labels), *inputs[1:])

    def after(self, module, inputs, output):
        picked, self._picked = self._picked, None
        if picked is None:
            return output
        mark = (picked >= 0).unsqueeze(-1)
        add = self.deltas.to(output.device, output.dtype)[picked.clamp(min=0)]
        return output + torch.where(mark, add, torch.zeros_like(add))


class ClassEmbeddingDelta(_Space):
    """One delta per forget class on the class-embedding vector (the class-conditioning attack's space,
    `sfd.core.attacks.classes`), each kept within `budget` times the norm of the class's own embedding at the start,
    and inside the class's cell (`ClassCell`). Installed as hooks on the class-embedding layers of the trained
    networks (the generator's, and the fake score's in full mode); `close()` removes them."""

    name = "class-embedding"

    def __init__(self, forget_classes: torch.Tensor, layers, budget: float, gen: torch.Generator):
        table = layers[0].weight.detach() if hasattr(layers[0], "weight") else layers[0].base_layer.weight.detach()
        self.forget = forget_classes.long()
        self.rows = ClassRowsHooks(layers, offset=table.shape[0])
        self.bound = budget * table[self.forget].float().norm(dim=1, keepdim=True).clamp(min=1e-12)
        self.cells = [ClassCell(table.float(), int(k), self.forget.tolist()) for k in self.forget]
        d = torch.randn((len(self.forget), table.shape[1]), generator=gen)
        self.delta = self._project(torch.arange(len(self.forget)), d * 0.5 * self.bound / d.norm(dim=1, keepdim=True))
        self.delta = self.delta.to(table.device)

    def start(self, idx: torch.Tensor, z: torch.Tensor, gen: torch.Generator):
        return {"delta": self.delta[idx.to(self.delta.device)].clone().requires_grad_(True)}

    def condition(self, idx: torch.Tensor, params) -> dict:
        self.rows.set(self.forget[idx.cpu()], params["delta"])
        return {"class_labels": self.rows.offset + torch.arange(len(idx), device=self.delta.device)}

    def step(self, idx: torch.Tensor, params, grads, size: float):
        bound = self.bound[idx.cpu()].to(self.delta.device)
        d = params["delta"].detach() - size * bound * grads["delta"] / row_norm(grads["delta"])
        return {"delta": self._project(idx, d)}

    def _project(self, idx: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Into the budget's ball, then into the forget class's cell (a projection that never lengthens the delta)."""
        d = d * (self.bound[idx.cpu()].to(d.device) / row_norm(d)).clamp(max=1.0)
        return torch.stack([self.cells[int(j)].project(row) for j, row in zip(idx.tolist(), d)])

    def store(self, idx: torch.Tensor, params) -> None:
        self.delta.index_copy_(0, idx.to(self.delta.device), params["delta"].detach().to(self.delta.dtype))

    def state(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta}

    def close(self) -> None:
        self.rows.close()


class ClassCell:
    """The embeddings nearer to forget class k's own e_k than to any other row of the table (k's Voronoi cell): the
    half-spaces (e_r - e_k) . delta <= ||e_r - e_k||^2 / 2 on a delta from e_k. Robust SFD trains the forget term
    inside it: a delta past another class's boundary teaches that class's own neighbourhood to draw the override.
    (On the digits world, erasing 4 within 1.5x its norm with 64 retain rows, class 7's accuracy fell to 31% without
    the cell and to 87% with it; BENCHMARKS.md.) The rows of the other forget classes are left out, as their cells
    are forgotten too; the unconditional row is kept."""

    def __init__(self, table: torch.Tensor, k: int, forget: list[int]):
        others = [r for r in range(table.shape[0]) if r not in forget]
        self.normals = table[others] - table[k]
        self.offsets = self.normals.pow(2).sum(1) / 2

    def project(self, delta: torch.Tensor, sweeps: int = 20) -> torch.Tensor:
        """A point of the cell, by projecting onto the most violated half-space in turn (the cell contains 0, so
        each projection shortens the delta, and a delta already inside is returned as it is)."""
        a = self.normals.to(delta.device, torch.float32)
        b = self.offsets.to(delta.device)
        d = delta.float()
        for _ in range(sweeps * len(a)):
            excess = a @ d - b
            worst = int(excess.argmax())
            if excess[worst] <= 0:
                break
            d = d - excess[worst] / a[worst].pow(2).sum() * a[worst]
        return d.to(delta.dtype)


class ClassRowsHooks:
    """`_ClassRows` on every given layer (one shared table), removable."""

    def __init__(self, layers, offset: int):
        self.hook = _ClassRows(offset)
        self.offset = offset
        self.handles = [h for layer in layers for h in (layer.register_forward_pre_hook(self.hook.before),
                                                        layer.register_forward_hook(self.hook.after))]

    def set(self, classes: torch.Tensor, deltas: torch.Tensor) -> None:
        self.hook.classes, self.hook.deltas = classes, deltas

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
