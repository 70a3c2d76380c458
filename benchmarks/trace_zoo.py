"""Trace and annotate every zoo network at both granularities; print a table and write JSON.

For each network at its published size (weights on the meta device, so nothing is allocated) and
each granularity: cost-graph nodes and edges, parameters, forward GFLOPs, and the wall time of
``graphc.trace`` (export + fake-tensor annotation). GPT-2 XL (48 layers, width 1600, ~1.5 B
parameters) is included to show a model larger than comfortable for this machine is planned anyway.

    python benchmarks/trace_zoo.py [--batch-size 1] [--out results/trace_zoo.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from graphc import trace, zoo

GPT2_XL = dict(n_layer=48, n_embd=1600, n_head=25)


def cases() -> list[tuple[str, str, dict]]:
    """(row label, zoo name, knobs) for every network benchmarked."""
    return [(name, name, {}) for name in zoo.NAMES] + [("gpt2-xl (1.5B)", "gpt2", GPT2_XL)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--out", default="results/trace_zoo.json")
    args = parser.parse_args()
    console = Console()
    table = Table(title=f"graphc.trace on the zoo (batch {args.batch_size}, published sizes, meta device)")
    for column in ("model", "granularity", "nodes", "edges", "params (M)", "fwd GFLOPs", "trace+annotate (s)"):
        table.add_column(column, justify="left" if column in ("model", "granularity") else "right")
    rows = []
    for label, name, knobs in cases():
        for granularity in ("op", "module"):
            with console.status(f"tracing {label} at {granularity} granularity ..."):
                zm = zoo.build(name, batch_size=args.batch_size, device="meta", **knobs)
                start = time.perf_counter()
                graph = trace(zm.model, zm.example_inputs, granularity=granularity).graph
                seconds = time.perf_counter() - start
            row = dict(
                model=label,
                granularity=granularity,
                nodes=len(graph),
                edges=graph.num_edges,
                params=graph.num_params(),
                fwd_gflops=graph.total_fwd_flops() / 1e9,
                bwd_gflops=graph.total_bwd_flops() / 1e9,
                seconds=seconds,
            )
            rows.append(row)
            table.add_row(
                label, granularity, str(row["nodes"]), str(row["edges"]), f"{row['params'] / 1e6:,.1f}",
                f"{row['fwd_gflops']:,.2f}", f"{seconds:.2f}",
            )  # fmt: skip
    console.print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(batch_size=args.batch_size, torch=torch.__version__, machine=platform.machine(), cpus=torch.get_num_threads())
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
