"""Model-card metadata by Hugging Face Hub conventions, and paths a card may show.

The Hub reads a card's YAML front matter: `base_model` (the model this one derives from: a hub id, else here the
folder's name), `base_model_relation` (finetune, adapter, merge, quantized), `library_name`, `pipeline_tag`,
`license` and `tags`. A card must not carry the machine's absolute paths: folders are shown by name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TAGS = ("sfd", "concept-erasure", "machine-unlearning")


def display_name(path) -> str:
    """A hub id as it is; a local folder by its name (its absolute path is this machine's business)."""
    from sfd.core.models import is_hub_id

    text = str(path)
    if is_hub_id(text):
        return text
    p = Path(text).expanduser()
    return (p.resolve().name if p.exists() else p.name) or text


def card_license(folder) -> str | None:
    """The `license:` of a local model folder's own card (README.md front matter), if it states one."""
    p = Path(str(folder)).expanduser() / "README.md"
    if not p.is_file():
        return None
    meta = read_front_matter(p.read_text(errors="replace"))
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def read_front_matter(text: str) -> dict:
    """The YAML block between the leading `---` lines of a card ({} if none)."""
    import yaml

    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    if not m:
        return {}
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def hub_metadata(base_model, family, relation: str = "finetune", tags=(), one_step: bool = True) -> dict:
    """The front-matter fields of a card for a model derived from `base_model` (the teacher: path or hub id)."""
    meta = {"base_model": display_name(base_model), "base_model_relation": relation, "library_name": "diffusers",
            "pipeline_tag": family.pipeline_tag}
    license_ = card_license(base_model)
    if license_:
        meta["license"] = license_
    extra = [family.hub_tag or family.name] + (["one-step"] if one_step else []) + list(tags)
    meta["tags"] = list(dict.fromkeys([*TAGS, *extra]))
    return meta


def front_matter(meta: dict) -> list[str]:
    """YAML lines (strings JSON-quoted, which YAML reads as they are)."""
    lines = ["---"]
    for k, v in meta.items():
        lines.append(f"{k}: [{', '.join(json.dumps(t) for t in v)}]" if isinstance(v, list) else f"{k}: {json.dumps(v)}")
    return lines + ["---"]


_ABSOLUTE = re.compile(r"(?<![\w:/.~-])(?:/[\w.+@-]+)+/?")


def scrub_paths(text: str, here=None) -> str:
    """`text` with every absolute local path replaced: `here` (the model folder itself) by `.`, others by their last
    name. URLs (`https://...`) are left alone (the pattern needs no `:` or `/` before the leading slash)."""
    here_abs = str(Path(here).resolve()) if here else None

    def replace(m):
        path = m.group(0).rstrip("/")
        if here_abs and (path == here_abs or path.startswith(here_abs + "/")):
            rest = path[len(here_abs):].lstrip("/")
            return rest or "."
        return Path(path).name or path

    return _ABSOLUTE.sub(replace, text)
