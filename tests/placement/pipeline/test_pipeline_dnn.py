"""The contiguous DP on the NeurIPS 2020 throughput inputs: its optimum, checked by CP-SAT on the whole
files and by exhaustive search on small cuts of them."""

from __future__ import annotations

import math

import pytest

from graphc.ir.importers import load_benchmark, load_expert_split, shared_benchmarks_dir
from placement.pipeline import (
    DeviceClass,
    Part,
    ThroughputInstance,
    brute_force,
    check_partition,
    contiguous_dp,
    instance_from_problem,
    load_lower_bound,
    max_load,
    noncontiguous_ilp,
    structure_blocks,
)
from placement.pipeline.instance import subinstance
from placement.presets import accelerators_with_cpu
from placement.problem import make_problem

# The optimum max-load (ms) of a contiguous split, and the number of ideals of each file's block DAG.
OPTIMA = {
    "bert24_inference": (17.78990625, 39),
    "bert24_training": (41.7458125, 39),
    "resnet50_inference": (33.774666015625, 242),
    "resnet50_training": (78.6318125, 242),
}


def dnn_instance(name: str) -> ThroughputInstance:
    graph = load_benchmark(f"dnn-partitioning/throughput/{name}.json")
    meta = graph.meta
    cluster = accelerators_with_cpu(meta["max_accelerators"], meta["max_cpus"], meta["max_accelerator_bytes"])
    mode = "training" if meta["training"] else "inference"
    return instance_from_problem(make_problem(graph, cluster, objective="throughput", mode=mode))


@pytest.mark.parametrize("name", sorted(OPTIMA))
def test_contiguous_optimum(name: str) -> None:
    inst = dnn_instance(name)
    assert [c.name for c in inst.classes] == ["accelerator", "cpu"]
    assert [c.count for c in inst.classes] == [6, 1]
    assert not inst.classes[1].pays_comm and not inst.replication
    dp = contiguous_dp(inst)
    optimum, ideals = OPTIMA[name]
    assert dp.max_load == pytest.approx(optimum, rel=1e-12)
    assert dp.stats["ideals"] == ideals
    check_partition(inst, dp.parts, contiguous=True)
    assert load_lower_bound(inst) <= dp.max_load


# resnet50_training takes CP-SAT about 8 s more: `benchmarks/pipeline_partitioning.py --verify` proves it.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert24_inference", "bert24_training", "resnet50_inference"])
def test_cp_sat_proves_the_dp_optimum(name: str) -> None:
    inst = dnn_instance(name)
    ilp = noncontiguous_ilp(inst, contiguous=True, time_limit_s=120)
    assert ilp.optimal, ilp.stats
    assert OPTIMA[name][0] - 1e-12 <= ilp.max_load <= OPTIMA[name][0] + ilp.stats["resolution_ms"]
    assert ilp.bound <= OPTIMA[name][0] <= ilp.bound * (1 + 1e-4)


def cuts(inst: ThroughputInstance, width: int) -> list[list[int]]:
    """Node sets of ``width`` consecutive blocks (differences of two prefix ideals), a few offsets."""
    blocks = structure_blocks(inst)
    nb = len(blocks)
    out = []
    for start in sorted({0, nb // 3, nb // 2, nb - width}):
        out.append(sorted(v for b in range(start, start + width) for v in blocks.members[b]))
    return out


@pytest.mark.parametrize("name", sorted(OPTIMA))
def test_small_cuts_against_exhaustive_search(name: str) -> None:
    inst = dnn_instance(name)
    for keep in cuts(inst, 7):
        mem = sum(inst.memory[v] for v in keep)
        classes = [DeviceClass("accelerator", 2, 0.45 * mem, True), DeviceClass("cpu", 1, math.inf, False)]
        sub = subinstance(inst, keep, classes)
        exact = brute_force(sub, contiguous=True)
        assert contiguous_dp(sub).max_load == pytest.approx(exact.max_load, rel=1e-12)
        # CP-SAT works on costs rounded to integers: optimal up to its resolution (ilp.py docstring).
        ilp = noncontiguous_ilp(sub, contiguous=True, time_limit_s=30)
        assert ilp.optimal
        assert exact.max_load - 1e-12 <= ilp.max_load <= exact.max_load + ilp.stats["resolution_ms"]
        free = noncontiguous_ilp(sub, time_limit_s=30)
        best_free = brute_force(sub, contiguous=False).max_load
        assert free.optimal
        assert best_free - 1e-12 <= free.max_load <= best_free + free.stats["resolution_ms"]


@pytest.mark.parametrize("name", sorted(OPTIMA))
def test_expert_split_is_contiguous_valid_and_no_better(name: str) -> None:
    # The published splits are of the inference graphs; backward nodes follow their colour class.
    inst = dnn_instance(name)
    graph = load_benchmark(f"dnn-partitioning/throughput/{name}.json")
    expert_file = shared_benchmarks_dir() / "dnn-partitioning" / "experts" / f"{name.split('_')[0]}_inference_expert.json"
    index = {n: i for i, n in enumerate(inst.names)}
    groups: dict[str, list[int]] = {}
    for node, device in load_expert_split(expert_file, graph).items():
        groups.setdefault(device, []).append(index[node])
    parts = [Part(tuple(sorted(v)), 0 if d.startswith("accelerator") else 1) for d, v in sorted(groups.items())]
    check_partition(inst, parts, contiguous=True)
    assert max_load(inst, parts) > OPTIMA[name][0]
