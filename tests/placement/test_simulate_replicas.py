"""Replicated pipeline stages in the simulator: round-robin microbatches, transfers between the replicas
holding a microbatch, the ring all-reduce after the stage's last backward, and agreement with the
throughput instance's load model in the steady state."""

from __future__ import annotations

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, Device, Link, PlacementError, Switch, simulate
from placement.pipeline.build import instance_from_problem
from placement.pipeline.instance import part_load
from placement.plan import Plan, Stage, stage_replicas
from placement.problem import make_problem

MB = 1e6  # bytes; 1 ms on the 1 GB/s links of the test cluster


def star(n: int = 3, kinds: str = "XXX") -> Cluster:
    """``n`` devices, each on its own 1 GB/s full-duplex link (no latency) to one switch."""
    devices = [Device(f"d{i}", kinds[i], "gpu", "h", {"float32": 1e12}, 1e11, 1e12) for i in range(n)]
    links = [Link(d.name, "sw", "pcie", 1e9) for d in devices]
    return Cluster("star", devices, links, [Switch("sw", "pcie_switch", "h")])


def two_stage(edge_bytes: float = 2 * MB, params: float = 3 * MB) -> Graph:
    """a (forward 2 ms, backward 2 ms) -> b (4 ms, 4 ms, ``params`` parameter bytes)."""
    g = Graph("two_stage")
    g.add_node(NodeData("a", "op", measured_ms={"X": 2.0}, measured_bwd_ms={"X": 2.0}))
    g.add_node(NodeData("b", "op", measured_ms={"X": 4.0}, measured_bwd_ms={"X": 4.0}, param_bytes=params))
    g.add_edge("a", "b", EdgeData(bytes=edge_bytes))
    return g


def events(result) -> list[tuple]:
    return [(e.kind, e.name, e.microbatch, e.device, e.src_device, e.start_ms, e.end_ms) for e in result.timeline]


def test_replicated_stage_exact_timeline() -> None:
    # Microbatch k of b runs on d1 (k even) or d2 (k odd); a's output of microbatch k goes to that
    # replica and its gradient comes back from it; after b's last backward the replicas all-reduce
    # 2 (r - 1) / r x 3 MB = 3 MB, which waits for the gradient send holding d2's link.
    r = simulate(two_stage(), star(), {"a": "d0", "b": "d1"}, microbatches=2, replicas={"d1": ["d1", "d2"]})
    assert events(r) == [
        ("forward", "a", 0, "d0", "", 0, 1),
        ("forward", "a", 1, "d0", "", 1, 2),
        ("send", "a", 0, "d1", "d0", 1, 2),
        ("send", "a", 1, "d2", "d0", 2, 3),
        ("forward", "b", 0, "d1", "", 2, 4),
        ("forward", "b", 1, "d2", "", 3, 5),
        ("backward", "b", 0, "d1", "", 4, 6),
        ("backward", "b", 1, "d2", "", 5, 7),
        ("send_grad", "a", 0, "d0", "d1", 6, 7),
        ("backward", "a", 0, "d0", "", 7, 8),
        ("send_grad", "a", 1, "d0", "d2", 7, 8),
        ("backward", "a", 1, "d0", "", 8, 9),
        ("allreduce", "d1+d2", -1, "d1", "", 8, 11),
        ("allreduce", "d1+d2", -1, "d2", "", 8, 11),
    ]
    assert r.step_ms == 11
    assert r.busy_ms == {"d0": 4, "d1": 4, "d2": 4}
    # Parameters and Adam's two moments on each replica before the step; each makes its own gradients
    # (3 MB) as B(b) starts, beside the received activation (1 MB) and the gradient of b's input (1 MB)
    # it then sends back and keeps; at 7 the all-reduce's flat copy of the bucket (3 MB) joins them.
    assert r.static_memory_bytes == {"d0": 0, "d1": 9 * MB, "d2": 9 * MB}
    assert r.peak_memory_bytes["d1"] == r.peak_memory_bytes["d2"] == (9 + 3 + 1 + 3) * MB
    # Two sends and two gradients of 1 MB; the all-reduce adds 3 MB on each ring link, not a transfer.
    assert (r.num_transfers, r.transferred_bytes) == (4, 4 * MB)
    assert r.link_bytes["d1--sw"] == 1 * MB + 1 * MB + 2 * 3 * MB


def test_round_robin_over_replicas() -> None:
    r = simulate(two_stage(), star(4, "XXXX"), {"a": "d0", "b": "d1"}, microbatches=4, replicas={"d1": ["d1", "d2", "d3"]})
    where = {e.microbatch: e.device for e in r.timeline if e.kind == "forward" and e.name == "b"}
    assert where == {0: "d1", 1: "d2", 2: "d3", 3: "d1"}
    sends = {e.microbatch: (e.src_device, e.device) for e in r.timeline if e.kind == "send_grad"}
    assert sends == {0: ("d1", "d0"), 1: ("d2", "d0"), 2: ("d3", "d0"), 3: ("d1", "d0")}


def test_no_allreduce_in_inference_nor_without_parameters() -> None:
    for graph, mode in ((two_stage(), "inference"), (two_stage(params=0.0), "training")):
        r = simulate(graph, star(), {"a": "d0", "b": "d1"}, mode=mode, microbatches=2, replicas={"d1": ["d1", "d2"]})
        assert not [e for e in r.timeline if e.kind == "allreduce"]


def test_an_order_applies_to_every_replica() -> None:
    g = two_stage()
    g.add_node(NodeData("c", "op", measured_ms={"X": 1.0}, measured_bwd_ms={"X": 1.0}))
    g.add_edge("a", "c", EdgeData(bytes=0.0))
    assignment = {"a": "d0", "b": "d1", "c": "d1"}
    r = simulate(g, star(), assignment, microbatches=2, order={"d1": ["c", "b"]}, replicas={"d1": ["d1", "d2"]})
    on_d2 = [(e.kind, e.name) for e in r.timeline if e.device == "d2" and e.kind in ("forward", "backward")]
    assert on_d2 == [("forward", "c"), ("forward", "b"), ("backward", "b"), ("backward", "c")]
    with pytest.raises(PlacementError, match="'d2' is a replica of 'd1'"):
        simulate(g, star(), assignment, microbatches=2, order={"d2": ["c", "b"]}, replicas={"d1": ["d1", "d2"]})


@pytest.mark.parametrize(
    ("replicas", "message"),
    [
        ({"d1": ["d2", "d1"]}, r"'d1' first"),
        ({"d1": []}, r"'d1' first"),
        ({"d1": ["d1", "d9"]}, r"no device 'd9'"),
        ({"d9": ["d9"]}, r"no device 'd9'"),
        ({"d1": ["d1", "d1"]}, r"two replicated stages \(or twice in one\)"),
        ({"d1": ["d1", "d0"]}, r"replica 'd0' also runs nodes"),
        ({"d1": ["d1", "d2"], "d2": ["d2"]}, r"'d2' is in two"),
    ],
)
def test_bad_replicas(replicas: dict, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        simulate(two_stage(), star(), {"a": "d0", "b": "d1"}, microbatches=2, replicas=replicas)


def test_replicas_must_be_interchangeable() -> None:
    with pytest.raises(PlacementError, match=r"'d2' \(Y\) is not interchangeable with 'd1' \(X\)"):
        simulate(two_stage(), star(3, "XXY"), {"a": "d0", "b": "d1"}, replicas={"d1": ["d1", "d2"]})


def test_plan_simulates_its_replicated_stages() -> None:
    g, c = two_stage(), star()
    stages = [Stage(0, ["a"], ["d0"]), Stage(1, ["b"], ["d1", "d2"])]
    assert stage_replicas(stages) == {"d1": ["d1", "d2"]}
    plan = Plan("two_stage", g.fingerprint(), "star", "throughput", "training", {"a": "d0", "b": "d1"},
                stages=stages, microbatches=2, graph=g, cluster=c)  # fmt: skip
    assert plan.simulate().step_ms == 11


def test_simulate_takes_a_plan_as_its_dict_form_with_the_plans_stages_and_microbatches() -> None:
    g, c = two_stage(), star()
    stages = [Stage(0, ["a"], ["d0"]), Stage(1, ["b"], ["d1", "d2"])]
    plan = Plan("two_stage", g.fingerprint(), "star", "throughput", "training", {"a": "d0", "b": "d1"},
                stages=stages, microbatches=2, graph=g, cluster=c)  # fmt: skip
    by_dict = simulate(g, c, plan.assignment, microbatches=2, replicas={"d1": ["d1", "d2"]})
    assert simulate(plan).step_ms == plan.simulate().step_ms == by_dict.step_ms == 11
    assert simulate(plan).peak_memory_bytes == by_dict.peak_memory_bytes
    # what is given replaces the plan's: another microbatch count, a cluster for a plan built without one
    assert simulate(plan, microbatches=8).step_ms == simulate(g, c, plan.assignment, microbatches=8,
                                                             replicas={"d1": ["d1", "d2"]}).step_ms  # fmt: skip
    bare = Plan("two_stage", g.fingerprint(), "star", "throughput", "training", plan.assignment, stages=stages,
                microbatches=2, graph=g)  # fmt: skip
    assert simulate(bare, c).step_ms == 11
    with pytest.raises(PlacementError, match="does not carry its graph and cluster"):
        simulate(bare)
    with pytest.raises(TypeError, match="brings its own assignment"):
        simulate(plan, c, plan.assignment)
    with pytest.raises(TypeError, match="a graph needs a cluster and an assignment"):
        simulate(g, c)


def test_steady_state_agrees_with_the_instance_load_model() -> None:
    # b is the bottleneck even on two replicas; with many microbatches the pipeline's fill vanishes and
    # the step tends to b's load in the throughput instance: (4 + 4) / 2 + all-reduce 3 ms = 7 ms.
    g, c = two_stage(edge_bytes=0.0), star()
    problem = make_problem(g, c, objective="throughput")
    inst = instance_from_problem(problem, replication=True)
    a, b = inst.names.index("a"), inst.names.index("b")
    load_b = part_load(inst, [b], 0, replicas=2)
    assert load_b == pytest.approx(7.0)
    assert part_load(inst, [a], 0) == pytest.approx(4.0)
    for m in (2, 8, 32, 128):
        r = simulate(g, c, {"a": "d0", "b": "d1"}, microbatches=m, replicas={"d1": ["d1", "d2"]})
        allreduce = next(e for e in r.timeline if e.kind == "allreduce")
        # Each replica computes half the microbatches, then all-reduces: the instance's load, and the
        # m / 2 - 1 adds of a microbatch's 3 MB of gradients into .grad (read two, write one tensor at
        # the device's 1e11 B/s), a cost per microbatch that the instance leaves out.
        accumulated = (m // 2 - 1) * 1e3 * 3 * (3 * MB) / 1e11
        for d in ("d1", "d2"):
            assert r.busy_ms[d] + allreduce.duration_ms == pytest.approx(load_b + accumulated)
        # The rest is the pipeline's fill and drain: a's forward and backward of one microbatch.
        assert r.step_ms == pytest.approx(load_b + accumulated + 4.0 / m)
