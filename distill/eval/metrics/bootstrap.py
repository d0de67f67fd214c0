"""Bootstrap intervals over a task's eval rows.

Every interval resamples the eval rows (with replacement) through one index matrix per
task, so student and teacher figures computed from the same matrix are paired: each
resample holds the same rows for both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CI_DIGITS = 4


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement; fixed by the seed."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=np.int64)


def percentile_interval(samples: np.ndarray) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of a statistic's resampled values (NaNs, from a resample
    with no usable row, are skipped); None when every resample was NaN."""
    samples = np.asarray(samples, dtype=float)
    if np.isnan(samples).all():
        return None
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return [round(float(lo), CI_DIGITS), round(float(hi), CI_DIGITS)]


def estimate(
    name: str, statistic: Callable[[np.ndarray], float], n: int, resamples: np.ndarray
) -> dict[str, float | list[float] | None]:
    """``{name: statistic(all rows), name_ci95: [lo, hi]}``; ``statistic`` maps row indices to a value."""
    value = statistic(np.arange(n))
    samples = np.array([statistic(idx) for idx in resamples])
    return {name: round(value, CI_DIGITS), f"{name}_ci95": percentile_interval(samples)}


def mean_estimate(
    name: str, per_row: np.ndarray, resamples: np.ndarray
) -> dict[str, float | list[float] | None]:
    """``estimate`` of the mean of a per-row value (NaN rows skipped), vectorised over resamples."""
    value = float(np.nanmean(per_row)) if not np.isnan(per_row).all() else float("nan")
    with np.errstate(invalid="ignore"):
        picked = per_row[resamples]  # (resamples, n)
        counts = (~np.isnan(picked)).sum(-1)
        sums = np.nansum(picked, axis=-1)
        samples = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return {name: round(value, CI_DIGITS), f"{name}_ci95": percentile_interval(samples)}
