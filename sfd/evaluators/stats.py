"""Rates with 95% intervals: Wilson score intervals, Newcombe's interval of a difference, the exact McNemar test."""

from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """95% Wilson score interval of a proportion k/n (stays inside [0, 1], sensible at k = 0 or n)."""
    if n <= 0:
        return None, None
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 (k = n) the bound is exactly 0 (1); computing it leaves a rounding residue.
    return (0.0 if k == 0 else max(0.0, center - half)), (1.0 if k == n else min(1.0, center + half))


def rate_summary(flags: Sequence[bool]) -> dict:
    n, k = len(flags), int(sum(bool(f) for f in flags))
    lo, hi = wilson_interval(k, n)
    return {"n": n, "flagged": k, "rate": k / n if n else None, "ci_low": lo, "ci_high": hi}


def difference_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Newcombe's hybrid score interval for p1 - p2 (method 10 of Newcombe 1998)."""
    if n1 <= 0 or n2 <= 0:
        return None, None
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(only_a, only_b), n, 0.5).pvalue)


