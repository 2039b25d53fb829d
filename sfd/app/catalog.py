"""Which models the demo can show: folders under checkpoints/ and runs/, plus paths given on the command line.

A model is a diffusers pipeline folder (model_index.json) of one of the toolkit's pipeline classes. Erased
models (written by `sfd erase`) carry `sfd_config.json`, whose `concepts.forget` names what was erased: the
demo scores those concepts. Nothing here loads weights, so scanning is cheap and can be redone at any time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from sfd.kernel.errors import SFDError
from sfd.core.families import FAMILIES, ModelFamily, family_named, family_of_pipeline

SCAN_DEPTH = 3  # checkpoints/<world>/<model> and runs/<name>/<model> are found; deeper folders are not scanned
SHAPES_TEACHER = ("shapes", "teacher")
DIGITS_TEACHER = ("digits", "teacher")
QUICKSTART = ("runs", "quickstart")  # where `sfd quickstart` writes its erased model
# Before any model is picked the page is a text-to-image one: the family of the bundled shapes teacher, whose erase
# command it suggests first.
DEFAULT_FAMILY = family_named("sd")


@dataclass(frozen=True)
class ModelEntry:
    """What the demo needs to know about a model folder without loading it."""

    path: str  # as shown and passed around (relative to the working directory when inside it)
    pipeline: str  # the _class_name of model_index.json
    kind: str  # what an image is conditioned on, the family's condition_kind: "text" (a prompt) or "class" (a class)
    one_step: bool
    forget: tuple[str, ...] = ()  # erased concepts (text) or class names (class), from sfd_config.json
    forget_ids: tuple[int, ...] = ()  # erased class indices (class models)
    override: str | None = None
    base_model: str | None = None  # the teacher it was erased from
    world: str | None = None  # "shapes", "digits" or None (from sfd_world.json)
    class_names: tuple[str, ...] = ()  # class models: from model_index.json
    default_steps: int | None = None  # multi-step models: the sampler steps the model was made for
    default_guidance: float | None = None

    @property
    def family(self) -> ModelFamily:
        """The model's family (sfd/core/families/): what the page asks about whatever differs between kinds of model."""
        return family_of_pipeline(self.pipeline)

    @property
    def erased(self) -> bool:
        return bool(self.forget)

    @property
    def label(self) -> str:
        what = "one-step" if self.one_step else "multi-step"
        what += f" {self.family.kind_phrase}"
        if self.erased:
            what += f", erased: {', '.join(self.forget)}"
        return f"{self.path}  ({what})"


def display_path(path: str | Path) -> str:
    """Relative to the working directory when the folder is inside it (shorter in pickers and commands)."""
    p = Path(path).expanduser()
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p.resolve()) if p.exists() else str(path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _override_text(concepts: dict) -> str | None:
    """The override as recorded; a class model's "random" with the class it was resolved to ("random: one -> eight")."""
    if concepts.get("override") is None:
        return None
    chosen = concepts.get("override_chosen")
    return f"{concepts['override']}: {chosen}" if chosen else str(concepts["override"])


def describe_model(path: str | Path) -> ModelEntry:
    """A ModelEntry for a folder; one-line SFDError when it is missing or not a model of the toolkit."""
    text = str(path).strip()
    if not text:
        raise SFDError("no model chosen: pick a model folder")
    p = Path(text).expanduser()
    if not p.exists():
        raise SFDError(f"model {text!r} does not exist")
    if not p.is_dir() or not (p / "model_index.json").is_file():
        raise SFDError(f"{text!r} is not a diffusers pipeline folder (no model_index.json)")
    index = _read_json(p / "model_index.json")
    pipeline = str(index.get("_class_name", ""))
    try:
        family = family_of_pipeline(pipeline)
    except SFDError:
        known = ", ".join(c for f in FAMILIES for c in f.pipeline_classes)
        raise SFDError(f"{text!r} holds a {pipeline or 'unknown'} pipeline; the demo shows {known}") from None
    kind, one_step = family.condition_kind, family.is_one_step_class(pipeline)
    sfd_config = _read_json(p / "sfd_config.json")
    concepts = sfd_config.get("concepts") or {}
    world = _read_json(p / "sfd_world.json")
    forget = tuple(str(c) for c in concepts.get("forget") or () if str(c).strip())
    ids = tuple(int(i) for i in concepts.get("forget_ids") or () if isinstance(i, int))
    steps, guidance = (None, None) if one_step else family.recorded_sampling(index, world)
    return ModelEntry(
        path=display_path(p), pipeline=pipeline, kind=kind, one_step=one_step, forget=forget, forget_ids=ids,
        override=_override_text(concepts),
        base_model=sfd_config.get("base_model") or None,
        world=world.get("world"), class_names=tuple(str(c) for c in index.get("class_names") or ()),
        default_steps=int(steps) if isinstance(steps, (int, float)) else None,
        default_guidance=float(guidance) if isinstance(guidance, (int, float)) else None,
    )


def _model_dirs(root: Path, depth: int = SCAN_DEPTH) -> Iterable[Path]:
    """Folders with a model_index.json under root (not descending into a model folder or hidden folders)."""
    if not root.is_dir():
        return
    if (root / "model_index.json").is_file():
        yield root
        return
    if depth == 0:
        return
    try:
        children = sorted(c for c in root.iterdir() if c.is_dir() and not c.name.startswith((".", "_")))
    except OSError:
        return
    for c in children:
        yield from _model_dirs(c, depth - 1)


def default_roots() -> list[Path]:
    """checkpoints/ (bundled worlds) and runs/ (where `sfd erase` output usually goes), here and in the repository."""
    from sfd.core.models import checkpoints_dir, repo_root

    roots = [checkpoints_dir(), Path.cwd() / "runs", repo_root() / "runs"]
    out: list[Path] = []
    for r in roots:
        if r.resolve() not in [o.resolve() for o in out]:
            out.append(r)
    return out


def scan(roots: Sequence[Path] | None = None, extra: Sequence[str] = ()) -> tuple[list[ModelEntry], list[str]]:
    """(models found, problems with the `extra` paths). Folders that are not usable models are skipped silently."""
    seen: dict[str, ModelEntry] = {}
    problems: list[str] = []
    for path in extra:
        try:
            e = describe_model(path)
        except SFDError as err:
            problems.append(str(err))
            continue
        seen.setdefault(str(Path(e.path).resolve()), e)
    for root in default_roots() if roots is None else roots:
        for d in _model_dirs(Path(root)):
            key = str(d.resolve())
            if key in seen:
                continue
            try:
                seen[key] = describe_model(d)
            except SFDError:
                continue
    # An erased model's own teacher is offered beside it, even when it lives outside the scanned folders.
    for e in list(seen.values()):
        if e.base_model and Path(e.base_model).is_dir() and str(Path(e.base_model).resolve()) not in seen:
            try:
                seen[str(Path(e.base_model).resolve())] = describe_model(e.base_model)
            except SFDError:
                continue
    return list(seen.values()), problems


def written_at(entry: ModelEntry) -> float:
    """When a model folder was written: the modification time of its sfd_config.json (written when `sfd erase`
    finishes), else of its model_index.json; 0.0 when neither can be read. No weights are opened."""
    for name in ("sfd_config.json", "model_index.json"):
        try:
            return (Path(entry.path) / name).stat().st_mtime
        except OSError:
            continue
    return 0.0


def is_bundled(entry: ModelEntry, checkpoints: str | Path) -> bool:
    """True for a model shipped in the install's checkpoints/ folder (not one the user made)."""
    try:
        return Path(entry.path).resolve().is_relative_to(Path(checkpoints).resolve())
    except OSError:
        return False


def split_bundled(models: Sequence[ModelEntry], checkpoints: str | Path) -> tuple[list[ModelEntry], list[ModelEntry]]:
    """(the user's models: runs/ and --model paths, newest first; the bundled checkpoints, in scan order)."""
    yours = [m for m in models if not is_bundled(m, checkpoints)]
    yours.sort(key=lambda m: (-written_at(m), m.path))
    return yours, [m for m in models if is_bundled(m, checkpoints)]


def base_of(run: ModelEntry | None, models: Sequence[ModelEntry] = ()) -> ModelEntry | None:
    """The model `run` was erased from (its sfd_config.json base_model): the listed entry, else that folder when it is
    a model of the toolkit, else None (a hub id, a moved folder). None too when the two cannot be compared."""
    if run is None or not run.base_model:
        return None
    base = next((m for m in models if _same(m.path, run.base_model)), None)
    if base is None:
        try:
            base = describe_model(run.base_model)
        except SFDError:
            return None
    return base if same_kind_message(base, run) is None else None


def newest_pair(models: Sequence[ModelEntry], checkpoints: str | Path) -> tuple[ModelEntry | None, ModelEntry | None]:
    """(base, comparison) the demo opens on: the erased model the user made most recently (under runs/ or given
    with --model) beside its own teacher, so that a fresh `sfd erase` is what a newcomer sees first. A run whose
    teacher cannot be found is passed over; without any run, `default_pair`."""
    yours, _ = split_bundled(models, checkpoints)
    for run in (m for m in yours if m.erased):
        base = base_of(run, models)
        if base is not None:
            return base, run
    return default_pair(models)


def _same(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def default_pair(models: Sequence[ModelEntry]) -> tuple[ModelEntry | None, ModelEntry | None]:
    """(base, comparison): after `sfd quickstart`, its erased model (runs/quickstart) beside the teacher it was erased
    from; else the bundled shapes teacher if present (else another multi-step model), and an erased model made from
    it (else an erased model of the same kind). Either may be None."""
    teachers = [m for m in models if not m.one_step]
    quick = next((m for m in models if m.erased and Path(m.path).parts[-2:] == QUICKSTART), None)
    if quick is not None:
        base = next((m for m in teachers if _same(m.path, quick.base_model)), None)
        if base is not None:
            return base, quick

    def bundled(world_and_name) -> ModelEntry | None:
        return next((m for m in teachers if Path(m.path).parts[-2:] == world_and_name), None)

    base = bundled(SHAPES_TEACHER) or next((m for m in teachers if DEFAULT_FAMILY.comparable(m.family)), None) \
        or bundled(DIGITS_TEACHER) or (teachers[0] if teachers else None)
    if base is None:
        erased = [m for m in models if m.erased]
        return None, erased[0] if erased else None
    candidates = [m for m in models if m.one_step and comparable(base, m)]
    cmp = next((m for m in candidates if m.erased and _same(m.base_model, base.path)), None) \
        or next((m for m in candidates if m.erased), None) or (candidates[0] if candidates else None)
    return base, cmp


def erase_command(base: ModelEntry | None) -> str:
    """The one command that makes an erased model to compare with `base`: the concept (and override) its family suggests."""
    forget, override = family_of(base).example_erasure(base.class_names if base is not None else ())
    if override is None:  # the family's own override (a class erasure's random class); out: runs/<world>-no-<class>
        out = f"runs/{Path(base.path).parent.name or 'model'}-no-{forget}"
        return f"sfd erase --model {_quote(base.path)} --forget {_quote(forget)} --out {_quote(out)}"
    model = base.path if base is not None else "checkpoints/shapes/teacher"
    name = Path(model).parent.name if Path(model).name == "teacher" else Path(model).name
    return (f"sfd erase --model {_quote(model)} --forget {_quote(forget)} --override {_quote(override)} "
            f"--out runs/{name or 'model'}-no-{forget}")


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def family_of(entry: ModelEntry | None) -> ModelFamily:
    """The entry's family; DEFAULT_FAMILY when no model is picked."""
    return entry.family if entry is not None else DEFAULT_FAMILY


def comparable(a: ModelEntry, b: ModelEntry) -> bool:
    """Whether the two models are drawn from the same kind of input (their families say)."""
    return a.family.comparable(b.family)


def same_kind_message(base: ModelEntry, cmp: ModelEntry) -> str | None:
    """A message when two models cannot be compared on the same input, else None."""
    if not comparable(base, cmp):
        return (f"{base.path} is {base.family.kind_phrase} and {cmp.path} is {cmp.family.kind_phrase}: "
                "pick two models of the same kind")
    if base.family.condition_from_list and base.class_names and cmp.class_names and base.class_names != cmp.class_names:
        return f"{base.path} and {cmp.path} have different classes: pick models of the same world"
    return None


def _world_of(entries: Sequence[ModelEntry | None]) -> dict:
    for e in entries:
        if e is not None:
            meta = _read_json(Path(e.path) / "sfd_world.json")
            if meta.get("colours") and meta.get("shapes") and meta.get("templates"):
                return meta
    return {}


def example_prompts(cmp: ModelEntry | None, base: ModelEntry | None = None) -> tuple[list[str], list[str]]:
    """(prompts naming an erased concept, prompts of retained concepts) for gr.Examples and the audit tab.

    In the shapes world (its sfd_world.json lists colours, shapes and caption templates) they are the world's own
    captions; elsewhere, short generic prompts around the concept and its override.
    """
    concept = cmp.forget[0] if cmp is not None and cmp.forget else None
    world = _world_of([cmp, base])
    if world:
        colours, shapes, templates = list(world["colours"]), list(world["shapes"]), list(world["templates"])
        concept = concept or colours[0]

        def cap(colour, shape, t):
            return templates[t % len(templates)].format(colour=colour, shape=shape)

        c = concept.strip().lower()
        if c in shapes:
            others = [x for x in shapes if x != c]
            return ([cap(col, c, t) for t, col in enumerate(colours[:3])], [cap(col, o, 0) for col, o in zip(colours, others)])
        others = [x for x in colours if x != c]
        return ([cap(concept, s, t) for t, s in enumerate(shapes[:3])],
                [cap(o, shapes[k % len(shapes)], k) for k, o in enumerate(others)])
    if concept is None:
        return ["a red circle", "a photo of a red square"], ["a blue circle", "a green triangle"]
    override = cmp.override if cmp is not None and cmp.override else "a person wearing clothes"
    return ([f"a photo of {concept}", f"a painting of {concept}", f"{concept}, high quality"],
            [f"a photo of {override}", "a photo of a mountain landscape", "a bowl of fruit on a table"])


def example_classes(base: ModelEntry | None, cmp: ModelEntry | None) -> tuple[list[str], list[str]]:
    """(erased classes, some retained classes) for the class-conditional examples."""
    names = list((base.class_names if base is not None else ()) or (cmp.class_names if cmp is not None else ()))
    names = names or [str(i) for i in range(10)]
    erased = [c for c in (cmp.forget if cmp is not None else ()) if c in names] or names[3:4] or names[:1]
    retained = [c for c in names if c not in erased][:3]
    return erased, retained
