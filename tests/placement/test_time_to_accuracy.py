"""placement.time_to_accuracy: each strategy's step time from collectives' figures computed by hand on a
hand-built cluster, the choice flipping from sync SGD on a fast link to averaging on a slow one, the
convergence file read into runs, tiers of replicas, the Ethernet presets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from graphc.ir.graph import Graph, NodeData
from placement import Cluster, ConfigurationError, Device, Link, Switch
from placement.cost_model import CostModel
from placement.hybrid import solve_parallel, worker_devices
from placement.presets import ETHERNET_PER_GBIT
from placement.problem import make_problem
from placement.simulate import simulate
from placement.sync import AllReduceSync, ElasticAveragingSync, LocalSGDSync
from placement.time_to_accuracy import (
    Run,
    choose_sync,
    estimates,
    runs_from_convergence,
    step_times,
    sync_of_run,
    tier_devices,
)

GPUS = ["d0", "d1", "d2", "d3"]
P = 4e6  # parameter bytes of the chain below


def chain(nodes: int = 4, batch: int = 8) -> Graph:
    """``nodes`` linear layers of ``P / nodes`` parameter bytes each, at batch ``batch``."""
    g = Graph("chain")
    for i in range(nodes):
        g.add_node(
            NodeData(
                f"n{i}", "linear", fwd_flops=2e9, bwd_flops=4e9, param_bytes=P / nodes, output_bytes=4.0 * batch * 256,
                output_shapes=[[batch, 256]], output_dtypes=["float32"],
            )
        )  # fmt: skip
        if i:
            g.add_edge(f"n{i - 1}", f"n{i}")
    return g


def star(bandwidth: float, latency_s: float, server_bandwidth: float = 2e9) -> Cluster:
    """GPUs d0..d3 and a CPU server, each on its own full-duplex link to one Ethernet switch."""
    gpus = [Device(d, "X", "gpu", "h", {"float32": 1e13}, 1e12, 1e12) for d in GPUS]
    cpu = Device("cpu0", "Xeon", "cpu", "h", {"float32": 1e12}, 1e11, 1e12)
    links = [Link(d, "eth", "ethernet", bandwidth, latency_s) for d in GPUS] + [Link("cpu0", "eth", "ethernet", server_bandwidth, latency_s)]
    return Cluster("star", [*gpus, cpu], links, [Switch("eth", "network", None)])


def test_each_strategy_step_is_the_compute_step_plus_its_collectives_computed_by_hand() -> None:
    b, lat, bs = 1e9, 1e-5, 2e9
    problem = make_problem(chain(), star(b, lat, bs), objective="throughput")
    times = step_times(problem, GPUS, servers=["cpu0"])
    c = times.compute_ms
    # One replica's step: a quarter of one device running the four microbatches of the global batch,
    # less the three adds of each microbatch's gradients into .grad that one device makes and a replica
    # running one microbatch does not (read two, write one tensor of P at the GPU's 1e12 B/s).
    alone = simulate(problem.graph, problem.cluster, {n: "d0" for n in problem.graph.node_names()}, microbatches=4)
    assert c == pytest.approx((alone.busy_ms["d0"] - 3 * 1e3 * 3 * P / 1e12) / 4)
    # Ring all-reduce of P over 4 devices, each ring edge two links of latency lat: 2 (r-1) rounds of P/r.
    ring_ms = 1e3 * 2 * 3 * (2 * lat + P / 4 / b)
    assert times.allreduce_ms == pytest.approx(ring_ms)
    # Async exchange: 4 workers push P into the server's one link (4P / bs), then it sends 4P back.
    exchange_ms = 2 * 1e3 * (2 * lat + max(P / b, 4 * P / bs))
    assert times.exchange_ms == pytest.approx(exchange_ms)
    # Sync SGD overlaps its bucketed all-reduce with the backward: between the compute step and c + A.
    assert c < times.sync_sgd_ms <= c + ring_ms + 1e-9
    ring_bytes = 2 * 3 / 4 * P
    assert times.per_step(AllReduceSync()) == (times.sync_sgd_ms, ring_bytes)
    assert times.per_step(ElasticAveragingSync(tau=4)) == pytest.approx((c + ring_ms / 4, ring_bytes / 4))
    assert times.per_step(ElasticAveragingSync(tau=10, momentum=0.9)) == pytest.approx((c + ring_ms / 10, ring_bytes / 10))
    assert times.per_step(LocalSGDSync(10, "nesterov")) == pytest.approx((c + ring_ms / 10, ring_bytes / 10))
    hidden = ElasticAveragingSync(tau=10, asynchronous=True, prefetch=2)
    assert times.per_step(hidden) == pytest.approx((c + max(0.0, exchange_ms - 2 * c) / 10, P / 10))
    assert (times.tier, times.link) == ("inside a host", ("ethernet", b))


def test_a_cpu_server_costs_the_cpu_time_of_its_messages_when_that_exceeds_the_wire() -> None:
    cluster = star(1e9, 0.0)
    slow_cpu = CostModel(cluster, endpoint_cpu_s=1e-3)  # 1 ms of the server's CPU per message
    times = step_times(make_problem(chain(), cluster, objective="throughput", cost_model=slow_cpu), GPUS, servers=["cpu0"])
    # Push and pull: the server's 4 messages cost it 4 ms of CPU, less than the wire's 4P / 2e9 = 8 ms.
    assert times.exchange_ms == pytest.approx(2 * 1e3 * 4 * P / 2e9)
    slower_cpu = CostModel(cluster, endpoint_cpu_s=5e-3)  # now 4 x 5 ms per phase, more than the wire's 8 ms
    times = step_times(make_problem(chain(), cluster, objective="throughput", cost_model=slower_cpu), GPUS, servers=["cpu0"])
    assert times.exchange_ms == pytest.approx(2 * 4 * 5.0)


def runs(sgd_steps: int, local_steps: int) -> list[Run]:
    def run(name: str, sync, steps: int) -> Run:
        return Run(name, sync, 4, ((steps - 20, 0.5), (steps, 0.95)))

    return [run("sync SGD", AllReduceSync(), sgd_steps), run("local SGD H=10", LocalSGDSync(10), local_steps)]


def test_the_choice_flips_from_sync_sgd_on_a_fast_link_to_local_sgd_on_a_slow_one() -> None:
    measured = runs(sgd_steps=100, local_steps=120)  # averaging needs 20% more steps
    fast = choose_sync(make_problem(chain(), star(1e11, 1e-6, 1e11), objective="throughput"), GPUS, measured, 0.95)
    assert fast.chosen.name == "sync SGD"
    assert fast.reason.startswith("inside a host (paced by ethernet at 100 GB/s), sync SGD reaches 95% in")
    assert "local SGD H=10, sends 10x fewer bytes per step than sync SGD but takes" in fast.reason
    slow = choose_sync(make_problem(chain(), star(1e8, 1e-4, 1e8), objective="throughput"), GPUS, measured, 0.95)
    assert slow.chosen.name == "local SGD H=10"
    assert "local SGD H=10 sends 10x fewer bytes per step than sync SGD and reaches 95% in" in slow.reason
    sgd, local = slow.candidates
    assert sgd.seconds == pytest.approx(100 * sgd.step_ms / 1e3) and local.seconds < sgd.seconds
    assert slow.to_dict()["sync"] == {"kind": "local-sgd", "period": 10, "outer": "average"}


def test_a_strategy_that_never_reached_the_target_is_not_chosen_and_none_reaching_is_an_error() -> None:
    problem = make_problem(chain(), star(1e8, 1e-4, 1e8), objective="throughput")
    measured = runs(100, 120)
    never = [measured[0], Run("local SGD H=10", LocalSGDSync(10), 4, ((600, 0.9),))]
    assert choose_sync(problem, GPUS, never, 0.95).chosen.name == "sync SGD"
    with pytest.raises(ConfigurationError, match="no strategy reached 99%"):
        choose_sync(problem, GPUS, measured, 0.99)
    with pytest.raises(ConfigurationError, match=r"no convergence run with 2 workers \(runs have \[4\]\)"):
        choose_sync(problem, GPUS[:2], measured, 0.95)


def test_async_easgd_is_left_out_without_servers() -> None:
    problem = make_problem(chain(), star(1e9, 1e-5), objective="throughput")
    times = step_times(problem, GPUS, servers=[])
    asynchronous = Run("async EASGD tau=10 p=5", ElasticAveragingSync(10, asynchronous=True, prefetch=5), 4, ((100, 0.95),))
    assert times.exchange_ms is None
    assert [e.name for e in estimates(times, [*runs(100, 120), asynchronous], 0.95)] == ["sync SGD", "local SGD H=10"]
    assert step_times(problem, GPUS).servers == ("cpu0",)  # by default the CPU devices of the replicas' hosts
    ethernet = Cluster.preset("4x8-v100-10gbe")
    across = make_problem(chain(), ethernet, objective="throughput")
    assert step_times(across, ["h0/gpu0", "h1/gpu0"]).servers == ("h0/cpu0", "h1/cpu0")
    assert step_times(across, ["h0/gpu0", "h0/gpu1"]).servers == ("h0/cpu0",)


def test_convergence_runs_become_sync_records_and_steps_to_a_target() -> None:
    doc = {
        "curves": [
            {"name": "sync SGD", "kind": "local", "period": 1, "workers": 2, "history": [{"step": 20, "accuracy": 0.5}, {"step": 40, "accuracy": 0.91}]},
            {"name": "async EASGD tau=10 p=5", "kind": "async", "period": 10, "prefetch": 5, "workers": 2, "history": [{"step": 20, "accuracy": 0.93}]},
        ]
    }
    sgd, asynchronous = runs_from_convergence(doc)
    assert sgd.sync == AllReduceSync() and asynchronous.sync == ElasticAveragingSync(10, asynchronous=True, prefetch=5)
    assert (sgd.steps_to(0.9), sgd.steps_to(0.95), asynchronous.steps_to(0.9)) == (40, None, 20)
    assert sync_of_run("local", 10) == LocalSGDSync(10)
    assert sync_of_run("diloco", 10) == LocalSGDSync(10, "nesterov")
    assert sync_of_run("eamsgd", 10) == ElasticAveragingSync(10, momentum=0.9)
    with pytest.raises(ConfigurationError, match="kind 'gossip'"):
        sync_of_run("gossip", 1)
    with pytest.raises(ConfigurationError, match=r"c.json: curves\[0\]: expected name, kind"):
        runs_from_convergence({"curves": [{"name": "x"}]}, "c.json")
    with pytest.raises(ConfigurationError, match="run examples/elastic_convergence.py"):
        runs_from_convergence({"curves": []})


def test_ethernet_presets_put_tcp_goodput_on_the_wire_and_replicas_on_gpus() -> None:
    cluster = Cluster.preset("4x8-v100-10gbe")
    ethernet = [lk for lk in cluster.links if lk.kind == "ethernet"]
    assert len(ethernet) == 4 and all(lk.bandwidth == pytest.approx(10e9 / 8 * 1448 / 1538) for lk in ethernet)
    assert ETHERNET_PER_GBIT == pytest.approx(1e9 / 8 * 0.9415, rel=1e-3)
    assert cluster.route("h0/gpu0", "h1/gpu0").bandwidth == pytest.approx(10 * ETHERNET_PER_GBIT)
    assert [d.name for d in cluster.devices if d.category == "cpu"] == [f"h{i}/cpu0" for i in range(4)]
    assert Cluster.preset("8x1-v100-1gbe").route("h0/gpu0", "h7/gpu0").bandwidth == pytest.approx(ETHERNET_PER_GBIT)
    assert worker_devices(Cluster.preset("8x1-v100-1gbe")) == [f"h{i}/gpu0" for i in range(8)]


def test_tiers_put_replicas_inside_one_host_or_round_robin_across_hosts() -> None:
    cluster = Cluster.preset("4x8-v100-10gbe")
    workers = worker_devices(cluster)
    tiers = tier_devices(cluster, workers, 8)
    assert tiers["inside a host"] == [f"h0/gpu{j}" for j in range(8)]
    assert tiers["across hosts"] == [f"h{k % 4}/gpu{k // 4}" for k in range(8)]
    assert tier_devices(cluster, workers, 2)["across hosts"] == ["h0/gpu0", "h1/gpu0"]
    assert list(tier_devices(Cluster.preset("dgx1-v100"), worker_devices(Cluster.preset("dgx1-v100")), 4)) == ["inside a host"]
    assert list(tier_devices(Cluster.preset("8x1-v100-1gbe"), worker_devices(Cluster.preset("8x1-v100-1gbe")), 4)) == ["across hosts"]


def test_the_planner_records_the_time_to_accuracy_choice_of_a_data_parallel_plan() -> None:
    measured = [replace(r, workers=n) for r in runs(sgd_steps=100, local_steps=120) for n in (2, 4)]
    slow = make_problem(chain(), star(1e8, 1e-4, 1e8), objective="throughput")
    plan = solve_parallel(slow, parallel="data", sync="ring", convergence=measured, target=0.95)
    (stage,) = plan.stages
    expected = choose_sync(slow, stage.devices, measured, 0.95, gradient_syncs=[plan.sync]).to_dict()
    assert plan.settings["parallel"]["sync_choice"] == expected
    assert expected["chosen"] == "local SGD H=10"  # the slow link: as the choice test above finds
    assert isinstance(plan.sync, AllReduceSync)  # the schedule still runs the gradient all-reduce
    three = solve_parallel(slow, parallel="data", sync="ring", convergence=[replace(r, workers=3) for r in measured])
    assert "no convergence run with" in three.settings["parallel"]["sync_choice"]["none"]  # said, not guessed


def test_no_time_to_accuracy_choice_for_a_pipeline() -> None:
    problem = make_problem(chain(), star(1e8, 1e-4, 1e8), objective="throughput")
    plan = solve_parallel(problem, parallel="pipeline", convergence=runs(100, 120))
    assert plan.settings["parallel"]["sync_choice"] == {"none": "the chosen layout is not pure data parallel"}


def test_a_model_without_parameters_is_chosen_for_without_a_ratio_of_bytes() -> None:
    bare = chain()
    for node in bare.nodes():
        node.param_bytes = 0.0
    choice = choose_sync(make_problem(bare, star(1e8, 1e-4, 1e8), objective="throughput"), GPUS, runs(100, 120), 0.95)
    assert "sends 0 bytes per step against" in choice.reason
