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
