"""``graphc compare``: placements of benchmark networks by several solvers on several clusters.

Every (graph, cluster, solver) row is solved with the same time limit and reported with the simulated
step time (one training step of the whole batch), its ratio to the lower bound, the proven gap and the
solve time, a digest of the plan (:func:`plan_digest`: two runs chose the same plan iff the digests
match) and the stages the wall-clock safety net cut short, if any. With the ``throughput`` objective each (graph, cluster) also gets one pipelined plan from
``auto`` (stages and microbatches chosen by :func:`placement.pipeline.solve_throughput`); its step time is
the simulated step of all microbatches, so it compares directly with the latency plans' step time.

Outputs: :func:`to_markdown` (every row), :func:`to_summary_markdown` (one line per graph and cluster,
the solvers side by side, plus geometric means: the table the README shows), :func:`summary_tables` (the
same summary for a terminal of 100 columns), :func:`write_csv` and :func:`bar_chart` (a PNG of
:func:`chart_figure`: a dot plot of step time over the bound, one panel per cluster).
:func:`replace_readme_block` puts the summary between two marker lines of a Markdown file, so the
README's table is the command's output.

Graphs are zoo networks (traced at their published size on the meta device, module granularity) or
files of the shared benchmarks (``pipedream/vgg16.txt``, ``dnn-partitioning/latency/bert24_inference.json``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from graphc.frontend import zoo
from graphc.frontend.tracing import trace
from graphc.ir.deprecation import renamed_keywords
from graphc.ir.errors import ConfigurationError, FormatError, GraphcError
from graphc.ir.graph import Graph
from graphc.ir.importers import load_benchmark
from placement.cluster import Cluster
from placement.plan import Plan
from placement.solvers import solve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OBJECTIVES = ("latency", "throughput")
CHART_DPI = 110
CHART_MAX_WIDTH_PX = 2400  # a chart wider than a screen is not read
CHART_PANELS_PER_LINE = 3  # clusters side by side before the panels wrap to a new line
CHART_LOG_RANGE = 10.0  # beyond this max / min ratio the chart's axis is logarithmic
_SOLVER_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#b6992d", "#b07aa1", "#9c755f", "#000000"]
_SOLVER_MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*", "d"]
_NO_PLAN = "no plan found"
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
    plan_digest: str = ""
    wall_clock_stops: str = ""


def plan_digest(plan: Plan) -> str:
    """A short fingerprint of what a plan decides (devices, order, stages, microbatches): two runs gave
    the same plan iff their digests match (the timings they report may differ)."""
    decided = {
        "assignment": sorted(plan.assignment.items()),
        "order": sorted((d, list(names)) for d, names in plan.order.items()),
        "stages": [(s.nodes, s.devices) for s in plan.stages],
        "microbatches": plan.microbatches,
    }
    return hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:12]


def load_graph(spec: str, batch_size: int) -> Graph:
    """A zoo name (traced on the meta device) or a benchmark file (imported), named for the table."""
    if spec in zoo.NAMES:
        zm = zoo.build(spec, batch_size=batch_size, device="meta")
        return trace(zm.model, zm.example_inputs, granularity="module", name=spec).graph
    graph = load_benchmark(spec)
    origin = graph.meta.get("source", "")
    if origin == "dnn-partitioning" and len(Path(spec).parts) >= 2:
        origin = f"dnn-partitioning {Path(spec).parts[-2]}"
    elif origin == "trace":
        origin = f"traced {graph.meta.get('granularity', '')}".strip()
    graph.name = f"{Path(spec).stem} ({origin})"
    return graph


def _row(graph: Graph, cluster: Cluster, objective: str, solver: str, time_limit_s: float, seed: int) -> Row:
    """Solve one combination; a solver that finds no plan gives a row with its error."""
    label = PIPELINE if objective == "throughput" else solver
    try:
        plan = solve(graph, cluster, objective=objective, solver=solver, time_limit_s=time_limit_s, seed=seed)
    except GraphcError as exc:
        return Row(graph.name, cluster.name, objective, label, math.nan, math.nan, math.nan, None, 0.0, 0, error=str(exc)[:200])
    return Row(
        graph.name, cluster.name, objective, label, plan.predicted_step_ms, plan.lower_bound_ms, plan.ratio_to_bound(),
        plan.gap, plan.solve_seconds, len(plan.devices_used()), len(plan.stages), plan.microbatches, plan.solver,
        plan_digest=plan_digest(plan), wall_clock_stops=",".join(plan.settings.get("stopped_by_wall_clock", [])),
    )  # fmt: skip


@renamed_keywords(time_limit="time_limit_s")
def compare(
    graphs: Iterable[str],
    clusters: Iterable[str],
    solvers: Iterable[str],
    *,
    objectives: Iterable[str] = ("latency",),
    batch_size: int = 32,
    time_limit_s: float = 10.0,
    seed: int = 0,
    quiet: bool = False,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Solve every combination (module docstring), each solve within ``time_limit_s`` seconds; failures
    are recorded in their row, not raised.

    Raises:
        ConfigurationError: an unknown objective or cluster preset (before anything is solved).
    """
    graphs, clusters, solvers, objectives = list(graphs), list(clusters), list(solvers), list(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ConfigurationError(f"compare: unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVES)}")
    try:
        presets = {name: Cluster.preset(name) for name in clusters}
    except ConfigurationError as exc:
        raise ConfigurationError(f"compare: {exc}") from exc
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
                    row = _row(graph, presets[cluster_name], objective, solver, time_limit_s, seed)
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


_ABSOLUTE_COLUMNS = ("auto step (ms)", "auto gap", "pipeline step (ms)", "stages x mb")
_NAME_WIDTH = 20  # graph and cluster names longer than this wrap in the console summary
Cell = tuple[str, bool]  # a summary cell's text and whether it is the best of its line (bold)


def summary_grid(rows: list[Row]) -> tuple[list[str], list[list[Cell]], str]:
    """The summary's content, for :func:`to_summary_markdown` and :func:`summary_tables` alike: the header;
    one line per (graph, cluster) with every latency solver's step time over the best (largest) lower
    bound any of them proved, side by side, the best marked; auto's step time and proven gap; the
    pipelined plan's step time and shape; then a line of the geometric mean of each solver's column; and
    a closing sentence on auto's step time over the best other latency solver's ("" without auto)."""
    latency = [r for r in rows if r.objective == "latency" and not r.error]
    solvers = list(dict.fromkeys(r.solver for r in rows if r.objective == "latency"))
    others = [s for s in solvers if s != "auto"]
    pipelined = {(r.graph, r.cluster): r for r in rows if r.objective == "throughput"}
    header = ["graph", "cluster", "bound (ms)", *solvers]
    if "auto" in solvers:
        header += ["auto step (ms)", "auto gap"]
    if pipelined:
        header += ["pipeline step (ms)", "stages x mb"]
    body: list[list[Cell]] = []
    ratios: dict[str, list[float]] = {s: [] for s in solvers}
    auto_over_best: list[float] = []
    for (graph, cluster), bound in _best_bounds(rows).items():
        ok = {r.solver: r for r in latency if (r.graph, r.cluster) == (graph, cluster)}
        best = min((r.step_ms for r in ok.values()), default=math.nan)
        cells = [graph, cluster, "—" if math.isnan(bound) else f"{bound:,.2f}"]
        marks = [False] * 3
        for s in solvers:
            r = ok.get(s)
            cells.append("—" if r is None else f"{r.step_ms / bound:.3f}")
            marks.append(r is not None and r.step_ms <= best * (1 + 1e-9))
            if r is not None:
                ratios[s].append(r.step_ms / bound)
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
        body.append(list(zip(cells, marks + [False] * (len(cells) - len(marks)))))
    means = ["geometric mean", "", "", *(f"{_geomean(ratios[s]):.3f}" for s in solvers)]
    body.append([(c, False) for c in means + [""] * (len(header) - len(means))])
    closing = ""
    if auto_over_best:
        closing = (f"auto / best other solver, geometric mean over {len(auto_over_best)} rows: {_geomean(auto_over_best):.3f}; "
                   f"worst row: {max(auto_over_best):.3f}")  # fmt: skip
    return header, body, closing


def to_summary_markdown(rows: list[Row]) -> str:
    """The summary (:func:`summary_grid`) as a Markdown table, the best cells in bold: the table the
    README shows."""
    header, body, closing = summary_grid(rows)
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for line in body:
        lines.append("|" + "|".join(f" **{c}** " if bold else f" {c} " if c else " " for c, bold in line) + "|")
    return "\n".join(lines) + "\n" + (f"\n{closing}\n" if closing else "")


def summary_tables(rows: list[Row]) -> Group:
    """The summary (:func:`summary_grid`) for a terminal of 100 columns: one table of the solvers' step
    time over the bound (best in bold, geometric means below a rule), one of the absolute figures (bound,
    auto's step and gap, the pipelined plan); names and headers wrap, numbers never do (a column is
    never narrower than its longest word)."""
    header, body, closing = summary_grid(rows)
    *lines, means = body
    solvers = [h for h in header[3:] if h not in _ABSOLUTE_COLUMNS]
    parts: list[Any] = []
    if solvers:
        ratio_columns = [0, 1, *range(3, 3 + len(solvers))]
        parts.append(_summary_table("step time / best lower bound (best in bold)", header, lines, ratio_columns, means))
    absolute_columns = [0, 1, 2, *range(3 + len(solvers), len(header))]
    parts.append(_summary_table("step times (ms)", header, lines, absolute_columns))
    if closing:
        parts.append(closing)
    return Group(*parts)


def _summary_table(title: str, header: list[str], lines: list[list[Cell]], columns: list[int],
                   means: list[Cell] | None = None) -> Table:  # fmt: skip
    """The ``columns`` of the summary's ``lines`` as a borderless rich table, ``means`` after a rule.
    Long hyphenated solver names are broken after the hyphen (``round-`` / ``robin``): rich wraps at spaces;
    no column is narrower than its longest word (of its cells and header), so nothing is cut."""
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False, title_justify="left")
    for i in columns:
        name = header[i].replace("-", "-\n") if i > 2 and len(header[i]) > 6 else header[i]
        word = max(len(w) for w in [*name.split(), *(w for line in lines for w in line[i][0].split())])
        if i < 2:  # names: a fixed width, so that rich narrows the other columns rather than these
            cell = max((len(line[i][0]) for line in lines), default=1)
            table.add_column(name, width=max(word, min(cell, _NAME_WIDTH)))
        else:
            table.add_column(name, justify="right", min_width=word)
    for line in lines:
        table.add_row(*(Text(line[i][0], style="bold" if line[i][1] else "") for i in columns))
    if means:
        table.add_section()
        table.add_row(*(means[i][0] for i in columns))
    return table


def readme_block(path: Path) -> tuple[str, int, int]:
    """``path``'s text and where the summary goes: the end of the :data:`README_BEGIN` line and the start
    of the :data:`README_END` line.

    Raises:
        FormatError: the file is missing or does not hold both markers, in that order.
    """
    try:
        content = path.read_text()
    except OSError as exc:
        raise FormatError(f"cannot update {path}: {exc.strerror or exc}") from exc
    begin, end = content.find(README_BEGIN), content.find(README_END)
    if begin < 0 or end < begin:
        raise FormatError(f"cannot update {path}: it needs the lines {README_BEGIN!r} and then {README_END!r} around the table")
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


def _best_bounds(rows: list[Row]) -> dict[tuple[str, str], float]:
    """Per (graph, cluster): the best (largest) lower bound any latency solver proved, nan without one."""
    bounds: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.objective == "latency" and not r.error:
            bounds[r.graph, r.cluster] = max(bounds.get((r.graph, r.cluster), -math.inf), r.bound_ms)
    return {key: bounds.get(key, math.nan) for key in dict.fromkeys((r.graph, r.cluster) for r in rows)}


def chart_ratios(rows: list[Row]) -> dict[tuple[str, str, str], float]:
    """What the chart plots, per (graph, cluster, solver): step time over the best latency bound of that
    graph and cluster (the summary table's cells; a pipelined plan's step is of the same batch, so it
    divides by the same bound and may fall below 1), or over the row's own bound where no latency solver
    proved one; nan where the solver found no plan."""
    bounds = _best_bounds(rows)
    ratios = {}
    for r in rows:
        bound = bounds[r.graph, r.cluster]
        ratios[r.graph, r.cluster, r.solver] = r.step_ms / (r.bound_ms if math.isnan(bound) else bound)
    return ratios


def chart_figure(rows: list[Row]) -> Figure:
    """The comparison as a dot plot: one panel per cluster (up to :data:`CHART_PANELS_PER_LINE` side by
    side), graphs down the side, one marker per solver at its step time over the bound
    (:func:`chart_ratios`), joined to the bound line at 1 so a long stem is a poor plan. The axis is
    logarithmic when the ratios span more than :data:`CHART_LOG_RANGE`; the width is capped at
    :data:`CHART_MAX_WIDTH_PX`, the height grows with the number of graphs."""
    # matplotlib loads on first use, on purpose: only a chart needs it, and it costs about a second to import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ratios = chart_ratios(rows)
    graphs = list(dict.fromkeys(r.graph for r in rows))
    clusters = list(dict.fromkeys(r.cluster for r in rows))
    solvers = list(dict.fromkeys(r.solver for r in rows))
    cols = min(len(clusters), CHART_PANELS_PER_LINE)
    lines = math.ceil(len(clusters) / cols)
    width = min(CHART_MAX_WIDTH_PX / CHART_DPI, 3.5 + 5.5 * cols)
    fig = Figure(figsize=(width, lines * (0.5 * len(graphs) + 1.2) + 0.8), dpi=CHART_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(lines, cols, sharex=True, sharey=True, squeeze=False).flatten()
    for ax, cluster in zip(axes, clusters):
        _chart_panel(ax, cluster, graphs, solvers, ratios)
    for ax in axes[len(clusters):]:
        ax.set_visible(False)
    finite = [v for v in ratios.values() if v > 0 and math.isfinite(v)]
    if finite and max(finite) / min(finite) > CHART_LOG_RANGE:
        _log_axis(axes[0])
    fig.supxlabel("simulated step time / best lower bound (1 = the bound; lower is better)")
    entries = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
    entries[_NO_PLAN] = entries.pop(_NO_PLAN, None)  # the solvers, then the cross where a plan is missing
    entries = {label: h for label, h in entries.items() if h is not None}
    fig.legend(entries.values(), entries.keys(), loc="outside upper center", ncol=min(len(entries), 10), fontsize=8)
    return fig


def _log_axis(ax: Any) -> None:
    """A logarithmic x axis (shared by every panel) with its ticks at 1, 2 and 5 times powers of ten,
    written as plain numbers (``0.5``, ``1``, ``20``) rather than powers."""
    # matplotlib loads on first use, on purpose: only a chart needs it, and it costs about a second to import
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _chart_panel(ax: Any, cluster: str, graphs: list[str], solvers: list[str], ratios: dict[tuple[str, str, str], float]) -> None:
    """One cluster's panel: alternate graphs shaded, each solver dodged to its own height inside the
    graph's band, a grey cross at the left edge where a solver found no plan."""
    ax.set_title(cluster, fontsize=10)
    ax.set_yticks(range(len(graphs)), graphs, fontsize=8)
    ax.set_ylim(len(graphs) - 0.5, -0.5)
    for i in range(0, len(graphs), 2):
        ax.axhspan(i - 0.5, i + 0.5, color="#f2f2f2", zorder=0)
    ax.axvline(1.0, color="black", linewidth=0.8, zorder=1)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6, which="both")
    edge = ax.get_yaxis_transform()  # x in axes fraction, y in data
    for j, solver in enumerate(solvers):
        colour, marker = _SOLVER_COLOURS[j % len(_SOLVER_COLOURS)], _SOLVER_MARKERS[j % len(_SOLVER_MARKERS)]
        offset = -0.4 + (j + 0.5) * 0.8 / len(solvers)
        ys = [i + offset for i in range(len(graphs))]
        xs = [ratios.get((g, cluster, solver), math.nan) for g in graphs]
        ax.hlines(ys, 1.0, xs, color=colour, linewidth=1.0, alpha=0.6, zorder=2)
        ax.plot(xs, ys, linestyle="none", marker=marker, markersize=5, color=colour, label=solver, zorder=3)
        missing = [y for (g, y, x) in zip(graphs, ys, xs) if (g, cluster, solver) in ratios and math.isnan(x)]
        ax.plot([0.01] * len(missing), missing, linestyle="none", marker="x", markersize=4, color="#7f7f7f",
                transform=edge, label=_NO_PLAN if missing else None, zorder=3)  # fmt: skip


def bar_chart(rows: list[Row], path: Path) -> None:
    """Write :func:`chart_figure` as a PNG (at most :data:`CHART_MAX_WIDTH_PX` wide)."""
    chart_figure(rows).savefig(path)
