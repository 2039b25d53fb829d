"""Robust SFD: adversarial forget rows for stage 2 (DESIGN.md section 6).

Plain SFD trains the generator on the forget prompts' conditionings only; elsewhere in conditioning space it behaves
like its base, which still draws the concept. Here the forget term also trains on conditions found against the current
generator (fast adversarial training: perturbations kept per forget prompt across iterations, a few inner steps every
`robust_every` iterations):
- inner maximisation, data-free and detector-free (UMA's objective): make G(z', c_f + delta) match the frozen base
  generator's G0(z, c_f) for the same noise z;
- outer step: those conditions replace some of the batch's forget rows, so they go through the ordinary forget term
  (generator and fake score at c_adv, the teacher at the forget item's override).

Perturbation spaces (`robust_space`, sfd/core/robust_spaces.py): text models `conditioning` (a norm-bounded delta on the
encoder output), `soft-tokens` (soft tokens before the forget prompt, through the frozen text encoders) and `token` (a
learned token in place of the concept word: textual inversion's space), through the attack library's `TextSurface`;
class-conditional models `class-embedding` (a bounded delta on the class-embedding vector); both, `noise` (the initial
noise z' on the Gaussian shell). Several spaces, comma-separated, take turns.

The trainer only calls `refresh(trainer)`, `rows(batch, z, step)` and `close()`, and saves `state()`.
"""

from __future__ import annotations

import copy

import torch

from sfd.core.adapters import AdapterView
from sfd.core.attacks import TextSurface
from sfd.core.concepts import ConditionBatch
from sfd.core.losses import Cond
from sfd.core.robust_spaces import (ClassEmbeddingDelta, ConceptToken, ConditioningDelta, NoiseShell, SoftTokens, leaves,
                                    rebuild, zip_map)
from sfd.kernel.errors import SFDError
from sfd.kernel.tree import tree_len, tree_map

OBJECTIVE = "UMA output matching: ||G(z, c_adv) - G0(z, c_f)||^2 minimised over the perturbation (G0: the frozen base)"


def output_match_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared distance between the generator's output and the base's (UMA's inner loss)."""
    return (x.float() - target.float()).pow(2).flatten(1).mean(1)


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

def _keep_best(space, params, best, loss: torch.Tensor, best_loss: torch.Tensor):
    """Per row, the perturbation with the lower loss."""
    better = loss < best_loss
    pick = lambda new, old: torch.where(better.view(-1, *([1] * (new.ndim - 1))).to(new.device), new.detach(), old)  # noqa: E731
    return zip_map(pick, params, best), torch.minimum(loss, best_loss)


def adversarial_rows(config) -> int:
    """Forget rows per adversarial iteration (of the global batch): `robust_share` of them, at least one."""
    return min(config.batch_forget, max(1, round(config.batch_forget * config.robust_share)))


class AdversarialForget:
    """Adversarial forget rows for the trainer: `refresh(trainer)` runs the inner maximisation at the start of an
    adversarial iteration, `rows(batch, z, step)` puts its conditions (and, in the `noise` space, its noise) into that
    iteration's batches."""

    def __init__(self, spaces: list, base: FrozenBase, forget: dict, config):
        self.spaces, self.base, self.forget = list(spaces), base, forget
        self.config = config
        self.override: dict | None = None  # the teacher's rows, per forget item: taken from the trainer's settled spec
        self.n_rows = adversarial_rows(config)
        # Its own random stream: the batch generator draws exactly what a plain run draws.
        self.rng = torch.Generator().manual_seed(config.seed + 104729)
        self.current: tuple[int, torch.Tensor, dict, torch.Tensor | None] | None = None
        self.last_objective: float | None = None

    def is_adversarial(self, step: int) -> bool:
        return step % self.config.robust_every == 0

    def space_at(self, step: int):
        """Several spaces take turns, one per adversarial iteration."""
        return self.spaces[(step // self.config.robust_every) % len(self.spaces)]

    @property
    def space(self):
        return self.spaces[0]

    def maximise(self, generator, idx: torch.Tensor, z: torch.Tensor, steps: int | None = None, autocast=None, space=None):
        """The inner maximisation on forget items `idx` with noise z, from their kept perturbations. Returns, per row,
        the best perturbation seen (PGD's keep-best: a step may overshoot on a sharply curved loss) and the objective
        (minus the output-matching loss, mean over rows) at the start and at the end."""
        rows = lambda t: tree_map(lambda v: v[idx.to(v.device)], t)  # noqa: E731
        space = space or self.space
        target = self.base(z, rows(self.forget))
        params = space.start(idx, z, self.rng)
        ctx = autocast or (lambda: torch.autocast("cpu", enabled=False))
        n = self.config.robust_steps if steps is None else steps
        best = best_loss = None
        for i in range(n + 1):  # n gradient steps, and one forward pass to judge the last
            with ctx(), torch.set_grad_enabled(i < n):
                loss = output_match_loss(generator(space.noise(params, z), space.condition(idx, params)), target)
            if best is None:
                best, best_loss = tree_map(lambda p: p.detach(), params), loss.detach()
            else:
                best, best_loss = _keep_best(space, params, best, loss.detach(), best_loss)
            before = -float(loss.detach().mean()) if i == 0 else before
            if i == n:
                break
            grads = torch.autograd.grad(loss.sum(), leaves(params))
            # The step's length decays as 1 / (i + 1): steps of a fixed length circle the optimum once near it.
            params = space.step(idx, params, rebuild(params, list(grads)), self.config.robust_step / (i + 1))
            params = tree_map(lambda p: p.requires_grad_(True), params)
        return best, before, -float(best_loss.mean())

    def refresh(self, trainer) -> None:
        """At the start of each iteration: on an adversarial one, move the kept perturbations of a few forget items
        up the inner objective against the current generator."""
        self.current = None
        if not self.is_adversarial(trainer.step_count):
            return
        if self.override is None:
            self.override = trainer.spec.forget_and_override()[1]
        idx = torch.randint(tree_len(self.forget), (self.n_rows,), generator=self.rng)
        z = torch.randn((self.n_rows, *trainer.latent_shape), generator=self.rng).to(trainer.device)
        trainer.roles.set_trainable(generator=False, fake=False)  # gradients to the perturbation only
        space = self.space_at(trainer.step_count)
        params, before, _ = self.maximise(trainer.generator, idx, z, autocast=trainer._autocast, space=space)
        space.store(idx, params)
        with torch.no_grad():
            cond = tree_map(lambda v: v.detach(), space.condition(idx, params))
            noise = space.noise(params, z)
        self.current = (trainer.step_count, idx, cond, None if noise is z else noise.detach())
        self.last_objective = before

    def rows(self, batch: ConditionBatch, z: torch.Tensor, step: int) -> tuple[ConditionBatch, torch.Tensor]:
        """The global batch and its noise with the last forget rows replaced by the adversarial conditions (fake score
        and generator at c_adv, the teacher at the item's override) and, in the `noise` space, the adversarial noise,
        on the iteration that found them; else the batch and noise as they are."""
        if self.current is None or self.current[0] != step:
            return batch, z
        _, idx, adv, noise = self.current
        n = len(idx)
        swap = lambda full, new: torch.cat([full[: len(full) - n], new.to(full.device, full.dtype)])  # noqa: E731
        override = tree_map(lambda v: v[idx.to(v.device)], self.override)
        fake = Cond(zip_map(swap, batch.fake.cond, adv), batch.fake.uncond)
        teacher = Cond(zip_map(swap, batch.teacher.cond, override), batch.teacher.uncond)
        return ConditionBatch(fake, teacher, batch.n_retain, batch.n_forget), z if noise is None else swap(z, noise)

    def close(self) -> None:
        """Training is over: the spaces' hooks (if any) come off the networks."""
        for space in self.spaces:
            getattr(space, "close", lambda: None)()

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
        if "class-embedding" in names:
            d["budget"] = (f"||delta|| <= {c.robust_budget} x ||e_k|| per forget class, and e_k + delta nearer e_k than "
                           "any retained class")
        if "soft-tokens" in names:
            d["soft_tokens"] = c.robust_tokens
        if "noise" in names:
            d["noise"] = f"z moved on the shell ||z|| = sqrt(dim), {c.robust_step} x radius per step"
        return d


TEXT_SPACES = ("conditioning", "soft-tokens", "token", "noise")
CLASS_SPACES = ("class-embedding", "noise")


def build_adversary(family, teacher_pipe, roles, spec, config):
    """The robust component of an erase (None unless `config.robust`), built beside the roles: its base G0 must be
    taken before any training state is loaded into them (and before a space hooks the networks)."""
    if not config.robust:
        return None
    is_class = family.class_embedding(teacher_pipe) is not None
    allowed = CLASS_SPACES if is_class else TEXT_SPACES
    names = robust_spaces(config)
    wrong = [n for n in names if n not in allowed]
    if wrong:
        raise SFDError(f"robust_space {wrong[0]!r} does not apply to {family.description} models; use "
                       f"{' or '.join(allowed)} (--robust-space)")
    base = FrozenBase(roles)
    forget = spec.forget_and_override(forget_only=True)[0]
    gen = space_generator(config)
    spaces, surface = [], None
    for name in names:
        if name == "noise":
            spaces.append(NoiseShell(forget, 0.5 * config.robust_step))
        elif name == "conditioning":
            spaces.append(ConditioningDelta(forget, config.robust_budget, gen, family.attack_leaves))
        elif name == "class-embedding":
            layers = [family.class_embedding_of(n) for n in trained_networks(roles)]
            spaces.append(ClassEmbeddingDelta(forget["class_labels"], layers, config.robust_budget, gen))
        else:
            surface = surface or TextSurface(family, teacher_pipe)
            prompts = [p for p, _ in spec.spec.pairs]
            spaces.append(SoftTokens(surface, prompts, config.robust_tokens, gen) if name == "soft-tokens"
                          else ConceptToken(surface, prompts, list(spec.concepts), gen))
    return AdversarialForget(spaces, base, forget, config)


def space_generator(config) -> torch.Generator:
    """The random stream of the spaces' random starts (its own: a plain run draws what it drew before)."""
    return torch.Generator().manual_seed(config.seed + 15485863)


def trained_networks(roles) -> list:
    """The networks the generator and the fake score run: two in full mode, the one shared network in LoRA mode."""
    nets = [d.unet.unet if isinstance(d.unet, AdapterView) else d.unet for d in (roles.generator, roles.fake)]
    return list({id(n): n for n in nets}.values())


def robust_spaces(config) -> list[str]:
    """`robust_space` as a list: one space, or several separated by commas (taking turns)."""
    return [n.strip() for n in config.robust_space.split(",") if n.strip()]
