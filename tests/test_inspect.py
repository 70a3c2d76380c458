"""Plan inspection: summary, Chrome trace (one track per device and per link), Gantt PNG, Graphviz."""

from __future__ import annotations

import json

import pytest

from rich.console import Console

from graphc.graph import EdgeData, Graph, NodeData
from placement import Cluster
from placement.plan import Plan
from placement.solvers.common import finish_plan, make_problem


def _fork_join() -> Graph:
    graph = Graph("fork-join")
    for name in ("src", "left", "right", "join"):
        graph.add_node(NodeData(name=name, op="aten.mm.default", fwd_flops=4e9, bwd_flops=8e9, param_bytes=1e6,
                                output_bytes=64e6, activation_bytes=64e6, output_shapes=[[4096, 4096]],
                                output_dtypes=["float32"]))  # fmt: skip
    for src, dst in (("src", "left"), ("src", "right"), ("left", "join"), ("right", "join")):
        graph.add_edge(src, dst, EdgeData(bytes=64e6))
    return graph


def _plan(tmp_path) -> Plan:
    graph, cluster = _fork_join(), Cluster.preset("pcie-4gpu")
    gpus = [d.name for d in cluster.devices if d.category == "gpu"]
    assignment = {"src": gpus[0], "left": gpus[0], "right": gpus[1], "join": gpus[0]}
    plan = finish_plan(make_problem(graph, cluster), assignment, solver="by-hand")
    plan.save(tmp_path / "plan.json")
    return Plan.load(tmp_path / "plan.json")


def test_saved_plan_carries_graph_and_cluster_and_resimulates_identically(tmp_path):
    plan = _plan(tmp_path)
    assert plan.graph == _fork_join()
    assert plan.simulate().step_ms == plan.predicted_step_ms


def test_summary_names_devices_links_and_headline_figures(tmp_path):
    plan = _plan(tmp_path)
    console = Console(width=160, record=True)
    console.print(plan.summary())
    text = console.export_text()
    for expected in ("gpu0", "gpu1", "predicted step", "lower bound", "proven gap", "cut edges", "2 carrying", "by-hand"):
        assert expected in text, expected


def test_chrome_trace_has_one_track_per_device_and_per_link(tmp_path):
    plan = _plan(tmp_path)
    plan.to_chrome_trace(tmp_path / "trace.json")
    trace = json.loads((tmp_path / "trace.json").read_text())
    names = {(e["pid"], e["args"]["name"]) for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    devices = {n for pid, n in names if pid == 1}
    links = {n for pid, n in names if pid == 2}
    assert {"gpu0", "gpu1"} <= devices
    sim = plan.simulate()
    assert links == {link for e in sim.timeline for link in e.links} and links
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert all(e["dur"] >= 0 for e in spans)
    computed = [e for e in spans if e["pid"] == 1]
    assert len(computed) == 8  # 4 forward + 4 backward
    assert max(e["ts"] + e["dur"] for e in spans) == pytest.approx(sim.step_ms * 1e3)


def test_gantt_png_and_dot_are_written(tmp_path):
    plan = _plan(tmp_path)
    plan.gantt(tmp_path / "gantt.png")
    assert (tmp_path / "gantt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan.to_dot(tmp_path / "plan.dot")
    dot = (tmp_path / "plan.dot").read_text()
    assert dot.startswith('digraph "fork-join"')
    assert dot.count("color=red") == 2  # src -> right and right -> join cross devices
