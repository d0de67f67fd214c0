import json

import numpy as np
import pytest

from distill.core.config.loader import field_docs
from distill.core.config.teach import CalibrationConfig
from distill.core.layout import output_path
from distill.pipeline import load as load_pipeline
from distill.teach.calibration import (
    CONTENT_FREE_INPUTS,
    TEMPERATURE_RANGE,
    apply_temperature,
    at_search_bound,
    calibrate,
    fit_temperature,
    prior_correct,
)
from distill.teach.run import run as teach
from tests.conftest import api_pipeline, make_data
from tests.loopback_openai import EXPECTED


def test_prior_correction_makes_the_prior_uniform():
    prior = np.array([0.8, 0.2])
    assert prior_correct(prior[None], prior) == pytest.approx(np.array([[0.5, 0.5]]))
    assert prior_correct(np.array([[0.5, 0.5]]), prior)[0] == pytest.approx([0.2, 0.8])


def test_fitted_temperature_undoes_overconfidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 3)) * 2
    true = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    gold = np.array([rng.choice(3, p=p) for p in true])
    overconfident = apply_temperature(true, 1 / 3)  # logits × 3
    tau = fit_temperature(overconfident, gold)
    assert tau == pytest.approx(3.0, rel=0.15)
    assert calibrate(overconfident, None, tau) == pytest.approx(true, abs=0.06)


def test_the_bound_warning_reads_the_bounds_the_search_ran_over():
    rng = np.random.default_rng(1)
    dists = rng.dirichlet([1, 1, 1], size=300)
    gold = np.array([int(np.argmin(p)) for p in dists])  # anti-informative: τ runs to its top bound
    low, high = TEMPERATURE_RANGE
    tau = fit_temperature(dists, gold)
    assert tau == pytest.approx(high, rel=1e-6) and at_search_bound(tau)
    # narrower bounds: the warning follows them (not a hard-coded 0.051 / 19.9)
    narrow = fit_temperature(dists, gold, 0.5, 2.0)
    assert narrow == pytest.approx(2.0, rel=1e-6) and at_search_bound(narrow, 0.5, 2.0)
    assert not at_search_bound(narrow) and not at_search_bound(1.0, 0.5, 2.0)
    # an optimum at 19.95 is inside the range: the old `not 0.051 < τ < 19.9` called it a bound
    assert not at_search_bound(19.95) and not at_search_bound(0.0505) and at_search_bound(low * (1 + 1e-9))


def test_the_content_free_inputs_are_documented_as_the_code_sends_them():
    doc = field_docs(CalibrationConfig)["prior"]
    listed = doc[doc.index("(") + 1 : doc.index(")")]
    assert listed == ", ".join(f'"{t}"' for t in CONTENT_FREE_INPUTS)


def test_content_free_prior_and_temperature_are_stored_and_applied(tmp_path, tiny_encoder, server):
    path = api_pipeline(tmp_path, tiny_encoder, server.url)
    dev_file = make_data(tmp_path / "dev", seed=1)["reviews"]["test"]  # fresh rows, not the test split
    cfg = load_pipeline(
        path,
        [
            f"tasks.reviews.data.validation={dev_file}",
            "teach.calibration.prior=content_free",
            "teach.calibration.temperature=true",
        ],
    )
    summary = teach(cfg)
    fitted = summary["teacher"]["calibration"]["reviews"]
    assert fitted["prior"] == pytest.approx(EXPECTED["other"])  # "N/A" has no good words
    assert fitted["temperature"] > 0 and fitted["dev_nll"]["after"] <= fitted["dev_nll"]["before"]
    manifest = json.loads((cfg.path / "teach" / "manifest.json").read_text())
    assert manifest["teacher"]["calibration"]["reviews"]["temperature"] == fitted["temperature"]
    for split in ("train", "test", "validation"):
        rows = [json.loads(x) for x in output_path(cfg, "reviews", split).read_text().splitlines()]
        raw = np.array([r["teacher_distribution_raw"] for r in rows])
        want = calibrate(raw, fitted["prior"], fitted["temperature"])
        assert np.array([r["teacher_distribution"] for r in rows]) == pytest.approx(want)
        assert [r["teacher_label"] for r in rows] == [["great", "other"][int(i)] for i in want.argmax(-1)]


def test_pool_mean_prior_is_the_mean_train_answer(tmp_path, tiny_encoder, server):
    cfg = load_pipeline(
        api_pipeline(tmp_path, tiny_encoder, server.url), ["teach.calibration.prior=pool_mean"]
    )
    fitted = teach(cfg)["teacher"]["calibration"]["reviews"]
    rows = [json.loads(x) for x in output_path(cfg, "reviews", "train").read_text().splitlines()]
    raw = np.array([r["teacher_distribution_raw"] for r in rows])
    assert fitted["prior"] == pytest.approx(raw.mean(0).tolist())
    assert fitted["temperature"] is None
    calibrated = np.array([r["teacher_distribution"] for r in rows])
    minority = int(raw.mean(0).argmin())
    assert calibrated.mean(0)[minority] > raw.mean(0)[minority]  # the prior's weaker label gains mass
