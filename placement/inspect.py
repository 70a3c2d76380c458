"""Looking into a plan: a summary table, a Chrome/Perfetto trace, a Gantt chart and a Graphviz picture.

Every view is computed from the plan, the graph it places and the cluster, by simulating the plan
again with the same cost model (:func:`placement.simulate`), so a saved plan file (which embeds its
graph and cluster) can be inspected on any machine.

* :func:`summary_table` — per device: ops, FLOPs, parameters, peak memory, busy time, utilisation;
  per link: bytes moved and busy time; the predicted step time, lower bound, gap, solver and its time.
* :func:`chrome_trace` — the simulated timeline in the Trace Event format, one track per device and one
  per link (a transfer shows on every link it crosses); opens in Perfetto or ``chrome://tracing``.
* :func:`gantt_png` — the same timeline as a PNG (matplotlib).
* :func:`to_dot` — the graph with nodes coloured by device and cut edges drawn bold red with their bytes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from graphc.graph import Graph
from placement.cluster import Cluster
from placement.plan import Plan
from placement.timeline import BACKWARD, FORWARD, SimResult

_PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf",
]  # fmt: skip


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f}"


def summary_table(plan: Plan, graph: Graph, cluster: Cluster, sim: SimResult) -> Group:
    """The plan for people: one table per device, one per link, and the headline figures."""
    devices = Table(title=f"plan for {graph.name!r} on {cluster.name!r} ({plan.objective}, {plan.mode})")
    for column in ("device", "kind", "ops", "fwd GFLOPs", "params MiB", "peak MiB", "capacity MiB", "busy ms", "util"):
        devices.add_column(column, justify="left" if column in ("device", "kind") else "right")
    per_device: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for name, device in plan.assignment.items():
        node = graph.node(name)
        row = per_device[device]
        row[0] += 1
        row[1] += node.fwd_flops
        row[2] += node.param_bytes
    util = sim.utilization()
    for device in cluster.devices:
        if device.name not in per_device:
            continue
        ops, flops, params = per_device[device.name]
        flag = " [red]OVER[/red]" if device.name in sim.over_capacity else ""
        devices.add_row(
            device.name, device.kind, str(int(ops)), f"{flops / 1e9:,.2f}", _mib(params),
            _mib(sim.peak_memory_bytes[device.name]) + flag, _mib(sim.memory_capacity_bytes[device.name]),
            f"{sim.busy_ms[device.name]:,.3f}", f"{util[device.name]:.0%}",
        )  # fmt: skip
    links = Table(title="links that carried data")
    for column in ("link", "MiB moved", "busy ms"):
        links.add_column(column, justify="left" if column == "link" else "right")
    for link, nbytes in sorted(sim.link_bytes.items(), key=lambda kv: -kv[1]):
        links.add_row(link, _mib(nbytes), f"{sim.link_busy_ms.get(link, 0.0):,.3f}")
    cut = [(s, d, e) for s, d, e in graph.edges() if plan.assignment[s] != plan.assignment[d]]
    headline = Table(show_header=False, title="prediction")
    headline.add_column("what", style="bold")
    headline.add_column("value", justify="right")
    gap = "unknown" if plan.gap is None else f"{plan.gap:.1%}"
    for what, value in (
        ("predicted step", f"{plan.predicted_step_ms:,.3f} ms ({plan.microbatches} microbatch(es))"),
        ("lower bound", f"{plan.lower_bound_ms:,.3f} ms (ratio {plan.ratio_to_bound():.3f})"),
        ("proven gap", gap),
        ("cut edges", f"{len(cut)} carrying {_mib(sum(e.bytes for _, _, e in cut))} MiB"),
        ("stages", str(len(plan.stages)) if plan.stages else "none (latency plan)"),
        ("solver", f"{plan.solver} in {plan.solve_seconds:.2f} s"),
    ):
        headline.add_row(what, value)
    return Group(devices, links, headline) if sim.link_bytes else Group(devices, headline)


def chrome_trace(sim: SimResult) -> dict[str, Any]:
    """The simulated timeline as a Trace Event document: process 1 holds one thread per device, process
    2 one thread per link; times in microseconds."""
    devices = list(sim.busy_ms)
    links = sorted({link for e in sim.timeline for link in e.links})
    tid = {("dev", d): i for i, d in enumerate(devices)} | {("link", lk): i for i, lk in enumerate(links)}
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "devices"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "links"}},
    ]
    events += [{"ph": "M", "pid": 1, "tid": tid["dev", d], "name": "thread_name", "args": {"name": d}} for d in devices]
    events += [{"ph": "M", "pid": 2, "tid": tid["link", lk], "name": "thread_name", "args": {"name": lk}} for lk in links]
    for e in sim.timeline:
        common = {"ph": "X", "ts": 1e3 * e.start_ms, "dur": 1e3 * e.duration_ms, "cat": e.kind}
        args = {"microbatch": e.microbatch}
        if e.kind in (FORWARD, BACKWARD):
            events.append({**common, "pid": 1, "tid": tid["dev", e.device], "name": f"{e.name} ({e.kind})", "args": args})
            continue
        args |= {"bytes": e.bytes, "from": e.src_device, "to": e.device}
        for link in e.links:
            events.append({**common, "pid": 2, "tid": tid["link", link], "name": f"{e.kind} {e.name}", "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def gantt_png(sim: SimResult, path: str | Path, title: str = "") -> None:
    """Draw the timeline: one row per device (forward blue, backward orange) and per link (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = [d for d, busy in sim.busy_ms.items() if busy > 0]
    links = sorted({link for e in sim.timeline for link in e.links})
    rows = devices + links
    index = {r: i for i, r in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(rows) + 1.5))
    colours = {FORWARD: "#4e79a7", BACKWARD: "#f28e2b"}
    for e in sim.timeline:
        targets = [e.device] if e.kind in (FORWARD, BACKWARD) else list(e.links)
        for row in targets:
            if row in index:
                ax.barh(index[row], e.duration_ms, left=e.start_ms, height=0.8,
                        color=colours.get(e.kind, "#9d9d9d"), edgecolor="white", linewidth=0.3)  # fmt: skip
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    ax.set_title(title or f"simulated {sim.mode} step: {sim.step_ms:.3f} ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_dot(plan: Plan, graph: Graph) -> str:
    """Graphviz source of the graph, nodes filled with their device's colour, cut edges bold and red."""
    colour = {d: _PALETTE[i % len(_PALETTE)] for i, d in enumerate(plan.devices_used())}
    lines = [f'digraph "{graph.name}" {{', "  rankdir=TB;", '  node [shape=box, style=filled, fontname="Helvetica"];']
    for device, c in colour.items():
        lines.append(f'  "legend {device}" [label="{device}", fillcolor="{c}", shape=note];')
    for node in graph.nodes():
        device = plan.assignment[node.name]
        label = f"{node.name}\\n{node.op.split('(')[0][:32]}"
        lines.append(f'  "{node.name}" [label="{label}", fillcolor="{colour[device]}", tooltip="{device}"];')
    for src, dst, edge in graph.edges():
        if plan.assignment[src] != plan.assignment[dst]:
            lines.append(f'  "{src}" -> "{dst}" [color=red, penwidth=2.5, label="{edge.bytes / 2**20:.2f} MiB"];')
        else:
            lines.append(f'  "{src}" -> "{dst}";')
    lines.append("}")
    return "\n".join(lines)
