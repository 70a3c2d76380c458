"""finish_plan: a plan's predicted step and peaks are the simulation of the schedule its devices run
(Plan.simulate), for every solver, and the order it records is the better of the ready queues' and the
topological one."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, Constraints, Device, Link, Plan, Switch, simulate
from placement.pipeline.microbatches import choose_microbatches
from placement.plan import Stage
from placement.problem import finish_plan, make_problem
from placement.solvers import BASELINES, HEURISTICS, solve


def two_hosts() -> Cluster:
    """Two hosts of two GPUs (one host twice as fast), PCIe inside a host, a slower network between."""
    devices = [Device(f"h{h}/d{i}", "X" if h == 0 else "Y", "gpu", f"h{h}", {"float32": 1e12 * (1 + h)}, 1e11, 8e9)
               for h in range(2) for i in range(2)]  # fmt: skip
    links = [Link(d.name, f"sw{d.host[1]}", "pcie", 2e9, 1e-4) for d in devices]
    links += [Link("sw0", "net", "ib", 1e9, 1e-4), Link("sw1", "net", "ib", 1e9, 1e-4)]
    switches = [Switch("sw0", "pcie_switch", "h0"), Switch("sw1", "pcie_switch", "h1"), Switch("net", "network")]
    return Cluster("two-hosts", devices, links, switches)


def random_graph(seed: int, n: int) -> Graph:
    """A random DAG with a graph input first and an output last, costs in the range of small layers."""
    rng = random.Random(seed)
    g = Graph(f"random-{seed}", {"batch_size": 8})
    for i in range(n):
        g.add_node(NodeData(f"n{i}", "input" if i == 0 else "op", fwd_flops=rng.uniform(1e8, 5e9), bwd_flops=rng.uniform(2e8, 1e10),
                            bytes_read=rng.uniform(0, 1e8), activation_bytes=rng.uniform(0, 1e7), output_bytes=rng.uniform(1e5, 1e7),
                            param_bytes=rng.choice((0.0, 1e6)), is_output=i == n - 1))  # fmt: skip
        preds = rng.sample(range(i), min(i, rng.randint(1, 3))) if i else []
        for j in preds:
            g.add_edge(f"n{j}", f"n{i}", EdgeData(bytes=rng.uniform(1e5, 4e6)))
    for i in range(1, n - 1):  # every node reaches the output
        if not list(g.successors(f"n{i}")):
            g.add_edge(f"n{i}", f"n{n - 1}", EdgeData(bytes=1e5))
    return g


def assert_predicted_is_simulated(plan: Plan) -> None:
    again = plan.simulate()
    assert plan.predicted_step_ms == again.step_ms
    assert plan.peak_memory_bytes == again.peak_memory_bytes
    assert simulate(plan).step_ms == again.step_ms  # simulate(plan) is Plan.simulate


LATENCY_SOLVERS = [s for s in (*BASELINES, *HEURISTICS, "cp-sat", "auto") if s != "expert"]


@pytest.mark.parametrize("solver", LATENCY_SOLVERS)
@pytest.mark.parametrize(("mode", "microbatches"), [("training", 1), ("training", 2), ("inference", 1), ("inference", 4)])
def test_every_solvers_prediction_is_its_plans_simulation(solver: str, mode: str, microbatches: int) -> None:
    for seed in range(2):
        plan = solve(random_graph(seed, 9), two_hosts(), solver=solver, mode=mode, microbatches=microbatches,
                     time_limit_s=2.0, seed=seed)  # fmt: skip
        assert plan.schedule_name() == "node-order"
        assert plan.order, "a latency plan records the order its devices run"
        assert_predicted_is_simulated(plan)


@pytest.mark.parametrize("mode", ["training", "inference"])
def test_a_pipeline_plans_prediction_is_its_schedules_simulation(mode: str) -> None:
    plan = solve(random_graph(3, 10), two_hosts(), objective="throughput", mode=mode, time_limit_s=2.0)
    assert plan.schedule in (("gpipe", "1f1b") if mode == "training" else ("gpipe",))
    assert_predicted_is_simulated(plan)


def chain(n: int = 4) -> Graph:
    g = Graph("chain", {"batch_size": 8})
    for i in range(n):
        g.add_node(NodeData(f"c{i}", "op", fwd_flops=1e9, bwd_flops=2e9, activation_bytes=4e8, output_bytes=1e6, param_bytes=1e6))
        if i:
            g.add_edge(f"c{i - 1}", f"c{i}", EdgeData(bytes=1e6))
    return g


def test_stages_get_the_better_pipeline_schedule_and_1f1b_when_gpipe_does_not_fit() -> None:
    """Four one-node stages whose activations take 50 MB per microbatch: GPipe holds all eight
    microbatches' on the first stage, 1F1B at most four; with a budget 1F1B fits and GPipe does not,
    the plan runs 1F1B."""
    g, c = chain(), two_hosts()
    names = c.device_names
    assignment = {f"c{i}": names[i] for i in range(4)}
    stages = [Stage(i, [f"c{i}"], [names[i]]) for i in range(4)]
    roomy = finish_plan(make_problem(g, c, microbatches=8), assignment, solver="by-hand", stages=stages, microbatches=8)
    by_name = {name: roomy.simulate(schedule=name) for name in ("gpipe", "1f1b")}
    fastest = min(by_name, key=lambda name: (by_name[name].step_ms, name != "gpipe"))
    assert roomy.schedule == fastest
    assert_predicted_is_simulated(roomy)
    budget = by_name["1f1b"].peak_memory_bytes[names[0]] + 1e7
    assert by_name["gpipe"].peak_memory_bytes[names[0]] > budget
    problem = make_problem(g, c, microbatches=8, constraints=Constraints(memory_budget={names[0]: budget}))
    tight = finish_plan(problem, assignment, solver="by-hand", stages=stages, microbatches=8)
    assert tight.schedule == "1f1b"
    assert_predicted_is_simulated(tight)


def test_replicated_stages_and_stages_no_schedule_runs() -> None:
    """A replicated stage runs its pipeline schedule round robin; stages whose data flows back to an
    earlier stage have no pipeline schedule and keep the ready queues, as Plan.simulate does."""
    g, c = chain(), two_hosts()
    d = c.device_names
    assignment = {"c0": d[0], "c1": d[0], "c2": d[2], "c3": d[2]}
    replicated = [Stage(0, ["c0", "c1"], [d[0], d[1]]), Stage(1, ["c2", "c3"], [d[2], d[3]])]
    plan = finish_plan(make_problem(g, c, microbatches=4), assignment, solver="by-hand", stages=replicated, microbatches=4)
    assert plan.schedule in ("gpipe", "1f1b")
    assert_predicted_is_simulated(plan)
    backwards = [Stage(0, ["c2", "c3"], [d[2]]), Stage(1, ["c0", "c1"], [d[0]])]
    plan = finish_plan(make_problem(g, c, microbatches=2), assignment, solver="by-hand", stages=backwards, microbatches=2)
    assert plan.schedule == ""
    assert_predicted_is_simulated(plan)
    ready = simulate(g, c, assignment, mode="training", microbatches=2)
    assert (plan.predicted_step_ms, plan.peak_memory_bytes) == (ready.step_ms, ready.peak_memory_bytes)


def test_the_microbatch_choice_compares_what_the_plans_will_predict() -> None:
    g, c = chain(), two_hosts()
    d = c.device_names
    assignment = {f"c{i}": d[i] for i in range(4)}
    stages = [Stage(i, [f"c{i}"], [d[i]]) for i in range(4)]
    problem = make_problem(g, c, objective="throughput")
    choice = choose_microbatches(problem, assignment, candidates=[1, 2, 4, 8], stages=stages)
    for m, step in choice.step_ms.items():
        assert step == finish_plan(problem, assignment, solver="by-hand", stages=stages, microbatches=m).predicted_step_ms
    assert choice.microbatches == min(choice.step_ms, key=lambda m: (choice.step_ms[m], m))


def test_the_order_recorded_is_the_ready_queues_when_no_slower_than_the_topological_one() -> None:
    for seed in range(8):
        g, c = random_graph(seed, 10), two_hosts()
        rng = random.Random(seed)
        assignment = {v: rng.choice(c.device_names) for v in g.node_names()}
        plan = finish_plan(make_problem(g, c), assignment, solver="by-hand")
        ready = simulate(g, c, assignment)
        forward = sorted((e for e in ready.timeline if e.kind == "forward"), key=lambda e: e.start_ms)
        ready_order = {d: [e.name for e in forward if e.device == d] for d in plan.order}
        topological = {d: [v for v in g.topological_order() if assignment[v] == d] for d in plan.order}
        steps = {name: replace(plan, order=order).simulate().step_ms
                 for name, order in (("ready", ready_order), ("topological", topological))}  # fmt: skip
        assert plan.order == (ready_order if steps["ready"] <= steps["topological"] else topological)
        assert plan.predicted_step_ms == min(steps.values())
        assert_predicted_is_simulated(plan)


def test_an_order_against_the_dependencies_is_still_refused() -> None:
    g = chain(2)
    c = two_hosts()
    d = c.device_names[0]
    with pytest.raises(Exception, match="deadlock"):
        finish_plan(make_problem(g, c), dict.fromkeys(g.node_names(), d), solver="by-hand", order={d: ["c1", "c0"]})
