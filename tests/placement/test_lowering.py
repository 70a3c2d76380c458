"""The one lowering of graph + cluster + cost model (placement.lowering) and the consumers that share it."""

from __future__ import annotations

import numpy as np
import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import ConfigurationError, CostModel, PlacementError
from placement.cluster import Cluster, Device, Link, Switch
from placement.lowering import Lowered, lower, running_nodes, send_bytes, topological_indices
from placement.pipeline.build import instance_from_problem
from placement.problem import make_problem
from placement.solvers.instance import instance


def cluster(kinds: list[str]) -> Cluster:
    """Devices of the given kinds on one switch; links of 1e9, 2e9, ... bytes/s."""
    devices = [
        Device(
            f"d{i}",
            k,
            "cpu" if k == "cpu" else "gpu",
            "h",
            {"float32": 1e12},
            1e11,
            1e12,
        )
        for i, k in enumerate(kinds)
    ]
    links = [Link(d.name, "sw", "pcie", 1e9 * (i + 1), latency_s=1e-5 * (i + 1)) for i, d in enumerate(devices)]
    return Cluster("c", devices, links, [Switch("sw", "pcie_switch", "h")])


def node(name: str, f: float = 0.0, b: float = 0.0, **fields) -> NodeData:
    """A node that takes ``f`` ms forward and ``b`` ms backward on kind X, twice that on kind Y."""
    return NodeData(
        name,
        "op",
        measured_ms={"X": f, "Y": 2 * f},
        measured_bwd_ms={"X": b, "Y": 2 * b},
        **fields,
    )


def unordered() -> Graph:
    """x (an input) -> a -> c, x -> b -> c, inserted as c, b, x, a: not a topological order."""
    g = Graph("unordered")
    g.add_node(
        node(
            "c",
            3,
            30,
            param_bytes=100,
            buffer_bytes=7,
            activation_bytes=11,
            output_bytes=13,
        )
    )
    g.add_node(node("b", 2, 20, memory_bytes=500, activation_bytes=99))
    g.add_node(NodeData("x", "input", output_bytes=64, measured_ms={"X": 9}))
    g.add_node(node("a", 1, 10, param_bytes=10, activation_bytes=5, output_bytes=6))
    g.add_edge("a", "c", EdgeData(bytes=40, output_index=0))
    g.add_edge("x", "a", EdgeData(bytes=64))
    g.add_edge("x", "b", EdgeData(bytes=64))
    g.add_edge("b", "c", EdgeData(bytes=8))
    return g


def lowered(graph: Graph, kinds: list[str], mode: str = "training", factor: float = 2.0) -> Lowered:
    c = cluster(kinds)
    return lower(graph, c, CostModel(c), mode, factor)


def test_order_edges_inputs_and_times_in_training() -> None:
    lw = lowered(unordered(), ["X", "Y"])
    # Kahn's algorithm over insertion indices c=0, b=1, x=2, a=3: x first, then b (1) before a (3).
    assert lw.names == ["x", "b", "a", "c"]
    assert lw.index == {"x": 0, "b": 1, "a": 2, "c": 3}
    assert lw.dropped == [] and lw.has_bwd and not lw.explicit_backward
    # The graph's edge order (by producer in insertion order: b, x, a), renumbered.
    assert list(zip(lw.src.tolist(), lw.dst.tolist())) == [
        (1, 3),
        (0, 2),
        (0, 1),
        (2, 3),
    ]
    assert lw.nbytes.tolist() == [8, 64, 64, 40]
    assert lw.preds[3] == [(1, 0), (2, 3)] and lw.succs[0] == [(2, 1), (1, 2)]
    assert lw.is_input.tolist() == [True, False, False, False]
    assert lw.needs_grad.tolist() == [False, True, True, True]
    # Times per class (X, Y); the input costs nothing though it gives a measured time.
    assert lw.class_fwd.tolist() == [[0, 0], [2, 4], [1, 2], [3, 6]]
    assert lw.class_bwd.tolist() == [[0, 0], [20, 40], [10, 20], [30, 60]]


def test_memory_in_training_and_inference() -> None:
    training = lowered(unordered(), ["X"], factor=3.0)
    # static: (2 + factor) x params + buffers, or memory_bytes; held: activations (none with memory_bytes).
    assert training.static.tolist() == [0, 500, 5 * 10, 5 * 100 + 7]
    assert training.held.tolist() == [0, 0, 5, 11]
    assert training.param_bytes.tolist() == [0, 0, 10, 100]
    inference = lowered(unordered(), ["X"], mode="inference")
    assert inference.static.tolist() == [0, 500, 10, 107]
    assert inference.held.tolist() == [0, 0, 6, 13]  # outputs; the step is given its input
    assert inference.class_bwd.tolist() == [[0]] * 4


def test_send_bytes_per_producer() -> None:
    g = Graph("fan")
    for name in "pqrs":
        g.add_node(node(name, 1))
    g.add_edge("p", "q", EdgeData(bytes=10, output_index=0))
    g.add_edge("p", "r", EdgeData(bytes=30, output_index=0))
    g.add_edge("p", "s", EdgeData(bytes=5, output_index=1))
    g.add_edge("q", "s", EdgeData(bytes=7))
    lw = lowered(g, ["X"])
    assert lw.send_bytes.tolist() == [35, 7, 0, 0]  # largest per output index, summed
    assert send_bytes([EdgeData(bytes=50), EdgeData(bytes=20, output_index=0)]) == 50  # a whole output covers it


def test_explicit_backward_nodes() -> None:
    g = Graph("explicit")
    g.add_node(node("f0", 1, output_bytes=4, activation_bytes=100))
    g.add_node(node("f1", 2, output_bytes=8))
    g.add_node(NodeData("b1", "op", measured_ms={"X": 5}, is_backward=True))
    g.add_node(NodeData("b0", "op", measured_ms={"X": 6}, is_backward=True))
    g.add_edge("f0", "f1", EdgeData(bytes=4))
    g.add_edge("f1", "b1", EdgeData(bytes=8))
    g.add_edge("b1", "b0", EdgeData(bytes=4))
    training = lowered(g, ["X"])
    assert training.names == ["f0", "f1", "b1", "b0"] and training.dropped == []
    assert not training.has_bwd and training.explicit_backward
    assert training.class_fwd[:, 0].tolist() == [1, 2, 5, 6] and not training.class_bwd.any()
    assert training.held.tolist() == [4, 8, 0, 0]  # outputs: no backward is derived
    inference = lowered(g, ["X"], mode="inference")
    assert inference.names == ["f0", "f1"] and inference.dropped == ["b1", "b0"]
    assert list(zip(inference.src.tolist(), inference.dst.tolist())) == [(0, 1)]


def test_running_nodes_are_the_lowerings_names() -> None:
    """What the schedules run without a cluster: the lowering's nodes, in its order, in either mode."""
    explicit = Graph("explicit")
    for name, backward in (("f0", False), ("b0", True), ("f1", False)):
        explicit.add_node(NodeData(name, "op", is_backward=backward))
    explicit.add_edge("f1", "b0", EdgeData())
    explicit.add_edge("f0", "f1", EdgeData())
    for g in (unordered(), explicit):
        for mode in ("training", "inference"):
            assert running_nodes(g, mode) == lowered(g, ["X"], mode).names
    assert running_nodes(explicit, "inference") == ["f0", "f1"]
    assert running_nodes(unordered()) == ["x", "b", "a", "c"]  # among the ready, first inserted first
    with pytest.raises(ConfigurationError, match="mode must be one of"):
        running_nodes(unordered(), "train")


def test_device_classes_and_routes() -> None:
    g = Graph("two")
    g.add_node(node("a", 1, 1))
    g.add_node(node("b", 4, 4, allowed_kinds=["Y"]))
    g.add_edge("a", "b", EdgeData(bytes=1e6))
    c = cluster(["X", "Y", "X"])
    lw = lower(g, c, CostModel(c))
    assert lw.device_class.tolist() == [0, 1, 0] and lw.classes == [[0, 2], [1]]
    assert lw.fwd.tolist() == [[1, 2, 1], [4, 8, 4]]
    assert lw.kinds_ok.tolist() == [[True, True], [False, True]]
    for a in range(3):
        for b in range(3):
            if a == b:
                assert (lw.lat[a, b], lw.inv_bw[a, b], lw.resources[a][b]) == (0, 0, ())
            else:
                r = c.route(f"d{a}", f"d{b}")
                assert lw.lat[a, b] == 1e3 * r.latency_s and lw.inv_bw[a, b] == 1e3 / r.bandwidth
                assert lw.resources[a][b] == r.resources
    with pytest.raises(ValueError, match="read-only"):
        lw.static[0] = 1.0


def test_topological_indices_and_bad_input() -> None:
    assert topological_indices(4, [3, 2], [0, 1]) == [2, 1, 3, 0]
    assert topological_indices(2, [0, 1], [1, 0]) is None
    g = Graph("cycle")
    g.add_node(node("a"))
    g.add_node(node("b"))
    g.add_edge("b", "a")
    g.add_edge("a", "b")
    with pytest.raises(PlacementError, match="cycle"):
        lowered(g, ["X"])
    with pytest.raises(ConfigurationError, match="mode"):
        lowered(unordered(), ["X"], mode="serving")
    with pytest.raises(ConfigurationError, match="optimizer_state_factor"):
        lowered(unordered(), ["X"], factor=-1)


def test_one_problem_is_lowered_once_for_every_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[Lowered] = []
    priced: list[int] = []
    init, node_times = Lowered.__init__, CostModel.node_times

    def counting_init(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        built.append(self)

    def counting_node_times(self, nodes, *args, **kwargs):
        priced.append(len(nodes))
        return node_times(self, nodes, *args, **kwargs)

    monkeypatch.setattr(Lowered, "__init__", counting_init)
    monkeypatch.setattr(CostModel, "node_times", counting_node_times)
    problem = make_problem(unordered(), cluster(["X", "Y", "X"]), objective="throughput")
    inst = instance(problem)
    pipe = instance_from_problem(problem)
    bound = problem.bound()
    problem.bound(microbatches=2)
    assert len(built) == 1 and built[0] is problem.lowered() is inst.lowered
    assert priced == [
        4,
        4,
    ]  # one pass of the cost model per device class, none by a consumer

    lw = problem.lowered()
    assert inst.static is lw.static and inst.fwd is lw.fwd and inst.names == lw.names
    assert inst.extra == [] and inst.has_bwd
    assert pipe.names == lw.names and pipe.memory == (lw.static + lw.held).tolist()
    assert pipe.load == (lw.class_fwd + lw.class_bwd).tolist()  # the pipeline classes are the speed classes here
    assert pipe.edges == list(zip(lw.src.tolist(), lw.dst.tolist()))
    # The critical path on kind X: forward x, b, c (2 + 3), then backward c, b (30 + 20).
    assert bound.critical_path_ms == 55
    assert np.array_equal(inst.work, lw.fwd + lw.bwd)
