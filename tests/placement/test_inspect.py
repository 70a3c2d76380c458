"""Plan inspection: summary, Chrome trace (one track per device and per link), Gantt PNG, Graphviz."""

from __future__ import annotations

import json
import re
import time

import pytest
from matplotlib.colors import to_hex
from rich.console import Console

from graphc.ir.graph import EdgeData, Graph, NodeData
from graphc.app.report import graph_totals_table, op_breakdown_table
from placement import Cluster
from placement.inspect import device_colours, gantt_figure, gantt_png, to_dot
from placement.plan import Plan
from placement.problem import finish_plan, make_problem


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
    console = Console(width=100, record=True)
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


def _chain(flops: list[float], name: str = "chain") -> Graph:
    """A chain of matmuls named ``stage.layer<i>`` with the given forward FLOPs (backward twice that)."""
    graph = Graph(name)
    for i, f in enumerate(flops):
        graph.add_node(NodeData(name=f"stage.layer{i}", op="aten.mm.default", fwd_flops=f, bwd_flops=2 * f, param_bytes=1e6,
                                output_bytes=8e6, activation_bytes=8e6, output_shapes=[[1024, 2048]], output_dtypes=["float32"]))  # fmt: skip
        if i:
            graph.add_edge(f"stage.layer{i - 1}", f"stage.layer{i}", EdgeData(bytes=8e6))
    return graph


def _placed(graph: Graph, cluster: Cluster, device_of) -> Plan:
    assignment = {node.name: device_of(i) for i, node in enumerate(graph.nodes())}
    return finish_plan(make_problem(graph, cluster), assignment, solver="by-hand")


def _legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_gantt_bars_take_their_devices_dot_colour_and_the_legend_explains_them(tmp_path):
    plan = _plan(tmp_path)
    fig = gantt_figure(plan.simulate())
    fills = {}
    for coll in fig.axes[0].collections:
        row, kind = coll.get_gid().rsplit(" ", 1)
        fills[row, kind] = to_hex(coll.get_facecolor()[0])
    dot = to_dot(plan, plan.graph, plan.cluster)
    dot_fill = {device: colour for colour, device in re.findall(r'fillcolor="(#[0-9a-f]{6})".*tooltip="([^"]+)"', dot)}
    assert set(dot_fill) == {"gpu0", "gpu1"}
    for device, colour in dot_fill.items():
        assert fills[device, "forward"] == colour
        assert fills[device, "backward"] != colour  # lighter, and hatched
    hatched = {coll.get_gid() for coll in fig.axes[0].collections if coll.get_hatch()}
    assert {"gpu0 backward", "gpu1 backward"} <= hatched and "gpu0 forward" not in hatched
    transfers = {colour for (row, kind), colour in fills.items() if kind == "send"}
    assert transfers and not transfers & set(dot_fill.values())  # transfers are neutral, not a device's colour
    labels = _legend_labels(fig)
    assert labels[:2] == ["gpu0", "gpu1"]
    assert any("forward" in t for t in labels) and any("backward" in t for t in labels)
    assert any("transfer" in t for t in labels)
    assert f"{plan.predicted_step_ms:,.3f} ms" in fig.axes[0].get_title()
    assert "ms" in fig.axes[0].get_xlabel()


def test_device_colours_are_distinct_for_every_device_of_a_large_cluster():
    names = [f"gpu{i}" for i in range(128)]
    colours = device_colours(names)
    assert len(set(colours.values())) == 128
    assert device_colours(names[:4]) == {n: colours[n] for n in names[:4]}


def test_gantt_names_wide_bars_and_leaves_narrow_ones_blank():
    graph = _chain([400e9, 40e9, 1e6, 400e9])
    fig = gantt_figure(_placed(graph, Cluster.preset("pcie-4gpu"), lambda i: "gpu0").simulate())
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert "stage.layer0" in texts and "stage.layer3" in texts
    assert not any("layer2" in t for t in texts)  # 1 MFLOP: a sliver of the step


def test_gantt_of_one_device_has_no_link_rows():
    fig = gantt_figure(_placed(_chain([4e9] * 3), Cluster.preset("pcie-4gpu"), lambda i: "gpu0").simulate())
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["gpu0"]
    assert _legend_labels(fig)[0] == "gpu0" and not any("transfer" in t for t in _legend_labels(fig))


def test_gantt_of_ten_thousand_nodes_on_sixteen_devices_is_quick(tmp_path):
    cluster = Cluster.preset("2x8-v100-ib")
    names = [d.name for d in cluster.devices]
    plan = _placed(_chain([1e9 * (1 + i % 7) for i in range(10_000)]), cluster, lambda i: names[i * 16 // 10_000])
    sim = plan.simulate()
    started = time.perf_counter()
    gantt_png(sim, tmp_path / "big.png")
    assert time.perf_counter() - started < 10
    assert _legend_labels(gantt_figure(sim))[:16] == names


def test_summary_of_sixteen_devices_fits_100_columns_with_every_figure_whole():
    cluster = Cluster.preset("2x8-v100-ib")
    names = [d.name for d in cluster.devices]
    plan = _placed(_chain([4e10 * (1 + i % 5) for i in range(160)]), cluster, lambda i: names[i // 10])
    console = Console(width=100, record=True)
    console.print(plan.summary())
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100 and "…" not in text
    sim = plan.simulate()
    words = set(text.split())
    for device in names:
        busy, peak = f"{sim.busy_ms[device]:,.3f}", f"{sim.peak_memory_bytes[device] / 2**20:,.1f}"
        assert {device, busy, peak, f"{sim.utilization()[device]:.0%}"} <= words, device
    for link, nbytes in sim.link_bytes.items():
        assert {link, f"{nbytes / 2**20:,.1f}"} <= words, link
    assert f"{plan.predicted_step_ms:,.3f}" in words


def test_graph_report_tables_fit_100_columns_with_every_op_and_figure_whole():
    graph = _chain([4e12, 3e9, 2e6])
    long_op = "aten._scaled_dot_product_flash_attention_for_cpu.default"
    graph.node("stage.layer1").op = long_op
    for node in graph.nodes():
        node.param_bytes = 345.5 * 2**20
        node.measured_ms["cuda-NVIDIA-H100-80GB-HBM3"], node.measured_bwd_ms["cuda-NVIDIA-H100-80GB-HBM3"] = 1234.5, 2469.0
    console = Console(width=100, record=True)
    console.print(graph_totals_table(graph), op_breakdown_table(graph))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100 and "…" not in text
    first_cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert long_op in first_cells  # folded onto a second line, not cut
    for figure in ("4000.002", "8000.004", "7407.00", "3703.50", "691.0 MiB", "345.5 MiB", "3,703.50 ms / 7,407.00 ms"):
        assert figure in text, figure
