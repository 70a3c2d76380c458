"""The list schedulers' model of transfers (:mod:`placement.solvers.linkbook`): transfers that share a
link wait for each other, a tensor goes once to each device, and the schedule this gives predicts the
simulated step."""

from __future__ import annotations

import pytest
from test_solvers_common import MB, branches, graph, mesh, random_graph, star

from graphc.ir.graph import Graph
from placement import Cluster, simulate
from placement.constraints import Constraints
from placement.problem import make_problem
from placement.solvers import HEURISTICS, SOLVERS, solve
from placement.solvers.instance import instance
from placement.solvers.listsched import Schedule
from placement.solvers.steptime import step_ms


def two_producers() -> Graph:
    """a and b (1 ms each) send 10 MB (10 ms on the test links) to c (20 ms); z (15 ms) stands apart."""
    return graph(
        {"a": (1, 0), "b": (1, 0), "z": (15, 0), "c": (20, 0)},
        [("a", "c", 10 * MB), ("b", "c", 10 * MB)],
    )


def schedule_of(g, cluster: Cluster, placed: list[tuple[str, str, float]]) -> tuple[Schedule, dict[str, int]]:
    """A schedule of ``g`` (inference) with the nodes ``placed`` as (node, device, start)."""
    inst = instance(make_problem(g, cluster, mode="inference"))
    sched = Schedule(inst)
    devices = {d.name: i for i, d in enumerate(inst.devices)}
    for node, device, start in placed:
        sched.place(inst.index[node], devices[device], start)
    return sched, inst.index


def test_two_producers_on_one_device_send_one_after_the_other() -> None:
    # a and b on d0 both send over d0's one link to the switch: b's tensor waits for a's.
    sched, index = schedule_of(two_producers(), star(3), [("a", "d0", 0.0), ("b", "d0", 1.0)])
    c = index["c"]
    assert sched.ready_on(c, 0) == 2.0  # both already there
    assert sched.ready_on(c, 1) == 21.0  # a: 1 -> 11, then b: 11 -> 21 (not 2 + 10 = 12)
    # On a mesh the two producers' links are their own: b's tensor starts as soon as b ends.
    sched, index = schedule_of(two_producers(), mesh(3), [("a", "d0", 0.0), ("b", "d2", 0.0)])
    assert sched.ready_on(index["c"], 1) == 11.0


def test_contention_changes_the_device_chosen() -> None:
    # d0 is busy with z until 17. Without contention c would move to d1 and finish at 12 + 20 = 32;
    # with a's and b's tensors one after the other on d0's link it could start there only at 21, so
    # it waits for d0 (17 + 20 = 37 < 41).
    placed = [("a", "d0", 0.0), ("b", "d0", 1.0), ("z", "d0", 2.0)]
    sched, index = schedule_of(two_producers(), star(3), placed)
    assert sched.eft(index["c"]) == (0, 17.0)
    # b on d2 of a mesh: the two tensors travel on different links and c goes to d1 at 11.
    placed = [("a", "d0", 0.0), ("b", "d2", 0.0), ("z", "d0", 1.0)]
    sched, index = schedule_of(two_producers(), mesh(3), placed)
    assert sched.eft(index["c"]) == (1, 11.0)


def test_m_etf_keeps_the_consumer_of_two_pinned_producers_with_them() -> None:
    # ETF runs a, b (higher static level) then z on d0, and c, by the rule above, on d0 too: the step
    # its schedule predicts is the simulated one, 1 + 1 + 15 + 20 ms.
    cons = Constraints(pins={"a": "d0", "b": "d0", "z": "d0"})
    plan = solve(two_producers(), star(3), constraints=cons, solver="m-etf", mode="inference")
    assert plan.assignment["c"] == "d0"
    assert plan.settings["schedule_ms"] == plan.predicted_step_ms == 37.0


def test_a_tensor_goes_once_to_each_device() -> None:
    g = graph({"a": (1, 0), "c1": (1, 0), "c2": (1, 0)}, [("a", "c1", 10 * MB), ("a", "c2", 10 * MB)])
    sched, index = schedule_of(g, star(2), [("a", "d0", 0.0), ("c1", "d1", 0.0)])
    assert sched.start[index["c1"]] == 11.0  # placed at its data-ready time
    assert sched.ready_on(index["c2"], 1) == 11.0  # the tensor c1 received: no second transfer
    # One direction of each of the two links held once, 1 -> 11 (the other directions are free).
    assert sorted(sched.links.free) == [0.0, 0.0, 11.0, 11.0]


def test_a_gradient_holds_the_reverse_route_in_training() -> None:
    g = graph({"a": (1, 2), "c": (1, 2)}, [("a", "c", 10 * MB)])
    inst = instance(make_problem(g, mesh(2)))
    sched = Schedule(inst)
    sched.place(inst.index["a"], 0, 0.0)
    # a takes 1 + 2 ms (training-folded), its tensor 10 ms to d1, the gradient 10 ms back.
    assert sched.ready_on(inst.index["c"], 1) == 23.0


def test_a_cpu_moves_its_tensors_itself() -> None:
    # d0 is a CPU (no copy engine): a's tensor for c waits until z, running there, ends; c then waits
    # for the transfer. The simulator gives the same step.
    g = graph({"a": (1, 0), "z": (5, 0), "c": (1, 0)}, [("a", "c", 10 * MB)])
    cluster = star(2, kinds=("cpu",))
    sched, index = schedule_of(g, cluster, [("a", "d1", 0.0), ("z", "d0", 0.0)])
    assert sched.finish[index["z"]] == 20.0  # four times slower on the CPU
    assert sched.ready_on(index["c"], 0) == 30.0  # the transfer: 20 -> 30, not 1 -> 11
    sched.place(index["c"], 0, 0.0)
    assert (sched.start[index["c"]], sched.makespan()) == (30.0, 34.0)
    order = {"d0": ["z", "c"], "d1": ["a"]}
    assignment = {"a": "d1", "z": "d0", "c": "d0"}
    assert simulate(g, cluster, assignment, mode="inference", order=order).step_ms == 34.0


@pytest.mark.parametrize("name", HEURISTICS)
def test_a_slow_cpu_is_not_chosen_where_it_finishes_later(name: str) -> None:
    # d0 is a CPU, four times slower; d1 and d2 GPUs. Both branches go to the GPUs.
    plan = solve(branches(), star(3, kinds=("cpu",)), solver=name)
    assert "d0" not in plan.assignment.values()
    assert plan.predicted_step_ms <= solve(branches(), star(3, kinds=("cpu",)), solver="single").predicted_step_ms


@pytest.mark.parametrize("name", HEURISTICS)
def test_the_schedule_predicts_the_simulated_step(name: str) -> None:
    """On small random graphs, whose transfers take as long as their tasks, the step a heuristic's
    schedule predicts (:func:`~placement.solvers.steptime.step_ms`) is at most 10% below the simulated
    step, and no heuristic is slower than one device. What the schedule leaves out: the simulator
    sends a tensor as soon as its producer ends, first come first served on each link, where the
    schedule books it when it places the consumer, after the transfers booked before."""
    for seed in range(6):
        for cluster in (star(3), mesh(3), star(3, kinds=("cpu",))):
            for mode in ("inference", "training"):
                problem = make_problem(random_graph(seed, 25), cluster, mode=mode)
                plan = SOLVERS[name](problem)
                single = SOLVERS["single"](problem).predicted_step_ms
                assert plan.settings["schedule_ms"] >= 0.9 * plan.predicted_step_ms, (seed, cluster.name, mode)
                assert plan.predicted_step_ms <= single * (1 + 1e-9), (seed, cluster.name, mode)


def test_the_training_step_is_timed_pass_by_pass() -> None:
    # b on d0 feeds c on d1 and d on d0; a on d1 feeds d. 1 MB tensors: 1 ms a transfer.
    g = graph({"a": (4, 3), "b": (4, 3), "c": (4, 1), "d": (3, 2)}, [("a", "d"), ("b", "c"), ("b", "d")])
    inst = instance(make_problem(g, mesh(2)))
    sched = Schedule(inst)
    for node, d in (("a", 1), ("b", 0), ("c", 1), ("d", 0)):
        sched.append(inst.index[node], d)
    # Folded, a's gradient (d0 -> d1, 8-9) holds the link b's tensor needs: c runs 11-16.
    assert sched.makespan() == 16.0
    # Pass by pass: forwards a, b 0-4, both tensors 4-5, d 5-8 on d0, c 5-9 on d1; backwards d 8-10,
    # c 9-10, both gradients 10-11, then a and b 11-14.
    assert step_ms(sched) == 14.0
    assignment = {"a": "d1", "b": "d0", "c": "d1", "d": "d0"}
    assert simulate(g, mesh(2), assignment, order={"d0": ["b", "d"], "d1": ["a", "c"]}).step_ms == 14.0


@pytest.mark.parametrize(
    ("cluster", "mode"),
    [("2x8-v100-ib", "training"), ("pcie-4gpu", "training"), ("pcie-4gpu", "inference"), ("star", "training")],
)
def test_ready_row_prices_every_device_as_ready_does(cluster: str, mode: str, monkeypatch) -> None:
    # The row's NumPy path even on these few devices (it is kept for more than ROW_DEVICES). Nodes booked one by one on random devices (so inputs arrive from several devices over shared
    # links, some already sent, a CPU without a copy engine on pcie-4gpu): before each booking, the
    # row priced for all devices at once equals ready() device by device, to the bit.
    import random

    from placement.solvers import linkbook

    monkeypatch.setattr(linkbook, "ROW_DEVICES", 0)
    c = star(4) if cluster == "star" else Cluster.preset(cluster)
    inst = instance(make_problem(random_graph(3, 40, uniform_bytes=False), c, mode=mode))
    sched = Schedule(inst)
    rng = random.Random(0)
    for v in range(inst.n):
        row = sched.links.ready_row(v, sched.dev, sched.finish)
        assert row.tolist() == [sched.links.ready(v, d, sched.dev, sched.finish) for d in range(inst.num_devices)]
        sched.append(v, rng.randrange(inst.num_devices))
