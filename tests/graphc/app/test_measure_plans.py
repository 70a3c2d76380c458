"""graphc.app.measure_plans: the summaries of predicted against measured (exact values), the record of other
load, and plans measured on ranks next to their predictions (a tiny GPT-2, slow and distributed)."""

from __future__ import annotations

import itertools
import math

import pytest

from graphc import trace, zoo
from graphc.app.measure_plans import (
    OtherLoad,
    PlanCase,
    error_summary,
    kendall_tau,
    measure_plans,
    predict,
    relative_error,
)
from graphc.ir.errors import ConfigurationError, GraphcError
from placement import CostModel, simulate
from runtime import contiguous_plan, partition, single_device_plan
from runtime.link import LinkSpeed, local_cluster


def brute_force_tau_b(x, y):
    """Kendall's tau-b by its definition: (concordant - discordant) / sqrt((n0 - n1) (n0 - n2))."""
    pairs = list(itertools.combinations(range(len(x)), 2))
    sign = [((x[i] > x[j]) - (x[i] < x[j])) * ((y[i] > y[j]) - (y[i] < y[j])) for i, j in pairs]
    n0 = len(pairs)
    n1 = sum(x[i] == x[j] for i, j in pairs)
    n2 = sum(y[i] == y[j] for i, j in pairs)
    return sum(sign) / math.sqrt((n0 - n1) * (n0 - n2))


def test_kendall_tau_is_one_for_the_same_order_and_minus_one_for_the_opposite():
    assert kendall_tau([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 25.0, 90.0]) == 1.0
    assert kendall_tau([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]) == -1.0


def test_kendall_tau_with_ties_is_tau_b():
    # scipy.stats.kendalltau's documented example: tau-b = -0.47140452079103173
    assert kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-0.47140452079103173, abs=1e-15)
    for x, y in [([3, 1, 2, 2, 5, 4], [1, 1, 3, 2, 6, 5]), ([0, 0, 1, 1], [1, 2, 2, 3]), ([5, 1, 4, 2, 3], [2, 1, 5, 3, 3])]:
        assert kendall_tau(x, y) == pytest.approx(brute_force_tau_b(x, y), abs=1e-12)


def test_kendall_tau_of_a_constant_is_nan_and_unequal_lengths_are_refused():
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ConfigurationError, match="equal length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_relative_error_is_signed_and_refuses_a_measurement_of_zero():
    assert relative_error(110.0, 100.0) == pytest.approx(0.10)
    assert relative_error(80.0, 100.0) == pytest.approx(-0.20)
    with pytest.raises(ConfigurationError, match="positive"):
        relative_error(1.0, 0.0)


def test_error_summary_gives_the_median_of_magnitudes_and_the_signed_worst():
    found = error_summary({"a": 0.02, "b": -0.30, "c": 0.05, "d": -0.01})
    assert found.median_abs == pytest.approx(0.035)  # median of 0.01, 0.02, 0.05, 0.30
    assert (found.worst, found.worst_label) == (-0.30, "b")
    with pytest.raises(ConfigurationError, match="at least one"):
        error_summary({})


def test_other_load_is_a_share_of_cores_and_needs_a_start():
    with pytest.raises(GraphcError, match="before start"):
        OtherLoad().stop()
    load = OtherLoad()
    load.start()
    cores = load.stop()
    assert cores is None or cores >= 0.0


def test_a_plan_case_refuses_an_unknown_schedule():
    with pytest.raises(ConfigurationError, match="unknown schedule 'zigzag'"):
        PlanCase("x", None, None, schedule="zigzag")  # type: ignore[arg-type]


TINY = dict(batch_size=4, size="small", n_layer=2, n_embd=32, n_head=2, seq_len=8, n_positions=8, vocab_size=64, dropout=0.0)


@pytest.mark.slow
@pytest.mark.distributed
def test_plans_are_measured_on_their_ranks_next_to_their_prediction():
    zm = zoo.build("gpt2", **TINY)
    program = trace(zm.model, zm.example_inputs, granularity="module", name="gpt2")
    one = single_device_plan(program.graph)
    micro = trace(zm.model, (zm.example_inputs[0][:2],), granularity="module", name="gpt2")
    pipe = contiguous_plan(program.graph, ["cpu0", "cpu1"], microbatches=2)
    cases = [
        PlanCase("1 device", one, partition(program, one)),
        PlanCase("1f1b x2", pipe, partition(micro.graph_module, pipe, program.graph), schedule="1f1b"),
    ]
    measured = measure_plans(cases, "gpt2", TINY, rounds=2, steps=2, warmup=1)
    assert [len(measured[c.label].samples_ms) for c in cases] == [4, 4]  # 2 rounds x 2 steps
    assert all(t > 0 for c in cases for t in measured[c.label].samples_ms)
    assert set(measured["1 device"].peak_memory_bytes) == {"cpu0"}
    assert set(measured["1f1b x2"].peak_memory_bytes) == {"cpu0", "cpu1"}
    with pytest.raises(ConfigurationError, match="unique"):
        measure_plans([cases[0], cases[0]], "gpt2", TINY)


def test_a_plan_is_predicted_running_its_schedule_without_optimizer_state():
    zm = zoo.build("gpt2", **TINY)
    program = trace(zm.model, zm.example_inputs, granularity="module", name="gpt2")
    cluster = local_cluster(2, LinkSpeed(latency_s=1e-4, bandwidth=1e9))
    cost_model = CostModel(cluster)
    halves = contiguous_plan(program.graph, ["cpu0", "cpu1"])
    case = PlanCase("halves", halves, partition(program, halves))
    assert case.actions.name == "node-order"  # a latency plan's default
    found = predict(case, program.graph, cluster, cost_model)
    expected = simulate(program.graph, cluster, halves.assignment, cost_model, schedule=case.actions, optimizer_state_factor=0.0)
    assert found.step_ms == expected.step_ms > 0
    assert found.peak_memory_bytes == {d: int(expected.peak_memory_bytes[d]) for d in ("cpu0", "cpu1")}
    assert found.busy_ms == {d: expected.busy_ms[d] for d in ("cpu0", "cpu1")}
    with_adam = simulate(program.graph, cluster, halves.assignment, cost_model, schedule=case.actions)
    assert found.peak_memory_bytes["cpu0"] < with_adam.peak_memory_bytes["cpu0"]  # no optimizer state counted
