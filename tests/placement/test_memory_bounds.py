"""The lowering's memory upper bound (Lowered.memory_upper_bound: static + held + loss tensors per node,
the largest backward temporary, the cut edges' received tensors) is never below the simulated peak, on any placement, schedule and
microbatch count; and it is reached where the step holds everything at once."""

from __future__ import annotations

import random

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, CostModel, lower, simulate
from placement.problem import finish_plan, make_problem


def random_graph(seed: int, n: int, shared: bool = False) -> Graph:
    """A random DAG: an input first, outputs among the rest, some nodes with a whole footprint; with
    ``shared``, some edges from a node with parameters carry them too (a parameter shared with the
    edge's consumer, as an unrolled cell's)."""
    rng = random.Random(seed)
    g = Graph(f"random-{seed}")
    for i in range(n):
        g.add_node(NodeData(
            f"n{i}", "input" if i == 0 else "op", fwd_flops=rng.uniform(1e8, 5e9), bwd_flops=rng.choice((0.0, 8e9)),
            bytes_read=rng.uniform(0, 1e8), activation_bytes=rng.uniform(0, 1e7), output_bytes=rng.uniform(0, 1e7),
            param_bytes=rng.choice((0.0, 1e6)), is_output=rng.random() < 0.2,
            memory_bytes=rng.choice((None,) * 5 + (3e6,)),
        ))  # fmt: skip
        for j in rng.sample(range(i), min(i, rng.randint(0, 3))):
            edge = EdgeData(bytes=rng.choice((0.0, 1e5, 3e6)), output_index=rng.choice((None, 0, 1)))
            owner = g.node(f"n{j}")
            if shared and owner.param_bytes and owner.memory_bytes is None and rng.random() < 0.7:
                edge.param_bytes = owner.param_bytes
                edge.bytes += owner.param_bytes
            g.add_edge(f"n{j}", f"n{i}", edge)
    return g


@pytest.mark.parametrize("mode", ["training", "inference"])
@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("cluster", ["pcie-4gpu", "local"])
def test_the_simulated_peak_never_exceeds_the_bound(mode: str, m: int, cluster: str) -> None:
    c = Cluster.resolve(cluster)
    for seed in range(10):
        g = random_graph(seed, 12)
        cm = CostModel(c)
        lw = lower(g, c, cm, mode)
        rng = random.Random(seed)
        dev = [rng.randrange(len(c.devices)) for _ in lw.names]
        assignment = {name: c.device_names[d] for name, d in zip(lw.names, dev)}
        assignment.update({name: c.device_names[0] for name in lw.dropped})
        bound = dict(zip(c.device_names, lw.memory_upper_bound(dev, m).tolist()))
        results = [simulate(g, c, assignment, cm, mode=mode, microbatches=m, priority=p, lowered=lw)
                   for p in ("topological", "critical_path")]  # fmt: skip
        results.append(finish_plan(make_problem(g, c, mode=mode), assignment, solver="by-hand", microbatches=m).simulate())
        for result in results:
            for d, peak in result.peak_memory_bytes.items():
                assert peak <= bound[d] * (1 + 1e-12), (seed, d)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_the_bound_holds_with_shared_parameters_on_one_device(m: int) -> None:
    """Shared parameters sum their uses' gradients in a buffer (the simulator's ``_shared_gradients``):
    the bound counts its new sums and, per microbatch after the first, the buffer."""
    c = Cluster.resolve("local")
    with_shared = 0
    for seed in range(20):
        g = random_graph(seed, 14, shared=True)
        cm = CostModel(c)
        lw = lower(g, c, cm, "training")
        with_shared += bool(lw.shared_bytes.any())
        assignment = dict.fromkeys([*lw.names, *lw.dropped], c.device_names[0])
        bound = lw.memory_upper_bound([0] * len(lw.names), m)[0]
        for priority in ("topological", "critical_path"):
            peak = simulate(g, c, assignment, cm, microbatches=m, priority=priority, lowered=lw).peak_memory_bytes
            assert peak[c.device_names[0]] <= bound * (1 + 1e-12), (seed, priority)
    assert with_shared >= 15


def test_the_bound_is_reached_by_one_node_that_holds_everything() -> None:
    """One graph output fed by an input on another device, one microbatch: at its backward its
    activations, its backward's temporary (its output's gradient), the output, the loss's tensor and
    its gradient, and the received input are all alive (an input gets no gradient back)."""
    g = Graph("one")
    g.add_node(NodeData("x", "input", output_bytes=1e6))
    g.add_node(NodeData("y", "op", fwd_flops=1e9, bwd_flops=2e9, activation_bytes=5e6, output_bytes=2e6, is_output=True))
    g.add_edge("x", "y", EdgeData(bytes=1e6))
    c = Cluster.resolve("pcie-4gpu")
    lw = lower(g, c, CostModel(c))
    dev = [c.device_index("gpu0"), c.device_index("gpu1")]
    peak = simulate(g, c, {"x": "gpu0", "y": "gpu1"}, lowered=lw).peak_memory_bytes["gpu1"]
    assert lw.backward_temp.tolist() == [0.0, 2e6] and lw.loss_bytes.tolist() == [0.0, 3 * 2e6]
    # and the loss and its gradient, two float32 scalars
    assert peak == lw.memory_upper_bound(dev)[dev[1]] == 5e6 + 2e6 + 3 * 2e6 + 1e6 + 8
