"""What to forget and what to put in its place.

A concept spec turns "forget class 3, override random" (or, for text-to-image, "forget 'red', override
'blue'") into the conditioning batches the trainer needs each step:
- a retain batch: fake score and teacher see the same retained condition;
- a forget batch: the fake score sees the forget condition, the teacher the override condition.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from sfd.kernel.errors import SFDError
from sfd.core.losses import Cond, generate, nearest_class
from sfd.kernel.tree import tree_cat, tree_len, tree_map, tree_where

RANDOM = "random"


def as_condition(encoded) -> dict:
    """A family's encoding of prompts as the network's conditioning dict: a tensor of encoder_hidden_states (SD) is
    wrapped, a dict (SDXL, SD3, FLUX) is returned as it is."""
    return encoded if isinstance(encoded, dict) else {"encoder_hidden_states": encoded}


@dataclass(frozen=True)
class ConditionBatch:
    """`fake` and `teacher` conditions of n_retain retain samples followed by n_forget forget samples."""

    fake: Cond
    teacher: Cond
    n_retain: int
    n_forget: int


def resolve_class(value: str | int, class_names: list[str] | tuple[str, ...]) -> int:
    """A class given by index ("3") or name ("three", case-insensitive) -> its index."""
    text = str(value).strip()
    names = [n.lower() for n in class_names]
    if text.lower() in names:
        return names.index(text.lower())
    if text.lstrip("-").isdigit():
        k = int(text)
        if 0 <= k < len(class_names):
            return k
    raise SFDError(f"unknown class {value!r}: expected an index 0..{len(class_names) - 1} or one of {', '.join(class_names)}")


@dataclass(frozen=True)
class ClassForgetSpec:
    """Forget one or more classes of a label-conditional model; override with a fixed class or a random retained one."""

    class_names: tuple[str, ...]
    forget: tuple[int, ...]
    override: int | None  # None: "random", resolved per run to each forget class's nearest retained class
    null_class: int | None = None  # the UNet's "no class" label, for classifier-free guidance
    random_targets: tuple[int, ...] | None = None  # "random" resolved: the override of each forget class, in order

    @classmethod
    def parse(cls, class_names, forget: list[str], override: str, null_class: int | None = None) -> "ClassForgetSpec":
        names = tuple(class_names)
        if not forget:
            raise SFDError("give at least one --forget class")
        f = tuple(dict.fromkeys(resolve_class(v, names) for v in forget))
        o = None if str(override).strip().lower() == RANDOM else resolve_class(override, names)
        if o is not None and o in f:
            raise SFDError(f"override class {names[o]!r} is also a forget class; choose another class or 'random'")
        if len(f) >= len(names):
            raise SFDError("cannot forget every class: at least one class must be retained")
        return cls(names, f, o, null_class)

    @classmethod
    def retain_all(cls, class_names, null_class: int | None = None) -> "ClassForgetSpec":
        """No forget classes: every batch row is a retained class (stage-1 distillation, `sfd distill`)."""
        return cls(tuple(class_names), (), None, null_class)

    @property
    def retained(self) -> tuple[int, ...]:
        return tuple(k for k in range(len(self.class_names)) if k not in self.forget)

    @torch.no_grad()
    def settle(self, generator, teacher, sigma_init: float, latent_shape, device, seed: int, autocast, n: int = 64) -> "ClassForgetSpec":
        """What the run settles before training: override "random" sends each forget class to the retained class nearest
        to it, chosen once per run (any other spec is returned as it is).

        For n seeded noises, the generator's step-0 sample of the forget class (the teacher's one-step denoise, or a
        stage-1 base's sample) votes for the retained class whose teacher denoise lies nearest to it (`nearest_class`);
        the most voted class becomes the override. One fixed target per forget class: targets that change from step to
        step (a uniform draw every step, or the nearest class of the current sample) averaged the class scores into an
        8-like blend or kept moving, and cost retained accuracy and Frechet distance.
        """
        if not self.forget or self.override is not None or self.random_targets is not None:
            return self
        gen = torch.Generator().manual_seed(seed)
        targets = []
        for k in self.forget:
            z = torch.randn((n, *latent_shape), generator=gen).to(device)
            noise = torch.randn((n, *latent_shape), generator=gen).to(device)
            cond = {"class_labels": torch.full((n,), k, device=device)}
            with autocast():
                x0 = generate(generator, z, Cond(cond)).float()
                near = nearest_class(teacher, x0, sigma_init, noise, self.retained)
            votes = torch.bincount(near.cpu(), minlength=len(self.class_names))
            targets.append(int(votes.argmax()))
        return self.with_random_targets(targets)

    def with_random_targets(self, targets) -> "ClassForgetSpec":
        """This spec with override "random" resolved: `targets[i]` (a retained class) replaces forget class i."""
        targets = tuple(int(t) for t in targets)
        if self.override is not None or len(targets) != len(self.forget) or not set(targets) <= set(self.retained):
            raise ValueError(f"random targets {targets} do not fit forget classes {self.forget} with override 'random'")
        return replace(self, random_targets=targets)

    def example(self) -> str:
        """A condition that shows what the run did (the first forgotten class, else the first class): model cards sample it."""
        return self.class_names[self.forget[0] if self.forget else 0]

    def describe(self) -> dict:
        d = {
            "forget": [self.class_names[k] for k in self.forget],
            "forget_ids": list(self.forget),
            "override": None if not self.forget else RANDOM if self.override is None else self.class_names[self.override],
            "retained": [self.class_names[k] for k in self.retained],
        }
        if self.random_targets is not None:
            d["override_chosen"] = ", ".join(f"{self.class_names[f]} -> {self.class_names[t]}"
                                             for f, t in zip(self.forget, self.random_targets))
        return d

    def forget_and_override(self, forget_only: bool = False) -> tuple[dict, dict | None]:
        """The forget classes as conditioning rows, and the teacher's class for each (robust SFD's adversarial rows);
        the override needs the run's settled spec (`settle`) unless `forget_only`."""
        forget = {"class_labels": torch.tensor(self.forget, dtype=torch.long)}
        if forget_only:
            return forget, None
        if self.override is None and self.random_targets is None:
            raise ValueError("override 'random' is resolved by the trainer (SFDTrainer) before adversarial rows are drawn")
        targets = [self.override] * len(self.forget) if self.override is not None else list(self.random_targets)
        return forget, {"class_labels": torch.tensor(targets, dtype=torch.long)}

    def _pick(self, pool: tuple[int, ...], n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.tensor(pool)[torch.randint(len(pool), (n,), generator=gen)]

    def sample(self, n_retain: int, n_forget: int, gen: torch.Generator, device, for_fake_training: bool = False) -> ConditionBatch:
        if n_forget and not self.forget:
            raise ValueError("this spec has no forget classes: draw batches with n_forget = 0")
        if self.forget and self.override is None and self.random_targets is None:
            raise ValueError("override 'random' is resolved by the trainer (SFDTrainer) before batches are drawn")
        retain = self._pick(self.retained, n_retain, gen)
        if not self.forget:
            fake = teacher = retain.to(device)
            uncond = None if self.null_class is None else {"class_labels": torch.full_like(fake, self.null_class)}
            return ConditionBatch(Cond({"class_labels": fake}, uncond), Cond({"class_labels": teacher}, uncond), n_retain, 0)
        idx = torch.randint(len(self.forget), (n_forget,), generator=gen)
        forget = torch.tensor(self.forget)[idx]
        override = torch.full_like(forget, self.override) if self.override is not None else torch.tensor(self.random_targets)[idx]
        fake = torch.cat([retain, forget]).to(device)
        teacher = torch.cat([retain, override]).to(device)
        uncond = None if self.null_class is None else {"class_labels": torch.full_like(fake, self.null_class)}
        return ConditionBatch(Cond({"class_labels": fake}, uncond), Cond({"class_labels": teacher}, uncond), n_retain, n_forget)


@dataclass(frozen=True)
class TextForgetSpec:
    """Forget text concept(s): forget/override prompt pairs, retain prompts, guidance branches (DESIGN.md section 2)."""

    concepts: tuple[str, ...]
    override: str
    pairs: tuple[tuple[str, str], ...]  # (forget prompt, override prompt)
    retain_prompts: tuple[str, ...]
    negative_prompt: str = ""
    prompt_dropout: float = 0.1  # share of fake-score training samples conditioned on "" (as the teacher was trained)

    @classmethod
    def build(cls, concepts, override, retain_prompts, candidates=None, negative_prompt: str = "", prompt_dropout: float = 0.1) -> "TextForgetSpec":
        from sfd.core.prompts import check_concept, forget_prompt_pairs, mentions

        concepts = tuple(dict.fromkeys(check_concept(c, "--forget") for c in concepts))
        if not concepts:
            raise SFDError("give at least one --forget concept")
        override = check_concept(override, "--override")
        for c in concepts:
            if c.lower() == override.lower():
                raise SFDError(f"--override {override!r} equals the forget concept; choose a different override")
        retain = tuple(p for p in retain_prompts if not any(mentions(p, c) for c in concepts))
        if not retain:
            raise SFDError("no retain prompts left: every retain prompt mentions a forgotten concept")
        pairs = tuple(forget_prompt_pairs(list(concepts), override, candidates))
        if not 0 <= prompt_dropout < 1:
            raise SFDError(f"prompt dropout must lie in [0, 1), got {prompt_dropout}")
        return cls(concepts, override, pairs, retain, negative_prompt, prompt_dropout)

    @classmethod
    def retain_only(cls, retain_prompts, negative_prompt: str = "", prompt_dropout: float = 0.1) -> "TextForgetSpec":
        """No forget concepts: plain distillation on the retain prompts (stage 1, `sfd distill`)."""
        retain = tuple(dict.fromkeys(p for p in retain_prompts if p.strip()))
        if not retain:
            raise SFDError("no prompts to distil on")
        return cls((), "", (), retain, negative_prompt, prompt_dropout)

    def describe(self) -> dict:
        return {
            "forget": list(self.concepts),
            "override": self.override,
            "forget_prompts": [p for p, _ in self.pairs],
            "override_prompts": [o for _, o in self.pairs],
            "n_retain_prompts": len(self.retain_prompts),
            "negative_prompt": self.negative_prompt,
        }

    def encode(self, encode_fn) -> "TextConditions":
        """Embed every prompt once with the frozen text encoder(s); `encode_fn(list[str])` returns the UNet's
        conditioning of the prompts: a tensor (n, tokens, dim) of encoder_hidden_states, or a nested dict of them."""
        def enc(prompts):
            return as_condition(encode_fn(prompts))

        retain = enc(list(self.retain_prompts))
        none = tree_map(lambda t: t[:0], retain)
        forget = enc([p for p, _ in self.pairs]) if self.pairs else none
        override = enc([o for _, o in self.pairs]) if self.pairs else none
        both = enc(["", self.negative_prompt])
        empty, negative = tree_map(lambda t: t[:1], both), tree_map(lambda t: t[1:], both)
        return TextConditions(self, retain, forget, override, empty, negative)


class TextConditions:
    """Conditioning tables of a `TextForgetSpec` (nested dicts of batch-first tensors), sampled into condition batches."""

    def __init__(self, spec: TextForgetSpec, retain, forget, override, empty, negative):
        self.spec, self.retain, self.forget, self.override = spec, retain, forget, override
        self.empty, self.negative = empty, negative

    @property
    def concepts(self) -> tuple[str, ...]:
        return self.spec.concepts

    def describe(self) -> dict:
        return self.spec.describe()

    def example(self) -> str:
        """A prompt that shows what the run did (the first forget prompt, else the first retain prompt): model cards sample it."""
        return self.spec.pairs[0][0] if self.spec.pairs else self.spec.retain_prompts[0]

    def settle(self, *run) -> "TextConditions":
        """Nothing is left to the run: text overrides are given (`ClassForgetSpec.settle`'s counterpart)."""
        return self

    def forget_and_override(self, forget_only: bool = False) -> tuple[dict, dict]:
        """The forget prompts' conditionings and their override prompts', row for row (robust SFD's adversarial rows)."""
        return self.forget, self.override

    def to(self, device) -> "TextConditions":
        move = lambda t: tree_map(lambda v: v.to(device), t)  # noqa: E731
        return TextConditions(self.spec, *(move(t) for t in (self.retain, self.forget, self.override, self.empty, self.negative)))

    def sample(self, n_retain: int, n_forget: int, gen: torch.Generator, device, for_fake_training: bool = False) -> ConditionBatch:
        r = torch.randint(tree_len(self.retain), (n_retain,), generator=gen)
        f = torch.randint(tree_len(self.forget), (n_forget,), generator=gen) if n_forget else torch.zeros(0, dtype=torch.long)
        rows = lambda table, idx: tree_map(lambda v: v[idx.to(v.device)], table)  # noqa: E731
        fake = tree_cat([rows(self.retain, r), rows(self.forget, f)])
        teacher = tree_cat([rows(self.retain, r), rows(self.override, f)])
        if for_fake_training and self.spec.prompt_dropout > 0:
            drop = torch.rand(n_retain + n_forget, generator=gen) < self.spec.prompt_dropout
            fake = tree_where(drop, self.empty, fake)
        n = n_retain + n_forget
        to = lambda t: tree_map(lambda v: v.to(device), t)  # noqa: E731
        uncond = tree_map(lambda v: v.expand(n, *v.shape[1:]).to(device), self.negative)
        return ConditionBatch(Cond(to(fake), uncond), Cond(to(teacher), uncond), n_retain, n_forget)
