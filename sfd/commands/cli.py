"""The `sfd` command line: erase, distill, import-base, sample, eval, train-teacher, quickstart, audit, attack, demo.

User errors print one line (`sfd <command>: error: ...`) and exit with status 2, without a traceback.
Heavy libraries are imported inside the commands so that `sfd --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sfd.commands.cli_args import Parser as _Parser, float_arg as _float_arg, nonneg_int as _nonneg_int
from sfd.commands.cli_args import pos_int as _pos_int, run_command
from sfd.kernel.distributed import resolve_device as _device
from sfd.kernel.errors import SFDError


# ------------------------------------------------------------------------------------------ commands

def _world_meta(path: str) -> dict:
    from sfd.core.models import world_meta

    return world_meta(path) if Path(path).is_dir() else {}


def _retain_prompts(path: str | None) -> list[str] | None:
    if not path:
        return None
    from sfd.evaluators.prompt_sets import read_prompt_file

    return read_prompt_file(path)


def _choose_base(a, family, preset_name: str) -> str | None:
    """The one-step base of an erase: --generator, none with --single-stage, else the world's bundled base; a preset
    that cannot converge from the teacher alone (Stable Diffusion's) refuses to run single-stage unless asked."""
    from sfd.core.config import SINGLE_STAGE_OK
    from sfd.core.erase import default_base

    if a.generator and a.single_stage:
        raise SFDError("--generator and --single-stage contradict each other; choose one")
    if a.generator or a.single_stage:
        return a.generator
    base = default_base(a.model)
    if base is not None:
        print(f"erasing from the distilled base {base} (stage 2); --generator picks another base, "
              "--single-stage erases from the teacher alone", flush=True)
        return str(base)
    if not SINGLE_STAGE_OK.get(preset_name, False):
        raise SFDError(f"{a.model} has no one-step base, and a single-stage erase with the {preset_name!r} preset cannot converge "
                       f"(README: Two stages): run `sfd distill --model {a.model} --out BASE` and pass --generator BASE, or pass "
                       "--generator with a one-step model made elsewhere (`sfd import-base`); --single-stage runs it anyway")
    return None


def _run(a, forget: list[str], override: str | None, generator: str | None, stage: str) -> dict:
    """`sfd erase` and `sfd distill`: the preset of the model's family and stage, the world's metrics, one SFD run."""
    from sfd.evaluators.world_metrics import world_evaluator

    from sfd.core.config import check_preset_fits, preset
    from sfd.kernel.distributed import init_from_env
    from sfd.core.erase import run_sfd
    from sfd.core.families import family_for

    device = init_from_env(_device(a.device))
    family = family_for(a.model)
    name = family.preset(_world_meta(a.model))
    if a.preset:
        check_preset_fits(a.preset, family.name, family.description, name)
        name = a.preset
    if stage == "erase":
        generator = _choose_base(a, family, name)
        stage = "erase" if generator else "single"
    config = preset(name, stage, robust=True if a.robust_space else a.robust)
    config = config.replace(steps=a.steps, seed=a.seed, lora_rank=a.lora_rank, lora_targets=a.lora_targets,
                            lora_lr_scale=a.lora_lr_scale, micro_batches=a.micro_batches)
    if a.lora or a.lora_rank or a.lora_targets or a.lora_lr_scale:
        config = config.replace(lora=True)
    if a.robust_space:
        config = config.replace(robust_space=a.robust_space)
    if a.batch:
        config = config.with_batch(a.batch, erase=stage != "distill")
    evaluate = world_evaluator(family, a.model, seed=config.seed, device=device, progress=not a.quiet)
    return run_sfd(a.model, a.out, config, forget=forget, override=override, generator=generator,
                   retain_prompts=_retain_prompts(a.retain_prompts), negative_prompt=a.negative_prompt or "",
                   overwrite=a.overwrite, device=device, progress=not a.quiet, allow_pickle=a.allow_pickle,
                   frozen_dtype=a.dtype, resume=a.resume, checkpoint_every=a.checkpoint_every, save_dtype=a.save_dtype,
                   evaluate=evaluate, family=family, resolution=a.resolution, hub_id=a.hub_id)


def cmd_erase(a) -> int:
    from sfd.core.methods import method_named

    method = method_named(a.method)
    if method.is_baseline:
        return _run_baseline(a, method)
    summary = _run(a, a.forget, a.override, a.generator, "erase")
    if summary:  # empty on the non-main processes of a multi-process run
        print(summary_line(summary, a.out))
    return 0


def _run_baseline(a, method) -> int:
    """`sfd erase --method esd-x|esd-u|uce|...`: a baseline edit of the teacher itself (sfd.core.methods, sfd/core/baselines)."""
    from dataclasses import replace

    from sfd.evaluators.world_metrics import world_evaluator

    from sfd.core.baselines import default_settings, run_baseline
    from sfd.core.families import family_for

    sfd_only = [f for f, on in (("--generator", a.generator), ("--single-stage", a.single_stage), ("--resume", a.resume),
                                ("--lora", a.lora or a.lora_rank or a.lora_targets or a.lora_lr_scale), ("--preset", a.preset),
                                ("--micro-batches", a.micro_batches), ("--checkpoint-every", a.checkpoint_every),
                                ("--negative-prompt", a.negative_prompt), ("--resolution", a.resolution),
                                ("--batch", a.batch), ("--hub-id", a.hub_id), ("--robust", a.robust),
                                ("--robust-space", a.robust_space)) if on]
    if sfd_only:
        raise SFDError(f"{sfd_only[0]} applies to --method sfd, not {a.method}")
    if method.closed_form and a.steps is not None:
        raise SFDError(f"--steps does not apply to --method {a.method} (a closed-form edit)")
    family = family_for(a.model)
    settings = default_settings(a.method, family, a.model, a.forget)
    if not method.closed_form:
        settings = replace(settings, seed=a.seed, **({"steps": a.steps} if a.steps else {}))
    device = _device(a.device)
    evaluate = world_evaluator(family, a.model, seed=a.seed, device=device, progress=not a.quiet)
    s = run_baseline(a.method, a.model, a.out, a.forget, a.override, settings, retain_prompts=_retain_prompts(a.retain_prompts),
                     overwrite=a.overwrite, device=device, progress=not a.quiet, allow_pickle=a.allow_pickle, evaluate=evaluate)
    line = f"erased {', '.join(s['concepts']['forget'])} with {a.method} -> {a.out} in {s['erase_seconds']:.0f} s"
    m = s["metrics"] or {}
    if m:
        line += "; " + ", ".join(f"{k} {v:.3g}" for k, v in m.items() if isinstance(v, float))
    print(line)
    return 0


def cmd_distill(a) -> int:
    summary = _run(a, [], None, None, "distill")
    if summary:
        print(summary_line(summary, a.out))
    return 0


def summary_line(summary: dict, out: str) -> str:
    m = summary["metrics"]
    if summary["stage"] == "distill":
        line = f"distilled {summary['base_model']} -> {out} in {summary['erase_seconds']:.0f} s"
    else:
        line = f"erased {', '.join(summary['concepts']['forget'])} -> {out} in {summary['erase_seconds']:.0f} s"
    if m and "retained_mean_accuracy" in m:
        if "forget_accuracy" in m:
            line += f"; forget acc {m['forget_accuracy']:.1%},"
        line += (f" retained mean {m['retained_mean_accuracy']:.1%} (min {m['retained_min_accuracy']:.1%}), "
                 f"FD {m['fd_retained']:.3f}")
    elif m:
        line += "; " + ", ".join(f"{k} {v:.3g}" for k, v in m.items() if isinstance(v, float))
    return line


def cmd_import_base(a) -> int:
    """A one-step UNet made by another method (SD-Turbo, DMD2, ...) as a one-step pipeline folder of its teacher."""
    from sfd.core.families import family_for
    from sfd.kernel.generators import NAMED_CONVENTIONS, OneStepConvention
    from sfd.core.models import check_weights_are_safe, quiet_diffusers
    from sfd.kernel.outputs import check_output_dir, staged_dir

    if a.convention is None and a.timestep is None:
        raise SFDError(f"give --convention ({', '.join(NAMED_CONVENTIONS)}) or --timestep T [--input-scale S]")
    custom = [f for f, v in (("--timestep", a.timestep), ("--input-scale", a.input_scale), ("--prediction-type", a.prediction_type))
              if v is not None]
    if a.convention is not None and custom:
        raise SFDError(f"--convention {a.convention} fixes the timestep, input scale and prediction type; {custom[0]} would be "
                       "ignored: give --convention alone, or --timestep T [--input-scale S] [--prediction-type P] without it")
    convention = NAMED_CONVENTIONS[a.convention] if a.convention else OneStepConvention(a.timestep, a.input_scale, a.prediction_type)
    out = check_output_dir(a.out, a.overwrite, {"--unet": a.unet, "--teacher": a.teacher})
    family = family_for(a.teacher)
    teacher = family.load(a.teacher, "cpu", allow_pickle=a.allow_pickle)
    if family.is_one_step(teacher):
        raise SFDError(f"--teacher {a.teacher} is a one-step model; give the multi-step teacher the UNet was distilled from")
    convention.validate(teacher.scheduler.config.num_train_timesteps)
    sub = Path(a.unet) / family.network_name
    unet_dir = sub if sub.is_dir() else Path(a.unet)
    if not (unet_dir / "config.json").is_file():
        raise SFDError(f"--unet {a.unet}: no diffusers UNet folder there (config.json, or a pipeline folder with unet/)")
    check_weights_are_safe(unet_dir, a.allow_pickle)
    try:
        with quiet_diffusers():
            unet = type(family.network(teacher)).from_pretrained(str(unet_dir), use_safetensors=not a.allow_pickle)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise SFDError(f"could not load --unet {a.unet}: {str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
    pipe = family.one_step_pipeline_from(teacher, unet.float(), convention)
    family.check_base(teacher, pipe, str(a.unet), flag="--unet")
    with staged_dir(out) as tmp, quiet_diffusers():
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "sfd_config.json").write_text(json.dumps({
            "stage": "imported", "family": family.name, "base_model": str(a.teacher), "unet": str(a.unet),
            "one_step_convention": convention.describe(), "convention_name": a.convention}, indent=2))
    print(f"one-step base -> {out}: {a.unet} called at timestep {convention.timestep:g}"
          + (f" on {convention.input_scale:g} z" if convention.input_scale is not None else " (SiD's input)"))
    return 0


def cmd_sample(a) -> int:
    import torch
    from diffusers import DiffusionPipeline
    from tqdm.auto import tqdm

    from sfd.core.families import family_for
    from sfd.kernel.outputs import check_output_dir

    family = family_for(a.model)
    condition = family.user_condition(prompt=a.prompt, class_=a.class_)
    out = check_output_dir(a.out, a.overwrite, {"--model": a.model})
    pipe = family.load(a.model, _device(a.device), allow_pickle=a.allow_pickle)
    label = family.condition_label(pipe, condition)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=a.n, desc="sampling", unit="img", disable=a.quiet)
    for start in range(0, a.n, a.batch_size):
        idx = list(range(start, min(a.n, start + a.batch_size)))
        gens = [torch.Generator(device=pipe.device).manual_seed(a.seed + i) for i in idx]
        images = family.sample(pipe, [condition] * len(idx), gens, steps=a.steps, guidance=a.guidance, negative_prompt=a.negative_prompt)
        for i, img in zip(idx, DiffusionPipeline.numpy_to_pil(images.permute(0, 2, 3, 1).float().cpu().numpy())):
            img.save(out / f"{label}_{i:05d}_seed{a.seed + i}.png")
        bar.update(len(idx))
    bar.close()
    print(f"wrote {a.n} images to {out} (image i uses seed {a.seed}+i)")
    return 0


def cmd_eval(a) -> int:
    from sfd.evaluators.class_eval import format_class_table
    from sfd.evaluators.world_metrics import default_judge, evaluate_digits_model

    from sfd.core.families import family_for, pipeline_class_of

    if a.json:
        from sfd.kernel.outputs import check_not_an_input

        check_not_an_input(a.json, {"--model": a.model, "--judge": a.judge}, what="--json")
    if a.json and (Path(a.json).is_dir() or not Path(a.json).resolve().parent.is_dir()):  # fail before sampling
        raise SFDError(f"--json {a.json!r}: expected a file path in an existing folder")
    family = family_for(a.model)
    if family.metrics != "judge":
        raise SFDError(f"{a.model} holds a {pipeline_class_of(a.model)}; sfd eval judges classes: expected a class-conditional model")
    pipe = family.load(a.model, _device(a.device))
    judge = Path(a.judge) if a.judge else default_judge(_world_meta(a.model))
    if judge is None or not judge.is_dir():
        raise SFDError("no judge found for this model; pass --judge PATH (a judge folder such as checkpoints/digits/judge)")
    sfd_cfg = Path(a.model) / "sfd_config.json"
    forget = tuple(json.loads(sfd_cfg.read_text())["concepts"]["forget_ids"]) if sfd_cfg.is_file() else ()
    kwargs = {"num_inference_steps": a.steps} if a.steps is not None and not family.is_one_step(pipe) else {}
    m = evaluate_digits_model(pipe, forget, judge, a.n_per_class, a.seed, progress=not a.quiet, **kwargs)
    print(format_class_table({"model": m}, pipe.config.class_names, forget))
    if a.json:
        Path(a.json).write_text(json.dumps(m, indent=2))
    return 0


# ------------------------------------------------------------------------------------------- parser

def _add_run_arguments(p, model_help: str) -> None:
    """Options shared by `sfd erase` and `sfd distill`."""
    from sfd.core.config import PRESETS

    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--out", required=True, help="output folder for the one-step model")
    p.add_argument("--steps", type=_nonneg_int("--steps"), help="SFD iterations (default: the preset's)")
    p.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--checkpoint-every", type=_nonneg_int("--checkpoint-every"), default=0,
                   help="save a resumable training state in --out every N steps (0: only on Ctrl-C)")
    p.add_argument("--resume", action="store_true", help="continue the run whose training state is in --out")
    p.add_argument("--preset", choices=list(PRESETS), help="hyperparameter preset (default: chosen from the model)")
    p.add_argument("--lora", action="store_true",
                   help="generator and fake score as LoRA adapters on the one frozen teacher network (the preset's rank)")
    p.add_argument("--lora-rank", type=_pos_int("--lora-rank"), help="LoRA rank (implies --lora)")
    p.add_argument("--lora-targets", help="comma-separated module names LoRA adapts (implies --lora; default: the family's list)")
    p.add_argument("--lora-lr-scale", type=_float_arg("--lora-lr-scale", positive=True),
                   help="multiply both learning rates by this in LoRA mode (implies --lora; default: the preset's)")
    p.add_argument("--robust", action=argparse.BooleanOptionalAction, default=None,
                   help="robust SFD (erase only): the forget term also trains on conditions found against the current "
                        "generator (the preset's inner attack; BENCHMARKS.md: Robust SFD). Default: the preset's setting "
                        "(on where it measured better); --no-robust turns it off")
    p.add_argument("--robust-space", help="robust SFD's perturbation spaces, comma-separated, taking turns (implies --robust): "
                   "conditioning, soft-tokens, token, noise for text-to-image models; class-embedding, noise for "
                   "class-conditional ones (default: the preset's)")
    p.add_argument("--micro-batches", type=_pos_int("--micro-batches"),
                   help="split each process's batch into N parts, one backward each (gradient accumulation; default: the "
                        "smallest count whose part fits the memory available, measured on the first iteration)")
    p.add_argument("--batch", type=_pos_int("--batch"),
                   help="rows per iteration, all processes together (default: the preset's); an erase splits them between "
                        "retain and forget rows in the preset's proportion, at least one of each")
    p.add_argument("--hub-id", help="the Hub repository id you will publish under (recorded in the model card with its "
                                    "upload command; uploading stays `huggingface-cli upload`)")
    p.add_argument("--resolution", type=_pos_int("--resolution"),
                   help="text-to-image models: image side in pixels to train at (a multiple of the VAE factor, and of the "
                        "patch size for transformers; default: the teacher's own); the one-step model samples at it")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="dtype of the frozen teacher")
    p.add_argument("--save-dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="dtype the trained weights are stored in")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled weights (.bin/.ckpt): only for files you trust")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_training_parsers(sub) -> None:
    """`sfd erase` and `sfd distill`."""
    e = sub.add_parser("erase", help="erase class(es) or concept(s) from a model; writes a one-step model folder")
    _add_run_arguments(e, "teacher: a diffusers pipeline folder (or hub id)")
    e.add_argument("--forget", required=True, action="append", help="class (index or name) or concept text to forget (repeatable)")
    e.add_argument("--override", default="random",
                   help="what replaces it: a class, or 'random' (class models, the default): each forget class goes to the "
                        "retained class the teacher finds nearest to it, chosen once per run; a text for text-to-image models")
    e.add_argument("--generator", help="one-step base to erase from (stage 2): a folder written by `sfd distill` or "
                                       "`sfd import-base` (default: the world's bundled base, if any)")
    e.add_argument("--single-stage", action="store_true",
                   help="erase from the teacher alone, distilling and forgetting in one run (no one-step base)")
    e.add_argument("--retain-prompts", help="text models: file of retain prompts (.txt/.csv/.jsonl; default: built-in list)")
    e.add_argument("--negative-prompt", help="text models: replaces the unconditional branch of guidance")
    from sfd.core.methods import METHODS, help_text

    e.add_argument("--method", choices=list(METHODS), default="sfd", help=help_text())
    e.set_defaults(func=cmd_erase)

    di = sub.add_parser("distill", help="distil a teacher into a one-step base (SFD stage 1, no forgetting); erase from it later")
    _add_run_arguments(di, "teacher: a diffusers pipeline folder (or hub id)")
    di.add_argument("--retain-prompts", help="text models: file of prompts to distil on (default: the world's captions or a built-in list)")
    di.add_argument("--negative-prompt", help="text models: replaces the unconditional branch of guidance")
    di.set_defaults(func=cmd_distill)


def _add_model_parsers(sub) -> None:
    """`sfd import-base`, `sfd sample` and `sfd eval`."""
    ib = sub.add_parser("import-base", help="make a one-step UNet distilled elsewhere (SD-Turbo, DMD2, ...) a base for `sfd erase`")
    ib.add_argument("--unet", required=True, help="the one-step UNet: a diffusers UNet folder, or a pipeline folder with unet/")
    ib.add_argument("--teacher", required=True, help="the multi-step teacher it was distilled from (text encoder, VAE, schedule)")
    ib.add_argument("--convention", choices=["sd-turbo", "sdxl-turbo", "dmd2"], help="how the UNet is called (see README)")
    ib.add_argument("--timestep", type=_float_arg("--timestep"), help="or: the conditioning timestep the UNet is called at")
    ib.add_argument("--input-scale", type=_float_arg("--input-scale", positive=True), help="with --timestep: the UNet sees input_scale * z (default: SiD's noise level)")
    ib.add_argument("--prediction-type", choices=["epsilon", "v_prediction", "sample"], help="with --timestep (default: the teacher's)")
    ib.add_argument("--out", required=True)
    ib.add_argument("--overwrite", action="store_true")
    ib.add_argument("--allow-pickle", action="store_true", help="allow pickled weights: only for files you trust")
    ib.set_defaults(func=cmd_import_base)

    s = sub.add_parser("sample", help="write PNG samples of a teacher or an erased model")
    s.add_argument("--model", required=True)
    s.add_argument("--class", dest="class_", help="class-conditional models: class index or name")
    s.add_argument("--prompt", help="text-to-image models: the prompt")
    s.add_argument("--negative-prompt", help="text-to-image teachers: negative prompt")
    s.add_argument("--guidance", type=_float_arg("--guidance"), help="text-to-image teachers: classifier-free guidance scale")
    s.add_argument("--allow-pickle", action="store_true", help="allow pickled weights: only for files you trust")
    s.add_argument("--n", type=_pos_int("--n"), default=16)
    s.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--steps", type=_pos_int("--steps"), help="sampler steps of a multi-step teacher")
    s.add_argument("--batch-size", type=_pos_int("--batch-size"), default=64)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sample)

    v = sub.add_parser("eval", help="per-class judge accuracy and Frechet distance of a class-conditional model")
    v.add_argument("--model", required=True)
    v.add_argument("--judge", help="judge folder (default: the world's bundled judge)")
    v.add_argument("--n-per-class", type=_pos_int("--n-per-class"), default=100)
    v.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    v.add_argument("--steps", type=_pos_int("--steps"), help="sampler steps of a multi-step teacher")
    v.add_argument("--json", help="also write the metrics to this JSON file")
    v.add_argument("--device", default="auto")
    v.add_argument("--quiet", action="store_true")
    v.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    """Every `sfd` command; the commands of the other cli_* modules register themselves with their add_parsers."""
    from sfd.commands.cli_audit import add_parsers as add_audit_parsers
    from sfd.commands.cli_demo import add_parsers as add_demo_parsers
    from sfd.commands.cli_export import add_parsers as add_export_parsers
    from sfd.commands.cli_worlds import add_parsers as add_world_parsers

    p = _Parser(prog="sfd", description="Erase concepts from diffusion models with Score Forgetting Distillation.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_training_parsers, _add_model_parsers, add_world_parsers, add_audit_parsers, add_demo_parsers,
                add_export_parsers):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
