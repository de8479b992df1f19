"""Intervals of the figures the project reports (design §14.4, §7.7): the share of n test objects that
pass a threshold, the difference of two such shares, and the mean of a few numbers.

Used by the study (tools/run_study.py) and the real-frame report (tools/real_frame_report.py).
"""
from __future__ import annotations

import math
import statistics

Z95 = 1.959963984540054  # the normal 97.5 % quantile: two-sided 95 % intervals


def binomial_interval(percent: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % Wilson score interval (%, lo, hi) of an accuracy of `percent` % over n test objects.

    Wilson's interval rather than the normal one: it stays inside [0, 100] and is not empty at 0 %
    or 100 %, where small tests (15 real frames, a student at 0 %) often are. ValueError for n < 1.
    """
    if n < 1:
        raise ValueError(f"an interval needs at least one test object, found n = {n}")
    p = min(max(percent / 100.0, 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100.0 * max(centre - half, 0.0), 100.0 * min(centre + half, 1.0)


def sampling_error(percent_a: float, n_a: int, percent_b: float, n_b: int, z: float = Z95) -> float:
    """Half-width (percentage points) of the 95 % normal interval of the difference of two
    accuracies measured on n_a and n_b test objects: z * sqrt(pa (1 - pa) / n_a + pb (1 - pb) / n_b)."""
    pa, pb = percent_a / 100.0, percent_b / 100.0
    return 100.0 * z * math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)


def t_interval(values, confidence: float = 0.95) -> tuple[float, float] | None:
    """The Student-t interval of the mean of `values` (seed-to-seed differences, per-frame errors);
    None for fewer than 2."""
    from scipy.stats import t

    values = [float(v) for v in values]
    if len(values) < 2:
        return None
    mean, sem = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1)) * sem
    return mean - half, mean + half
