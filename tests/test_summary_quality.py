"""Whether a student really summarizes: degeneration metrics, Lead baselines and the summary
section of report.md, against hand-computed values."""

import math

import pytest

from distill.eval.metrics.bootstrap import bootstrap_indices
from distill.eval.metrics.summaries import (
    distinct_n,
    distinct_outputs_per_100,
    lead_sentence,
    lead_words,
    repeated_ngram_rate,
    rouge,
    summary_metrics,
)
from distill.eval.report.markdown import markdown


# --- degeneration metrics -----------------------------------------------------------------------
def test_repeated_3gram_rate_by_hand():
    # 4 trigrams (abc, bca, cab, abc), 3 unique: 1 − 3/4.
    assert repeated_ngram_rate(["a b c a b c"]) == pytest.approx(0.25)
    # Lower-cased before counting: the same text in mixed case.
    assert repeated_ngram_rate(["A b C a B c"]) == pytest.approx(0.25)
    # "a a a a a": 3 trigrams, all (a, a, a): 1 − 1/3.
    assert repeated_ngram_rate(["a a a a a"]) == pytest.approx(2 / 3)
    # Mean over texts with a trigram: "one two" has none and is left out, not counted as 0.
    assert repeated_ngram_rate(["a b c a b c", "x y z", "one two"]) == pytest.approx(0.125)
    assert repeated_ngram_rate(["a b a b a b"], n=2) == pytest.approx(1 - 2 / 5)
    assert math.isnan(repeated_ngram_rate(["too short", ""]))


def test_distinct_outputs_per_100_by_hand():
    # Strip and lower-case: "Good food." and " good food. " are one output; "Bad." and "bad" two.
    assert distinct_outputs_per_100(["Good food.", " good food. ", "Bad.", "bad"]) == pytest.approx(75.0)
    assert distinct_outputs_per_100(["same"] * 50) == pytest.approx(2.0)
    assert math.isnan(distinct_outputs_per_100([]))


def test_distinct_2_is_pooled_over_summaries():
    # Bigrams ab, ba, ab | ab, bc: 5 in all, 3 unique. A per-summary mean would be (2/3 + 1)/2.
    assert distinct_n(["a b a b", "a b c"]) == pytest.approx(3 / 5)
    assert distinct_n(["A B", "a b"]) == pytest.approx(1 / 2)  # lower-cased
    assert distinct_n(["a b c d"], n=3) == pytest.approx(1.0)
    assert math.isnan(distinct_n(["one", ""]))


# --- Lead baselines ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("Mr. Smith went to Washington. He sat down.", "Mr. Smith went to Washington."),
        ("Dr. Jones and Mrs. Lee met. Then they left.", "Dr. Jones and Mrs. Lee met."),
        ("The U.S. Senate voted on Monday. It passed.", "The U.S. Senate voted on Monday."),
        ("Use fruit, e.g. Apples, i.e. Red ones. Then eat.", "Use fruit, e.g. Apples, i.e. Red ones."),
        ("Smith et al. Found a gene. Others did not.", "Smith et al. Found a gene."),
        ("George W. Bush spoke. Then he left.", "George W. Bush spoke."),
        ("It rained! Streets flooded.", "It rained!"),
        ("Was it late? 40 people waited.", "Was it late?"),
        ('He said "Go." Then he left.', 'He said "Go."'),
        ('Prices rose 2.5% today. "Too much," they said.', "Prices rose 2.5% today."),
        ("The cedar. Tree of life.", "The cedar."),  # "dr" inside a word is no abbreviation
        ("ends with no capital after. lower case goes on", "ends with no capital after. lower case goes on"),
        ("  one sentence without an end  ", "one sentence without an end"),
    ],
)
def test_lead_sentence(text, first):
    assert lead_sentence(text) == first


def test_lead_words():
    assert lead_words("  The  quick\nbrown fox jumps", 3) == "The quick brown"
    assert lead_words("two words", 5) == "two words"
    assert lead_words("", 3) == ""


# --- summary_metrics -----------------------------------------------------------------------------
LONG = "Prices rose 5% in May. " + "Analysts were surprised. " * 20
ROWS = [
    {
        "document": "Mr. Smith met Dr. Jones in the U.S. capital. They talked for hours.",
        "reference": "Smith met Jones.",  # 3 words
        "teacher_summary": "Smith met Jones in the capital.",
        "teacher_finish_reason": "stop",
    },
    {
        "document": "Rain fell all day! Streets flooded.",
        "reference": "Rain flooded the streets today.",  # 5 words
        "teacher_summary": "Rain fell and streets flooded.",
        "teacher_finish_reason": "length",
    },
    {
        "document": LONG,
        "reference": None,
        "teacher_summary": "Prices rose.",
        "teacher_finish_reason": "stop",
    },
    {
        "document": "The team won the cup.\nFans | cheered loudly.",
        "reference": "The team won the cup again.",  # 6 words
        "teacher_summary": "The team won the cup.",
        "teacher_finish_reason": "stop",
    },
]
PREDICTED = ["Smith met Jones.", "Rain fell.", "Prices rose.", "The team won."]  # e.g. beam search
GREEDY = ["smith met jones smith met jones", "rain rain rain rain", "", " Smith met Jones smith met jones"]
DECODING = {"num_beams": 4, "no_repeat_ngram_size": 3, "length_penalty": 1.0}
REFERENCES = [r["reference"] or "" for r in ROWS]


def metrics(**kwargs):
    return summary_metrics(ROWS, PREDICTED, bootstrap_indices(4, 50, 0), **kwargs)


def test_lead_words_n_is_the_mean_reference_length_over_rows_with_one():
    lead = metrics()["lead"]
    # (3 + 5 + 6) / 3 = 4.67 → 5; counting the row without a reference as 0 words would give 4.
    assert lead["lead_words_n"] == 5
    # rouge1 F of the first 5 words: 2·(3/5·1)/(3/5+1) = 0.75; 2/5 and 2/5 → 0.4
    # (rain, street after stemming); 5 of 5 and 5 of 6 → 10/11. Mean over the three references.
    assert lead["lead_words"]["rouge1"] == pytest.approx((0.75 + 0.4 + 10 / 11) / 3, abs=1e-4)
    resamples = bootstrap_indices(4, 50, 0)
    sentences = [
        "Mr. Smith met Dr. Jones in the U.S. capital.",
        "Rain fell all day!",
        "Prices rose 5% in May.",
        "The team won the cup.",
    ]
    assert lead["lead_sentence"] == rouge(sentences, REFERENCES, resamples)


def test_no_reference_no_lead():
    rows = [{**r, "reference": None} for r in ROWS]
    got = summary_metrics(rows, PREDICTED, bootstrap_indices(4, 10, 0))
    assert got["lead"] == {} and got["student_vs_reference"] == {}


def test_degeneration_is_measured_on_greedy_output():
    got = metrics(student_cut=[False, True, False, True], greedy=GREEDY, decoding=DECODING)
    student, teacher = got["degeneration"]["student"], got["degeneration"]["teacher"]
    # Trigram repeat rates 1/4, 1/2 ("rain rain rain rain": 2 trigrams, 1 unique), none for the
    # empty text, 1/4: mean 1/3.
    assert student["repeated_3gram_rate"] == pytest.approx(1 / 3, abs=1e-4)
    # Rows 1 and 4 are one output after strip + lower: 3 distinct of 4.
    assert student["distinct_outputs_per_100"] == pytest.approx(75.0)
    # Bigrams: 5 + 3 + 0 + 5 = 13; unique: smith met, met jones, jones smith, rain rain.
    assert student["distinct_2"] == pytest.approx(4 / 13, abs=1e-4)
    assert student["mean_words"] == pytest.approx(4.0)  # (6 + 4 + 0 + 6) / 4
    assert student["empty"] == 1 and student["cut"] == 2
    assert teacher == {
        "repeated_3gram_rate": 0.0,
        "distinct_outputs_per_100": 100.0,
        "distinct_2": 1.0,  # 14 bigrams, none repeated
        "mean_words": 4.5,  # (6 + 5 + 2 + 5) / 4
        "empty": 0,
        "cut": 1,
    }
    assert got["degeneration"]["student_to_teacher_length"] == pytest.approx(4.0 / 4.5, abs=1e-4)
    assert got["decoding"] == DECODING
    resamples = bootstrap_indices(4, 50, 0)
    assert got["student_vs_reference_greedy"] == rouge(GREEDY, REFERENCES, resamples)
    assert got["student_vs_reference"] == rouge(PREDICTED, REFERENCES, resamples)


def test_without_greedy_the_prediction_is_the_greedy_output():
    got = metrics()
    assert got["student_vs_reference_greedy"] is None and got["decoding"] is None
    student = got["degeneration"]["student"]
    assert student["repeated_3gram_rate"] == 0.0  # rows 1 and 4: one trigram each, no repeat
    assert student["mean_words"] == pytest.approx(2.5)  # (3 + 2 + 2 + 3) / 4
    assert student["cut"] is None  # not known


def test_examples_and_old_keys():
    got = metrics(greedy=GREEDY)
    assert got["rows"] == 4 and got["teacher_cut_by_length"] == 1
    assert len(got["examples"]) == 4
    assert got["examples"][0] == {
        "document": ROWS[0]["document"],
        "reference": "Smith met Jones.",
        "teacher": "Smith met Jones in the capital.",
        "student": "Smith met Jones.",  # the configured decoding's summary
    }
    assert got["examples"][2]["document"] == LONG[:300] + "…"
    assert got["examples"][2]["reference"] is None


def test_lengths_must_match_the_rows():
    with pytest.raises(ValueError, match="greedy has 3 entries for 4 rows"):
        metrics(greedy=GREEDY[:3])


# --- report.md -----------------------------------------------------------------------------------
def report_with(task):
    return {
        "split": "test",
        "student_training": {"hard_labels": "teacher", "stale": False},
        "bootstrap": {"resamples": 50, "seed": 0, "interval": "95% percentile"},
        "tasks": {"news": task},
        "models": {
            "student": {"parameters": 1e6, "speed": {}},
            "teacher": {"speed": {}},
            "compression": None,
        },
        "gates": {},
    }


def test_markdown_summary_section():
    m = metrics(student_cut=[False, True, False, True], greedy=GREEDY, decoding=DECODING)
    text = markdown(report_with(m))
    labels = [
        "teacher vs reference",
        "student vs reference",
        "student (greedy) vs reference",
        "Lead sentence vs reference",
        "Lead-5 words vs reference",
        "student vs teacher",
    ]
    at = [text.index(f"| news | {label} | ") for label in labels]
    assert at == sorted(at)  # in this order
    r1 = m["lead"]["lead_words"]
    lo, hi = r1["rouge1_ci95"]
    assert f"| news | Lead-5 words vs reference | {r1['rouge1']:.3f} [{lo:.3f}, {hi:.3f}] |" in text
    assert "| news | teacher | 0.000 | 100.0 | 1.000 | 4.5 | 0 | 1 |" in text
    assert "| news | student | 0.333 | 75.0 | 0.308 | 4.0 | 1 | 2 |" in text
    assert "measured on plain greedy output" in text
    assert "- news: student decoding num_beams=4, no_repeat_ngram_size=3, length_penalty=1.0;" in text
    assert "student/teacher length 0.889" in text
    # Examples: the document's newline collapsed and its pipe escaped; no reference shown as such.
    assert "## Summary examples" in text and "### news" in text
    assert "   - **document**: The team won the cup. Fans \\| cheered loudly." in text
    assert "   - **reference**: (none)" in text
    assert "   - **student**: The team won." in text


def test_markdown_reads_an_older_summary_report():
    old = {
        "rows": 4,
        "student_vs_reference": rouge(PREDICTED, REFERENCES, bootstrap_indices(4, 10, 0)),
        "teacher_vs_reference": {},
        "student_vs_teacher": {},
        "teacher_cut_by_length": 0,
        "examples": [{"student": "s one", "teacher": "t one"}],
    }
    text = markdown(report_with(old))
    assert "| news | student vs reference | " in text and "Lead" not in text
    assert "repeated 3-grams" not in text  # no degeneration table without its numbers
    assert "   - **teacher**: t one" in text and "**document**" not in text
