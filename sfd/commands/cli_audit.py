"""`sfd audit` and `sfd attack`: batch audits of erased models and the adversarial prompt probe.

`add_parsers(subparsers)` adds both subcommands to the main CLI (sfd/commands/cli.py's build_parser).
Heavy modules are imported inside the commands so that `sfd --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sfd.commands.cli_args import float_arg as _float_arg, nonneg_int as _nonneg_int, pos_int as _pos_int
from sfd.kernel.errors import SFDError

DETECTOR_HELP = ("detector spec (repeatable): clip:CONCEPT[@MODEL][;vs=A,B][;threshold=P], e.g. clip:red or "
                 "'clip:Van Gogh style@ViT-B-32:laion2b_s34b_b79k'; nudenet[:THRESHOLD][;classes=exposed|sexual|A,B] "
                 "(default 0.45, EXPOSED classes) or a paper's preset nudenet:esd, nudenet:unlearndiffatk; classifier:PATH=CLASS[,CLASS]")


def cmd_audit(a) -> int:
    import torch

    from sfd.evaluators.audit import AuditSettings, run_audit

    from sfd.kernel.distributed import resolve_device as _device

    device = _device(a.device)
    if device == "cpu" and a.threads:
        torch.set_num_threads(a.threads)
    settings = AuditSettings(
        models=tuple(a.model), prompts=a.prompts, detectors=tuple(a.detector), n_per_prompt=a.n_per_prompt, seed=a.seed,
        steps=a.steps, guidance=a.guidance, categories=tuple(a.category or ()), limit=a.limit, batch_size=a.batch_size,
        features=a.features, reference_images=a.reference_images, attack=a.attack,
        attack_seeds=a.attack_seeds or AuditSettings.attack_seeds, attack_steps=a.attack_steps or AuditSettings.attack_steps,
        allow_pickle=a.allow_pickle,
    )
    log = (lambda msg: None) if a.quiet else (lambda msg: print(msg, flush=True))
    cfg = _robustness_settings(a) if a.robustness else None  # bad settings fail before the audit's work
    report = run_audit(settings, a.out, device=device, overwrite=a.overwrite, progress=not a.quiet, log=log)
    if report is not None:  # None on the other ranks of a sharded audit: rank 0 reports
        print(format_summary(report, a.out))
        if cfg is not None:
            _robustness(a, cfg, device, log)
    return 0


def _robustness_settings(a):
    from sfd.evaluators.robustness import DEFAULT_ATTACKS, RobustnessSettings, check_judge

    check_judge(a.judge or a.detector[0], a.robustness)
    attacks = tuple(x.strip() for x in (a.robustness_attacks or ",".join(DEFAULT_ATTACKS)).split(",") if x.strip())
    return RobustnessSettings(a.robustness, attacks=attacks, n_seeds=a.attack_seeds or RobustnessSettings.n_seeds,
                              max_prompts=a.max_prompts, seed=a.seed, steps=a.attack_steps or RobustnessSettings.steps).validate()


def _robustness(a, cfg, device: str, log) -> None:
    """`--robustness CONCEPT`: the attacks (--robustness-attacks, default the first four) on every model with positive
    controls, judged by --judge (default: the first --detector), written beside the audit as
    robustness_CONCEPT.{json,csv,html}."""
    from sfd.evaluators.prompt_sets import read_prompt_file
    from sfd.evaluators.robustness import markdown_table, robustness_audit

    features = "clip" if a.features == "auto" else a.features
    report = robustness_audit(a.model, cfg, a.judge or a.detector[0], a.out, negative_control=a.negative_control,
                              prompts=read_prompt_file(a.prompts), features=features, device=device, steps=a.steps,
                              allow_pickle=a.allow_pickle, log=log)
    print(markdown_table(cfg.concept, report))
    stem = f"robustness_{cfg.concept.replace(' ', '_')}"
    print(f"robustness table: {Path(a.out) / (stem + '.html')} (also .json, .csv); {report['n_ideal']} ideal pairs of "
          f"{report['n_pairs']}, judge {report['judge']}")


def format_summary(report: dict, out) -> str:
    """A few lines for the terminal: rate and 95% interval per model and detector, the ASR when probed."""
    lines = []
    for lab, per in report["summary"].items():
        for name, s in per.items():
            lines.append(f"{lab}  {name}: {s['flagged']}/{s['n']} flagged = {100 * s['rate']:.1f}% "
                         f"(95% CI {100 * s['ci_low']:.1f}-{100 * s['ci_high']:.1f}%)")
    for lab, per in (report.get("comparison") or {}).get("models", {}).items():
        for name, c in per.items():
            lines.append(f"{lab} vs {report['comparison']['reference']}  {name}: {100 * c['difference']:+.1f} pts "
                         f"(95% CI {100 * c['diff_ci_low']:+.1f} to {100 * c['diff_ci_high']:+.1f})")
    for lab, att in (report.get("attack") or {}).items():
        if "asr" in att:
            lines.append(f"{lab}  attack on {att['concept']!r}: plain {100 * att['plain']['rate']:.1f}% -> ASR {100 * att['asr']['rate']:.1f}% "
                         f"over {att['asr']['n']} prompt/seed pairs")
        else:
            lines.append(f"{lab}  attack: {att.get('note')}")
    lines.append(f"reports: {Path(out) / 'report.html'} (also report.json, report.csv, summary.csv)")
    return "\n".join(lines)


def cmd_attack(a) -> int:
    import time

    import torch

    from sfd.evaluators.attack import AttackSettings, attack_report, run_attack
    from sfd.evaluators.sampling import inspect_model, load_model, model_labels
    from sfd.evaluators.detectors import ClipDetector, DetectorFactory
    from sfd.evaluators.prompt_sets import load_prompt_set
    from sfd.evaluators.report import write_reports

    from sfd.kernel.distributed import resolve_device as _device
    from sfd.kernel.outputs import check_output_dir

    device = _device(a.device)
    if device == "cpu" and a.threads:
        torch.set_num_threads(a.threads)
    cfg = AttackSettings(concept=a.concept.strip(), detector=a.detector, n_seeds=a.n_seeds, seed=a.seed, max_prompts=a.max_prompts,
                         paraphrase=not a.no_paraphrase, synonyms_file=a.synonyms, gradient=not a.no_gradient,
                         soft_tokens=a.soft_tokens, attack_steps=a.attack_steps, project=not a.no_project,
                         batch_size=a.batch_size).validate()
    if a.synonyms:
        from sfd.evaluators.attack import read_synonyms

        read_synonyms(a.synonyms)  # fail before loading anything
    items = load_prompt_set(a.prompts).items if a.prompts else None
    kinds = [inspect_model(m) for m in a.model]
    if any(k in ("ClassConditionalPipeline", "OneStepClassPipeline") for k in kinds):
        raise SFDError("sfd attack probes text-to-image models; a class-conditional model was given")
    detector = DetectorFactory(device).build(a.detector or f"clip:{cfg.concept}")
    if not isinstance(detector, ClipDetector):
        raise SFDError(f"sfd attack needs a clip: detector (e.g. --detector clip:{cfg.concept}), got {detector.name}")
    out = check_output_dir(a.out, a.overwrite, [("--model", m) for m in a.model] + [("--prompts", a.prompts)])
    if out.is_dir() and any(out.iterdir()):  # --overwrite: replace only what an earlier `sfd attack` wrote
        if not (out / "report.json").is_file():
            raise SFDError(f"output folder {str(out)!r} is not an attack report folder (no report.json); choose another --out")
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models, results = [], {}
    for path, label in zip(a.model, model_labels(a.model)):
        model = load_model(path, label, device, a.steps, a.allow_pickle)
        if not a.quiet:
            print(f"probing {label} for {cfg.concept!r}", flush=True)
        results[label] = run_attack(model, detector, cfg, items, out, a.guidance, progress=not a.quiet)
        models.append(model)
    report = attack_report(models, detector, results, cfg, time.perf_counter() - t0)
    write_reports(report, out)
    print(format_summary({"summary": {}, "attack": results}, out))
    return 0


def add_parsers(sub) -> None:
    """Add `audit` and `attack` to an argparse subparsers object (sfd/commands/cli.py's build_parser)."""
    _add_audit_parser(sub)
    _add_attack_parser(sub)


def _add_audit_parser(sub) -> None:
    au = sub.add_parser("audit", help="generate from a prompt set with fixed seeds, run detectors, write JSON/CSV/HTML reports")
    au.add_argument("--model", required=True, action="append", help="model folder (repeatable: models are compared side by side)")
    au.add_argument("--prompts", required=True, help="prompt file: .txt (one per line), .csv (I2P columns) or .jsonl")
    au.add_argument("--detector", required=True, action="append", help=DETECTOR_HELP)
    au.add_argument("--n-per-prompt", type=_pos_int("--n-per-prompt"), default=1, help="images per prompt (default 1)")
    au.add_argument("--out", required=True, help="output folder; an unfinished audit there is resumed")
    au.add_argument("--seed", type=_nonneg_int("--seed"), default=0,
                    help="base seed for prompts without their own (image j of prompt i: seed*10^9 + i*10^4 + j)")
    au.add_argument("--steps", type=_pos_int("--steps"), help="sampler steps of multi-step teachers (default: the model's)")
    au.add_argument("--guidance", type=_float_arg("--guidance"),
                    help="guidance scale for every prompt (default: the prompt's own evaluation_guidance, else the model's)")
    au.add_argument("--category", action="append", help="keep prompts of this category (I2P 'categories'; repeatable)")
    au.add_argument("--limit", type=_pos_int("--limit"), help="audit only the first N prompts")
    au.add_argument("--batch-size", type=_pos_int("--batch-size"), default=16)
    au.add_argument("--features", default="auto", help="FID/KID features between models: auto (default), none, clip[@MODEL], classifier:PATH")
    au.add_argument("--reference-images", metavar="DIR",
                    help="a folder of real images (e.g. a COCO subset): FID/KID of every model against them, in --features")
    au.add_argument("--attack", metavar="CONCEPT", help="also run the adversarial prompt search for this concept on every model")
    au.add_argument("--attack-seeds", type=_pos_int("--attack-seeds"),
                    help="seeds per attacked prompt (default 2 for --attack, 5 for --robustness)")
    au.add_argument("--attack-steps", type=_pos_int("--attack-steps"),
                    help="gradient steps per attack (default 30 for --attack, 20 for --robustness)")
    au.add_argument("--robustness", metavar="CONCEPT",
                    help="also write the robustness table for CONCEPT: prompt-embedding (soft and hard), textual-inversion, "
                         "output-matching and noise attacks on every model, the first --model being the original; ASR over "
                         "ideal pairs, judged by --judge")
    au.add_argument("--judge", help="--robustness: the held-out judge of success (default: the first --detector); never the "
                                    "optimised scorer clip:CONCEPT")
    au.add_argument("--negative-control", action="store_true",
                    help="--robustness: add the first model with the concept as a negative prompt (a weak defence) as a control row")
    au.add_argument("--robustness-attacks", metavar="A,B", help="--robustness: some of prompt,inversion,match,noise,conditioning,"
                    "ring-a-bell (default the first four; conditioning optimises the text encoder's output itself, ring-a-bell "
                    "searches hard prompts without the concept word on the text encoders alone)")
    au.add_argument("--max-prompts", type=_pos_int("--max-prompts"), default=10, help="--robustness: base prompts naming the concept (default 10)")
    au.add_argument("--allow-pickle", action="store_true", help="allow pickled weights: only for files you trust")
    au.add_argument("--threads", type=_pos_int("--threads"), help="CPU threads for torch (default: torch's)")
    au.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    au.add_argument("--overwrite", action="store_true", help="start over: delete the audit in --out")
    au.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    au.set_defaults(func=cmd_audit)


def _add_attack_parser(sub) -> None:
    at = sub.add_parser("attack", help="search for prompts that bring an erased concept back (paraphrases, soft-prompt gradients)")
    at.add_argument("--model", required=True, action="append", help="model folder (repeatable)")
    at.add_argument("--concept", required=True, help="the erased concept, e.g. red or 'Van Gogh'")
    at.add_argument("--detector", help="clip: detector spec judging success (default clip:CONCEPT with the default CLIP)")
    at.add_argument("--prompts", help="base prompts (.txt/.csv/.jsonl); those naming the concept are attacked (default: built-in)")
    at.add_argument("--synonyms", help="file of extra synonyms for the concept, one per line")
    at.add_argument("--n-seeds", type=_pos_int("--n-seeds"), default=2, help="seeds per base prompt (default 2)")
    at.add_argument("--max-prompts", type=_pos_int("--max-prompts"), default=8, help="base prompts attacked (default 8)")
    at.add_argument("--soft-tokens", type=_pos_int("--soft-tokens"), default=4, help="adversarial tokens inserted (default 4)")
    at.add_argument("--attack-steps", type=_pos_int("--attack-steps"), default=30, help="gradient steps (default 30)")
    at.add_argument("--no-gradient", action="store_true", help="paraphrases only")
    at.add_argument("--no-paraphrase", action="store_true", help="gradient search only")
    at.add_argument("--no-project", action="store_true", help="optimise free embeddings (no nearest-token projection)")
    at.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    at.add_argument("--steps", type=_pos_int("--steps"), help="sampler steps of multi-step teachers")
    at.add_argument("--guidance", type=_float_arg("--guidance"), help="guidance scale of multi-step teachers")
    at.add_argument("--batch-size", type=_pos_int("--batch-size"), default=16)
    at.add_argument("--allow-pickle", action="store_true", help="allow pickled weights: only for files you trust")
    at.add_argument("--out", required=True)
    at.add_argument("--overwrite", action="store_true")
    at.add_argument("--threads", type=_pos_int("--threads"))
    at.add_argument("--device", default="auto")
    at.add_argument("--quiet", action="store_true")
    at.set_defaults(func=cmd_attack)


def main(argv: list[str] | None = None) -> int:
    """`python -m sfd.commands.cli_audit`: the `sfd` command line with audit and attack alone (`sfd` itself has every command)."""
    from sfd.commands.cli_args import main_with

    return main_with(add_parsers, argv)


if __name__ == "__main__":
    sys.exit(main())
