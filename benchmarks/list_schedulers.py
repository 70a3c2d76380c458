"""The list schedulers' own schedule against the simulated step, and against one device.

For every graph of ``graphc compare`` (the zoo models at module granularity, ``--benchmarks`` adds the
published files) on every cluster, each heuristic's plan gives two times: the step its own list
schedule predicts (``Plan.settings["schedule_ms"]``) and the simulated step (``predicted_step_ms``).
The table prints both, their ratio, and the single-device plan's step; it flags a row whose schedule
is more than 10% below the simulated step (``own < sim``) and a heuristic slower than one device
(``> single``). ``--no-cpu`` also runs each preset with its CPU devices removed (the zoo GNMT on the
four GPUs of ``pcie-4gpu`` is the case of graphc issue 14: Baechi's m-ETF 286.1 ms, m-SCT 288.6 ms).

Zoo models are traced once (meta device, module granularity, ``--batch-size``) and cached as JSON
under ``--cache``.

Last run (``--benchmarks --no-cpu``, 255 rows, 2 shared CPU cores): no row flagged; the simulated
step is at most 7.6% above the recorded one (GNMT on ``dgx1-v100``, m-ETF: 67.9 against 73.1 ms) and
at most 12.5% below it (``bert24_training`` on ``dgx1-v100``, m-TOPO). GNMT on the four GPUs of
``pcie-4gpu``, recorded / simulated (ms): m-ETF 296.2 / 293.3, m-SCT 303.7 / 293.2, HEFT 361.8 /
334.9, CPOP 365.8 / 349.6, m-TOPO 457.0 / 457.0 (one device, as ``single``). Since m-SCT keeps a
device's slot only for the favourite child of the task it ran last (as Baechi's m-SCT does) and the
ledger counts the outputs' loss (session 7, GNMT rows only): m-ETF 296.2 / 293.7, m-SCT 282.0 / 280.6,
simulated HEFT 357.6, CPOP 359.9, m-TOPO 457.1.

    python benchmarks/list_schedulers.py [--models gnmt] [--benchmarks] [--clusters pcie-4gpu] [--no-cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from graphc.app.compare import load_graph
from graphc.frontend import zoo
from graphc.ir.errors import GraphcError
from graphc.ir.graph import Graph
from graphc.ir.importers import benchmark_files
from placement import Cluster
from placement.problem import make_problem
from placement.solvers import HEURISTICS, SOLVERS

TOLERANCE = 0.10  # a schedule more than this far below the simulated step is flagged
SLACK = 1e-6  # a plan more than this (relative) slower than the single-device plan is flagged


def graph_for(spec: str, batch_size: int, cache: Path) -> Graph:
    """``load_graph`` of ``graphc compare``, a zoo model cached as JSON under ``cache``."""
    if spec not in zoo.NAMES:
        return load_graph(spec, batch_size)
    path = cache / f"{spec}_b{batch_size}_module.json"
    if path.is_file():
        return Graph.load(path)
    graph = load_graph(spec, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph.save(path)
    return graph


def without_cpus(cluster: Cluster) -> Cluster:
    """``cluster`` less its CPU devices and the links that reach them."""
    doc = cluster.to_dict()
    cpus = {d["name"] for d in doc["devices"] if d["category"] == "cpu"}
    doc["devices"] = [d for d in doc["devices"] if d["name"] not in cpus]
    doc["links"] = [link for link in doc["links"] if not {link["a"], link["b"]} & cpus]
    doc["name"] = f"{cluster.name} (no CPU)"
    return Cluster.from_dict(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(zoo.NAMES), help="comma-separated zoo names or graph files ('' for none)")
    parser.add_argument("--benchmarks", action="store_true", help="add every published benchmark graph")
    parser.add_argument("--clusters", default="pcie-4gpu,dgx1-v100", help="comma-separated cluster presets")
    parser.add_argument("--no-cpu", action="store_true", help="also run each preset less its CPU devices")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=Path("results/zoo_graphs"))
    args = parser.parse_args()

    specs = [s for s in args.models.split(",") if s] + (benchmark_files() if args.benchmarks else [])
    clusters: list[Cluster] = []
    for name in args.clusters.split(","):
        preset = Cluster.preset(name)
        clusters.append(preset)
        if args.no_cpu and any(d.category == "cpu" for d in preset.devices):
            clusters.append(without_cpus(preset))

    console = Console(width=160)
    header = f"{'graph':44s} {'cluster':20s} {'solver':14s} {'own':>9s} {'simulated':>9s} {'sim/own':>7s} {'single':>9s} {'solve s':>7s}  flags"
    console.print("list schedulers: own schedule vs simulated step (training, ms)\n" + header, markup=False)
    flagged = 0
    for spec in specs:
        graph = graph_for(spec, args.batch_size, args.cache)
        for cluster in clusters:
            problem = make_problem(graph, cluster)
            try:
                single = SOLVERS["single"](problem).predicted_step_ms
            except GraphcError:
                single = float("nan")
            for name in HEURISTICS:
                start = time.perf_counter()
                try:
                    plan = SOLVERS[name](problem)
                except GraphcError as exc:
                    console.print(f"{graph.name[:44]:44s} {cluster.name[:20]:20s} {name:14s} {str(exc)[:80]}", markup=False)
                    continue
                seconds = time.perf_counter() - start
                own, sim = plan.settings["schedule_ms"], plan.predicted_step_ms
                flags = []
                if own < sim * (1 - TOLERANCE):
                    flags.append("own < sim")
                if sim > single * (1 + SLACK):
                    flags.append(f"> single by {sim / single - 1:.2%}")
                flagged += bool(flags)
                console.print(f"{graph.name[:44]:44s} {cluster.name[:20]:20s} {name:14s} {own:9.2f} {sim:9.2f} "
                              f"{sim / own:7.3f} {single:9.2f} {seconds:7.2f}  {', '.join(flags)}", markup=False)  # fmt: skip
    console.print(f"{flagged} flagged row(s)")


if __name__ == "__main__":
    main()
