"""Property tests on random small DAGs: the DP and the ILP return what exhaustive search proves optimal."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement.constraints import InfeasibleError
from placement.pipeline import (
    DeviceClass,
    ThroughputInstance,
    brute_force,
    check_partition,
    contiguous_dp,
    equal_split,
    load_lower_bound,
    noncontiguous_ilp,
)

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def instances(draw, max_nodes: int = 8, replication: bool = False) -> ThroughputInstance:
    """A random DAG of up to ``max_nodes`` nodes with integer costs on 2-3 devices in one or two classes."""
    n = draw(st.integers(2, max_nodes))
    edges = [(i, j) for i in range(n) for j in range(i + 1, min(n, i + 4)) if draw(st.booleans())]
    capacity = draw(st.sampled_from([math.inf, 14.0, 24.0]))
    if replication or not draw(st.booleans()):
        count = draw(st.integers(2, 3))
        classes = [DeviceClass("acc", count, capacity, True, 0.01 if replication else 0.0)]
    else:
        classes = [DeviceClass("acc", draw(st.integers(1, 2)), capacity, True), DeviceClass("cpu", 1, math.inf, False)]
    load = []
    for _ in range(n):
        row = [float(draw(st.integers(0, 20)))]
        if len(classes) == 2:
            row.append(float(draw(st.integers(0, 60))))
            if draw(st.integers(0, 5)) == 0:
                row[0] = math.inf  # CPU only
        load.append(row)
    colocate = []
    if n >= 3 and draw(st.booleans()):
        a, b = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        colocate = [[a, b]]
    return ThroughputInstance(
        names=[f"n{i}" for i in range(n)],
        load=load,
        memory=[float(draw(st.integers(0, 8))) for _ in range(n)],
        edges=edges,
        comm=[float(draw(st.integers(0, 5))) for _ in range(n)],
        classes=classes,
        colocate=colocate,
        param_bytes=[float(draw(st.integers(0, 100))) for _ in range(n)] if replication else [],
        replication=replication,
    )


def optimum(inst: ThroughputInstance, contiguous: bool) -> float:
    try:
        return brute_force(inst, contiguous=contiguous).max_load
    except InfeasibleError:
        return math.inf


@FEW
@given(instances())
def test_dp_equals_brute_force(inst: ThroughputInstance) -> None:
    expected = optimum(inst, contiguous=True)
    if expected == math.inf:
        with pytest.raises(InfeasibleError):
            contiguous_dp(inst)
        return
    dp = contiguous_dp(inst)
    assert dp.max_load == pytest.approx(expected, rel=1e-9, abs=1e-9)
    check_partition(inst, dp.parts, contiguous=True)
    try:  # prefixes of one order are a subset of the chains: worse or infeasible, never better
        prefix = contiguous_dp(inst, exhaustive=False, chunks=4)
    except InfeasibleError:
        return
    assert prefix.max_load >= dp.max_load - 1e-9


@FEWER
@given(instances(max_nodes=7))
def test_ilp_equals_brute_force(inst: ThroughputInstance) -> None:
    for contiguous in (False, True):
        expected = optimum(inst, contiguous)
        if expected == math.inf:
            with pytest.raises(InfeasibleError):
                noncontiguous_ilp(inst, contiguous=contiguous, time_limit_s=20)
            continue
        ilp = noncontiguous_ilp(inst, contiguous=contiguous, time_limit_s=20, workers=1)
        assert ilp.optimal
        assert ilp.max_load == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert ilp.bound <= expected + 1e-9
        check_partition(inst, ilp.parts, contiguous=contiguous)


@FEW
@given(instances())
def test_bounds_order(inst: ThroughputInstance) -> None:
    any_split = optimum(inst, contiguous=False)
    contiguous = optimum(inst, contiguous=True)
    assert any_split <= contiguous
    if any_split < math.inf:
        assert load_lower_bound(inst) <= any_split + 1e-9
    naive = equal_split(inst)
    if naive.stats["fits"] and naive.contiguous:
        assert naive.max_load >= contiguous - 1e-9


@FEWER
@given(instances(max_nodes=6, replication=True))
def test_replicated_dp_equals_brute_force(inst: ThroughputInstance) -> None:
    expected = optimum(inst, contiguous=True)
    if expected == math.inf:
        return
    dp = contiguous_dp(inst)
    assert dp.max_load == pytest.approx(expected, rel=1e-9, abs=1e-9)
    check_partition(inst, dp.parts, contiguous=True)
