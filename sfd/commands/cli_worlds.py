"""`sfd train-teacher` and `sfd quickstart`: the commands that build the worlds and run the main job on the bundled
digits model (DESIGN.md section 4). Commands layer: they may use everything below them."""

from __future__ import annotations

import json
from pathlib import Path

from sfd.commands.cli_args import nonneg_int as _nonneg_int, pos_int as _pos_int
from sfd.kernel.errors import SFDError


def cmd_train_teacher(a) -> int:
    from sfd.kernel.outputs import check_output_dir, staged_dir

    if a.world not in ("digits", "shapes"):
        raise SFDError(f"unknown world {a.world!r}; available: digits, shapes")
    if a.world == "shapes":
        return _train_shapes_world(a)
    if a.family != "sd" or a.components_from:
        raise SFDError("--family and --components-from apply to the shapes world")
    from sfd.commands.worlds import digits

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
    from sfd.kernel.outputs import check_not_an_input, check_output_dir
    from sfd.commands.worlds import shapes

    out = Path(a.out)
    reuse = a.components_from
    if reuse is None and a.family != "sd":  # another teacher structure beside the bundled world: its CLIP and VAE
        from sfd.core.models import checkpoints_dir

        reuse = str(checkpoints_dir() / "shapes")
    check_not_an_input(a.out, {"--components-from": None if reuse == "none" else reuse})
    if not a.resume:
        check_output_dir(a.out, a.overwrite)
        if out.is_dir():  # --overwrite: start from scratch, reusing no stage of the old world
            import shutil

            shutil.rmtree(out)
    elif (out / "teacher").exists():
        raise SFDError(f"{out} already holds a finished world (teacher/); nothing to resume")
    tcfg = shapes.teacher_config(a.family, a.steps)
    if reuse not in (None, "none") and not (Path(reuse) / "clip").is_dir():
        raise SFDError(f"--components-from {reuse}: no shapes world there (expected clip/ and teacher/vae/)")
    stats = shapes.train_world(out, seed=a.seed, progress=not a.quiet, teacher_cfg=tcfg, family=a.family,
                               components_from=None if reuse in (None, "none") else reuse)
    ev = stats["evaluation"]
    print(f"shapes world -> {out}: teacher {tcfg.steps} steps; per-prompt colour rate min {ev['colour_min']:.0%}, "
          f"shape rate min {ev['shape_min']:.0%} (judged by the world's CLIP)")
    return 0


def cmd_quickstart(a) -> int:
    from sfd.evaluators.class_eval import format_class_table
    from sfd.evaluators.world_metrics import evaluate_digits_model, world_evaluator

    from sfd.core.config import preset
    from sfd.core.erase import default_base, run_sfd
    from sfd.core.families import family_for
    from sfd.core.models import checkpoints_dir

    from sfd.kernel.outputs import check_not_an_input

    teacher_dir = str(checkpoints_dir() / "digits" / "teacher")
    judge = checkpoints_dir() / "digits" / "judge"
    check_not_an_input(a.out, {"(the bundled digits world)": checkpoints_dir() / "digits"})
    family = family_for(teacher_dir)
    base = default_base(teacher_dir)
    config = preset("class", "erase" if base else "single").replace(seed=a.seed)
    start = f"the distilled one-step base {base} (stage 2; teacher {teacher_dir})" if base else f"{teacher_dir} (single stage)"
    print(f"1/3 erasing class {a.forget} from {start}, override random -> {a.out}", flush=True)
    summary = run_sfd(teacher_dir, a.out, config, forget=[a.forget], override="random", generator=str(base) if base else None,
                      overwrite=True, progress=not a.quiet, evaluate=world_evaluator(family, teacher_dir, seed=config.seed,
                                                                                       progress=not a.quiet), family=family)
    forget = tuple(summary["concepts"]["forget_ids"])
    print("2/3 evaluating the teacher (multi-step sampler) with the same seeds", flush=True)
    teacher = family.load(teacher_dir)
    before = evaluate_digits_model(teacher, forget, judge, 100, config.seed, progress=not a.quiet)
    print("3/3 before / after", flush=True)
    after = summary["metrics"]
    print(format_class_table({"teacher": before, "erased 1-step": after}, teacher.config.class_names, forget))
    per_img_t = before["sampling_seconds"] / 1000
    per_img_e = after["sampling_seconds"] / 1000
    print(f"erase took {summary['erase_seconds']:.0f} s; one-step sampling is {per_img_t / per_img_e:.0f}x faster "
          f"than the teacher's sampler ({per_img_e * 1e3:.2f} vs {per_img_t * 1e3:.2f} ms/image)")
    print(f"erased model written to {a.out} (model card: {a.out}/README.md); `sfd demo` shows it beside its teacher")
    return 0


def add_parsers(sub) -> None:
    t = sub.add_parser("train-teacher", help="train a world's teacher and judge from scratch")
    t.add_argument("world", help="digits or shapes")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=_pos_int("--steps"), help="teacher training steps (default: the world's)")
    t.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--resume", action="store_true", help="shapes: continue a stopped run in --out from its last finished stage")
    t.add_argument("--family", choices=["sd", "sdxl", "sd3"], default="sd",
                   help="shapes: the teacher's structure; sdxl trains an SDXL-structured teacher (two text encoders, pooled "
                        "embeddings, time ids), sd3 an SD3-structured rectified-flow transformer, on the CLIP and VAE of "
                        "--components-from")
    t.add_argument("--components-from", help="shapes: reuse the CLIP and VAE of this world (default for --family sdxl/sd3: "
                                             "checkpoints/shapes; 'none' trains them too)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train_teacher)

    q = sub.add_parser("quickstart", help="erase the default class from the bundled digits teacher; print before/after")
    q.add_argument("--forget", default="1", help="class to erase (default 1)")
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_quickstart)
