"""Time to accuracy per synchronisation strategy and cluster, and the choice ``sync="auto"`` makes
(graphc issue 16, item 5).

Time to a target held-out accuracy = (the steps each strategy measurably took to reach it, per number
of workers N, read from ``results/convergence/convergence.json``) x (its predicted time per step on the
cluster: :mod:`placement.time_to_accuracy`, whose docstring states every formula). Run
``examples/elastic_convergence.py`` first when that file is missing (about 2 minutes on 2 cores).

Two framings, each labelled in the table:

* ``digits MLP``: the network the steps were measured on (64-32-10, batch 16 per worker), traced with
  graphc.trace at the global batch 16 N. It is tiny (9.6 KB of parameters), so its step and exchange
  times are a few microseconds of compute and the links' latencies;
* ``resnet50`` and ``vgg16`` at published size (batch 32 per worker, traced at module granularity on the
  meta device as ``benchmarks/data_parallel.py`` does; cached under ``results/zoo_graphs/``): their step
  and exchange times on the clusters, **with the digits' step counts as the stand-in for their
  convergence**. That transfers the step counts from another problem: it says what the links do to
  each strategy's step, not how many steps an ImageNet network needs.

Clusters: ``dgx1-v100`` (NVLink), ``2x8-v100-ib`` (InfiniBand EDR), ``4x8-v100-10gbe`` and
``8x1-v100-1gbe`` (commodity Ethernet, :func:`placement.presets.ethernet_cluster`), each in every tier
that holds N replicas (inside a host, across hosts: :func:`placement.time_to_accuracy.tier_devices`).
Asynchronous EASGD is priced where the cluster has CPU devices to serve the center (the Ethernet
presets: one Xeon per host); the DGX presets model none.

Prints, for ``--workers`` and ``--target``, a table per framing (time per step, steps to target, time
and bytes to target; the choice per cluster and tier marked) and whether, on Ethernet, a strategy that
sends at least 10x fewer bytes than synchronous SGD reaches the target sooner, and why; writes every N
and every target of the convergence file to ``OUT/time_to_accuracy.json``, and the summary of the printed
N and target (sync SGD, local SGD H=10 and the choice, per model, cluster and tier) to
``OUT/time_to_accuracy.md``.

    .venv/bin/python examples/time_to_accuracy.py [--out results/time_to_accuracy] [--workers 8] [--target 0.95]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from elastic_convergence import (  # the sibling example: the network the steps were measured on
    BATCH,
    mlp,
)
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from list_schedulers import graph_for  # the benchmarks' cached tracing of zoo networks

from graphc import trace
from graphc.ir.graph import Graph
from placement import Cluster
from placement.errors import ConfigurationError
from placement.hybrid import ring_order, sync_options, worker_devices
from placement.problem import make_problem
from placement.sync import AllReduceSync
from placement.time_to_accuracy import (
    Choice,
    Estimate,
    Run,
    StepTimes,
    estimates,
    fastest,
    runs_from_convergence,
    step_times,
    tier_devices,
)

CLUSTERS = ("dgx1-v100", "2x8-v100-ib", "4x8-v100-10gbe", "8x1-v100-1gbe")
ETHERNET = ("4x8-v100-10gbe", "8x1-v100-1gbe")
ZOO = ("resnet50", "vgg16")
ZOO_BATCH = 32  # per worker: the zoo's published batch
CACHE = Path("results/zoo_graphs")


def digits_graph(global_batch: int) -> Graph:
    """The digits MLP traced at ``global_batch`` (only shapes matter: the example inputs are zeros)."""
    return trace(mlp(), torch.zeros(global_batch, 64), name="digits-mlp").graph


def graph_at(model: str, workers: int) -> Graph:
    """``model`` at the global batch of ``workers`` workers (its per-worker batch each)."""
    if model == "digits MLP":
        return digits_graph(BATCH * workers)
    return graph_for(model, ZOO_BATCH * workers, CACHE)


def rows_for(model: str, cluster: Cluster, runs: list[Run], targets: list[float]) -> list[dict[str, Any]]:
    """Every (tier, N) of ``cluster``: the step figures, each strategy's estimate per target, the choice."""
    out = []
    workers = worker_devices(cluster)
    for n in sorted({r.workers for r in runs}):
        graph = graph_at(model, n)
        problem = make_problem(graph, cluster, objective="throughput")
        for tier, devices in tier_devices(cluster, workers, n).items():
            ring = ring_order(cluster, devices, graph.total_param_bytes())
            times = step_times(problem, ring, sync_options(cluster, "auto"))
            row: dict[str, Any] = {
                "model": model, "cluster": cluster.name, "tier": tier, "workers": n, "devices": ring,
                "param_bytes": times.param_bytes, "compute_ms": times.compute_ms, "sync_sgd_ms": times.sync_sgd_ms,
                "allreduce_ms": times.allreduce_ms, "exchange_ms": times.exchange_ms, "servers": list(times.servers),
                "link": {"kind": times.link[0], "bandwidth": times.link[1]}, "targets": {},
            }  # fmt: skip
            for target in targets:
                found = estimates(times, runs, target)
                try:
                    choice: Choice | None = fastest(found, times)
                except ConfigurationError as why:  # no strategy reached this target with n workers
                    choice, refused = None, str(why)
                row["targets"][f"{target:g}"] = {
                    "estimates": [e.to_dict() for e in found],
                    "choice": choice.to_dict() if choice else {"error": refused},
                    "finding": finding(times, found),
                }
                row.setdefault("_live", {})[target] = (times, found, choice)
            out.append(row)
    return out


def finding(times: StepTimes, found: list[Estimate]) -> str:
    """Whether a strategy sending >= 10x fewer bytes per step than sync SGD reaches the target sooner, and
    why: its step time against sync SGD's (the links), its step count against sync SGD's (the
    convergence run), and, for a strategy that took as many steps as sync SGD, the links alone."""
    sgd = next(e for e in found if isinstance(e.sync, AllReduceSync))
    frugal = [e for e in found if e.bytes_per_step * 10 <= sgd.bytes_per_step * (1 + 1e-9) and e.seconds is not None]
    goal = f"{sgd.target:.0%}"
    if not frugal:
        return f"no strategy sending >= 10x fewer bytes than sync SGD reaches {goal}"
    best = min(frugal, key=lambda e: e.seconds)  # type: ignore[arg-type,return-value]
    c = times.compute_ms
    faster = sgd.step_ms / best.step_ms
    why = (
        f"per step it is {_times(faster, 'faster', 'slower')} ({best.step_ms:.3g} ms against "
        f"{sgd.step_ms:.3g} ms: sync SGD's gradient all-reduce leaves {sgd.step_ms - c:.3g} ms of each step "
        f"exposed, {best.name}'s exchanges add {best.step_ms - c:.3g} ms to a {c:.3g} ms compute step)"
    )
    if sgd.seconds is None:
        return f"yes: {best.name} reaches {goal} in {best.seconds:.3g} s and sync SGD not within its run; {why}"
    ratio = sgd.seconds / best.seconds  # type: ignore[operator]
    verdict = "yes" if ratio > 1 else "no"
    text = (
        f"{verdict}: {best.name} reaches {goal} in {best.seconds:.3g} s against sync SGD's {sgd.seconds:.3g} s "
        f"({ratio:.3g}x); {why}, and it took {best.steps} steps against {sgd.steps} in the convergence run"
    )
    same = [e for e in frugal if e.steps == sgd.steps]
    if same:
        e = min(same, key=lambda e: e.step_ms)
        text += f". At the same step count, {e.name} takes {e.seconds:.3g} s: the links alone make it {_times(sgd.step_ms / e.step_ms, 'sooner', 'later')}"
    return text


def _times(ratio: float, more: str, less: str) -> str:
    """``ratio`` as "1.5x faster" or, below 1, "1.02x slower"."""
    return f"{ratio:.3g}x {more}" if ratio >= 1 else f"{1 / ratio:.3g}x {less}"


def table(model: str, rows: list[dict[str, Any]], workers: int, target: float) -> Table:
    framing = "the network the steps were measured on" if model == "digits MLP" else "step counts transferred from the digits MLP"
    out = Table(
        "cluster", "tier", "strategy", "ms / step", "steps", "time to target", "MB to target", "",
        title=f"{model} ({framing}): N = {workers}, target {target:.0%}",
    )  # fmt: skip
    for row in rows:
        if row["workers"] != workers:
            continue
        _, found, choice = row["_live"][target]
        for e in found:
            chosen = choice is not None and e.name == choice.chosen.name
            seconds = "—" if e.seconds is None else _seconds(e.seconds)
            mb = "—" if e.bytes is None else f"{e.bytes / 1e6:.3g}"
            out.add_row(
                row["cluster"], row["tier"], e.name, f"{e.step_ms:.4g}", str(e.steps or "—"), seconds, mb,
                "chosen" if chosen else "", style="bold green" if chosen else None,
            )  # fmt: skip
        out.add_section()
    return out


def _seconds(s: float) -> str:
    return f"{s:.3g} s" if s >= 0.1 else f"{1e3 * s:.3g} ms"


def summary(rows: list[dict[str, Any]], workers: int, target: float) -> str:
    """A markdown table of every (model, cluster, tier) at ``workers`` and ``target``: sync SGD, local SGD
    H=10 (the plain average every 10 steps: its step time is the links' whole effect) and the choice."""
    lines = [
        f"| model | cluster | tier | ms/step sync SGD | ms/step local SGD H=10 | time to {target:.0%}: sync SGD | local SGD H=10 | chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["workers"] != workers:
            continue
        _, found, choice = row["_live"][target]
        by_name = {e.name: e for e in found}
        sgd, local = by_name["sync SGD"], by_name.get("local SGD H=10")
        chosen = f"{choice.chosen.name}: {_cell(choice.chosen)}" if choice else "none reached it"
        lines.append(
            f"| {row['model']} | {row['cluster']} | {row['tier']} | {sgd.step_ms:.3g} | {local.step_ms if local else float('nan'):.3g} "
            f"| {_cell(sgd)} | {_cell(local)} | {chosen} |"
        )
    return "\n".join(lines) + "\n"


def _cell(e: Estimate | None) -> str:
    if e is None or e.seconds is None:
        return "—"
    return f"{_seconds(e.seconds)} ({e.steps} steps)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Needs results/convergence/convergence.json: run examples/elastic_convergence.py first (about 2 minutes).")
    parser.add_argument("--convergence", type=Path, default=Path("results/convergence/convergence.json"))
    parser.add_argument("--out", type=Path, default=Path("results/time_to_accuracy"))
    parser.add_argument("--clusters", default=",".join(CLUSTERS), help="comma-separated cluster presets")
    parser.add_argument("--models", default=",".join(("digits MLP", *ZOO)), help="'digits MLP' and zoo names")
    parser.add_argument("--workers", type=int, default=8, help="N shown in the printed tables (the JSON has every N)")
    parser.add_argument("--target", type=float, default=0.95, help="the held-out accuracy of the printed tables")
    args = parser.parse_args()
    if not args.convergence.is_file():
        sys.exit(f"{args.convergence} is missing: run examples/elastic_convergence.py --out {args.convergence.parent} first (about 2 minutes)")
    doc = json.loads(args.convergence.read_text())
    runs = runs_from_convergence(doc, str(args.convergence))
    targets = sorted({*doc.get("settings", {}).get("targets", []), args.target})
    console = Console(width=150)
    rows: list[dict[str, Any]] = []
    for model in args.models.split(","):
        mine = [r for name in args.clusters.split(",") for r in rows_for(model, Cluster.preset(name), runs, targets)]
        console.print(table(model, mine, args.workers, args.target))
        for row in mine:
            if row["workers"] == args.workers and row["cluster"] in ETHERNET:
                choice = row["_live"][args.target][2]
                console.print(f"[bold]{model}, {row['cluster']}, {row['tier']}:[/bold] {row['targets'][f'{args.target:g}']['finding']}")
                if choice is not None:
                    console.print(f"  sync='auto' chooses {choice.chosen.name}: {choice.reason}")
        rows += mine
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = args.out / "time_to_accuracy.md"
    markdown.write_text(summary(rows, args.workers, args.target))
    for row in rows:
        del row["_live"]
    path = args.out / "time_to_accuracy.json"
    settings = {"convergence": str(args.convergence), "targets": targets, "zoo_batch_per_worker": ZOO_BATCH, "digits_batch_per_worker": BATCH}
    path.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    console.print(f"wrote {path} and {markdown}")


if __name__ == "__main__":
    main()
