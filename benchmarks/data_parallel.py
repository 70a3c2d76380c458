"""Data parallel vs pipeline vs the planner's choice (placement.hybrid) for the zoo at published size.

For every zoo network (traced at its published size on the meta device, module granularity, as
``graphc compare`` does; cached under ``results/zoo_graphs/``) and every cluster, three throughput plans
are made independently (sharing the problem's lowering and lower bounds), each the predicted time of
one global batch (the simulated step of all microbatches of all replicas):

* **pipeline**: ``solve(..., parallel="pipeline", replication=False)`` (here ``auto`` on the problem):
  the pipeline solver's split without replicated stages, or the one-device plan when that is faster;
* **data**: ``solve(..., parallel="data")``, the fastest number of whole-model replicas and its sync;
* **planner**: ``solve(..., parallel="auto")``: data parallel, pipeline (with PipeDream's replicated
  stages or without), one device and hybrids (replica groups of a pipeline), the fastest that fits.

The planner must never be slower than either (it tries both with the same budgets); a row where it is
is printed in red and makes the script exit with status 1. The rows where it is faster than both are
named. Prints a table and writes ``results/data_parallel/data_parallel.json`` (and the table as Markdown
with ``--markdown``). Run::

    python benchmarks/data_parallel.py [--models alexnet,vgg16] [--clusters dgx1-v100] [-t 3] [-b 32] [--markdown t.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from list_schedulers import graph_for  # the sibling benchmark's cached tracing, as graphc compare traces
from rich.table import Table

from graphc.frontend import zoo
from graphc.ir.errors import GraphcError
from graphc.ir.graph import Graph
from placement.problem import make_problem
from placement.solvers.auto import auto

CLUSTERS = ("dgx1-v100", "pcie-8gpu-switch-tree", "pcie-8gpu-two-sockets", "2x8-v100-ib", "16x8-v100-ib")
CACHE = Path("results/zoo_graphs")
MODES = {
    "pipeline": {"parallel": "pipeline", "replication": False},
    "data": {"parallel": "data"},
    "planner": {"parallel": "auto"},
}
#: The planner may not be slower than a mode by more than float noise.
TOLERANCE = 1e-9


def plan_row(graph: Graph, cluster: str, time_limit_s: float, seed: int) -> dict[str, Any]:
    """The three plans of one (graph, cluster): each mode's predicted ms and layout, or its error. The
    modes solve one problem, each from its own start time, so its lowering and bounds are made once."""
    row: dict[str, Any] = {"model": graph.name, "cluster": cluster}
    problem = make_problem(graph, cluster, objective="throughput", time_limit_s=time_limit_s, seed=seed)
    for mode, options in MODES.items():
        started = time.perf_counter()
        try:
            plan = auto(replace(problem, started=started), **options)  # type: ignore[arg-type]
        except GraphcError as why:
            row[mode] = {"ms": None, "error": str(why).split(". ")[0]}
            continue
        parallel = plan.settings.get("parallel", {})
        row[mode] = {
            "ms": plan.predicted_step_ms,
            "layout": parallel.get("chosen") or f"pipeline({len(plan.stages)})",
            "stages": [len(st.devices) for st in plan.stages],
            "microbatches": plan.microbatches,
            "sync": parallel.get("sync"),
            "reason": parallel.get("reason", ""),
            "candidates": parallel.get("candidates", {}),
            "dropped": parallel.get("dropped", {}),
            "seconds": time.perf_counter() - started,
        }
    planner, others = row["planner"]["ms"], [row[m]["ms"] for m in ("pipeline", "data") if row[m]["ms"] is not None]
    row["violation"] = (
        planner is None and bool(others) or (planner is not None and any(planner > o * (1 + TOLERANCE) for o in others))
    )
    row["better"] = planner is not None and bool(others) and all(planner < o * (1 - 1e-6) for o in others)
    return row


HEADER = ("model", "cluster", "pipeline ms", "data ms", "planner ms", "planner's layout", "gain")


def cells(row: dict[str, Any]) -> list[str]:
    """A row's cells under :data:`HEADER`; gain: the better pure layout's time over the planner's."""
    best = min((row[m]["ms"] for m in ("pipeline", "data") if row[m]["ms"] is not None), default=None)
    planner = row["planner"]["ms"]
    data = "—" if row["data"]["ms"] is None else f"{row['data']['ms']:.1f} ({row['data']['layout']})"
    layout = row["planner"].get("layout", row["planner"].get("error", ""))
    gain = f"{best / planner:.2f}x" if best and planner else "—"
    return [row["model"], row["cluster"], _ms(row["pipeline"]["ms"]), data, _ms(planner), layout, gain]


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(*HEADER, title="time per global batch (predicted)")
    for r in rows:
        out.add_row(*cells(r), style="bold red" if r["violation"] else ("green" if r["better"] else None))
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown, the planner's time in bold where it beats both pure layouts."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        row = cells(r)
        if r["better"]:
            row[4] = f"**{row[4]}**"
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.NAMES), help="comma-separated zoo names")
    parser.add_argument("--clusters", default=",".join(CLUSTERS), help="comma-separated cluster presets")
    parser.add_argument("-b", "--batch-size", type=int, default=32, help="batch size (the zoo's published one: 32)")
    parser.add_argument("-t", "--time-limit", type=float, default=3.0, help="seconds per solve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/data_parallel/data_parallel.json"))
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    started, load = time.perf_counter(), os.getloadavg()
    rows = []
    for name in args.models.split(","):
        with console.status(f"tracing {name} ..."):
            graph = graph_for(name, args.batch_size, CACHE)
        for cluster in args.clusters.split(","):
            with console.status(f"{name} on {cluster} ..."):
                rows.append(plan_row(graph, cluster, args.time_limit, args.seed))
    seconds = time.perf_counter() - started
    console.print(table(rows))
    better = [f"{r['model']} on {r['cluster']} ({r['planner']['layout']})" for r in rows if r["better"]]
    console.print(
        f"planner faster than both pure layouts: {len(better)} of {len(rows)} rows" + (": " + "; ".join(better) if better else "")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"batch_size": args.batch_size, "time_limit_s": args.time_limit, "seed": args.seed, "seconds": seconds,
            "load_average_at_start": load, "load_average_at_end": os.getloadavg(), "machine": platform.platform()}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(rows))
    console.print(f"wrote {args.out} ({len(rows)} rows in {seconds:.0f} s, load average {load[0]:.1f} at the start)")
    violations = [f"{r['model']} on {r['cluster']}" for r in rows if r["violation"]]
    if violations:
        console.print(f"[bold red]VIOLATION: the planner is slower than a pure layout on {', '.join(violations)}[/bold red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
