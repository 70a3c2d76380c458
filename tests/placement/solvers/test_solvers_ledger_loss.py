"""The memory ledger counts a graph output's loss tensors and, per device, the largest backward
temporary of its graph outputs (:class:`~placement.solvers.listsched.MemoryLedger`), as the simulator does.

The shape of the zoo GPT-2 on ``pcie-4gpu``: the output head owns no parameter (its weight is tied to
the embedding's, which sends it) and holds nothing, so its static footprint is zero, but its loss
tensors (three output-sized tensors) and its backward temporary are large. A ledger that left them out
let every list scheduler put the head on a device it overflows, and the simulator refused the plan.
"""

from __future__ import annotations

import pytest
from test_solvers_common import MB, graph, star

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import simulate
from placement.constraints import InfeasibleError
from placement.lowering import LOSS_SCALAR_BYTES
from placement.problem import make_problem
from placement.solvers import SOLVERS
from placement.solvers.instance import instance
from placement.solvers.listsched import Schedule

HEAD_OUT = 200 * MB  # the head's output: 600 MB of loss tensors, a 250 MB backward temporary


def tied_head(blocks: int = 6, aux: bool = False) -> Graph:
    """emb -> b0 -> ... -> head; emb also sends head its 40 MB weight (tied); each node but the head
    owns 40 MB of parameters and keeps 10 MB of activations (170 MB with gradients and optimizer state).
    ``aux``: the last block also feeds a second, smaller output (20 MB: 60 MB of loss tensors, a 30 MB
    backward temporary)."""
    nodes = {"emb": (1, 1, 10 * MB, 40 * MB)} | {f"b{i}": (4, 4, 10 * MB, 40 * MB) for i in range(blocks)}
    edges = [("emb", "b0", 10 * MB)] + [(f"b{i}", f"b{i + 1}", 10 * MB) for i in range(blocks - 1)]
    g = graph(nodes, edges)
    g.add_node(NodeData("head", "op", measured_ms={"X": 1}, measured_bwd_ms={"X": 1}, output_bytes=HEAD_OUT, is_output=True))
    g.add_edge(f"b{blocks - 1}", "head", EdgeData(bytes=10 * MB))
    g.add_edge("emb", "head", EdgeData(bytes=40 * MB, param_bytes=40 * MB))
    if aux:
        g.add_node(NodeData("aux", "op", measured_ms={"X": 1}, measured_bwd_ms={"X": 1}, output_bytes=20 * MB, is_output=True))
        g.add_edge(f"b{blocks - 1}", "aux", EdgeData(bytes=10 * MB))
    return g


@pytest.mark.parametrize("name", ["m-etf", "m-sct", "heft", "critical-path", "m-topo"])
def test_list_schedulers_give_the_head_a_device_its_loss_fits_on(name: str) -> None:
    # 1,190 MB of nodes on three 1,000 MB devices: no single device holds the graph, and the head
    # (850 MB in simulation) fits only on a device of its own.
    g, cluster = tied_head(), star(3, memory=1000 * MB)
    plan = SOLVERS[name](make_problem(g, cluster))  # the simulator refused every one before
    assert plan.solver == name
    assert sum(1 for d in plan.assignment.values() if d == plan.assignment["head"]) == 1
    for device, peak in plan.peak_memory_bytes.items():
        assert peak <= cluster.device(device).memory_bytes


def test_the_ledger_charges_the_loss_and_the_largest_temporary_once() -> None:
    g, cluster = tied_head(aux=True), star(3, memory=1000 * MB)
    inst = instance(make_problem(g, cluster))
    sched = Schedule(inst)
    ledger = sched.ledger
    assert not ledger.unbounded
    for name in ("emb", "b0", "b1", "b2", "b3", "b4"):
        sched.append(inst.index[name], 0)
    sched.append(inst.index["b5"], 1)
    sched.append(inst.index["head"], 1)
    # d1 by hand: b5 (170 MB, and 2 x 10 MB received from b4; an inner node's temporary is not
    # counted), then the head: 3 x 200 MB of loss and two loss scalars, its temporary (its output and
    # the 50 MB it receives), and 2 x 40 MB for the tied weight from emb.
    b5 = 170 * MB + 2 * 10 * MB
    head = 3 * HEAD_OUT + 2 * LOSS_SCALAR_BYTES + (HEAD_OUT + 50 * MB) + 2 * 40 * MB
    assert inst.capacity[1] - ledger.free[1] == pytest.approx(b5 + head)
    # The second output adds its loss, not its temporary (30 MB, less than the head's: one backward
    # at a time).
    sched.append(inst.index["aux"], 1)
    assert inst.capacity[1] - ledger.free[1] == pytest.approx(b5 + head + 3 * 20 * MB + 2 * LOSS_SCALAR_BYTES)
    # The simulator's peak on the outputs' device is within what the ledger charged it.
    result = simulate(g, cluster, inst.assignment_names(sched.dev))
    assert result.peak_memory_bytes["d1"] <= inst.capacity[1] - ledger.free[1]


def test_the_single_device_plan_counts_the_outputs_loss_when_it_sizes_the_graph() -> None:
    # 850 MB of nodes by their own footprints, 1,450 MB in simulation with the head's loss tensors and
    # temporary: no 1,000 MB device holds the graph, so single must say so, not pick a device the
    # simulator then refuses (and every heuristic took that plan where its step was shorter).
    g, cluster = tied_head(4), star(3, memory=1000 * MB)
    with pytest.raises(InfeasibleError, match="more than any one device holds"):
        SOLVERS["single"](make_problem(g, cluster))
    for name in ("m-etf", "m-sct", "heft", "critical-path", "m-topo"):
        plan = SOLVERS[name](make_problem(g, cluster))
        assert all(peak <= cluster.device(d).memory_bytes for d, peak in plan.peak_memory_bytes.items()), name
