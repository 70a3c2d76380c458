"""The throughput algorithms on hand-made instances: DP, ILP and exhaustive search agree; the objective is
the NeurIPS 2020 max-load; contiguity, colocation, memory, replication and the bound behave."""

from __future__ import annotations

import math

import pytest

from placement.constraints import InfeasibleError
from placement.errors import DPTimeout, PlacementError
from placement.pipeline import (
    DeviceClass,
    Part,
    Partition,
    ThroughputInstance,
    TooManyIdeals,
    brute_force,
    check_partition,
    contiguous_dp,
    enumerate_ideals,
    equal_split,
    is_contiguous,
    load_lower_bound,
    max_load,
    noncontiguous_ilp,
    part_load,
    replicate,
    structure_blocks,
)


def accel(count: int, capacity: float = math.inf) -> DeviceClass:
    return DeviceClass("acc", count, capacity, True, devices=tuple(f"acc{i}" for i in range(count)))


def cpu(count: int = 1) -> DeviceClass:
    return DeviceClass("cpu", count, math.inf, False, devices=tuple(f"cpu{i}" for i in range(count)))


def chain(loads: list[float], comm: float = 0.0, classes: list[DeviceClass] | None = None) -> ThroughputInstance:
    n = len(loads)
    classes = classes or [accel(2)]
    return ThroughputInstance(
        names=[f"n{i}" for i in range(n)],
        load=[[x] * len(classes) for x in loads],
        memory=[0.0] * n,
        edges=[(i, i + 1) for i in range(n - 1)],
        comm=[comm] * n,
        classes=classes,
    )


def diamond_with_tail() -> ThroughputInstance:
    """0 -> {1, 2} -> 3 -> 4 -> 5, a CPU that pays no communication, memory that binds, one colocation."""
    return ThroughputInstance(
        names=["a", "b", "c", "d", "e", "f"],
        load=[[2, 20], [5, 50], [3, 30], [4, 40], [6, 60], [1, 10]],
        memory=[4, 6, 3, 5, 4, 2],
        edges=[(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (4, 5)],
        comm=[1.0, 0.5, 0.5, 1.5, 0.25, 0.0],
        classes=[accel(2, capacity=12), cpu(1)],
        colocate=[[4, 5]],
    )


def test_crossing_tensor_is_paid_once_per_device() -> None:
    # u feeds w1 and w2 on another device: one send, one receive, whatever the number of edges.
    inst = ThroughputInstance(
        names=["u", "w1", "w2"], load=[[1], [1], [1]], memory=[0, 0, 0], edges=[(0, 1), (0, 2)],
        comm=[10.0, 0.0, 0.0], classes=[accel(2)],
    )  # fmt: skip
    assert part_load(inst, [0], 0) == 1 + 10
    assert part_load(inst, [1, 2], 0) == 2 + 10
    assert part_load(inst, [0, 1, 2], 0) == 3


def test_cpu_pays_no_communication() -> None:
    inst = chain([1, 1], comm=5.0, classes=[accel(1), cpu(1)])
    assert part_load(inst, [0], 0) == 6
    assert part_load(inst, [1], 1) == 1


def test_chain_optimum_is_balanced() -> None:
    inst = chain([4, 1, 1, 1, 1, 4], comm=0.0, classes=[accel(2)])
    best = contiguous_dp(inst)
    assert best.max_load == 6
    assert best.optimal and best.bound == best.max_load
    check_partition(inst, best.parts, contiguous=True)


def test_stages_come_in_pipeline_order() -> None:
    inst = chain([3, 3, 3, 3, 3, 3], comm=0.5, classes=[accel(3)])
    best = contiguous_dp(inst)
    firsts = [min(p.nodes) for p in best.parts]
    assert firsts == sorted(firsts)
    assert is_contiguous(inst, best.parts)


@pytest.mark.parametrize("contiguous", [True, False])
def test_dp_ilp_and_brute_force_agree(contiguous: bool) -> None:
    inst = diamond_with_tail()
    exact = brute_force(inst, contiguous=contiguous)
    ilp = noncontiguous_ilp(inst, contiguous=contiguous, time_limit_s=20)
    assert ilp.optimal
    assert ilp.max_load == pytest.approx(exact.max_load, rel=1e-9)
    assert ilp.bound <= exact.max_load + 1e-9
    check_partition(inst, ilp.parts, contiguous=contiguous)
    if contiguous:
        dp = contiguous_dp(inst)
        assert dp.max_load == pytest.approx(exact.max_load, rel=1e-9)
        check_partition(inst, dp.parts, contiguous=True)


def test_convex_parts_can_still_form_a_cycle() -> None:
    inst = ThroughputInstance(
        names=list("abcd"), load=[[1]] * 4, memory=[0] * 4, edges=[(0, 1), (2, 3)], comm=[0] * 4,
        classes=[accel(2)],
    )  # fmt: skip
    assert not is_contiguous(inst, [[0, 3], [1, 2]])
    assert is_contiguous(inst, [[0, 2], [1, 3]])


def test_colocated_nodes_pull_their_path_into_one_stage() -> None:
    # 0 -> 1 -> 2 with 0 and 2 colocated: a contiguous split must put 1 with them.
    inst = chain([5, 5, 5], classes=[accel(3)])
    inst.colocate = [[0, 2]]
    assert len(structure_blocks(inst)) == 1
    assert contiguous_dp(inst).max_load == 15
    assert brute_force(inst, contiguous=False).max_load == 10


def test_backward_nodes_follow_their_colour_class() -> None:
    # A training graph as in the NeurIPS 2020 files: f0 -> f1 -> f2, backward edges mirror them.
    names = ["f0", "f1", "f2", "b0", "b1", "b2"]
    inst = ThroughputInstance(
        names=names,
        load=[[1], [2], [3], [2], [4], [6]],
        memory=[0] * 6,
        edges=[(0, 1), (1, 2), (3, 4), (4, 5)],
        comm=[1, 1, 0, 1, 1, 0],
        classes=[accel(2)],
        colocate=[[0, 3], [1, 4], [2, 5]],
        backward=[False, False, False, True, True, True],
    )
    dp = contiguous_dp(inst)
    exact = brute_force(inst, contiguous=True)
    assert dp.max_load == pytest.approx(exact.max_load)
    # {f0, f1, b0, b1} | {f2, b2}: 9 + f1 out + b1 out = 11 on the first, 9 + 2 on the second.
    assert dp.max_load == 11
    assert dp.stats["blocks"] == 3


def test_memory_decides_the_split() -> None:
    inst = chain([1, 1, 1, 1], classes=[accel(2, capacity=20)])
    inst.memory = [15, 1, 1, 15]
    best = contiguous_dp(inst)
    assert sorted(len(p.nodes) for p in best.parts) == [2, 2]


def test_infeasible_memory_names_the_device_and_the_overflow() -> None:
    inst = chain([1, 1, 1, 1], classes=[accel(2, capacity=15 * 2**30)])
    inst.memory = [10 * 2**30] * 4
    with pytest.raises(InfeasibleError, match=r"acc\d.*over by 5\.00 GiB"):
        contiguous_dp(inst)
    with pytest.raises(InfeasibleError, match="over by"):
        noncontiguous_ilp(inst, time_limit_s=5)


def test_forbidden_class_is_respected() -> None:
    inst = diamond_with_tail()
    inst.load[3] = [math.inf, 40]  # d may only run on the CPU
    for part in (contiguous_dp(inst), noncontiguous_ilp(inst, time_limit_s=10)):
        where = part.part_of(inst.n)
        assert part.parts[where[3]].device_class == 1
    assert contiguous_dp(inst).max_load == pytest.approx(brute_force(inst, contiguous=True).max_load)


def test_too_many_ideals_and_the_prefix_fallback() -> None:
    n = 12  # independent nodes: 2**12 ideals
    inst = ThroughputInstance(
        names=[f"n{i}" for i in range(n)], load=[[float(i + 1)] for i in range(n)], memory=[0] * n,
        edges=[], comm=[0] * n, classes=[accel(3)],
    )  # fmt: skip
    assert len(enumerate_ideals(structure_blocks(inst), 10_000)) == 2**n
    with pytest.raises(TooManyIdeals):
        contiguous_dp(inst, max_ideals=100)
    exact = contiguous_dp(inst)
    prefix = contiguous_dp(inst, exhaustive=False, chunks=8)
    assert not prefix.optimal and prefix.max_load >= exact.max_load
    check_partition(inst, prefix.parts, contiguous=True)
    assert exact.max_load == 26  # 78 / 3


def test_the_exact_dp_stops_at_its_counted_work_not_the_clock() -> None:
    inst = diamond_with_tail()
    exact = contiguous_dp(inst)
    work = exact.stats["work"]
    assert work > 0
    again = contiguous_dp(inst, max_work=work)  # just enough: the same split
    assert [p.nodes for p in again.parts] == [p.nodes for p in exact.parts] and again.stats["work"] == work
    with pytest.raises(DPTimeout, match="work budget"):
        contiguous_dp(inst, max_work=work * (1 - 1e-9))
    with pytest.raises(DPTimeout, match="passed its deadline"):  # the wall clock: a safety net only
        contiguous_dp(ThroughputInstance(
            names=[f"n{i}" for i in range(8)], load=[[1.0]] * 8, memory=[0] * 8, edges=[], comm=[0] * 8,
            classes=[accel(2)]), deadline=0.0)  # fmt: skip


def test_replication_in_the_dp_matches_brute_force() -> None:
    inst = chain([9, 2, 1], comm=0.5, classes=[accel(4)])
    inst.replication = True
    inst.param_bytes = [1e6, 0.0, 0.0]
    inst.classes = [DeviceClass("acc", 4, math.inf, True, allreduce_ms_per_byte=1e-6)]
    dp = contiguous_dp(inst)
    exact = brute_force(inst, contiguous=True)
    assert dp.max_load == pytest.approx(exact.max_load, rel=1e-9)
    assert any(p.replicas > 1 for p in dp.parts)
    check_partition(inst, dp.parts, contiguous=True)
    # Without replication the heavy node alone bounds the max-load.
    assert contiguous_dp(inst, replication=False).max_load >= 9


def test_replicate_gives_idle_devices_to_the_bottleneck() -> None:
    inst = chain([8, 2], classes=[accel(4)])
    inst.replication = True
    split = Partition([Part((0,), 0), Part((1,), 0)], max_load=8, method="hand")
    better = replicate(inst, split)
    assert [p.replicas for p in better.parts] == [3, 1]
    assert better.max_load == pytest.approx(8 / 3)
    with pytest.raises(PlacementError):
        replicate(chain([1, 1]), split)


def test_bound_and_baseline() -> None:
    inst = diamond_with_tail()
    exact = brute_force(inst, contiguous=False)
    assert load_lower_bound(inst) <= exact.max_load + 1e-9
    naive = equal_split(inst)
    assert not naive.stats["fits"]  # it ignores memory: 15 bytes on a 12-byte device
    assert max_load(inst, naive.parts) == naive.max_load
    inst.classes = [accel(2), cpu(1)]
    naive = equal_split(inst)
    assert naive.stats["fits"] and naive.contiguous
    assert naive.max_load >= brute_force(inst, contiguous=True).max_load - 1e-9
    assert load_lower_bound(chain([3, 3, 3, 3], classes=[accel(2)])) == 6
