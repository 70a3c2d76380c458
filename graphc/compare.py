"""``graphc compare``: placements of benchmark networks by several solvers on several clusters.

Every (graph, cluster, solver) row is solved with the same time limit and reported with the simulated
step time, its ratio to the lower bound, the proven gap and the solve time. The table is written as
Markdown and CSV and drawn as a grouped bar chart of step time over the bound (lower is better).
Graphs are zoo networks (traced at their published size on the meta device, module granularity) or
files of the shared benchmarks (``pipedream/vgg16.txt``, ``dnn-partitioning/latency/bert24_inference.json``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from graphc import zoo
from graphc.errors import GraphcError
from graphc.graph import Graph
from graphc.importers import load_benchmark, shared_benchmarks_dir
from placement.cluster import Cluster
from placement.errors import PlacementError


@dataclass
class Row:
    """One solver's plan for one graph on one cluster (``error`` set when it found none)."""

    graph: str
    cluster: str
    solver: str
    step_ms: float
    bound_ms: float
    ratio: float
    gap: float | None
    solve_s: float
    devices: int
    error: str = ""


def benchmark_files() -> list[str]:
    """Every published graph in the shared benchmarks (latency and PipeDream files)."""
    root = shared_benchmarks_dir()
    files = sorted(str(p.relative_to(root)) for p in (root / "pipedream").glob("*.txt") if p.stem != "LICENSE")
    files += sorted(str(p.relative_to(root)) for p in (root / "dnn-partitioning" / "latency").glob("*.json"))
    return files


def load_graph(spec: str, batch_size: int) -> Graph:
    """A zoo name (traced) or a benchmark file (imported)."""
    if spec in zoo.NAMES:
        from graphc.tracing import trace

        zm = zoo.build(spec, batch_size=batch_size, device="meta")
        return trace(zm.model, zm.example_inputs, granularity="module", name=spec).graph
    graph = load_benchmark(spec)
    graph.name = f"{Path(spec).stem} ({'dnn-partitioning' if 'dnn-partitioning' in spec else 'pipedream'})"
    return graph


def compare(
    graphs: Iterable[str],
    clusters: Iterable[str],
    solvers: Iterable[str],
    *,
    batch_size: int = 32,
    time_limit: float = 10.0,
    seed: int = 0,
    quiet: bool = False,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Solve every combination; a solver that fails on a row is recorded with its error, not raised."""
    from placement.solvers import solve

    graphs, clusters, solvers = list(graphs), list(clusters), list(solvers)
    rows: list[Row] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=quiet) as progress:
        task = progress.add_task("comparing", total=len(graphs) * len(clusters) * len(solvers))
        for spec in graphs:
            progress.update(task, description=f"loading {spec}")
            graph = load_graph(spec, batch_size)
            for cluster_name in clusters:
                cluster = Cluster.preset(cluster_name)
                for solver in solvers:
                    progress.update(task, description=f"{graph.name} on {cluster_name}: {solver}")
                    try:
                        plan = solve(graph, cluster, solver=solver, time_limit=time_limit, seed=seed)
                        row = Row(graph.name, cluster_name, solver, plan.predicted_step_ms, plan.lower_bound_ms,
                                  plan.ratio_to_bound(), plan.gap, plan.solve_seconds, len(plan.devices_used()))  # fmt: skip
                    except (PlacementError, GraphcError) as exc:
                        row = Row(graph.name, cluster_name, solver, math.nan, math.nan, math.nan, None, 0.0, 0, str(exc)[:200])
                    rows.append(row)
                    if on_row:
                        on_row(row)
                    progress.advance(task)
    return rows


def to_markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table (infeasible rows say so)."""
    lines = [
        "| graph | cluster | solver | step (ms) | bound (ms) | step / bound | proven gap | solve (s) | devices |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.graph} | {r.cluster} | {r.solver} | — | — | — | — | — | {r.error[:60]} |")
            continue
        gap = "—" if r.gap is None else f"{r.gap:.1%}"
        lines.append(
            f"| {r.graph} | {r.cluster} | {r.solver} | {r.step_ms:,.2f} | {r.bound_ms:,.2f} | {r.ratio:.3f} | "
            f"{gap} | {r.solve_s:.2f} | {r.devices} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]))) if rows else None
        if writer:
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)


def bar_chart(rows: list[Row], path: Path) -> None:
    """Grouped bars: for each (graph, cluster), step / bound of every solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r.graph, r.cluster) for r in rows))
    solvers = list(dict.fromkeys(r.solver for r in rows))
    ratio = {(r.graph, r.cluster, r.solver): r.ratio for r in rows}
    width = 0.8 / max(1, len(solvers))
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(groups) * max(1, len(solvers)) * 0.35 + 3), 5))
    for j, solver in enumerate(solvers):
        values = [ratio.get((g, c, solver), math.nan) for g, c in groups]
        ax.bar([i + j * width for i in range(len(groups))], values, width, label=solver)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [f"{g}\n{c}" for g, c in groups], rotation=60, ha="right", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("step time / lower bound (lower is better)")
    ax.legend(fontsize=7, ncol=min(4, len(solvers)))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
