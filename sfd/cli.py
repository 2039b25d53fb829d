"""The `sfd` command line: erase, sample, eval, train-teacher, quickstart, audit, attack.

User errors print one line (`sfd <command>: error: ...`) and exit with status 2, without a traceback.
Heavy libraries are imported inside the commands so that `sfd --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import Interrupted, SFDError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _nonneg_int(name: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {v}")
        return v

    return parse


def _pos_int(name: str):
    def parse(text: str) -> int:
        v = _nonneg_int(name)(text)
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return parse


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SFDError(f"--device {name} asked for, but no CUDA device is available")
    return name


# ------------------------------------------------------------------------------------------ commands

def _is_class_model(path: str) -> bool:
    from .models import CLASS_PIPELINES, is_hub_id, model_kind

    if is_hub_id(path) or Path(path).is_file():  # hub ids and single files are text-to-image checkpoints
        return False
    return model_kind(path) in CLASS_PIPELINES


def cmd_erase(a) -> int:
    from .config import PRESETS, preset_for
    from .erase import erase_classes, erase_text

    from .distributed import init_from_env

    device = init_from_env(_device(a.device))
    if _is_class_model(a.model):
        if a.retain_prompts or a.negative_prompt:
            raise SFDError("--retain-prompts and --negative-prompt apply to text-to-image models, not class-conditional ones")
        config = PRESETS[a.preset or "class"].replace(steps=a.steps, seed=a.seed)
        summary = erase_classes(a.model, a.forget, a.override, a.out, config, overwrite=a.overwrite, device=device,
                                progress=not a.quiet, resume=a.resume, checkpoint_every=a.checkpoint_every)
    else:
        if a.override == "random":
            raise SFDError("text-to-image erasure needs an --override text (e.g. --override 'a person wearing clothes')")
        config = PRESETS[a.preset or preset_for(a.model)].replace(steps=a.steps, seed=a.seed)
        summary = erase_text(a.model, a.forget, a.override, a.out, config, retain_prompts=a.retain_prompts,
                             negative_prompt=a.negative_prompt or "", overwrite=a.overwrite, device=device, progress=not a.quiet,
                             allow_pickle=a.allow_pickle, frozen_dtype=a.dtype, resume=a.resume,
                             checkpoint_every=a.checkpoint_every)
    if summary:  # empty on the non-main processes of a multi-process run
        print(summary_line(summary, a.out))
    return 0


def summary_line(summary: dict, out: str) -> str:
    m = summary["metrics"]
    line = f"erased {', '.join(summary['concepts']['forget'])} -> {out} in {summary['erase_seconds']:.0f} s"
    if m and "forget_accuracy" in m:
        line += (f"; forget acc {m['forget_accuracy']:.1%}, retained mean {m['retained_mean_accuracy']:.1%} "
                 f"(min {m['retained_min_accuracy']:.1%}), FD {m['fd_retained']:.3f}")
    elif m:
        line += "; " + ", ".join(f"{k} {v:.3g}" for k, v in m.items() if isinstance(v, float))
    return line


def _sampler_kwargs(pipe, steps: int | None) -> dict:
    """--steps applies to multi-step teachers; one-step generators ignore it."""
    from pipelines import OneStepClassPipeline

    return {} if steps is None or isinstance(pipe, OneStepClassPipeline) else {"num_inference_steps": steps}


def cmd_sample(a) -> int:
    from .outputs import check_output_dir

    class_model = _is_class_model(a.model)
    if class_model and a.class_ is None:
        raise SFDError("give --class K for a class-conditional model")
    if not class_model and a.prompt is None:
        raise SFDError("give --prompt TEXT for a text-to-image model")
    if a.prompt is not None and not a.prompt.strip():
        raise SFDError("--prompt is empty")
    out = check_output_dir(a.out, a.overwrite)
    device = _device(a.device)
    if class_model:
        from .concepts import resolve_class
        from .models import load_class_pipeline

        pipe = load_class_pipeline(a.model, device)
        k = resolve_class(a.class_, pipe.config.class_names)
        label = pipe.config.class_names[k]
        kwargs = _sampler_kwargs(pipe, a.steps)

        def generate(gens):
            return [img.convert("L") for img in pipe([k] * len(gens), generator=gens, output_type="pil", show_progress=False, **kwargs).images]
    else:
        from .models import load_text_pipeline

        pipe = load_text_pipeline(a.model, device, allow_pickle=a.allow_pickle)
        label = "image"
        kwargs = {}
        if a.steps is not None:
            kwargs["num_inference_steps"] = a.steps
        if a.guidance is not None:
            kwargs["guidance_scale"] = a.guidance
        if a.negative_prompt:
            kwargs["negative_prompt"] = [a.negative_prompt]
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor

        def generate(gens):
            extra = {**kwargs, "negative_prompt": kwargs["negative_prompt"] * len(gens)} if "negative_prompt" in kwargs else kwargs
            return pipe([a.prompt] * len(gens), generator=gens, height=size, width=size, output_type="pil", **extra).images
    import torch
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=a.n, desc="sampling", unit="img", disable=a.quiet)
    for start in range(0, a.n, a.batch_size):
        idx = list(range(start, min(a.n, start + a.batch_size)))
        gens = [torch.Generator(device=pipe.device).manual_seed(a.seed + i) for i in idx]
        for i, img in zip(idx, generate(gens)):
            img.save(out / f"{label}_{i:05d}_seed{a.seed + i}.png")
        bar.update(len(idx))
    bar.close()
    print(f"wrote {a.n} images to {out} (image i uses seed {a.seed}+i)")
    return 0


def cmd_eval(a) -> int:
    from .erase import default_judge, evaluate_digits_model
    from .models import load_class_pipeline, world_meta

    if a.json and (Path(a.json).is_dir() or not Path(a.json).resolve().parent.is_dir()):  # fail before sampling
        raise SFDError(f"--json {a.json!r}: expected a file path in an existing folder")
    pipe = load_class_pipeline(a.model, _device(a.device))
    meta = world_meta(a.model)
    judge = Path(a.judge) if a.judge else default_judge(meta)
    if judge is None or not judge.is_dir():
        raise SFDError("no judge found for this model; pass --judge PATH (a judge folder such as checkpoints/digits/judge)")
    sfd_cfg = Path(a.model) / "sfd_config.json"
    forget = tuple(json.loads(sfd_cfg.read_text())["concepts"]["forget_ids"]) if sfd_cfg.is_file() else ()
    kwargs = _sampler_kwargs(pipe, a.steps)
    m = evaluate_digits_model(pipe, forget, judge, a.n_per_class, a.seed, progress=not a.quiet, **kwargs)
    print(format_class_table({"model": m}, pipe.config.class_names, forget))
    if a.json:
        Path(a.json).write_text(json.dumps(m, indent=2))
    return 0


def format_class_table(results: dict[str, dict], class_names, forget=()) -> str:
    """Per-class accuracy of one or more models as a text table; forgotten classes are marked with '*'."""
    cols = list(results)
    w = max(12, *(len(c) + 2 for c in cols))
    lines = ["class".ljust(14) + "".join(c.rjust(w) for c in cols)]
    for k, name in enumerate(class_names):
        mark = "*" if k in forget else " "
        lines.append(f"{mark}{name}".ljust(14) + "".join(f"{results[c]['per_class_accuracy'][name]:>{w}.1%}" for c in cols))
    rows = [("retained mean", "retained_mean_accuracy", "{:.1%}"), ("retained min", "retained_min_accuracy", "{:.1%}"),
            ("FD retained", "fd_retained", "{:.3f}"), ("sampling s", "sampling_seconds", "{:.1f}")]
    if forget:
        rows.insert(0, ("forget acc", "forget_accuracy", "{:.1%}"))
    for label, key, fmt in rows:
        lines.append(label.ljust(14) + "".join(fmt.format(results[c].get(key, float("nan"))).rjust(w) for c in cols))
    if forget:
        lines.append("* = erased class; accuracy = share of samples for a class that the judge assigns to it")
    return "\n".join(lines)


def cmd_train_teacher(a) -> int:
    from .outputs import check_output_dir, staged_dir

    if a.world not in ("digits", "shapes"):
        raise SFDError(f"unknown world {a.world!r}; available: digits, shapes")
    if a.world == "shapes":
        return _train_shapes_world(a)
    from .worlds import digits

    out = check_output_dir(a.out, a.overwrite)
    judge, jstats = digits.train_judge(digits.JudgeTrainConfig(seed=a.seed), progress=not a.quiet)
    tcfg = digits.TeacherTrainConfig(seed=a.seed) if a.steps is None else digits.TeacherTrainConfig(seed=a.seed, steps=a.steps)
    unet, tstats = digits.train_teacher(tcfg, progress=not a.quiet)
    with staged_dir(out) as tmp:
        judge.save_pretrained(tmp / "judge")
        (tmp / "judge" / "training.json").write_text(json.dumps(jstats, indent=2))
        digits.save_teacher(unet, tmp / "teacher", tstats)
    print(f"digits world -> {out}: judge held-out accuracy {jstats['heldout_accuracy']:.1%}; "
          f"teacher {tstats['steps']} steps in {tstats['train_seconds']:.0f} s")
    return 0


def _train_shapes_world(a) -> int:
    """Shapes world: tiny CLIP, VAE, then UNet + text encoder; a stopped run continues with --resume."""
    from dataclasses import replace

    from .outputs import check_output_dir
    from .worlds import shapes

    out = Path(a.out)
    if not a.resume:
        check_output_dir(a.out, a.overwrite)
        if out.is_dir():  # --overwrite: start from scratch, reusing no stage of the old world
            import shutil

            shutil.rmtree(out)
    elif (out / "teacher").exists():
        raise SFDError(f"{out} already holds a finished world (teacher/); nothing to resume")
    tcfg = shapes.TeacherTrainConfig() if a.steps is None else replace(shapes.TeacherTrainConfig(), steps=a.steps)
    stats = shapes.train_world(out, seed=a.seed, progress=not a.quiet, teacher_cfg=tcfg)
    ev = stats["evaluation"]
    print(f"shapes world -> {out}: teacher {tcfg.steps} steps; per-prompt colour rate min {ev['colour_min']:.0%}, "
          f"shape rate min {ev['shape_min']:.0%} (judged by the world's CLIP)")
    return 0


def cmd_quickstart(a) -> int:
    from .config import PRESETS
    from .erase import erase_classes, evaluate_digits_model
    from .models import checkpoints_dir, load_class_pipeline

    teacher_dir = checkpoints_dir() / "digits" / "teacher"
    judge = checkpoints_dir() / "digits" / "judge"
    config = PRESETS["class"].replace(seed=a.seed)
    print(f"1/3 erasing class {a.forget} from {teacher_dir} (override random) -> {a.out}", flush=True)
    summary = erase_classes(str(teacher_dir), [a.forget], "random", a.out, config, overwrite=True, progress=not a.quiet)
    forget = tuple(summary["concepts"]["forget_ids"])
    print("2/3 evaluating the teacher (multi-step sampler) with the same seeds", flush=True)
    teacher = load_class_pipeline(teacher_dir)
    before = evaluate_digits_model(teacher, forget, judge, 100, config.seed, progress=not a.quiet)
    print("3/3 before / after", flush=True)
    after = summary["metrics"]
    print(format_class_table({"teacher": before, "erased 1-step": after}, teacher.config.class_names, forget))
    per_img_t = before["sampling_seconds"] / 1000
    per_img_e = after["sampling_seconds"] / 1000
    print(f"erase took {summary['erase_seconds']:.0f} s; one-step sampling is {per_img_t / per_img_e:.0f}x faster "
          f"than the teacher's sampler ({per_img_e * 1e3:.2f} vs {per_img_t * 1e3:.2f} ms/image)")
    print(f"erased model written to {a.out} (model card: {a.out}/README.md)")
    return 0


# ------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sfd", description="Erase concepts from diffusion models with Score Forgetting Distillation.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("erase", help="erase class(es) or concept(s) from a model; writes a one-step model folder")
    e.add_argument("--model", required=True, help="teacher: a diffusers pipeline folder")
    e.add_argument("--forget", required=True, action="append", help="class (index or name) or concept text to forget (repeatable)")
    e.add_argument("--override", default="random",
                   help="what replaces it: a class, or 'random' (class models, the default): each forget class goes to the "
                        "retained class the teacher finds nearest to it, chosen once per run; a text for text-to-image models")
    e.add_argument("--out", required=True, help="output folder for the one-step model")
    e.add_argument("--steps", type=_nonneg_int("--steps"), help="SFD iterations (default: the preset's)")
    e.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.add_argument("--checkpoint-every", type=_nonneg_int("--checkpoint-every"), default=0,
                   help="save a resumable training state in --out every N steps (0: only on Ctrl-C)")
    e.add_argument("--resume", action="store_true", help="continue the run whose training state is in --out")
    e.add_argument("--retain-prompts", help="text models: file of retain prompts (.txt/.csv/.jsonl; default: built-in list)")
    e.add_argument("--negative-prompt", help="text models: replaces the unconditional branch of guidance")
    e.add_argument("--preset", choices=["class", "shapes", "sd"], help="hyperparameter preset (default: chosen from the model)")
    e.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="dtype of the frozen teacher")
    e.add_argument("--allow-pickle", action="store_true", help="allow pickled weights (.bin/.ckpt): only for files you trust")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_erase)

    s = sub.add_parser("sample", help="write PNG samples of a teacher or an erased model")
    s.add_argument("--model", required=True)
    s.add_argument("--class", dest="class_", help="class-conditional models: class index or name")
    s.add_argument("--prompt", help="text-to-image models: the prompt")
    s.add_argument("--negative-prompt", help="text-to-image teachers: negative prompt")
    s.add_argument("--guidance", type=float, help="text-to-image teachers: classifier-free guidance scale")
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

    t = sub.add_parser("train-teacher", help="train a world's teacher and judge from scratch")
    t.add_argument("world", help="digits or shapes")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=_pos_int("--steps"), help="teacher training steps (default: the world's)")
    t.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--resume", action="store_true", help="shapes: continue a stopped run in --out from its last finished stage")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train_teacher)

    q = sub.add_parser("quickstart", help="erase the default class from the bundled digits teacher; print before/after")
    q.add_argument("--forget", default="1", help="class to erase (default 1)")
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_quickstart)

    from .cli_audit import add_parsers as add_audit_parsers

    add_audit_parsers(sub)
    from .cli_demo import add_parsers as add_demo_parsers

    add_demo_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Interrupted as e:
        print(f"sfd {args.command}: {e}; the training state is saved, continue with --resume", file=sys.stderr)
        return 130
    except SFDError as e:
        print(f"sfd {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"sfd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
