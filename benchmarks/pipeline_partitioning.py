"""Throughput (pipeline) partitioning compared: contiguous DP vs non-contiguous ILP vs a naive equal split.

For every graph: the max stage load (ms per step: the slowest stage with its transfers, the objective of
placement.pipeline) of the exact contiguous DP over ideals, of the non-contiguous CP-SAT model (started
from the DP's split, with its proven gap), of the naive equal split of a topological order, and of the
human experts where the NeurIPS 2020 files give one; a lower bound on any split (the larger of the
work/unit bound and CP-SAT's); the number of ideals; solve times; and the microbatch count and simulated
step time of the DP's plan. ``--verify`` also solves the contiguous CP-SAT model: from scratch where the
DP is exact (does CP-SAT prove the same optimum?), from the prefix DP's split where the graph has too
many ideals (the contiguous optimum the DP could not reach).

Graphs: the NeurIPS 2020 throughput inputs on their own setting (6 accelerators with the file's memory
limit and 1 CPU, the paper's cost model), and the PipeDream profiles on a DGX-1 (8 x V100, training)
without replication so that all columns solve the same problem; the ``DP+rep`` column lets the DP
replicate stages (PipeDream's data-parallel stages).

Prints a table and writes results/pipeline_partitioning.json. Run:
``python benchmarks/pipeline_partitioning.py [--ilp-seconds 30] [--verify] [--graphs NAME ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from graphc.ir.importers import load_benchmark, load_expert_split, shared_benchmarks_dir
from placement import Cluster
from placement.pipeline import (
    Part,
    TooManyIdeals,
    contiguous_dp,
    equal_split,
    instance_from_problem,
    load_lower_bound,
    max_load,
    noncontiguous_ilp,
    solve_throughput,
)
from placement.presets import accelerators_with_cpu
from placement.problem import make_problem

DNN = ["bert24_inference", "bert24_training", "resnet50_inference", "resnet50_training"]
PIPEDREAM = ["alexnet", "vgg16", "resnet50", "gnmt", "inception_v3"]


def problem_for(name: str, time_limit: float):
    if name in DNN:
        graph = load_benchmark(f"dnn-partitioning/throughput/{name}.json")
        m = graph.meta
        cluster = accelerators_with_cpu(m["max_accelerators"], m["max_cpus"], m["max_accelerator_bytes"])
        mode = "training" if m["training"] else "inference"
    else:
        graph = load_benchmark(f"pipedream/{name}.txt")
        cluster = Cluster.preset("dgx1-v100")
        mode = "training"
    return make_problem(graph, cluster, objective="throughput", mode=mode, time_limit_s=time_limit)


def expert_load(name: str, inst, graph) -> float | None:
    path = shared_benchmarks_dir() / "dnn-partitioning" / "experts" / f"{name.split('_')[0]}_inference_expert.json"
    if name not in DNN or not path.exists():
        return None
    index = {n: i for i, n in enumerate(inst.names)}
    groups: dict[str, list[int]] = {}
    for node, device in load_expert_split(path, graph).items():
        groups.setdefault(device, []).append(index[node])
    parts = [Part(tuple(sorted(v)), 0 if d.startswith("accelerator") else 1) for d, v in sorted(groups.items())]
    return max_load(inst, parts)


def run(name: str, ilp_seconds: float, verify: bool, max_ideals: int) -> dict:
    problem = problem_for(name, time_limit=max(60.0, 3 * ilp_seconds))
    inst = instance_from_problem(problem, replication=False)
    row: dict = {"graph": name, "nodes": inst.n, "devices": inst.num_devices, "mode": problem.mode}
    try:
        dp = contiguous_dp(inst, max_ideals=max_ideals)
        row["ideals"] = dp.stats["ideals"]
    except TooManyIdeals as why:
        dp = contiguous_dp(inst, exhaustive=False, chunks=256)
        row["ideals"] = f">{why.limit}"
    row.update(dp_ms=dp.max_load, dp_exact=dp.optimal, dp_s=dp.seconds, dp_stages=len(dp.parts))
    ilp = noncontiguous_ilp(inst, time_limit_s=ilp_seconds, seed=0, hint=dp)
    row.update(ilp_ms=ilp.max_load, ilp_optimal=ilp.optimal, ilp_gap=ilp.gap, ilp_s=ilp.seconds, ilp_contiguous=ilp.contiguous)
    naive = equal_split(inst)
    row.update(equal_ms=naive.max_load, equal_fits=naive.stats["fits"])
    row["bound_ms"] = max(load_lower_bound(inst), ilp.bound)
    row["expert_ms"] = expert_load(name, inst, problem.graph)
    if verify:  # the DP's optimum proven again, or, past the DP's limits, the contiguous optimum itself
        check = noncontiguous_ilp(inst, contiguous=True, time_limit_s=max(ilp_seconds, 240.0), hint=None if dp.optimal else dp)
        row.update(verify_ms=check.max_load, verify_optimal=check.optimal, verify_s=check.seconds)
    if name not in DNN:
        rep = contiguous_dp(instance_from_problem(problem), max_ideals=max_ideals) if row["ideals"] != f">{max_ideals}" else None
        row["dp_replicated_ms"] = rep.max_load if rep else None
        row["replicas"] = [p.replicas for p in rep.parts] if rep else None
    plan = solve_throughput(problem, method="dp", replication=False, max_ideals=max_ideals)
    row.update(microbatches=plan.microbatches, step_ms=plan.predicted_step_ms)
    return row


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.{digits}f}"
    return str(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", nargs="+", default=DNN + PIPEDREAM)
    parser.add_argument("--ilp-seconds", type=float, default=30.0)
    parser.add_argument("--max-ideals", type=int, default=50_000)
    parser.add_argument("--verify", action="store_true", help="prove the DP optimum with the contiguous CP-SAT model")
    parser.add_argument("--out", default="results/pipeline_partitioning.json")
    args = parser.parse_args()

    rows = []
    for name in args.graphs:
        t0 = time.perf_counter()
        rows.append(run(name, args.ilp_seconds, args.verify, args.max_ideals))
        rows[-1]["total_s"] = time.perf_counter() - t0

    table = Table(title="Throughput partitioning: max stage load, ms per step (lower is better)")
    columns = ["graph", "nodes", "ideals", "DP contig", "DP s", "ILP any", "ILP gap", "ILP s", "equal split",
               "expert", "bound", "DP+rep", "m", "sim step"]  # fmt: skip
    if args.verify:
        columns.insert(5, "CP-SAT contig")
    for c in columns:
        table.add_column(c, justify="left" if c == "graph" else "right")
    for r in rows:
        cells = [
            f"{r['graph']} ({r['mode'][:5]})",
            fmt(r["nodes"]),
            fmt(r["ideals"]),
            fmt(r["dp_ms"], 3) + ("" if r["dp_exact"] else "*"),
            fmt(r["dp_s"]),
            fmt(r["ilp_ms"], 3),
            f"{100 * r['ilp_gap']:.1f}%",
            fmt(r["ilp_s"], 1),
            fmt(r["equal_ms"], 3) + ("" if r["equal_fits"] else " (OOM)"),
            fmt(r["expert_ms"], 3),
            fmt(r["bound_ms"], 3),
            fmt(r.get("dp_replicated_ms"), 3),
            fmt(r["microbatches"]),
            fmt(r["step_ms"], 1),
        ]
        if args.verify:
            v = r.get("verify_ms")
            cells.insert(5, "-" if v is None else fmt(v, 3) + (" proven" if r["verify_optimal"] else " (not proven)"))
        table.add_row(*cells)
    console = Console(width=200)
    console.print(table)
    console.print("* DP over prefixes of one topological order (too many ideals): an upper bound, not the optimum.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": platform.platform(), "python": platform.python_version(), "args": vars(args), "rows": rows}
    out.write_text(json.dumps(doc, indent=1, default=str))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
