"""Small worlds the project trains itself, to prove SFD offline on a CPU (DESIGN.md section 4)."""

from __future__ import annotations


def world_prompts(meta: dict) -> list[str] | None:
    """All captions of a bundled text world (its forget candidates and retain prompts), or None for other models."""
    if meta.get("world") == "shapes":
        from sfd.core.worlds import shapes

        return [shapes.caption(c, s, t) for t in range(len(shapes.TEMPLATES))
                for c in range(len(shapes.COLOURS)) for s in range(len(shapes.SHAPES))]
    return None


def check_world_concepts(meta: dict, concepts) -> None:
    """One line, before any training, if a --forget concept is not one the bundled world knows: its metrics judge
    the world's own attributes, and a word none of its captions names would train on templates it never saw."""
    if meta.get("world") != "shapes":
        return
    from sfd.kernel.errors import SFDError
    from sfd.core.worlds import shapes

    for c in concepts:
        word = str(c).strip().lower()
        if word in shapes.COLOURS or word in shapes.SHAPES:
            continue
        several = [w for w in word.replace(",", " ").split() if w in shapes.COLOURS or w in shapes.SHAPES]
        hint = (f"give one concept per --forget (e.g. {' '.join('--forget ' + w for w in several)})" if several
                else "none of the world's captions names it")
        raise SFDError(f"--forget {c!r} is not a colour or shape of the shapes world: {hint}; colours: {', '.join(shapes.COLOURS)}; "
                       f"shapes: {', '.join(shapes.SHAPES)}")


def concept_kind(world: str | None, concepts) -> str | None:
    """What the forget concepts are in a bundled world: on the shapes world "colour" or "shape" when they all are
    one; None otherwise (a mix, other words, other models). Baseline presets may differ by kind (sfd/core/config.py)."""
    concepts = list(concepts)
    if world == "shapes" and concepts:
        from sfd.core.worlds import shapes

        for kind, values in (("colour", shapes.COLOURS), ("shape", shapes.SHAPES)):
            if all(c in values for c in concepts):
                return kind
    return None
