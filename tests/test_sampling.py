"""Multi-task task sampling: hand-computed distributions, empirical draws, resume and ranks."""

import pytest

from distill.train.sampling import (
    METHODS,
    SNAPSHOT_EVERY,
    TaskSampler,
    _uniform,
    draw,
    steps_for_epochs,
    task_probabilities,
)

SIZES = [100, 400]


@pytest.mark.parametrize(
    ("method", "progress", "expected"),
    [
        ("proportional", 0.3, [0.2, 0.8]),
        ("temperature", 0.3, [1 / 3, 2 / 3]),  # sqrt weights 10 : 20
        ("uniform", 0.3, [0.5, 0.5]),
        ("annealed", 0.0, [0.2, 0.8]),  # α = 1: proportional
        ("annealed", 0.5, [0.303270, 0.696730]),  # α = 0.6: 1 : 4^0.6 = 1 : 2.297397
        ("annealed", 1.0, [0.431126, 0.568874]),  # α = 0.2: 1 : 4^0.2 = 1 : 1.319508
    ],
)
def test_probabilities_by_hand(method: str, progress: float, expected: list[float]) -> None:
    assert task_probabilities(method, SIZES, progress) == pytest.approx(expected, abs=1e-6)


def test_temperature_option() -> None:
    # T = 1 is proportional; T = 4: fourth roots 100^¼ : 400^¼ = 1 : √2
    assert task_probabilities("temperature", SIZES, 0.0, temperature=1.0) == pytest.approx([0.2, 0.8])
    assert task_probabilities("temperature", SIZES, 0.0, temperature=4.0) == pytest.approx(
        [1 / (1 + 2**0.5), 2**0.5 / (1 + 2**0.5)]
    )


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'all'"):
        task_probabilities("all", SIZES, 0.0)
    with pytest.raises(ValueError, match="not one of"):
        draw("round_robin", SIZES, 0, 0, 10)
    with pytest.raises(ValueError, match="positive"):
        TaskSampler("uniform", [5, 0], 0, 10)
    with pytest.raises(ValueError, match="temperature"):
        task_probabilities("temperature", SIZES, 0.0, temperature=0.0)
    with pytest.raises(ValueError, match="progress"):
        task_probabilities("annealed", SIZES, 1.5)


def test_splitmix64_reference_outputs() -> None:
    # First outputs of SplitMix64 seeded with 0 (Vigna's reference splitmix64.c): a changed
    # constant would silently change every run's task order and break resumes across versions.
    assert _uniform(0, 0) == (0xE220A8397B1DCDAF >> 11) / 2**53
    assert _uniform(0, 1) == (0x6E789E6AA1B965F4 >> 11) / 2**53


def test_golden_draws() -> None:
    got = [draw("proportional", SIZES, 0, s, 100)[0] for s in range(16)]
    assert got == [1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("method", ["proportional", "temperature", "uniform"])
def test_empirical_frequencies(method: str) -> None:
    sizes, steps = [100, 400, 1500], 20_000
    sampler = TaskSampler(method, sizes, seed=3, total_steps=steps)
    counts = sampler.visits(steps)
    assert sum(counts) == steps
    expected = task_probabilities(method, sizes, 0.0)
    assert [c / steps for c in counts] == pytest.approx(expected, abs=0.01)


def test_annealed_moves_from_proportional_toward_alpha_floor() -> None:
    steps, window = 20_000, 2_000
    sampler = TaskSampler("annealed", SIZES, seed=5, total_steps=steps)

    def share_of_small_task(start: int) -> tuple[float, float]:
        drawn = sum(sampler.tasks(s) == [0] for s in range(start, start + window)) / window
        expected = sum(sampler.probabilities(s)[0] for s in range(start, start + window)) / window
        return drawn, expected

    first, first_expected = share_of_small_task(0)  # α ∈ [0.92, 1]: p_0 ∈ [0.200, 0.218]
    last, last_expected = share_of_small_task(steps - window)  # α ∈ [0.2, 0.28]: p_0 ∈ [0.404, 0.431]
    assert first_expected == pytest.approx(0.209, abs=0.001)
    assert last_expected == pytest.approx(0.418, abs=0.001)
    assert first == pytest.approx(first_expected, abs=0.03)
    assert last == pytest.approx(last_expected, abs=0.03)
    assert sampler.expected_visits()[0] == pytest.approx(
        sum(sampler.probabilities(s)[0] for s in range(steps))
    )


@pytest.mark.parametrize("method", ["proportional", "temperature", "annealed", "uniform"])
def test_draws_depend_only_on_seed_and_step(method: str) -> None:
    walked = TaskSampler(method, SIZES, seed=11, total_steps=1000)
    sequence = [walked.tasks(s) for s in range(1000)]
    assert all(len(t) == 1 and t[0] in (0, 1) for t in sequence)
    fresh = TaskSampler(method, SIZES, seed=11, total_steps=1000)  # e.g. another rank, or a resume
    assert fresh.tasks(500) == sequence[500]
    assert [fresh.tasks(s) for s in reversed(range(1000))] == sequence[::-1]
    assert [draw(method, SIZES, 11, s, 1000) for s in range(1000)] == sequence
    other_seed = [TaskSampler(method, SIZES, seed=12, total_steps=1000).tasks(s) for s in range(1000)]
    assert other_seed != sequence


def test_visits_count_earlier_draws_and_survive_a_resume() -> None:
    steps = 3 * SNAPSHOT_EVERY + 100
    walked = TaskSampler("temperature", [30, 70, 200], seed=2, total_steps=steps)
    counts = [0, 0, 0]
    for s in range(steps):
        assert walked.visits(s) == counts
        counts[walked.tasks(s)[0]] += 1
    resumed = TaskSampler("temperature", [30, 70, 200], seed=2, total_steps=steps)
    assert resumed.visits(700) == TaskSampler("temperature", [30, 70, 200], 2, steps).visits(700)
    for s in (700, 2500, 5, 2 * SNAPSHOT_EVERY, 1030, steps - 1):  # out of order: snapshots
        expected = [0, 0, 0]
        for t in range(s):
            expected[walked.tasks(t)[0]] += 1
        assert resumed.visits(s) == expected


def test_all_draws_every_task() -> None:
    sampler = TaskSampler("all", [5, 50, 500], seed=0, total_steps=10)
    assert all(sampler.tasks(s) == [0, 1, 2] for s in range(10))
    assert draw("all", [5, 50, 500], 0, 3, 10) == [0, 1, 2]
    assert sampler.visits(7) == [7, 7, 7]
    assert sampler.expected_visits() == [10.0, 10.0, 10.0]


def test_steps_for_epochs() -> None:
    assert steps_for_epochs("all", [3, 8, 5], 2) == 16
    for method in METHODS[1:]:
        assert steps_for_epochs(method, [3, 8, 5], 2) == 32
