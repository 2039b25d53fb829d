"""Robust SFD: adversarial forget rows for stage 2 (DESIGN.md section 6).

Plain SFD trains the generator on the forget prompts' conditionings only; elsewhere in conditioning space it behaves
like its base, which still draws the concept. Here the forget term also trains on conditions found against the current
generator (fast adversarial training: perturbations kept per forget prompt across iterations, a few inner steps every
`robust_every` iterations):
- inner maximisation, data-free and detector-free (UMA's objective): make G(z, c_f + delta) match the frozen base
  generator's G0(z, c_f) for the same noise z;
- outer step: those conditions replace some of the batch's forget rows, so they go through the ordinary forget term
  (generator and fake score at c_adv, the teacher at the forget prompt's override).

Perturbation spaces (`robust_space`): `conditioning`, a norm-bounded delta on the encoder output itself; `soft-tokens`,
k soft token embeddings placed before the forget prompt and run through the frozen text encoders, and `token`, a
learned token in place of the concept word (textual inversion's space). Every text family, through its attack hook
(sfd/core/attacks: the same `TextSurface` the robustness table attacks with). Several spaces, comma-separated, take
turns.

The trainer only calls `refresh(trainer)` and `rows(batch, step)` and saves `state()`.
"""

from __future__ import annotations

import copy

import torch

from sfd.core.attacks import TextSurface
from sfd.core.concepts import ConditionBatch
from sfd.kernel.errors import SFDError
from sfd.core.losses import Cond
from sfd.kernel.tree import tree_len, tree_map

OBJECTIVE = "UMA output matching: ||G(z, c_adv) - G0(z, c_f)||^2 minimised over the perturbation (G0: the frozen base)"


# ------------------------------------------------------------------------------------------ primitives

def _zip_map(fn, a, b):
    """`fn(x, y)` over the tensors of two nested dicts of the same structure."""
    if isinstance(a, dict):
        return {k: _zip_map(fn, a[k], b[k]) for k in a}
    return fn(a, b) if isinstance(a, torch.Tensor) else a


def _named_map(fn, tree, name: str = ""):
    """`fn(key, leaf)` over a nested dict's tensors, each with the key it sits under."""
    if isinstance(tree, dict):
        return {k: _named_map(fn, v, k) for k, v in tree.items()}
    return fn(name, tree)


def _row_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1))).clamp(min=1e-12)


def output_match_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared distance between the generator's output and the base's (UMA's inner loss)."""
    return (x.float() - target.float()).pow(2).flatten(1).mean(1)


# ------------------------------------------------------------------------------------------ spaces

class ConditioningDelta:
    """One delta per forget prompt on the encoder output (the conditioning entries the family lets an attacker move:
    `ModelFamily.attack_leaves`; SDXL's size ids stay as they are), each row kept within `budget` times that row's own
    norm: a bounded version of the conditioning attack of the robustness table."""

    name = "conditioning"

    def __init__(self, forget: dict, budget: float, gen: torch.Generator, leaves=("encoder_hidden_states",)):
        self.forget = forget
        self.budget = _named_map(lambda name, c: budget if name in leaves else 0.0, forget)  # per entry
        # Random start inside the ball (fast adversarial training's random init): a zero delta is a stationary point
        # of the inner loss on a generator that still equals its base.
        def init(c, b):
            d = torch.randn(c.shape, generator=gen).to(c.device, torch.float32)
            return d * (0.5 * b * _row_norm(c.float()) / _row_norm(d))
        self.delta = _zip_map(init, forget, self.budget)

    def start(self, idx: torch.Tensor):
        return tree_map(lambda d: d[idx.to(d.device)].clone().requires_grad_(True), self.delta)

    def condition(self, idx: torch.Tensor, params) -> dict:
        return _zip_map(lambda c, d: c[idx.to(c.device)] + d.to(c.dtype), self.forget, params)

    def step(self, idx: torch.Tensor, params, grads, size: float):
        """A normalised gradient step down the inner loss, then the projection onto the ball."""
        def move(c, d, g, b):
            bound = b * _row_norm(c[idx.to(c.device)].float())
            d = d.detach() - size * bound * g / _row_norm(g)
            return d * (bound / _row_norm(d)).clamp(max=1.0)
        trees = (self.forget, params, grads, self.budget)
        return _rebuild(params, [move(*leaves) for leaves in zip(*map(_leaves, trees))])

    def store(self, idx: torch.Tensor, params) -> None:
        _zip_map(lambda d, p: d.index_copy_(0, idx.to(d.device), p.detach().to(d.dtype)), self.delta, params)

    def state(self) -> dict[str, torch.Tensor]:
        flat: dict[str, torch.Tensor] = {}

        def walk(tree, prefix):
            for k, v in tree.items():
                walk(v, f"{prefix}{k}.") if isinstance(v, dict) else flat.__setitem__(f"{prefix}{k}", v)
        walk(self.delta, "delta.")
        return flat

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, value in self.state().items():
            value.copy_(tensors[key])


class SoftTokens:
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

    def start(self, idx: torch.Tensor):
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

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for n, v in self.soft.items():
            v.copy_(tensors[f"soft.{n}"])


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


# ------------------------------------------------------------------------------------------ the base G0

class FrozenBase:
    """The generator as it was when the erase started, G0(z, c), without gradient.

    Full roles: a frozen copy of the generator's network. LoRA roles: the generator's adapter weights as they were
    at the start (zero on a one-step base, the stage-1 adapter on a LoRA base), swapped in for the call: the base
    generator exactly, for the price of the adapter's weights."""

    def __init__(self, roles):
        self.roles = roles
        if roles.mode == "full":
            gen = roles.generator
            net = copy.deepcopy(gen.unet).requires_grad_(False).eval()
            self.generator = type(gen)(gen.denoiser.with_network(net), gen.convention)
            self.snapshot = None
        else:
            self.generator = roles.generator
            self.snapshot = [p.detach().clone() for p in roles.generator_parameters()]

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, cond: dict) -> torch.Tensor:
        if self.snapshot is None:
            return self.generator(z, cond)
        params = self.roles.generator_parameters()
        current = [p.detach().clone() for p in params]
        for p, s in zip(params, self.snapshot):
            p.data.copy_(s)
        try:
            return self.generator(z, cond)
        finally:
            for p, c in zip(params, current):
                p.data.copy_(c)


# ------------------------------------------------------------------------------------------ the component

def _leaves(tree) -> list[torch.Tensor]:
    if isinstance(tree, dict):
        return [leaf for k in tree for leaf in _leaves(tree[k])]
    return [tree]


def _rebuild(tree, leaves: list[torch.Tensor]):
    """A tree of `tree`'s structure holding `leaves` in `_leaves` order."""
    it = iter(leaves)

    def build(t):
        return {k: build(v) for k, v in t.items()} if isinstance(t, dict) else next(it)
    return build(tree)


def _keep_best(space, params, best, loss: torch.Tensor, best_loss: torch.Tensor):
    """Per row, the perturbation with the lower loss."""
    better = loss < best_loss
    pick = lambda new, old: torch.where(better.view(-1, *([1] * (new.ndim - 1))).to(new.device), new.detach(), old)  # noqa: E731
    return _zip_map(pick, params, best), torch.minimum(loss, best_loss)


def adversarial_rows(config) -> int:
    """Forget rows per adversarial iteration (of the global batch): `robust_share` of them, at least one."""
    return min(config.batch_forget, max(1, round(config.batch_forget * config.robust_share)))


class AdversarialForget:
    """Adversarial forget rows for the trainer: `refresh(trainer)` runs the inner maximisation at the start of an
    adversarial iteration, `rows(batch, step)` puts its conditions into that iteration's batches."""

    def __init__(self, spaces: list, base: FrozenBase, forget: dict, override: dict, config):
        self.spaces, self.base, self.forget, self.override = list(spaces), base, forget, override
        self.config = config
        self.n_rows = adversarial_rows(config)
        # Its own random stream: the batch generator draws exactly what a plain run draws.
        self.rng = torch.Generator().manual_seed(config.seed + 104729)
        self.current: tuple[int, torch.Tensor, dict] | None = None
        self.last_objective: tuple[float, float] | None = None

    def is_adversarial(self, step: int) -> bool:
        return step % self.config.robust_every == 0

    def space_at(self, step: int):
        """Several spaces take turns, one per adversarial iteration."""
        return self.spaces[(step // self.config.robust_every) % len(self.spaces)]

    @property
    def space(self):
        return self.spaces[0]

    def maximise(self, generator, idx: torch.Tensor, z: torch.Tensor, steps: int | None = None, autocast=None, space=None):
        """The inner maximisation on forget prompts `idx` with noise z, from their kept perturbations. Returns, per row,
        the best perturbation seen (PGD's keep-best: a step may overshoot on a sharply curved loss) and the objective
        (minus the output-matching loss, mean over rows) at the start and at the end."""
        rows = lambda t: tree_map(lambda v: v[idx.to(v.device)], t)  # noqa: E731
        space = space or self.space
        target = self.base(z, rows(self.forget))
        params = space.start(idx)
        ctx = autocast or (lambda: torch.autocast("cpu", enabled=False))
        n = self.config.robust_steps if steps is None else steps
        best = best_loss = None
        for i in range(n + 1):  # n gradient steps, and one forward pass to judge the last
            with ctx(), torch.set_grad_enabled(i < n):
                loss = output_match_loss(generator(z, space.condition(idx, params)), target)
            if best is None:
                best, best_loss = tree_map(lambda p: p.detach(), params), loss.detach()
            else:
                best, best_loss = _keep_best(space, params, best, loss.detach(), best_loss)
            before = -float(loss.detach().mean()) if i == 0 else before
            if i == n:
                break
            grads = torch.autograd.grad(loss.sum(), _leaves(params))
            # The step's length decays as 1 / (i + 1): steps of a fixed length circle the optimum once near it.
            params = space.step(idx, params, _rebuild(params, list(grads)), self.config.robust_step / (i + 1))
            params = tree_map(lambda p: p.requires_grad_(True), params)
        return best, before, -float(best_loss.mean())

    def refresh(self, trainer) -> None:
        """At the start of each iteration: on an adversarial one, move the kept perturbations of a few forget prompts
        up the inner objective against the current generator."""
        self.current = None
        if not self.is_adversarial(trainer.step_count):
            return
        idx = torch.randint(tree_len(self.forget), (self.n_rows,), generator=self.rng)
        z = torch.randn((self.n_rows, *trainer.latent_shape), generator=self.rng).to(trainer.device)
        trainer.roles.set_trainable(generator=False, fake=False)  # gradients to the perturbation only
        space = self.space_at(trainer.step_count)
        params, before, _ = self.maximise(trainer.generator, idx, z, autocast=trainer._autocast, space=space)
        space.store(idx, params)
        with torch.no_grad():
            cond = tree_map(lambda v: v.detach(), space.condition(idx, params))
        self.current = (trainer.step_count, idx, cond)
        self.last_objective = before

    def rows(self, batch: ConditionBatch, step: int) -> ConditionBatch:
        """The global batch with its last forget rows replaced by the adversarial conditions (fake score and generator
        at c_adv, the teacher at the prompt's override), on the iteration that found them; else the batch as it is."""
        if self.current is None or self.current[0] != step:
            return batch
        _, idx, adv = self.current
        n = len(idx)
        swap = lambda full, new: torch.cat([full[: len(full) - n], new.to(full.device, full.dtype)])  # noqa: E731
        override = tree_map(lambda v: v[idx.to(v.device)], self.override)
        fake = Cond(_zip_map(swap, batch.fake.cond, adv), batch.fake.uncond)
        teacher = Cond(_zip_map(swap, batch.teacher.cond, override), batch.teacher.uncond)
        return ConditionBatch(fake, teacher, batch.n_retain, batch.n_forget)

    def state(self) -> dict[str, torch.Tensor]:
        out = {"rng": self.rng.get_state()}
        for space in self.spaces:
            out.update({f"{space.name}.{k}": v for k, v in space.state().items()})
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.rng.set_state(tensors["rng"])
        for space in self.spaces:
            space.load_state({k[len(space.name) + 1:]: v for k, v in tensors.items() if k.startswith(space.name + ".")})
        self.current = None

    def describe(self) -> dict:
        c = self.config
        d = {"space": ",".join(sp.name for sp in self.spaces), "objective": OBJECTIVE, "base": "frozen copy of the base generator"
             if self.base.snapshot is None else "the generator's starting adapter swapped in", "inner_steps": c.robust_steps,
             "step_size": c.robust_step, "every": c.robust_every, "rows_per_adversarial_iteration": self.n_rows}
        names = [sp.name for sp in self.spaces]
        if "conditioning" in names:
            d["budget"] = f"||delta|| <= {c.robust_budget} x ||c_f|| per row"
        if "soft-tokens" in names:
            d["soft_tokens"] = c.robust_tokens
        return d


def build_adversary(family, teacher_pipe, roles, spec, config):
    """The robust component of an erase (None unless `config.robust`), built beside the roles: its base G0 must be
    taken before any training state is loaded into them."""
    if not config.robust:
        return None
    if not hasattr(spec, "override") or not isinstance(getattr(spec, "forget", None), dict):
        raise SFDError("--robust supports text-to-image models so far; a class-conditional model's class attack is not "
                       "implemented yet: leave --robust out")
    gen = torch.Generator().manual_seed(config.seed + 15485863)
    spaces, surface = [], None
    for name in robust_spaces(config):
        if name == "conditioning":
            spaces.append(ConditioningDelta(spec.forget, config.robust_budget, gen, family.attack_leaves))
            continue
        surface = surface or TextSurface(family, teacher_pipe)
        prompts = [p for p, _ in spec.spec.pairs]
        if name == "soft-tokens":
            spaces.append(SoftTokens(surface, prompts, config.robust_tokens, gen))
        else:
            spaces.append(ConceptToken(surface, prompts, list(spec.concepts), gen))
    return AdversarialForget(spaces, FrozenBase(roles), spec.forget, spec.override, config)


def robust_spaces(config) -> list[str]:
    """`robust_space` as a list: one space, or several separated by commas (taking turns)."""
    return [n.strip() for n in config.robust_space.split(",") if n.strip()]
