"""SFD hyperparameters: a frozen dataclass, presets per model family, validation at the CLI boundary."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from sfd.kernel.errors import SFDError


# Robust SFD's perturbation spaces (sfd/core/robust.py).
ROBUST_SPACES = ("conditioning", "soft-tokens", "token", "noise", "class-embedding")


@dataclass(frozen=True)
class SFDConfig:
    """Settings of one erase run. Names follow DESIGN.md section 2; presets below record what was tuned and why."""

    steps: int = 300
    batch_retain: int = 48
    batch_forget: int = 16
    lr_generator: float = 1e-4
    lr_fake: float = 1e-4
    lr_final: float = 1.0  # cosine decay of both learning rates to this fraction at the last step (1: constant)
    alpha: float = 1.2
    lambda_gen_retain: float = 1.0
    lambda_gen_forget: float = 1.0
    lambda_fake_retain: float = 1.0
    lambda_fake_forget: float = 1.0
    t_init: int = 440  # sigma ~ 2.5 on a linear-beta DDPM schedule
    t_min: int = 38
    t_max: int = 712
    grad_clip: float = 1.0  # element-wise value clip, as the official code
    ema_decay: float = 0.99
    guidance_teacher: float | None = None  # None: the teacher's own default guidance scale
    guidance_fake_train: float = 1.0
    guidance_fake_eval: float = 1.0
    seed: int = 0
    # Stage 2 (an erase from a one-step base): where the fake score starts, "teacher" (the official code) or "base"
    # (the fake score `sfd distill` saved beside the base; DESIGN.md section 2.1).
    fake_score_init: str = "teacher"
    # LoRA roles (DESIGN.md section 2.2): generator and fake score as adapters on the one frozen teacher network.
    # `lora` is the preset's default mode; `lora_rank` the rank `--lora` uses; `lora_targets` the module names
    # (comma-separated; empty: the model family's default list).
    lora: bool = False
    lora_rank: int = 16
    lora_targets: str = ""
    # Both learning rates are multiplied by this in LoRA mode: a zero-initialised low-rank update moves the weights
    # far less per step than full fine-tuning at the same rate (the worlds' presets measure it; BENCHMARKS.md).
    lora_lr_scale: float = 1.0
    # Gradient accumulation: each process's rows in this many equal parts, one backward each, one update; 0: the
    # smallest count whose micro-batch fits the memory available, measured on the first iteration (sfd.kernel.memory).
    micro_batches: int = 0
    # Robust SFD (`--robust`, DESIGN.md section 6, sfd/core/robust.py): every `robust_every` iterations, `robust_share` of the
    # forget rows are conditions found against the current generator by `robust_steps` normalised gradient steps of
    # `robust_step` (a fraction of the bound, or of a token's norm) from perturbations kept per forget prompt. Space
    # "conditioning": a delta on the encoder output, ||delta|| <= robust_budget x ||c_f|| per row; "soft-tokens":
    # `robust_tokens` soft token embeddings inserted after the start token, through the text encoder; "token": one
    # learned token in place of the concept word (textual inversion's space); "noise": the initial noise z moved on its
    # Gaussian shell; "class-embedding" (class-conditional models): a delta on the forget class's embedding vector,
    # ||delta|| <= robust_budget x ||e_k||. Several, comma-separated, take turns. A preset turns `robust` on where it
    # measured better than plain SFD (BENCHMARKS.md, "Robust SFD").
    robust: bool = False
    robust_space: str = "conditioning"
    robust_budget: float = 0.5
    robust_steps: int = 2
    robust_step: float = 0.5
    robust_every: int = 1
    robust_share: float = 0.5
    robust_tokens: int = 3

    def validate(self, num_train_timesteps: int | None = None) -> "SFDConfig":
        if self.steps < 0:
            raise SFDError(f"--steps must be >= 0, got {self.steps}")
        if self.batch_retain < 1:
            raise SFDError(f"batch_retain must be >= 1, got {self.batch_retain}")
        if self.batch_forget < 0:
            raise SFDError(f"batch_forget must be >= 0 (0: distillation without forgetting), got {self.batch_forget}")
        for name in ("lr_generator", "lr_fake"):
            if not getattr(self, name) > 0:
                raise SFDError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.lr_final <= 1:
            raise SFDError(f"lr_final must lie in (0, 1], got {self.lr_final}")
        if not 0 <= self.t_min < self.t_max:
            raise SFDError(f"need 0 <= t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")
        if num_train_timesteps is not None and (self.t_max > num_train_timesteps or self.t_init >= num_train_timesteps):
            raise SFDError(f"t_max and t_init must lie within the model's {num_train_timesteps} timesteps")
        if not 0 <= self.ema_decay < 1:
            raise SFDError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.seed < 0:
            raise SFDError(f"--seed must be >= 0, got {self.seed}")
        if self.micro_batches < 0:
            raise SFDError(f"--micro-batches must be >= 1 (or 0: chosen from the memory available), got {self.micro_batches}")
        for name in ("batch_retain", "batch_forget"):
            if self.micro_batches and getattr(self, name) % self.micro_batches:
                raise SFDError(f"{name}={getattr(self, name)} is not divisible by --micro-batches {self.micro_batches}; "
                               f"use a count that divides both batches ({', '.join(map(str, _divisors(self)))})")
        if self.lora_rank < 1:
            raise SFDError(f"--lora-rank must be >= 1, got {self.lora_rank}")
        if not self.lora_lr_scale > 0:
            raise SFDError(f"--lora-lr-scale must be > 0, got {self.lora_lr_scale}")
        if self.fake_score_init not in ("teacher", "base"):
            raise SFDError(f"fake_score_init must be 'teacher' or 'base', got {self.fake_score_init!r}")
        if self.robust:
            self._validate_robust()
        return self

    def _validate_robust(self) -> None:
        """One line per bad robust setting (checked only with --robust: a plain run ignores them)."""
        names = [n.strip() for n in self.robust_space.split(",") if n.strip()]
        if not names or any(n not in ROBUST_SPACES for n in names) or len(set(names)) < len(names):
            raise SFDError(f"robust_space must be one or more of {', '.join(ROBUST_SPACES)} (comma-separated, each once), "
                           f"got {self.robust_space!r}")
        if self.batch_forget < 1:
            raise SFDError("--robust needs forget rows (batch_forget >= 1): it applies to `sfd erase`, not `sfd distill`")
        checks = (("robust_budget", self.robust_budget > 0, "> 0"), ("robust_step", self.robust_step > 0, "> 0"),
                  ("robust_steps", self.robust_steps >= 1, ">= 1"), ("robust_every", self.robust_every >= 1, ">= 1"),
                  ("robust_share", 0 < self.robust_share <= 1, "in (0, 1]"),
                  ("robust_tokens", 1 <= self.robust_tokens <= 16, "in 1..16"))
        for name, ok, expected in checks:
            if not ok:
                raise SFDError(f"{name} must be {expected}, got {getattr(self, name)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def resolved(self, default_guidance: float) -> "SFDConfig":
        """With `guidance_teacher` filled in from the teacher's default when unset."""
        return self if self.guidance_teacher is not None else replace(self, guidance_teacher=float(default_guidance))

    def with_batch(self, n: int, erase: bool) -> "SFDConfig":
        """`--batch n`: n rows per iteration; an erase keeps the preset's share of forget rows (at least one of each)."""
        if not erase:
            return replace(self, batch_retain=n)
        if n < 2:
            raise SFDError(f"--batch {n}: an erase needs at least 2 rows per iteration (one retain, one forget)")
        forget = min(n - 1, max(1, round(n * self.batch_forget / (self.batch_retain + self.batch_forget))))
        return replace(self, batch_retain=n - forget, batch_forget=forget)

    def replace(self, **changes) -> "SFDConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def typed_setting(key: str, value: str):
    """A `KEY=VALUE` setting from a command line (benchmarks' `--set`) as the type of SFDConfig's field."""
    kinds = {f.name: str(f.type) for f in fields(SFDConfig)}
    if key not in kinds:
        raise SFDError(f"no erase setting named {key!r}")
    parse = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}.get(kinds[key], str)
    try:
        return parse(value)
    except ValueError:
        article = "an" if kinds[key] == "int" else "a"
        raise SFDError(f"{key}={value!r}: not {article} {kinds[key]}") from None


def _divisors(c: SFDConfig) -> list[int]:
    """The micro-batch counts that split both batches of `c` into equal parts."""
    import math

    g = math.gcd(c.batch_retain, c.batch_forget)
    return [m for m in range(1, g + 1) if g % m == 0]


# ------------------------------------------------------------------------------------------ presets
# The values of each preset, one line each on why (the measurements: BENCHMARKS.md, sections named). Which model
# families a preset is for is declared by the families (`ModelFamily.presets`, sfd/core/families): a preset's t_init
# is its family's one-step convention and its guidance the family's kind.

# Digits (the paper's CIFAR-10 setting scaled to 8x8): an erase under a fifth of the teacher's training ("Digits world").
CLASS_PRESET = SFDConfig(steps=120, batch_retain=24, batch_forget=8, lr_generator=6e-4, lr_fake=1e-3, lr_final=0.1,
                         alpha=1.0, lambda_gen_forget=1.0, guidance_teacher=1.2, robust_space="class-embedding", robust_budget=1.0)

# Stable Diffusion 1.x/2.x: the official text-to-image settings of SFD (DESIGN.md section 2).
SD_PRESET = SFDConfig(
    steps=2000, batch_retain=1, batch_forget=1, lr_generator=1e-6, lr_fake=3e-6, alpha=1.0, t_init=625, t_min=20, t_max=980,
    ema_decay=0.999, guidance_teacher=4.5, guidance_fake_train=4.5, guidance_fake_eval=4.5,
)

# The shapes world: SD's structure with rates, batch and guidance 3.0 sized for a CPU ("Shapes world").
SHAPES_PRESET = SD_PRESET.replace(steps=200, batch_retain=24, batch_forget=8, lr_generator=1e-4, lr_fake=1e-4, ema_decay=0.99,
                                  guidance_teacher=3.0, guidance_fake_train=3.0, guidance_fake_eval=3.0)

# Two stages (DESIGN.md section 2.1): stage 1 (`sfd distill`) is plain SiD, no forget rows; stage 2 (`sfd erase
# --generator BASE`) SFD from a one-step base. BENCHMARKS.md "Two-stage SFD" ("Digits", "Shapes") measures them.

# Digits, stage 1: FD 0.96-1.05x the teacher's at 0.84x its training; the generator's rate matters most.
CLASS_DISTILL_PRESET = CLASS_PRESET.replace(steps=540, batch_retain=32, batch_forget=0, lr_generator=1.5e-4, lr_final=0.02)
# Digits, stage 2: a gentle erase at half stage 1's rate, the fake score from stage 1; LoRA at 25x ("LoRA roles on the worlds").
CLASS_STAGE2_PRESET = CLASS_PRESET.replace(steps=100, lr_generator=7.5e-5, lr_fake=2.5e-4, lambda_gen_forget=3.0, fake_score_init="base",
                                           lora_lr_scale=25.0)
# ... robust (`--robust`; off by default: it misses the digits targets, BENCHMARKS.md "Digits: the class-embedding
# space"): the class-embedding space within 1x the class's norm, a quarter of the forget weight and twice the retain
# rows (stage 2's retain term drifts retained FD even with no forget weight; 96 rows, or 64 at budget 1.5, collapsed
# a retained class).
CLASS_ROBUST_STAGE2_PRESET = CLASS_STAGE2_PRESET.replace(robust=True, lambda_gen_forget=0.75, batch_retain=48)

# Stable Diffusion, stage 1: SiD-LSG's settings (run_sid.sh, SD 1.5; a multi-GPU-day job: `sfd import-base` is cheaper).
SD_DISTILL_PRESET = SD_PRESET.replace(steps=19500, batch_retain=512, batch_forget=0, lr_generator=1e-6, lr_fake=1e-6,
                                      ema_decay=0.993, guidance_teacher=2.0, guidance_fake_train=2.0, guidance_fake_eval=2.0)
# Stable Diffusion, stage 2: the official SFD settings (SD/run_sfd.sh starts from SiD-LSG's generator). Robust SFD
# (off: not measured at this size; a documented starting point): AdvUnlearn's space (one soft prefix token, its PGD
# warm-started from the last perturbation) beside the conditioning and noise spaces that held on the shapes world;
# AdvUnlearn's 30 PGD steps per outer step become 4 per iteration, kept across 2,000 iterations, on every forget row.
SD_STAGE2_PRESET = SD_PRESET.replace(robust_space="soft-tokens,conditioning,noise", robust_tokens=1, robust_steps=4, robust_share=1.0)

# The shapes world, stage 1: detection and CLIP score within 2% of the teacher's in about 600 s.
SHAPES_DISTILL_PRESET = SHAPES_PRESET.replace(steps=300, batch_retain=32, batch_forget=0, lr_final=0.1)
# The shapes world, stage 2: guidance 2.5 keeps retained quality >= 0.95x (benchmarks/experiments/stage2_sweep.py); LoRA at 25x on
# the attention and feed-forward layers only ("LoRA roles on the worlds"); robust: delta and token in turn ("Robust SFD").
SHAPES_LORA_TARGETS = "to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2"
SHAPES_STAGE2_PRESET = SHAPES_PRESET.replace(steps=50, lr_generator=1e-4, lr_fake=3e-4, lambda_gen_forget=0.25, fake_score_init="teacher",
                                             guidance_teacher=2.5, guidance_fake_train=2.5, guidance_fake_eval=2.5, lora_lr_scale=25.0,
                                             lora_targets=SHAPES_LORA_TARGETS, robust_space="conditioning,token")
# ... robust (the default: it measured better, BENCHMARKS.md "Robust SFD"): the conditioning, concept-token and noise
# spaces in turn, 4 inner steps on every forget row, and 75 iterations so that each space gets about 25 of them;
# `--no-robust` takes the plain preset above.
SHAPES_ROBUST_STAGE2_PRESET = SHAPES_STAGE2_PRESET.replace(robust=True, steps=75, robust_space="conditioning,token,noise",
                                                           robust_steps=4, robust_share=1.0)

# Rectified-flow transformers (SD3 / SD3.5, FLUX.1): SiD-DiT's convention (t_init 999: pure noise in) with SD's stage-2
# rates; stage 1 as SiD-DiT's run_sid_dit.sh; FLUX.1-dev's guidance is its embedding, 3.5 (its own default).
SD3_PRESET = SD_PRESET.replace(t_init=999, t_min=20, t_max=980)
SD3_DISTILL_PRESET = SD3_PRESET.replace(steps=4000, batch_retain=256, batch_forget=0, lr_generator=5e-6, lr_fake=5e-6, ema_decay=0.99)
FLUX_PRESET = SD3_PRESET.replace(guidance_teacher=3.5, guidance_fake_train=3.5, guidance_fake_eval=3.5)
FLUX_DISTILL_PRESET = SD3_DISTILL_PRESET.replace(guidance_teacher=3.5, guidance_fake_train=3.5, guidance_fake_eval=3.5)

# The SD3-structured shapes world: the shapes presets with the flow convention and SiD-DiT's guidance 4.5, which keeps
# the base's shape detection (BENCHMARKS.md "SD3-structured flow-matching shapes world"); LoRA takes the family's targets.
SHAPES_SD3_GUIDANCE = dict(guidance_teacher=4.5, guidance_fake_train=4.5, guidance_fake_eval=4.5)
SHAPES_SD3_PRESET = SHAPES_PRESET.replace(t_init=999, **SHAPES_SD3_GUIDANCE)
SHAPES_SD3_DISTILL_PRESET = SHAPES_DISTILL_PRESET.replace(t_init=999, **SHAPES_SD3_GUIDANCE)
SHAPES_SD3_STAGE2_PRESET = SHAPES_STAGE2_PRESET.replace(t_init=999, lambda_gen_forget=0.5, lora_targets="", robust_space="conditioning",
                                                       **SHAPES_SD3_GUIDANCE)  # its text encoders: no token space yet

PRESETS = {"class": CLASS_PRESET, "sd": SD_PRESET, "shapes": SHAPES_PRESET, "shapes-sd3": SHAPES_SD3_PRESET, "sd3": SD3_PRESET,
           "flux": FLUX_PRESET}  # single stage
STAGE_PRESETS = {
    "single": PRESETS,
    "distill": {"class": CLASS_DISTILL_PRESET, "sd": SD_DISTILL_PRESET, "shapes": SHAPES_DISTILL_PRESET,
                "shapes-sd3": SHAPES_SD3_DISTILL_PRESET, "sd3": SD3_DISTILL_PRESET, "flux": FLUX_DISTILL_PRESET},
    "erase": {"class": CLASS_STAGE2_PRESET, "sd": SD_STAGE2_PRESET, "shapes": SHAPES_ROBUST_STAGE2_PRESET,
              "shapes-sd3": SHAPES_SD3_STAGE2_PRESET, "sd3": SD3_PRESET, "flux": FLUX_PRESET},
}
# Where plain and robust erases differ in more than `robust`: the one a preset's default is not (`--no-robust` on the
# shapes world, `--robust` on digits).
OTHER_MODE_PRESETS = {("erase", "shapes"): SHAPES_STAGE2_PRESET, ("erase", "class"): CLASS_ROBUST_STAGE2_PRESET}

# Whether a single-stage erase with the preset converges: SD's stage-2 rates (4,000 images) cannot distil SD from the
# teacher alone, where SiD-LSG's stage 1 saw 8.4M.
SINGLE_STAGE_OK = {"class": True, "shapes": True, "shapes-sd3": True, "sd": False, "sd3": False, "flux": False}


def preset_families() -> dict[str, tuple[str, ...]]:
    """Which model families each preset is for, in `PRESETS` order, from the families' own `presets`."""
    from sfd.core.families import FAMILIES

    return {p: tuple(f.name for f in FAMILIES if p in f.presets) for p in PRESETS}


def check_preset_fits(name: str, family_name: str, family_description: str, default: str) -> None:
    """One line if `--preset name` was made for another model family than the model's."""
    families = preset_families()
    fits = families.get(name, ())
    if family_name not in fits:
        ok = [p for p, fams in families.items() if family_name in fams]
        raise SFDError(f"--preset {name} is for {', '.join(fits) or 'no'} models, and this is a {family_description} model: "
                       f"leave --preset out (default here: {default}) or choose one of {', '.join(ok)}")


def preset(name: str, stage: str = "single", robust: bool | None = None) -> SFDConfig:
    """The preset `name` ("class", "shapes", "sd") for a stage: "single" (erase from the teacher), "distill"
    (stage 1) or "erase" (stage 2, from a one-step base). `robust`: None, the preset's own choice; True, robust SFD
    with the preset's robust settings; False, plain SFD (the plain preset where the default is robust)."""
    try:
        config = STAGE_PRESETS[stage][name]
    except KeyError:
        raise SFDError(f"no preset {name!r} for stage {stage!r}; presets: {', '.join(PRESETS)}") from None
    if robust is None:
        return config
    other = OTHER_MODE_PRESETS.get((stage, name))
    return (other if other is not None and other.robust == robust else config).replace(robust=robust)


# ------------------------------------------------------------------------------------------ baselines
# `sfd erase --method esd-x|esd-u|uce` (sfd.core.methods). Outside the worlds: the papers' settings (ESD: 1,000
# iterations of Adam at 1e-5, batch 1, eta 1, x_t from 50 DDIM steps at guidance 3; UCE: the closed form with
# equal erase/preserve scales). The shapes world's teacher was trained at lr 1e-3 for 2,000 steps of batch 64,
# so ESD's 1e-5 moves it too little in 1,000 iterations (world_baseline_presets).
def baseline_preset(method: str, world: str | None = None, concepts=()):
    """The baseline's settings on `world` for these forget concepts: a preset keyed by (world, method, kind), kind
    from `sfd.core.worlds.concept_kind` ("colour" / "shape" on the shapes world), else by (world, method), else the
    paper's."""
    from sfd.core.methods import method_named
    from sfd.core.worlds import concept_kind

    presets = world_baseline_presets()
    default = method_named(method).settings()
    return presets.get((world, method, concept_kind(world, concepts)), presets.get((world, method), default))


def world_baseline_presets() -> dict:
    from sfd.core.baselines.esd import ESDConfig
    from sfd.core.baselines.uce import UCEConfig

    # The shapes world: the world's sampler on the concept text; ESD's rates and batches raised, and ESD-u's eta per kind
    # of concept (a shape 1.25, a colour 2.6), for forgetting under 20% with retained >= 0.85x (BENCHMARKS.md "Setting
    # ESD on the shapes world", benchmarks/experiments/baseline_sweep.py).
    esd_x = ESDConfig(steps=300, lr=6e-4, batch_size=4, sampler_steps=20, start_guidance=5.0, prompts="concept")
    esd_u = replace(esd_x, steps=300, lr=1e-4, batch_size=8, negative_guidance=1.25)
    return {("shapes", "esd-x"): esd_x, ("shapes", "esd-u"): esd_u,
            ("shapes", "esd-u", "colour"): replace(esd_u, negative_guidance=2.6), ("shapes", "uce"): UCEConfig()}

