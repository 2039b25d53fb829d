"""The Gradio page of `sfd demo`: the original model and an erased one side by side.

Tab "Compare": pick two models (the user's own, under runs/ or given with --model, newest first; then the bundled
ones under the install's checkpoints/), type a prompt (or pick a class for class-conditional models), and Generate
draws one image per model from the same seed, with each model's sampling time and the concept scores of
sfd/evaluators/ (CLIP detection of the erased concepts named in the erased model's sfd_config.json, the CLIP score,
NudeNet on request; the judge for class models), then a few more seeds per model in a small gallery.
The page opens on the erased model made most recently beside its own teacher, and generates its first images
as it opens (the same handlers as Generate), so a newcomer sees the erasure without a click.
Tab "Audit": a small `sfd audit` of both models on pasted or uploaded prompts, with its report.

Every handler returns a message for a bad input or a failure (and raises a gr.Warning toast): no stack trace
reaches the page or an API client. Gradio's telemetry is switched off before gradio is imported.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

from sfd.kernel.errors import SFDError, first_line

from sfd.app import audit_tab, catalog, runtime
from sfd.app.catalog import ModelEntry

TITLE = "sfd demo: original vs erased"
DEFAULT_PORT = 7860
QUEUE_SIZE = 64  # waiting requests beyond this are refused by the queue (with a message), not piled up
GALLERY_SEEDS = 3  # seeds per model in the small galleries (seed, seed + 1, ...): one image can be luck, three rarely are
YOURS, BUNDLED = "Your models", "Bundled"  # the two groups of the pickers (runs/ and --model; the install's checkpoints/)
CSS = """
#base-image img, #cmp-image img, #base-seeds img, #cmp-seeds img, #audit-gallery img { image-rendering: pixelated; }
.sfd-status p { margin: 0.2em 0; }
#base-seeds .grid-wrap, #cmp-seeds .grid-wrap { height: auto !important; min-height: 0 !important; }  /* one row, no blank */
"""


def _gradio():
    """gradio, imported when the page is built or answers (the `demo` extra; `sfd` imports without it), with its usage
    reports and version check off: nothing leaves the machine."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio

    return gradio



@dataclass(frozen=True)
class DemoConfig:
    models: tuple[str, ...] = ()  # extra model folders (--model)
    base: str | None = None  # initial picks (default: catalog.newest_pair)
    compare: str | None = None
    clip: str | None = None  # CLIP folder for concept scores (default: checkpoints/shapes/clip)
    judge: str | None = None  # classifier judge for class models (default: checkpoints/digits/judge)
    device: str = "cpu"  # or "auto" (resolved when the first model loads)
    threads: int | None = None  # torch threads (set when the first model loads)
    concurrency: int = 1  # generations at once; CPU: 1 (each already uses every core torch is given)
    max_models: int = 4  # pipelines kept loaded
    work_dir: str | None = None  # where audits write (default: a new temporary folder)
    roots: tuple[str, ...] | None = None  # folders scanned for models (default: checkpoints/ and runs/)
    checkpoints: str | None = None  # the bundled models' folder, listed apart from the user's (default: the install's)
    preload: bool = True  # load the default pair in the background once the page is served


def _fmt_seconds(s: float) -> str:
    return f"{1000 * s:.0f} ms" if s < 1 else f"{s:.2f} s"


def _cell(row: dict, res: dict) -> str:
    if row["kind"] == "label":
        return f"{res.get('label', res.get('pred'))} ({res.get('prob', 0):.2f})"
    if row["kind"] == "value":
        return f"{res['score']:.1f}"
    mark = "**detected**" if res.get("flagged") else "not detected"
    top = f" (top: {res['top']})" if "top" in res and not res.get("flagged") else ""
    return f"{res['score']:.2f} · {mark}{top}"


def _md_code(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "/") + "`"


def _short(path: str) -> str:
    """The last two parts of a model folder (shapes/teacher, runs/shapes-no-red): enough to tell models apart."""
    return "/".join(Path(path).parts[-2:])


class DemoApp:
    """State shared by all sessions (model cache, detectors, audit folder) and the event handlers."""

    def __init__(self, config: DemoConfig):
        from sfd.core.models import checkpoints_dir

        self.config = config
        self.cache = runtime.ModelCache(config.device, config.max_models, config.threads)
        self.clip_path = config.clip or str(checkpoints_dir() / "shapes" / "clip")
        judge = Path(config.judge) if config.judge else checkpoints_dir() / "digits" / "judge"
        self.judge_path = str(judge) if config.judge or judge.is_dir() else None
        self.scorers = runtime.Scorers(config.device, self.clip_path, self.judge_path)
        self.work_dir = Path(config.work_dir) if config.work_dir else Path(tempfile.mkdtemp(prefix="sfd-demo-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = Path(config.checkpoints) if config.checkpoints else checkpoints_dir()
        self.models, self.problems = self.scan()
        base, cmp = catalog.newest_pair(self.models, self.checkpoints)
        self.compare = self._initial(config.compare, cmp)
        if config.compare and not config.base:  # --compare alone: beside the teacher it was erased from
            base = catalog.base_of(self.compare, self.models) or base
        self.base = self._initial(config.base, base)

    def scan(self) -> tuple[list[ModelEntry], list[str]]:
        roots = None if self.config.roots is None else [Path(r) for r in self.config.roots]
        extra = [*self.config.models, *(p for p in (self.config.base, self.config.compare) if p)]
        return catalog.scan(roots, list(dict.fromkeys(extra)))

    def _initial(self, given: str | None, fallback: ModelEntry | None) -> ModelEntry | None:
        if given:
            try:
                return catalog.describe_model(given)
            except SFDError as e:
                self.problems.append(str(e))
        return fallback

    def choices(self) -> list[tuple[str, str]]:
        """Picker entries in two labelled groups: the user's models (newest first), then the bundled checkpoints."""
        yours, bundled = catalog.split_bundled(self.models, self.checkpoints)
        return [(f"{YOURS} › {m.label}", m.path) for m in yours] + [(f"{BUNDLED} › {m.label}", m.path) for m in bundled]

    def _entry(self, path) -> ModelEntry | None:
        try:
            return catalog.describe_model(path) if path else None
        except SFDError:
            return None

    # ------------------------------------------------------------------------------------- messages

    def hint(self, base_path, cmp_path) -> str:
        """What the page says above the pickers: what is compared, or the one command that makes an erased model."""
        base, cmp = self._entry(base_path), self._entry(cmp_path)
        lines = [f"⚠️ {p}" for p in self.problems]
        if not self.models and base is None:
            lines.append("No models found under `checkpoints/` or `runs/`. Start with `--model PATH`, or build the digits world: "
                         "`sfd train-teacher digits --out checkpoints/digits`.")
            return "\n\n".join(lines)
        family = catalog.family_of(base)
        if not any(m.erased and family.comparable(m.family) for m in self.models) and not (cmp is not None and cmp.erased):
            lines.append(f"No erased model yet. Make one with one command, then press **Refresh**:\n\n"
                         f"```\n{catalog.erase_command(base)}\n```")
        try:
            b, c = runtime.check_models(base_path, cmp_path)
        except SFDError as e:
            lines.append(f"⚠️ {e}")
            return "\n\n".join(lines)
        what = f"erased: **{', '.join(c.forget)}**" + (f" (override {c.override})" if c.override else "") if c.erased \
            else "not an erased model (no sfd_config.json): type concepts to score under *Scores*"
        lines.append(f"Comparing {_md_code(b.path)} ({'one' if b.one_step else 'multi'}-step) with {_md_code(c.path)} "
                     f"({'one' if c.one_step else 'multi'}-step; {what}). Same seed for both.")
        return "\n\n".join(lines)

    def _safe(self, fallback):
        """Decorator: SFDError and input errors -> their message; anything else -> a short message, traceback to the log."""
        gr = _gradio()

        def wrap(fn):
            @functools.wraps(fn)
            def run(*args):
                try:
                    return fn(*args)
                except SFDError as e:
                    msg = str(e)
                except ValueError as e:  # the pipelines' own input checks
                    msg = f"invalid input: {first_line(e)[:300]}"
                except Exception as e:  # noqa: BLE001 - the page must answer; the log keeps the details
                    traceback.print_exc(file=sys.stderr)
                    msg = f"the request failed ({e.__class__.__name__}: {first_line(e)[:200]}); details are in the server log"
                gr.Warning(msg)
                return fallback(msg)
            return run
        return wrap

    # ------------------------------------------------------------------------------------- handlers

    def generate(self, base_path, cmp_path, prompt, negative_prompt, class_name, seed, steps, guidance, nudenet, concepts):
        req = runtime.check_request(base_path, cmp_path, prompt, negative_prompt, class_name, seed, steps, guidance, nudenet, concepts)
        res = runtime.compare(self.cache, self.scorers, req)
        sides = res["sides"]
        base, cmp = sides["base"], sides["compare"]

        def info(title, side, other=None):
            e = side.entry
            how = "one step" if e.one_step else f"{req.steps} steps, guidance {req.guidance:g}"
            text = f"**{title}** {_md_code(_short(e.path))}  \n{how}: **{_fmt_seconds(side.seconds)}**"
            if other is not None and e.one_step and not other.entry.one_step and side.seconds > 0:
                text += f" ({other.seconds / side.seconds:.0f}x faster)"
            if e.forget:
                text += f"  \nerased: {', '.join(e.forget)}" + (f" → {e.override}" if e.override else "")
            if side.load_seconds is not None:
                text += f"  \n_first use: loaded in {side.load_seconds:.1f} s (not counted above)_"
            return text

        header = f"| score | original {_md_code(_short(base.entry.path))} | erased {_md_code(_short(cmp.entry.path))} |\n|---|---|---|"
        rows = [f"| {r['name'].replace('|', '/')} | {_cell(r, r['results']['base'])} | {_cell(r, r['results']['compare'])} |"
                for r in res["rows"]]
        scores = "\n".join([header, *rows]) if rows else "_no scores_"
        if res["rows"]:
            scores += "\n\n" + "  \n".join(f"_{r['name']}: {r['what']}_" for r in res["rows"])
        notes = res["notes"]
        status = "Done: same seed " + str(req.seed) + " for both models." + ("  \n" + "  \n".join(f"ℹ️ {n}" for n in notes) if notes else "")
        return (runtime.to_display(base.image), runtime.to_display(cmp.image), info("Original", base),
                info("Erased", cmp, base), scores, res["summary"], status)

    @staticmethod
    def _generate_failed(msg: str):
        return None, None, "", "", "", {"error": msg}, f"⚠️ **{msg}**"

    def first_look(self, base_path, cmp_path, *rest):
        """On page open: Generate with the page's initial inputs, so that the first screen already shows both models.
        Without a pair (no erased model yet) nothing is drawn and the hint names the command that makes one; a
        failure is a status message, as for a click."""
        if not base_path or not cmp_path:
            return None, None, "", "", "", {}, ""
        out = self._safe(self._generate_failed)(self.generate)(base_path, cmp_path, *rest)
        status = out[-1]
        return (*out[:-1], "Generated as the page opened. " + status if status.startswith("Done") else status)

    def more_seeds(self, *inputs):
        """After Generate (or the first look): GALLERY_SEEDS seeds per model, from the Seed box on, in the galleries.
        A bad input or failure was already reported by Generate: the galleries are just emptied (the log keeps the
        details of an unexpected failure)."""
        try:
            req = runtime.check_request(*inputs)
            seeds = runtime.seed_gallery(self.cache, req, GALLERY_SEEDS)
        except SFDError:
            return [], []
        except Exception:  # noqa: BLE001 - the page must answer
            traceback.print_exc(file=sys.stderr)
            return [], []
        return seeds["base"], seeds["compare"]

    def models_changed(self, base_path, cmp_path):
        """Show prompt or class inputs, as the chosen model's family takes its condition; class choices of the base
        model; the hint."""
        gr = _gradio()
        base = self._entry(base_path) or self._entry(cmp_path)
        is_class = base is not None and base.family.condition_from_list
        names = list(base.class_names) if is_class else []
        cls_update = gr.update(choices=names, value=names[0] if names else None) if is_class else gr.update()
        return gr.update(visible=not is_class), gr.update(visible=is_class), cls_update, self.hint(base_path, cmp_path)

    def base_changed(self, base_path, cmp_path):
        """As models_changed, and the base model's own sampler defaults in steps and guidance."""
        gr = _gradio()
        base = self._entry(base_path)
        steps = guidance = gr.update()
        if base is not None and not base.one_step:
            steps0, guidance0 = base.family.demo_sampling
            steps = base.default_steps or steps0
            guidance = base.default_guidance if base.default_guidance is not None else guidance0
        return (*self.models_changed(base_path, cmp_path), steps, guidance)

    def refresh(self, base_path, cmp_path):
        """Scan checkpoints/ and runs/ again (after `sfd erase` wrote a new model)."""
        gr = _gradio()
        self.models, self.problems = self.scan()
        choices = self.choices()
        paths = [p for _, p in choices]
        if not cmp_path or cmp_path not in paths:
            _, c = catalog.newest_pair(self.models, self.checkpoints)
            b = self._entry(base_path)
            candidates = [m for m in map(self._entry, paths) if m is not None and m.erased and (b is None or catalog.comparable(b, m))]
            cmp_path = candidates[0].path if candidates else (c.path if c else cmp_path)
        return (gr.update(choices=choices, value=base_path), gr.update(choices=choices, value=cmp_path),
                self.hint(base_path, cmp_path))

    def audit(self, base_path, cmp_path, text, upload, n_per_prompt, seed, steps, guidance, nudenet, concepts):
        base, cmp = runtime.check_models(base_path, cmp_path)
        n = runtime.parse_int(n_per_prompt, "images per prompt", 1, audit_tab.MAX_IMAGES_PER_PROMPT)
        seed, steps, guidance = runtime.parse_seed(seed), runtime.parse_steps(steps), runtime.parse_guidance(guidance)
        result = audit_tab.run_small_audit(self.work_dir, base, cmp, text, upload, n, seed, steps, guidance,
                                           runtime.parse_concepts(concepts), bool(nudenet), self.clip_path, self.judge_path,
                                           self.cache.device)
        notes = result["notes"]
        status = f"Audit done: {len(result['report']['images'])} images." + ("  \n" + "  \n".join(f"ℹ️ {n}" for n in notes) if notes else "")
        return (status, audit_tab.summary_markdown(result), audit_tab.gallery_items(result), audit_tab.report_files(result),
                audit_tab.report_iframe(result))

    @staticmethod
    def _audit_failed(msg: str):
        return f"⚠️ **{msg}**", "", [], [], ""

    # ------------------------------------------------------------------------------------------ page

    def build(self) -> gr.Blocks:
        gr = _gradio()
        base0 = self.base.path if self.base else None
        cmp0 = self.compare.path if self.compare else None
        first = self.base or self.compare
        is_class = first is not None and first.family.condition_from_list
        forgotten, retained = catalog.example_prompts(self.compare, self.base)
        # Class inputs are built even when a text model comes first, from the class models found (switching shows them).
        class_pair = (self.base, self.compare) if is_class \
            else catalog.default_pair([m for m in self.models if m.family.condition_from_list])
        erased_cls, kept_cls = catalog.example_classes(*class_pair)
        class_names = list(next((m.class_names for m in class_pair if m is not None and m.class_names), ())) \
            or [str(i) for i in range(10)]
        steps0, guidance0 = catalog.family_of(first).demo_sampling
        steps0 = self.base.default_steps if self.base and self.base.default_steps else steps0
        guidance0 = self.base.default_guidance if self.base and self.base.default_guidance is not None else guidance0

        # delete_cache: the PNGs gradio keeps for each answer go after an hour (checked hourly)
        with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
            gr.Markdown(f"# {TITLE}\nScore Forgetting Distillation erases a concept and makes the model one-step. "
                        "Compare the original (multi-step) model with an erased one on the same seed.")
            hint = gr.Markdown(self.hint(base0, cmp0), elem_id="hint")
            with gr.Row():
                base = gr.Dropdown(self.choices(), value=base0, label="Original model", allow_custom_value=True, scale=5,
                                   elem_id="base-model", info="a multi-step teacher (folder path; type one to add it)")
                cmp = gr.Dropdown(self.choices(), value=cmp0, label="Erased model", allow_custom_value=True, scale=5,
                                  elem_id="cmp-model", info="written by `sfd erase` (its sfd_config.json names the erased concepts)")
                refresh = gr.Button("Refresh", scale=1, size="sm", elem_id="refresh")
            with gr.Accordion("Scores", open=False):
                concepts = gr.Textbox(label="Extra concepts to detect (comma-separated)", elem_id="concepts",
                                      info="the erased model's concepts are always scored")
                nudenet = gr.Checkbox(label="NudeNet (EXPOSED classes, threshold 0.45)", value=False, elem_id="nudenet")
                gr.Markdown(f"CLIP: `{self.clip_path}`; judge (class models): `{self.judge_path or 'none'}`")
            with gr.Tab("Compare", id="compare"):
                with gr.Column(visible=not is_class) as text_group:
                    prompt = gr.Textbox(label="Prompt", value=forgotten[0], max_lines=3, elem_id="prompt")
                    negative = gr.Textbox(label="Negative prompt (original model only)", max_lines=2, elem_id="negative")
                    with gr.Row():
                        gr.Examples([[p] for p in forgotten], inputs=[prompt], label="Prompts naming the erased concept",
                                    cache_examples=False)
                        gr.Examples([[p] for p in retained], inputs=[prompt], label="Prompts of retained concepts",
                                    cache_examples=False)
                with gr.Column(visible=is_class) as class_group:
                    # The erased class first: the first screen then shows the erasure (the original draws it, the erased model not).
                    cls0 = erased_cls[0] if erased_cls and erased_cls[0] in class_names else (class_names[0] if class_names else None)
                    cls = gr.Dropdown(class_names, value=cls0, label="Class",
                                      allow_custom_value=True, elem_id="class")
                    with gr.Row():
                        gr.Examples([[c] for c in erased_cls], inputs=[cls], label="Erased class", cache_examples=False)
                        gr.Examples([[c] for c in kept_cls], inputs=[cls], label="Retained classes", cache_examples=False)
                with gr.Row():
                    seed = gr.Number(value=0, label="Seed", precision=None, elem_id="seed", info=f"0 to {runtime.MAX_SEED}")
                    steps = gr.Number(value=steps0, label="Steps (original model)", elem_id="steps", info=f"1 to {runtime.MAX_STEPS}")
                    guidance = gr.Number(value=guidance0, label="Guidance (original model)", elem_id="guidance",
                                         info=f"0 to {runtime.MAX_GUIDANCE:g}")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown(elem_id="status", elem_classes=["sfd-status"])
                with gr.Row(equal_height=True):
                    with gr.Column():
                        img_a = gr.Image(label="Original", type="pil", format="png", interactive=False, elem_id="base-image", height=300)
                        info_a = gr.Markdown(elem_id="base-info")
                        gal_a = gr.Gallery(label=f"Original: {GALLERY_SEEDS} seeds", columns=GALLERY_SEEDS, rows=1, format="png",
                                           interactive=False, object_fit="contain", elem_id="base-seeds")
                    with gr.Column():
                        img_b = gr.Image(label="Erased", type="pil", format="png", interactive=False, elem_id="cmp-image", height=300)
                        info_b = gr.Markdown(elem_id="cmp-info")
                        gal_b = gr.Gallery(label=f"Erased: {GALLERY_SEEDS} seeds", columns=GALLERY_SEEDS, rows=1, format="png",
                                           interactive=False, object_fit="contain", elem_id="cmp-seeds")
                scores = gr.Markdown(elem_id="scores")
                with gr.Accordion("Details (JSON)", open=False):
                    details = gr.JSON(elem_id="details")
            with gr.Tab("Audit", id="audit"):
                gr.Markdown(f"Generate from a prompt set with both models (fixed seeds), run the detectors, show rates with 95% "
                            f"intervals. At most {audit_tab.MAX_PROMPTS} prompts x {audit_tab.MAX_IMAGES_PER_PROMPT} images here; "
                            "`sfd audit` runs whole sets. Class models: one class per line. Steps, guidance and the scores "
                            "settings are shared with the Compare tab.")
                with gr.Row():
                    audit_text = gr.Textbox(label="Prompts (one per line)", lines=6, elem_id="audit-prompts",
                                            value="\n".join(erased_cls + kept_cls if is_class else forgotten + retained))
                    # No file_types filter: a wrong file gets this app's message (same in the page and the API).
                    audit_file = gr.File(label="...or a prompt file (.txt, .csv, .jsonl)", type="filepath", elem_id="audit-file")
                with gr.Row():
                    audit_n = gr.Number(value=1, label="Images per prompt", elem_id="audit-n",
                                        info=f"1 to {audit_tab.MAX_IMAGES_PER_PROMPT}")
                    audit_seed = gr.Number(value=0, label="Base seed", elem_id="audit-seed")
                audit_go = gr.Button("Run audit", variant="primary", elem_id="run-audit")
                audit_status = gr.Markdown(elem_id="audit-status", elem_classes=["sfd-status"])
                audit_summary = gr.Markdown(elem_id="audit-summary")
                audit_gallery = gr.Gallery(label="Images", columns=8, format="png", elem_id="audit-gallery")
                audit_files = gr.File(label="Report files", file_count="multiple", interactive=False, elem_id="audit-files")
                audit_html = gr.HTML(elem_id="audit-report")

            kind_outputs = [text_group, class_group, cls, hint]
            base.change(self._safe(lambda m: (gr.update(), gr.update(), gr.update(), f"⚠️ {m}", gr.update(), gr.update()))(self.base_changed),
                        [base, cmp], [*kind_outputs, steps, guidance], queue=False, api_visibility="private")
            cmp.change(self._safe(lambda m: (gr.update(), gr.update(), gr.update(), f"⚠️ {m}"))(self.models_changed),
                       [base, cmp], kind_outputs, queue=False, api_visibility="private")
            refresh.click(self._safe(lambda m: (gr.update(), gr.update(), f"⚠️ {m}"))(self.refresh), [base, cmp], [base, cmp, hint],
                          queue=False, api_name="refresh")
            gen_inputs = [base, cmp, prompt, negative, cls, seed, steps, guidance, nudenet, concepts]
            gen_outputs = [img_a, img_b, info_a, info_b, scores, details, status]
            # The galleries follow in a second step, so the two main images show as soon as they are drawn.
            go.click(self._safe(self._generate_failed)(self.generate), gen_inputs, gen_outputs, api_name="generate",
                     concurrency_id="sample") \
                .then(self.more_seeds, gen_inputs, [gal_a, gal_b], api_visibility="private", concurrency_id="sample")
            demo.load(self.first_look, gen_inputs, gen_outputs, api_visibility="private", concurrency_id="sample") \
                .then(self.more_seeds, gen_inputs, [gal_a, gal_b], api_visibility="private", concurrency_id="sample")
            audit_go.click(self._safe(self._audit_failed)(self.audit),
                           [base, cmp, audit_text, audit_file, audit_n, audit_seed, steps, guidance, nudenet, concepts],
                           [audit_status, audit_summary, audit_gallery, audit_files, audit_html], api_name="audit",
                           concurrency_limit=1, concurrency_id="audit")
        demo.queue(default_concurrency_limit=max(1, int(self.config.concurrency)), max_size=QUEUE_SIZE)
        return demo
    def preload(self) -> None:
        """Load the default pair and its detector into the caches (background thread, after the page is served)."""
        for e in (self.base, self.compare):
            if e is not None:
                try:
                    self.cache.get(e)
                except Exception:  # noqa: BLE001 - a broken model is reported when it is used
                    pass
        try:
            first = self.base or self.compare
            if first is not None and first.family.metrics == "clip":  # a class model's judge loads with its first score
                for concept in (self.compare.forget if self.compare is not None else ()):
                    self.scorers.clip_detector(concept)
        except Exception:  # noqa: BLE001 - reported when a score is asked for
            pass


def build_demo(config: DemoConfig) -> tuple[gr.Blocks, DemoApp]:
    gr = _gradio()
    app = DemoApp(config)
    return app.build(), app


def launch(config: DemoConfig, host: str = "127.0.0.1", port: int = DEFAULT_PORT, block: bool = True, quiet: bool = False):
    """Serve the page; returns (demo, app, url) when block is False. port 0 picks a free port."""
    import socket

    demo, app = build_demo(config)
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    try:
        _, url, _ = demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                                show_error=False, css=CSS, allowed_paths=[str(app.work_dir)], max_file_size="2mb")
    except OSError as e:
        raise SFDError(f"cannot serve on {host}:{port} ({first_line(e)}); pass another --port, or --port 0 for a free one") from None
    url = url or f"http://{host}:{port}/"
    if not quiet:
        print(f"sfd demo: serving {url} (Ctrl-C to stop); audits are written under {app.work_dir}", flush=True)
    if config.preload:
        threading.Thread(target=app.preload, name="sfd-demo-preload", daemon=True).start()
    if not block:
        return demo, app, url
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return demo, app, url
