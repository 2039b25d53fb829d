"""The package's layers, read from the source: every import (at module level and inside functions) goes down or
sideways, and no two files import each other, directly or through others.

    sfd.kernel < sfd.pipelines < sfd.core < sfd.evaluators < sfd.app < sfd.commands

DESIGN.md section 3 says what belongs where. `sfd/__init__.py` holds the version alone; `sfd/__main__.py` is the
`python -m sfd` entry, part of the commands."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kernel", "pipelines", "core", "evaluators", "app", "commands")


def _modules() -> dict[str, Path]:
    out = {}
    for p in (ROOT / "sfd").rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (absolute and relative, wherever the import statement is)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    prefix = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{prefix}.{base}" if base else prefix
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                target = resolve(name)
                # a module importing the package it sits in (its __init__) is not an edge of substance
                if target and target != mod and not mod.startswith(target + "."):
                    targets.add(target)
        graph[mod] = targets
    return graph


def layer(mod: str) -> int:
    parts = mod.split(".")
    if mod == "sfd":
        return -1  # the version string, below everything
    if mod == "sfd.__main__":
        return LAYERS.index("commands")
    assert len(parts) > 1 and parts[1] in LAYERS, f"{mod} is in no layer: put it in one of sfd/{{{','.join(LAYERS)}}}/"
    return LAYERS.index(parts[1])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]; counter[0] += 1; stack.append(start); on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_every_module_sits_in_a_layer():
    for mod in _modules():
        layer(mod)


def test_no_import_runs_up_the_layers():
    up = sorted(f"{m} -> {t}" for m, ts in import_graph().items() for t in ts if layer(t) > layer(m))
    assert not up, "imports that run up the layers:\n  " + "\n  ".join(up)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in found)


def test_the_checks_can_fail():
    """The two checks above see an upward import and a cycle when there is one."""
    graph = {"sfd.kernel.a": {"sfd.core.b"}, "sfd.core.b": {"sfd.kernel.a"}}
    assert cycles(graph) == [["sfd.core.b", "sfd.kernel.a"]]
    assert layer("sfd.kernel.a") < layer("sfd.core.b")
    with pytest.raises(AssertionError, match="in no layer"):
        layer("sfd.stray")
