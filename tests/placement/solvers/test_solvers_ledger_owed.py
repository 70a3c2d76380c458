"""The memory ledger keeps what a producer's cuts will cost on its device (:class:`MemoryLedger`):
a node whose producer's device is full goes to another device, and memory is still respected."""

from __future__ import annotations

import pytest
from test_solvers_common import MB, graph, star

from placement import simulate
from placement.problem import make_problem
from placement.solvers import SOLVERS
from placement.solvers.instance import instance
from placement.solvers.listsched import Schedule


def producer_and_fillers():
    """p (10 MB out) feeds c1 and c2 (each 40 MB of parameters); f0..f11 (30 MB of parameters each)
    stand apart and fill whichever device takes them."""
    nodes = {"p": (1, 1, 10 * MB, 10 * MB), "c1": (1, 1, MB, 40 * MB), "c2": (1, 1, MB, 40 * MB)}
    nodes.update({f"f{i}": (1, 1, MB, 30 * MB) for i in range(12)})
    return graph(nodes, [("p", "c1", 10 * MB), ("p", "c2", 10 * MB)])


def test_a_full_producer_device_still_sends_to_consumers_elsewhere() -> None:
    g = producer_and_fillers()
    cluster = star(3, memory=791 * MB)  # without the owed shares d0 would keep 15 MB, less than a cut
    inst = instance(make_problem(g, cluster))
    sched = Schedule(inst)
    ledger = sched.ledger
    assert not ledger.unbounded
    p, c1, c2 = (inst.index[x] for x in ("p", "c1", "c2"))
    sched.append(p, 0)
    # p owes its device both cuts (2 x 10 MB for each consumer: the tensor kept and its gradient).
    assert ledger.pending[0] == pytest.approx(2 * 2 * inst.send_bytes[p])
    fillers = [inst.index[f"f{i}"] for i in range(12)]
    placed = 0
    for f in fillers:  # a greedy fill of d0, as far as the ledger lets it
        if ledger.fits(f, 0, sched.dev):
            sched.append(f, 0)
            placed += 1
    assert 0 < placed < len(fillers)  # d0 is full: the next filler does not fit
    # Neither consumer fits on d0 any more, but both fit elsewhere: p's device paid their cuts in advance.
    assert 0 not in sched.candidates(c1)
    sched.append(c1, sched.candidates(c1)[0])
    assert 0 not in sched.candidates(c2)
    sched.append(c2, max(sched.candidates(c2), key=lambda d: d != int(sched.dev[c1])))
    assert len({int(sched.dev[p]), int(sched.dev[c1]), int(sched.dev[c2])}) == 3  # two cuts from d0
    assert ledger.pending.tolist() == [0.0, 0.0, 0.0]  # every share released
    for f in fillers:
        if sched.dev[f] < 0:
            sched.append(f, sched.candidates(f)[0])
    # Memory respected: the simulator's peak on each device is within what the ledger charged it.
    result = simulate(g, cluster, inst.assignment_names(sched.dev))
    for d, device in enumerate(inst.devices):
        assert result.peak_memory_bytes[device.name] <= inst.capacity[d] - ledger.free[d] + 1e-6
        assert ledger.free[d] >= 0


@pytest.mark.parametrize("name", ["heft", "m-etf"])
def test_list_schedulers_place_past_a_full_producer_device(name: str) -> None:
    # Chains whose producers fan out to two consumers, on devices that hold a few nodes each: every
    # node is placed and every device's simulated peak fits its memory.
    nodes, edges = {}, []
    for i in range(24):
        nodes[f"n{i}"] = (1, 1, 10 * MB, 40 * MB)
        for j in (2 * i + 1, 2 * i + 2):
            if j < 24:
                edges.append((f"n{i}", f"n{j}", 10 * MB))
    g = graph(nodes, edges)
    cluster = star(8, memory=1000 * MB)
    plan = SOLVERS[name](make_problem(g, cluster))
    assert len(set(plan.assignment.values())) > 1
    for device, peak in plan.peak_memory_bytes.items():
        assert peak <= cluster.device(device).memory_bytes


@pytest.mark.parametrize(("mode", "memory", "headroom"), [
    ("training", 1500 * MB, 1.0), ("training", 1500 * MB, 64.0), ("inference", 250 * MB, 1.0),
])  # fmt: skip
def test_the_fast_checks_agree_with_the_exact_one(mode: str, memory: float, headroom: float) -> None:
    # fits() and fitting() take a shortcut when even every input arriving from elsewhere fits; along a
    # random fill of small devices they accept exactly what the charge-by-charge check accepts.
    import random

    from test_solvers_common import random_graph

    g = random_graph(5, 60)
    for node in g.nodes():
        node.param_bytes = 20 * MB
    inst = instance(make_problem(g, star(4, memory=memory), mode=mode))
    sched = Schedule(inst, headroom=headroom)  # a larger reserve: more placements near the fast path's edge
    ledger = sched.ledger
    assert not ledger.unbounded
    rng = random.Random(1)
    refused = 0

    def exact(w: int) -> list[int]:
        return [d for d in range(inst.num_devices) if ledger.may_use(w, d) and ledger._overflow(w, d, sched.dev) is None]

    for v in range(inst.n):
        for w in range(v, inst.n):  # every node not placed yet, on every device
            assert [d for d in range(inst.num_devices) if ledger.may_use(w, d) and ledger.fits(w, d, sched.dev)] == exact(w)
            assert ledger.fitting(w, sched.dev) == exact(w)
        options = exact(v)
        refused += inst.num_devices - len(options)
        if not options:
            break
        sched.append(v, rng.choice(options))
    assert refused > 0  # the devices did fill up
