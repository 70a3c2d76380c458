"""Readable summaries of cost graphs, as rich tables (printed by the CLI, the demo and benchmarks)."""

from __future__ import annotations

from collections import defaultdict

from rich.table import Table

from graphc.ir.graph import Graph


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def graph_totals_table(graph: Graph) -> Table:
    """One table of a graph's totals: size, parameters, FLOPs, memory, and what was measured."""
    table = Table(title=f"cost graph {graph.name!r}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("source", str(graph.meta.get("source", "?")) + (f" ({graph.meta['method']})" if "method" in graph.meta else "")),
        ("granularity", str(graph.meta.get("granularity", "layer"))),
        ("nodes / edges", f"{len(graph)} / {graph.num_edges}"),
        ("parameters", f"{graph.num_params() / 1e6:,.2f} M ({_human_bytes(graph.total_param_bytes())})"),
        ("forward GFLOPs", f"{graph.total_fwd_flops() / 1e9:,.3f}"),
        ("backward GFLOPs", f"{graph.total_bwd_flops() / 1e9:,.3f}"),
        ("activations kept for backward", _human_bytes(sum(n.activation_bytes for n in graph.nodes()))),
        ("bytes on edges", _human_bytes(sum(e.bytes for _, _, e in graph.edges()))),
    ]
    measured = {label for n in graph.nodes() for label in n.measured_ms}
    for label in sorted(measured):
        fwd = sum(n.measured_ms.get(label, 0.0) for n in graph.nodes())
        bwd = sum(n.measured_bwd_ms.get(label, 0.0) for n in graph.nodes())
        rows.append((f"measured on {label} (fwd / bwd)", f"{fwd:,.2f} ms / {bwd:,.2f} ms"))
    for row in rows:
        table.add_row(*row)
    return table


def op_breakdown_table(graph: Graph, limit: int = 12) -> Table:
    """Nodes grouped by op kind (``Conv2d(3, 64, ...)`` counts as ``Conv2d``): count, FLOPs, measured
    time (when a profile gave one, named in the title), parameters and activations, the heaviest first.

    Units go under the column names and the profile's name in the title, so that the table is about 90
    columns wide: it fits a 100-column terminal with every figure whole (figures never wrap; a very
    long op name folds onto a second line)."""
    labels = sorted({label for n in graph.nodes() for label in n.measured_ms})
    groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0, 0.0])
    for node in graph.nodes():
        row = groups[node.op.split("(")[0]]
        row[0] += 1
        row[1] += node.fwd_flops
        row[2] += node.bwd_flops
        row[3] += node.measured_ms.get(labels[0], 0.0) + node.measured_bwd_ms.get(labels[0], 0.0) if labels else 0.0
        row[4] += node.param_bytes
        row[5] += node.activation_bytes
    measured = f"; ms measured on {labels[0]}" if labels else ""
    table = Table(title=f"{graph.name!r} by op (top {limit}{measured})")
    table.add_column("op", overflow="fold")
    columns = ["nodes", "fwd\nGFLOPs", "bwd\nGFLOPs"] + (["measured\nms"] if labels else [])
    for name in columns + ["params", "activations"]:
        table.add_column(name, justify="right", no_wrap=True)
    ranked = sorted(groups.items(), key=lambda item: (-item[1][1], -item[1][3], item[0]))
    for op, (count, fwd, bwd, ms, params, acts) in ranked[:limit]:
        cells = [op, str(count), f"{fwd / 1e9:.3f}", f"{bwd / 1e9:.3f}"] + ([f"{ms:.2f}"] if labels else [])
        table.add_row(*cells, _human_bytes(params), _human_bytes(acts))
    return table
