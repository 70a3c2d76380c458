"""How well does the cost model predict this machine's CPU? Predicted vs measured, per op class and per model.

For each zoo network (at a size that steps in tens to hundreds of milliseconds on one thread):

1. trace it (module granularity) and profile every node in isolation (:mod:`graphc.frontend.profile`, one thread,
   as the CPU worker devices of the ``local`` cluster run);
2. predict one training step on one ``local`` CPU device with the simulator, once from the profiled
   times and once from the analytic roofline;
3. measure the real eager step (forward, loss, backward) on one thread, median of several runs;
4. per op class, compare the profiled forward times with the same ops timed in place, inside a real
   forward pass of the whole model.

Prints two tables and writes ``results/cost_model_cpu.json``. Target: profiled predictions within 15%.

    python benchmarks/cost_model_cpu.py [--repeats 5] [--models resnet50,gpt2]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from graphc import trace, zoo
from graphc.app.calibrate import eager_step_ms
from graphc.frontend.profile import ProfileSettings, profile_program, time_in_place
from placement import Cluster, CostModel, simulate

# Sizes at which one training step takes tens to hundreds of ms on one CPU thread.
CONFIGS: dict[str, dict[str, Any]] = {
    "alexnet": dict(batch_size=4, size="small", image_size=128, width=0.5, dropout=0.0),
    "vgg16": dict(batch_size=4, size="small", image_size=64, width=0.25, dropout=0.0),
    "inception_v3": dict(batch_size=4, size="small", image_size=107, width=0.25, dropout=0.0),
    "resnet50": dict(batch_size=4, size="small", image_size=64, width=0.25, layers=(3, 4, 6, 3)),
    "gnmt": dict(batch_size=8, size="small", hidden_size=128, vocab_size=1000, source_len=12, target_len=10, dropout=0.0),
    "gpt2": dict(batch_size=4, size="small", n_layer=2, n_embd=256, n_head=4, seq_len=128, n_positions=128, vocab_size=2000, dropout=0.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--out", default="results/cost_model_cpu.json")
    args = parser.parse_args()
    console = Console()
    torch.set_num_threads(1)
    cluster = Cluster.preset("local", workers=1)
    device = cluster.device_names[0]
    roofline = CostModel(cluster)
    models = Table(title="one training step on one CPU thread: predicted vs measured")
    for column in ("model", "nodes", "measured eager (ms)", "profiled (ms)", "ratio", "roofline (ms)", "ratio"):
        models.add_column(column, justify="left" if column == "model" else "right")
    by_class: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    rows = []
    for name in args.models.split(","):
        knobs = dict(CONFIGS[name])
        with console.status(f"{name}: trace, profile, measure ..."):
            zm = zoo.build(name, **knobs)
            program = trace(zm.model, zm.example_inputs, granularity="module", name=name)
            table = profile_program(program, zm.example_inputs, ProfileSettings(repeats=args.repeats))
            profiled = CostModel(cluster, profiled=table)
            assignment = {n: device for n in program.graph.node_names()}
            predicted = simulate(program.graph, cluster, assignment, profiled).step_ms
            analytic = simulate(program.graph, cluster, assignment, roofline).step_ms
            measured = eager_step_ms(zm.model, zm.example_inputs, loss=zm.loss, steps=args.repeats)
            in_place = time_in_place(program, zm.example_inputs, args.repeats)
        for node in program.graph.nodes():
            if node.name in in_place:
                row = by_class[node.op]
                row[0] += in_place[node.name]
                row[1] += profiled.node_ms(node, device)
                row[2] += roofline.node_ms(node, device)
        rows.append(dict(model=name, nodes=len(program.graph), measured_ms=measured, profiled_ms=predicted, roofline_ms=analytic))
        models.add_row(
            name, str(len(program.graph)), f"{measured:.1f}", f"{predicted:.1f}", f"{predicted / measured:.2f}",
            f"{analytic:.1f}", f"{analytic / measured:.2f}",
        )  # fmt: skip
    console.print(models)
    classes = Table(title="forward time per op class, all models: profiled in isolation vs timed in place")
    for column in ("op class", "in place (ms)", "profiled (ms)", "ratio", "roofline (ms)", "ratio"):
        classes.add_column(column, justify="left" if column == "op class" else "right")
    class_rows = []
    for op, (measured, predicted, analytic) in sorted(by_class.items(), key=lambda kv: -kv[1][0]):
        if measured < 0.05:
            continue
        class_rows.append(dict(op=op, in_place_ms=measured, profiled_ms=predicted, roofline_ms=analytic))
        classes.add_row(op[:40], f"{measured:.2f}", f"{predicted:.2f}", f"{predicted / measured:.2f}", f"{analytic:.2f}", f"{analytic / measured:.2f}")
    console.print(classes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(device=cluster.device(device).kind, models=rows, op_classes=class_rows), indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
