"""SFD hyperparameters: a frozen dataclass, presets per model family, validation at the CLI boundary."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from .errors import SFDError


# Robust SFD's perturbation spaces (sfd/robust.py).
ROBUST_SPACES = ("conditioning", "soft-tokens", "token")


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
    # smallest count whose micro-batch fits the memory available, measured on the first iteration (sfd.memory).
    micro_batches: int = 0
    # Robust SFD (`--robust`, DESIGN.md section 6, sfd/robust.py): every `robust_every` iterations, `robust_share` of the
    # forget rows are conditions found against the current generator by `robust_steps` normalised gradient steps of
    # `robust_step` (a fraction of the bound, or of a token's norm) from perturbations kept per forget prompt. Space
    # "conditioning": a delta on the encoder output, ||delta|| <= robust_budget x ||c_f|| per row; "soft-tokens":
    # `robust_tokens` soft token embeddings inserted after the start token, through the text encoder; "token": one
    # learned token in place of the concept word (textual inversion's space). Several, comma-separated, take turns.
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


def _divisors(c: SFDConfig) -> list[int]:
    """The micro-batch counts that split both batches of `c` into equal parts."""
    import math

    g = math.gcd(c.batch_retain, c.batch_forget)
    return [m for m in range(1, g + 1) if g % m == 0]


# Label-conditional DDPM (the paper's CIFAR-10 setting, scaled to the 8x8 digits world). Changes from the
# official settings and why (measurements in BENCHMARKS.md):
# - 120 iterations of 24 retain + 8 forget samples, decayed (cosine) to a tenth: the erase must cost under a
#   fifth of the teacher's training, where the paper runs tens of thousands of iterations;
# - lr 6e-4 for the generator and 1e-3 for the fake score, which must keep up with the generator's samples
#   (class 6 without forgetting, 120 iterations: retained Frechet distance 1.74 with 3e-4 for both, 1.30 now;
#   2e-3 for the fake score was unstable);
# - lambda_gen_forget 1: with the override fixed for the run, forgetting is complete within 40 iterations,
#   and the weight 2 (needed while the override moved) cost retained quality (erasing 7: FD 1.91 vs 1.68);
# - alpha 1.0 and teacher guidance 1.2 (the teacher samples at 1.5): with 1.5 the one-step generator became
#   more mode-seeking (retained Frechet distance 3.2 vs 2.0 after 200 iterations on class 3).
CLASS_PRESET = SFDConfig(steps=120, batch_retain=24, batch_forget=8, lr_generator=6e-4, lr_fake=1e-3, lr_final=0.1,
                         alpha=1.0, lambda_gen_forget=1.0, guidance_teacher=1.2)

# Stable Diffusion 1.x/2.x: the official text-to-image settings of SFD (DESIGN.md section 2).
SD_PRESET = SFDConfig(
    steps=2000, batch_retain=1, batch_forget=1, lr_generator=1e-6, lr_fake=3e-6, alpha=1.0, t_init=625, t_min=20, t_max=980,
    ema_decay=0.999, guidance_teacher=4.5, guidance_fake_train=4.5, guidance_fake_eval=4.5,
)

# The shapes world (a tiny latent text-to-image model): SD's structure, learning rates and batch sized for a CPU.
# Guidance 3.0 in all three places, not SD's 4.5 (the teacher samples at 5.0): after erasing circle, retained
# colour detection was 0.87x the teacher's with 4.5 and 300 iterations, 0.95x with 3.0 and 150, 0.71x with 6.5
# and 100. 200 iterations: after erasing red, retained shape detection rose from 0.94x at 150 to 0.98x.
SHAPES_PRESET = SD_PRESET.replace(steps=200, batch_retain=24, batch_forget=8, lr_generator=1e-4, lr_fake=1e-4, ema_decay=0.99,
                                  guidance_teacher=3.0, guidance_fake_train=3.0, guidance_fake_eval=3.0)

# ---------------------------------------------------------------------------------------- two stages
# Stage 1 (`sfd distill`): plain SiD, no forget rows. Stage 2 (`sfd erase --generator BASE`): SFD from a one-step
# base. DESIGN.md section 2.1 and BENCHMARKS.md ("Two-stage SFD") have the measurements behind these numbers.

# Digits, stage 1: the ten classes as retain rows, 540 iterations of 32 (0.84x the teacher's training, timed
# against it in alternating blocks). The generator's learning rate matters most: 1.5e-4 with the fake score's 1e-3,
# decayed to 2%, gave FD 0.81-0.89 over all ten classes (0.96-1.05x the teacher's) for seeds 0-2; 6e-4 gave 1.31x,
# 3e-4 1.13x, 7.5e-5 1.19x; teacher guidance 1.0 or 1.35 and batch 64 for fewer iterations were worse.
CLASS_DISTILL_PRESET = CLASS_PRESET.replace(steps=540, batch_retain=32, batch_forget=0, lr_generator=1.5e-4, lr_final=0.02)
# Digits, stage 2: a gentle erase from a sharp base (0.16x the teacher's training). The generator's rate is half of
# stage 1's peak: at stage 1's own 1.5e-4 the erase re-heated the base (retained FD 1.3-1.7x). lambda_gen_forget 3
# forgets within the shorter budget. Fake score from stage 1: retained FD 1.24x on average (worst 1.40x) over
# classes 1, 4, 6 and seeds 0-2, against 1.32x (1.48x) from the teacher's.
# In LoRA mode (--lora) the rates are 25x: erasing 1 at 1x left 19% of it (retained FD 2.06x), at 4x / 10x / 25x
# 0% with FD 1.49x / 1.40x / 1.24x (rank 16; rank 4 was no faster and no better; measured with every convolution
# targeted, before the family targets narrowed and the class embedding's adapter was trained, BENCHMARKS.md).
CLASS_STAGE2_PRESET = CLASS_PRESET.replace(steps=100, lr_generator=7.5e-5, lr_fake=2.5e-4, lambda_gen_forget=3.0, fake_score_init="base",
                                           lora_lr_scale=25.0)

# Stable Diffusion 1.x/2.x, stage 1: SiD-LSG's settings (mingyuanzhou/SiD-LSG run_sid.sh, SD 1.5): lr 1e-6 for
# both networks, guidance 2 in the teacher and in the fake score (training and evaluation), alpha 1, t_init 625,
# batch 512 for 10M images (about 19,500 iterations); EMA half-life 0.05M images, i.e. a decay of 0.993 per
# iteration of 512. This is a multi-GPU-day job; a public one-step model (`sfd import-base`) is the cheap road.
SD_DISTILL_PRESET = SD_PRESET.replace(steps=19500, batch_retain=512, batch_forget=0, lr_generator=1e-6, lr_fake=1e-6,
                                      ema_decay=0.993, guidance_teacher=2.0, guidance_fake_train=2.0, guidance_fake_eval=2.0)
# Stable Diffusion, stage 2: the official SFD settings (SD/run_sfd.sh, which starts from SiD-LSG's distilled
# generator and the teacher's fake score).
SD_STAGE2_PRESET = SD_PRESET

# The shapes world, stage 1: 300 iterations of 32 prompts, both rates decayed to 10%: colour and shape detection
# 1.00x and 1.02x the teacher's, CLIP score 0.99x, in about 600 s (a constant rate for 600 iterations was no better
# at 200 than this at 300).
SHAPES_DISTILL_PRESET = SHAPES_PRESET.replace(steps=300, batch_retain=32, batch_forget=0, lr_final=0.1)
# The shapes world, stage 2: 50 iterations of 24+8 from the base, the fake score from the teacher (so the bundled
# base ships none) at 3x the generator's rate so that it follows the base's sharper samples from the first step.
# Guidance 2.5 (not 3.0) and lambda_gen_forget 0.25: erasing circle with 3.0 and 0.5 left retained colour at
# 0.94x and CLIP score at 0.94x (below 0.95x); a lower rate, fewer iterations, a faster fake score or a slower EMA
# did not move it (0.93-0.94x), guidance 2.5 did (0.96x), and forgetting stays within 2.5% (benchmarks/stage2_sweep.py).
# LoRA mode: 25x the rates (erasing circle: CLIP score 0.977x at 10x, 0.985x at 25x; forget 0.8% at both), on the
# attention and feed-forward layers only: the family's default list adds the resnet convolutions, whose adapters
# cost as much as the 64-128-channel convolutions themselves here (erase 63 s against 58 s, full mode 57 s; the
# same CLIP score). At SD size an adapter's cost is small beside its layer's, and the family's list stays the default.
SHAPES_LORA_TARGETS = "to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2"
SHAPES_STAGE2_PRESET = SHAPES_PRESET.replace(steps=50, lr_generator=1e-4, lr_fake=3e-4, lambda_gen_forget=0.25, fake_score_init="teacher",
                                             guidance_teacher=2.5, guidance_fake_train=2.5, guidance_fake_eval=2.5, lora_lr_scale=25.0,
                                             lora_targets=SHAPES_LORA_TARGETS, robust_space="conditioning,token")
# --robust on the shapes world: the conditioning delta and the concept-word token take turns (erasing circle, 50 pairs:
# textual inversion's ASR 88% with the delta alone, 48% with both; BENCHMARKS.md "Robust SFD").

# Rectified-flow transformers (SD3 / SD3.5, FLUX.1): the generator starts at t = 0.999 (timestep 999, pure noise in)
# as SiD-DiT's --init_timestep 999; noise levels t in [0.02, 0.98). Stage 2 keeps SD's official SFD learning rates;
# stage 1 follows SiD-DiT's run_sid_dit.sh (lr 5e-6 for both networks, guidance 4.5 in all three places, alpha 1,
# batch 256). FLUX.1-dev's guidance is its embedding: 3.5, its own default, in the teacher and the fake score.
SD3_PRESET = SD_PRESET.replace(t_init=999, t_min=20, t_max=980)
SD3_DISTILL_PRESET = SD3_PRESET.replace(steps=4000, batch_retain=256, batch_forget=0, lr_generator=5e-6, lr_fake=5e-6, ema_decay=0.99)
FLUX_PRESET = SD3_PRESET.replace(guidance_teacher=3.5, guidance_fake_train=3.5, guidance_fake_eval=3.5)
FLUX_DISTILL_PRESET = SD3_DISTILL_PRESET.replace(guidance_teacher=3.5, guidance_fake_train=3.5, guidance_fake_eval=3.5)

# The SD3-structured shapes world (`sfd train-teacher shapes --family sd3`): the shapes presets with the flow
# generator's convention (t_init 999: pure noise in at t = 0.999) and SiD-DiT's guidance 4.5 in all three places.
# With the SD world's 3.0 the distilled base kept shape detection at 0.89x the teacher's (CLIP score 0.95x), and the
# stage-2 erases from it at 2.5 kept 0.84-0.87x shape and left 16.7% of circle; with 4.5 the base keeps 1.03x / 0.99x,
# and erasing red (lambda_gen_forget 0.5) forgets to 1.0% with 1.00x / 1.00x / 0.99x retained (BENCHMARKS.md). LoRA
# mode takes the flow family's targets (both streams; the shapes UNet's list names UNet layers); it was not measured here.
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
    "erase": {"class": CLASS_STAGE2_PRESET, "sd": SD_STAGE2_PRESET, "shapes": SHAPES_STAGE2_PRESET, "shapes-sd3": SHAPES_SD3_STAGE2_PRESET,
              "sd3": SD3_PRESET, "flux": FLUX_PRESET},
}
# Which model families each preset is for: its t_init is the family's one-step convention (a VP UNet's noise level
# sigma ~ 2.5, or a flow transformer's t = 0.999) and its guidance is the family's kind (two branches, or FLUX's
# embedding), so a preset of another family would train and record a convention the generator is not called with.
PRESET_FAMILIES = {"class": ("class-unet",), "sd": ("sd", "sdxl"), "shapes": ("sd", "sdxl"), "shapes-sd3": ("sd3",),
                   "sd3": ("sd3",), "flux": ("flux",)}


def check_preset_fits(name: str, family_name: str, family_description: str, default: str) -> None:
    """One line if `--preset name` was made for another model family than the model's."""
    fits = PRESET_FAMILIES.get(name, ())
    if family_name not in fits:
        ok = [p for p, fams in PRESET_FAMILIES.items() if family_name in fams]
        raise SFDError(f"--preset {name} is for {', '.join(fits) or 'no'} models, and this is a {family_description} model: "
                       f"leave --preset out (default here: {default}) or choose one of {', '.join(ok)}")


# Whether a single-stage erase with the preset converges. SD's stage-2 learning rates (1e-6 / 3e-6 for 2,000
# iterations of batch 1+1, 4,000 images) cannot distil SD from the teacher alone, where SiD-LSG's stage 1 saw 8.4M.
SINGLE_STAGE_OK = {"class": True, "shapes": True, "shapes-sd3": True, "sd": False, "sd3": False, "flux": False}


def preset(name: str, stage: str = "single") -> SFDConfig:
    """The preset `name` ("class", "shapes", "sd") for a stage: "single" (erase from the teacher), "distill"
    (stage 1) or "erase" (stage 2, from a one-step base)."""
    try:
        return STAGE_PRESETS[stage][name]
    except KeyError:
        raise SFDError(f"no preset {name!r} for stage {stage!r}; presets: {', '.join(PRESETS)}") from None


# ------------------------------------------------------------------------------------------ baselines
# `sfd erase --method esd-x|esd-u|uce` (sfd/baselines). Outside the worlds: the papers' settings (ESD: 1,000
# iterations of Adam at 1e-5, batch 1, eta 1, x_t from 50 DDIM steps at guidance 3; UCE: the closed form with
# equal erase/preserve scales). The shapes world's teacher was trained at lr 1e-3 for 2,000 steps of batch 64,
# so ESD's 1e-5 moves it too little in 1,000 iterations (world_baseline_presets).
def baseline_preset(method: str, world: str | None = None, concepts=()):
    """The baseline's settings on `world` for these forget concepts: a preset keyed by (world, method, kind), kind
    from `sfd.worlds.concept_kind` ("colour" / "shape" on the shapes world), else by (world, method), else the
    paper's."""
    from .baselines.esd import ESDConfig
    from .baselines.uce import UCEConfig
    from .worlds import concept_kind

    presets = world_baseline_presets()
    default = UCEConfig() if method == "uce" else ESDConfig()
    return presets.get((world, method, concept_kind(world, concepts)), presets.get((world, method), default))


def world_baseline_presets() -> dict:
    from .baselines.esd import ESDConfig
    from .baselines.uce import UCEConfig

    # The shapes world: the sampler is the world's (20 steps, guidance 5), on the concept text; ESD-x at batch 4
    # instead of 1 and lr x60, ESD-u at batch 8, lr x10 and eta 1.25 or 2.6 (`benchmarks/baseline_sweep.py`,
    # BENCHMARKS.md). ESD-x in 200 iterations on "red" forgot to 25% / 14.6% / 10.4% at lr 6e-4 / 9e-4 / 1.2e-3,
    # retained detection >= 0.99x; on "circle" to 13.3% / 11.7% / 12.5%, but retained shape fell to 0.89x / 0.84x /
    # 0.84x: no rate took both under 20% with retained >= 0.85x. At 6e-4 for 300 iterations: red 8.3% (retained >=
    # 0.99x), circle 15.0% (retained shape 0.87x); 7.5e-4 for 200: red 13.5%, circle 15.0% (0.87x, colour 0.94x).
    # ESD-u (the official `noxattn` layers: no cross-attention, timestep embedding or output layers) at batch 4 has no
    # such point: in 200 iterations red 47% at 4e-4 (retained >= 0.95x), 20% at 6e-4 (retained colour 0.67x); circle
    # 48% (shape 0.84x) and 20% (shape 0.61x); 600 iterations at 2e-4 or 400 at 3e-4 stop at 51-57% on red, the
    # paper's 1,000 at 2e-4 at 67% (circle 50%). 6e-4 erases both to about 20% but keeps only 0.61-0.76x. Eta 2 at
    # 1-2e-4 comes near the target in single runs (red 12.5% with colour 0.84x, 20.8% with >= 0.93x; circle 11.7% with
    # >= 0.90x at eta 1.5) that other training seeds do not repeat (red 21 / 52 / 29% over seeds 0-2): at batch 4 the
    # seed moves the result as much as the setting does. At batch 8 for 300 iterations at 1e-4 the seeds agree on a
    # shape, less so on a colour, and the two kinds of concept need different pushes: a shape takes eta 1.25 (circle
    # 13.3 / 11.7 / 9.2% over seeds 0-2, and 11.7 / 16.7% on seeds 3-4, retained >= 0.85x on each; at eta 1.75 or 2 it
    # falls to 5-12% but costs retained colour, 0.69-0.79x), a colour eta 2.6 (red 16.7 / 13.5 / 11.5 / 7.3 / 32.3%
    # over seeds 0-4, retained >= 0.85x on seeds 0, 2 and 3, 0.81x on seed 1, 0.84x on seed 4: at the edge; eta 2.5
    # leaves red at 34% on seed 0, eta 2.75 keeps 0.81x of retained shape on both seeds tried, eta 1.25 leaves it at
    # 55% even in 600 iterations). Hence one preset per kind; a mix of kinds or a word outside the world takes the
    # shape's. The held-out judges at 168 pairs: red 18%, circle 14% (benchmarks/robustness_bench.py).
    # On the captions ("a red circle", ...) 3e-4 left red at 20% (ESD-x) but retained shape at 0.37x.
    esd_x = ESDConfig(steps=300, lr=6e-4, batch_size=4, sampler_steps=20, start_guidance=5.0, prompts="concept")
    esd_u = replace(esd_x, steps=300, lr=1e-4, batch_size=8, negative_guidance=1.25)
    return {("shapes", "esd-x"): esd_x, ("shapes", "esd-u"): esd_u,
            ("shapes", "esd-u", "colour"): replace(esd_u, negative_guidance=2.6), ("shapes", "uce"): UCEConfig()}

