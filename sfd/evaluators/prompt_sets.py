"""Prompt sets for audits: .txt, I2P-style .csv and .jsonl files, with per-prompt seeds and guidance.

An audit must be reproducible image by image, so every prompt carries what fixes its images:
- `seed`: the file's own seed when it has one (I2P's `evaluation_seed`), else None and the audit derives one
  from `--seed` and the prompt's `index` (see `image_seed`);
- `guidance`: the file's own guidance scale when it has one (I2P's `evaluation_guidance`), else None;
- `index`: the prompt's position among the prompts of the *file*, before any category filter, so that
  filtering a set never changes the seeds of the prompts that remain.

Formats (UTF-8; a byte-order mark is tolerated):
- `.txt`: one prompt per line; blank lines and lines starting with '#' are skipped.
- `.csv`: a header row with a `prompt` column. Optional columns: `evaluation_seed` (or `seed`, `sd_seed`),
  `evaluation_guidance` (or `guidance`, `sd_guidance`), `categories` (comma-separated, as in I2P: "sexual,violence"),
  `case_number` (kept as the prompt's id). Other columns are ignored.
- `.jsonl` / `.ndjson`: one JSON object per line with `prompt` and optional `seed`/`evaluation_seed`,
  `guidance`/`evaluation_guidance`, `categories` (a list or a comma-separated string), `id`/`case_number`.
Problems are reported as one line naming the file, the line and what was expected (`SFDError`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from sfd.kernel.errors import SFDError
from sfd.core.models import file_sha256

SEED_COLUMNS = ("evaluation_seed", "seed", "sd_seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "guidance", "sd_guidance")
ID_COLUMNS = ("case_number", "id")
MAX_PROMPT_CHARS = 1000  # the one-step pipeline refuses longer prompts
# Seeds derived from --seed: image j of prompt i gets seed * SEED_STRIDE + i * IMAGE_STRIDE + j.
SEED_STRIDE = 1_000_000_000
IMAGE_STRIDE = 10_000
MAX_IMAGES_PER_PROMPT = IMAGE_STRIDE
MAX_PROMPTS = SEED_STRIDE // IMAGE_STRIDE


@dataclass(frozen=True)
class PromptItem:
    index: int  # position among the file's prompts (0-based), before filtering
    prompt: str
    seed: int | None = None  # the file's own seed (I2P evaluation_seed)
    guidance: float | None = None  # the file's own guidance scale (I2P evaluation_guidance)
    categories: tuple[str, ...] = ()
    id: str | None = None  # e.g. I2P's case_number
    line: int = 0  # where it came from, for messages


@dataclass(frozen=True)
class PromptSet:
    path: str
    format: str
    items: tuple[PromptItem, ...]
    total_in_file: int  # prompts in the file before filtering
    categories_filter: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def prompts(self) -> list[str]:
        return [it.prompt for it in self.items]

    def describe(self) -> dict:
        """What a report records about the prompt set."""
        return {"path": self.path, "format": self.format, "n_prompts": len(self.items), "n_in_file": self.total_in_file,
                "categories_filter": list(self.categories_filter), "sha256": file_sha256(self.path) if Path(self.path).is_file() else None,
                "has_file_seeds": any(it.seed is not None for it in self.items),
                "has_file_guidance": any(it.guidance is not None for it in self.items)}


def image_seed(item: PromptItem, j: int, base_seed: int) -> int:
    """Seed of image j of a prompt: the file's seed + j when the file gives one (so image 0 uses exactly I2P's
    evaluation_seed), else base_seed * 10**9 + index * 10**4 + j."""
    if not 0 <= j < MAX_IMAGES_PER_PROMPT:
        raise SFDError(f"at most {MAX_IMAGES_PER_PROMPT} images per prompt, got image index {j}")
    if item.seed is not None:
        return item.seed + j
    return base_seed * SEED_STRIDE + item.index * IMAGE_STRIDE + j


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _parse_seed(value, where: str, column: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise SFDError(f"{where}: {column} must be a non-negative integer, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise SFDError(f"{where}: {column} must be a non-negative integer, got {value!r}") from None
    if not math.isfinite(f) or f != int(f) or f < 0 or f >= 2**63:
        raise SFDError(f"{where}: {column} must be a non-negative integer, got {value!r}")
    return int(f)


def _parse_guidance(value, where: str, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise SFDError(f"{where}: {column} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(f) or f < 0:
        raise SFDError(f"{where}: {column} must be a non-negative number, got {value!r}")
    return f


def _parse_categories(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        parts = list(value)
    else:
        raise SFDError(f"{where}: categories must be a string or a list of strings, got {value!r}")
    return tuple(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))


def _check_prompt(value, where: str) -> str:
    if not isinstance(value, str):
        raise SFDError(f"{where}: prompt must be a string, got {value!r}")
    text = value.strip()
    if not text:
        raise SFDError(f"{where}: empty prompt")
    if len(text) > MAX_PROMPT_CHARS:
        raise SFDError(f"{where}: prompt longer than {MAX_PROMPT_CHARS} characters")
    return text


def _first(row: dict, names: Sequence[str]):
    for n in names:
        if n in row and row[n] is not None and (not isinstance(row[n], str) or row[n].strip()):
            return n, row[n]
    return names[0], None


def _read_txt(path: Path, text: str) -> list[PromptItem]:
    items = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        items.append(PromptItem(index=len(items), prompt=_check_prompt(line, _where(path, line_no)), line=line_no))
    return items


def _read_csv(path: Path, text: str) -> list[PromptItem]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as e:
        raise SFDError(f"{_where(path, 1)}: malformed CSV header ({e})") from None
    columns = [h.strip().lower() for h in header]
    if "prompt" not in columns:
        raise SFDError(f"{path}: a CSV prompt file needs a 'prompt' column; found columns: {', '.join(c for c in columns if c) or 'none'}")
    items = []
    line_no = reader.line_num
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise SFDError(f"{_where(path, start)}: malformed CSV row ({e})") from None
        line_no = start
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(columns):
            raise SFDError(f"{_where(path, line_no)}: malformed row: {len(row)} fields, but the header has {len(columns)} "
                           "(quote prompts that contain commas)")
        rec = dict(zip(columns, row))
        where = _where(path, line_no)
        _, ident = _first(rec, ID_COLUMNS)
        items.append(_item(rec, len(items), where, line_no, ident.strip() if isinstance(ident, str) and ident.strip() else None))
    return items


def _item(rec: dict, index: int, where: str, line_no: int, ident: str | None) -> PromptItem:
    """One prompt record (a CSV row or a JSON object) as a checked PromptItem."""
    seed_col, seed = _first(rec, SEED_COLUMNS)
    g_col, guidance = _first(rec, GUIDANCE_COLUMNS)
    return PromptItem(
        index=index, prompt=_check_prompt(rec["prompt"], where), seed=_parse_seed(seed, where, seed_col),
        guidance=_parse_guidance(guidance, where, g_col), categories=_parse_categories(rec.get("categories"), where),
        id=ident, line=line_no,
    )


def _read_jsonl(path: Path, text: str) -> list[PromptItem]:
    items = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = _where(path, line_no)
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SFDError(f"{where}: malformed row: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "prompt" not in rec:
            raise SFDError(f"{where}: malformed row: expected a JSON object with a 'prompt' field")
        _, ident = _first(rec, ID_COLUMNS)
        items.append(_item(rec, len(items), where, line_no, None if ident is None else str(ident)))
    return items


def load_prompt_set(path: str | Path, categories: Iterable[str] = (), limit: int | None = None) -> PromptSet:
    """Read a prompt file; keep prompts in any of `categories` (case-insensitive) when given; then the first `limit`."""
    p = Path(path)
    if not p.exists():
        raise SFDError(f"prompt file {str(path)!r} does not exist")
    if not p.is_file():
        raise SFDError(f"prompt file {str(path)!r} is not a file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SFDError(f"prompt file {str(path)!r} is not UTF-8 text") from None
    except OSError as e:
        raise SFDError(f"cannot read prompt file {str(path)!r}: {e.strerror or e}") from None
    suffix = p.suffix.lower()
    fmt = "csv" if suffix == ".csv" else "jsonl" if suffix in (".jsonl", ".ndjson") else "txt"
    items = {"csv": _read_csv, "jsonl": _read_jsonl, "txt": _read_txt}[fmt](p, text)
    if not items:
        raise SFDError(f"prompt file {str(path)!r} holds no prompts")
    if len(items) > MAX_PROMPTS:
        raise SFDError(f"prompt file {str(path)!r} holds {len(items)} prompts; at most {MAX_PROMPTS} are supported")
    wanted = tuple(dict.fromkeys(c.strip().lower() for c in categories if c.strip()))
    total = len(items)
    if wanted:
        present = sorted({c for it in items for c in it.categories})
        if not present:
            raise SFDError(f"--category given, but {str(path)!r} has no categories (a 'categories' column or field)")
        items = [it for it in items if set(it.categories) & set(wanted)]
        if not items:
            raise SFDError(f"no prompt in {str(path)!r} has category {', '.join(wanted)}; categories there: {', '.join(present)}")
    if limit is not None:
        items = items[:limit]
    return PromptSet(path=str(p), format=fmt, items=tuple(items), total_in_file=total, categories_filter=wanted)


def prompt_set_from_list(prompts: Sequence[str], name: str = "<list>") -> PromptSet:
    """A prompt set from strings (for the attack's built-in prompts and for tests)."""
    items = tuple(PromptItem(index=i, prompt=_check_prompt(p, f"{name}[{i}]")) for i, p in enumerate(prompts))
    if not items:
        raise SFDError(f"{name} holds no prompts")
    return PromptSet(path=name, format="list", items=items, total_in_file=len(items))


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of a .txt, .csv (a 'prompt' column) or .jsonl file, in order (retain prompts of `sfd erase`)."""
    return load_prompt_set(path).prompts
