"""The run state of an audit (sfd/evaluators/audit.py): the folder's files (audit.json, images.jsonl and each rank's
records), resuming a stopped run, the image jobs and their batches, and the split of the batches across processes
(`Shard`). The rules they implement are stated in audit.py's docstring."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from sfd.kernel.errors import SFDError

from sfd.evaluators.prompt_sets import PromptItem

STATE_NAME = "audit.json"
RECORDS_NAME = "images.jsonl"
IMAGES_DIR = "images"


def rank_records_name(rank: int) -> str:
    """The records file of one process of a sharded audit (rank 0 writes images.jsonl itself)."""
    return RECORDS_NAME if rank == 0 else f"images.rank{rank}.jsonl"


# ---------------------------------------------------------------------------------------- the run state

def _read_records(path: Path) -> list[dict]:
    """Valid JSON lines of images.jsonl; a line cut short by a kill (or any broken line) is dropped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and {"model_index", "prompt_index", "image", "path", "scores"} <= rec.keys():
            out.append(rec)
    return out


def _rewrite_records(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            keys += _diff_keys(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            keys.append(prefix + k)
    return keys


def prepare_out_dir(out: Path, fingerprint: dict, overwrite: bool, log: Callable[[str], None]) -> list[dict]:
    """Create, reset (--overwrite) or resume the audit folder; returns the finished records to reuse."""
    state = out / STATE_NAME
    if out.exists() and not out.is_dir():
        raise SFDError(f"output path {str(out)!r} exists and is a file")
    if out.is_dir() and any(out.iterdir()):
        if not state.is_file():
            raise SFDError(f"output folder {str(out)!r} exists and is not an audit folder (no {STATE_NAME}); choose another --out")
        if overwrite:
            shutil.rmtree(out)
        else:
            try:
                old = json.loads(state.read_text())["fingerprint"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                raise SFDError(f"{state} is unreadable; pass --overwrite to start the audit over") from None
            old = json.loads(json.dumps(old))
            new = json.loads(json.dumps(fingerprint))
            if old != new:
                diff = ", ".join(_diff_keys(old, new)[:4])
                raise SFDError(f"{out} holds an audit with other settings (differs in: {diff}); pass --overwrite to start over, or choose another --out")
            records = merge_rank_records(out)
            log(f"resuming the audit in {out}: {len(records)} finished image(s) reused (pass --overwrite to start over)")
            return records
    out.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"fingerprint": fingerprint, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
    (out / RECORDS_NAME).touch()
    return []


def merge_rank_records(out: Path) -> list[dict]:
    """Join images.jsonl and every images.rank<r>.jsonl into images.jsonl (records whose PNG exists, each image
    once); the rank files are removed. Returns the joined records."""
    rank_files = sorted(out.glob("images.rank*.jsonl"))
    records, seen = [], set()
    for path in [out / RECORDS_NAME, *rank_files]:
        for r in _read_records(path):
            key = (r["model_index"], r["prompt_index"], r["image"])
            if key not in seen and (out / r["path"]).is_file():
                seen.add(key)
                records.append(r)
    _rewrite_records(out / RECORDS_NAME, records)
    for path in rank_files:
        path.unlink()
    return records


def _read_state(out: Path) -> dict:
    try:
        return json.loads((out / STATE_NAME).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _update_state(out: Path, **entries) -> None:
    state = {**_read_state(out), **entries}
    tmp = out / (STATE_NAME + ".part")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, out / STATE_NAME)


# ----------------------------------------------------------------------------------- the jobs and the shards

@dataclass(frozen=True)
class Job:
    model_index: int
    item: PromptItem
    image: int
    seed: int
    guidance: float | None

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.model_index, self.item.index, self.image)


def image_relpath(job: Job) -> str:
    return f"{IMAGES_DIR}/m{job.model_index}/{job.item.index:05d}_{job.image:03d}_s{job.seed}.png"


class Shard:
    """This process's part of an audit: rank and number of processes (WORLD_SIZE, set by `accelerate launch` or
    `torchrun`), and the few collectives a sharded audit needs. One process: rank 0 of 1, no process group."""

    def __init__(self, device: str):
        from sfd.kernel.distributed import init_from_env, world_size_from_env

        self.world_size = world_size_from_env()
        self.rank = int(os.environ.get("RANK", "0")) if self.world_size > 1 else 0
        self.device = init_from_env(device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def from_main(self, fn: Callable[[], object]):
        """fn() run on rank 0, its result given to every rank; an error there is raised on every rank."""
        if self.world_size == 1:
            return fn()
        box: list = [None]
        error = None
        if self.main:
            try:
                box[0] = ("ok", fn())
            except Exception as e:  # every rank must hear of it, or the others wait forever
                error, box[0] = e, ("error", str(e))
        torch.distributed.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0][0] == "error":
            raise SFDError(box[0][1])
        return box[0][1]

    def gather(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        objs: list = [None] * self.world_size
        torch.distributed.all_gather_object(objs, obj)
        return objs


def _batches(jobs: list[Job], one_step: bool, batch_size: int) -> list[tuple[float | None, list[Job]]]:
    """The batches of one model's pending images, in order: one group for one-step models (guidance plays no part),
    else one group per guidance value (the pipelines take a scalar), the file's order within a group."""
    if one_step:
        groups = [(None, jobs)]
    else:
        groups = [(g, [j for j in jobs if j.guidance == g]) for g in dict.fromkeys(j.guidance for j in jobs)]
    return [(g, group[i : i + batch_size]) for g, group in groups for i in range(0, len(group), batch_size)]


def _merge_timings(per_rank: list[dict], world_size: int) -> dict:
    """One process's timings as they are; several: summed per model (seconds are process-seconds), and each rank's."""
    if world_size == 1:
        return per_rank[0]
    merged: dict = {}
    for label in per_rank[0]:
        rows = [t[label] for t in per_rank if label in t]
        gen = sum(r["generated"] for r in rows)
        busy = sum(r["generate_seconds"] + r["detect_seconds"] for r in rows)
        merged[label] = {"load_seconds": max(r["load_seconds"] for r in rows),
                         "generate_seconds": sum(r["generate_seconds"] for r in rows),
                         "detect_seconds": sum(r["detect_seconds"] for r in rows), "generated": gen,
                         "reused": rows[0]["reused"], "seconds_per_image": busy / gen if gen else None,
                         **({"attack_seconds": rows[0]["attack_seconds"]} if "attack_seconds" in rows[0] else {})}
    merged["processes"] = world_size
    merged["per_rank"] = per_rank
    return merged
