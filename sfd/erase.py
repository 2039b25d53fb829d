"""`sfd erase` for label-conditional models: load the teacher, run SFD, save a one-step pipeline folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import __version__
from .concepts import ClassForgetSpec
from .config import CLASS_PRESET, SFDConfig
from .errors import SFDError
from .model_card import model_card
from .models import checkpoints_dir, load_class_pipeline, world_meta
from .outputs import check_output_dir, staged_dir
from .trainer import DivergenceError, SFDTrainer, read_state, save_state_atomic

SFD_CONFIG_NAME = "sfd_config.json"
STATE_NAME = "training_state.safetensors"
CLASS_METRIC_NOTES = (
    "Judge: the world's classifier; accuracy of class k = share of samples generated for k that the judge assigns to k; "
    "FD = Frechet distance in judge features between retained-class samples and real images of those classes."
)


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


def run_training(trainer: SFDTrainer, out: Path, identity: dict, resume: bool, checkpoint_every: int, progress: bool) -> dict:
    """Train with periodic atomic checkpoints in `out`, resuming from one if asked; returns trainer.train's result."""
    state_path = out / STATE_NAME
    resumed_from = 0
    if resume:
        tensors, meta = read_state(state_path)
        if meta.get("identity") != identity:
            raise SFDError(f"the training state in {out} belongs to another run (base model or concepts differ)")
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
        run = trainer.train(progress=progress, callback=periodic, checkpoint=save)
    except DivergenceError as e:
        where = f"last good state: {state_path}" if state_path.is_file() else "no state was saved (use --checkpoint-every N)"
        raise DivergenceError(f"{e}; {where}") from None
    return {**run, "resumed_from_step": resumed_from}


def software_versions() -> dict:
    import diffusers

    return {"sfd": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


def default_judge(meta: dict) -> Path | None:
    """The judge bundled with a world (checkpoints/<world>/judge), if present."""
    world = meta.get("world")
    p = checkpoints_dir() / world / "judge" if world else None
    return p if p is not None and p.is_dir() else None


def evaluate_digits_model(pipe, forget: tuple[int, ...], judge_path: Path, n_per_class: int, seed: int, progress: bool, **call_kwargs) -> dict:
    from evaluators.class_eval import evaluate_classes
    from evaluators.classifier import ConvJudge

    from .worlds.digits import load_digits_tensors

    judge = ConvJudge.from_pretrained(judge_path)
    x, y = load_digits_tensors()
    return evaluate_classes(pipe, judge, x, y, n_per_class=n_per_class, seed=seed, forget=forget, progress=progress, **call_kwargs)


def erase_classes(
    model: str,
    forget: list[str],
    override: str,
    out: str,
    config: SFDConfig = CLASS_PRESET,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    eval_n_per_class: int = 100,
    resume: bool = False,
    checkpoint_every: int = 0,
) -> dict:
    """Erase class(es) from a class-conditional teacher folder; returns a summary dict (also in the model card)."""
    from pipelines import ClassConditionalPipeline, OneStepClassPipeline

    out_path = prepare_out(out, overwrite, resume)
    t_start = time.perf_counter()
    pipe = load_class_pipeline(model, device)
    if not isinstance(pipe, ClassConditionalPipeline):
        raise SFDError(f"{model} is already a one-step generator; erase from the multi-step teacher it was distilled from")
    spec = ClassForgetSpec.parse(pipe.config.class_names, forget, override, null_class=pipe.null_class)
    config = config.resolved(pipe.config.default_guidance_scale if pipe.null_class is not None else 1.0)
    config.validate(pipe.scheduler.config.num_train_timesteps)
    trainer = SFDTrainer(pipe.denoiser, spec, config, device)
    identity = {"base_model": str(model), "concepts": spec.describe()}  # what was asked; a resume must ask the same
    spec = trainer.spec  # override "random" resolved to a retained class per forget class (seeded)
    run = run_training(trainer, out_path, identity, resume, checkpoint_every, progress)
    if not trainer.is_main:
        return {}
    result = OneStepClassPipeline(unet=trainer.ema_unet(), scheduler=pipe.scheduler, t_init=config.t_init, class_names=pipe.config.class_names)
    train_seconds = time.perf_counter() - t_start

    meta = world_meta(model)
    judge = default_judge(meta)
    metrics = None
    if judge is not None and eval_n_per_class > 0:
        metrics = evaluate_digits_model(result, spec.forget, judge, eval_n_per_class, seed=config.seed, progress=progress)
    summary = {
        "base_model": str(model),
        "concepts": spec.describe(),
        "config": json.loads(config.to_json()),
        "erase_seconds": train_seconds,
        "resumed_from_step": run["resumed_from_step"],
        "final_losses": run["losses"],
        "metrics": metrics,
        "judge": str(judge) if judge else None,
        "versions": software_versions(),
    }
    with staged_dir(out_path) as tmp:
        result.save_pretrained(tmp, safe_serialization=True)
        (tmp / SFD_CONFIG_NAME).write_text(json.dumps(summary, indent=2))
        if meta:
            (tmp / "sfd_world.json").write_text(json.dumps({**meta, "base_model": str(model)}, indent=2))
        (tmp / "README.md").write_text(
            model_card("class", str(model), spec.describe(), summary["config"], train_seconds, metrics, summary["versions"], CLASS_METRIC_NOTES)
        )
    return summary


TEXT_METRIC_NOTES = (
    "Judge: CLIP zero-shot detection of each concept against its contrast concepts; rates are shares of images "
    "generated from the prompts named; CLIP score = 100 * cosine(image, prompt), clamped at 0."
)


def _torch_dtype(name: str | None, device: str):
    if name in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise SFDError(f"unknown dtype {name!r}; expected fp32, bf16 or fp16")
    return table[name]


def shapes_metrics(teacher_path: str, erased, concepts, seed: int, device: str, progress: bool) -> dict:
    """The erased model's shapes-world metrics beside the teacher's (same prompts and seeds)."""
    from evaluators.shapes_eval import compare_to_teacher, erasure_metrics

    from .models import load_text_pipeline

    teacher = load_text_pipeline(teacher_path, device)
    meta = world_meta(teacher_path)
    steps, guidance = meta.get("default_num_inference_steps"), meta.get("default_guidance_scale")
    kw = {k: v for k, v in (("num_inference_steps", steps), ("guidance_scale", guidance)) if v is not None}
    before = erasure_metrics(teacher, concepts, seed=seed, progress=progress, **kw)
    after = erasure_metrics(erased, concepts, seed=seed, progress=progress)
    return {**{k: v for k, v in after.items() if isinstance(v, float)}, **compare_to_teacher(after, before),
            "teacher": {k: v for k, v in before.items() if isinstance(v, float)}}


def world_prompts(meta: dict) -> list[str] | None:
    """All captions of a bundled world (its forget candidates and retain prompts), or None for other models."""
    if meta.get("world") == "shapes":
        from .worlds import shapes

        return [shapes.caption(c, s, t) for t in range(len(shapes.TEMPLATES))
                for c in range(len(shapes.COLOURS)) for s in range(len(shapes.SHAPES))]
    return None


def erase_text(
    model: str,
    forget: list[str],
    override: str,
    out: str,
    config: SFDConfig,
    retain_prompts: str | None = None,
    negative_prompt: str = "",
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    allow_pickle: bool = False,
    frozen_dtype: str | None = None,
    gradient_checkpointing: bool | None = None,
    evaluate: bool = True,
    resume: bool = False,
    checkpoint_every: int = 0,
) -> dict:
    """Erase text concept(s) from a Stable-Diffusion-style teacher; writes a `OneStepTextPipeline` folder."""
    from diffusers import StableDiffusionPipeline

    from pipelines import OneStepTextPipeline
    from pipelines.text_to_image import encode_prompts

    from .concepts import TextForgetSpec
    from .denoisers import Denoiser
    from .models import load_text_pipeline
    from .prompts import RETAIN_PROMPTS, read_prompt_file

    out_path = prepare_out(out, overwrite, resume)
    retain_file = read_prompt_file(retain_prompts) if retain_prompts else None
    t_start = time.perf_counter()
    pipe = load_text_pipeline(model, device, allow_pickle=allow_pickle)
    if not isinstance(pipe, StableDiffusionPipeline):
        raise SFDError(f"{model} is already a one-step generator; erase from the multi-step teacher it was distilled from")
    meta = world_meta(model) if Path(model).is_dir() else {}
    captions = world_prompts(meta)
    spec = TextForgetSpec.build(forget, override, retain_file or captions or list(RETAIN_PROMPTS), candidates=captions,
                                negative_prompt=negative_prompt)
    config = config.resolved(1.0)
    config.validate(pipe.scheduler.config.num_train_timesteps)
    conditions = spec.encode(lambda prompts: encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, device))
    teacher = Denoiser.from_unet_and_scheduler_config(pipe.unet, pipe.scheduler.config)
    big = sum(p.numel() for p in pipe.unet.parameters()) > 100e6
    trainer = SFDTrainer(
        teacher, conditions, config, device,
        frozen_dtype=_torch_dtype(frozen_dtype, device),
        gradient_checkpointing=big if gradient_checkpointing is None else gradient_checkpointing,
        autocast_dtype=torch.bfloat16 if str(device).startswith("cuda") else None,
    )
    identity = {"base_model": str(model), "concepts": spec.describe()}
    run = run_training(trainer, out_path, identity, resume, checkpoint_every, progress)
    if not trainer.is_main:
        return {}
    result = OneStepTextPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                 unet=trainer.ema_unet(), scheduler=pipe.scheduler, t_init=config.t_init)
    erase_seconds = time.perf_counter() - t_start
    metrics = None
    if evaluate and meta.get("world") == "shapes":
        metrics = shapes_metrics(model, result, spec.concepts, config.seed, device, progress)
    summary = {
        "base_model": str(model),
        "concepts": spec.describe(),
        "config": json.loads(config.to_json()),
        "erase_seconds": erase_seconds,
        "resumed_from_step": run["resumed_from_step"],
        "final_losses": run["losses"],
        "metrics": metrics,
        "versions": software_versions(),
    }
    with staged_dir(out_path) as tmp:
        result.save_pretrained(tmp, safe_serialization=True)
        (tmp / SFD_CONFIG_NAME).write_text(json.dumps(summary, indent=2))
        if meta:
            (tmp / "sfd_world.json").write_text(json.dumps({**meta, "base_model": str(model)}, indent=2))
        (tmp / "README.md").write_text(model_card("text", str(model), spec.describe(), summary["config"], erase_seconds, metrics,
                                                  summary["versions"], TEXT_METRIC_NOTES))
    return summary
