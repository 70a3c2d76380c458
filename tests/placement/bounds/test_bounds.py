"""Lower bounds: critical path, work spread over (heterogeneous) devices, memory."""

from __future__ import annotations

import random

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import (
    Bound,
    Cluster,
    ConfigurationError,
    CostModel,
    Device,
    Link,
    PlacementError,
    Switch,
    lower_bound,
    simulate,
)
from placement.bounds.core import _lp_bound, _two_class_bound


def cluster(kinds: list[str], memory: float = 1e12) -> Cluster:
    devices = [Device(f"d{i}", k, "cpu" if k == "cpu" else "gpu", "h", {"float32": 1e12}, 1e11, memory) for i, k in enumerate(kinds)]
    return Cluster("c", devices, [Link(d.name, "sw", "pcie", 1e9) for d in devices], [Switch("sw", "pcie_switch", "h")])


def chain(times: list[tuple[float, float]], label: str = "X") -> Graph:
    g = Graph("chain")
    for i, (f, b) in enumerate(times):
        g.add_node(NodeData(f"n{i}", "op", measured_ms={label: f}, measured_bwd_ms={label: b}))
        if i:
            g.add_edge(f"n{i - 1}", f"n{i}", EdgeData(bytes=1e6))
    return g


def test_chain_bounds_and_the_simulated_step() -> None:
    g = chain([(1, 2), (2, 3), (3, 4)])
    c = cluster(["X", "X"])
    b = lower_bound(g, c)
    assert b.critical_path_ms == 15
    assert b.work_ms == 7.5
    assert b.step_ms == 15 and b.num_devices == 2
    r = simulate(g, c, dict.fromkeys(g.node_names(), "d0"))
    assert b.ratio(r.step_ms) == 1.0
    inference = lower_bound(g, c, mode="inference")
    assert (inference.critical_path_ms, inference.work_ms) == (6, 3)
    assert lower_bound(g, c, microbatches=3).critical_path_ms == pytest.approx(5)


def test_training_critical_path_goes_forward_then_back() -> None:
    # a -> b, a -> c: the longest chain is F(a) F(b) B(b) B(a) or F(a) F(c) B(c) B(a).
    g = Graph("fork")
    for name, f, b in (("a", 1, 1), ("b", 5, 1), ("c", 1, 10)):
        g.add_node(NodeData(name, "op", measured_ms={"X": f}, measured_bwd_ms={"X": b}))
    g.add_edge("a", "b")
    g.add_edge("a", "c")
    assert lower_bound(g, cluster(["X"] * 3)).critical_path_ms == 1 + 1 + 10 + 1


def test_critical_path_takes_each_node_at_its_fastest_device() -> None:
    g = Graph("g")
    g.add_node(NodeData("a", "op", measured_ms={"X": 4.0, "Y": 1.0}, measured_bwd_ms={"X": 4.0, "Y": 1.0}))
    g.add_node(NodeData("b", "op", measured_ms={"X": 1.0, "Y": 4.0}, measured_bwd_ms={"X": 1.0, "Y": 4.0}))
    g.add_edge("a", "b")
    b = lower_bound(g, cluster(["X", "Y"]))
    assert b.critical_path_ms == 4
    assert b.work_ms == pytest.approx(2)  # a on Y, b on X, each 2 ms of work


def test_two_class_work_bound_splits_the_node_at_the_crossing() -> None:
    # node 1: 1 on A, 3 on B; node 2: 2 on either. A takes node 1 and a quarter of node 2.
    assert _two_class_bound([1, 2], [3, 2], 1, 1) == pytest.approx(1.5)
    assert _two_class_bound([1, 2], [3, 2], 2, 1) == pytest.approx(_lp_bound([(1, 3), (2, 2)], [2, 1]), rel=1e-5)
    inf = float("inf")
    assert _two_class_bound([5, inf], [inf, 3], 1, 1) == 5  # forced each way
    assert _two_class_bound([0, 0], [0, 0], 1, 1) == 0


def test_lp_work_bound_on_three_classes() -> None:
    assert _lp_bound([(3, 3, 3)], [1, 1, 1]) == pytest.approx(1, rel=1e-5)
    assert _lp_bound([(1, 9, 9), (9, 1, 9), (9, 9, 1)], [1, 1, 1]) == pytest.approx(1, rel=1e-5)
    g = Graph("g")
    for i in range(3):
        g.add_node(NodeData(f"n{i}", "op", measured_ms={k: (1.0 if k == f"K{i}" else 9.0) for k in ("K0", "K1", "K2")},
                            measured_bwd_ms={k: 0.0 for k in ("K0", "K1", "K2")}))
    assert lower_bound(g, cluster(["K0", "K1", "K2"])).work_ms == pytest.approx(1, rel=1e-5)


def test_heterogeneous_bound_on_a_preset() -> None:
    c = Cluster.preset("pcie-4gpu")
    g = Graph("g")
    for i in range(8):
        g.add_node(NodeData(f"n{i}", "conv", fwd_flops=1e11, bwd_flops=2e11, bytes_read=1e6))
    b = lower_bound(g, c)
    cm = CostModel(c)
    per_gpu = cm.node_ms(g.node("n0"), "gpu0") + cm.node_ms(g.node("n0"), "gpu0", True)
    per_cpu = cm.node_ms(g.node("n0"), "cpu0") + cm.node_ms(g.node("n0"), "cpu0", True)
    # Fractional spread: 8 nodes over 4 GPUs and a CPU working at its own speed.
    assert b.work_ms == pytest.approx(8 / (4 / per_gpu + 1 / per_cpu))
    assert b.critical_path_ms == pytest.approx(per_gpu)


def test_allowed_kinds_restrict_the_bound() -> None:
    g = chain([(1, 1), (1, 1)], label="X")
    for node in g.nodes():
        node.measured_ms["cpu"] = node.measured_bwd_ms["cpu"] = 10.0
    g.node("n0").allowed_kinds = ["cpu"]
    assert lower_bound(g, cluster(["X", "cpu"])).critical_path_ms == 22
    g.node("n1").allowed_kinds = ["TPU"]
    with pytest.raises(PlacementError, match="node 'n1' may run on \\['TPU'\\]"):
        lower_bound(g, cluster(["X", "cpu"]))


def test_memory_bound_counts_static_state_and_activations() -> None:
    g = Graph("g")
    for i in range(3):
        g.add_node(NodeData(f"n{i}", "op", measured_ms={"X": 1.0}, param_bytes=100.0, activation_bytes=10.0 * (i + 1)))
        if i:
            g.add_edge(f"n{i - 1}", f"n{i}")
    b = lower_bound(g, cluster(["X"] * 4, memory=500))
    # Adam: params + grads + 2 moments = 4 x 300; the chain's activations 10 + 20 + 30.
    assert b.memory_bytes == 1200 + 60
    assert (b.min_devices, b.fits) == (3, True)
    assert lower_bound(g, cluster(["X"] * 2, memory=500)).fits is False
    assert lower_bound(g, cluster(["X"] * 4, memory=300)).fits is False  # one node's 400 fits nowhere
    inference = lower_bound(g, cluster(["X"] * 4, memory=500), mode="inference")
    assert inference.memory_bytes == 300 and inference.min_devices == 1
    assert "needs >= 3 of 4 devices" in b.summary()


def test_bound_is_below_simulated_steps_of_random_plans() -> None:
    c = Cluster.preset("pcie-8gpu-two-sockets")
    rng = random.Random(3)
    g = Graph("g")
    for i in range(60):
        g.add_node(NodeData(f"n{i}", "op", fwd_flops=rng.uniform(1e9, 1e11), bwd_flops=rng.uniform(1e9, 2e11),
                            bytes_read=rng.uniform(1e5, 1e8)))
        for j in rng.sample(range(i), min(i, 2)):
            g.add_edge(f"n{j}", f"n{i}", EdgeData(bytes=rng.uniform(1e4, 1e7)))
    for mode in ("training", "inference"):
        for m in (1, 4):
            bound = lower_bound(g, c, mode=mode, microbatches=m)
            for _ in range(5):
                place = {n: rng.choice(c.device_names) for n in g.node_names()}
                assert simulate(g, c, place, mode=mode, microbatches=m).step_ms >= bound.step_ms


def test_bound_fields_and_errors() -> None:
    b = Bound(2.0, 3.0, 0.0, 1, 1, True, "training", 1)
    assert b.step_ms == 3.0 and b.ratio(6.0) == 2.0
    with pytest.raises(ConfigurationError, match="mode"):
        lower_bound(chain([(1, 1)]), cluster(["X"]), mode="serve")
