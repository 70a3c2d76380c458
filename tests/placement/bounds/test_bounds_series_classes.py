"""The series bound shares one span per class of alike device pairs: exact, still a bound, and its work
grows with the classes of devices and routes, not with the devices."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from test_bounds_series import least_step, node, random_graph

from graphc.ir.graph import EdgeData, Graph
from placement import Cluster, Device, Link, Switch, lower_bound
from placement.bounds import series
from placement.bounds.series import _BlockCosts, _Delays, cut_nodes, timed_graph
from placement.cost_model import CostModel
from placement.lowering import lower


def hosts(count: int, per_host: int, kinds: tuple[str, ...] = ("X",)) -> Cluster:
    """``count`` hosts of ``per_host`` devices on a host switch (1 GB/s each), the host switches on one
    network (0.25 GB/s each): three kinds of device pair (one device, one host, two hosts). ``kinds``
    repeats over each host's devices."""
    devices, links, switches = [], [], [Switch("net", "network")]
    for h in range(count):
        switches.append(Switch(f"h{h}/sw", "pcie_switch", f"h{h}"))
        links.append(Link(f"h{h}/sw", "net", "infiniband", 2.5e8))
        for i in range(per_host):
            name = f"h{h}/d{i}"
            devices.append(Device(name, kinds[i % len(kinds)], "gpu", f"h{h}", {"float32": 1e12}, 1e11, 1e12))
            links.append(Link(name, f"h{h}/sw", "pcie", 1e9))
    return Cluster(f"{count}x{per_host}", devices, links, switches)


def fork_joins(blocks: int, kinds: tuple[str, ...] = ("X",)) -> Graph:
    """``blocks`` fork-join blocks in series, each a fork into three branches of two nodes and a join."""
    g = Graph("blocks")
    node(g, "j0", 1, 1, kinds)
    for k in range(blocks):
        for br in range(3):
            node(g, f"x{k}_{br}", 2 + br, 3, kinds)
            node(g, f"y{k}_{br}", 1 + br, 2, kinds)
            g.add_edge(f"j{k}", f"x{k}_{br}", EdgeData(bytes=2e6))
            g.add_edge(f"x{k}_{br}", f"y{k}_{br}", EdgeData(bytes=1e6))
        node(g, f"j{k + 1}", 1, 1, kinds)
        for br in range(3):
            g.add_edge(f"y{k}_{br}", f"j{k + 1}", EdgeData(bytes=3e6))
    return g


def blocks_of(g: Graph, c: Cluster) -> list[_BlockCosts]:
    """Every block of the series bound of ``g`` on ``c`` in training (times of one microbatch)."""
    lw = lower(g, c, CostModel(c), "training")
    tg = timed_graph(lw, lw.fwd, lw.bwd)
    cuts = cut_nodes(tg.preds, tg.succs)
    delays, budget = _Delays(tg), [series.PATTERN_BUDGET]
    return [_BlockCosts(tg, delays, a, b, list(range(a + 1, b)), True, budget) for a, b in itertools.pairwise(cuts)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("measured", [False, True])
def test_shared_spans_equal_the_span_of_every_device_pair(seed: int, measured: bool) -> None:
    # Two speeds on two hosts: 16 device pairs share 6 passes per direction (8 when measured transfers
    # make the ends' labels matter: X->X and Y->X from another host differ), and each pair's entry is the
    # one its own passes give: max(path base, the edge a -> b's transfer, the pass's span), both ways.
    g = random_graph(random.Random(300 + seed), ("X", "Y"))
    if measured:
        for _, _, e in g.edges():
            e.transfer_ms = {"X->Y": 0.05}
    c = hosts(2, 2, ("X", "Y"))
    D = len(c.devices)
    refined = [costs for costs in blocks_of(g, c) if costs.refine]
    assert refined and len(refined[0].delays.representatives) == (8 if measured else 6)
    for costs in refined:
        shared = costs.matrix(1.0, 2.0)
        edge = costs.delays.matrix(costs.a, costs.b) if (costs.a, costs.b) in costs.tg.edges else np.zeros((D, D))
        for p in range(D):
            for q in range(D):
                fwd = max(1.0, edge[p, q], costs._span(costs._forward(p, q)))
                bwd = max(2.0, edge[q, p], costs._span(costs._backward(p, q)))
                assert shared[p, q] == fwd + bwd


def five_nodes(rng: random.Random) -> Graph:
    """``a -> {b, c} -> d -> e`` with random times and tensor sizes."""
    g = Graph("five")
    for name in "abcde":
        node(g, name, rng.uniform(0.5, 4), rng.uniform(0.5, 6))
    for u, v in ("ab", "ac", "bd", "cd", "de"):
        g.add_edge(u, v, EdgeData(bytes=rng.choice([1e5, 1e6, 3e6])))
    return g


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_series_bound_is_below_every_placement_on_two_hosts(seed: int) -> None:
    g = five_nodes(random.Random(400 + seed))
    c = hosts(2, 2)  # 4^5 placements
    bound = lower_bound(g, c)
    assert bound.series_ms > 0
    assert bound.series_ms <= least_step(g, c, "training") + 1e-9


def test_span_count_grows_with_classes_not_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    # Alike devices (one speed, each behind its host's switch): a pass is built once per kind of
    # fork/home pair (same device, same host, other hosts) per block, on 16 devices as on 64.
    built = {"forward": 0, "backward": 0}

    def counting(name: str, method):
        def wrapped(self, p: int, q: int):
            built[name] += 1
            return method(self, p, q)

        return wrapped

    monkeypatch.setattr(_BlockCosts, "_forward", counting("forward", _BlockCosts._forward))
    monkeypatch.setattr(_BlockCosts, "_backward", counting("backward", _BlockCosts._backward))
    g = fork_joins(4)
    counts = []
    for n_hosts in (2, 8):
        built.update(forward=0, backward=0)
        assert lower_bound(g, hosts(n_hosts, 8)).series_ms > 0
        counts.append(dict(built))
    assert counts == [{"forward": 3 * 4, "backward": 3 * 4}] * 2
    # Two speeds on every host: two kinds of home, each with the same three kinds of fork device.
    built.update(forward=0, backward=0)
    assert lower_bound(fork_joins(4, ("X", "Y")), hosts(8, 8, ("X", "Y"))).series_ms > 0
    assert built == {"forward": 2 * 3 * 4, "backward": 2 * 3 * 4}


def test_route_times_take_measured_transfers_per_device_label() -> None:
    # u -> v measured gpu->cpu only (5 ms), u -> w measured between any pair (2 ms); the route is 3 ms.
    # An edge's own measurement wins for its pair; elsewhere a sibling's measurement caps the route.
    devices = [Device("g0", "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12), Device("g1", "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12),
               Device("c", "cpu", "cpu", "h", {"float32": 1e11}, 1e10, 1e12)]
    c = Cluster("box", devices, [Link(d.name, "sw", "pcie", 1e9) for d in devices], [Switch("sw", "pcie_switch", "h")])
    g = Graph("measured")
    for name in "uvw":
        node(g, name, 1, 1, ("X", "cpu"))
    g.add_edge("u", "v", EdgeData(bytes=3e6, transfer_ms={"gpu->cpu": 5.0}))
    g.add_edge("u", "w", EdgeData(bytes=3e6, transfer_ms={"*": 2.0}))
    lw = lower(g, c, CostModel(c), "training")
    delays = _Delays(timed_graph(lw, lw.fwd, lw.bwd))
    u, v, w = (lw.index[name] for name in "uvw")
    assert delays.matrix(u, v).tolist() == [[0, 2, 5], [2, 0, 5], [2, 2, 0]]
    assert delays.matrix(u, w).tolist() == [[0, 2, 2], [2, 0, 2], [2, 2, 0]]
    from_home, to_home = delays.mins(u, v)
    assert from_home.tolist() == [2, 2, 2] and to_home.tolist() == [2, 2, 5]
