"""CPU devices of one host that compute at once slow each other (CostModel.corun_slowdown, placement.simulate
"Co-running CPU devices"): a task takes its time alone times the mean of s(k(t)) over its interval in the
step simulated alone, k(t) the host's CPU tasks running then; GPUs are not slowed; no figure (or s = 1)
leaves the old timeline as it was. Every expected timeline below is worked out by hand in its comments."""

from __future__ import annotations

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import (
    Cluster,
    ConfigurationError,
    CostModel,
    Device,
    Link,
    Switch,
    simulate,
)

MB = 1e6


def _cluster(category: str, hosts: tuple[str, ...] = ("h", "h")) -> Cluster:
    devices = [Device(f"d{i}", "X", category, host, {"float32": 1e12}, 1e11, 1e12) for i, host in enumerate(hosts)]
    links = [Link(d.name, "sw", "pcie", 1e9, latency_s=50e-6) for d in devices]  # 0.1 ms + 1 ms per MB
    return Cluster("c", devices, links, [Switch("sw", "pcie_switch", "h")])


def _node(name: str, fwd: float, bwd: float) -> NodeData:
    return NodeData(name, "op", measured_ms={"X": fwd}, measured_bwd_ms={"X": bwd})


def _side_by_side() -> Graph:
    """a -> c on one device, b alone on the other: both compute from time 0."""
    g = Graph("side_by_side")
    g.add_node(_node("a", 2.0, 4.0))
    g.add_node(_node("b", 3.0, 1.0))
    g.add_node(_node("c", 1.0, 2.0))
    g.add_edge("a", "c", EdgeData(bytes=MB))
    return g


SPLIT = {"a": "d0", "c": "d0", "b": "d1"}


def _spans(result) -> dict[tuple[str, str], tuple[float, float]]:
    return {(e.kind, e.name): (e.start_ms, e.end_ms) for e in result.timeline}


def test_two_cpu_devices_computing_at_once_take_s2_times_as_long_while_they_overlap() -> None:
    cluster = _cluster("cpu")
    result = simulate(_side_by_side(), cluster, SPLIT, CostModel(cluster, corun_slowdown={2: 1.5}))
    # Alone: d0 F(a) 0-2, F(c) 2-3, B(c) 3-5, B(a) 5-9; d1 F(b) 0-3, B(b) 3-4: two compute on [0, 4].
    # F(a), F(c), F(b), B(b) lie inside it: x 1.5; B(c) half: x (1.5 + 1) / 2; B(a) outside: x 1.
    assert _spans(result) == {
        ("forward", "a"): (0.0, 3.0),
        ("forward", "c"): (3.0, 4.5),
        ("backward", "c"): (4.5, 7.0),
        ("backward", "a"): (7.0, 11.0),
        ("forward", "b"): (0.0, 4.5),
        ("backward", "b"): (4.5, 6.0),
    }
    assert result.step_ms == 11.0  # as the dynamic form gives here: both at rate 2/3 until 6, then d0 alone
    assert result.busy_ms == {"d0": 11.0, "d1": 6.0}


def test_devices_that_take_turns_are_not_slowed_nor_are_transfers() -> None:
    cluster = _cluster("cpu")
    g = Graph("chain")
    g.add_node(_node("a", 1.0, 4.0))
    g.add_node(_node("b", 2.0, 3.0))
    g.add_edge("a", "b", EdgeData(bytes=2 * MB))
    result = simulate(g, cluster, {"a": "d0", "b": "d1"}, CostModel(cluster, corun_slowdown={2: 1.5}))
    wire = 0.1 + 2.0  # F(a), send, F(b), B(b), gradient, B(a): never two tasks at once
    assert result.step_ms == pytest.approx(1.0 + wire + 2.0 + 3.0 + wire + 4.0)
    assert [e.duration_ms for e in result.timeline if e.kind.startswith("send")] == pytest.approx([wire, wire])


def test_gpus_one_device_and_devices_of_other_hosts_are_not_slowed() -> None:
    slowdown = {2: 1.5}
    for cluster, split in (
        (_cluster("gpu"), SPLIT),  # GPUs
        (_cluster("cpu"), dict.fromkeys(SPLIT, "d0")),  # one CPU device used: k = 1
        (_cluster("cpu", hosts=("h", "g")), SPLIT),  # one CPU device per host
    ):
        slowed = simulate(_side_by_side(), cluster, split, CostModel(cluster, corun_slowdown=slowdown))
        alone = simulate(_side_by_side(), cluster, split, CostModel(cluster))
        assert slowed.timeline == alone.timeline
        assert slowed.step_ms == alone.step_ms


def test_s_equal_to_1_gives_the_old_timeline_bit_for_bit() -> None:
    cluster = _cluster("cpu")
    alone = simulate(_side_by_side(), cluster, SPLIT, CostModel(cluster))
    assert alone.step_ms == 9.0  # d0: 2 + 1 + 2 + 4
    for slowdown in ({2: 1.0}, {2: 1}, {}):
        same = simulate(_side_by_side(), cluster, SPLIT, CostModel(cluster, corun_slowdown=slowdown))
        assert same.timeline == alone.timeline
        assert same.busy_ms == alone.busy_ms
        assert same.peak_memory_bytes == alone.peak_memory_bytes


def test_k_counts_the_hosts_cpu_tasks_running_at_each_instant() -> None:
    cluster = _cluster("cpu", hosts=("h", "h", "h"))
    cm = CostModel(cluster, corun_slowdown={2: 1.5, 3: 2.0})
    g = Graph("three")
    for name, fwd, bwd in (("a", 2.0, 4.0), ("b", 3.0, 1.0), ("c", 1.0, 2.0)):
        g.add_node(_node(name, fwd, bwd))
    result = simulate(g, cluster, {"a": "d0", "b": "d1", "c": "d2"}, cm)
    # Alone: d0 F 0-2, B 2-6; d1 F 0-3, B 3-4; d2 F 0-1, B 1-3. k = 3 on [0, 3], 2 on [3, 4], 1 after.
    # F(a) x 2; B(a) (1 x 2 + 1 x 1.5 + 2 x 1) / 4; F(b) x 2; B(b) x 1.5; F(c) x 2; B(c) x 2.
    assert _spans(result) == {
        ("forward", "a"): (0.0, 4.0),
        ("backward", "a"): (4.0, 9.5),
        ("forward", "b"): (0.0, 6.0),
        ("backward", "b"): (6.0, 7.5),
        ("forward", "c"): (0.0, 2.0),
        ("backward", "c"): (2.0, 6.0),
    }
    # beyond the largest count measured, that count's figure; below the smallest, none
    assert [cm.corun_factor(k) for k in (0, 1, 2, 3, 8)] == [1.0, 1.0, 1.5, 2.0, 2.0]
    assert CostModel(cluster, corun_slowdown={3: 2.0}).corun_factor(2) == 1.0


def test_a_replicated_stage_takes_the_slowdown_of_its_replicas() -> None:
    cluster = _cluster("cpu")
    g = Graph("one")
    g.add_node(_node("a", 2.0, 4.0))
    cm = CostModel(cluster, corun_slowdown={2: 1.25})
    result = simulate(g, cluster, {"a": "d0"}, cm, microbatches=2, replicas={"d0": ["d0", "d1"]})
    computes = sorted((e.device, e.kind, e.start_ms, e.end_ms) for e in result.timeline if e.kind in ("forward", "backward"))
    # each replica one microbatch of half the batch: forward 2 / 2 x 1.25, backward 4 / 2 x 1.25
    assert computes == [("d0", "backward", 1.25, 3.75), ("d0", "forward", 0.0, 1.25),
                        ("d1", "backward", 1.25, 3.75), ("d1", "forward", 0.0, 1.25)]  # fmt: skip


@pytest.mark.parametrize(
    ("slowdown", "wrong"),
    [({1: 1.2}, "key 1"), ({"two": 1.2}, "key 'two'"), ({2.5: 1.2}, "key 2.5"), ({True: 1.2}, "key True"),
     ({2: 0.8}, r"corun_slowdown\[2\] = 0.8"), ({2: float("nan")}, "finite"), ({2: "1.5"}, "finite"),
     ([1.5], "must map")],
)  # fmt: skip
def test_a_bad_slowdown_is_refused_saying_what_is_wrong(slowdown, wrong) -> None:
    with pytest.raises(ConfigurationError, match=wrong):
        CostModel(_cluster("cpu"), corun_slowdown=slowdown)


def test_keys_read_back_from_json_strings() -> None:
    cm = CostModel(_cluster("cpu"), corun_slowdown={"2": 1.5, "3": 1.75})
    assert cm.corun_slowdown == {2: 1.5, 3: 1.75}
