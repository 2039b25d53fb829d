"""Model cards (README.md) for the folders `sfd erase` and `sfd distill` write: what, from what, how, with what result."""

from __future__ import annotations

import json


def _table(rows: dict) -> str:
    lines = ["| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {json.dumps(v) if not isinstance(v, str) else v} |" for k, v in rows.items()]
    return "\n".join(lines)


def _what(summary: dict, kind: str) -> tuple[str, str]:
    """(title, first paragraph) of the card."""
    base, concepts = summary["base_model"], summary["concepts"]
    if summary["stage"] == "distill":
        return (f"One-step generator distilled from {base} (SFD stage 1)",
                f"Distilled by Score identity Distillation from `{base}` with no concept erased: one network evaluation per "
                "image. It is a base for `sfd erase --generator PATH`, which erases concepts from it in minutes; the fake "
                "score of the distillation is in `fake_score/`.")
    what = "class(es)" if kind == "class" else "concept(s)"
    title = f"One-step generator with {what} {', '.join(concepts['forget'])} erased (SFD)"
    start = f" from the one-step base `{summary['generator_base']}`" if summary.get("generator_base") else ""
    text = ("Distilled by Score Forgetting Distillation (Chen, Zhang & Zhou, ICLR 2025) from "
            f"`{base}`{start}: one network evaluation per image; what asks for a forgotten "
            f"{kind if kind == 'class' else 'concept'} is generated as override `{concepts['override']}` instead"
            + (f" (the retained class nearest to it: {concepts['override_chosen']})." if "override_chosen" in concepts else "."))
    return title, text


def model_card(family, summary: dict, wall_seconds: float, metric_notes: str = "") -> str:
    """README.md for a one-step model folder; `family` is its `sfd.families.ModelFamily`."""
    kind = family.condition_kind
    title, text = _what(summary, kind)
    shown = {k: v for k, v in summary["concepts"].items() if k not in ("forget_ids", "override_prompts")}
    setup = {"base model": summary["base_model"], "family": family.description, "stage": summary["stage"]}
    if summary.get("generator_base"):
        setup["one-step base"] = summary["generator_base"]
    roles = summary.get("roles", {})
    setup.update({"roles": roles.get("mode", "full"), "generator started from": roles.get("generator_from"),
                  "fake score started from": roles.get("fake_score_from")})
    if roles.get("mode") == "lora":
        setup["LoRA rank / targets"] = f"{roles['rank']} / {', '.join(roles['targets'])}"
    setup["one-step convention"] = summary["one_step_convention"]
    parts = [
        "---",
        "library_name: diffusers",
        "tags: [sfd, concept-erasure, machine-unlearning, one-step]",
        "---",
        f"# {title}",
        "",
        text,
        "",
        "## Use",
        *family.usage(lora=summary.get("roles", {}).get("mode") == "lora",
                      sigma_init=family.stock_recipe_sigma(summary["one_step_convention"], summary.get("sigma_init"))),
        "",
        "## Erasure" if summary["stage"] != "distill" else "## Distillation",
        _table({**setup, **shown}),
        "",
        "## Hyperparameters",
        _table(summary["config"]),
        "",
        f"Wall time of the run: {wall_seconds:.1f} s. Software: {', '.join(f'{k} {v}' for k, v in summary['versions'].items())}.",
    ]
    metrics = summary.get("metrics")
    if metrics:
        nested = {k: v for k, v in metrics.items() if isinstance(v, dict)}
        parts += ["", "## Final metrics", metric_notes, "", _table({k: v for k, v in metrics.items() if k not in nested})]
        for name, table in nested.items():
            parts += ["", f"### {name}", _table({k: round(v, 4) if isinstance(v, float) else v for k, v in table.items()})]
    return "\n".join(parts) + "\n"
