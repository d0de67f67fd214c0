"""How many teacher calls does active teaching save? Learning curves of the selection learner
against teacher calls, per strategy and task, on pools the teacher has labelled once.

    distill teach pipelines/active.yaml          # every pool row once, into the cache
    python scripts/bench_active.py pipelines/active.yaml --out runs/bench_active.json

A "teacher call" here is revealing one cached teacher answer of the pool, counted exactly as
``teach.select`` counts a live call (distill/teach/select.py runs the rounds, unchanged). After
every round the learner (the proxy: softmax regression on the frozen student encoder's
embeddings, fitted on the teacher's calibrated distributions) is scored on the eval split:
accuracy against gold and agreement with the teacher. The reference is the same learner fitted
on the whole pool, with a 95% bootstrap interval over the eval rows; the headline is the calls a
strategy needs (mean over seeds) to reach that interval's lower end, as a share of the pool.

Prints a table per task and writes everything to ``--out`` (JSON).

``--confirm CALLS`` then confirms the headline with the real student: per task, the strategy
with the best proxy accuracy at CALLS and random, ``--seeds`` seeds each, and the student on the
whole pool, each a real ``teach`` (the cached answers: no call) and ``train`` of the pipeline's
student (same steps for all), scored on the eval split against gold and the teacher.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distill.core.data import read_jsonl
from distill.core.layout import output_path
from distill.pipeline import load
from distill.tasks import tasks_for
from distill.teach.active import embed
from distill.teach.select import Proxy, select

STRATEGIES = ("random", "margin", "entropy", "committee")


def bootstrap(correct: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), (resamples, len(correct)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def curve_of(x, targets, test_x, gold, teacher, strategy, seed, args):
    points = []

    def score(rnd, sel):
        rows = np.array(sorted(sel.targets))
        pred = Proxy(args.l2).fit(x[rows], targets[rows]).predict(test_x).argmax(-1)
        points.append(
            {
                "calls": len(sel.asked),
                "accuracy": float((pred == gold).mean()),
                "agreement": float((pred == teacher).mean()),
            }
        )

    def ask(rows):
        return {i: targets[i] for i in rows}, 0, None

    select(
        x,
        ask,
        strategy,
        args.seed_rows,
        args.per_round,
        args.budget,
        seed=seed,
        committee=args.committee,
        l2=args.l2,
        on_round=score,
    )
    return points


def reach(curve: list[dict], target: float) -> int | None:
    for p in curve:
        if p["accuracy"] >= target:
            return p["calls"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pipeline")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-rows", type=int, default=50)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--budget", type=int, default=600, help="calls per curve (of the pool)")
    ap.add_argument("--committee", type=int, default=5)
    ap.add_argument("--l2", type=float, default=0.3)
    ap.add_argument("--at", type=float, nargs="+", default=[0.2, 0.4], help="pool shares to compare at")
    ap.add_argument("--tasks", nargs="*", help="only these tasks (default: every classification task)")
    ap.add_argument("--out", default="runs/bench_active.json")
    ap.add_argument("--confirm", type=int, help="calls at which to confirm with the real student")
    args = ap.parse_args()
    cfg = load(args.pipeline)
    split = cfg.eval.split
    report = {"pipeline": args.pipeline, "settings": vars(args), "tasks": {}}
    for task in tasks_for(cfg):
        if not task.selectable or (args.tasks and task.name not in args.tasks):
            continue
        started = time.perf_counter()
        pool = read_jsonl(output_path(cfg, task.name, "train"))
        test = [r for r in read_jsonl(output_path(cfg, task.name, split)) if r["label"] is not None]
        names = task.labels
        targets = np.array([r["teacher_distribution"] for r in pool], dtype=np.float64)
        gold = np.array([names.index(r["label"]) for r in test])
        teacher = np.array([names.index(r["teacher_label"]) for r in test])
        x, test_x = embed(cfg, task, pool), embed(cfg, task, test)
        whole = Proxy(args.l2).fit(x, targets).predict(test_x).argmax(-1)
        whole_correct = (whole == gold).astype(float)
        low, high = bootstrap(whole_correct)
        gold_pool = np.array([names.index(r["label"]) for r in pool if r["label"] is not None])
        out = {
            "pool": len(pool),
            "eval_rows": len(test),
            "teacher_accuracy": float((teacher == gold).mean()),
            "majority": float((gold == np.bincount(gold_pool, minlength=len(names)).argmax()).mean()),
            "whole_pool": {
                "accuracy": float(whole_correct.mean()),
                "interval": [low, high],
                "agreement": float((whole == teacher).mean()),
            },
            "curves": {},
        }
        for strategy in STRATEGIES:
            curves = [
                curve_of(x, targets, test_x, gold, teacher, strategy, s, args) for s in range(args.seeds)
            ]
            calls = [p["calls"] for p in curves[0]]
            acc = np.array([[p["accuracy"] for p in c] for c in curves])
            agr = np.array([[p["agreement"] for p in c] for c in curves])
            mean_curve = [{"calls": c, "accuracy": float(a)} for c, a in zip(calls, acc.mean(0))]
            needed = reach(mean_curve, low)
            to_point = reach(mean_curve, float(whole_correct.mean()))
            out["curves"][strategy] = {
                "calls": calls,
                "accuracy_mean": acc.mean(0).round(4).tolist(),
                "accuracy_std": acc.std(0, ddof=1).round(4).tolist(),
                "agreement_mean": agr.mean(0).round(4).tolist(),
                "agreement_std": agr.std(0, ddof=1).round(4).tolist(),
                "calls_to_whole_pool": needed,
                "share_of_pool": None if needed is None else round(needed / len(pool), 3),
                "calls_to_whole_pool_point": to_point,
            }
        rand = out["curves"]["random"]
        out["compare_at_calls"] = []
        for share in args.at:
            at = min(calls, key=lambda c: abs(c - share * len(pool)))
            j = calls.index(at)
            out["compare_at_calls"].append(at)
            for strategy in STRATEGIES[1:]:
                cur = out["curves"][strategy]
                diff = cur["accuracy_mean"][j] - rand["accuracy_mean"][j]
                noise = 2 * np.sqrt((cur["accuracy_std"][j] ** 2 + rand["accuracy_std"][j] ** 2) / args.seeds)
                cur.setdefault("minus_random", {})[str(at)] = {
                    "diff": round(diff, 4),
                    "two_se": round(float(noise), 4),
                    "beyond_noise": bool(diff > noise),
                }
        out["seconds"] = round(time.perf_counter() - started, 1)
        report["tasks"][task.name] = out
        print_task(task.name, out)
        if args.confirm:
            out["real_student"] = confirm(args, task, out, gold, teacher)
            print_confirm(task.name, out["real_student"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out}")


def confirm(args, task, out: dict, gold: np.ndarray, teacher: np.ndarray) -> dict:
    """The real student at ``args.confirm`` calls: the best proxy strategy there and random over
    the seeds, and the whole pool once; each trained by the pipeline's own train stage."""
    import copy

    from distill.core.config.teach import SelectConfig
    from distill.student.model import load_student
    from distill.teach import run as teach_stage
    from distill.train import run as train_stage

    curves = out["curves"]
    j = curves["random"]["calls"].index(args.confirm)
    best = max(STRATEGIES[1:], key=lambda s: curves[s]["accuracy_mean"][j])
    base = load(args.pipeline)
    base.tasks = [t for t in base.tasks if t.name == task.name]
    results: dict = {"calls": args.confirm, "best_strategy": best, "runs": {}}
    plan = [(s, seed) for s in (best, "random") for seed in range(args.seeds)] + [("all", 0)]
    for strategy, seed in plan:
        cfg = copy.deepcopy(base)
        cfg.run_dir = str(Path(args.out).with_suffix("") / task.name / f"{strategy}-{seed}")
        budget = None if strategy == "all" else args.confirm
        cfg.teach.select = SelectConfig(strategy=strategy, budget=budget, seed=seed, seed_rows=args.seed_rows,
                                        per_round=args.per_round, l2=args.l2)  # fmt: skip
        cfg.train.seed = seed
        started = time.perf_counter()
        teach_stage.run(cfg)
        train_stage.run(cfg)
        student, tokenizer = load_student(cfg.path / "train" / "student")
        test = [r for r in read_jsonl(output_path(cfg, task.name, cfg.eval.split)) if r["label"] is not None]
        pred = task.student_probs(student, tokenizer, test, 32).argmax(-1)
        if strategy == "all":
            whole_pred = pred
        results["runs"].setdefault(strategy, []).append(
            {
                "seed": seed,
                "accuracy": float((pred == gold).mean()),
                "agreement": float((pred == teacher).mean()),
                "seconds": round(time.perf_counter() - started, 1),
            }  # fmt: skip
        )
    whole = results["runs"]["all"][0]["accuracy"]
    whole_low, _ = bootstrap((whole_pred == gold).astype(float))
    results["whole_pool"] = {"accuracy": whole, "interval_low": whole_low}
    for strategy in (best, "random"):
        accs = np.array([r["accuracy"] for r in results["runs"][strategy]])
        results[strategy] = {"mean": round(float(accs.mean()), 4), "std": round(float(accs.std(ddof=1)), 4),
                             "within_whole_pool_interval": bool(accs.mean() >= whole_low)}  # fmt: skip
    b, r = results[best], results["random"]
    noise = 2 * np.sqrt((b["std"] ** 2 + r["std"] ** 2) / args.seeds)
    results["best_minus_random"] = {"diff": round(b["mean"] - r["mean"], 4), "two_se": round(float(noise), 4),
                                    "beyond_noise": bool(b["mean"] - r["mean"] > noise)}  # fmt: skip
    return results


def print_confirm(name: str, res: dict) -> None:
    w, d, best = res["whole_pool"], res["best_minus_random"], res["best_strategy"]
    print(f"\n### {name}: the real student at {res['calls']} calls (whole pool: {w['accuracy']:.3f}, "
          f"interval from {w['interval_low']:.3f})")  # fmt: skip
    print("| strategy | accuracy (mean ± std over seeds) | within the whole pool's interval |")
    print("|---|---|---|")
    for s in (best, "random"):
        print(
            f"| {s} | {res[s]['mean']:.3f} ± {res[s]['std']:.3f} | {res[s]['within_whole_pool_interval']} |"
        )
    print(
        f"{best} − random: {d['diff']:+.3f} (2se {d['two_se']:.3f})"
        + (" beyond the noise" if d["beyond_noise"] else "")
    )


def print_task(name: str, out: dict) -> None:
    w = out["whole_pool"]
    print(
        f"\n## {name}: pool {out['pool']}, eval rows {out['eval_rows']}, majority {out['majority']:.3f}, "
        f"teacher {out['teacher_accuracy']:.3f}, learner on the whole pool {w['accuracy']:.3f} "
        f"[{w['interval'][0]:.3f}, {w['interval'][1]:.3f}] (agreement {w['agreement']:.3f}); "
        f"{out['seconds']} s"
    )
    calls = out["curves"]["random"]["calls"]
    shown = [i for i, c in enumerate(calls) if c in (50, 100, 200, 300, 400, 600) or i == len(calls) - 1]
    ats = out["compare_at_calls"]
    head = " | ".join(f"acc @{calls[i]}" for i in shown)
    vs_head = " | ".join(f"− random @{a}" for a in ats)
    print(f"| strategy | {head} | calls to interval | share | calls to point | {vs_head} |")
    print("|---" * (len(shown) + 4 + len(ats)) + "|")
    for strategy, cur in out["curves"].items():
        cells = [f"{cur['accuracy_mean'][i]:.3f} ± {cur['accuracy_std'][i]:.3f}" for i in shown]
        vs = cur.get("minus_random", {})
        vs_cells = [
            f"{v['diff']:+.3f} (2se {v['two_se']:.3f}){' *' if v['beyond_noise'] else ''}"
            for v in (vs.get(str(a)) for a in ats)
            if v
        ] or [""] * len(ats)
        reached = cur["calls_to_whole_pool"] or "not reached"
        point = cur["calls_to_whole_pool_point"] or "not reached"
        row = [strategy, *cells, str(reached), str(cur["share_of_pool"] or ""), str(point), *vs_cells]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
