import io
import math

import pytest
import torch
import torch.multiprocessing

from distill.train.distributed import all_mean
from distill.train.weighting import METHODS, SharedParameters, build_weighting, pcgrad_project

TASKS = ["a", "b"]


def losses_of(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor(a), "b": torch.tensor(b)}


class TwoHeads(torch.nn.Module):
    """A shared linear layer and one linear head per task: L_t = scale_t · mean(head_t(W x)²)."""

    def __init__(self, scales: tuple[float, float] = (1.0, 1.0), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.shared = torch.nn.Linear(4, 4, bias=False)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(4, 1, bias=False) for t in TASKS})
        self.scales = dict(zip(TASKS, scales))

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.shared(x)
        return {t: self.scales[t] * head(h).pow(2).mean() for t, head in self.heads.items()}

    def shared_parameters(self) -> SharedParameters:
        return SharedParameters([self.shared.weight], [self.shared.weight], list(self.parameters()))


def test_static_weights_pass_through():
    static = build_weighting("static", TASKS, {"a": 0.5, "b": 2.0}, seed=0)
    loss, weights = static.combine(losses_of(2.0, 3.0), step=0)
    assert weights == {"a": 0.5, "b": 2.0}
    assert loss.item() == pytest.approx(7.0)
    default = build_weighting("static", TASKS, {"a": 0.5}, seed=0)
    assert default.combine({"b": torch.tensor(3.0)}, step=0)[1] == {"b": 1.0}


def test_uncertainty_gradient_in_log_variance_is_closed_form():
    uw = build_weighting("uncertainty", TASKS, {}, seed=0)
    with torch.no_grad():
        uw.log_variance.copy_(torch.tensor([0.3, -0.7]))
    loss, weights = uw.combine(losses_of(2.0, 5.0), step=0)
    loss.backward()
    expected_grad = [0.5 - 2.0 / (2 * math.exp(0.3)), 0.5 - 5.0 / (2 * math.exp(-0.7))]
    assert uw.log_variance.grad.tolist() == pytest.approx(expected_grad, rel=1e-5)
    assert weights["a"] == pytest.approx(1 / (2 * math.exp(0.3)), rel=1e-6)
    expected_loss = 2.0 / (2 * math.exp(0.3)) + 0.15 + 5.0 / (2 * math.exp(-0.7)) - 0.35
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)


def test_uncertainty_log_variance_is_a_parameter_of_the_module():
    uw = build_weighting("uncertainty", TASKS, {}, seed=0)
    assert [name for name, _ in uw.named_parameters()] == ["log_variance"]
    assert uw.combine({"b": torch.tensor(4.0)}, step=0)[1] == {"b": 0.5}  # s = 0 at init


def test_dwa_weights_from_two_complete_windows():
    dwa = build_weighting("dwa", TASKS, {}, seed=0, window=2, temperature=2.0)
    # Window means: a 2.0 then 1.5 (r = 0.75); b 2.0 then 4.0 (r = 2.0).
    history = [(1.0, 2.0), (3.0, 2.0), (1.0, 4.0), (2.0, 4.0)]
    for step, (a, b) in enumerate(history):
        assert dwa.combine(losses_of(a, b), step)[1] == {"a": 1.0, "b": 1.0}
    loss, weights = dwa.combine(losses_of(1.0, 1.0), step=4)
    # 2·exp(r/T) / Σ exp(r/T), by hand.
    assert weights == pytest.approx({"a": 0.6972902706678915, "b": 1.3027097293321084}, rel=1e-9)
    assert loss.item() == pytest.approx(2.0, rel=1e-6)


def test_rlw_is_a_function_of_seed_and_step():
    rlw = build_weighting("rlw", ["a", "b", "c"], {}, seed=7)
    losses = {t: torch.tensor(1.0) for t in ["a", "b", "c"]}
    first = rlw.combine(losses, step=3)[1]
    again = build_weighting("rlw", ["a", "b", "c"], {}, seed=7).combine(losses, step=3)[1]
    assert first == again
    assert rlw.combine(losses, step=4)[1] != first
    assert build_weighting("rlw", ["a", "b", "c"], {}, seed=8).combine(losses, step=3)[1] != first
    assert sum(first.values()) == pytest.approx(3.0)
    subset = rlw.combine({"a": torch.tensor(1.0), "c": torch.tensor(1.0)}, step=3)[1]
    assert set(subset) == {"a", "c"} and sum(subset.values()) == pytest.approx(2.0)
    assert subset["a"] / subset["c"] == pytest.approx(first["a"] / first["c"])


def test_pcgrad_projects_conflicting_gradients_by_hand():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # g1·g2 = -1
    # g1 - (-1)/2·g2 = (0.5, 0.5); g2 - (-1)/1·g1 = (0, 1).
    for order in ([0, 1], [1, 0]):
        assert torch.allclose(pcgrad_project(grads, order), torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.equal(pcgrad_project(agreeing, [0, 1]), agreeing)


def test_pcgrad_projects_on_the_original_gradients():
    # Three tasks: task 0 conflicts with both others. Projecting on the original g_1 then g_2:
    # g0 = (1,0,0); g1 = (-1,1,0): g0 -> (1,0,0) + 0.5(-1,1,0) = (0.5,0.5,0);
    # g2 = (-1,0,1): (0.5,0.5,0)·g2 = -0.5 -> + 0.25(-1,0,1) = (0.25,0.5,0.25).
    grads = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    projected = pcgrad_project(grads, [1, 2, 0])
    assert torch.allclose(projected[0], torch.tensor([0.25, 0.5, 0.25]))


def test_pcgrad_surrogate_writes_the_projected_sum():
    model = TwoHeads()
    with torch.no_grad():
        model.shared.weight.copy_(torch.eye(4))
        model.heads["a"].weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        model.heads["b"].weight.copy_(torch.tensor([[-1.0, 1.0, 0.0, 0.0]]))
    h = model.shared(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    losses = {t: model.heads[t](h).sum() for t in TASKS}  # linear, unlike TwoHeads.losses
    # ∂L_a/∂W = e0 e0ᵀ, ∂L_b/∂W = (-e0 + e1) e0ᵀ: the 2-D pair above in column 0.
    pcgrad = build_weighting("pcgrad", TASKS, {}, seed=0)
    pcgrad.bind(model.shared_parameters())
    loss, weights = pcgrad.combine(losses, step=0)
    loss.backward()
    expected_shared = torch.zeros(4, 4)
    expected_shared[:2, 0] = torch.tensor([0.5, 1.5])  # (0.5, 0.5) + (0, 1)
    assert torch.allclose(model.shared.weight.grad, expected_shared)
    for t in TASKS:  # heads: plain task gradient h = W e0 = e0
        assert torch.allclose(model.heads[t].weight.grad, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert loss.item() == pytest.approx(sum(v.item() for v in losses.values()))
    assert weights == {"a": 1.0, "b": 1.0}


def test_gradnorm_balances_weighted_gradient_norms():
    model = TwoHeads(scales=(1.0, 10.0))
    with torch.no_grad():  # one head for both tasks, so ∂L_b/∂W = 10·∂L_a/∂W
        model.heads["b"].weight.copy_(model.heads["a"].weight)
    x = torch.randn(8, 4) * 0.5  # ‖g_a‖ ≈ 0.03: converges in ~150 steps of lr·‖g‖
    gradnorm = build_weighting("gradnorm", TASKS, {}, seed=0)
    gradnorm.bind(model.shared_parameters())
    for step in range(200):
        _, weights = gradnorm.combine(model.losses(x), step)
    losses = model.losses(x)
    norms = {
        t: torch.autograd.grad(losses[t], model.shared.weight, retain_graph=True)[0].norm() for t in TASKS
    }
    scaled = [weights[t] * norms[t].item() for t in TASKS]
    assert norms["b"].item() == pytest.approx(10 * norms["a"].item(), rel=1e-5)
    assert abs(scaled[0] - scaled[1]) < 0.1 * max(scaled)
    assert sum(weights.values()) == pytest.approx(2.0)


def test_gradnorm_returns_the_weights_before_its_update():
    model = TwoHeads(scales=(1.0, 10.0))
    gradnorm = build_weighting("gradnorm", TASKS, {}, seed=0)
    gradnorm.bind(model.shared_parameters())
    losses = model.losses(torch.randn(8, 4))
    loss, weights = gradnorm.combine(losses, step=0)
    assert weights == {"a": 1.0, "b": 1.0}
    assert loss.item() == pytest.approx(losses["a"].item() + losses["b"].item())
    # Task b's gradient is 10x larger, so its weight goes down by lr·‖g_b‖ before renormalising.
    assert gradnorm.loss_weights[0] > 1.0 > gradnorm.loss_weights[1]


def test_famo_one_logit_update_matches_the_official_formula():
    famo = build_weighting("famo", TASKS, {}, seed=0)
    _, first = famo.combine(losses_of(1.0, 2.0), step=0)
    # z = (1/2, 1/2), c = Σ z/L = 0.75: weight z_t / (c·L_t).
    assert first == pytest.approx({"a": 2 / 3, "b": 1 / 3}, rel=1e-6)
    _, second = famo.combine(losses_of(0.5, 1.9), step=1)
    # δ = log L(prev) − log L(now); d = ∂softmax/∂w^T δ = z ⊙ (δ − z·δ) at z = (1/2, 1/2).
    delta = [math.log(1.0 / 0.5), math.log(2.0 / 1.9)]
    d = [0.25 * (delta[0] - delta[1]), 0.25 * (delta[1] - delta[0])]
    # Adam's first step (w = 0 so no weight decay term): w ← −lr·d/(|d| + eps).
    logits = [-0.025 * g / (abs(g) + 1e-8) for g in d]
    assert famo.logits.tolist() == pytest.approx(logits, rel=1e-6)
    z = [math.exp(w) / sum(math.exp(v) for v in logits) for w in logits]
    c = z[0] / 0.5 + z[1] / 1.9
    assert second == pytest.approx({"a": z[0] / (c * 0.5), "b": z[1] / (c * 1.9)}, rel=1e-5)


def test_famo_gradient_equals_the_official_objective():
    model = TwoHeads(scales=(1.0, 3.0))
    x = torch.randn(8, 4)
    famo = build_weighting("famo", TASKS, {}, seed=0)
    famo.combine(model.losses(x), step=0)
    losses = model.losses(x * 0.9)
    loss, _ = famo.combine(losses, step=1)
    ours = torch.autograd.grad(loss, model.shared.weight, retain_graph=True)[0]
    z = torch.softmax(famo.logits.detach(), 0)
    gap = torch.stack([losses[t] for t in TASKS]) + 1e-8
    official = (gap.log() * z / (z / gap).sum().detach()).sum()
    assert torch.allclose(ours, torch.autograd.grad(official, model.shared.weight)[0], rtol=1e-5)


@pytest.mark.parametrize("method", ["dwa", "famo", "gradnorm"])
def test_extra_state_round_trip_restores_identical_outputs(method):
    options = {"window": 2} if method == "dwa" else {}
    model = TwoHeads(scales=(1.0, 4.0))
    inputs = [torch.randn(8, 4) for _ in range(10)]

    def fresh():
        weighting = build_weighting(method, TASKS, {}, seed=0, **options)
        weighting.bind(model.shared_parameters())
        return weighting

    original = fresh()
    for step in range(5):
        original.combine(model.losses(inputs[step]), step)
    buffer = io.BytesIO()
    torch.save(original.extra_state(), buffer)
    buffer.seek(0)
    resumed = fresh()
    resumed.load_extra_state(torch.load(buffer, weights_only=True))
    for step in range(5, 10):
        loss, weights = original.combine(model.losses(inputs[step]), step)
        loss_again, weights_again = resumed.combine(model.losses(inputs[step]), step)
        assert weights_again == weights
        assert loss_again.item() == loss.item()
    assert len({tuple(weights.values()), (1.0, 1.0)}) == 2  # the state did move the weights


@pytest.mark.parametrize("method", ["dwa", "famo", "gradnorm"])
def test_history_methods_refuse_a_subset_of_tasks(method):
    weighting = build_weighting(method, TASKS, {}, seed=0)
    assert weighting.needs_every_task
    with pytest.raises(ValueError, match="needs every task"):
        weighting.combine({"a": torch.tensor(1.0)}, step=0)


def test_build_weighting_checks_its_arguments():
    assert {m: build_weighting(m, TASKS, {}, 0).needs_gradients for m in METHODS} == {
        "static": False,
        "uncertainty": False,
        "dwa": False,
        "rlw": False,
        "famo": False,
        "gradnorm": True,
        "pcgrad": True,
    }
    with pytest.raises(ValueError, match="unknown weighting method 'nash'"):
        build_weighting("nash", TASKS, {}, 0)
    with pytest.raises(ValueError, match=r"takes options \['window', 'temperature'\].*\['alpha'\]"):
        build_weighting("dwa", TASKS, {}, 0, alpha=1.0)
    with pytest.raises(ValueError, match=r"\['c'\]"):
        build_weighting("static", TASKS, {"c": 1.0}, 0)
    with pytest.raises(RuntimeError, match="bind"):
        build_weighting("pcgrad", TASKS, {}, 0).combine(losses_of(1.0, 1.0), 0)


def _two_rank_worker(rank: int, folder: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2
    )
    results: dict[str, object] = {"mean": all_mean(torch.tensor([float(rank), 2.0])).tolist()}
    for method in ["dwa", "famo", "gradnorm", "rlw", "pcgrad"]:
        model = TwoHeads(scales=(1.0, 5.0))  # same initial model on both ranks
        weighting = build_weighting(method, TASKS, {}, seed=3, **({"window": 1} if method == "dwa" else {}))
        weighting.bind(model.shared_parameters())
        torch.manual_seed(100 + rank)  # each rank its own batches, so its own local losses
        for step in range(4):
            losses = model.losses(torch.randn(8, 4))
            loss, weights = weighting.combine(losses, step)
        results[method] = weights
        results[f"{method} local loss"] = losses["a"].item()
        if method == "pcgrad":
            loss.backward()
            results["pcgrad shared grad"] = model.shared.weight.grad.clone()
    torch.save(results, f"{folder}/{rank}.pt")
    torch.distributed.destroy_process_group()


def test_weighting_state_agrees_across_two_gloo_ranks(tmp_path):
    torch.multiprocessing.start_processes(
        _two_rank_worker, args=(str(tmp_path),), nprocs=2, start_method="fork"
    )
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["mean"] == ranks[1]["mean"] == [0.5, 2.0]
    for method in ["dwa", "famo", "gradnorm", "rlw", "pcgrad"]:
        assert ranks[0][f"{method} local loss"] != ranks[1][f"{method} local loss"]
        assert ranks[0][method] == ranks[1][method], method
    assert torch.equal(ranks[0]["pcgrad shared grad"], ranks[1]["pcgrad shared grad"])
    assert ranks[0]["dwa"] != {"a": 1.0, "b": 1.0}
