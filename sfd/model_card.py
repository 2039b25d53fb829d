"""Model cards (README.md) for erased models: what was erased, from what, how, and with what result."""

from __future__ import annotations

import json


def _table(rows: dict) -> str:
    lines = ["| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {json.dumps(v) if not isinstance(v, str) else v} |" for k, v in rows.items()]
    return "\n".join(lines)


_USAGE = {
    "class": [
        "```python",
        "from pipelines import OneStepClassPipeline",
        "pipe = OneStepClassPipeline.from_pretrained(PATH)",
        "images = pipe([0, 1, 2], output_type='pil').images",
        "```",
        "or `sfd sample --model PATH --class 2 --n 16 --out samples/`.",
    ],
    "text": [
        "```python",
        "from pipelines import OneStepTextPipeline",
        "pipe = OneStepTextPipeline.from_pretrained(PATH)",
        "images = pipe(['a photo of a dog'], output_type='pil').images",
        "```",
        "or `sfd sample --model PATH --prompt 'a photo of a dog' --n 4 --out samples/`.",
    ],
}


def model_card(kind: str, base_model: str, concepts: dict, config: dict, wall_seconds: float, metrics: dict | None, versions: dict,
               metric_notes: str = "") -> str:
    """README.md for an erased model; `kind` is 'class' or 'text'."""
    forget = ", ".join(concepts["forget"])
    what = "class(es)" if kind == "class" else "concept(s)"
    shown = {k: v for k, v in concepts.items() if k not in ("forget_ids", "override_prompts")}
    parts = [
        "---",
        "library_name: diffusers",
        "tags: [sfd, concept-erasure, machine-unlearning, one-step]",
        "---",
        f"# One-step generator with {what} {forget} erased (SFD)",
        "",
        "Distilled by Score Forgetting Distillation (Chen, Zhang & Zhou, ICLR 2025) from "
        f"`{base_model}`: one network evaluation per image; what asks for a forgotten {kind if kind == 'class' else 'concept'} "
        f"is generated as override `{concepts['override']}` instead"
        + (f" (the retained class nearest to it: {concepts['override_chosen']})." if "override_chosen" in concepts else "."),
        "",
        "## Use",
        *_USAGE[kind],
        "",
        "## Erasure",
        _table({"base model": base_model, **shown}),
        "",
        "## Hyperparameters",
        _table(config),
        "",
        f"Wall time of the erase run: {wall_seconds:.1f} s. Software: {', '.join(f'{k} {v}' for k, v in versions.items())}.",
    ]
    if metrics:
        nested = {k: v for k, v in metrics.items() if isinstance(v, dict)}
        parts += ["", "## Final metrics", metric_notes, "", _table({k: v for k, v in metrics.items() if k not in nested})]
        for name, table in nested.items():
            parts += ["", f"### {name}", _table({k: round(v, 4) if isinstance(v, float) else v for k, v in table.items()})]
    return "\n".join(parts) + "\n"
