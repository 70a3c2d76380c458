"""The simulator on hand-built graphs whose exact timeline is known, its invariants on random ones, and
the PipeDream profiles (a single-device step equals the profile's summed forward and backward time)."""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import (
    Cluster,
    ConfigurationError,
    CostModel,
    Device,
    Link,
    PlacementError,
    Switch,
    graph_inputs,
    lower,
    lower_bound,
    simulate,
)

MB = 1e6  # bytes; 1 ms on the 1 GB/s links of the test clusters


def star(n: int = 3, duplex: bool = True, latency: float = 0.0) -> Cluster:
    """``n`` devices of kind X, each on its own 1 GB/s link to one switch."""
    devices = [Device(f"d{i}", "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12) for i in range(n)]
    links = [Link(d.name, "sw", "pcie", 1e9, latency, duplex) for d in devices]
    return Cluster("star", devices, links, [Switch("sw", "pcie_switch", "h")])


def graph(nodes: dict[str, tuple], edges: list[tuple]) -> Graph:
    """nodes: name -> (fwd ms, bwd ms[, activation bytes[, output bytes[, param bytes]]]);
    edges: (src, dst[, bytes])."""
    g = Graph("g")
    for name, spec in nodes.items():
        f, b, act, out, params = (*spec, 0.0, 0.0, 0.0)[:5]
        g.add_node(NodeData(name, "op", measured_ms={"X": f}, measured_bwd_ms={"X": b},
                            activation_bytes=act, output_bytes=out, param_bytes=params))
    for src, dst, *nbytes in edges:
        g.add_edge(src, dst, EdgeData(bytes=nbytes[0] if nbytes else 0.0))
    return g


def events(result, kinds=("forward", "backward", "send", "send_grad")) -> list[tuple]:
    return [(e.kind, e.name, e.microbatch, e.device, round(e.start_ms, 9), round(e.end_ms, 9))
            for e in result.timeline if e.kind in kinds]


# -- exact timelines ------------------------------------------------------------------------------
def test_chain_on_one_device() -> None:
    g = graph({"a": (1, 2), "b": (2, 3), "c": (3, 4)}, [("a", "b", MB), ("b", "c", MB)])
    r = simulate(g, star(), dict.fromkeys("abc", "d0"))
    assert events(r) == [
        ("forward", "a", 0, "d0", 0, 1), ("forward", "b", 0, "d0", 1, 3), ("forward", "c", 0, "d0", 3, 6),
        ("backward", "c", 0, "d0", 6, 10), ("backward", "b", 0, "d0", 10, 13), ("backward", "a", 0, "d0", 13, 15),
    ]
    assert r.step_ms == 15
    assert r.busy_ms["d0"] == 15 and r.busy_ms["d1"] == 0
    assert (r.num_transfers, r.transferred_bytes, r.link_bytes) == (0, 0, {})


def test_chain_across_two_devices() -> None:
    g = graph({"a": (1, 2), "b": (2, 3)}, [("a", "b", 2 * MB)])
    r = simulate(g, star(latency=0.5e-3), {"a": "d0", "b": "d1"})
    assert events(r) == [
        ("forward", "a", 0, "d0", 0, 1),
        ("send", "a", 0, "d1", 1, 4),  # 0.5 + 0.5 ms latency, 2 ms of bytes
        ("forward", "b", 0, "d1", 4, 6),
        ("backward", "b", 0, "d1", 6, 9),
        ("send_grad", "a", 0, "d0", 9, 12),
        ("backward", "a", 0, "d0", 12, 14),
    ]
    assert r.step_ms == 14
    assert r.link_bytes == {"d0--sw": 4 * MB, "d1--sw": 4 * MB}
    assert r.link_busy_ms == {"d0--sw": 6, "d1--sw": 6}
    sends = [e for e in r.timeline if e.kind == "send"]
    assert (sends[0].src_device, sends[0].bytes, sends[0].links) == ("d0", 2 * MB, ("d0--sw", "d1--sw"))
    inference = simulate(g, star(latency=0.5e-3), {"a": "d0", "b": "d1"}, mode="inference")
    assert inference.step_ms == 6 and inference.num_transfers == 1


def test_fork_join_training() -> None:
    g = graph({"a": (1, 2), "b": (2, 4), "c": (1, 2), "d": (1, 2)},
              [("a", "b", MB), ("a", "c", MB), ("b", "d", MB), ("c", "d", MB)])
    r = simulate(g, star(), {"a": "d0", "b": "d0", "c": "d1", "d": "d0"})
    assert events(r) == [
        ("forward", "a", 0, "d0", 0, 1),
        ("send", "a", 0, "d1", 1, 2),
        ("forward", "b", 0, "d0", 1, 3),
        ("forward", "c", 0, "d1", 2, 3),
        ("send", "c", 0, "d0", 3, 4),
        ("forward", "d", 0, "d0", 4, 5),
        ("backward", "d", 0, "d0", 5, 7),
        ("send_grad", "c", 0, "d1", 7, 8),
        ("backward", "b", 0, "d0", 7, 11),
        ("backward", "c", 0, "d1", 8, 10),
        ("send_grad", "a", 0, "d0", 10, 11),
        ("backward", "a", 0, "d0", 11, 13),
    ]
    assert r.step_ms == 13
    assert r.busy_ms == {"d0": 12, "d1": 3, "d2": 0}


def test_two_transfers_sharing_a_link_take_longer_than_one() -> None:
    # p on d0 and q on d1 both send 1 MB to r on d2: both cross the switch -> d2 link.
    nodes = {"p": (1, 0), "q": (1, 0), "r": (1, 0)}
    shared = simulate(graph(nodes, [("p", "r", MB), ("q", "r", MB)]), star(), {"p": "d0", "q": "d1", "r": "d2"}, mode="inference")
    assert events(shared, ("send", "forward")) == [
        ("forward", "p", 0, "d0", 0, 1), ("forward", "q", 0, "d1", 0, 1),
        ("send", "p", 0, "d2", 1, 2), ("send", "q", 0, "d2", 2, 3),  # waits for the shared link
        ("forward", "r", 0, "d2", 3, 4),
    ]
    alone = simulate(graph(nodes, [("p", "r", MB)]), star(), {"p": "d0", "q": "d1", "r": "d2"}, mode="inference")
    assert alone.step_ms == 3 < shared.step_ms == 4
    assert shared.link_bytes["d2--sw"] == 2 * MB and shared.link_busy_ms["d2--sw"] == 2


def test_transfers_on_disjoint_links_overlap() -> None:
    g = graph({"p": (1, 0), "q": (1, 0), "r": (1, 0), "s": (1, 0)}, [("p", "r", MB), ("q", "s", MB)])
    r = simulate(g, star(4), {"p": "d0", "q": "d1", "r": "d2", "s": "d3"}, mode="inference")
    assert [(e.start_ms, e.end_ms) for e in r.timeline if e.kind == "send"] == [(1, 2), (1, 2)]
    assert r.step_ms == 3


@pytest.mark.parametrize("duplex, step", [(True, 3), (False, 4)])
def test_full_duplex_directions_do_not_contend(duplex: bool, step: float) -> None:
    # d0 -> d1 and d1 -> d0 at once: free on a full-duplex link, queued on a half-duplex one.
    g = graph({"p": (1, 0), "q": (1, 0), "r": (1, 0), "s": (1, 0)}, [("p", "r", MB), ("q", "s", MB)])
    r = simulate(g, star(2, duplex=duplex), {"p": "d0", "q": "d1", "r": "d1", "s": "d0"}, mode="inference")
    assert r.step_ms == step


def test_a_tensor_consumed_twice_on_a_device_is_sent_once() -> None:
    g = graph({"p": (1, 1), "q1": (1, 1), "q2": (1, 1)}, [("p", "q1", MB), ("p", "q2", MB)])
    place = {"p": "d0", "q1": "d1", "q2": "d1"}
    r = simulate(g, star(), place, mode="inference")
    assert [e.kind for e in r.timeline].count("send") == 1
    assert (r.num_transfers, r.transferred_bytes) == (1, MB)
    assert r.link_bytes == {"d0--sw": MB, "d1--sw": MB}
    assert r.step_ms == 4  # p [0,1], send [1,2], q1 [2,3], q2 [3,4]
    t = simulate(g, star(), place)
    assert [e.kind for e in t.timeline].count("send_grad") == 1  # gradients summed on d1, sent once
    grad = next(e for e in t.timeline if e.kind == "send_grad")
    last_consumer = max(e.end_ms for e in t.timeline if e.kind == "backward" and e.name in ("q1", "q2"))
    assert grad.start_ms == last_consumer
    assert t.num_transfers == 2


def test_send_bytes_of_several_outputs() -> None:
    g = Graph("g")
    for name in ("p", "a", "b", "c"):
        g.add_node(NodeData(name, "op", measured_ms={"X": 1.0}))
    g.add_edge("p", "a", EdgeData(bytes=MB, output_index=0))
    g.add_edge("p", "b", EdgeData(bytes=2 * MB, output_index=1))
    g.add_edge("p", "c", EdgeData(bytes=MB, output_index=0))
    r = simulate(g, star(), {"p": "d0", "a": "d1", "b": "d1", "c": "d1"}, mode="inference")
    assert r.transferred_bytes == 3 * MB  # outputs 0 and 1, output 0 once


def test_same_device_transfer_is_free() -> None:
    g = graph({"a": (1, 1), "b": (1, 1)}, [("a", "b", 1e12)])
    assert simulate(g, star(), {"a": "d2", "b": "d2"}).step_ms == 4


# -- memory ---------------------------------------------------------------------------------------
def test_training_memory_peaks_when_the_forward_ends() -> None:
    g = graph({"a": (1, 1, 10), "b": (1, 1, 20, 0, 5), "c": (1, 1, 30)}, [("a", "b"), ("b", "c")])
    r = simulate(g, star(), dict.fromkeys("abc", "d0"))
    # static: params 5 + Adam 2 x 5; activations 10 + 20 + 30 alive from F(c) to B(c); b's gradients (5)
    # come at B(b), once c's activation (30) is freed
    assert r.static_memory_bytes["d0"] == 15
    assert r.peak_memory_bytes["d0"] == 15 + 60
    sgd = simulate(g, star(), dict.fromkeys("abc", "d0"), optimizer_state_factor=0.0)
    assert sgd.peak_memory_bytes["d0"] == 5 + 60
    assert simulate(g, star(), dict.fromkeys("abc", "d0"), microbatches=2).peak_memory_bytes["d0"] == 15 + 60
    assert r.over_capacity == []


def test_gradients_are_made_by_the_first_backward_and_kept_to_the_end() -> None:
    # SGD: the parameters of a (40) and c (50) before the step; c's gradients (50) from B(c) on, while
    # every activation is alive (60); a's gradients (40) from B(a) on, beside a's activation and c's
    g = graph({"a": (1, 1, 10, 0, 40), "b": (1, 1, 20), "c": (1, 1, 30, 0, 50)}, [("a", "b"), ("b", "c")])
    r = simulate(g, star(), dict.fromkeys("abc", "d0"), optimizer_state_factor=0.0)
    assert r.static_memory_bytes["d0"] == 90
    assert r.peak_memory_bytes["d0"] == 90 + 60 + 50
    # two microbatches (both forwards first, then microbatch 0's backwards): each node's gradients once,
    # from its first backward; B(a, 0) starts with a's half activation, microbatch 1's (30) and both
    two = simulate(g, star(), dict.fromkeys("abc", "d0"), optimizer_state_factor=0.0, microbatches=2)
    assert two.peak_memory_bytes["d0"] == 90 + 5 + 30 + 50 + 40
    # a's gradients large (100): the peak is B(a), a's activation (50), c's gradients (5) and a's, above the
    # forward's end (100) or B(c) (105)
    late = graph({"a": (1, 1, 50, 0, 100), "b": (1, 1, 20), "c": (1, 1, 30, 0, 5)}, [("a", "b"), ("b", "c")])
    late_peak = simulate(late, star(), dict.fromkeys("abc", "d0"), optimizer_state_factor=0.0).peak_memory_bytes["d0"]
    assert late_peak == 105 + 50 + 5 + 100


def test_a_shared_parameter_is_received_whole_by_every_microbatch() -> None:
    # a on d0 owns a parameter b on d1 uses: the edge carries 40 bytes of activation and the parameter's
    # 100. Two microbatches: each receives 20 + 100 and keeps it until its B(b) ends (b saves both), so
    # d1 holds 240 once both forwards ran; d0 receives 20 + 100 of gradient per microbatch.
    g = graph({"a": (1, 1, 0, 40, 100), "b": (1, 1)}, [])
    g.add_edge("a", "b", EdgeData(bytes=140.0, param_bytes=100.0))
    r = simulate(g, star(), {"a": "d0", "b": "d1"}, microbatches=2, optimizer_state_factor=0.0)
    assert r.transferred_bytes == 2 * 2 * 120  # forward and gradient, per microbatch
    # d1 at B(b, 0)'s start: both received tensors and the gradient of the first (120) as its temporary
    assert r.peak_memory_bytes["d1"] == 240 + 120
    split = graph({"a": (1, 1, 0, 40, 100), "b": (1, 1)}, [("a", "b", 140.0)])  # no parameter: all split
    assert simulate(split, star(), {"a": "d0", "b": "d1"}, microbatches=2, optimizer_state_factor=0.0).peak_memory_bytes["d1"] == 140 + 70


def shared_parameter_graph() -> Graph:
    """u owns a 100-byte parameter that v1 and v2 use too (a cell called at three time steps): the
    edges u -> v1 and u -> v2 carry only the parameter; v1 -> v2 orders them. Every pass takes 1 ms."""
    g = graph({"u": (1, 1, 0, 0, 100), "v1": (1, 1), "v2": (1, 1)}, [("v1", "v2")])
    for user in ("v1", "v2"):
        g.add_edge("u", user, EdgeData(bytes=100.0, param_bytes=100.0))
    return g


def test_the_uses_of_a_shared_parameter_sum_their_gradients_in_one_buffer() -> None:
    # One device: B(v2) [3, 4] makes the parameter's gradient, the buffer (100); B(v1) [4, 5] makes its
    # own and the new sum while the old lives (300); so does B(u) [5, 6] (300). With the parameter: 400.
    # Counting the gradient only from the owner's backward on, as for a parameter used once, said 200.
    g, c = shared_parameter_graph(), star()
    r = simulate(g, c, {"u": "d0", "v1": "d0", "v2": "d0"}, optimizer_state_factor=0.0)
    assert r.peak_memory_bytes["d0"] == 100 + 300
    # the lowering's bound counts those sums: the parameter and its gradient, and the owner's new
    # gradient and sum (or a user's sum beside its gradient), reached here
    lw = lower(g, c, CostModel(c), optimizer_state_factor=0.0)
    assert lw.memory_upper_bound([0, 0, 0])[0] == 100 + 300


def test_a_shared_parameter_gradient_received_from_another_device_is_the_first_sum() -> None:
    # u on d0, its users on d1. d1 receives the parameter (100), B(v2) makes the gradient that is the
    # buffer, B(v1) its own and the new sum beside the old: 100 + 300. d0 receives that sum (100) and
    # keeps it through B(u), which makes its own gradient and the new sum: 100 + 300.
    r = simulate(shared_parameter_graph(), star(), {"u": "d0", "v1": "d1", "v2": "d1"}, optimizer_state_factor=0.0)
    assert r.peak_memory_bytes["d1"] == 100 + 300
    assert r.peak_memory_bytes["d0"] == 100 + 300


def test_inference_memory_frees_an_output_after_its_last_consumer() -> None:
    # a's output (100) lives until both b and c ran; peak right after b: 100 + 10.
    g = graph({"a": (1, 0, 0, 100), "b": (1, 0, 0, 10), "c": (1, 0, 0, 10), "d": (1, 0, 0, 1)},
              [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    r = simulate(g, star(), dict.fromkeys("abcd", "d0"), mode="inference")
    assert r.peak_memory_bytes["d0"] == 110


def test_memory_of_received_activations_and_gradients() -> None:
    g = graph({"a": (1, 1, 10), "b": (1, 1, 20)}, [("a", "b", MB)])
    r = simulate(g, star(), {"a": "d0", "b": "d1"})
    # b's activation, the received input of b and, while B(b) runs, the gradient of that input
    assert r.peak_memory_bytes["d1"] == 20 + MB + MB
    assert r.peak_memory_bytes["d0"] == MB + MB  # a's output, kept until its gradient is back, and that gradient


def test_memory_bytes_is_the_node_footprint() -> None:
    g = Graph("g")
    g.add_node(NodeData("a", "op", measured_ms={"X": 1.0}, memory_bytes=2e12, param_bytes=1e9, activation_bytes=1e9))
    r = simulate(g, star(), {"a": "d0"})
    assert r.peak_memory_bytes["d0"] == r.static_memory_bytes["d0"] == 2e12
    assert r.over_capacity == ["d0"]
    assert "OVER" in r.summary()


# -- microbatches ---------------------------------------------------------------------------------
def test_microbatches_pipeline_inference() -> None:
    g = graph({"a": (2, 0), "b": (2, 0)}, [("a", "b", MB)])
    place = {"a": "d0", "b": "d1"}
    assert simulate(g, star(), place, mode="inference").step_ms == 5
    r = simulate(g, star(), place, mode="inference", microbatches=2)
    assert events(r) == [
        ("forward", "a", 0, "d0", 0, 1), ("send", "a", 0, "d1", 1, 1.5), ("forward", "a", 1, "d0", 1, 2),
        ("forward", "b", 0, "d1", 1.5, 2.5), ("send", "a", 1, "d1", 2, 2.5), ("forward", "b", 1, "d1", 2.5, 3.5),
    ]
    assert r.step_ms == 3.5
    assert r.transferred_bytes == MB and r.num_transfers == 2


def test_microbatches_gpipe_training() -> None:
    g = graph({"a": (2, 4), "b": (2, 4)}, [("a", "b", MB)])
    place = {"a": "d0", "b": "d1"}
    assert simulate(g, star(), place).step_ms == 14
    r = simulate(g, star(), place, microbatches=2)
    assert events(r, ("forward", "backward")) == [
        ("forward", "a", 0, "d0", 0, 1), ("forward", "a", 1, "d0", 1, 2),
        ("forward", "b", 0, "d1", 1.5, 2.5), ("forward", "b", 1, "d1", 2.5, 3.5),
        ("backward", "b", 0, "d1", 3.5, 5.5),  # GPipe: after every forward of the device
        ("backward", "b", 1, "d1", 5.5, 7.5),
        ("backward", "a", 0, "d0", 6, 8), ("backward", "a", 1, "d0", 8, 10),
    ]
    assert r.step_ms == 10


# -- execution order, priorities, explicit graphs -------------------------------------------------
def test_execution_order_is_respected() -> None:
    g = graph({"x": (1, 2), "y": (2, 1)}, [])
    default = simulate(g, star(), {"x": "d0", "y": "d0"})
    assert [e.name for e in default.timeline] == ["x", "y", "y", "x"]
    ordered = simulate(g, star(), {"x": "d0", "y": "d0"}, order={"d0": ["y", "x"]})
    assert [(e.kind, e.name) for e in ordered.timeline] == [
        ("forward", "y"), ("forward", "x"), ("backward", "x"), ("backward", "y")]


def test_an_order_against_the_dependencies_deadlocks() -> None:
    g = graph({"a": (1, 1), "b": (1, 1)}, [("a", "b")])
    with pytest.raises(PlacementError, match="deadlocks.*d0 waits to run the forward of 'b'"):
        simulate(g, star(), {"a": "d0", "b": "d0"}, order={"d0": ["b", "a"]})


@pytest.mark.parametrize(
    "order, message",
    [
        ({"d0": ["a"]}, r"order\['d0'\] leaves out node\(s\) placed there: b"),
        ({"d0": ["a", "b", "a"]}, r"order\['d0'\]\[2\]: node 'a' is listed twice"),
        ({"d1": ["a"]}, r"order\['d1'\]\[0\]: node 'a' is assigned to 'd0'"),
        ({"d0": ["a", "z"]}, r"order\['d0'\]\[1\]: no node 'z'"),
        ({"d7": []}, r"no device 'd7'"),
    ],
)
def test_bad_orders(order: dict, message: str) -> None:
    g = graph({"a": (1, 1), "b": (1, 1)}, [("a", "b")])
    with pytest.raises(PlacementError, match=message):
        simulate(g, star(), {"a": "d0", "b": "d0"}, order=order)


def test_critical_path_priority_runs_the_long_branch_first() -> None:
    # s feeds a short node x and a long chain y -> z: the critical-path priority runs y and z before x,
    # the topological one x first.
    g = graph({"s": (1, 0), "x": (1, 0), "y": (1, 0), "z": (5, 0)}, [("s", "x"), ("s", "y"), ("y", "z")])
    place = dict.fromkeys("sxyz", "d0")
    assert [e.name for e in simulate(g, star(), place, mode="inference").timeline] == ["s", "x", "y", "z"]
    cp = simulate(g, star(), place, mode="inference", priority="critical_path")
    assert [e.name for e in cp.timeline] == ["s", "y", "z", "x"]
    spread = {"s": "d0", "x": "d0", "y": "d0", "z": "d1"}
    assert simulate(g, star(), spread, mode="inference", priority="critical_path").step_ms == 7
    assert simulate(g, star(), spread, mode="inference").step_ms == 8


def test_explicit_backward_nodes_are_simulated_as_given() -> None:
    g = Graph("train")
    for name, ms, bwd in (("f1", 1.0, False), ("f2", 2.0, False), ("g2", 3.0, True), ("g1", 4.0, True)):
        g.add_node(NodeData(name, "layer", measured_ms={"accelerator": ms, "cpu": 10 * ms}, is_backward=bwd))
    for a, b in (("f1", "f2"), ("f2", "g2"), ("g2", "g1"), ("f1", "g1")):
        g.add_edge(a, b, EdgeData(bytes=MB, transfer_ms={"accelerator-cpu": 0.25}))
    c = Cluster.preset("accelerators-cpu", accelerators=2, cpus=1)
    one = simulate(g, c, dict.fromkeys(g.node_names(), "acc0"))
    assert [(e.kind, e.name) for e in one.timeline] == [
        ("forward", "f1"), ("forward", "f2"), ("backward", "g2"), ("backward", "g1")]
    assert one.step_ms == 10
    assert simulate(g, c, dict.fromkeys(g.node_names(), "acc0"), mode="inference").step_ms == 3
    split = simulate(g, c, {"f1": "acc0", "f2": "cpu0", "g2": "cpu0", "g1": "acc0"})
    assert [round(e.duration_ms, 9) for e in split.timeline if e.kind == "send"] == [0.25, 0.25]
    assert split.step_ms == 1 + 0.25 + 20 + 30 + 0.25 + 4


def test_graph_inputs_cost_nothing_and_receive_no_gradient() -> None:
    g = graph({"x": (18, 0), "a": (1, 2)}, [("x", "a", MB)])
    g.meta["input_nodes"] = ["x"]
    r = simulate(g, star(), {"x": "d0", "a": "d1"})
    assert [e.kind for e in r.timeline].count("send_grad") == 0
    assert r.step_ms == 0 + 1 + 1 + 2
    assert r.num_transfers == 1


# -- errors ---------------------------------------------------------------------------------------
def test_errors_name_the_problem() -> None:
    g = graph({"a": (1, 1), "b": (1, 1)}, [("a", "b")])
    with pytest.raises(PlacementError, match="1 node\\(s\\) have no device: b"):
        simulate(g, star(), {"a": "d0"})
    with pytest.raises(PlacementError, match="node 'b' is assigned to 'gpu9', which cluster 'star' lacks"):
        simulate(g, star(), {"a": "d0", "b": "gpu9"})
    with pytest.raises(PlacementError, match="assignment names 'zz'"):
        simulate(g, star(), {"a": "d0", "b": "d0", "zz": "d0"})
    with pytest.raises(ConfigurationError, match="mode must be one of training, inference"):
        simulate(g, star(), {"a": "d0", "b": "d0"}, mode="eval")
    with pytest.raises(ConfigurationError, match="microbatches"):
        simulate(g, star(), {"a": "d0", "b": "d0"}, microbatches=0)
    g.node("b").allowed_kinds = ["cpu"]
    with pytest.raises(PlacementError, match="node 'b' may run on \\['cpu'\\] but is assigned to 'd0'"):
        simulate(g, star(), {"a": "d0", "b": "d0"})
    assert simulate(g, star(), {"a": "d0", "b": "d0"}, check_allowed_kinds=False).step_ms == 4


def test_result_helpers() -> None:
    g = graph({"a": (1, 2), "b": (2, 3)}, [("a", "b", MB)])
    r = simulate(g, star(), {"a": "d0", "b": "d1"})
    assert r.utilization()["d0"] == pytest.approx(3 / r.step_ms)
    trace = r.to_chrome_trace()
    assert len(trace["traceEvents"]) == len(r.timeline) == 6
    assert {e["tid"] for e in trace["traceEvents"]} == {"d0", "d1", "d0 -> d1", "d1 -> d0"}
    assert "training step" in r.summary()


# -- invariants on random graphs ------------------------------------------------------------------
def two_hosts() -> Cluster:
    devices = [Device(f"h{h}/d{i}", "X" if h == 0 else "Y", "gpu", f"h{h}", {"float32": 1e12 * (1 + h)}, 1e11, 1e12)
               for h in range(2) for i in range(2)]
    links = [Link(d.name, f"sw{d.host[1]}", "pcie", 2e9, 1e-4) for d in devices]
    links += [Link("sw0", "net", "ib", 1e9, 1e-4), Link("sw1", "net", "ib", 1e9, 1e-4)]
    switches = [Switch("sw0", "pcie_switch", "h0"), Switch("sw1", "pcie_switch", "h1"), Switch("net", "network")]
    return Cluster("two-hosts", devices, links, switches)


def random_graph(rng: random.Random, n: int) -> Graph:
    g = Graph("random")
    for i in range(n):
        g.add_node(NodeData(f"n{i}", "input" if i == 0 else "op", fwd_flops=rng.uniform(0, 5e9), bwd_flops=rng.choice((0.0, 8e9)),
                            bytes_read=rng.uniform(0, 1e8), activation_bytes=rng.uniform(0, 1e6), output_bytes=rng.uniform(0, 1e6),
                            param_bytes=rng.choice((0.0, 1e5))))
        for j in rng.sample(range(i), min(i, rng.randint(0, 3))):
            g.add_edge(f"n{j}", f"n{i}", EdgeData(bytes=rng.choice((0.0, 1e5, 3e6)), output_index=rng.choice((None, 0, 1))))
    return g


def check_invariants(g: Graph, c: Cluster, result, mode: str, m: int, memory: bool = True) -> None:
    """No device runs two tasks at once, no directional link carries two transfers at once, every
    task starts after its inputs are there, and the step is at least the lower bound; with ``memory``,
    the peaks are those of the timeline (receives at arrival)."""
    compute = [e for e in result.timeline if e.kind in ("forward", "backward")]
    sends = [e for e in result.timeline if e.kind in ("send", "send_grad")]
    tasks_per_mb = len(g) * (2 if mode == "training" else 1)
    assert len(compute) == m * tasks_per_mb
    for dev in c.device_names:
        mine = sorted((e.start_ms, e.end_ms) for e in compute if e.device == dev)
        assert all(a[1] <= b[0] + 1e-9 for a, b in itertools.pairwise(mine)), dev
    per_resource: dict[int, list] = {}
    for e in sends:
        for res in c.route(e.src_device, e.device).resources:
            per_resource.setdefault(res, []).append((e.start_ms, e.end_ms))
    for spans in per_resource.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-9 for a, b in itertools.pairwise(spans))
    at = {(e.kind, e.name, e.microbatch): e for e in compute}
    arrivals = {(e.kind, e.name, e.microbatch, e.device): e.end_ms for e in sends}
    inputs = graph_inputs(g)
    for (kind, name, k), e in at.items():
        if kind == "forward":
            for p in g.predecessors(name):
                ready = at[("forward", p, k)].end_ms
                if at[("forward", p, k)].device != e.device:
                    ready = arrivals[("send", p, k, e.device)]
                assert e.start_ms >= ready - 1e-9
        else:
            assert e.start_ms >= at[("forward", name, k)].end_ms - 1e-9
            if name in inputs:
                continue
            for s in g.successors(name):
                ready = at[("backward", s, k)].end_ms
                if at[("backward", s, k)].device != e.device:
                    ready = arrivals[("send_grad", name, k, e.device)]
                assert e.start_ms >= ready - 1e-9
    assert sum(result.busy_ms.values()) == pytest.approx(sum(e.duration_ms for e in compute))
    if memory:
        assert_memory_matches_the_timeline(g, result, mode, m)
    bound = lower_bound(g, c, mode=mode, microbatches=m)
    assert result.step_ms >= bound.step_ms * (1 - 1e-9)
    assert all(result.peak_memory_bytes[d] >= result.static_memory_bytes[d] for d in c.device_names)


def assert_memory_matches_the_timeline(g: Graph, result, mode: str, m: int) -> None:
    """Recompute each device's peak from the timeline by the documented rules, frees first at ties."""
    at = {(e.kind, e.name, e.microbatch): e for e in result.timeline}
    changes: list[tuple[str, float, float]] = []  # (device, time, bytes)

    def hold(device: str, start: float, end: float, nbytes: float) -> None:
        changes.extend(((device, start, nbytes), (device, end, -nbytes)))

    inputs = graph_inputs(g)
    for e in result.timeline:
        nd = g.node(e.name)
        if e.kind == "backward" and e.name not in inputs:  # the output's and the inputs' gradients
            in_grads = sum(g.edge(p, e.name).bytes for p in g.predecessors(e.name) if p not in inputs)
            local = [s for s in g.successors(e.name) if at[("forward", s, e.microbatch)].device == e.device]
            given = nd.output_bytes if local or nd.is_output else 0.0
            hold(e.device, e.start_ms, e.end_ms, (max(given, in_grads) if nd.is_output else given + in_grads) / m)
        if e.kind == "forward" and e.name in inputs:
            continue  # the step is given its inputs
        if e.kind == "forward":
            if mode == "training":  # its activation, or its output while sent and larger
                sends = [x.bytes for x in result.timeline if x.kind == "send" and x.name == e.name and x.microbatch == e.microbatch]
                kept = max([nd.activation_bytes / m, *sends])
                hold(e.device, e.end_ms, at[("backward", e.name, e.microbatch)].end_ms, kept)
            else:
                local = [at[("forward", s, e.microbatch)] for s in g.successors(e.name)]
                local = [x.end_ms for x in local if x.device == e.device]
                sent = [x.end_ms for x in result.timeline if x.kind == "send" and x.name == e.name and x.microbatch == e.microbatch]
                ends = local + sent
                hold(e.device, e.end_ms, max(ends) if ends else float("inf"), nd.output_bytes / m)
        elif e.kind == "send":
            phase = "backward" if mode == "training" else "forward"
            users = [at[(phase, s, e.microbatch)] for s in g.successors(e.name)]
            hold(e.device, e.end_ms, max(u.end_ms for u in users if u.device == e.device), e.bytes)
        elif e.kind == "send_grad":
            hold(e.device, e.end_ms, at[("backward", e.name, e.microbatch)].end_ms, e.bytes)
            # the sender keeps it to the end, from when its consumers there finished their backward
            users = [at[("backward", s, e.microbatch)] for s in g.successors(e.name)]
            hold(e.src_device, max(u.end_ms for u in users if u.device == e.src_device), float("inf"), e.bytes)
    first_backward: dict[tuple[str, str], float] = {}  # a node's gradients, from its first backward on
    for e in result.timeline:
        if e.kind == "backward" and g.node(e.name).memory_bytes is None:
            key = (e.device, e.name)
            first_backward[key] = min(first_backward.get(key, float("inf")), e.start_ms)
    for (device, name), start in first_backward.items():
        hold(device, start, float("inf"), g.node(name).param_bytes)
    for device, static in result.static_memory_bytes.items():
        level = peak = 0.0
        for _, _, delta in sorted(x for x in changes if x[0] == device):
            level += delta
            peak = max(peak, level)
        assert result.peak_memory_bytes[device] == pytest.approx(static + peak, rel=1e-9, abs=1e-6), device


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(1, 14), m=st.integers(1, 3),
       mode=st.sampled_from(["training", "inference"]), priority=st.sampled_from(["topological", "critical_path"]))
def test_invariants_on_random_graphs(seed: int, n: int, m: int, mode: str, priority: str) -> None:
    rng = random.Random(seed)
    g = random_graph(rng, n)
    c = two_hosts()
    place = {name: rng.choice(c.device_names) for name in g.node_names()}
    result = simulate(g, c, place, mode=mode, microbatches=m, priority=priority)
    check_invariants(g, c, result, mode, m)


@pytest.mark.parametrize("mode", ["training", "inference"])
@pytest.mark.parametrize("m", [1, 3])
def test_a_lowering_given_simulates_as_the_one_made_per_call(mode: str, m: int) -> None:
    """simulate(lowered=) reads the problem's arrays instead of lowering again: the same timeline and
    peaks, on the two-host GPUs and on the local CPU workers (transfers serialised with compute)."""
    for seed, c in itertools.product(range(6), [two_hosts(), Cluster.resolve("local")]):
        rng = random.Random(seed)
        g = random_graph(rng, 12)
        cm = CostModel(c)
        lw = lower(g, c, cm, mode)
        place = {name: rng.choice(c.device_names) for name in g.node_names()}
        for priority in ("topological", "critical_path"):
            mine = simulate(g, c, place, cm, mode=mode, microbatches=m, priority=priority)
            shared = simulate(g, c, place, cm, mode=mode, microbatches=m, priority=priority, lowered=lw)
            assert shared.timeline == mine.timeline
            assert (shared.step_ms, shared.peak_memory_bytes) == (mine.step_ms, mine.peak_memory_bytes)


def test_a_lowering_of_something_else_is_refused() -> None:
    rng = random.Random(0)
    g, c = random_graph(rng, 5), two_hosts()
    cm = CostModel(c)
    place = dict.fromkeys(g.node_names(), c.device_names[0])
    with pytest.raises(ConfigurationError, match="another mode"):
        simulate(g, c, place, cm, mode="inference", lowered=lower(g, c, cm, "training"))
    with pytest.raises(ConfigurationError, match="another graph"):
        simulate(g, c, place, cm, lowered=lower(random_graph(rng, 5), c, cm))
    with pytest.raises(ConfigurationError, match="another cost model"):
        simulate(g, c, place, CostModel(c), lowered=lower(g, c, cm))


def test_a_large_random_graph_on_sixteen_hosts() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from simulate_scaling import random_layered_dag

    g = random_layered_dag(5000)
    c = Cluster.preset("16x8-v100-ib")
    rng = random.Random(0)
    r = simulate(g, c, {n: rng.choice(c.device_names) for n in g.node_names()})
    assert len([e for e in r.timeline if e.kind in ("forward", "backward")]) == 10000
    assert r.num_transfers == len([e for e in r.timeline if e.kind.startswith("send")]) > 9000
    assert r.step_ms >= lower_bound(g, c).step_ms


# -- PipeDream ------------------------------------------------------------------------------------
PIPEDREAM = Path("/work/shared/benchmarks/pipedream")


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "inception_v3", "resnet50", "gnmt"])
def test_pipedream_single_device_step_is_the_profiles_sum(name: str) -> None:
    from graphc.ir.importers import load_pipedream

    path = PIPEDREAM / f"{name}.txt"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    g = load_pipedream(path)
    inputs = graph_inputs(g)
    assert inputs and all(g.node(n).op.startswith("Input") for n in inputs)
    # The Input layers' "forward time" is data loading: graph inputs cost no compute.
    expected = sum(n.measured_ms["V100"] + n.measured_bwd_ms["V100"] for n in g.nodes() if n.name not in inputs)
    c = Cluster.preset("dgx1-v100")
    r = simulate(g, c, dict.fromkeys(g.node_names(), "gpu3"), CostModel(c))
    assert r.step_ms == pytest.approx(expected, rel=1e-12)
    assert r.busy_ms["gpu3"] == pytest.approx(expected, rel=1e-12)
    assert r.num_transfers == 0
    forward_only = sum(n.measured_ms["V100"] for n in g.nodes() if n.name not in inputs)
    assert simulate(g, c, dict.fromkeys(g.node_names(), "gpu3"), mode="inference").step_ms == pytest.approx(forward_only)


def test_a_cpu_device_without_transfers_runs_its_tasks() -> None:
    """Three CPU devices (no copy engine); the third holds a node that neither sends nor receives: its
    device's own resource exists although no route uses it, and its task runs (forward and backward)."""
    devices = [Device(f"c{i}", "X", "cpu", "h", {"float32": 1e12}, 1e11, 1e12) for i in range(3)]
    cluster = Cluster("cpus", devices, [Link(d.name, "sw", "pcie", 1e9, 0.0) for d in devices], [Switch("sw", "pcie_switch", "h")])
    g = graph({"a": (1, 1), "b": (1, 1), "c": (3, 3)}, [("a", "b")])
    result = simulate(g, cluster, {"a": "c0", "b": "c1", "c": "c2"})
    assert result.step_ms == pytest.approx(6.0)
