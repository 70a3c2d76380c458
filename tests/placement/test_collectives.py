"""Collectives on hand-built topologies: the ring's textbook time, flows sharing a link, reduce and
broadcast onto a root behind one link, and the hierarchical all-reduce beating the ring where the link
between hosts is the bottleneck (every figure computed by hand in the test)."""

from __future__ import annotations

import pytest

from placement import Cluster, Device, Link, Switch
from placement.collectives import (
    Flow,
    broadcast,
    busiest_link,
    duration_ms,
    endpoint_ms,
    flows_ms,
    hierarchical_allreduce,
    reduce,
    ring_allreduce,
)
from placement.errors import ConfigurationError
from placement.sync import islands

GB = 1e9


def device(name: str, host: str = "h") -> Device:
    return Device(name, "X", "gpu", host, {"float32": 1e12}, 1e11, 1e12)


def star(n: int, bandwidth: float = GB, latency_s: float = 0.0) -> Cluster:
    """``n`` devices ``d0 ..``, each on its own full-duplex link to one switch."""
    devices = [device(f"d{i}") for i in range(n)]
    links = [Link(d.name, "sw", "pcie", bandwidth, latency_s) for d in devices]
    return Cluster("star", devices, links, [Switch("sw", "pcie_switch", "h")])


def two_hosts(inside: float, between: float, latency_s: float = 0.0) -> Cluster:
    """Hosts h0 and h1, two devices each on a switch of their host (``inside`` bytes/s), the two switches
    joined by one link of ``between`` bytes/s; every link has ``latency_s``."""
    devices = [device(f"{h}g{i}", h) for h in ("h0", "h1") for i in range(2)]
    links = [Link(d.name, f"{d.host}sw", "pcie", inside, latency_s) for d in devices]
    links.append(Link("h0sw", "h1sw", "ethernet", between, latency_s, name="top"))
    switches = [Switch(f"{h}sw", "pcie_switch", h) for h in ("h0", "h1")]
    return Cluster("two-hosts", devices, links, switches)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_ring_allreduce_is_the_textbook_figure(r: int) -> None:
    # Every ring edge crosses two links of 1 GB/s and 5 us each (route latency 10 us); no two edges
    # share a link direction on a star.
    c = star(r, GB, 5e-6)
    P = 12e6
    phases = ring_allreduce(c, [f"d{i}" for i in range(r)], P)
    expected_ms = 1e3 * (2 * (r - 1) / r * P / GB + 2 * (r - 1) * 10e-6)
    assert duration_ms(phases) == pytest.approx(expected_ms, rel=1e-12)
    assert len(phases) == 1
    assert [(f.src, f.dst) for f in phases[0].flows] == [(f"d{i}", f"d{(i + 1) % r}") for i in range(r)]
    assert all(f.nbytes == pytest.approx(2 * (r - 1) / r * P) for f in phases[0].flows)


def test_ring_of_one_device_or_no_bytes_costs_nothing() -> None:
    c = star(2)
    assert ring_allreduce(c, ["d0"], 1e6) == []
    assert ring_allreduce(c, ["d0", "d1"], 0.0) == []


def test_flows_sharing_a_link_share_its_bandwidth() -> None:
    c = star(3, GB, 1e-6)
    # d1 and d2 both send 2 MB into d0: d0's incoming link carries 4 MB -> 4 ms, plus the 2 us route.
    assert flows_ms(c, [Flow("d1", "d0", 2e6), Flow("d2", "d0", 2e6)]) == pytest.approx(4.0 + 2e-3)
    # Opposite directions of a full-duplex link do not share: d0 -> d1 and d1 -> d0 take 2 ms each.
    assert flows_ms(c, [Flow("d0", "d1", 2e6), Flow("d1", "d0", 2e6)]) == pytest.approx(2.0 + 2e-3)
    assert flows_ms(c, []) == 0.0


def test_reduce_and_broadcast_queue_on_the_roots_link() -> None:
    c = star(4)
    P = 3e6
    # Three workers push 3 MB each to d0 over its one 1 GB/s link: 9 ms; the broadcast mirrors it.
    (phase,) = reduce(c, ["d1", "d2", "d3"], "d0", P)
    assert phase.duration_ms == pytest.approx(9.0)
    assert {(f.src, f.dst, f.nbytes) for f in phase.flows} == {("d1", "d0", P), ("d2", "d0", P), ("d3", "d0", P)}
    (back,) = broadcast(c, "d0", ["d1", "d2", "d3"], P)
    assert back.duration_ms == pytest.approx(9.0)
    assert {(f.src, f.dst) for f in back.flows} == {("d0", "d1"), ("d0", "d2"), ("d0", "d3")}
    # The root among the members sends nothing to itself.
    assert duration_ms(reduce(c, ["d0", "d1"], "d0", P)) == pytest.approx(3.0)


def test_hierarchical_beats_the_ring_when_the_top_link_is_the_bottleneck() -> None:
    B, b, P = 10 * GB, 1 * GB, 8e6
    c = two_hosts(B, b)
    devices = ["h0g0", "h0g1", "h1g0", "h1g1"]
    groups = islands(c, devices)
    assert groups == [("h0g0", "h0g1"), ("h1g0", "h1g1")]
    # Ring over 4: each of the 6 rounds moves P/4 over the top link (once per direction): 1.5 P / b.
    ring = duration_ms(ring_allreduce(c, devices, P))
    assert ring == pytest.approx(1e3 * 1.5 * P / b)
    # Hierarchy: reduce P into each leader over its host's links (islands in parallel), ring of the two
    # leaders (2 rounds of P/2 across the top link), broadcast back: P/B + P/b + P/B.
    phases = hierarchical_allreduce(c, groups, P)
    assert [p.duration_ms for p in phases] == pytest.approx([1e3 * P / B, 1e3 * P / b, 1e3 * P / B])
    assert duration_ms(phases) == pytest.approx(1e3 * (2 * P / B + P / b))
    assert duration_ms(phases) < ring
    # The top link carries 2 (L - 1) / L x P = P per leader, against 1.5 P in the ring.
    assert [f.nbytes for f in phases[1].flows] == [P, P]


def test_hierarchical_pays_its_extra_phases_where_links_are_even() -> None:
    c = two_hosts(GB, GB, 1e-6)
    devices = ["h0g0", "h0g1", "h1g0", "h1g1"]
    P = 8e6
    # Ring: 6 rounds of P/4 at 1 GB/s, each round's route latency at most 3 links = 3 us.
    ring = duration_ms(ring_allreduce(c, devices, P))
    assert ring == pytest.approx(1e3 * (1.5 * P / GB + 6 * 3e-6))
    # Hierarchy: (2 us + P/GB) + (2 x 3 us + P/GB) + (2 us + P/GB): dearer than the ring here.
    hier = duration_ms(hierarchical_allreduce(c, islands(c, devices), P))
    assert hier == pytest.approx(1e3 * (3 * P / GB + 10e-6))
    assert hier > ring


def test_hierarchical_over_one_island_is_a_chain_reduce_then_broadcast() -> None:
    c = star(3, GB, 1e-6)
    phases = hierarchical_allreduce(c, [("d0", "d1", "d2")], 1e6)
    # The chain d2 -> d1 -> d0 moves 1 MB over each edge at once (every link direction carries 1 MB:
    # 1 ms), the first chunk crossing 2 routes of 2 us; the broadcast runs the chain back; no ring.
    assert [[(f.src, f.dst) for f in p.flows] for p in phases] == [[("d1", "d0"), ("d2", "d1")], [("d0", "d1"), ("d1", "d2")]]
    assert [p.duration_ms for p in phases] == pytest.approx([1.0 + 4e-3, 1.0 + 4e-3])


def test_busiest_link_names_what_paces_a_phase() -> None:
    # The leaders' ring of a hierarchical all-reduce is paced by the top link (P/2 per round at 1 GB/s),
    # its chain reduce by a link inside a host (P at 10 GB/s).
    c = two_hosts(10 * GB, GB)
    reduce_phase, ring, _ = hierarchical_allreduce(c, islands(c, ["h0g0", "h0g1", "h1g0", "h1g1"]), 8e6)
    link, ms = busiest_link(c, ring.flows)
    # The whole phase's flows carry P each way over the top link: 8 ms, the phase's time.
    assert (link.name, ms) == ("top", pytest.approx(8.0))
    link, ms = busiest_link(c, reduce_phase.flows)
    assert link.name in ("h0g1--h0sw", "h0g0--h0sw") and ms == pytest.approx(0.8)
    assert flows_ms(c, reduce_phase.flows) == pytest.approx(ms)
    with pytest.raises(ConfigurationError, match="no flow crosses a link"):
        busiest_link(c, [Flow("h0g0", "h0g0", 1.0)])


def test_endpoint_ms_counts_every_message_a_cpu_sends_or_receives() -> None:
    c = star(3)
    P = 3e6

    def message_ms(nbytes: float) -> float:  # 0.5 ms per message + 1 ms per MB
        return 0.5 + nbytes / 1e6

    # Ring of 3: 4 rounds; each device sends one 1 MB chunk and receives one per round: 8 x 1.5 ms.
    (ring,) = ring_allreduce(c, ["d0", "d1", "d2"], P)
    assert endpoint_ms(ring, {"d1"}, message_ms) == pytest.approx(8 * 1.5)
    assert endpoint_ms(ring, set(), message_ms) == 0.0
    # A reduce onto d0: the root receives two 3 MB messages (2 x 3.5 ms), each worker sends one.
    (into,) = reduce(c, ["d1", "d2"], "d0", P)
    assert endpoint_ms(into, {"d0", "d1"}, message_ms) == pytest.approx(7.0)
    assert endpoint_ms(into, {"d1"}, message_ms) == pytest.approx(3.5)
