"""Wall time of `sfd audit` at the shapes world's scale: 200 images at 32x32 judged by the CLIP detector.

    python benchmarks/audit_bench.py                       # the bundled teacher (checkpoints/shapes/teacher)
    python benchmarks/audit_bench.py --erased runs/erased  # and an erased one-step model
    python benchmarks/audit_bench.py --erased stand-in     # a one-step generator built from the teacher's parts

Target: <= 5 minutes per model on a 2-core CPU. 20 prompts (every colour x shape, "a {colour} {shape}") x 10
images, detector clip:red. When the bundled teacher or CLIP is missing, random-weight stand-ins with the world's
default architectures are timed instead (the cost of an audit does not depend on the weights); the output says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def stand_in_teacher(path: Path) -> Path:
    """A random-weight shapes teacher with the default architecture, saved like the bundled one."""
    import torch

    from sfd.commands.worlds import shapes
    from sfd.core.worlds.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    cfg = shapes.TeacherTrainConfig()
    vae = shapes.build_vae(shapes.VaeTrainConfig())
    pipe = shapes.make_pipeline(vae, shapes.build_text_encoder(cfg), build_clip_tokenizer(), shapes.build_unet(cfg, vae.config.latent_channels))
    shapes.save_teacher(pipe, path, shapes.world_meta(stand_in=True))
    return path


def stand_in_clip(path: Path) -> Path:
    from sfd.evaluators.clip import ClipEvaluator
    from sfd.commands.worlds import shapes

    ClipEvaluator.from_config(shapes.clip_model_cfg(), shapes.CLIP_MEAN, shapes.CLIP_STD, seed=0).save_pretrained(path)
    return path


def stand_in_one_step(teacher: Path, path: Path) -> Path:
    """The teacher's parts as a OneStepTextPipeline (what `sfd erase` writes; its weights do not change the cost)."""
    import json

    from sfd.pipelines import OneStepTextPipeline
    from sfd.commands.worlds import shapes

    t = shapes.load_teacher(teacher)
    OneStepTextPipeline(vae=t.vae, text_encoder=t.text_encoder, tokenizer=t.tokenizer, unet=t.unet, scheduler=t.scheduler,
                        t_init=625).save_pretrained(path, safe_serialization=True)
    (path / "sfd_world.json").write_text(json.dumps(shapes.world_meta(stand_in=True)))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=str(ROOT / "checkpoints" / "shapes" / "teacher"))
    p.add_argument("--clip", default=str(ROOT / "checkpoints" / "shapes" / "clip"))
    p.add_argument("--erased", help="an erased one-step model folder, or 'stand-in'")
    p.add_argument("--n-per-prompt", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--attack", action="store_true", help="also time the adversarial probe for 'red'")
    p.add_argument("--out", help="keep the audit folders here (default: a temporary folder)")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from sfd.evaluators.audit import AuditSettings, run_audit
    from sfd.commands.worlds import shapes

    tmp = Path(tempfile.mkdtemp(prefix="audit_bench_"))
    out_root = Path(a.out) if a.out else tmp
    notes = []
    teacher, clip = Path(a.teacher), Path(a.clip)
    if not (teacher / "model_index.json").is_file():
        notes.append(f"no teacher at {teacher}: timing a random-weight stand-in with the default architecture")
        teacher = stand_in_teacher(tmp / "teacher")
    if not (clip / "open_clip_config.json").is_file():
        notes.append(f"no CLIP at {clip}: timing a random-weight stand-in with the default architecture")
        clip = stand_in_clip(tmp / "clip")
    models = [("teacher", teacher)]
    if a.erased == "stand-in":
        notes.append("erased model: the teacher's parts as a one-step generator (stand-in)")
        models.append(("erased", stand_in_one_step(teacher, tmp / "erased")))
    elif a.erased:
        models.append(("erased", Path(a.erased)))
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(p for _, _, p in shapes.all_prompts()) + "\n")
    n = len(shapes.all_prompts()) * a.n_per_prompt
    for note in notes:
        print("note:", note)
    print(f"{n} images per model ({len(shapes.all_prompts())} prompts x {a.n_per_prompt}), 32x32, detector clip:red, "
          f"{a.threads} thread(s), batch {a.batch_size}")
    ok = True
    for label, path in models:
        settings = AuditSettings(models=(str(path),), prompts=str(prompts), detectors=(f"clip:red@{clip}",), n_per_prompt=a.n_per_prompt,
                                 batch_size=a.batch_size, attack="red" if a.attack else None)
        t0 = time.perf_counter()
        rep = run_audit(settings, out_root / f"audit_{label}", overwrite=True, progress=False, log=lambda m: None)
        wall = time.perf_counter() - t0
        t = rep["settings"]["timings"][path.name]
        s = rep["summary"][path.name][f"clip:red@{clip}"]
        m = rep["settings"]["models"][0]
        sampler = "one step" if m["one_step"] else f"{m['steps']} steps, guidance {m['default_guidance']}"
        print(f"{label} ({m['pipeline']}, {sampler}): wall {wall:.1f} s = load {t['load_seconds']:.1f} + generate "
              f"{t['generate_seconds']:.1f} + detect {t['detect_seconds']:.1f} + reports/other "
              f"{wall - t['load_seconds'] - t['generate_seconds'] - t['detect_seconds'] - t.get('attack_seconds', 0):.1f}"
              + (f" + attack {t['attack_seconds']:.1f}" if "attack_seconds" in t else "")
              + f" s; {1000 * (t['generate_seconds'] + t['detect_seconds']) / n:.1f} ms/image; red flagged {100 * s['rate']:.1f}%"
              + (f"; attack ASR {100 * rep['attack'][path.name]['asr']['rate']:.1f}%" if a.attack else ""))
        ok &= wall <= 300
    print("target <= 300 s per model:", "met" if ok else "NOT met")
    if not a.out:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
