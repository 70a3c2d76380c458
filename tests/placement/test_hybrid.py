"""The throughput planner's choice between data parallel, pipeline and hybrid layouts, and of the sync
(placement.hybrid): on hand-built chains and clusters where the right answer is clear from the numbers."""

from __future__ import annotations

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, ConfigurationError, Device, InfeasibleError, Link, Switch
from placement.collectives import duration_ms, ring_allreduce
from placement.constraints import Constraints
from placement.hybrid import group_problem, replica_counts, replica_groups, ring_order, worker_devices
from placement.plan import Plan
from placement.problem import make_problem
from placement.solvers import solve
from placement.sync import AllReduceSync, ParameterServerSync

GB = 1e9


def chain(n: int = 4, ms: float = 4.0, params: float = 1e5, act: float = 1e6, batch: int = 16) -> Graph:
    """``n`` nodes in a line, each ``ms`` forward and backward on kind X, ``params`` parameter bytes, an
    output of ``act`` bytes; traced at batch ``batch``."""
    g = Graph("chain")
    for i in range(n):
        g.add_node(
            NodeData(
                f"n{i}",
                "op",
                measured_ms={"X": ms},
                measured_bwd_ms={"X": ms},
                param_bytes=params,
            )
        )
    for i in range(n - 1):
        g.add_edge(f"n{i}", f"n{i + 1}", EdgeData(bytes=act))
    g.meta["batch_size"] = batch
    return g


def hosts(count: int = 2, per: int = 2, intra: float = 1e11, inter: float = 1e9, memory: float = 16e9,
          cpus: int = 0) -> Cluster:  # fmt: skip
    """``count`` hosts of ``per`` X devices, each on an ``intra`` B/s link to its host's switch; the
    switches on ``inter`` B/s links to one network; ``cpus`` CPU devices on host 0's switch."""
    devices = [
        Device(f"h{a}d{b}", "X", "gpu", f"h{a}", {"float32": 1e12}, 1e11, memory) for a in range(count) for b in range(per)
    ]
    devices += [Device(f"cpu{i}", "C", "cpu", "h0", {"float32": 1e11}, 1e10, 64e9) for i in range(cpus)]
    links = [Link(d.name, f"sw{d.host[1:]}", "nvlink", intra) for d in devices]
    links += [Link(f"sw{a}", "net", "infiniband", inter) for a in range(count)]
    switches = [Switch(f"sw{a}", "pcie_switch", f"h{a}") for a in range(count)] + [Switch("net", "network", None)]
    return Cluster("hosts", devices, links, switches)


def plan_of(graph: Graph, cluster: Cluster, parallel: str = "auto", **options: object) -> Plan:
    return solve(
        graph,
        cluster,
        objective="throughput",
        parallel=parallel,
        time_limit_s=2.0,
        **options,
    )


def test_compute_heavy_model_with_few_parameters_on_fast_links_is_data_parallel() -> None:
    plan = plan_of(chain(params=1e5), hosts(inter=1e11))
    candidates = plan.settings["parallel"]["candidates"]
    assert plan.settings["parallel"]["chosen"].startswith("data x4")  # by itself or found by the pipeline solver
    assert [st.devices for st in plan.stages] == [["h0d0", "h0d1", "h1d0", "h1d1"]]
    # Four replicas, each 8 ms of compute per microbatch (4 nodes x 2 x 4 ms on a quarter of the batch)
    # plus an all-reduce of 400 kB, against a 4-stage pipeline's 8 ms per stage and its bubble.
    assert plan.predicted_step_ms == pytest.approx(candidates["data x4"])
    assert plan.predicted_step_ms < min(candidates["pipeline(4)"], candidates["data x2"], candidates["single"])


def test_huge_parameters_on_slow_links_make_a_pipeline() -> None:
    # 400 MB of gradients over a 0.1 GB/s network between four one-device hosts: seconds of all-reduce
    # against 32 ms of compute. (With two devices a host, data x2 inside one would win: 100 MB of a
    # node's gradients added into .grad per microbatch makes a pipeline's microbatches dear.)
    plan = plan_of(chain(params=1e8, act=1e5), hosts(count=4, per=1, inter=1e8))
    chosen = plan.settings["parallel"]["chosen"]
    assert chosen.startswith("pipeline(") and all(len(st.devices) == 1 for st in plan.stages)
    assert plan.settings["parallel"]["candidates"]["data x4"] > 10 * plan.predicted_step_ms


def hybrid_case() -> tuple[Graph, Cluster]:
    """2.4 GB of parameters (9.6 GB with gradients and Adam's moments) fit on two 8 GB devices, not on
    one: data parallelism is refused; a 4-stage pipeline sends 3 GB of activations (and their
    gradients) a batch over the 10 GB/s network; two copies of a 2-stage pipeline keep them on NVLink
    and send only 2.4 GB of gradients across the network."""
    return chain(params=6e8, act=3e9, ms=40.0), hosts(inter=1e10, memory=8e9)


def test_hybrid_keeps_activations_inside_hosts_when_the_model_fits_on_no_device() -> None:
    plan = plan_of(*hybrid_case())
    parallel = plan.settings["parallel"]
    assert parallel["chosen"].startswith("hybrid 2 x pipeline(2)")
    assert "data x4" in parallel["dropped"] and "needs" in parallel["dropped"]["data x4"]
    assert plan.predicted_step_ms < parallel["candidates"]["pipeline(4)"]
    assert "inside each host" in parallel["reason"] and "InfiniBand" in parallel["reason"]


def test_hybrid_microbatches_stay_inside_their_group() -> None:
    plan = plan_of(*hybrid_case(), parallel="hybrid")
    R = 2
    for k in range(plan.microbatches):
        group = {plan.stages[0].devices[k % len(plan.stages[0].devices)][:2]}
        for st in plan.stages:
            group.add(st.devices[k % len(st.devices)][:2])  # the host, "h0" or "h1"
        assert group == {f"h{k % R}"}


@pytest.mark.parametrize(
    ("params", "act", "inter"),
    [(1e5, 1e6, 1e11), (1e8, 1e5, 1e8), (1e7, 1e7, 1e9), (3e8, 3e7, 5e9)],
)
def test_auto_is_never_slower_than_data_parallel_or_a_pipeline(params: float, act: float, inter: float) -> None:
    graph, cluster = chain(params=params, act=act), hosts(inter=inter)
    best = plan_of(graph, cluster).predicted_step_ms
    data = plan_of(graph, cluster, parallel="data").predicted_step_ms
    pipeline = plan_of(graph, cluster, parallel="pipeline", replication=False).predicted_step_ms
    assert best <= data * (1 + 1e-9) and best <= pipeline * (1 + 1e-9)


def test_the_chosen_plan_predicts_what_it_records_and_the_best_sync() -> None:
    plan = plan_of(chain(params=1e7, act=1e6), hosts(inter=1e9))
    parallel = plan.settings["parallel"]
    assert plan.predicted_step_ms == pytest.approx(min(parallel["candidates"].values()))
    assert plan.predicted_step_ms == pytest.approx(plan.simulate().step_ms)
    if parallel["sync_ms"]:  # the chosen layout replicates: its sync is the fastest tried
        assert plan.predicted_step_ms == pytest.approx(min(parallel["sync_ms"].values()))
    assert parallel["sync"]["kind"] == "allreduce"


def test_ring_or_hierarchical_when_asked() -> None:
    for algorithm in ("ring", "hierarchical"):
        plan = plan_of(chain(), hosts(inter=1e11), parallel="data", sync=algorithm)
        assert isinstance(plan.sync, AllReduceSync) and plan.sync.algorithm == algorithm


def test_no_layout_fits_names_the_device_and_the_bytes_over() -> None:
    with pytest.raises(
        InfeasibleError,
        match=r"h\d+d\d+ needs [\d.]+ GiB of [\d.]+ GiB \(over by [\d.]+ GiB\)",
    ):
        plan_of(chain(params=2e10), hosts(), parallel="data")


def test_parameter_servers_are_the_cluster_cpus_and_the_reason_names_them() -> None:
    plan = plan_of(chain(params=1e6), hosts(cpus=1), parallel="data", sync="parameter-server")
    assert isinstance(plan.sync, ParameterServerSync) and plan.sync.servers == ("cpu0",)
    assert "parameter servers cpu0" in plan.settings["parallel"]["reason"]
    assert "cpu0" not in plan.devices_used()


def test_parameter_servers_need_a_server() -> None:
    with pytest.raises(ConfigurationError, match="no CPU device.*servers"):
        plan_of(chain(), hosts(), sync="parameter-server")
    with pytest.raises(ConfigurationError, match="'gpu9'.* not devices"):
        plan_of(chain(), hosts(), sync="parameter-server", servers=["gpu9"])


def test_bad_parallel_and_sync_values_are_refused_with_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="parallel='both'.*auto, data, pipeline, hybrid"):
        plan_of(chain(), hosts(), parallel="both")
    with pytest.raises(ConfigurationError, match="sync='tree'.*ring, hierarchical"):
        plan_of(chain(), hosts(), sync="tree")
    with pytest.raises(ConfigurationError, match=r"servers=\['cpu0'\] are for sync='parameter-server'"):
        plan_of(chain(), hosts(cpus=1), parallel="pipeline", servers=["cpu0"])
    with pytest.raises(ConfigurationError, match="only apply to objective='throughput'"):
        solve(chain(), hosts(), objective="latency", parallel="data")


def test_replica_counts_and_groups_follow_hosts_and_the_batch() -> None:
    cluster = hosts(count=2, per=4)
    workers = worker_devices(cluster)
    assert replica_counts(make_problem(chain(batch=16), cluster, objective="throughput"), workers) == [2, 4, 8]
    assert replica_counts(make_problem(chain(batch=6), cluster, objective="throughput"), workers) == [2]
    ways = replica_groups(cluster, workers)
    assert ways[0] == (
        "host",
        [("h0d0", "h0d1", "h0d2", "h0d3"), ("h1d0", "h1d1", "h1d2", "h1d3")],
    )
    assert (
        "run of 2 devices",
        [("h0d0", "h0d1"), ("h0d2", "h0d3"), ("h1d0", "h1d1"), ("h1d2", "h1d3")],
    ) in ways


def test_same_inputs_same_plan() -> None:
    a = plan_of(chain(params=1e7), hosts(inter=1e9))
    b = plan_of(chain(params=1e7), hosts(inter=1e9))
    assert a.settings["parallel"]["candidates"] == b.settings["parallel"]["candidates"]
    assert (a.stages, a.microbatches, a.sync) == (b.stages, b.microbatches, b.sync)


def test_data_parallel_rings_follow_nvlink_on_a_dgx1() -> None:
    dgx1 = Cluster.preset("dgx1-v100")
    ring = ring_order(dgx1, dgx1.device_names, 1e8)
    kinds = {lk.name: lk.kind for lk in dgx1.links}
    edges = list(zip(ring, [*ring[1:], ring[0]]))
    assert sorted(ring) == dgx1.device_names and ring[0] == "gpu0"
    assert all([kinds[name] for name in dgx1.route(a, b).links] == ["nvlink"] for a, b in edges)
    assert duration_ms(ring_allreduce(dgx1, ring, 1e8)) < duration_ms(ring_allreduce(dgx1, dgx1.device_names, 1e8)) / 2
    plan = solve(chain(), dgx1, objective="throughput", parallel="data", time_limit_s=2.0)
    assert plan.stages[0].devices == ring_order(dgx1, plan.stages[0].devices, chain().total_param_bytes())


def test_a_group_problem_keeps_budgets_and_refuses_a_group_a_pin_keeps_out() -> None:
    cluster = hosts()
    problem = make_problem(chain(), cluster, objective="throughput", constraints=Constraints(memory_budget={"h1d1": 4e9}))
    sub = group_problem(problem, ["h1d0", "h1d1"], 1.0)
    assert sub is not None and sub.cluster.device_names == ["h1d0", "h1d1"]
    assert sub.resolved.capacity == [16e9, 4e9] and sub.time_limit == 1.0
    assert sub.cluster.route("h1d0", "h1d1").bandwidth == cluster.route("h1d0", "h1d1").bandwidth
    pinned = make_problem(chain(), cluster, objective="throughput", constraints=Constraints(pins={"n0": "h0d0"}))
    assert group_problem(pinned, ["h1d0", "h1d1"], 1.0) is None
    assert group_problem(pinned, ["h0d0", "h0d1"], 1.0).resolved.allowed["n0"] == [0]


def test_a_fixed_microbatch_count_keeps_the_replica_counts_that_divide_it() -> None:
    plan = solve(chain(), hosts(), objective="throughput", parallel="data", microbatches=2, time_limit_s=2.0)
    parallel = plan.settings["parallel"]
    assert list(parallel["candidates"]) == ["data x2"] and plan.microbatches == 2
    assert parallel["dropped"] == {"data x4": "microbatches=2 is not a multiple of its 4 replicas"}
