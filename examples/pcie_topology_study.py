"""PCIe topologies matter: the talk's Big Sur table (8-GPU data-parallel training on three PCIe wirings),
predicted, beside the figures the talk measured; and the same networks placed as pipelines.

``--study data-parallel`` (the default). The GTC 2016 talk timed 8-GPU data-parallel training on Big Sur
wired three ways, A, D and E (:data:`placement.presets.BIG_SUR_WIRINGS` maps them onto graphc's presets,
as our reading). For each of its networks (:data:`NETWORKS`: AlexNet with batch norm at batch 1024, VGG-16,
the link-stressing VGG and GoogLeNet at batch 512) on each wiring with Tesla M40s, the plan is pure data
parallelism: one stage holding every node, replicated on the 8 GPUs, 8 microbatches (one per replica,
128 or 64 images each), gradients all-reduced by a ring or hierarchically (``--algorithms``), either in
one bucket after the backward, as Torch's ``DataParallelTable`` synchronised in 2016 when the talk
measured (``--buckets none``, the setting the talk's table is compared with), or in PyTorch DDP's 25 MiB
buckets as the backward makes them (``--buckets 25``), which hides most of it behind the backward.
``placement.simulate`` predicts the time per step :math:`t_w` of wiring :math:`w`; the speed-up of X
over Y is

.. math:: s_{X/Y} = t_Y / t_X - 1

(positive: X is faster), the talk's table format. The link that causes each difference is the bottleneck
of each wiring's synchronisation: the simulator prices an all-reduce as phases of flows on the wiring's
routes (:mod:`placement.collectives`: the ring's one phase; the hierarchy's reduce inside the islands,
ring among their leaders and broadcast back); of the phases of the all-reduce of every gradient, the
longest is paced by its busiest link, the one whose bytes take longest at its bandwidth,
:math:`\\arg\\max_\\ell \\; \\text{bytes}_\\ell / \\text{bandwidth}_\\ell`
(:func:`placement.collectives.busiest_link`; the first at a tie, as a ring's equal links are). A difference
is put down to the slower wiring's bottleneck when the two bottlenecks' bandwidths differ.

It prints the table and writes ``results/bigsur/data_parallel.json`` (every step, compute time,
bottleneck link and speed-up, per setting). Seconds on two cores: each network is traced once (on the
meta device, at its global batch), then simulated on 3 wirings per setting.

``--study pipeline``: AlexNet, VGG-16 and Inception-v3 as profiled by PipeDream on a V100, placed for
pipelined throughput on the two-sockets and switch-tree wirings and a DGX-1.

    .venv/bin/python examples/pcie_topology_study.py [--algorithms ring hierarchical] [--buckets none 25] [--gpu M40]
    .venv/bin/python examples/pcie_topology_study.py --study pipeline [--time-limit 10]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from graphc.frontend import zoo
from graphc.frontend.tracing import trace
from graphc.importers import load_benchmark
from graphc.ir.graph import Graph
from placement import Cluster, collectives
from placement.hybrid import ring_order
from placement.plan import Plan, Stage
from placement.presets import BIG_SUR_WIRINGS
from placement.solvers import solve
from placement.sync import ALGORITHMS, AllReduceSync, islands

REPLICAS = 8
PAIRS = (("E", "A"), ("D", "A"), ("D", "E"))  # the talk's columns: X over Y
SAME = 5e-4  # speed-ups below 0.05% are reported as no difference
GB = 1e9
MiB = 2**20
GiB = 2**30


@dataclass(frozen=True)
class Network:
    """One row of the talk's table: the network, how the zoo builds it, and what the talk measured.

    Attributes:
        label: the talk's name for it.
        zoo_name, knobs: :func:`graphc.frontend.zoo.build`'s arguments.
        batch: the global batch (split over the 8 GPUs).
        batches_timed: how many batches the talk timed.
        talk: the talk's speed-ups, ``"E/A"``, ``"D/A"``, ``"D/E"`` (0.02 for 2%).
    """

    label: str
    zoo_name: str
    knobs: dict[str, Any]
    batch: int
    batches_timed: int
    talk: dict[str, float]


NETWORKS = (
    Network("AlexNet with batch norm", "alexnet", {"batch_norm": True}, 1024, 20, {"E/A": 0.02, "D/A": 0.05, "D/E": 0.03}),
    Network("VGG", "vgg16", {}, 512, 10, {"E/A": -0.01, "D/A": 0.0, "D/E": 0.01}),
    Network("vggstress", "vgg16", {"hidden_size": 8192}, 512, 10, {"E/A": -0.03, "D/A": 0.07, "D/E": 0.10}),
    Network("GoogLeNet", "googlenet", {}, 512, 10, {"E/A": 0.0, "D/A": -0.02, "D/E": -0.02}),
)  # fmt: skip


@dataclass
class Bottleneck:
    """The link that set the pace of a wiring's synchronisation (module docstring).

    Attributes:
        link: its name.
        kind: its kind (``pcie``, ``qpi``).
        bandwidth: its bandwidth, bytes/s per direction.
        wire_ms: the time its bytes take at that bandwidth in the all-reduce's longest phase.
        phase_ms: that phase's duration (``wire_ms`` plus the phase's latencies).
    """

    link: str
    kind: str
    bandwidth: float
    wire_ms: float
    phase_ms: float

    def describe(self) -> str:
        """``qpi 9 GB/s (socket0--socket1)``."""
        return f"{self.kind} {self.bandwidth / GB:g} GB/s ({self.link})"


@dataclass
class WiringResult:
    """One network on one wiring: the predicted step and what made it.

    Attributes:
        wiring, preset: the talk's letter and graphc's preset.
        step_ms: the predicted time per step.
        compute_ms: one GPU's compute in the step (the same on every wiring).
        exposed_sync_ms: ``step_ms - compute_ms``, the synchronisation the backward did not hide.
        peak_memory_bytes: one GPU's predicted peak.
        bottleneck: the link that paced the synchronisation.
        over_capacity: GPUs whose peak exceeds their memory.
    """

    wiring: str
    preset: str
    step_ms: float
    compute_ms: float
    exposed_sync_ms: float
    peak_memory_bytes: float
    bottleneck: Bottleneck
    over_capacity: list[str] = field(default_factory=list)


def trace_network(net: Network) -> Graph:
    """The network's cost graph at its global batch (meta device: no memory, module granularity)."""
    zm = zoo.build(net.zoo_name, batch_size=net.batch, device="meta", **net.knobs)
    return trace(zm.model, zm.example_inputs, granularity="module", name=net.label).graph


def data_parallel_plan(graph: Graph, cluster: Cluster, sync: AllReduceSync) -> Plan:
    """Pure data parallelism: one stage of every node replicated on the cluster's GPUs, a microbatch each,
    the GPUs in their fastest ring order (:func:`placement.hybrid.ring_order`, as the planner's)."""
    gpus = ring_order(cluster, [d.name for d in cluster.devices if d.category == "gpu"], graph.total_param_bytes())
    return Plan(
        graph_name=graph.name, graph_fingerprint=graph.fingerprint(), cluster_name=cluster.name,
        objective="throughput", mode="training", assignment=dict.fromkeys(graph.node_names(), gpus[0]),
        stages=[Stage(0, graph.node_names(), gpus)], microbatches=len(gpus), sync=sync, graph=graph, cluster=cluster,
    )  # fmt: skip


def bottleneck(cluster: Cluster, gpus: list[str], algorithm: str, nbytes: float) -> Bottleneck:
    """The busiest link of the longest phase of an all-reduce of ``nbytes`` over ``gpus`` (module docstring)."""
    if algorithm == "hierarchical":
        phases = collectives.hierarchical_allreduce(cluster, islands(cluster, gpus), nbytes)
    else:
        phases = collectives.ring_allreduce(cluster, gpus, nbytes)
    phase = max(phases, key=lambda p: p.duration_ms)
    link, wire_ms = collectives.busiest_link(cluster, phase.flows)
    return Bottleneck(link.name, link.kind, link.bandwidth, wire_ms, phase.duration_ms)


def study_network(graph: Graph, sync: AllReduceSync, gpu: str) -> dict[str, WiringResult]:
    """Each wiring's predicted data-parallel step of ``graph``, by the talk's letter."""
    results = {}
    for letter, preset in sorted(BIG_SUR_WIRINGS.items()):
        cluster = Cluster.preset(preset, kind=gpu)
        plan = data_parallel_plan(graph, cluster, sync)
        sim = plan.simulate()
        gpus = plan.stages[0].devices
        compute = sim.busy_ms[gpus[0]]
        results[letter] = WiringResult(
            letter, preset, sim.step_ms, compute, sim.step_ms - compute, sim.peak_memory_bytes[gpus[0]],
            bottleneck(cluster, gpus, sync.algorithm, graph.total_param_bytes()), sim.over_capacity,
        )  # fmt: skip
    return results


def speedup(results: dict[str, WiringResult], x: str, y: str) -> float:
    """:math:`s_{X/Y} = t_Y / t_X - 1`."""
    return results[y].step_ms / results[x].step_ms - 1


def cause(results: dict[str, WiringResult], x: str, y: str) -> str:
    """The link a difference between wirings X and Y comes from, in words."""
    s = speedup(results, x, y)
    bx, by = results[x].bottleneck, results[y].bottleneck
    if bx.bandwidth != by.bandwidth:
        slow, fast = (x, y) if bx.bandwidth < by.bandwidth else (y, x)
        return (
            f"{slow}'s {results[slow].bottleneck.describe()} against {fast}'s "
            f"{results[fast].bottleneck.kind} {results[fast].bottleneck.bandwidth / GB:g} GB/s"
        )
    if abs(s) < SAME:
        return f"none: both are paced by {bx.kind} {bx.bandwidth / GB:g} GB/s"
    return f"same bottleneck bandwidth ({bx.kind} {bx.bandwidth / GB:g} GB/s); latency and contention differ"


def percent(value: float) -> str:
    """A speed-up as the talk's table writes it, signed: ``+7.4%``."""
    return f"{100 * value:+.1f}%"


def bucket_label(bucket_bytes: float | None) -> str:
    """How a setting's gradients travel, in words."""
    return "one bucket after the backward" if bucket_bytes is None else f"{bucket_bytes / MiB:g} MiB buckets"


def data_parallel_study(syncs: list[AllReduceSync], gpu: str, out: Path, console: Console) -> dict[str, Any]:
    """Run the study, print its tables and return the JSON document."""
    doc: dict[str, Any] = {
        "gpu": gpu, "replicas": REPLICAS, "wirings": BIG_SUR_WIRINGS, "speedup": "t_Y / t_X - 1 for X over Y",
        "settings": [],
    }  # fmt: skip
    graphs = {}
    for net in NETWORKS:
        with console.status(f"tracing {net.label} at batch {net.batch} ..."):
            graphs[net.label] = trace_network(net)
    for sync in syncs:
        algorithm, buckets = sync.algorithm, bucket_label(sync.bucket_bytes)
        rows = []
        table = Table(title=f"8 x {gpu}, data parallel, {algorithm} all-reduce, {buckets}: predicted (talk)")
        for column in ("network", "GPUs", "batch", "batches timed", *(f"{x} over {y}" for x, y in PAIRS)):
            table.add_column(column, justify="left" if column == "network" else "right")
        detail = Table(title=f"per wiring ({algorithm}, {buckets}): step = compute + exposed sync, bottleneck, GPU memory")
        detail.add_column("network")
        for letter, preset in sorted(BIG_SUR_WIRINGS.items()):
            detail.add_column(f"{letter}: {preset}", justify="right")
        for net in NETWORKS:
            with console.status(f"{net.label}: {algorithm} on {', '.join(sorted(BIG_SUR_WIRINGS))} ..."):
                results = study_network(graphs[net.label], sync, gpu)
            speedups = {f"{x}/{y}": speedup(results, x, y) for x, y in PAIRS}
            table.add_row(
                net.label, str(REPLICAS), str(net.batch), str(net.batches_timed),
                *(f"{percent(speedups[k])} ({percent(net.talk[k])})" for k in speedups),
            )  # fmt: skip
            detail.add_row(net.label, *(
                f"{r.step_ms:,.1f} ms = {r.compute_ms:,.1f} + {r.exposed_sync_ms:,.1f} sync\n"
                f"{r.bottleneck.describe()}\npeak {r.peak_memory_bytes / GiB:.1f} GiB"
                + (f"\nover capacity: {len(r.over_capacity)} GPUs" if r.over_capacity else "")
                for _, r in sorted(results.items())
            ))  # fmt: skip
            rows.append({
                "network": net.label, "zoo": net.zoo_name, "knobs": net.knobs, "batch": net.batch,
                "batches_timed": net.batches_timed, "param_bytes": graphs[net.label].total_param_bytes(),
                "wirings": {k: asdict(r) for k, r in results.items()},
                "speedups": speedups, "talk": net.talk,
                "causes": {f"{x}/{y}": cause(results, x, y) for x, y in PAIRS},
            })  # fmt: skip
        console.print(table)
        console.print(detail)
        for row in rows:
            for pair, text in row["causes"].items():
                console.print(f"  {row['network']}, {pair.replace('/', ' over ')}: {text}")
        doc["settings"].append({"algorithm": algorithm, "bucket_bytes": sync.bucket_bytes, "rows": rows})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "data_parallel.json"
    path.write_text(json.dumps(doc, indent=1))
    console.print(f"wrote {path}")
    return doc


PIPELINE_NETWORKS = ("alexnet", "vgg16", "inception_v3")
PIPELINE_TOPOLOGIES = ("pcie-8gpu-switch-tree", "pcie-8gpu-two-sockets", "dgx1-v100")


def pipeline_study(time_limit_s: float, console: Console) -> None:
    """PipeDream's profiles placed for pipelined throughput on each topology: time per step."""
    table = Table(title="pipelined training on 8 GPUs: time per step (ms) by server topology")
    table.add_column("network")
    for topology in PIPELINE_TOPOLOGIES:
        table.add_column(topology, justify="right")
    table.add_column("best / worst", justify="right")
    for network in PIPELINE_NETWORKS:
        graph = load_benchmark(f"pipedream/{network}.txt")
        steps = []
        for topology in PIPELINE_TOPOLOGIES:
            with console.status(f"{network} on {topology} ..."):
                plan = solve(graph, Cluster.preset(topology), objective="throughput", time_limit_s=time_limit_s)
            steps.append(plan.predicted_step_ms)
        table.add_row(network, *(f"{s:,.1f}" for s in steps), f"{min(steps) / max(steps):.2f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=("data-parallel", "pipeline"), default="data-parallel")
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument(
        "--buckets", nargs="+", default=["none", "25"],
        help="MiB per gradient bucket, or none for one bucket after the backward (default: both)",
    )  # fmt: skip
    parser.add_argument("--gpu", default="M40", help="GPU kind of the wirings (Big Sur's: M40)")
    parser.add_argument("--out", type=Path, default=Path("results/bigsur"))
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per solve (pipeline study)")
    args = parser.parse_args()
    console = Console()
    if args.study == "pipeline":
        pipeline_study(args.time_limit, console)
    else:
        sizes = [None if b == "none" else float(b) * MiB for b in args.buckets]
        syncs = [AllReduceSync(a, size) for size in sizes for a in args.algorithms]
        data_parallel_study(syncs, args.gpu, args.out, console)


if __name__ == "__main__":
    main()
