"""How simulate's run time grows with graph size: random layered DAGs of 1k, 10k and 100k nodes placed at
random on the 16 x 8 V100 InfiniBand preset, one training step (forward + backward).

Prints a table (nodes, edges, transfers, seconds) and writes results/simulate_scaling.json.
The target is at most 2 s for 100k nodes. Run: ``python benchmarks/simulate_scaling.py [--sizes 1000 ...]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement import Cluster, CostModel, lower_bound, simulate


def random_layered_dag(nodes: int, fan_out: int = 2, seed: int = 0) -> Graph:
    """``nodes`` nodes in layers of about sqrt(nodes); each node past the first layer reads ``fan_out``
    distinct nodes of the layer before, so the mean fan-out is ``fan_out``. Costs are drawn at random
    in the range of convolution and matmul layers (1e8 to 1e10 FLOPs, 0.1 to 10 MB tensors)."""
    rng = random.Random(seed)
    width = max(fan_out, int(nodes**0.5))
    g = Graph(f"random-{nodes}", {"generator": "random_layered_dag", "seed": seed})
    layer: list[str] = []
    prev: list[str] = []
    for i in range(nodes):
        out = rng.uniform(1e5, 1e7)
        flops = rng.uniform(1e8, 1e10)
        name = f"n{i}"
        g.add_node(
            NodeData(
                name,
                "op",
                fwd_flops=flops,
                bwd_flops=2 * flops,
                bytes_read=2 * out,
                bytes_written=out,
                output_bytes=out,
                activation_bytes=out,
                param_bytes=rng.choice((0.0, rng.uniform(1e5, 1e7))),
            )
        )
        if prev:
            for p in rng.sample(prev, min(fan_out, len(prev))):
                g.add_edge(p, name, EdgeData(bytes=g.node(p).output_bytes))
        layer.append(name)
        if len(layer) == width:
            prev, layer = layer, []
    return g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--cluster", default="16x8-v100-ib")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--out", default="results/simulate_scaling.json")
    args = parser.parse_args()

    cluster = Cluster.preset(args.cluster)
    rows = []
    print(f"cluster {cluster.name}: {len(cluster)} devices, {len(cluster.links)} links; training step, random assignment")
    print(f"{'nodes':>8}{'edges':>9}{'transfers':>11}{'build s':>9}{'simulate s':>12}{'bound s':>9}{'step ms':>11}{'bound ms':>10}")
    for size in args.sizes:
        t0 = time.perf_counter()
        graph = random_layered_dag(size)
        build = time.perf_counter() - t0
        rng = random.Random(1)
        names = cluster.device_names
        assignment = {n: rng.choice(names) for n in graph.node_names()}
        best = float("inf")
        for _ in range(args.repeats):
            cm = CostModel(cluster)  # fresh, so no cache from the previous run helps
            t0 = time.perf_counter()
            result = simulate(graph, cluster, assignment, cm)
            best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        bound = lower_bound(graph, cluster)
        bound_s = time.perf_counter() - t0
        row = {
            "nodes": len(graph),
            "edges": graph.num_edges,
            "transfers": result.num_transfers,
            "build_s": round(build, 4),
            "simulate_s": round(best, 4),
            "bound_s": round(bound_s, 4),
            "step_ms": result.step_ms,
            "bound_ms": bound.step_ms,
        }
        rows.append(row)
        print(
            f"{row['nodes']:>8}{row['edges']:>9}{row['transfers']:>11}{build:>9.2f}{best:>12.3f}"
            f"{bound_s:>9.2f}{result.step_ms:>11.1f}{bound.step_ms:>10.1f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "simulate_scaling",
        "cluster": cluster.name,
        "mode": "training",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rows": rows,
    }
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
