"""PCIe topologies matter: the same networks placed on 8-GPU servers wired differently.

AlexNet, VGG-16 and Inception-v3 (GoogLeNet family), as profiled by PipeDream on a V100, are placed
for pipelined training throughput on three 8-GPU servers: all GPUs under one PCIe switch tree, four
GPUs per CPU socket with the inter-socket link (QPI) between the halves, and a DGX-1 (NVLink hybrid
cube-mesh). Same GPUs, same graphs: the differences are the links.

    .venv/bin/python examples/pcie_topology_study.py [--time-limit 10]
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from graphc.importers import load_benchmark
from placement import Cluster
from placement.solvers import solve

NETWORKS = ("alexnet", "vgg16", "inception_v3")
TOPOLOGIES = ("pcie-8gpu-switch-tree", "pcie-8gpu-two-sockets", "dgx1-v100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=10.0)
    args = parser.parse_args()
    console = Console()
    table = Table(title="pipelined training on 8 GPUs: time per step (ms) by server topology")
    table.add_column("network")
    for topology in TOPOLOGIES:
        table.add_column(topology, justify="right")
    table.add_column("best / worst", justify="right")
    for network in NETWORKS:
        graph = load_benchmark(f"pipedream/{network}.txt")
        steps = []
        for topology in TOPOLOGIES:
            with console.status(f"{network} on {topology} ..."):
                plan = solve(graph, Cluster.preset(topology), objective="throughput", time_limit_s=args.time_limit)
            steps.append(plan.predicted_step_ms)
        table.add_row(network, *(f"{s:,.1f}" for s in steps), f"{min(steps) / max(steps):.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
