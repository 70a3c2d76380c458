"""``graphc compare``: placements of benchmark networks by several solvers on several clusters.

Every (graph, cluster, solver) row is solved with the same time limit and reported with the simulated
step time (one training step of the whole batch), its ratio to the lower bound, the proven gap and the
solve time. With the ``throughput`` objective each (graph, cluster) also gets one pipelined plan from
``auto`` (stages and microbatches chosen by :func:`placement.pipeline.solve_throughput`); its step time is
the simulated step of all microbatches, so it compares directly with the latency plans' step time.

Outputs: :func:`to_markdown` (every row), :func:`to_summary_markdown` (one line per graph and cluster,
the solvers side by side, plus geometric means: the table the README shows), :func:`write_csv` and
:func:`bar_chart` (step time over the bound, grouped). :func:`replace_readme_block` puts the summary
between two marker lines of a Markdown file, so the README's table is the command's output.

Graphs are zoo networks (traced at their published size on the meta device, module granularity) or
files of the shared benchmarks (``pipedream/vgg16.txt``, ``dnn-partitioning/latency/bert24_inference.json``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from graphc import zoo
from graphc.errors import GraphcError
from graphc.graph import Graph
from graphc.importers import load_benchmark
from placement.cluster import Cluster
from placement.errors import PlacementError

OBJECTIVES = ("latency", "throughput")
PIPELINE = "pipeline"  # the solver column of the throughput rows (auto with objective="throughput")
README_BEGIN = "<!-- graphc compare: begin -->"
README_END = "<!-- graphc compare: end -->"


@dataclass
class Row:
    """One solver's plan for one graph on one cluster (``error`` set when it found none)."""

    graph: str
    cluster: str
    objective: str
    solver: str
    step_ms: float
    bound_ms: float
    ratio: float
    gap: float | None
    solve_s: float
    devices: int
    stages: int = 0
    microbatches: int = 1
    found_by: str = ""
    error: str = ""


def load_graph(spec: str, batch_size: int) -> Graph:
    """A zoo name (traced on the meta device) or a benchmark file (imported), named for the table."""
    if spec in zoo.NAMES:
        from graphc.tracing import trace

        zm = zoo.build(spec, batch_size=batch_size, device="meta")
        return trace(zm.model, zm.example_inputs, granularity="module", name=spec).graph
    graph = load_benchmark(spec)
    parts = Path(spec).parts
    if "dnn-partitioning" in parts:
        origin = f"dnn-partitioning {parts[-2]}" if len(parts) >= 2 else "dnn-partitioning"
    else:
        origin = "pipedream"
    graph.name = f"{Path(spec).stem} ({origin})"
    return graph


def _row(graph: Graph, cluster: Cluster, objective: str, solver: str, time_limit: float, seed: int) -> Row:
    """Solve one combination; a solver that finds no plan gives a row with its error."""
    from placement.solvers import solve

    label = PIPELINE if objective == "throughput" else solver
    try:
        plan = solve(graph, cluster, objective=objective, solver=solver, time_limit=time_limit, seed=seed)
    except (PlacementError, GraphcError) as exc:
        return Row(graph.name, cluster.name, objective, label, math.nan, math.nan, math.nan, None, 0.0, 0, error=str(exc)[:200])
    return Row(
        graph.name, cluster.name, objective, label, plan.predicted_step_ms, plan.lower_bound_ms, plan.ratio_to_bound(),
        plan.gap, plan.solve_seconds, len(plan.devices_used()), len(plan.stages), plan.microbatches, plan.solver,
    )  # fmt: skip


def compare(
    graphs: Iterable[str],
    clusters: Iterable[str],
    solvers: Iterable[str],
    *,
    objectives: Iterable[str] = ("latency",),
    batch_size: int = 32,
    time_limit: float = 10.0,
    seed: int = 0,
    quiet: bool = False,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Solve every combination (module docstring); failures are recorded in their row, not raised.

    Raises:
        GraphcError: an unknown objective or cluster preset (before anything is solved).
    """
    graphs, clusters, solvers, objectives = list(graphs), list(clusters), list(solvers), list(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise GraphcError(f"compare: unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVES)}")
    try:
        presets = {name: Cluster.preset(name) for name in clusters}
    except PlacementError as exc:
        raise GraphcError(f"compare: {exc}") from exc
    jobs = [(o, s) for o in objectives for s in (solvers if o == "latency" else ["auto"])]
    rows: list[Row] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=quiet) as progress:
        task = progress.add_task("comparing", total=len(graphs) * len(clusters) * len(jobs))
        for spec in graphs:
            progress.update(task, description=f"loading {spec}")
            graph = load_graph(spec, batch_size)
            for cluster_name in clusters:
                for objective, solver in jobs:
                    progress.update(task, description=f"{graph.name} on {cluster_name}: {solver} ({objective})")
                    row = _row(graph, presets[cluster_name], objective, solver, time_limit, seed)
                    rows.append(row)
                    if on_row:
                        on_row(row)
                    progress.advance(task)
    return rows


def to_markdown(rows: list[Row]) -> str:
    """Every row as a Markdown table (infeasible rows say why)."""
    lines = [
        "| graph | cluster | objective | solver | step (ms) | bound (ms) | step / bound | proven gap | solve (s) | devices | stages x microbatches |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        head = f"| {r.graph} | {r.cluster} | {r.objective} | {r.solver} |"
        if r.error:
            lines.append(f"{head} — | — | — | — | — | — | {r.error[:80]} |")
            continue
        gap = "—" if r.gap is None else f"{r.gap:.1%}"
        shape = f"{r.stages} x {r.microbatches}" if r.stages else "—"
        lines.append(
            f"{head} {r.step_ms:,.2f} | {r.bound_ms:,.2f} | {r.ratio:.3f} | {gap} | {r.solve_s:.2f} | {r.devices} | {shape} |"
        )
    return "\n".join(lines) + "\n"


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def to_summary_markdown(rows: list[Row]) -> str:
    """One line per (graph, cluster): every latency solver's step time over the best (largest) lower bound
    any of them proved, side by side, the best in bold; auto's step time and proven gap; the pipelined
    plan's step time and shape. Then the geometric mean of each solver's column, and of auto's step time
    over the best other latency solver's."""
    latency = [r for r in rows if r.objective == "latency" and not r.error]
    solvers = list(dict.fromkeys(r.solver for r in rows if r.objective == "latency"))
    others = [s for s in solvers if s != "auto"]
    pipelined = {(r.graph, r.cluster): r for r in rows if r.objective == "throughput"}
    header = ["graph", "cluster", "bound (ms)", *solvers]
    if "auto" in solvers:
        header += ["auto step (ms)", "auto gap"]
    if pipelined:
        header += ["pipeline step (ms)", "stages x mb"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    ratios: dict[str, list[float]] = {s: [] for s in solvers}
    auto_over_best: list[float] = []
    for graph, cluster in dict.fromkeys((r.graph, r.cluster) for r in rows):
        ok = {r.solver: r for r in latency if (r.graph, r.cluster) == (graph, cluster)}
        bound = max((r.bound_ms for r in ok.values()), default=math.nan)
        best = min((r.step_ms for r in ok.values()), default=math.nan)
        cells = [graph, cluster, "—" if math.isnan(bound) else f"{bound:,.2f}"]
        for s in solvers:
            r = ok.get(s)
            if r is None:
                cells.append("—")
                continue
            ratios[s].append(r.step_ms / bound)
            cell = f"{r.step_ms / bound:.3f}"
            cells.append(f"**{cell}**" if r.step_ms <= best * (1 + 1e-9) else cell)
        if "auto" in solvers:
            auto = ok.get("auto")
            cells += ["—", "—"] if auto is None else [f"{auto.step_ms:,.2f}", "—" if auto.gap is None else f"{auto.gap:.1%}"]
            best_other = min((ok[s].step_ms for s in others if s in ok), default=math.nan)
            if auto is not None and best_other > 0:
                auto_over_best.append(auto.step_ms / best_other)
        if pipelined:
            p = pipelined.get((graph, cluster))
            if p is None or p.error:
                cells += ["—", f"none: {p.error.split(':')[0]}" if p else "—"]
            else:
                cells += [f"{p.step_ms:,.2f}", f"{p.stages} x {p.microbatches}"]
        lines.append("| " + " | ".join(cells) + " |")
    means = [f"{_geomean(ratios[s]):.3f}" for s in solvers]
    padding = " |" * (len(header) - 3 - len(solvers))
    lines.append("| geometric mean | | | " + " | ".join(means) + " |" + padding)
    text = "\n".join(lines) + "\n"
    if auto_over_best:
        text += (
            f"\nauto / best other solver, geometric mean over {len(auto_over_best)} rows: {_geomean(auto_over_best):.3f}; "
            f"worst row: {max(auto_over_best):.3f}\n"
        )
    return text


def readme_block(path: Path) -> tuple[str, int, int]:
    """``path``'s text and where the summary goes: the end of the :data:`README_BEGIN` line and the start
    of the :data:`README_END` line.

    Raises:
        GraphcError: the file is missing or does not hold both markers, in that order.
    """
    try:
        content = path.read_text()
    except OSError as exc:
        raise GraphcError(f"cannot update {path}: {exc.strerror or exc}") from exc
    begin, end = content.find(README_BEGIN), content.find(README_END)
    if begin < 0 or end < begin:
        raise GraphcError(f"cannot update {path}: it needs the lines {README_BEGIN!r} and then {README_END!r} around the table")
    return content, begin + len(README_BEGIN), end


def replace_readme_block(path: Path, text: str) -> None:
    """Put ``text`` between the marker lines of ``path`` (:func:`readme_block`), replacing what was there."""
    content, begin, end = readme_block(path)
    path.write_text(content[:begin] + "\n" + text.rstrip("\n") + "\n" + content[end:])


def write_csv(rows: list[Row], path: Path) -> None:
    """Every row, one CSV line each, with a header of the :class:`Row` fields."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[name for name in Row.__dataclass_fields__])
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
