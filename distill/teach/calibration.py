"""Post-hoc calibration of teacher class distributions: divide out a per-label prior
("Calibrate before use", Zhao et al. 2021), then one temperature fitted on gold labels
(Guo et al. 2017). Pure functions over arrays of shape (items, labels)."""

from __future__ import annotations

import math

import numpy as np

CONTENT_FREE_INPUTS = ("N/A", "[MASK]", "None")
_EPS = 1e-12


def prior_correct(dists: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """q ∝ p / prior, row-normalised. dists: (n, k); prior: (k,)."""
    q = np.clip(dists, _EPS, None) / np.clip(prior, _EPS, None)
    return q / q.sum(-1, keepdims=True)


def apply_temperature(dists: np.ndarray, temperature: float) -> np.ndarray:
    """q ∝ exp(log p / τ): τ > 1 flattens, τ < 1 sharpens."""
    logits = np.log(np.clip(dists, _EPS, None)) / temperature
    logits -= logits.max(-1, keepdims=True)
    q = np.exp(logits)
    return q / q.sum(-1, keepdims=True)


def nll(dists: np.ndarray, gold: np.ndarray) -> float:
    return float(-np.log(np.clip(dists[np.arange(len(gold)), gold], _EPS, None)).mean())


TEMPERATURE_RANGE = (0.05, 20.0)
"""Where ``fit_temperature`` searches τ; ``at_search_bound`` reads the same bounds."""


def fit_temperature(
    dists: np.ndarray, gold: np.ndarray, low: float = TEMPERATURE_RANGE[0], high: float = TEMPERATURE_RANGE[1]
) -> float:
    """τ minimising the NLL of ``gold`` (label indices), by golden-section search on log τ."""
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return nll(apply_temperature(dists, math.exp(log_t)), gold)

    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(60):
        if loss(c) < loss(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return math.exp((a + b) / 2)


def at_search_bound(
    tau: float, low: float = TEMPERATURE_RANGE[0], high: float = TEMPERATURE_RANGE[1]
) -> bool:
    """Whether a fitted τ is one of the search's bounds (the optimum lies at or past it). The
    search's interval shrinks to ~1e-12 of its log width, so a τ this close to a bound is one."""
    tolerance = 1e-6 * (math.log(high) - math.log(low))
    return min(abs(math.log(tau) - math.log(low)), abs(math.log(high) - math.log(tau))) <= tolerance


def calibrate(dists: np.ndarray, prior: list[float] | None, temperature: float | None) -> np.ndarray:
    if prior is not None:
        dists = prior_correct(dists, np.asarray(prior))
    if temperature is not None:
        dists = apply_temperature(dists, temperature)
    return dists
