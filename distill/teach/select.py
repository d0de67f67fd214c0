"""Active teaching: which rows of a pool the teacher is asked about, round by round.

Round 0 asks about ``seed_rows`` seeded random rows. Each later round fits the learner on every
teacher answer so far, scores the rows the teacher has not seen, and asks about the
``per_round`` most uncertain (ties go to the earlier row). The scores, higher = more uncertain:

- margin: 1 − (p₁ − p₂), the top two probabilities (Scheffer et al. 2001);
- entropy: −Σ p log p;
- committee: the mean KL of each member's distribution to the members' mean (the generalised
  Jensen–Shannon divergence; McCallum & Nigam 1998), members fitted on seeded bootstrap resamples;
- random: a seeded random order.

The learner is a proxy (Coleman et al. 2020): softmax regression on fixed embeddings, fitted
on the teacher's soft labels in float64 by L-BFGS, so a round takes about a second and the
same inputs give the same selection. This module is arrays in, indices out; the teach runner
(distill/teach/active.py) feeds it a task's rows and the teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

_EPS = 1e-12

PSEUDO_LABEL = "pseudo_label"
"""``teacher_method`` of a row the teacher never saw, labelled by the selection's learner."""


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """(n, k) → (n,): 1 − (top probability − second)."""
    top = np.sort(probs, axis=-1)
    return 1.0 - (top[:, -1] - top[:, -2])


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """(n, k) → (n,): the entropy in nats."""
    return -(probs * np.log(np.clip(probs, _EPS, None))).sum(-1)


def committee_scores(member_probs: np.ndarray) -> np.ndarray:
    """(members, n, k) → (n,): mean over members of KL(member ‖ members' mean)."""
    mean = member_probs.mean(0, keepdims=True)
    p = np.clip(member_probs, _EPS, None)
    return (member_probs * (np.log(p) - np.log(np.clip(mean, _EPS, None)))).sum(-1).mean(0)


def top_rows(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` candidates (indices into the pool) with the highest scores (one per candidate),
    ties to the earlier row."""
    order = np.lexsort((candidates, -scores))  # primary: score descending; then the row index
    return candidates[order[:k]]


class Proxy:
    """Softmax regression on standardized embeddings, fitted on soft targets with an L2 penalty."""

    def __init__(self, l2: float = 0.3, max_iter: int = 100):
        self.l2, self.max_iter = l2, max_iter

    def fit(self, x: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None) -> Proxy:
        """x: (n, d) embeddings; targets: (n, k) distributions; weights: (n,) row weights."""
        self.mean = x.mean(0)
        self.scale = x.std(0) + 1e-6
        xs = torch.from_numpy((x - self.mean) / self.scale).double()
        y = torch.from_numpy(np.asarray(targets, dtype=np.float64))
        w = (
            torch.ones(len(xs), dtype=torch.float64)
            if weights is None
            else torch.from_numpy(weights).double()
        )
        w = w / w.sum()
        coef = torch.zeros(xs.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [coef, bias], lr=1.0, max_iter=self.max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            logp = (xs @ coef + bias).log_softmax(-1)
            loss = -(w * (y * logp).sum(-1)).sum() + self.l2 * (coef**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.coef, self.bias = coef.detach().numpy(), bias.detach().numpy()
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        logits = ((x - self.mean) / self.scale) @ self.coef + self.bias
        logits -= logits.max(-1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(-1, keepdims=True)


def strategy_scores(
    strategy: str,
    x: np.ndarray,
    labelled: np.ndarray,
    targets: np.ndarray,
    candidates: np.ndarray,
    rng: np.random.Generator,
    committee: int = 5,
    l2: float = 0.3,
) -> tuple[np.ndarray, Proxy | None]:
    """Uncertainty scores of ``candidates`` (pool indices) after fitting on ``labelled`` (pool
    indices, with ``targets`` their teacher distributions), and the fitted proxy (None for random,
    which fits nothing)."""
    if strategy == "random":
        return rng.random(len(candidates)), None
    proxy = Proxy(l2).fit(x[labelled], targets)
    if strategy == "margin":
        return margin_scores(proxy.predict(x[candidates])), proxy
    if strategy == "entropy":
        return entropy_scores(proxy.predict(x[candidates])), proxy
    if strategy == "committee":
        members = []
        for _ in range(committee):
            pick = rng.integers(0, len(labelled), len(labelled))
            members.append(Proxy(l2).fit(x[labelled][pick], targets[pick]).predict(x[candidates]))
        return committee_scores(np.stack(members)), proxy
    raise ValueError(f"unknown selection strategy {strategy!r}")


@dataclass
class Round:
    """One round: the pool rows sent to the teacher, and what the asking cost."""

    index: int
    rows: list[int]
    scores: list[float] | None = None
    """The strategy's score of each row in ``rows`` (None for round 0: seeded random)."""
    answered: int = 0
    failed: int = 0
    cost_usd: float | None = None

    def record(self) -> dict[str, Any]:
        out = {"round": self.index, "rows": len(self.rows), "answered": self.answered, "failed": self.failed}
        if self.scores:
            out["score"] = {
                "min": round(min(self.scores), 4),
                "mean": round(float(np.mean(self.scores)), 4),
                "max": round(max(self.scores), 4),
            }
        if self.cost_usd is not None:
            out["cost_usd"] = round(self.cost_usd, 6)
        return out


@dataclass
class Selection:
    """Where the rounds ended: every row asked, the answers, and why the rounds stopped."""

    rounds: list[Round] = field(default_factory=list)
    targets: dict[int, np.ndarray] = field(default_factory=dict)
    """Pool row → the teacher's distribution, for every row it answered."""
    stopped: str = ""
    proxy: Proxy | None = None
    """The learner fitted on every answer (for pseudo-labels); None for strategy random."""

    @property
    def asked(self) -> list[int]:
        return [i for r in self.rounds for i in r.rows]


Ask = Callable[[list[int]], tuple[dict[int, np.ndarray], int, float | None]]
"""Pool rows → (row → the teacher's distribution for those it answered, rows it failed, the
estimated cost of the asking in USD or None)."""


def select(
    x: np.ndarray,
    ask: Ask,
    strategy: str,
    seed_rows: int,
    per_round: int,
    budget: int | None,
    seed: int = 0,
    committee: int = 5,
    l2: float = 0.3,
    max_cost: float | None = None,
    done: list[Round] | None = None,
    on_round: Callable[[Round, Selection], None] | None = None,
) -> Selection:
    """Run the rounds over a pool of ``len(x)`` rows with embeddings ``x``.

    ``done``: rounds an interrupted run already finished (its state file); they are asked again
    (the cache answers them without a call) and the selection continues where it stopped, with
    the same random stream. ``on_round`` is called after each round (to save the state).
    A round in which the teacher fails any row ends the rounds (``stopped = "failures"``): the
    rerun resumes at that round once the teacher answers.
    """
    n = len(x)
    cap = n if budget is None else min(budget, n)
    rng = np.random.default_rng(seed)
    sel = Selection()
    spent = 0.0
    done = list(done or [])
    while True:
        asked = sel.asked
        room = cap - len(asked)
        if room <= 0:
            sel.stopped = "budget" if cap < n else "pool"
            break
        if max_cost is not None:
            per_call = spent / len(asked) if asked and spent else 0.0
            if spent >= max_cost:
                sel.stopped = "max_cost"
                break
            if per_call:
                room = min(room, int((max_cost - spent) / per_call))
                if room <= 0:
                    sel.stopped = "max_cost"
                    break
        index = len(sel.rounds)
        if index == 0:
            rows = [int(i) for i in rng.permutation(n)[: min(seed_rows, room)]]
            scores = None
        else:
            labelled = np.array(sorted(sel.targets))
            seen = set(asked)
            candidates = np.array([i for i in range(n) if i not in seen])
            got, sel.proxy = strategy_scores(
                strategy,
                x,
                labelled,
                np.stack([sel.targets[i] for i in labelled]),
                candidates,
                rng,
                committee,
                l2,
            )
            chosen = top_rows(got, candidates, min(per_round, room))
            by_row = dict(zip(candidates.tolist(), got.tolist()))
            rows, scores = [int(i) for i in chosen], [by_row[int(i)] for i in chosen]
        if done:
            previous = done.pop(0)
            if previous.rows != rows:
                raise ValueError(
                    f"round {index}: the saved state chose other rows than this run does (the pool, "
                    "the embeddings or the settings changed); delete the state file to start over"
                )
        answers, failed, cost = ask(rows)
        spent += cost or 0.0
        current = Round(index, rows, scores, len(answers), failed, cost)
        sel.rounds.append(current)
        sel.targets.update(answers)
        if on_round:
            on_round(current, sel)
        if failed:
            sel.stopped = "failures"
            break
    if sel.targets and sel.stopped != "failures":
        labelled = np.array(sorted(sel.targets))
        sel.proxy = Proxy(l2).fit(x[labelled], np.stack([sel.targets[i] for i in labelled]))
    return sel
