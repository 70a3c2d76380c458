"""Compare the placement solvers on every published benchmark graph and every zoo model.

For each graph and cluster preset (default: the 4-GPU PCIe box ``pcie-4gpu`` and the 8-GPU NVLink
``dgx1-v100``; the dnn-partitioning latency inputs also on ``accelerators-cpu``, the cluster their
expert splits were made for) the table gives the simulated step time (training, one step, latency
objective) of each baseline and heuristic, of ``auto`` (the CP-SAT pipeline: warm start, CP-SAT on the
graph or a coarsening, large-neighbourhood search, polish), auto's ratio to the best heuristic and to
the lower bound, its proven gap, and its solve time. A second table times the heuristics on a
10,000-node graph. Everything is also written to ``results/compare_solvers.json``.

Times: a heuristic's time is the placement alone; the one simulation of the final plan (that every
solver ends with, in ``finish_plan``) is reported apart (``sim s``). ``auto`` is timed end to end.

Zoo models are traced once at their published size (meta device, ``--batch-size``) and cached as JSON
under ``results/zoo_graphs/``.

    python benchmarks/compare_solvers.py [--time-limit 15] [--graphs vgg16,gpt2] [--presets pcie-4gpu]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from graphc.ir.graph import EdgeData, Graph, NodeData
from graphc.ir.importers import benchmark_files, load_benchmark
from placement import Cluster
from placement.errors import PlacementError
from placement.problem import make_problem
from placement.simulate import simulate
from placement.solvers import BASELINES, HEURISTICS, SOLVERS

ZOO_CACHE = Path("results/zoo_graphs")
LAYER_LEVEL = "pipedream"  # the graphs whose nodes are layers (the 5%-of-bound target)


def zoo_graph(name: str, batch_size: int) -> Graph:
    """A zoo model traced at its published size (cached)."""
    path = ZOO_CACHE / f"{name}_b{batch_size}.json"
    if path.is_file():
        return Graph.load(path)
    from graphc import trace, zoo

    zm = zoo.build(name, batch_size=batch_size, device="meta")
    graph = trace(zm.model, zm.example_inputs, granularity="op").graph
    path.parent.mkdir(parents=True, exist_ok=True)
    graph.save(path)
    return graph


def cases(args: argparse.Namespace) -> list[tuple[str, str, Graph]]:
    """(label, kind, graph) for every graph benchmarked."""
    from graphc import zoo

    wanted = set(args.graphs.split(",")) if args.graphs else None
    out = []
    for f in benchmark_files():
        stem = f.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        label = f"dnn-{f.split('/')[1][:3]}:{stem}" if f.startswith("dnn") else f"pd:{stem}"
        if wanted is None or any(w in label for w in wanted):
            out.append((label, "dnn" if f.startswith("dnn") else LAYER_LEVEL, load_benchmark(f)))
    for name in zoo.NAMES:
        label = f"zoo:{name}"
        if wanted is None or any(w in label for w in wanted):
            out.append((label, "zoo", zoo_graph(name, args.batch_size)))
    return out


def presets_for(label: str, graph: Graph, presets: list[str]) -> list[tuple[str, Cluster]]:
    out = [(p, Cluster.preset(p)) for p in presets]
    if label.startswith("dnn") and graph.meta.get("objective") == "latency":
        out.append(("accelerators-cpu", Cluster.preset("accelerators-cpu", accelerators=6, cpus=1)))
    return out


def run_solver(graph: Graph, cluster: Cluster, name: str, time_limit: float, seed: int) -> dict[str, Any]:
    problem = make_problem(graph, cluster, time_limit_s=time_limit, seed=seed)
    start = time.perf_counter()
    try:
        plan = SOLVERS[name](problem)
    except PlacementError as exc:
        return {"ms": None, "error": str(exc)[:200], "seconds": time.perf_counter() - start}
    total = time.perf_counter() - start
    out = {
        "ms": plan.predicted_step_ms,
        "seconds": total,
        "bound_ms": plan.lower_bound_ms,
        "gap": plan.gap,
    }
    if name == "auto":
        s = plan.settings
        out.update(
            found_by=s.get("found_by"),
            ilp=s.get("ilp", {}).get("status"),
            ilp_graph=s.get("ilp", {}).get("graph"),
            ilp_bound_valid=s.get("ilp", {}).get("bound_valid"),
            proven_optimal=s.get("proven_optimal"),
        )
    return out


def fmt(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.4g}" if ms < 1000 else f"{ms:,.0f}"


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def synthetic_graph(n: int, seed: int = 0) -> Graph:
    """A random layered DAG of ``n`` nodes (a few branches per layer), with measured V100 times."""
    rng = random.Random(seed)
    g = Graph(f"synthetic-{n}")
    layers: list[list[str]] = []
    i = 0
    while i < n:
        width = min(n - i, rng.choice([1, 1, 2, 3, 4]))
        layer = []
        for _ in range(width):
            name = f"n{i}"
            g.add_node(NodeData(name, "op", measured_ms={"V100": rng.uniform(0.01, 1.0)},
                                measured_bwd_ms={"V100": rng.uniform(0.02, 2.0)},
                                activation_bytes=rng.uniform(1e4, 1e6), param_bytes=rng.uniform(0, 1e5)))
            for p in rng.sample(layers[-1], k=min(len(layers[-1]), rng.choice([1, 1, 2]))) if layers else []:
                g.add_edge(p, name, EdgeData(bytes=rng.uniform(1e4, 1e6)))
            layer.append(name)
            i += 1
        layers.append(layer)
    return g


def heuristic_timing(console: Console, n: int) -> list[dict[str, Any]]:
    graph = synthetic_graph(n)
    cluster = Cluster.preset("dgx1-v100")
    rows = []
    table = Table(title=f"Heuristics on a {n:,}-node random layered graph, dgx1-v100")
    for col in ("solver", "place s", "sim s", "step ms"):
        table.add_column(col, justify="left" if col == "solver" else "right")
    for name in ("single", "round-robin", *HEURISTICS):
        problem = make_problem(graph, cluster, time_limit_s=30)
        from placement.solvers.instance import instance

        instance(problem)  # the shared arrays, built once per problem (timed apart)
        start = time.perf_counter()
        plan = SOLVERS[name](problem)
        total = time.perf_counter() - start
        t0 = time.perf_counter()
        simulate(graph, cluster, plan.assignment, problem.cost_model, order=plan.order or None)
        sim = time.perf_counter() - t0
        # finish_plan simulates once; a plan with an order is also simulated without it (to_plan).
        sims = 3 if plan.order or name in ("m-etf", "m-sct", "heft", "critical-path") else 1
        place = max(0.0, total - sims * sim)
        rows.append({"solver": name, "place_seconds": place, "simulate_seconds": sim, "step_ms": plan.predicted_step_ms})
        table.add_row(name, f"{place:.2f}", f"{sim:.2f}", fmt(plan.predicted_step_ms))
    console.print(table)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=15.0, help="auto's limit per row, seconds")
    parser.add_argument("--graphs", default="", help="comma-separated substrings of row labels to keep")
    parser.add_argument("--presets", default="pcie-4gpu,dgx1-v100")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of the traced zoo models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-nodes", type=int, default=10_000, help="0 skips the heuristic timing")
    parser.add_argument("--out", default="results/compare_solvers.json")
    args = parser.parse_args()
    console = Console(width=240)
    presets = [p for p in args.presets.split(",") if p]
    solvers = [*BASELINES, *HEURISTICS]
    table = Table(title=f"Latency (training step, simulated ms); auto limit {args.time_limit:g} s per row")
    short = {"round-robin": "rr", "critical-path": "cpop"}
    columns = ["graph", "cluster", "nodes", *(short.get(s, s) for s in solvers), "auto", "auto/best", "auto/LB", "gap", "ILP", "auto s"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("graph", "cluster", "ILP") else "right")
    rows = []
    for label, kind, graph in cases(args):
        for preset, cluster in presets_for(label, graph, presets):
            with console.status(f"{label} on {preset} ..."):
                results = {name: run_solver(graph, cluster, name, args.time_limit, args.seed) for name in solvers}
                results["auto"] = run_solver(graph, cluster, "auto", args.time_limit, args.seed)
            heur = [results[h]["ms"] for h in HEURISTICS if results[h]["ms"] is not None]
            best = min(heur) if heur else None
            auto = results["auto"]
            row = {"graph": label, "kind": kind, "cluster": preset, "nodes": len(graph), "results": results,
                   "best_heuristic_ms": best}
            if auto["ms"] is not None and best:
                row["auto_over_best"] = auto["ms"] / best
                row["auto_over_bound"] = auto["ms"] / auto["bound_ms"] if auto["bound_ms"] else None
            rows.append(row)
            ilp = f"{auto.get('ilp') or '-'}" + (" full" if auto.get("ilp_graph") == "full" else " coarse" if auto.get("ilp") else "")
            table.add_row(
                label, preset, str(len(graph)), *(fmt(results[s]["ms"]) for s in solvers), fmt(auto["ms"]),
                f"{row.get('auto_over_best', float('nan')):.3f}",
                f"{row.get('auto_over_bound') or float('nan'):.3f}",
                f"{auto['gap']:.3f}" if auto.get("gap") is not None else "—",
                ilp, f"{auto['seconds']:.1f}",
            )  # fmt: skip
            console.print(f"[dim]{label} {preset}: auto {fmt(auto['ms'])} ms vs best heuristic {fmt(best)} ms "
                          f"({auto.get('found_by')}, {auto['seconds']:.1f} s)[/dim]")
    console.print(table)
    ratios = [r["auto_over_best"] for r in rows if "auto_over_best" in r]
    worse = [f"{r['graph']}/{r['cluster']}" for r in rows if r.get("auto_over_best", 1.0) > 1 + 1e-9]
    layer = [r["auto_over_bound"] for r in rows if r["kind"] == LAYER_LEVEL and r.get("auto_over_bound")]
    # How much better than the best heuristic any plan could be, as far as the lower bound can tell.
    headroom = [r["results"]["auto"]["bound_ms"] / r["best_heuristic_ms"] for r in rows
                if r.get("best_heuristic_ms") and r["results"]["auto"].get("bound_ms")]
    summary = {
        "rows": len(rows),
        "geomean_auto_over_best_heuristic": geomean(ratios),
        "geomean_bound_over_best_heuristic": geomean(headroom),
        "rows_auto_worse_than_best_heuristic": worse,
        "layer_level_rows_within_5pct_of_bound": sum(1 for x in layer if x <= 1.05),
        "layer_level_rows": len(layer),
        "geomean_auto_over_bound_layer_level": geomean(layer),
    }
    console.print(summary)
    timing = heuristic_timing(console, args.timing_nodes) if args.timing_nodes else []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"time_limit": args.time_limit, "seed": args.seed, "batch_size": args.batch_size, "presets": presets,
                "machine": platform.machine(), "python": platform.python_version()}
    out.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows, "heuristic_timing": timing}, indent=1, default=str))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
