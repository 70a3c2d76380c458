"""The choice of the microbatch count has an interior optimum once every task pays a fixed overhead."""

from __future__ import annotations

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, Device, Link, Switch
from placement.pipeline.microbatches import choose_microbatches
from placement.problem import make_problem


def _pair_problem():
    devices = [Device(f"d{i}", "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12, op_overhead_s=1e-3) for i in range(2)]
    cluster = Cluster("pair", devices, [Link(d.name, "sw", "pcie", 1e9) for d in devices], [Switch("sw", "pcie_switch", "h")])
    g = Graph("chain", meta={"batch_size": 16})
    for name in ("a", "b"):
        g.add_node(NodeData(name, "op", measured_ms={"X": 8.0}, measured_bwd_ms={"X": 8.0}))
    g.add_edge("a", "b", EdgeData(bytes=0.0))
    return make_problem(g, cluster, objective="throughput")


def test_choose_microbatches_finds_the_interior_optimum() -> None:
    # Two stages of one node each, forward and backward 8 ms on the whole batch, on devices whose ops
    # take at least 1 ms; free transfers. A microbatch's pass takes f = max(8 / m, 1), and a GPipe step
    # (m + S - 1) (f_fwd + f_bwd) = 2 (m + 1) max(8 / m, 1): 32, 24, 20, 18, 34 for m = 1, 2, 4, 8, 16.
    problem = _pair_problem()
    choice = choose_microbatches(problem, {"a": "d0", "b": "d1"})
    assert not choice.stopped_by_wall_clock
    assert choice.step_ms == pytest.approx({m: 2 * (m + 1) * max(8 / m, 1.0) for m in (1, 2, 4, 8, 16)})
    assert choice.microbatches == 8
    assert all(choice.fits.values())


def test_a_passed_deadline_simulates_one_candidate_and_says_so() -> None:
    choice = choose_microbatches(_pair_problem(), {"a": "d0", "b": "d1"}, deadline=0.0)
    assert list(choice.step_ms) == [1] and choice.microbatches == 1
    assert choice.stopped_by_wall_clock
