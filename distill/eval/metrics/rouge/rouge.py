"""ROUGE as a local `evaluate` module over `rouge_score`.

`evaluate.load("rouge")` fetches its script from the hub; this folder is a module
`evaluate.load(path)` accepts offline. Scores are F-measures, mean over pairs.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-1/2/L/Lsum F-measure (mean over pairs), computed with rouge_score."
_KWARGS = """
Args:
    predictions: list of generated texts.
    references: list of reference texts (one per prediction).
    rouge_types: which scores to return (default rouge1, rouge2, rougeL, rougeLsum).
    use_stemmer: Porter-stem words before matching (default True).
Returns: {rouge_type: float}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, rouge_types=None, use_stemmer=True):
        rouge_types = rouge_types or ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        scorer = rouge_scorer.RougeScorer(rouge_types=rouge_types, use_stemmer=use_stemmer)
        totals = {t: 0.0 for t in rouge_types}
        for prediction, reference in zip(predictions, references):
            scores = scorer.score(reference, prediction)
            for t in rouge_types:
                totals[t] += scores[t].fmeasure
        n = max(len(predictions), 1)
        return {t: totals[t] / n for t in rouge_types}
