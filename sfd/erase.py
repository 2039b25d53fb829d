"""`sfd erase` and `sfd distill`, written once for every model family (DESIGN.md sections 2, 2.1 and 3).

Both load a teacher through its family, build the trainer's roles, run the same SFD loop and save a one-step
pipeline folder with a model card:
- `distill` (stage 1): plain SiD, no forget concepts; the folder also holds the fake score (`fake_score/`),
  so that an erase from it can start its fake score there;
- `erase` (stage 2 with `generator=`, a one-step base; single-stage without): SiD with SFD's forgetting loss.
World metrics are computed by an `evaluate(pipe, concepts)` callable that the caller passes in (the CLI takes
it from `evaluators.world_metrics`; its `notes` attribute defines the metrics in the model card), so this module
does not reach up into the evaluators.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import __version__
from .config import SFDConfig
from .errors import SFDError
from .families import ModelFamily, family_for
from .generators import OneStepConvention
from .model_card import model_card
from .models import model_identity, quiet_diffusers, world_meta
from .outputs import check_output_dir, staged_dir
from .roles import FullRoles
from .trainer import DivergenceError, SFDTrainer, read_state, save_state_atomic

SFD_CONFIG_NAME = "sfd_config.json"
STATE_NAME = "training_state.safetensors"
FAKE_SCORE_DIR = "fake_score"  # stage 1's fake score, beside the one-step pipeline's own folders

Evaluate = Callable[[object, dict], "dict | None"]


def prepare_out(out: str, overwrite: bool, resume: bool) -> Path:
    """The run folder: with --resume it must hold a training state; otherwise it must be new (or --overwrite)."""
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
        saved = {k: v for k, v in meta.get("config", {}).items() if k != "steps"}
        now = {k: v for k, v in json.loads(trainer.config.to_json()).items() if k != "steps"}
        if saved != now:
            diff = sorted(k for k in now if saved.get(k) != now[k])
            raise SFDError(f"the training state in {out} was made with other settings ({', '.join(diff)}); only --steps may change")
        trainer.load_state(tensors, meta)
        resumed_from = trainer.step_count
        if trainer.is_main:
            print(f"resuming {out} from step {resumed_from} of {trainer.config.steps}", flush=True)

    def save(tr: SFDTrainer) -> None:
        if tr.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_state_atomic(tr, state_path, {"identity": identity})

    def periodic(tr: SFDTrainer) -> None:
        if checkpoint_every and tr.step_count % checkpoint_every == 0 and tr.step_count < tr.config.steps:
            save(tr)

    try:
        run = trainer.train(progress=progress, callback=periodic, checkpoint=save, desc=desc)
    except DivergenceError as e:
        where = f"last good state: {state_path}" if state_path.is_file() else "no state was saved (use --checkpoint-every N)"
        raise DivergenceError(f"{e}; {where}") from None
    return {**run, "resumed_from_step": resumed_from}


def software_versions() -> dict:
    import diffusers

    return {"sfd": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


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
    """A cheap fingerprint of the teacher's network weights (sfd.models.model_identity of its network folder)."""
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
    from .roles import FAKE_ADAPTER, GENERATOR_ADAPTER, LoraRoles

    targets = [t.strip() for t in config.lora_targets.split(",") if t.strip()] or family.lora_targets()
    note.update(rank=config.lora_rank, targets=targets)
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
        note["generator_from"] = "an adapter on a frozen copy of the base's network (two UNets)"
    return LoraRoles(teacher, convention, device, rank=config.lora_rank, targets=targets, seed=config.seed, **kwargs, **common), note


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
) -> dict:
    """Distil (no `forget`) or erase (`forget` concepts replaced by `override`) and save a one-step pipeline folder.

    `generator`: a one-step base to start the generator from (stage 2); its fake score (`fake_score/`) starts the
    fake score when `config.fake_score_init == "base"`. Returns the summary written to sfd_config.json ({} on the
    non-main processes of a multi-process run).
    """
    stage = "erase" if forget else "distill"
    if save_dtype not in SAVE_DTYPES:
        raise SFDError(f"unknown save dtype {save_dtype!r}; expected one of {', '.join(SAVE_DTYPES)}")
    out_path = prepare_out(out, overwrite, resume)
    t_start = time.perf_counter()
    family = family or family_for(model)
    teacher_pipe = family.load(model, device, allow_pickle=allow_pickle)
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
        base_pipe = family.load(generator, device, allow_pickle=allow_pickle)
        family.check_base(teacher_pipe, base_pipe, generator)
        convention = OneStepConvention.from_config(base_pipe.config).validate(num_timesteps)
    opts = family.training_options(teacher_pipe, device, frozen_dtype, gradient_checkpointing)
    roles, roles_note = build_roles(family, teacher_pipe, config, convention, device, opts, base_pipe, generator)
    trainer = SFDTrainer(roles, spec, config, device, autocast_dtype=opts.get("autocast_dtype"),
                         latent_shape=family.latent_shape(teacher_pipe))
    identity = run_identity(model, spec.describe(), generator)
    run = run_training(trainer, out_path, identity, resume, checkpoint_every, progress, desc=f"sfd {stage}")
    if not trainer.is_main:
        return {}
    result = family.one_step_pipeline_from(teacher_pipe, trainer.ema_unet(), convention)
    train_seconds = time.perf_counter() - t_start
    concepts = trainer.spec.describe()  # a class override "random" is resolved by the trainer
    metrics = evaluate(result, concepts) if evaluate is not None else None
    summary = {
        "stage": stage if stage == "distill" else "erase-stage-2" if generator is not None else "erase-single-stage",
        "family": family.name,
        "base_model": str(model),
        "teacher_fingerprint": teacher_fingerprint(model, family),
        "generator_base": generator,
        "roles": roles_note,
        "one_step_convention": convention.describe(),
        "sigma_init": trainer.sigma_init,
        "concepts": concepts,
        "config": json.loads(config.to_json()),
        "erase_seconds": train_seconds,
        "train_loop_seconds": run["seconds"],  # the iterations alone (loading and set-up excluded)
        "resumed_from_step": run["resumed_from_step"],
        "final_losses": run["losses"],
        "metrics": metrics,
        "versions": software_versions(),
    }
    fake = roles.export_fake() if stage == "distill" else None
    with staged_dir(out_path) as tmp:
        _cast(save_dtype, family.network(result), *([fake] if fake is not None else []))
        with quiet_diffusers():
            result.save_pretrained(tmp, safe_serialization=True)
            if fake is not None:
                fake.save_pretrained(tmp / FAKE_SCORE_DIR, safe_serialization=True)
        family.network(result).float()
        if roles.mode == "lora":
            from .roles import FAKE_ADAPTER, GENERATOR_ADAPTER

            ema = {k: v for k, v in trainer.ema.shadow.items()}
            save_adapters(tmp, {GENERATOR_ADAPTER: ema, FAKE_ADAPTER: roles.fake_state()},
                          {"rank": roles.rank, "targets": roles.targets, "family": family.name}, SAVE_DTYPES[save_dtype])
            family.save_lora(teacher_pipe, tmp, ema, roles.rank, roles.targets)
        (tmp / SFD_CONFIG_NAME).write_text(json.dumps(summary, indent=2))
        if meta:
            (tmp / "sfd_world.json").write_text(json.dumps({**meta, "base_model": str(model)}, indent=2))
        (tmp / "README.md").write_text(model_card(family, summary, train_seconds, getattr(evaluate, "notes", "")))
    return summary
