"""``auto`` on large graphs: does it return within its time limit, and is it no worse than the heuristics?

Random layered DAGs of 1k, 10k and 100k nodes (``benchmarks/simulate_scaling.py``'s generator, seed 0)
on the 16 x 8 V100 InfiniBand preset, one training step. For each size: every heuristic whose
estimated time (:func:`placement.solvers.workload.heuristic_seconds`) is under ``--heuristic-cap``
seconds, timed (wall and CPU) beside its estimate, the round-robin baseline (a pass over the nodes: a
heuristic to compare with where no list scheduler fits the cap), and ``solve(..., solver="auto", time_limit_s=30)``
timed end to end, with what auto ran (its warm-start heuristics, whether CP-SAT and LNS ran or why
not, the stages the wall clock cut short). The target: auto within ``time limit + 3`` s and no worse
than the best heuristic. CPU seconds are reported because the wall clock of a shared machine says
little; the machine's load average is recorded with each row.

Prints a table and writes ``results/auto_scaling.json``.

    python benchmarks/auto_scaling.py [--sizes 1000 10000 100000] [--time-limit 30] [--heuristic-cap 120]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from simulate_scaling import random_layered_dag

from placement import Cluster
from placement.constraints import InfeasibleError
from placement.problem import make_problem
from placement.solvers import SOLVERS, solve
from placement.solvers.cpsat import WARM_START
from placement.solvers.instance import instance
from placement.solvers.workload import heuristic_seconds


def _timed(fn) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


#: Baselines compared besides the warm-start heuristics, always run: one pass over the nodes (the
#: round-robin deal), so that the largest graphs, where no list scheduler fits the cap, still have a
#: heuristic to compare auto with.
CHEAP_BASELINES = ("round-robin",)


def heuristic_rows(graph, cluster: Cluster, cap_s: float) -> list[dict[str, Any]]:
    """Each heuristic of auto's warm start (one device aside) solved alone, or skipped when its estimate
    is over ``cap_s``; and each of :data:`CHEAP_BASELINES`."""
    inst = instance(make_problem(graph, cluster))
    rows = []
    for name in [n for n in WARM_START if n != "single"] + list(CHEAP_BASELINES):
        estimate = heuristic_seconds(name, inst) if name in WARM_START else None
        row: dict[str, Any] = {"solver": name, "estimate_s": None if estimate is None else round(estimate, 2)}
        if estimate is not None and estimate > cap_s:
            row["skipped"] = f"estimated {estimate:.0f} s > cap {cap_s:.0f} s"
        else:
            try:
                plan, wall, cpu = _timed(lambda name=name: SOLVERS[name](make_problem(graph, cluster)))
                row.update(step_ms=plan.predicted_step_ms, wall_s=round(wall, 2), cpu_s=round(cpu, 2))
            except InfeasibleError as exc:
                row["error"] = str(exc)[:120]
        rows.append(row)
    return rows


def auto_row(graph, cluster: Cluster, time_limit_s: float) -> dict[str, Any]:
    """auto's plan, timed, and what it ran; ``error`` when it found none."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        plan = solve(graph, cluster, solver="auto", time_limit_s=time_limit_s)
    except InfeasibleError as exc:
        return {"error": str(exc)[:200], "wall_s": round(time.perf_counter() - wall, 2),
                "cpu_s": round(time.process_time() - cpu, 2)}  # fmt: skip
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    s = plan.settings
    return {
        "step_ms": plan.predicted_step_ms,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "found_by": s.get("found_by"),
        "finalists": s.get("finalists"),
        "warm_start": s.get("budget", {}).get("heuristics"),
        "cp_sat": s.get("ilp", {}).get("skipped") or s.get("ilp", {}).get("status", "not run"),
        "lns": s.get("search", {}).get("lns_skipped") or f"{s.get('search', {}).get('lns_steps', 0)} steps",
        "simulations": s.get("simulations"),
        "stopped_by_wall_clock": s.get("stopped_by_wall_clock", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--cluster", default="16x8-v100-ib")
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--heuristic-cap", type=float, default=120.0, help="skip heuristics estimated longer (s)")
    parser.add_argument("--out", default="results/auto_scaling.json")
    args = parser.parse_args()

    console = Console()
    cluster = Cluster.preset(args.cluster)
    results = []
    table = Table(title=f"auto, time limit {args.time_limit:g} s, on {cluster.name} ({len(cluster)} devices)")
    for col in ("nodes", "auto ms", "wall s", "cpu s", "best heuristic", "auto / best", "wall-clock stops", "load"):
        table.add_column(col, justify="left" if col == "best heuristic" else "right", no_wrap=True)
    for size in args.sizes:
        graph = random_layered_dag(size, seed=0)
        heuristics = heuristic_rows(graph, cluster, args.heuristic_cap)
        for h in heuristics:
            measured = f"{h['wall_s']} s wall, {h['cpu_s']} s cpu" if "wall_s" in h else h.get("skipped") or h.get("error")
            estimate = "none" if h["estimate_s"] is None else f"{h['estimate_s']} s"
            console.print(f"  {size} nodes, {h['solver']}: estimate {estimate}; {measured}")
        auto = auto_row(graph, cluster, args.time_limit)
        load = os.getloadavg()[0]
        solved = [h for h in heuristics if "step_ms" in h]
        best = min(solved, key=lambda h: h["step_ms"], default=None)
        results.append({"nodes": size, "auto": auto, "heuristics": heuristics, "load_average": round(load, 2)})
        if "error" in auto:
            console.print(f"  {size} nodes, auto found no plan in {auto['wall_s']} s: {auto['error']}")
            continue
        console.print(f"  {size} nodes, auto ran {', '.join(auto['warm_start'] or [])}; cp-sat: {auto['cp_sat']}; "
                      f"lns: {auto['lns']}; found by {auto['found_by']}")  # fmt: skip
        table.add_row(
            str(size), f"{auto['step_ms']:,.1f}", f"{auto['wall_s']:.1f}", f"{auto['cpu_s']:.1f}",
            "—" if best is None else f"{best['solver']} {best['step_ms']:,.1f}",
            "—" if best is None else f"{auto['step_ms'] / best['step_ms']:.3f}",
            ", ".join(auto["stopped_by_wall_clock"]) or "none", f"{load:.1f}",
        )  # fmt: skip
    console.print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "auto_scaling",
        "cluster": cluster.name,
        "time_limit_s": args.time_limit,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rows": results,
    }
    out.write_text(json.dumps(doc, indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
