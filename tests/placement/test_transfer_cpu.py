"""A transfer to or from a CPU lasts at least the CPU time a message costs each end (CostModel's
endpoint_cpu_s and endpoint_cpu_per_byte_s, measured by runtime.link for the calibrated local cluster);
it holds the CPU throughout inside one host, and only for that CPU time between hosts."""

from __future__ import annotations

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, ConfigurationError, CostModel, Device, Link, Switch, simulate

MB = 1e6


def _two(category: str) -> Cluster:
    devices = [Device(f"d{i}", "X", category, "h", {"float32": 1e12}, 1e11, 1e12) for i in range(2)]
    links = [Link(d.name, "sw", "pcie", 1e9, latency_s=50e-6) for d in devices]  # 0.1 ms + 1 ms per MB
    return Cluster("two", devices, links, [Switch("sw", "pcie_switch", "h")])


def _chain() -> Graph:
    g = Graph("chain")
    g.add_node(NodeData("a", "op", measured_ms={"X": 1.0}, measured_bwd_ms={"X": 4.0}))
    g.add_node(NodeData("b", "op", measured_ms={"X": 2.0}, measured_bwd_ms={"X": 3.0}))
    g.add_edge("a", "b", EdgeData(bytes=2 * MB))
    return g


def test_a_cpu_to_cpu_transfer_takes_each_ends_cpu_time_where_it_exceeds_the_wire() -> None:
    cluster = _two("cpu")
    wire = CostModel(cluster).transfer_ms(2 * MB, "d0", "d1")
    assert wire == pytest.approx(0.1 + 2.0)
    # each end's CPU: 1 ms + 2 ms per MB per message, so 5 ms for the 2 MB sent
    cm = CostModel(cluster, endpoint_cpu_s=1e-3, endpoint_cpu_per_byte_s=2e-9)
    assert cm.transfer_ms(2 * MB, "d0", "d1") == pytest.approx(5.0)
    assert cm.endpoint_cpu_ms(2 * MB) == pytest.approx(5.0)
    split = {"a": "d0", "b": "d1"}
    assert simulate(_chain(), cluster, split, CostModel(cluster)).step_ms == pytest.approx(1 + 2 + 3 + 4 + 2 * wire)
    result = simulate(_chain(), cluster, split, cm)
    assert result.step_ms == pytest.approx(1 + 5 + 2 + 3 + 5 + 4)  # forward, send, forward, backward, gradient, backward
    # a cheaper message than the wire: the wire's time stands
    cheap = CostModel(cluster, endpoint_cpu_s=1e-4, endpoint_cpu_per_byte_s=1e-10)
    assert simulate(_chain(), cluster, split, cheap).step_ms == pytest.approx(1 + 2 + 3 + 4 + 2 * wire)


def test_gpus_keep_the_wire_time_and_a_negative_cost_is_refused() -> None:
    cluster = _two("gpu")
    cm = CostModel(cluster, endpoint_cpu_s=1e-3, endpoint_cpu_per_byte_s=2e-9)
    assert cm.transfer_ms(2 * MB, "d0", "d1") == pytest.approx(2.1)
    result = simulate(_chain(), cluster, {"a": "d0", "b": "d1"}, cm)
    assert result.step_ms == pytest.approx(1 + 2 + 3 + 4 + 2 * 2.1)
    with pytest.raises(ConfigurationError, match="endpoint_cpu"):
        CostModel(cluster, endpoint_cpu_s=-1.0)


def _fork() -> Graph:
    """a (1 ms) sends 4 MB to b (1 ms) and feeds c (2 ms) on its own device; forward only."""
    g = Graph("fork")
    g.add_node(NodeData("a", "op", measured_ms={"X": 1.0}))
    g.add_node(NodeData("b", "op", measured_ms={"X": 1.0}))
    g.add_node(NodeData("c", "op", measured_ms={"X": 2.0}))
    g.add_edge("a", "b", EdgeData(bytes=4 * MB))
    g.add_edge("a", "c", EdgeData(bytes=0.0))
    return g


@pytest.mark.parametrize(("hosts", "c_starts"), [(("h", "h"), 5.0), (("h0", "h1"), 1.5)])
def test_across_hosts_a_cpu_is_held_for_its_cpu_time_and_within_one_for_the_whole_transfer(hosts, c_starts) -> None:
    # a runs 0-1 on d0, then sends 4 MB to d1: 4 ms on the 1 GB/s links, 0.5 ms of each end's CPU. Inside
    # one host the CPU moves the bytes itself, so c (on d0) waits for the transfer: 5-7. Between hosts the
    # network moves them: d0 is held 1-1.5 and c runs 1.5-3.5, while b still gets its input at 5.
    devices = [Device(f"d{i}", "X", "cpu", host, {"float32": 1e12}, 1e11, 1e12) for i, host in enumerate(hosts)]
    links = [Link(d.name, "sw", "ethernet", 1e9) for d in devices]
    cluster = Cluster("pair", devices, links, [Switch("sw", "ethernet_switch", hosts[0])])
    cm = CostModel(cluster, endpoint_cpu_s=0.5e-3)
    result = simulate(_fork(), cluster, {"a": "d0", "b": "d1", "c": "d0"}, cm, mode="inference")
    starts = {e.name: e.start_ms for e in result.timeline if e.kind == "forward"}
    assert starts["c"] == pytest.approx(c_starts) and starts["b"] == pytest.approx(5.0)
    assert result.step_ms == pytest.approx(max(c_starts + 2.0, 6.0))


@pytest.mark.parametrize(("hosts", "c_starts", "step"), [(("h", "h"), 10.0, 12.0), (("h0", "h1"), 3.0, 10.0)])
def test_a_send_queued_behind_another_on_the_link_does_not_hold_its_cpu(hosts, c_starts, step) -> None:
    # a1 and a2 on d0 each send 4 MB to d1 (4 ms on the wire, 0.5 ms of the sender's CPU); c follows a2 on
    # d0. Across hosts: a1 0-1, its send holds d0 1-1.5 and the links 1-5; a2 1.5-2.5, its send holds d0
    # 2.5-3 and waits for the links, 5-9; c 3-5; b1 5-6, b2 9-10. Inside one host every send holds both
    # CPUs for its whole time: a2 5-6, its send 6-10, c 10-12.
    g = Graph("two sends")
    for name, ms in (("a1", 1.0), ("a2", 1.0), ("c", 2.0), ("b1", 1.0), ("b2", 1.0)):
        g.add_node(NodeData(name, "op", measured_ms={"X": ms}))
    for a, b, nbytes in (("a1", "b1", 4 * MB), ("a1", "a2", 0.0), ("a2", "b2", 4 * MB), ("a2", "c", 0.0)):
        g.add_edge(a, b, EdgeData(bytes=nbytes))
    devices = [Device(f"d{i}", "X", "cpu", host, {"float32": 1e12}, 1e11, 1e12) for i, host in enumerate(hosts)]
    cluster = Cluster("pair", devices, [Link(d.name, "sw", "ethernet", 1e9) for d in devices], [Switch("sw", "ethernet_switch", hosts[0])])
    place = {"a1": "d0", "a2": "d0", "c": "d0", "b1": "d1", "b2": "d1"}
    result = simulate(g, cluster, place, CostModel(cluster, endpoint_cpu_s=0.5e-3), mode="inference")
    starts = {e.name: e.start_ms for e in result.timeline if e.kind == "forward"}
    assert starts["c"] == pytest.approx(c_starts) and result.step_ms == pytest.approx(step)


def test_across_hosts_a_message_waits_for_its_receiver_which_pays_its_cpu_time() -> None:
    # d1 computes x 0-3 and then y (x's successor); a (d0, 0-1) sends b 4 MB. The wire starts once d1 is
    # free to receive (a rendezvous), 3-7; the message's 0.5 ms of d1's CPU is taken then, 3-3.5, so y
    # runs 3.5-4.5 (not 3-4), and b starts when the data lands, at 7. d0 pays its 0.5 ms at 1-1.5.
    g = Graph("receiver")
    for name, ms in (("a", 1.0), ("b", 1.0), ("x", 3.0), ("y", 1.0)):
        g.add_node(NodeData(name, "op", measured_ms={"X": ms}))
    g.add_edge("a", "b", EdgeData(bytes=4 * MB))
    g.add_edge("x", "y", EdgeData(bytes=0.0))
    devices = [Device(f"d{i}", "X", "cpu", f"h{i}", {"float32": 1e12}, 1e11, 1e12) for i in range(2)]
    cluster = Cluster("pair", devices, [Link(d.name, "sw", "ethernet", 1e9) for d in devices], [Switch("sw", "ethernet_switch", "h0")])
    result = simulate(g, cluster, {"a": "d0", "b": "d1", "x": "d1", "y": "d1"}, CostModel(cluster, endpoint_cpu_s=0.5e-3), mode="inference")
    starts = {e.name: e.start_ms for e in result.timeline if e.kind == "forward"}
    assert starts == pytest.approx({"a": 0.0, "x": 0.0, "y": 3.5, "b": 7.0})
