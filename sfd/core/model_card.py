"""Model cards (README.md) for the folders `sfd erase` and `sfd distill` write: what, from what, how, with what result."""

from __future__ import annotations

import json
import shlex


def _table(rows: dict) -> str:
    lines = ["| setting | value |", "| --- | --- |"]
    cell = lambda v: (json.dumps(v) if not isinstance(v, str) else v).replace("|", "\\|")  # noqa: E731  (a norm's bars stay in the cell)
    lines += [f"| {k} | {cell(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


def _what(summary: dict, noun: str) -> tuple[str, str]:
    """(title, first paragraph) of the card; folders by name (a card carries no absolute path of the machine)."""
    from sfd.core.export.hub import display_name

    base, concepts = display_name(summary["base_model"]), summary["concepts"]
    if summary["stage"] == "distill":
        return (f"One-step generator distilled from {base} (SFD stage 1)",
                f"Distilled by Score identity Distillation from `{base}` with no concept erased: one network evaluation per "
                "image. It is a base for `sfd erase --generator PATH`, which erases concepts from it in minutes; the fake "
                "score of the distillation is in `fake_score/`.")
    title = f"One-step generator with {noun}(s) {', '.join(concepts['forget'])} erased (SFD)"
    start = f" from the one-step base `{display_name(summary['generator_base'])}`" if summary.get("generator_base") else ""
    text = ("Distilled by Score Forgetting Distillation (Chen, Zhang & Zhou, ICLR 2025) from "
            f"`{base}`{start}: one network evaluation per image; what asks for a forgotten "
            f"{noun} is generated as override `{concepts['override']}` instead"
            + (f" (the retained class nearest to it: {concepts['override_chosen']})." if "override_chosen" in concepts else "."))
    return title, text


def _block(assignments: dict[str, str], lines: list[str]) -> list[str]:
    return ["```python", *(f"{k} = {v!r}" for k, v in assignments.items()), *lines, "```"]


def _shown(path: str, out: str) -> str:
    """A local folder as seen from the output folder (a card must not carry the machine's absolute paths); a hub id as
    it is."""
    import os
    from pathlib import Path

    p = Path(path).expanduser()
    return os.path.relpath(p.resolve(), Path(out).expanduser().resolve()) if p.exists() else str(path)


def use_section(family, pipe, summary: dict, out: str, example: str, n: int = 4, seed: int = 0) -> list[str]:
    """The card's "Use" lines, made from what the run did: each code block runs with diffusers, torch and PIL alone,
    from this folder (other folders are named relative to it), and writes the images `sfd sample` writes for `example`
    (a test runs every block of the cards the tests make).

    A LoRA run's adapter (`lora/`) applies to the network the generator adapter was trained on: the teacher (one
    network: stage 1, single stage, or stage 2 from a LoRA base of the same rank and targets), or the one-step base
    (stage 2 from a full base: the adapter sat on a frozen copy of the base's network)."""
    flag = family.condition_flag
    command = f"sfd sample --model . {flag} {shlex.quote(example)} --n {n} --seed {seed} --out samples/"
    lines = ["## Use", "", f"Run these from this folder (`PATH`; or set `PATH` to where the folder is). Each block needs only "
             f"diffusers, torch and PIL and writes `sample_i.png` (seed {seed} + i), the images `{command}` writes.", ""]
    merged = family.stock_recipe(pipe, "PATH", example, n, seed)
    if merged is None:
        lines += [f"This generator's one-step convention has no stock diffusers sampler: use `{command}`.", ""]
    else:
        lines += ["The one-step generator (merged weights) in the stock pipeline, one step from its noise level:", "",
                  *_block({"PATH": "."}, [""] + merged), ""]
    roles = summary.get("roles", {})
    if roles.get("mode") == "lora":
        on_base = roles.get("adapter_applies_to") == "base"
        name = "BASE" if on_base else "TEACHER"
        target = _shown(summary["generator_base"] if on_base else summary["base_model"], out)
        adapter = family.stock_recipe(pipe, name, example, n, seed, lora='PATH + "/lora"') if family.lora_loader else None
        if adapter is not None:
            what = "the one-step base this erase started from" if on_base else "the teacher"
            lines += [f"Or the generator's LoRA adapter alone (`lora/`, diffusers' key format) on {what}, `{target}`:", "",
                      *_block({"PATH": ".", name: target}, [""] + adapter), ""]
        else:
            lines += ["Both LoRA adapters (peft keys, `generator/` and `fake_score/` prefixes) are in `sfd_adapters.safetensors`; "
                      "load the merged weights above to sample.", ""]
    lines += [f"With this toolkit: `{family.one_step_pipeline}.from_pretrained(PATH)` from its `pipelines` package, or `{command}`."]
    return lines


def _upload(summary: dict, text_model: bool) -> list[str]:
    """How to publish the folder under the id given with --hub-id (or a placeholder): `huggingface-cli upload`; for
    text-to-image models, `sfd export` writes the files that AUTOMATIC1111 and ComfyUI load."""
    hub = summary.get("hub_id") or "YOUR-NAME/MODEL-NAME"
    ui = (". For AUTOMATIC1111 and ComfyUI: `sfd export . --format single-file --out DIR` (or `kohya-lora` for a LoRA run)"
          if text_model else "")
    return ["## Publish", "", "From this folder, after `huggingface-cli login`: `huggingface-cli upload " + hub + " . .`"
            + ("" if summary.get("hub_id") else " (`sfd erase --hub-id NAME` records the id here)") + ui + ".", ""]


def model_card(family, summary: dict, wall_seconds: float, metric_notes: str = "", use: list[str] | None = None) -> str:
    """README.md for a one-step model folder; `family` is its `sfd.core.families.ModelFamily`, `use` its `use_section`."""
    title, text = _what(summary, family.forgotten_noun)
    shown = {k: v for k, v in summary["concepts"].items() if k not in ("forget_ids", "override_prompts")}
    from sfd.core.export.hub import display_name, front_matter, hub_metadata

    setup = {"base model": display_name(summary["base_model"]), "family": family.description, "stage": summary["stage"]}
    if summary.get("generator_base"):
        setup["one-step base"] = display_name(summary["generator_base"])
    roles = summary.get("roles", {})
    setup.update({"roles": roles.get("mode", "full"), "generator started from": roles.get("generator_from"),
                  "fake score started from": roles.get("fake_score_from")})
    if roles.get("mode") == "lora":
        setup["LoRA rank / targets"] = f"{roles['rank']} / {', '.join(roles['targets'])}"
    setup["one-step convention"] = summary["one_step_convention"]
    parts = [
        *front_matter(hub_metadata(summary["base_model"], family, tags=["lora"] if roles.get("mode") == "lora" else [])),
        f"# {title}",
        "",
        text,
        "",
        *(use or []),
        "",
        *_upload(summary, family.image_ui_export),
        "## Erasure" if summary["stage"] != "distill" else "## Distillation",
        _table({**setup, **shown}),
        "",
        "## Hyperparameters",
        _table(summary["config"]),
        "",
        f"Wall time of the run: {wall_seconds:.1f} s. Software: {', '.join(f'{k} {v}' for k, v in summary['versions'].items())}.",
    ]
    if summary.get("robust"):
        parts += ["", *_robust_section(summary["robust"])]
    metrics = summary.get("metrics")
    if metrics:
        nested = {k: v for k, v in metrics.items() if isinstance(v, dict)}
        parts += ["", "## Final metrics", metric_notes, "", _table({k: v for k, v in metrics.items() if k not in nested})]
        for name, table in nested.items():
            parts += ["", f"### {name}", _table({k: round(v, 4) if isinstance(v, float) else v for k, v in table.items()})]
    return "\n".join(parts) + "\n"


ROBUSTNESS_HEADING = "## Measured robustness"


def rate_cell(rate: dict) -> str:
    """A rate with its 95% interval, "12% [7, 19]": the cells of the robustness tables and of a card's measured robustness."""
    return f"{100 * rate['rate']:.0f}% [{100 * rate['ci_low']:.0f}, {100 * rate['ci_high']:.0f}]"


def _robust_section(robust: dict) -> list[str]:
    return ["## Robust erasure", "", "Trained against adversarial conditions found during the erase (robust SFD, `--robust`): the "
            "inner attack and its budget.", "", _table(robust), "",
            f"{ROBUSTNESS_HEADING}", "", "Not measured yet. `sfd audit --model ORIGINAL --model . --robustness CONCEPT --detector "
            "JUDGE` attacks this model and records the attack success rates here.", ""]


def record_robustness(folder, concept: str, entry: dict, settings: dict, judge: str, n_ideal: int) -> bool:
    """Write a robustness table row of this model (`entry`: its plain rate, each attack's total ASR, the inputs-only
    and overall totals, over `n_ideal` pairs) into its card (README.md, section "Measured robustness", one table per
    concept, replaced on a rerun) and its sfd_config.json (`measured_robustness`). False where the folder is not an
    `sfd erase` run (no sfd_config.json)."""
    from pathlib import Path

    folder = Path(folder)
    config_file, card_file = folder / "sfd_config.json", folder / "README.md"
    if not config_file.is_file():
        return False
    pct = lambda r: "-" if not r or r.get("rate") is None else rate_cell(r)  # noqa: E731
    budget = {k: settings.get(k) for k in ("steps", "lr", "soft_tokens", "inversion_steps", "ring_a_bell_generations")}
    rows = {"plain": pct(entry["plain"]), **{f"ASR {n}": pct(a["total"]) for n, a in entry["attacks"].items()}}
    if entry.get("inputs"):
        rows["ASR through the inputs (every attack but the conditioning's)"] = pct(entry["inputs"])
    rows["ASR any attack"] = pct(entry["all"])
    rows.update({"pairs": n_ideal, "judge (held out)": judge, "attack budget": json.dumps(budget)})
    summary = json.loads(config_file.read_text())
    summary.setdefault("measured_robustness", {})[concept] = {"asr": entry, "n_ideal": n_ideal, "judge": judge, "budget": budget}
    config_file.write_text(json.dumps(summary, indent=2, default=str))
    block = [f"### {concept}", "", _table(rows), ""]
    text = card_file.read_text() if card_file.is_file() else ""
    if ROBUSTNESS_HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{ROBUSTNESS_HEADING}\n\n"
    head, _, tail = text.partition(ROBUSTNESS_HEADING)
    section, nxt, rest = tail.partition("\n## ")  # this section ends where the next one starts
    kept = [b for b in section.split("\n### ")[1:] if not b.startswith(f"{concept}\n")]
    body = "\n\nAttack success rates measured by `sfd audit --robustness` (sfd/evaluators/robustness.py) over the pairs where the " \
           "original model shows the concept.\n\n" + "".join(f"### {b.rstrip()}\n\n" for b in kept) + "\n".join(block)
    card_file.write_text(head + ROBUSTNESS_HEADING + body + (f"\n## {rest}" if nxt else "\n"))
    return True
