"""What a new input shape costs a compiled model: the first call, then batch sizes it has not seen.

A ``graphc.compile``d model with default settings (``cluster="local"``, ``solver="auto"``) is called
on batch 256, then 100, then 37 (a partial last batch), then 256 again. For every call: the wall time,
how it got its plan (searched, reused from another batch, or cached) and the time of each part
(trace, plan, partition, the run itself). A new shape should cost well under 2 s after the first call.

    python benchmarks/compile_reshape.py [--models two-towers,inception_v3] [--out results/compile_reshape.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn as nn
from rich.console import Console
from rich.table import Table

import graphc
from graphc import zoo

BATCHES = (256, 100, 37, 256)


class TwoTowers(nn.Module):
    """The README quickstart's model: two independent branches and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 512))
        self.right = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 512))
        self.head = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.left(x), self.right(x)], dim=1))


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The model and the shape of one sample."""
    if name == "two-towers":
        return TwoTowers(), (512,)
    zm = zoo.build(name, batch_size=1, size="small")
    return zm.model, tuple(zm.example_inputs[0].shape[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="two-towers,inception_v3")
    parser.add_argument("--out", default="results/compile_reshape.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    console = Console(width=120)
    table = Table(title="graphc.compile (defaults: local, auto) called on new batch sizes; seconds")
    for column in ("model", "batch", "plan", "call", "trace", "plan search/reuse", "partition", "predicted ms"):
        table.add_column(column, justify="left" if column in ("model", "plan") else "right")
    rows = []
    for name in args.models.split(","):
        model, sample = build(name)
        compiled = graphc.compile(model, progress=False)
        for batch in BATCHES:
            x = torch.randn(batch, *sample)
            cached = len(compiled.cache)
            start = time.perf_counter()
            compiled(x)
            seconds = time.perf_counter() - start
            entry = compiled.last
            how = entry.how if len(compiled.cache) > cached else "cached"
            parts = entry.seconds if how != "cached" else {}
            row = dict(model=name, batch=batch, how=how, seconds=seconds, parts=parts,
                       predicted_ms=entry.plan.predicted_step_ms, solver=entry.plan.solver)  # fmt: skip
            rows.append(row)
            table.add_row(name, str(batch), how, f"{seconds:.2f}",
                          *(f"{parts[k]:.2f}" if k in parts else "" for k in ("trace", "solve", "partition")),
                          f"{entry.plan.predicted_step_ms:.2f}")  # fmt: skip
    console.print(table)
    load = os.getloadavg()
    console.print(f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "load_average": load, "machine": platform.processor() or platform.machine(),
                               "torch": torch.__version__, "batches": BATCHES}, indent=2))  # fmt: skip
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
