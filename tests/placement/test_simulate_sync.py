"""The simulator's synchronisation of replicated stages: bucketed all-reduce overlapped with the backward
(ring and hierarchical), and synchronous parameter servers (reduce, the server's update, broadcast),
with exact timelines and memory computed by hand on tiny graphs and clusters."""

from __future__ import annotations

import pytest

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, CostModel, Device, Link, PlacementError, Switch, simulate
from placement.errors import ArgumentTypeError, ConfigurationError
from placement.plan import Plan, Stage
from placement.schedules import AllReduce, Schedule
from placement.sync import AllReduceSync, ParameterServerSync

MB = 1e6  # bytes; 1 ms on the 1 GB/s links of the test clusters


def gpu(name: str, host: str = "h") -> Device:
    return Device(name, "X", "gpu", host, {"float32": 1e12}, 1e11, 1e12)


def star(gpus: int = 2, servers: int = 0) -> Cluster:
    """GPUs ``d0 ..`` and CPU servers ``s0 ..`` (5 GB/s memory), each on its own 1 GB/s full-duplex link
    (no latency) to one switch."""
    devices = [gpu(f"d{i}") for i in range(gpus)]
    devices += [Device(f"s{i}", "cpu", "cpu", "h", {"float32": 1e11}, 5e9, 1e12) for i in range(servers)]
    links = [Link(d.name, "sw", "pcie", 1e9) for d in devices]
    return Cluster("star", devices, links, [Switch("sw", "pcie_switch", "h")])


def chain(params: dict[str, float]) -> Graph:
    """a -> b -> c: forward 1 ms, backward 2 ms per microbatch of two (the figures are the whole
    batch's), no activations; ``params`` gives parameter bytes per node."""
    g = Graph("chain")
    for name in "abc":
        g.add_node(NodeData(name, "op", measured_ms={"X": 2.0}, measured_bwd_ms={"X": 4.0},
                            param_bytes=params.get(name, 0.0)))  # fmt: skip
    g.add_edge("a", "b", EdgeData(bytes=0.0))
    g.add_edge("b", "c", EdgeData(bytes=0.0))
    return g


ON_D0 = {"a": "d0", "b": "d0", "c": "d0"}
DATA_PARALLEL = {"d0": ["d0", "d1"]}


def sync_events(result) -> list[tuple]:
    kinds = ("allreduce", "reduce", "update", "broadcast")
    return [(e.kind, e.name, e.device, e.start_ms, e.end_ms) for e in result.timeline if e.kind in kinds]


def test_buckets_overlap_the_backward() -> None:
    # Each replica runs one microbatch: F(a,b,c) 0-3, B(c) 3-5, B(b) 5-7, B(a) 7-9. Backward order
    # c, b, a with 1 MB buckets: bucket 0 = [c] (2 MB), bucket 1 = [a] (2 MB; b has none). Bucket 0 is
    # all-reduced from 5 while B(b) runs: 2 (r-1)/r x 2 MB = 2 MB at 1 GB/s = 2 ms, 5-7; bucket 1 from 9
    # to 11, the step's end.
    g = chain({"a": 2 * MB, "c": 2 * MB})
    r = simulate(g, star(), ON_D0, microbatches=2, replicas=DATA_PARALLEL, sync=AllReduceSync(bucket_bytes=MB))
    assert sync_events(r) == [
        ("allreduce", "d0+d1 bucket 0", "d0", 5, 7),
        ("allreduce", "d0+d1 bucket 0", "d1", 5, 7),
        ("allreduce", "d0+d1 bucket 1", "d0", 9, 11),
        ("allreduce", "d0+d1 bucket 1", "d1", 9, 11),
    ]
    last_backward = max(e.end_ms for e in r.timeline if e.kind == "backward")
    assert last_backward == 9 and r.step_ms == 11
    # Each link direction carries 2 MB per bucket: d0--sw 2 x 2 x 2 MB, busy 2 x 2 x 2 ms.
    assert r.link_bytes["d0--sw"] == 8 * MB and r.link_busy_ms["d0--sw"] == 8
    assert (r.num_transfers, r.transferred_bytes) == (0, 0)
    # Memory per replica: 4 MB of parameters and Adam's 8 MB before the step; the gradients (2 MB from
    # B(c) at 3, 2 MB from B(a) at 7) and each bucket's flat copy (from 5 and from 9) to the end.
    assert r.static_memory_bytes["d1"] == 12 * MB
    assert r.peak_memory_bytes["d0"] == r.peak_memory_bytes["d1"] == (12 + 4 + 4) * MB


def test_one_bucket_waits_for_the_stage_and_costs_more() -> None:
    # bucket_bytes=None: one all-reduce of 4 MB after the stage's last task (9): 4 ms, as before buckets.
    g = chain({"a": 2 * MB, "c": 2 * MB})
    r = simulate(g, star(), ON_D0, microbatches=2, replicas=DATA_PARALLEL, sync=AllReduceSync(bucket_bytes=None))
    assert sync_events(r) == [("allreduce", "d0+d1", "d0", 9, 13), ("allreduce", "d0+d1", "d1", 9, 13)]
    assert r.step_ms == 13


def test_the_stream_keeps_bucket_order() -> None:
    # Three 1-byte-capped buckets [c], [b], [a] of 4, 1 and 1 MB: bucket 0 runs 5-9, so bucket 1 (ready
    # at 7) waits for it: 9-10; bucket 2 (ready at 9) follows: 10-11.
    g = chain({"a": 1 * MB, "b": 1 * MB, "c": 4 * MB})
    r = simulate(g, star(), ON_D0, microbatches=2, replicas=DATA_PARALLEL, sync=AllReduceSync(bucket_bytes=1))
    spans = [(e.name, e.start_ms, e.end_ms) for e in r.timeline if e.kind == "allreduce" and e.device == "d0"]
    assert spans == [("d0+d1 bucket 0", 5, 9), ("d0+d1 bucket 1", 9, 10), ("d0+d1 bucket 2", 10, 11)]
    assert r.step_ms == 11


def test_a_plans_schedule_prices_its_bucketed_allreduces() -> None:
    # The generated schedule carries the buckets (AllReduce actions with their nodes): the same timeline.
    g, c = chain({"a": 2 * MB, "c": 2 * MB}), star()
    plan = Plan("chain", g.fingerprint(), "star", "throughput", "training", ON_D0,
                stages=[Stage(0, ["a", "b", "c"], ["d0", "d1"])], microbatches=2,
                sync=AllReduceSync(bucket_bytes=MB), graph=g, cluster=c)  # fmt: skip
    r = plan.simulate()
    assert [(e.name, e.start_ms, e.end_ms) for e in r.timeline if e.kind == "allreduce" and e.device == "d1"] == [
        ("d0+d1 bucket 0", 5, 7),
        ("d0+d1 bucket 1", 9, 11),
    ]
    assert r.step_ms == 11


def two_hosts(inside: float, between: float) -> Cluster:
    """Hosts h0 and h1 with two GPUs each on a switch of their host (``inside`` bytes/s per link); the
    switches joined by one link of ``between`` bytes/s; no latency."""
    devices = [gpu(f"{h}g{i}", h) for h in ("h0", "h1") for i in range(2)]
    links = [Link(d.name, f"{d.host}sw", "pcie", inside) for d in devices]
    links.append(Link("h0sw", "h1sw", "ethernet", between, name="top"))
    return Cluster("two-hosts", devices, links, [Switch(f"{h}sw", "pcie_switch", h) for h in ("h0", "h1")])


def test_hierarchical_allreduce_beats_the_ring_across_a_slow_top_link() -> None:
    # One node, 8 MB of parameters, replicated on 4 GPUs of two hosts, one microbatch each: forward 0-1,
    # backward 1-3. Ring: 1.5 x 8 MB over the 1 GB/s top link = 12 ms; hierarchy: 8 MB in each host at
    # 10 GB/s (0.8 ms), 8 MB across (8 ms), 8 MB back (0.8 ms) = 9.6 ms.
    g = Graph("one")
    g.add_node(NodeData("w", "op", measured_ms={"X": 4.0}, measured_bwd_ms={"X": 8.0}, param_bytes=8 * MB))
    c = two_hosts(10e9, 1e9)
    replicas = {"h0g0": ["h0g0", "h0g1", "h1g0", "h1g1"]}
    steps = {}
    for algorithm in ("ring", "hierarchical"):
        r = simulate(g, c, {"w": "h0g0"}, microbatches=4, replicas=replicas, sync=AllReduceSync(algorithm))
        (start,) = {e.start_ms for e in r.timeline if e.kind == "allreduce"}
        assert start == 3
        steps[algorithm] = r.step_ms
    assert steps["ring"] == pytest.approx(3 + 12)
    assert steps["hierarchical"] == pytest.approx(3 + 0.8 + 8 + 0.8)
    # No transfer in the step, yet the links' busy time keeps its fractions: h0g1's link carries its
    # chain reduce (0.8 ms) and broadcast (0.8 ms); the top link the leaders' ring both ways (2 x 8 ms).
    assert r.link_busy_ms["h0g1--h0sw"] == pytest.approx(1.6)
    assert r.link_busy_ms["top"] == pytest.approx(16.0)


def two_nodes() -> Graph:
    """a (2 MB of parameters) -> b (1 MB): forward 1 ms, backward 2 ms per microbatch of two."""
    g = Graph("two")
    g.add_node(NodeData("a", "op", measured_ms={"X": 2.0}, measured_bwd_ms={"X": 4.0}, param_bytes=2 * MB))
    g.add_node(NodeData("b", "op", measured_ms={"X": 2.0}, measured_bwd_ms={"X": 4.0}, param_bytes=1 * MB))
    g.add_edge("a", "b", EdgeData(bytes=0.0))
    return g


def with_servers(*servers: str):
    """two_nodes data-parallel on d0 and d1 (one microbatch each), one bucket per node, on ``servers``."""
    sync = ParameterServerSync(servers, bucket_bytes=1)
    cluster = star(2, len(servers))
    return simulate(two_nodes(), cluster, {"a": "d0", "b": "d0"}, microbatches=2, replicas=DATA_PARALLEL, sync=sync)


def test_one_parameter_server_exact_timeline_and_memory() -> None:
    # Replicas d0, d1 run F(a) 0-1, F(b) 1-2, B(b) 2-4, B(a) 4-6. Buckets (one node each): 0 = [b] 1 MB,
    # 1 = [a] 2 MB, both on s0. Bucket 0 at 4: reduce 2 x 1 MB into s0's link (2 ms) and s0's copy of the
    # sum back into its gradients (1 MB read and written at 5 GB/s, 0.4 ms) 4-6.4, update (3 + 2) x 1 MB
    # at 5 GB/s 6.4-7.4, s0's copy of the weights into one buffer (0.4) and broadcast 2 x 1 MB out of its
    # link 7.4-9.8 (the replicas are GPUs: their copies are not charged). s0 is a CPU (no copy engine):
    # its reduce, update and broadcast hold it, so bucket 1 (ready at 6) reduces 9.8-14.6 (4 MB, a 0.8 ms
    # copy), updates 14.6-16.6, and broadcasts 16.6-21.4.
    r = with_servers("s0")
    on_s0 = [(e.kind, e.name, round(e.start_ms, 9), round(e.end_ms, 9)) for e in r.timeline if e.device == "s0"]
    assert on_s0 == [
        ("reduce", "d0+d1 bucket 0 @ s0", 4, 6.4),
        ("update", "d0+d1 bucket 0 @ s0", 6.4, 7.4),
        ("broadcast", "d0+d1 bucket 0 @ s0", 7.4, 9.8),
        ("reduce", "d0+d1 bucket 1 @ s0", 9.8, 14.6),
        ("update", "d0+d1 bucket 1 @ s0", 14.6, 16.6),
        ("broadcast", "d0+d1 bucket 1 @ s0", 16.6, 21.4),
    ]
    assert r.step_ms == pytest.approx(21.4)
    # The server holds parameters, a gradient buffer and Adam's state of both buckets: (2 + 2) x 3 MB.
    assert r.static_memory_bytes["s0"] == r.peak_memory_bytes["s0"] == 12 * MB
    # A worker holds its parameters (3 MB) but no optimizer state; then its gradients and a flat copy of
    # each bucket.
    assert r.static_memory_bytes["d0"] == r.static_memory_bytes["d1"] == 3 * MB
    assert r.peak_memory_bytes["d0"] == r.peak_memory_bytes["d1"] == (3 + 3 + 3) * MB
    assert r.busy_ms["s0"] == 0


def test_two_parameter_servers_share_the_buckets() -> None:
    # assign_shards: bucket 1 (2 MB, largest first) to s0, bucket 0 (1 MB) to s1. Bucket 0 on s1: reduce
    # and copy back 4-6.4, update 6.4-7.4, copy and broadcast 7.4-9.8 (as with one server). Bucket 1 on s0
    # after bucket 0's reduce: reduce 6.4-11.2 (4 MB, a 0.8 ms copy), update 11.2-13.2, broadcast
    # 13.2-18 (the replicas' links are free again by then).
    r = with_servers("s0", "s1")
    servers = [(e.kind, e.device, round(e.start_ms, 9), round(e.end_ms, 9)) for e in r.timeline if e.device in ("s0", "s1")]
    assert servers == [
        ("reduce", "s1", 4, 6.4),
        ("update", "s1", 6.4, 7.4),
        ("reduce", "s0", 6.4, 11.2),
        ("broadcast", "s1", 7.4, 9.8),
        ("update", "s0", 11.2, 13.2),
        ("broadcast", "s0", 13.2, 18),
    ]
    assert r.step_ms == pytest.approx(18)
    assert r.static_memory_bytes["s0"] == 8 * MB and r.static_memory_bytes["s1"] == 4 * MB
    # Each worker pushes every bucket once and receives it once: 3 MB each way on its link.
    assert r.link_bytes["d0--sw"] == 6 * MB


def test_bad_parameter_servers_are_refused() -> None:
    g, c = two_nodes(), star(2, 1)
    with pytest.raises(PlacementError, match="'d1' runs nodes"):
        simulate(g, c, {"a": "d0", "b": "d0"}, microbatches=2, replicas=DATA_PARALLEL, sync=ParameterServerSync(("d1",)))
    with pytest.raises(PlacementError, match="has no such device"):
        simulate(g, c, {"a": "d0", "b": "d0"}, microbatches=2, replicas=DATA_PARALLEL, sync=ParameterServerSync(("x",)))
    with pytest.raises(ConfigurationError, match="staleness=1"):
        simulate(g, c, {"a": "d0", "b": "d0"}, microbatches=2, replicas=DATA_PARALLEL,
                 sync=ParameterServerSync(("s0",), staleness=1))  # fmt: skip
    with pytest.raises(ArgumentTypeError, match="sync must be"):
        simulate(g, c, {"a": "d0", "b": "d0"}, sync="ring")


def test_the_schedules_buckets_are_what_is_priced() -> None:
    # A schedule whose AllReduce actions carry one bucket [c, a] (4 MB) instead of the sync's two: one
    # all-reduce from the end of B(a) at 9, 4 MB in 4 ms. A bucket naming a node of no replicated stage
    # is refused.
    g, c = chain({"a": 2 * MB, "c": 2 * MB}), star()
    plan = Plan("chain", g.fingerprint(), "star", "throughput", "training", ON_D0,
                stages=[Stage(0, ["a", "b", "c"], ["d0", "d1"])], microbatches=2,
                sync=AllReduceSync(bucket_bytes=MB), graph=g, cluster=c)  # fmt: skip
    schedule = plan._schedule_for(g, "", "training", 2)

    def with_buckets(nodes: tuple[str, ...]) -> Schedule:
        actions = {}
        for device, acts in schedule.actions.items():
            kept = [a for a in acts if not isinstance(a, AllReduce)]
            actions[device] = [*kept, AllReduce(device, ("d0", "d1"), "stage 0 gradients", nodes=nodes)]
        return Schedule(schedule.name, schedule.plan_kind, schedule.microbatches, actions)

    r = plan.simulate(schedule=with_buckets(("c", "a")))
    assert sync_events(r) == [("allreduce", "d0+d1", "d0", 9, 13), ("allreduce", "d0+d1", "d1", 9, 13)]
    with pytest.raises(PlacementError, match="AR names node .x., which that stage does not run"):
        plan.simulate(schedule=with_buckets(("c", "x")))


def cpu_pair() -> Cluster:
    """Two CPU devices (no copy engine) reading and writing memory at 4 GB/s, joined at 1 GB/s."""
    devices = [Device(f"d{i}", "X", "cpu", "h", {"float32": 1e11}, 4e9, 1e12) for i in range(2)]
    return Cluster("cpus", devices, [Link(d.name, "sw", "shm", 1e9) for d in devices], [Switch("sw", "pcie_switch", "h")])


def test_cpu_replicas_are_held_by_their_allreduces_and_their_bucket_copies() -> None:
    # Two CPU replicas (no copy engine): bucket 0's all-reduce holds both for its copy of 2 MB into one
    # buffer (2 MB read and written at 4 GB/s: 1 ms), the wire (2 ms) and the copy back (1 ms): 5-9. So
    # B(b), ready at 5, runs 9-11 and B(a) 11-13; bucket 1 then 13-17. On GPUs the same step takes 11
    # (first test): neither the copies nor the wire hold a GPU.
    g = chain({"a": 2 * MB, "c": 2 * MB})
    r = simulate(g, cpu_pair(), ON_D0, microbatches=2, replicas=DATA_PARALLEL, sync=AllReduceSync(bucket_bytes=MB))
    on_d1 = [(e.kind, e.name, e.start_ms, e.end_ms) for e in r.timeline if e.device == "d1" and e.kind != "forward"]
    assert on_d1 == [
        ("backward", "c", 3, 5),
        ("allreduce", "d0+d1 bucket 0", 5, 9),
        ("backward", "b", 9, 11),
        ("backward", "a", 11, 13),
        ("allreduce", "d0+d1 bucket 1", 13, 17),
    ]
    assert r.step_ms == 17 and r.busy_ms["d1"] == 9


def test_a_cpu_ring_lasts_what_its_messages_cost_the_cpus() -> None:
    # As above, with each message costing each end 0.5 ms + 1 ms per MB of CPU (CostModel.endpoint_cpu_ms):
    # bucket 0 (2 MB over 2 replicas: 2 rounds of 1 MB chunks, each CPU sending and receiving one per
    # round) takes 4 x 1.5 = 6 ms instead of the wire's 2, and the two copies 2 more: 5-13; B(b) 13-15,
    # B(a) 15-17; bucket 1 17-25.
    cpus = cpu_pair()
    cost = CostModel(cpus, endpoint_cpu_s=0.5e-3, endpoint_cpu_per_byte_s=1e-9)
    g = chain({"a": 2 * MB, "c": 2 * MB})
    r = simulate(g, cpus, ON_D0, cost, microbatches=2, replicas=DATA_PARALLEL, sync=AllReduceSync(bucket_bytes=MB))
    on_d1 = [(e.kind, e.name, e.start_ms, e.end_ms) for e in r.timeline if e.device == "d1" and e.kind != "forward"]
    assert on_d1 == [
        ("backward", "c", 3, 5),
        ("allreduce", "d0+d1 bucket 0", 5, 13),
        ("backward", "b", 13, 15),
        ("backward", "a", 15, 17),
        ("allreduce", "d0+d1 bucket 1", 17, 25),
    ]
