"""`sfd erase` and `sfd distill`, written once for every model family (DESIGN.md sections 2, 2.1 and 3).

Both load a teacher through its family, build the trainer's roles, run the same SFD loop and save a one-step
pipeline folder with a model card:
- `distill` (stage 1): plain SiD, no forget concepts; the folder also holds the fake score (`fake_score/`),
  so that an erase from it can start its fake score there;
- `erase` (stage 2 with `generator=`, a one-step base; single-stage without): SiD with SFD's forgetting loss.
World metrics are computed by an `evaluate(pipe, concepts)` callable that the caller passes in (the CLI takes
it from `sfd.evaluators.world_metrics`; its `notes` attribute defines the metrics in the model card), so this module
does not reach up into the evaluators.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from sfd.core.config import SFDConfig
from sfd.kernel.errors import SFDError, first_line
from sfd.core.families import ModelFamily, family_for, pipeline_class_of
from sfd.kernel.generators import OneStepConvention
from sfd.core.model_card import model_card, use_section
from sfd.core.models import model_identity, quiet_diffusers, world_meta
from sfd.kernel.outputs import check_not_an_input, check_output_dir, staged_dir
from sfd.kernel.memory import OutOfMemory
from sfd.core.robust import build_adversary
from sfd.core.roles import FullRoles
from sfd.kernel.versions import software_versions
from sfd.core.trainer import DivergenceError, SFDTrainer, read_state, save_state_atomic

SFD_CONFIG_NAME = "sfd_config.json"
STATE_NAME = "training_state.safetensors"
FAKE_SCORE_DIR = "fake_score"  # stage 1's fake score, beside the one-step pipeline's own folders

Evaluate = Callable[[object, dict], "dict | None"]


def prepare_out(out: str, overwrite: bool, resume: bool, inputs: dict | None = None) -> Path:
    """The run folder: never an input model's folder (or inside or around one); with --resume it must hold a training
    state; otherwise it must be new (or --overwrite)."""
    check_not_an_input(out, inputs or {})
    p = Path(out)
    if resume:
        if overwrite:
            raise SFDError("--resume and --overwrite contradict each other; choose one")
        if not (p / STATE_NAME).is_file():
            raise SFDError(f"--resume: no training state in {out!r} (states are written with --checkpoint-every N or on Ctrl-C)")
        return p
    return check_output_dir(out, overwrite)


def run_training(trainer: SFDTrainer, out: Path, identity: dict, resume: bool, checkpoint_every: int, progress: bool,
                 desc: str = "sfd erase") -> dict:
    """Train with periodic atomic checkpoints in `out`, resuming from one if asked; returns trainer.train's result."""
    state_path = out / STATE_NAME
    resumed_from = 0
    if resume:
        tensors, meta = read_state(state_path)
        if meta.get("identity") != identity:
            raise SFDError(f"the training state in {out} belongs to another run (base model, generator or concepts differ)")
        # --micro-batches splits the same batch differently (the same maths): it may change on resume, as --steps.
        free = ("steps", "micro_batches")
        # A state saved before a setting existed was made with that setting's default.
        defaults = json.loads(SFDConfig().to_json())
        saved = {k: v for k, v in {**defaults, **meta.get("config", {})}.items() if k not in free}
        now = {k: v for k, v in json.loads(trainer.config.to_json()).items() if k not in free}
        if not (saved.get("robust") or now.get("robust")):  # robust settings mean nothing to a plain run
            saved, now = ({k: v for k, v in d.items() if not k.startswith("robust_")} for d in (saved, now))
        if saved != now:
            diff = sorted(k for k in now if saved.get(k) != now[k])
            raise SFDError(f"the training state in {out} was made with other settings ({', '.join(diff)}); "
                           "only --steps and --micro-batches may change")
        trained_at = meta.get("latent_shape")
        if trained_at is not None and trained_at != list(trainer.latent_shape):
            raise SFDError(f"the training state in {out} was trained on latents of shape {trained_at}, this run's are "
                           f"{list(trainer.latent_shape)}: pass the same --resolution")
        trainer.load_state(tensors, meta)
        del tensors  # the state's own copy of every trained tensor: training should not hold it twice
        resumed_from = trainer.step_count
        if trainer.is_main:
            print(f"resuming {out} from step {resumed_from} of {trainer.config.steps}", flush=True)

    def save(tr: SFDTrainer) -> None:
        if tr.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_state_atomic(tr, state_path, {"identity": identity, "latent_shape": list(tr.latent_shape)})

    def periodic(tr: SFDTrainer) -> None:
        if checkpoint_every and tr.step_count % checkpoint_every == 0 and tr.step_count < tr.config.steps:
            save(tr)

    try:
        choice = trainer.resolve_micro_batches()
        if trainer.is_main:
            print(choice.line, flush=True)
        run = trainer.train(progress=progress, callback=periodic, checkpoint=save, desc=desc)
    except (DivergenceError, OutOfMemory) as e:
        where = f"last good state: {state_path}" if state_path.is_file() else "no state was saved (use --checkpoint-every N)"
        raise type(e)(f"{e}; {where}") from None
    return {**run, "resumed_from_step": resumed_from}


SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _cast(dtype_name: str, *modules: torch.nn.Module) -> None:
    """Cast the trained networks to the storage dtype for saving (the bundled bases are fp16)."""
    for m in modules:
        m.to(SAVE_DTYPES[dtype_name])


def load_fake_score(base_path: str, like: torch.nn.Module) -> torch.nn.Module | None:
    """Stage 1's fake score saved beside a one-step base (None if the base has none)."""
    folder = Path(base_path) / FAKE_SCORE_DIR
    if not folder.is_dir():
        return None
    try:
        with quiet_diffusers():
            net = type(like).from_pretrained(str(folder), use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise SFDError(f"could not load the fake score in {folder}: {str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
    return net.float()


def run_identity(model: str, concepts: dict, generator: str | None = None) -> dict:
    """What a run was asked to do; a resume must ask the same (its settings are compared separately)."""
    return {"base_model": str(model), "concepts": concepts, "generator": generator}


def teacher_fingerprint(model: str, family: ModelFamily | None = None) -> dict | None:
    """A cheap fingerprint of the teacher's network weights (sfd.core.models.model_identity of its network folder)."""
    family = family or family_for(model)
    return model_identity(str(Path(model) / family.network_name)) if Path(model).is_dir() else None


def default_base(model: str) -> Path | None:
    """The distilled base bundled beside a world's teacher (<world>/onestep next to <world>/teacher), if it was
    distilled from this very teacher (its recorded weights fingerprint matches)."""
    teacher = Path(model)
    candidate = teacher.parent / "onestep"
    cfg = candidate / SFD_CONFIG_NAME
    if not teacher.is_dir() or not cfg.is_file():
        return None
    try:
        recorded = json.loads(cfg.read_text()).get("teacher_fingerprint")
    except (OSError, json.JSONDecodeError):
        return None
    return candidate if recorded is not None and recorded == teacher_fingerprint(model) else None


ADAPTERS_FILE = "sfd_adapters.safetensors"  # LoRA runs: both adapters (peft keys), the start of a LoRA stage 2


def build_roles(family: ModelFamily, teacher_pipe, config: SFDConfig, convention: OneStepConvention, device: str, opts: dict,
                base_pipe=None, base_path: str | None = None):
    """The trainer's roles and a note of how they were built: full copies, or LoRA adapters on one frozen UNet.

    From a one-step base (stage 2): full mode copies the base's network for the generator and, with
    `fake_score_init == "base"`, the base's fake_score/ for the fake score; LoRA mode starts both adapters from the
    base's own adapters when it was distilled in LoRA mode with the same rank and targets (one UNet), else puts the
    generator adapter on a frozen copy of the base's network (two UNets)."""
    teacher = family.teacher_denoiser(teacher_pipe)
    common = {"frozen_dtype": opts.get("frozen_dtype"), "gradient_checkpointing": opts.get("gradient_checkpointing", False)}
    note = {"mode": "lora" if config.lora else "full", "generator_from": "teacher" if base_pipe is None else "base",
            "fake_score_from": "teacher"}
    if not config.lora:
        fake_init = None
        if base_pipe is not None and config.fake_score_init == "base":
            fake_init = load_fake_score(base_path, family.network(teacher_pipe))
            note["fake_score_from"] = "base" if fake_init is not None else "teacher (the base has no fake_score/)"
        return FullRoles(teacher, convention, device, generator_init=None if base_pipe is None else family.network(base_pipe),
                         fake_init=fake_init, **common), note
    from sfd.core.roles import FAKE_ADAPTER, GENERATOR_ADAPTER, LoraRoles

    given = [t.strip() for t in config.lora_targets.split(",") if t.strip()]
    check_lora_targets(family.network(teacher_pipe), given)
    targets = given or family.lora_targets()
    note.update(rank=config.lora_rank, targets=targets, adapter_applies_to="teacher")
    saved = read_adapters(base_path) if base_pipe is not None else None
    same = saved is not None and saved[1].get("rank") == config.lora_rank and saved[1].get("targets") == targets
    kwargs = {}
    if base_pipe is not None and same:
        kwargs["generator_adapter"] = saved[0][GENERATOR_ADAPTER]
        note["generator_from"] = "the base's LoRA adapter (one UNet)"
        if config.fake_score_init == "base":
            kwargs["fake_adapter"] = saved[0][FAKE_ADAPTER]
            note["fake_score_from"] = "the base's LoRA adapter"
    elif base_pipe is not None:
        kwargs["generator_init"] = family.network(base_pipe)
        note.update(generator_from="an adapter on a frozen copy of the base's network (two UNets)", adapter_applies_to="base")
    return LoraRoles(teacher, convention, device, rank=config.lora_rank, targets=targets, seed=config.seed, **kwargs, **common), note


def check_lora_targets(network: torch.nn.Module, targets: Sequence[str]) -> None:
    """One line, before training, for a --lora-targets name that matches no module of the network (peft matches a
    name or its last dotted parts: `to_q` or `attn1.to_q`; it would raise its own error mid-setup)."""
    names = [n for n, _ in network.named_modules()]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n.rsplit(".", 1)[-1].isdigit()})
            raise SFDError(f"--lora-targets: no module of the {type(network).__name__} is named {t!r} (a name matches a module "
                           f"name or its last dotted parts, e.g. to_q or attn1.to_q); its module names include "
                           f"{', '.join(leaves[:24])}{', ...' if len(leaves) > 24 else ''}")


def read_adapters(folder: str | None) -> tuple[dict[str, dict], dict] | None:
    """({adapter name: peft state dict}, metadata) of a LoRA run's folder, or None."""
    path = Path(folder) / ADAPTERS_FILE if folder else None
    if path is None or not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("sfd", "{}"))
    by_adapter: dict[str, dict] = {}
    for key, tensor in load_file(str(path)).items():
        name, _, rest = key.partition("/")
        by_adapter.setdefault(name, {})[rest] = tensor
    return by_adapter, meta


def save_adapters(folder: Path, states: dict[str, dict], meta: dict, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    tensors = {f"{name}/{k}": v.detach().to("cpu", dtype).contiguous() for name, state in states.items() for k, v in state.items()}
    save_file(tensors, str(folder / ADAPTERS_FILE), metadata={"sfd": json.dumps(meta)})


def check_same_family(family: ModelFamily, model: str, generator: str) -> None:
    """One line naming both families when a base belongs to another family than its teacher (loading it with the
    teacher's family would only say that its pipeline class is unknown there)."""
    other = family_for(generator)
    if other.name != family.name:
        kind = "one-step" if other.is_one_step_class(pipeline_class_of(generator)) else "multi-step"
        raise SFDError(f"--generator {generator} is a {kind} {other.description} model, and the teacher {model} is a "
                       f"{family.description} model: give a one-step base distilled from this teacher")


def run_sfd(
    model: str,
    out: str,
    config: SFDConfig,
    forget: Sequence[str] = (),
    override: str | None = None,
    generator: str | None = None,
    retain_prompts: Sequence[str] | None = None,
    negative_prompt: str = "",
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    allow_pickle: bool = False,
    frozen_dtype: str | None = None,
    gradient_checkpointing: bool | None = None,
    resume: bool = False,
    checkpoint_every: int = 0,
    save_dtype: str = "fp32",
    evaluate: Evaluate | None = None,
    family: ModelFamily | None = None,
    resolution: int | None = None,
    hub_id: str | None = None,
) -> dict:
    """Distil (no `forget`) or erase (`forget` concepts replaced by `override`) and save a one-step pipeline folder.

    `generator`: a one-step base to start the generator from (stage 2); its fake score (`fake_score/`) starts the
    fake score when `config.fake_score_init == "base"`. Returns the summary written to sfd_config.json ({} on the
    non-main processes of a multi-process run). `resolution`: the image side to train at, in pixels (text families;
    default: the teacher's own size); the one-step folder records it and samples at it. `hub_id`: the Hub repository
    the user will publish under, recorded in the summary and the model card.
    """
    stage = "erase" if forget else "distill"
    if save_dtype not in SAVE_DTYPES:
        raise SFDError(f"unknown save dtype {save_dtype!r}; expected one of {', '.join(SAVE_DTYPES)}")
    out_path = prepare_out(out, overwrite, resume, {"--model": model, "--generator": generator})
    t_start = time.perf_counter()
    family = family or family_for(model)
    teacher_pipe = family.load(model, device, allow_pickle=allow_pickle, resolution=resolution)
    if family.is_one_step(teacher_pipe):
        raise SFDError(f"{model} is already a one-step generator; {stage} from the multi-step teacher it was distilled from"
                       + (" (and pass the one-step model as --generator)" if stage == "erase" else ""))
    meta = world_meta(model) if Path(model).is_dir() else {}
    spec = family.conditions(teacher_pipe, list(forget), override, retain_prompts=retain_prompts,
                             negative_prompt=negative_prompt, world_meta=meta, device=device)
    config = config.resolved(family.default_teacher_guidance(teacher_pipe))
    if stage == "distill":
        config = config.replace(batch_forget=0)
    elif config.batch_forget < 1:
        raise SFDError("batch_forget must be >= 1 to erase")
    num_timesteps = teacher_pipe.scheduler.config.num_train_timesteps
    config.validate(num_timesteps)

    convention, base_pipe = family.default_convention(config.t_init), None
    if generator is not None:
        check_same_family(family, model, generator)
        base_pipe = family.load(generator, device, allow_pickle=allow_pickle)
        family.check_base(teacher_pipe, base_pipe, generator)
        convention = OneStepConvention.from_config(base_pipe.config).validate(num_timesteps)
    opts = family.training_options(teacher_pipe, device, frozen_dtype, gradient_checkpointing)
    roles, roles_note = build_roles(family, teacher_pipe, config, convention, device, opts, base_pipe, generator)
    adversary = build_adversary(family, teacher_pipe, roles, spec, config)  # robust SFD; None without --robust
    trainer = SFDTrainer(roles, spec, config, device, autocast_dtype=opts.get("autocast_dtype"),
                         latent_shape=family.latent_shape(teacher_pipe), adversary=adversary)
    identity = run_identity(model, spec.describe(), generator)
    run = run_training(trainer, out_path, identity, resume, checkpoint_every, progress, desc=f"sfd {stage}")
    if not trainer.is_main:
        return {}
    train_seconds = time.perf_counter() - t_start
    done = FinishedRun(family, teacher_pipe, stage, save_dtype, model, generator, roles_note, convention, config, run, meta,
                       train_seconds, evaluate, str(out), hub_id)
    try:
        return _write_run(out_path, trainer, done)
    except (SFDError, KeyboardInterrupt):
        raise
    except Exception as e:  # a full disk, a lost mount, a permission: the trained weights must not go with the run
        where = save_recovery(trainer, out_path, done)
        raise SFDError(f"could not write the model to {out} ({e.__class__.__name__}: {first_line(e)}); the trained "
                       f"generator's weights (its EMA) are saved in {where}") from None


@dataclass(frozen=True)
class FinishedRun:
    """What a finished run writes besides the trainer's weights."""

    family: ModelFamily
    teacher_pipe: object
    stage: str
    save_dtype: str
    model: str
    generator: str | None
    roles_note: dict
    convention: OneStepConvention
    config: SFDConfig
    run: dict
    meta: dict
    train_seconds: float
    evaluate: Evaluate | None
    out: str
    hub_id: str | None = None


def save_recovery(trainer: SFDTrainer, out_path: Path, done: FinishedRun) -> Path:
    """The generator's EMA weights (the whole network in full mode, the adapter in LoRA mode) and what they belong to,
    beside the output folder or, if that cannot be written either, in the temporary folder."""
    import tempfile

    from safetensors.torch import save_file

    meta = {"family": done.family.name, "base_model": done.model, "generator_base": done.generator, "roles": done.roles_note,
            "one_step_convention": done.convention.describe(), "config": json.loads(done.config.to_json())}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in trainer.ema.shadow.items()}
    name = f"{out_path.name}.recovered-generator.safetensors"
    for folder in (out_path.resolve().parent, Path(tempfile.gettempdir())):
        try:
            save_file(tensors, str(folder / name), metadata={"sfd": json.dumps(meta)})
            return folder / name
        except Exception:  # noqa: BLE001 (any failure: try the next place)
            continue
    raise SFDError(f"could not write the model to {out_path}, nor a recovery file beside it or in {tempfile.gettempdir()}")


def _write_run(out_path: Path, trainer: SFDTrainer, f: FinishedRun) -> dict:
    """Save the one-step folder (and, for stage 1, the fake score; for LoRA runs, the adapters) atomically; returns the
    summary written to its sfd_config.json."""
    family, teacher_pipe, stage, save_dtype = f.family, f.teacher_pipe, f.stage, f.save_dtype
    model, generator, run, evaluate, train_seconds = f.model, f.generator, f.run, f.evaluate, f.train_seconds
    concepts = trainer.spec.describe()  # a class override "random" is resolved by the trainer
    with staged_dir(out_path) as tmp:
        _save_before_merge(tmp, trainer, family, teacher_pipe, stage, save_dtype)
        # The generator is made from the roles' own network (a LoRA adapter merged in place), not copied: a copy of
        # the network on top of the training state raised the whole command's peak above the iterations'.
        result = family.one_step_pipeline_from(teacher_pipe, trainer.final_generator(), f.convention)
        metrics = evaluate(result, concepts) if evaluate is not None else None
        summary = {
            "stage": stage if stage == "distill" else "erase-stage-2" if generator is not None else "erase-single-stage",
            "family": family.name, "base_model": str(model), "teacher_fingerprint": teacher_fingerprint(model, family),
            "generator_base": generator, "roles": f.roles_note, "one_step_convention": f.convention.describe(),
            "sigma_init": trainer.sigma_init,
            "resolution": family.image_size(teacher_pipe),  # the one-step folder samples at this size
            "latent_shape": list(trainer.latent_shape),
            "concepts": concepts,
            "config": json.loads(f.config.to_json()),
            "micro_batches": trainer.micro_batches,  # the count used (config.micro_batches 0: chosen from memory)
            "erase_seconds": train_seconds,
            "train_loop_seconds": run["seconds"],  # the iterations alone (loading and set-up excluded)
            "resumed_from_step": run["resumed_from_step"], "final_losses": run["losses"], "metrics": metrics,
            "versions": software_versions(), "hub_id": f.hub_id,
        }
        if trainer.adversary is not None:  # robust SFD: the inner attack and its budget, for the model card
            summary["robust"] = trainer.adversary.describe()
        _cast(save_dtype, family.network(result))
        with quiet_diffusers():
            result.save_pretrained(tmp, safe_serialization=True)
        use = use_section(family, result, summary, str(f.out), trainer.spec.example())  # the card's recipes, from this run
        _write_notes(tmp, family, summary, f.meta, model, train_seconds, evaluate, use)
    return summary


def _write_notes(tmp: Path, family: ModelFamily, summary: dict, meta: dict, model: str, train_seconds: float, evaluate,
                 use: list[str]) -> None:
    """sfd_config.json (the summary), a world's sfd_world.json, and the model card (`use`: its recipes)."""
    (tmp / SFD_CONFIG_NAME).write_text(json.dumps(summary, indent=2))
    if meta:
        (tmp / "sfd_world.json").write_text(json.dumps({**meta, "base_model": str(model)}, indent=2))
    (tmp / "README.md").write_text(model_card(family, summary, train_seconds, getattr(evaluate, "notes", ""), use))


def _save_before_merge(tmp: Path, trainer: SFDTrainer, family: ModelFamily, teacher_pipe, stage: str, save_dtype: str) -> None:
    """What must leave the roles before the generator is merged into its network in place: stage 1's fake score
    (`fake_score/`) and, for LoRA runs, both adapters (`sfd_adapters.safetensors`, and the family's `lora/`)."""
    roles = trainer.roles
    if stage == "distill":
        fake = roles.finish_fake()
        _cast(save_dtype, fake)
        with quiet_diffusers():
            fake.save_pretrained(tmp / FAKE_SCORE_DIR, safe_serialization=True)
        del fake
    if roles.mode == "lora":
        from sfd.core.roles import FAKE_ADAPTER, GENERATOR_ADAPTER

        ema = dict(trainer.ema.shadow)
        save_adapters(tmp, {GENERATOR_ADAPTER: ema, FAKE_ADAPTER: roles.fake_state()},
                      {"rank": roles.rank, "targets": roles.targets, "family": family.name}, SAVE_DTYPES[save_dtype])
        family.save_lora(teacher_pipe, tmp, ema, roles.rank, roles.targets)
