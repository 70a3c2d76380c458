"""The exact contiguous DP on operator-level training graphs (graphc issue 14): ideals, time, memory, proof.

Graphs, written as dnn-partitioning training files (colour classes, backward-only loss class,
uncoloured gradient-sum nodes, forward-to-backward edges; tests/helpers/op_training_graphs.py) into a
temporary folder: zoo networks traced at op granularity on the meta device (GPT-2 with 12, 24 and 48
layers, ResNet-50), the seeded synthetic generator at 1,000-2,300 nodes, and any dnn-partitioning files
given with ``--files`` (such as the NeurIPS 2020 authors' ``OperatorGraphs/*_training.json``).

For each graph: nodes; backward-only units (colocation units without a forward node); ideals of the
forward structure alone, which is what the DP enumerated before issue 14 (each backward-only unit a free
block, doubling the count: the others' lattice counted up to ``--count-limit``, times 2 per free block);
ideals of the pipeline structure it enumerates
now (placement.pipeline.ideals); the DP's wall time, its peak traced allocation (tracemalloc, a second
run) and max-load; with ``--verify``, the contiguous CP-SAT model started from the DP's split: whether
it proves the same optimum (up to its rounding) and in how long. The process's peak RSS is printed at
the end (it includes torch, imported for tracing).

    python benchmarks/contiguous_dp.py [--verify] [--cp-sat-seconds 300] [--files F.json ...]
        [--no-zoo] [--out results/contiguous_dp.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))

from op_training_graphs import forward_of_graph, synthetic_forward, training_file

from graphc.ir.importers import load_dnn_partitioning
from placement.errors import TooManyIdeals
from placement.pipeline import (
    ThroughputInstance,
    contiguous_dp,
    enumerate_ideals,
    instance_from_problem,
    noncontiguous_ilp,
    structure_blocks,
)
from placement.pipeline.ideals import Blocks
from placement.pipeline.instance import colocation_units
from placement.presets import accelerators_with_cpu
from placement.problem import make_problem

# (label, blocks, seed, max_branches, max_ops): about 1,100 to 2,300 nodes.
SYNTHETIC = [
    ("synthetic-1k", 80, 1, 3, 4),
    ("synthetic-1k-wide", 50, 1, 4, 7),
    ("synthetic-2k", 150, 1, 3, 4),
    ("synthetic-2k-wide", 120, 2, 4, 5),
]
ZOO = [("gpt2-12 (op)", "gpt2", {"n_layer": 12}), ("gpt2-24 (op)", "gpt2", {"n_layer": 24}),
       ("gpt2-48 (op)", "gpt2", {"n_layer": 48}), ("resnet50 (op)", "resnet50", {})]  # fmt: skip


def write_inputs(folder: Path, zoo: bool) -> list[tuple[str, Path]]:
    """The generated training files: (label, path)."""
    out = []
    for label, blocks, seed, branches, ops in SYNTHETIC:
        doc = training_file(synthetic_forward(blocks, seed, branches, ops), seed=seed, share_class=0.2)
        out.append((label, _write(folder / f"{label}.json", doc)))
    if zoo:
        from graphc import trace
        from graphc.frontend.zoo import build

        for label, name, knobs in ZOO:
            zm = build(name, batch_size=1, device="meta", **knobs)
            graph = trace(zm.model, zm.example_inputs, granularity="op").graph
            doc = training_file(forward_of_graph(graph), accelerators=6)
            out.append((label, _write(folder / f"{name}-{knobs.get('n_layer', '')}.json", doc)))
    return out


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def instance_of(path: Path) -> ThroughputInstance:
    graph = load_dnn_partitioning(path)
    meta = graph.meta
    cluster = accelerators_with_cpu(meta["max_accelerators"], meta["max_cpus"], meta["max_accelerator_bytes"])
    return instance_from_problem(make_problem(graph, cluster, objective="throughput", mode="training"))


def count_ideals(inst: ThroughputInstance, limit: int, forward_only: bool) -> str:
    """The number of ideals of the pipeline lattice, or of the forward-only one: there the free blocks (no
    predecessor, no successor) each double the count of the others' lattice, ``count x 2^free``."""
    blocks = structure_blocks(inst, inst.structure_edges() if forward_only else None)
    free = [b for b in range(len(blocks)) if not blocks.preds[b] and not blocks.succs[b]] if forward_only else []
    kept = [b for b in range(len(blocks)) if b not in set(free)]
    index = {b: i for i, b in enumerate(kept)}
    preds = [sum(1 << index[a] for a in range(len(blocks)) if blocks.preds[b] >> a & 1) for b in kept]
    rest = Blocks([], [blocks.members[b] for b in kept], preds, [[index[c] for c in blocks.succs[b]] for b in kept])
    try:
        count = len(enumerate_ideals(rest, limit))
    except TooManyIdeals:
        return f">{limit}" + (f" x 2^{len(free)}" if free else "")
    return f"{count * 2 ** len(free):.3g}" if free else str(count)


def run(label: str, path: Path, count_limit: int, verify: bool, cp_sat_seconds: float) -> dict:
    t0 = time.perf_counter()
    inst = instance_of(path)
    load_s = time.perf_counter() - t0
    unit = colocation_units(inst)
    forward_units = {unit[v] for v in range(inst.n) if not inst.backward[v]}
    row = {
        "graph": label,
        "file": str(path),
        "nodes": inst.n,
        "devices": [f"{c.count} {c.name}" for c in inst.classes],
        "backward_only_units": len(set(unit) - forward_units),
        "ideals_before": count_ideals(inst, count_limit, forward_only=True),
        "ideals_after": count_ideals(inst, count_limit, forward_only=False),
        "load_s": load_s,
    }
    t0 = time.perf_counter()
    dp = contiguous_dp(inst)
    row.update(dp_s=time.perf_counter() - t0, dp_ms=dp.max_load, pairs=dp.stats["pairs"], stages=len(dp.parts))
    tracemalloc.start()
    contiguous_dp(inst)
    row["dp_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    if verify:
        ilp = noncontiguous_ilp(inst, contiguous=True, hint=dp, time_limit_s=cp_sat_seconds, wall_limit_s=2 * cp_sat_seconds)
        row.update(cp_sat_ms=ilp.max_load, cp_sat_optimal=ilp.optimal, cp_sat_s=ilp.seconds,
                   cp_sat_resolution_ms=ilp.stats["resolution_ms"], cp_sat_bound_ms=ilp.bound)  # fmt: skip
        row["agree"] = dp.max_load - 1e-9 <= ilp.max_load <= dp.max_load + ilp.stats["resolution_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="*", default=[], help="more dnn-partitioning training files")
    parser.add_argument("--no-zoo", action="store_true", help="skip the traced zoo networks (no torch)")
    parser.add_argument("--verify", action="store_true", help="prove the DP optimum with the contiguous CP-SAT model")
    parser.add_argument("--cp-sat-seconds", type=float, default=300.0)
    parser.add_argument("--count-limit", type=int, default=100_000, help="stop counting ideals past this")
    parser.add_argument("--out", default="results/contiguous_dp.json")
    args = parser.parse_args()
    console = Console(width=200)
    rows = []
    with tempfile.TemporaryDirectory(prefix="contiguous_dp_") as tmp:
        inputs = write_inputs(Path(tmp), zoo=not args.no_zoo) + [(Path(f).stem, Path(f)) for f in args.files]
        for label, path in inputs:
            rows.append(run(label, path, args.count_limit, args.verify, args.cp_sat_seconds))
            console.print(f"{label}: {rows[-1]['dp_s']:.2f} s")
    table = Table(title="Exact contiguous DP on operator-level training graphs (max-load in ms per step)")
    columns = ["graph", "nodes", "devices", "bwd-only units", "ideals before", "ideals after", "pairs",
               "DP s", "DP peak MiB", "max-load", "stages"]  # fmt: skip
    if args.verify:
        columns += ["CP-SAT", "CP-SAT s"]
    for c in columns:
        table.add_column(c, justify="left" if c == "graph" else "right")
    for r in rows:
        cells = [r["graph"], str(r["nodes"]), " + ".join(r["devices"]), str(r["backward_only_units"]),
                 r["ideals_before"], r["ideals_after"], str(r["pairs"]), f"{r['dp_s']:.2f}",
                 f"{r['dp_peak_mib']:.0f}", f"{r['dp_ms']:.3f}", str(r["stages"])]  # fmt: skip
        if args.verify:
            proof = "proven" if r["cp_sat_optimal"] else "not proven"
            cells += [f"{r['cp_sat_ms']:.3f} {proof}{'' if r['agree'] else ' DIFFERS'}", f"{r['cp_sat_s']:.1f}"]
        table.add_row(*cells)
    console.print(table)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(f"process peak RSS: {peak_rss:.0f} MiB (torch included when tracing)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": platform.platform(), "python": platform.python_version(), "args": vars(args),
           "peak_rss_mib": peak_rss, "rows": rows}  # fmt: skip
    out.write_text(json.dumps(doc, indent=1, default=str))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
