"""Plan inspection of replicated stages: the summary's replicas-and-synchronisation table, the Chrome
trace's and the Gantt chart's rows of collectives per replica group."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rich.console import Console

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster
from placement.inspect import chrome_trace, collective_code, gantt_figure, sync_table
from placement.plan import Plan, Stage
from placement.sharding import assign_shards
from placement.sync import AllReduceSync, Bucket, ParameterServerSync
from placement.timeline import Collective

MB = 2**20
PARAMS = {"a": 40 * MB, "b": 20 * MB, "c": 30 * MB, "d": 10 * MB}  # backward order d c b a


def chain() -> Graph:
    g = Graph("chain")
    g.add_node(NodeData("x", "input", output_bytes=4 * MB, output_shapes=[[1024, 1024]], output_dtypes=["float32"]))
    for n, size in PARAMS.items():
        g.add_node(NodeData(n, "aten.mm.default", fwd_flops=2e10, bwd_flops=4e10, param_bytes=size, output_bytes=4 * MB,
                            activation_bytes=4 * MB, output_shapes=[[1024, 1024]], output_dtypes=["float32"]))  # fmt: skip
    for u, v in ["xa", "ab", "bc", "cd"]:
        g.add_edge(u, v, EdgeData(bytes=4 * MB))
    return g


def data_parallel(sync, devices=("gpu0", "gpu1"), microbatches: int = 4, mode: str = "training") -> Plan:
    g = chain()
    nodes = ["x", *PARAMS]
    return Plan(g.name, g.fingerprint(), "pcie-4gpu", "throughput", mode, dict.fromkeys(nodes, devices[0]),
                stages=[Stage(0, nodes, list(devices))], microbatches=microbatches, sync=sync, graph=g,
                cluster=Cluster.preset("pcie-4gpu"))  # fmt: skip


def summary_text(plan: Plan) -> str:
    console = Console(width=120, record=True)
    console.print(plan.summary())
    return console.export_text()


def sync_row(plan: Plan) -> list[str]:
    """The cells of stage 0's row of the synchronisation table."""
    console = Console(width=200, record=True)
    console.print(sync_table(plan, plan.cluster, plan.simulate()))
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in console.export_text().splitlines()]
    return next(row for row in rows if row[0] == "0")


def test_the_summary_lists_a_ring_all_reduce_with_its_buckets_and_simulated_cost():
    plan = data_parallel(AllReduceSync("ring", 50 * MB))  # buckets (d, c, b) 60 MiB, (a) 40 MiB
    sim = plan.simulate()
    mine = sim.raw.collectives
    assert [(c.kind, c.bucket, c.bytes) for c in mine] == [("allreduce", 0, 60 * MB), ("allreduce", 1, 40 * MB)]
    last_backward = max(e.end_ms for e in sim.timeline if e.kind == "backward")
    # one stage's buckets are synchronised one after another: their union is the sum of their durations
    busy = sum(c.end_ms - c.start_ms for c in mine)
    assert mine[1].start_ms >= mine[0].end_ms
    assert sync_row(plan) == [
        "0", "gpu0, gpu1", "2", "ring all-reduce", "2", "100.0", f"{busy:,.3f}",
        f"{max(c.end_ms for c in mine) - last_backward:,.3f}",
    ]  # fmt: skip
    text = summary_text(plan)
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in text.splitlines() if line.startswith("│ gpu")]
    device_rows = {row[0]: row[1:4] for row in cells}
    assert device_rows == {"gpu0": ["K40", "5", "80.00"], "gpu1": ["K40", "5", "80.00"]}  # the replica's row too
    assert "replicas and synchronisation (ring all-reduce, 50.0 MiB buckets)" in text
    assert "synchronisation" in text and "ring all-reduce, 50.0 MiB buckets" in text


def test_the_summary_gives_each_parameter_servers_bytes():
    plan = data_parallel(ParameterServerSync(("gpu2", "gpu3"), 0, 50 * MB))
    owner = assign_shards([Bucket(0, ("d", "c", "b"), 60 * MB), Bucket(1, ("a",), 40 * MB)], ["gpu2", "gpu3"],
                          plan.cluster, ["gpu0", "gpu1"])  # fmt: skip
    assert owner == {0: "gpu2", 1: "gpu3"}  # equal links: the larger bucket to the first server
    row = sync_row(plan)
    assert row[3] == "servers gpu2 60.0 MiB, gpu3 40.0 MiB" and row[4:6] == ["2", "100.0"]
    text = summary_text(plan)
    assert "parameter servers gpu2, gpu3 (synchronous), 50.0 MiB buckets" in text
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in text.splitlines() if line.startswith("│ gpu")]
    assert {row[0]: (row[2], row[4]) for row in cells} == {  # ops and parameter MiB: the servers hold their shards
        "gpu0": ("5", "100.0"), "gpu1": ("5", "100.0"), "gpu2": ("0", "60.0"), "gpu3": ("0", "40.0"),
    }  # fmt: skip


def test_the_summary_names_a_hierarchical_all_reduces_islands_and_odd_shares():
    plan = data_parallel(AllReduceSync("hierarchical", None), devices=("gpu0", "gpu1", "gpu2"), microbatches=5)
    row = sync_row(plan)
    assert row[:5] == ["0", "gpu0, gpu1, gpu2", "1-2", "hierarchical all-reduce: gpu0+gpu1+gpu2", "1"]


def test_replicas_in_inference_do_not_synchronise():
    row = sync_row(data_parallel(AllReduceSync(), mode="inference"))
    assert row[3:] == ["none (inference)", "0", "0.0", "-", "-"]


def test_a_plan_without_replicas_has_no_synchronisation_table():
    plan = replace(data_parallel(AllReduceSync()), stages=[])
    assert "replicas and synchronisation" not in summary_text(plan)


def test_the_chrome_trace_has_a_track_per_replica_group_with_its_collectives():
    plan = data_parallel(ParameterServerSync(("cpu0",), 0, None))
    sim = plan.simulate()
    trace = chrome_trace(sim)["traceEvents"]
    threads = {(e["pid"], e["args"]["name"]) for e in trace if e.get("name") == "thread_name"}
    assert (3, "sync gpu0+gpu1 @ cpu0") in threads
    spans = [(e["name"], e["cat"], e["ts"], e["dur"]) for e in trace if e["ph"] == "X" and e["pid"] == 3]
    assert spans == [
        (collective_code(c), c.kind, pytest.approx(1e3 * c.start_ms), pytest.approx(1e3 * (c.end_ms - c.start_ms)))
        for c in sim.raw.collectives
    ]
    assert [name for name, *_ in spans] == ["RD@cpu0", "OPT@cpu0", "BC@cpu0"]


def test_collective_codes_follow_the_schedule_tables():
    def record(kind: str, bucket: int, buckets: int, root: str = "") -> Collective:
        return Collective(kind, "ring", bucket, buckets, ["gpu0", "gpu1"], root, 1.0, 0.0, 1.0, [1.0, 1.0], [(), ()])

    assert collective_code(record("allreduce", 0, 1)) == "AR"
    assert collective_code(record("allreduce", 2, 3)) == "AR2"
    assert collective_code(record("update", 1, 2, "cpu0")) == "OPT1@cpu0"


def test_the_gantt_chart_has_a_row_per_replica_group_and_explains_the_collectives():
    plan = data_parallel(ParameterServerSync(("cpu0",), 0, 50 * MB))
    fig = gantt_figure(plan.simulate())
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows[:3] == ["gpu0", "gpu1", "sync gpu0+gpu1 @ cpu0"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"reduce onto a server", "server's optimizer update", "server's broadcast"} <= set(labels)
    written = [t.get_text() for t in ax.texts]
    assert "RD0@cpu0" in written and not any(" @ cpu0" in t for t in written)  # named on the group's row only
    drawn = {c.get_gid() for c in ax.collections}
    assert {"sync gpu0+gpu1 @ cpu0 reduce", "sync gpu0+gpu1 @ cpu0 update", "sync gpu0+gpu1 @ cpu0 broadcast"} <= drawn
