"""How many micro-batches a training batch needs: memory available, what a micro-batch costs, and the choice.

SFD's stage-1 presets keep SiD's global batches (512 for SD/SDXL, 256 for SD3/FLUX), which no single device holds
in one pass. The trainer keeps the batch and accumulates gradients over micro-batches; this module says how many:
it measures the peak of one trial micro-batch (CUDA: the allocator's peak; CPU: the process's resident memory)
and picks the smallest count whose micro-batch fits what is available, with a margin. The choice changes only the
order of float reductions, never the maths (gradient accumulation over equal parts is exact otherwise).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from sfd.kernel.errors import SFDError

GIB, MIB = 2**30, 2**20
# One micro-batch may take at most this fraction of what is available. Other processes (another run, the processes
# of a CPU multi-process run) see the same free memory and grow while this one trains; peaks vary between
# micro-batches (allocator caching, fragmentation); and a larger micro-batch is hardly faster (the tiny SDXL's
# 512-row stage-1 iteration on this CPU: 24 s in one micro-batch at 7.7 GiB, 28 s in four at 2.9 GiB). On an 80 GB
# GPU a quarter still leaves a micro-batch 20 GB of activations.
SAFETY = 0.25
TRIAL_ROWS = 4  # rows in the trial micro-batch (when the batch allows): one row's peak is mostly noise on tiny models


class OutOfMemory(SFDError):
    """A training step ran out of memory (the update it was computing is not applied)."""


def valid_counts(n_retain: int, n_forget: int) -> list[int]:
    """Micro-batch counts that split both the retain and the forget rows into equal parts, ascending."""
    g = math.gcd(n_retain, n_forget)
    return [m for m in range(1, g + 1) if g % m == 0]


def choose_micro_batches(per_sample_bytes: float, fixed_bytes: float, available_bytes: float, n_retain: int, n_forget: int,
                         safety: float = SAFETY) -> int:
    """The smallest count in `valid_counts` whose micro-batch fits: fixed + per_sample x rows <= safety x available.

    `fixed_bytes`: memory the step adds whatever its size (gradients, optimizer states still to be allocated);
    `per_sample_bytes`: what each row of a micro-batch adds (activations). If none fits, the largest count (the
    smallest micro-batch): the step's out-of-memory guard then says so. A pure function of its numbers."""
    counts = valid_counts(n_retain, n_forget)
    budget = safety * available_bytes
    for m in counts:
        if fixed_bytes + per_sample_bytes * ((n_retain + n_forget) // m) <= budget:
            return m
    return counts[-1]


def trial_count(n_retain: int, n_forget: int, rows: int = TRIAL_ROWS) -> int:
    """The count whose micro-batch is the trial: the smallest micro-batch with at least `rows` rows."""
    total = n_retain + n_forget
    fits = [m for m in valid_counts(n_retain, n_forget) if total // m >= rows]
    return fits[-1] if fits else 1


# ---------------------------------------------------------------------------------------------- measuring
def _meminfo_kib(key: str, path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup-v2 memory limit (a container's), or None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int:
    """Memory this process can still take: CUDA, the device's free memory plus what torch's cache holds unused;
    CPU, the kernel's MemAvailable (or a container's headroom, if smaller)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    kib = _meminfo_kib("MemAvailable")
    if kib is None:
        import psutil

        avail = int(psutil.virtual_memory().available)
    else:
        avail = kib * 1024
    cg = _cgroup_headroom()
    return min(avail, cg) if cg is not None else avail


def _rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import psutil

        return int(psutil.Process().memory_info().rss)


class PeakMeter:
    """The peak memory a block adds over what was in use when it began (`meter.peak`, bytes).

    CUDA: torch's allocator peak. CPU: the resident set, read by a sampling thread and from the kernel's high-water
    mark (VmHWM) when the block raised it. The mark is not reset (/proc/self/clear_refs would do it) because that
    would also erase the process's earlier peak from what `time -v` and ru_maxrss report."""

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device, self.interval_s = device, interval_s
        self.peak = 0

    @contextlib.contextmanager
    def measure(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - start
            return
        start, hwm0 = _rss_bytes(), _hwm_bytes()
        top = [start]
        stop = threading.Event()

        def sample():
            while not stop.wait(self.interval_s):
                top[0] = max(top[0], _rss_bytes())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
        hwm1 = _hwm_bytes()
        raised = hwm1 if hwm0 is not None and hwm1 is not None and hwm1 > hwm0 else 0
        self.peak = max(top[0], _rss_bytes(), raised) - start


def _hwm_bytes() -> int | None:
    kib = _meminfo_kib("VmHWM", "/proc/self/status")
    return None if kib is None else kib * 1024


def return_freed_memory(device: torch.device) -> None:
    """Hand memory freed by training back: torch's CUDA cache, and on glibc the heap pages `free` keeps (an SD-sized
    iteration's activations are many tensors below malloc's mmap threshold: the resident set stayed at the
    iteration's peak, and whatever came next was added on top)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


# ------------------------------------------------------------------------------------------------ errors
def is_out_of_memory(e: BaseException) -> bool:
    """torch's CUDA out-of-memory error, Python's MemoryError, or the CPU allocator's failure (a RuntimeError)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass(frozen=True)
class Choice:
    """A micro-batch count and why: printed once per run (`line`)."""

    count: int
    rows: int  # rows of this process's batch
    reason: str

    @property
    def line(self) -> str:
        return (f"micro-batches: {self.count} ({self.rows // self.count} of this process's {self.rows} rows each; "
                f"{self.reason})")


def out_of_memory_message(step: int, count: int, n_retain: int, n_forget: int) -> str:
    """One line naming --micro-batches and the counts that would make the micro-batch smaller."""
    larger = [m for m in valid_counts(n_retain, n_forget) if m > count]
    if larger:
        hint = f"pass a larger --micro-batches ({', '.join(map(str, larger[:4]))}{', ...' if len(larger) > 4 else ''} divide the batch)"
    else:
        hint = "--micro-batches cannot split it further: use --lora, a smaller --resolution or a larger device"
    return f"out of memory at step {step + 1} with --micro-batches {count} ({(n_retain + n_forget) // count} rows each); {hint}"
