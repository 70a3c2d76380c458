"""The series / fork-join bound: structure, and never above the simulated step of any placement."""

from __future__ import annotations

import itertools
import random

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, Device, Link, Switch, lower_bound, simulate
from placement.bounds.series import cut_nodes


def star(n: int, bandwidth: float = 1e9, kinds: tuple[str, ...] = ()) -> Cluster:
    """``n`` devices, each with one link to a switch (so every route into a device shares its link)."""
    kinds = kinds or ("X",) * n
    devices = [Device(f"d{i}", k, "gpu", "h", {"float32": 1e12}, 1e11, 1e12) for i, k in enumerate(kinds)]
    links = [Link(d.name, "sw", "pcie", bandwidth) for d in devices]
    return Cluster("star", devices, links, [Switch("sw", "pcie_switch", "h")])


def mesh(n: int, rng: random.Random) -> Cluster:
    """``n`` devices joined pairwise by links of random bandwidths (no shared link)."""
    devices = [Device(f"d{i}", "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12) for i in range(n)]
    links = [Link(f"d{i}", f"d{j}", "nvlink", rng.uniform(2e8, 2e9)) for i, j in itertools.combinations(range(n), 2)]
    return Cluster("mesh", devices, links)


def node(g: Graph, name: str, f: float, b: float, kinds: tuple[str, ...] = ("X",)) -> None:
    g.add_node(NodeData(name, "op", measured_ms={k: f * (1 + i) for i, k in enumerate(kinds)},
                        measured_bwd_ms={k: b * (1 + i) for i, k in enumerate(kinds)}))


def random_graph(rng: random.Random, kinds: tuple[str, ...] = ("X",)) -> Graph:
    """A chain of fork-join blocks (branches are chains; one may fork again), 6 to 8 nodes."""
    g = Graph("fj")
    count = [0]

    def add(pred: list[str]) -> str:
        name = f"n{count[0]}"
        count[0] += 1
        node(g, name, rng.uniform(0.5, 4), rng.uniform(0.5, 6), kinds)
        for p in pred:
            g.add_edge(p, name, EdgeData(bytes=rng.choice([1e5, 1e6, 3e6, 6e6])))
        return name

    head = add([])
    while count[0] < rng.randint(6, 8):
        shape = rng.random()
        if shape < 0.3:
            head = add([head])
        elif shape < 0.8:
            ends = []
            for _ in range(rng.randint(2, 3)):
                x = add([head])
                if rng.random() < 0.4:
                    x = add([x])
                ends.append(x)
            head = add(ends)
        else:  # a branch that forks again, and a residual edge around it
            x = add([head])
            y, z = add([x]), add([x])
            head = add([y, z, head])
    return g


def least_step(g: Graph, c: Cluster, mode: str) -> float:
    names = g.node_names()
    best = float("inf")
    for devs in itertools.product(c.device_names, repeat=len(names)):
        place = dict(zip(names, devs))
        for priority in ("topological", "critical_path"):
            best = min(best, simulate(g, c, place, mode=mode, priority=priority).step_ms)
    return best


def test_cut_nodes_of_a_fork_join_chain() -> None:
    # 0 -> {1, 2} -> 3 -> 4, plus a second sink 5 hanging off 3: only 0 and 3 are comparable with all.
    preds = [[], [0], [0], [1, 2], [3], [3]]
    succs = [[1, 2], [3], [3], [4, 5], [], []]
    assert cut_nodes(preds, succs) == [0, 3]
    assert cut_nodes([[], [0], [1]], [[1], [2], []]) == [0, 1, 2]
    assert cut_nodes([[], []], [[], []]) == []


def test_shared_link_makes_offloading_cost_transfers() -> None:
    # a -> {b, c} -> d, equal branches: in parallel the branches overlap but every transfer in and out of
    # a's device is serialised on its one link; the series bound counts it, the critical path does not.
    g = Graph("fj")
    for name, f, b in (("a", 1, 1), ("b", 4, 4), ("c", 4, 4), ("d", 1, 1)):
        node(g, name, f, b)
    for u, v in (("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")):
        g.add_edge(u, v, EdgeData(bytes=3e6))  # 3 ms on a 1 GB/s link
    c = star(2)
    bound = lower_bound(g, c)
    assert bound.critical_path_ms == 12
    assert bound.series_ms > bound.critical_path_ms
    assert bound.step_ms <= least_step(g, c, "training") + 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_series_bound_is_below_every_placement_on_a_switch(seed: int) -> None:
    rng = random.Random(seed)
    g = random_graph(rng)
    c = star(2 if len(g.node_names()) > 7 else 3, bandwidth=rng.choice([5e8, 1e9, 4e9]))
    for mode in ("training", "inference"):
        bound = lower_bound(g, c, mode=mode)
        assert bound.series_ms <= least_step(g, c, mode) + 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_series_bound_is_below_every_placement_on_a_mesh_and_mixed_devices(seed: int) -> None:
    rng = random.Random(100 + seed)
    kinds = ("X", "Y")
    g = random_graph(rng, kinds)
    c = mesh(2, rng) if seed % 2 else star(3 if len(g.node_names()) <= 6 else 2, kinds=("X", "Y", "X")[: 3 if len(g.node_names()) <= 6 else 2])
    bound = lower_bound(g, c)
    assert bound.series_ms <= least_step(g, c, "training") + 1e-9
