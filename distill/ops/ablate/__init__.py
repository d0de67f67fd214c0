"""`distill ablate`: the table the multi-task claim rests on.

On the pipeline's teach outputs and with its train settings (the same step budget), it
trains, once per seed in ``ablate.seeds``:

- ``mtl``: the multi-task student as the pipeline configures it;
- ``single/TASK``: one student per task, trained on that task alone;
- ``gold_only`` (no teacher: gold labels, reference summaries), ``kd_only`` (teacher only, no
  gold) and ``kd_gold`` (soft labels + gold hard labels);
- every variant in ``ablate.variants`` (--set overrides, e.g. a weighting method).

Each student is scored on the same test rows; the teacher is scored once. Per task and system
the table gives the mean ± std over seeds of the headline metric (accuracy, ROUGE-L) and a 95%
two-level bootstrap interval: each replicate resamples the seeds, then the test rows, so both
the training noise (seeds) and the sampling noise (rows) widen it. Per task it says whether
the multi-task student beat the single-task one beyond that noise: the same two-level
interval of their difference (rows paired) excludes 0. Every system gets the same step
budget (``train.steps`` is required), so with sampling ``all`` each task sees as many batches
in the multi-task student as in its single-task one. A finished (system, seed) keeps its
scores in ``ablation/SYSTEM/seedN/scores.json`` and is not trained again on a rerun of the
same train and eval settings.

``ablate.train_rows`` repeats the whole table per train size N: every student learns from the
same seeded N rows of each task (nested: a seed's 50 rows lie inside its 200), with the step
budget of that size (``ablate.epochs``), so the table says in which regime sharing pays.
``--jobs N`` trains N (system, seed) pairs at once, one process each (the cores split among
them); a pair's record is the same either way, and the table reports each system's wall time.
"""

from distill.ops.ablate.jobs import BASELINES, Job, System, run, systems, train_job
from distill.ops.ablate.table import markdown, replicate_means, tabulate, verdicts

__all__ = [
    "BASELINES",
    "Job",
    "System",
    "markdown",
    "replicate_means",
    "run",
    "systems",
    "tabulate",
    "train_job",
    "verdicts",
]
