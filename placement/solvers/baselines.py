"""Baselines every placement is compared with: one device, round-robin, and a human expert's split.

* ``single``: every node on the one device where the whole step is fastest among those it fits on
  (nodes pinned or restricted elsewhere go to their first allowed device that fits). Every heuristic
  returns this placement where its own schedule is no shorter (:func:`heuristic_plan`).
* ``round-robin``: nodes in topological order dealt to the devices in turn (a colocation group goes
  where its first member goes), skipping a device the node may not use or does not fit on.
* ``expert``: the human-expert splits published with the dnn-partitioning inputs (Tarnawski et al.,
  "Efficient Algorithms for Device Placement of DNN Graph Operators", NeurIPS 2020). The split names
  accelerators and CPUs by number; accelerator ``i`` is the cluster's ``i``-th non-CPU device and CPU
  ``j`` its ``j``-th CPU device.

All are memory-aware through :class:`~placement.solvers.listsched.MemoryLedger` (the expert split is
taken as published and only checked) and let the simulator order the tasks (its default priority).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graphc.ir.errors import GraphFormatError
from graphc.ir.importers import load_expert_split, shared_benchmarks_dir
from placement.constraints import InfeasibleError
from placement.errors import PlacementError
from placement.plan import Plan
from placement.problem import Problem, finish_plan
from placement.solvers.instance import GiB, Instance, instance
from placement.solvers.listsched import Schedule, check_complete, loss_and_temp, memory_retries, to_plan
from placement.solvers.steptime import step_ms


def single_device(problem: Problem) -> Plan:
    """All nodes on the one device, among those the whole graph fits on, where its total work is least.

    Nodes that may not use that device go to their first allowed device that fits. Raises
    :class:`InfeasibleError` when the graph fits on no single device, saying by how much.
    """
    inst = instance(problem)
    sched = single_schedule(inst, problem.graph.name)
    return to_plan(problem, inst, sched.dev, solver="single")


def single_schedule(inst: Instance, name: str = "graph") -> Schedule:
    """The placement of :func:`single_device`, scheduled in topological order."""
    totals = np.where(inst.allowed, inst.work, 0.0).sum(axis=0)
    loss, temp = loss_and_temp(inst)  # what the outputs add in the simulator, as the ledger charges it
    need = float((inst.need + loss).sum() + temp.max(initial=0.0))
    fitting = [d for d in range(inst.num_devices) if need <= inst.capacity[d]]
    if not fitting:
        d = int(np.argmax(inst.capacity))
        raise InfeasibleError(
            f"graph {name!r} needs {need / GiB:.2f} GiB, more than any one device holds: the "
            f"largest, {inst.devices[d].name}, has {inst.capacity[d] / GiB:.2f} GiB (over by "
            f"{(need - inst.capacity[d]) / GiB:.2f} GiB)"
        )
    d = min(fitting, key=lambda k: (-int(inst.allowed[:, k].sum()), totals[k], k))
    # On one device the footprint is exact (everything there is alive when the forwards end), so the
    # ledger's allowance for transfers is not needed; nodes kept off it go where they may.
    sched = Schedule(inst)
    for v in range(inst.n):
        if sched.ledger.may_use(v, d):
            sched.append(v, d)
        else:
            options = sched.candidates(v)
            if not options:
                raise sched.ledger.infeasible(v, sched.dev)
            sched.append(v, options[0])
    return sched


def heuristic_plan(problem: Problem, inst: Instance, sched: Schedule, solver: str) -> Plan:
    """The plan of a heuristic's list schedule ``sched``, or of :func:`single_schedule` where that
    one's step is no longer (a split that only adds transfers, or hands a slow device work, is not
    taken; the schedule is kept when the graph fits on no single device). Steps are
    :func:`~placement.solvers.steptime.step_ms`; the plan records its own as ``settings["schedule_ms"]``
    and keeps the schedule's order per device (:func:`to_plan`)."""
    step = step_ms(sched)
    try:
        one = single_schedule(inst)
    except InfeasibleError:
        one = None
    one_step = step_ms(one) if one is not None else np.inf
    if one is not None and one_step <= step:
        sched, step = one, one_step
    return to_plan(problem, inst, sched.dev, solver=solver, seq=sched.seq, settings={"schedule_ms": round(step, 6)})


def round_robin(problem: Problem) -> Plan:
    """Nodes in topological order dealt to the devices in turn, skipping those they may not use."""
    inst = instance(problem)
    sched = memory_retries(lambda h: _deal(inst, h))
    return to_plan(problem, inst, sched.dev, solver="round-robin")


def _deal(inst: Instance, headroom: float) -> Schedule:
    sched = Schedule(inst, headroom=headroom)
    D = inst.num_devices
    turn = 0
    for v in range(inst.n):
        options = set(sched.candidates(v))
        if not options:
            raise sched.ledger.infeasible(v, sched.dev)
        for k in range(D):
            d = (turn + k) % D
            if d in options:
                break
        sched.append(v, d)
        turn = d + 1
    check_complete(sched)
    return sched


def expert_file(problem: Problem) -> Path:
    """The published expert split for the graph's dnn-partitioning input file."""
    meta = problem.graph.meta
    file = meta.get("file")
    if meta.get("source") != "dnn-partitioning":
        raise PlacementError(f"no expert split: graph {problem.graph.name!r} is not a dnn-partitioning input")
    stem = Path(str(file or problem.graph.name)).stem
    network = stem.split("_")[0]
    folder = shared_benchmarks_dir() / "dnn-partitioning" / "experts"
    for candidate in (folder / f"{stem}_expert.json", folder / f"{network}_inference_expert.json"):
        if candidate.is_file():
            return candidate
    raise PlacementError(f"no expert split for {stem!r} in {folder}")


def expert(problem: Problem, path: str | Path | None = None) -> Plan:
    """The human-expert split of the graph (``path``, or the one published for its input file)."""
    path = Path(path) if path is not None else expert_file(problem)
    try:
        labels = load_expert_split(path, problem.graph)
    except GraphFormatError as exc:
        raise PlacementError(f"the expert split does not apply to graph {problem.graph.name!r}: {exc}") from exc
    cluster = problem.cluster
    by_kind = {
        "accelerator": [d.name for d in cluster.devices if d.category != "cpu"],
        "cpu": [d.name for d in cluster.devices if d.category == "cpu"],
    }
    assignment: dict[str, str] = {}
    for node, label in labels.items():
        kind, _, number = label.partition(":")
        pool = by_kind[kind]
        i = int(number)
        if i >= len(pool):
            used = sorted({int(lb.partition(":")[2]) for lb in labels.values() if lb.startswith(kind)})
            raise PlacementError(
                f"the expert split {path.name} uses {len(used)} {kind} device(s) (up to number {max(used)}); "
                f"cluster {cluster.name!r} has {len(pool)}"
            )
        assignment[node] = pool[i]
    return finish_plan(problem, assignment, solver="expert", settings={"file": path.name})
