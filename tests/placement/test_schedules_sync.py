"""placement.schedules: the synchronisation of replicated stages under a plan's sync: bucketed ring and
hierarchical all-reduce after the replica's last backward, and synchronous parameter servers (their
reduces, optimizer step and broadcasts; the replicas' reduces and broadcasts), with the refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest

from graphc import Graph, NodeData
from placement import Cluster, Device, Link, Plan, Switch
from placement.plan import Stage
from placement.schedules import (
    AllReduce,
    Broadcast,
    Reduce,
    Schedule,
    ScheduleError,
    make_schedule,
    validate,
)
from placement.sync import AllReduceSync, ParameterServerSync

MB = 2**20
PARAMS = {"a": 4 * MB, "b": 2 * MB, "c": 3 * MB, "d": 1 * MB}  # backward order d c b a
GPUS = ["gpu0", "gpu1", "gpu2", "gpu3"]


def chain() -> Graph:
    """``x -> a -> b -> c -> d``, with the parameter bytes of PARAMS."""
    g = Graph("chain")
    g.add_node(NodeData("x", "input"))
    for n, size in PARAMS.items():
        g.add_node(NodeData(n, "op", param_bytes=size))
    for u, v in ["xa", "ab", "bc", "cd"]:
        g.add_edge(u, v)
    return g


def cluster() -> Cluster:
    """gpu0, gpu1 under PCIe switch sw0 and gpu2, gpu3 under sw1, both under a CPU socket with the servers
    cpu0, cpu1 (all links 10 GB/s)."""
    gpus = [Device(d, "X", "gpu", "h", {"float32": 1e12}, 1e11, 1e12) for d in GPUS]
    cpus = [Device(d, "C", "cpu", "h", {"float32": 1e11}, 1e10, 1e12) for d in ("cpu0", "cpu1")]
    links = [Link(d, f"sw{i // 2}", "pcie", 1e10) for i, d in enumerate(GPUS)]
    links += [Link(s, "socket", "pcie", 1e10) for s in ("sw0", "sw1", "cpu0", "cpu1")]
    switches = [Switch("sw0", "pcie_switch", "h"), Switch("sw1", "pcie_switch", "h"), Switch("socket", "cpu_socket", "h")]
    return Cluster("box", gpus + cpus, links, switches)


def data_parallel(devices: list[str], sync, microbatches: int | None = None, with_cluster: bool = True) -> Plan:
    """The chain in one stage replicated on ``devices`` (pure data parallelism), one microbatch each."""
    g = chain()
    nodes = ["x", *PARAMS]
    return Plan(
        g.name, g.fingerprint(), "box", "throughput", "training", dict.fromkeys(nodes, devices[0]),
        stages=[Stage(0, nodes, list(devices))], microbatches=microbatches or len(devices), sync=sync,
        graph=g, cluster=cluster() if with_cluster else None,
    )  # fmt: skip


def hybrid(sync) -> Plan:
    """Two stages (x a b | c d), each replicated on two GPUs, two microbatches."""
    g = chain()
    stages = [Stage(0, ["x", "a", "b"], ["gpu0", "gpu1"]), Stage(1, ["c", "d"], ["gpu2", "gpu3"])]
    assignment = {n: st.devices[0] for st in stages for n in st.nodes}
    return Plan(g.name, g.fingerprint(), "box", "throughput", "training", assignment, stages=stages,
                microbatches=2, sync=sync, graph=g, cluster=cluster())  # fmt: skip


def codes(schedule: Schedule) -> dict[str, str]:
    return {d: " ".join(a.code() for a in acts) for d, acts in schedule.actions.items()}


def test_bucketed_ring_all_reduce_follows_the_last_backward_in_backward_order():
    # backward order d c b a; 4 MiB buckets: (d, c) = 4 MiB closes at c, (b, a) = 6 MiB
    schedule = make_schedule(data_parallel(["gpu0", "gpu1"], AllReduceSync("ring", 4 * MB)), "gpipe")
    assert codes(schedule) == {"gpu0": "F0 B0 AR0 AR1 OPT", "gpu1": "F1 B1 AR0 AR1 OPT"}
    group = ("gpu0", "gpu1")
    assert schedule.actions["gpu1"][2:4] == [
        AllReduce("gpu1", group, "stage 0 bucket 0", ("d", "c"), 0, "ring"),
        AllReduce("gpu1", group, "stage 0 bucket 1", ("b", "a"), 1, "ring"),
    ]
    carried = [sum(PARAMS[n] for n in a.nodes) for a in schedule.actions["gpu0"] if isinstance(a, AllReduce)]
    assert carried == [4 * MB, 6 * MB]


def test_one_bucket_without_a_cap_and_small_buckets_one_per_node():
    whole = make_schedule(data_parallel(["gpu0", "gpu1"], AllReduceSync("ring", None)), "gpipe")
    assert whole.actions["gpu0"][2] == AllReduce("gpu0", ("gpu0", "gpu1"), "stage 0 bucket 0", ("d", "c", "b", "a"))
    assert codes(whole)["gpu0"] == "F0 B0 AR OPT"
    small = make_schedule(data_parallel(["gpu0", "gpu1"], AllReduceSync("ring", 1)), "gpipe")
    assert [a.nodes for a in small.actions["gpu0"] if isinstance(a, AllReduce)] == [("d",), ("c",), ("b",), ("a",)]


def test_each_replica_all_reduces_after_its_own_last_backward_in_1f1b():
    schedule = make_schedule(data_parallel(["gpu0", "gpu1"], AllReduceSync("ring", 4 * MB), microbatches=4), "1f1b")
    assert codes(schedule) == {"gpu0": "F0 B0 F2 B2 AR0 AR1 OPT", "gpu1": "F1 B1 F3 B3 AR0 AR1 OPT"}


def test_hierarchical_all_reduce_carries_the_islands_of_pcie_switches():
    schedule = make_schedule(data_parallel(GPUS, AllReduceSync("hierarchical", None)), "gpipe")
    reduce = schedule.actions["gpu2"][-2]
    assert reduce == AllReduce(
        "gpu2", tuple(GPUS), "stage 0 bucket 0", ("d", "c", "b", "a"), None, "hierarchical",
        (("gpu0", "gpu1"), ("gpu2", "gpu3")),
    )  # fmt: skip


def test_hierarchical_all_reduce_needs_the_cluster():
    with pytest.raises(ScheduleError, match="hierarchical all-reduce needs the plan's cluster"):
        make_schedule(data_parallel(GPUS, AllReduceSync("hierarchical"), with_cluster=False), "gpipe")


def test_one_parameter_server_reduces_steps_and_broadcasts_every_bucket():
    schedule = make_schedule(data_parallel(["gpu0", "gpu1"], ParameterServerSync(("cpu0",), 0, 4 * MB)), "gpipe")
    assert codes(schedule) == {
        "gpu0": "F0 B0 RD0 RD1 BC0 BC1",
        "gpu1": "F1 B1 RD0 RD1 BC0 BC1",
        "cpu0": "RD0 RD1 OPT BC0 BC1",
    }
    group = ("gpu0", "gpu1", "cpu0")
    assert schedule.actions["cpu0"][0] == Reduce("cpu0", group, "stage 0 bucket 0", ("d", "c"), 0, root="cpu0")
    assert schedule.actions["gpu1"][-1] == Broadcast("gpu1", group, "stage 0 bucket 1", ("b", "a"), 1, root="cpu0")


def test_two_parameter_servers_share_the_buckets_by_bytes():
    # buckets of 4 and 6 MiB on equal links: the 6 MiB one to cpu0 (first), the 4 MiB one to cpu1
    schedule = make_schedule(
        data_parallel(["gpu0", "gpu1"], ParameterServerSync(("cpu0", "cpu1"), 0, 4 * MB)), "gpipe"
    )
    assert codes(schedule) == {
        "gpu0": "F0 B0 RD0 RD1 BC0 BC1",
        "gpu1": "F1 B1 RD0 RD1 BC0 BC1",
        "cpu0": "RD1 OPT BC1",
        "cpu1": "RD0 OPT BC0",
    }
    roots = [a.root for a in schedule.actions["gpu0"] if isinstance(a, (Reduce, Broadcast))]
    assert roots == ["cpu1", "cpu0", "cpu1", "cpu0"]
    assert schedule.actions["gpu0"][2].group == ("gpu0", "gpu1", "cpu1")


def test_a_server_takes_the_last_stages_buckets_first_in_a_hybrid():
    schedule = make_schedule(hybrid(ParameterServerSync(("cpu0",), 0, None)), "gpipe")
    server = schedule.actions["cpu0"]
    assert [(type(a).__name__, a.name) for a in server if isinstance(a, (Reduce, Broadcast))] == [
        ("Reduce", "stage 1 bucket 0"),
        ("Reduce", "stage 0 bucket 0"),
        ("Broadcast", "stage 1 bucket 0"),
        ("Broadcast", "stage 0 bucket 0"),
    ]
    assert codes(schedule)["cpu0"] == "RD RD OPT BC BC"
    assert server[1].group == ("gpu0", "gpu1", "cpu0") and server[1].nodes == ("b", "a")
    assert all(not isinstance(a, type(server[2])) for d in GPUS for a in schedule.actions[d])  # no worker OPT


def test_a_hybrid_with_all_reduce_synchronises_each_stage_over_its_replicas():
    schedule = make_schedule(hybrid(AllReduceSync("ring", None)), "1f1b")
    assert {d: [a.group for a in acts if isinstance(a, AllReduce)] for d, acts in schedule.actions.items()} == {
        "gpu0": [("gpu0", "gpu1")],
        "gpu1": [("gpu0", "gpu1")],
        "gpu2": [("gpu2", "gpu3")],
        "gpu3": [("gpu2", "gpu3")],
    }


@pytest.mark.parametrize(
    ("sync", "message"),
    [
        (ParameterServerSync(("gpu1",)), "parameter server 'gpu1' runs nodes of the plan"),
        (ParameterServerSync(("tpu0",)), "parameter server 'tpu0' is not a device of cluster 'box'"),
        (ParameterServerSync(("cpu0",), staleness=2), "asynchronous parameter servers are not generated yet"),
    ],
)
def test_bad_parameter_servers_are_refused(sync, message):
    with pytest.raises(ScheduleError, match=message):
        make_schedule(data_parallel(["gpu0", "gpu1"], sync), "gpipe")


def test_parameter_servers_need_the_cluster():
    with pytest.raises(ScheduleError, match="parameter servers need the plan's cluster"):
        make_schedule(data_parallel(["gpu0", "gpu1"], ParameterServerSync(("cpu0",)), with_cluster=False), "gpipe")


def test_a_root_outside_its_group_or_one_that_computes_is_refused():
    schedule = make_schedule(data_parallel(["gpu0", "gpu1"], ParameterServerSync(("cpu0",), 0, None)), "gpipe")
    moved = {d: [replace(a, root="cpu1") if isinstance(a, Reduce) else a for a in acts] for d, acts in schedule.actions.items()}
    with pytest.raises(ScheduleError, match=r"its root 'cpu1' is not in its group \['gpu0', 'gpu1', 'cpu0'\]"):
        validate(replace(schedule, actions=moved))
    worker_root = {d: [replace(a, root="gpu1") if isinstance(a, (Reduce, Broadcast)) else a for a in acts]
                   for d, acts in schedule.actions.items()}  # fmt: skip
    with pytest.raises(ScheduleError, match=r"its root gpu1 is a parameter server but also computes \(F1\)"):
        validate(replace(schedule, actions=worker_root))


def test_a_server_that_skips_a_reduce_deadlocks_the_replicas():
    schedule = make_schedule(data_parallel(["gpu0", "gpu1"], ParameterServerSync(("cpu0",), 0, 4 * MB)), "gpipe")
    schedule.actions["cpu0"] = [a for a in schedule.actions["cpu0"] if a.code() != "RD1"]
    with pytest.raises(ScheduleError, match=r"gpu0 at step 3, RD1: waits for cpu0"):
        validate(schedule)


def test_the_table_shows_bucket_codes_and_the_legend_explains_them():
    schedule = make_schedule(data_parallel(["gpu0", "gpu1"], ParameterServerSync(("cpu0",), 0, 4 * MB)), "gpipe")
    table = schedule.table()
    assert table.splitlines()[1].split() == ["step", "gpu0", "gpu1", "cpu0"]
    assert table.splitlines()[2].split() == ["0", "F0", "F1", "RD0"]
    assert "RD2/BC2: reduce of bucket 2 onto its parameter server" in " ".join(table.splitlines())
    assert "AR2: all-reduce of bucket 2" in " ".join(table.splitlines())
