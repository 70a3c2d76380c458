"""Data parallelism and parameter servers in both executors: the same training as eager PyTorch.

A tiny MLP (three linear layers, no batch norm or dropout) trained for three steps of SGD with momentum
and of Adam on a batch of 12, replicated data-parallel (the whole model one stage on 2 or 3 devices),
as a hybrid (2 replicas x a 2-stage pipeline) and with 1 or 2 parameter servers (also serving a
replicated stage before an unreplicated one, which steps its own optimizer), must end with eager's
losses and parameters: each replica's gradient is its microbatches' share of the mean loss, so the
bucketed sum (ring or hierarchical all-reduce, or a server's reduce) is the full batch's gradient.
Buckets of 200 bytes put each linear layer in a bucket of its own (272, 1088 and 576 bytes in backward
order), so a step runs three all-reduces (or reduces and broadcasts).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphc
from graphc.ir.errors import ConfigurationError
from placement import presets
from placement.schedules import AllReduce, Schedule, make_schedule
from placement.sync import sync_from_dict
from runtime import (
    DistributedExecutor,
    LocalExecutor,
    PartitionedProgram,
    RankFailure,
    ScheduleError,
    contiguous_plan,
    init_from_env,
    partition,
)
from runtime.collectives import BucketCollectives, copy_bandwidth
from runtime.launch import spawn
from runtime.schedule import device_work
from runtime.testing import eager_run

BATCH = 12
BUCKET = 200  # bytes: one linear layer per bucket
RING = {"kind": "allreduce", "algorithm": "ring", "bucket_bytes": BUCKET}


def hierarchical(islands: list[list[str]]) -> dict[str, Any]:
    return {"kind": "allreduce", "algorithm": "hierarchical", "bucket_bytes": BUCKET, "islands": islands}


def servers(*names: str) -> dict[str, Any]:
    return {"kind": "parameter-server", "servers": list(names), "bucket_bytes": BUCKET}


# (stages, microbatches, sync) by name; every case runs under SGD and Adam
CASES: dict[str, tuple[list, int, dict[str, Any]]] = {
    "2 replicas, ring": ([["cpu0", "cpu1"]], 2, RING),
    "3 replicas, ring": ([["cpu0", "cpu1", "cpu2"]], 3, RING),
    "3 replicas, hierarchical 2+1": ([["cpu0", "cpu1", "cpu2"]], 3, hierarchical([["cpu0", "cpu1"], ["cpu2"]])),
    "4 replicas, hierarchical 2+2": ([["cpu0", "cpu1", "cpu2", "cpu3"]], 4, hierarchical([["cpu0", "cpu1"], ["cpu2", "cpu3"]])),
    "2 replicas x 2 stages": ([["cpu0", "cpu1"], ["cpu2", "cpu3"]], 4, RING),
    "2 replicas, 1 server": ([["cpu0", "cpu1"]], 2, servers("cpu2")),
    "2 replicas, 2 servers": ([["cpu0", "cpu1"]], 2, servers("cpu2", "cpu3")),
    "2 replicas + 1 stage, 1 server": ([["cpu0", "cpu1"], "cpu2"], 4, servers("cpu3")),
}
OPTIMIZERS = ("sgd", "adam")
# the distributed runs leave out 2+2 islands, whose steps 2+1 covers (a reduce and a broadcast inside an
# island, an all-reduce among leaders), to keep the spawned ranks within a minute on two cores
DISTRIBUTED = [case for case in CASES if case != "4 replicas, hierarchical 2+2"]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))


def optimizer(name: str) -> Any:
    if name == "sgd":
        return lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    return lambda ps: torch.optim.Adam(ps, lr=1e-2)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 8, generator=generator), torch.randint(0, 4, (BATCH,), generator=generator)


def program(case: str) -> tuple[PartitionedProgram, Schedule]:
    """The MLP partitioned for ``case`` and the schedule placement makes for it (a hierarchical case's
    all-reduces get the case's islands: the local cluster has no PCIe switches to find them by)."""
    stages, m, doc = CASES[case]
    x = torch.zeros(BATCH, 8)
    full = graphc.trace(mlp(), (x,), name="mlp", granularity="op")
    micro = graphc.trace(mlp(), (x[: BATCH // m],), name="mlp", granularity="op")
    plan = contiguous_plan(full.graph, stages, microbatches=m)
    plan.sync = sync_from_dict({k: v for k, v in doc.items() if k != "islands"})
    plan.cluster = presets.local(workers=6)
    parts = partition(micro.graph_module, plan, full.graph)
    schedule = make_schedule(parts.plan)
    if "islands" in doc:
        islands = tuple(tuple(i) for i in doc["islands"])
        schedule.actions = {
            d: [dataclasses.replace(a, islands=islands) if isinstance(a, AllReduce) else a for a in actions]
            for d, actions in schedule.actions.items()
        }
    return parts, schedule


@functools.cache
def eager(name: str) -> Any:
    ref = mlp()
    x, y = batch()
    return eager_run(ref, ref.named_parameters(), x, y, F.cross_entropy, optimizer(name), steps=3)


def check_like_eager(name: str, losses: list[float], params: dict[str, torch.Tensor]) -> None:
    reference = eager(name)
    torch.testing.assert_close(losses, reference.losses, rtol=1e-5, atol=1e-6)
    assert set(params) == set(reference.params)
    for n, p in params.items():
        torch.testing.assert_close(p, reference.params[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


# -- the local executor --------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("case", list(CASES))
def test_local_executor_trains_like_eager(case, name):
    parts, schedule = program(case)
    x, y = batch()
    executor = LocalExecutor(parts, loss_fn=F.cross_entropy, optimizer=optimizer(name), schedule=schedule)
    losses = [executor.step(x, y).loss for _ in range(3)]
    check_like_eager(name, losses, dict(executor.named_parameters()))
    for device in parts.devices:  # every replica holds the same weights
        stage = parts.stage_device(device)
        for n, p in parts.programs[device].parameters.items():
            torch.testing.assert_close(p, parts.programs[stage].parameters[n], rtol=0, atol=0)


def test_local_buckets_run_in_the_schedules_order():
    parts, schedule = program("2 replicas, 2 servers")
    x, y = batch()
    order = LocalExecutor(parts, loss_fn=F.cross_entropy, optimizer=optimizer("sgd"), schedule=schedule).step(x, y).order
    assert order["cpu0"] == ["F0", "B0", "RD0", "RD1", "RD2", "BC0", "BC1", "BC2"]
    served = {d: [w for w in order[d] if w != "OPT"] for d in ("cpu2", "cpu3")}
    assert sorted(w for ws in served.values() for w in ws) == ["BC0", "BC1", "BC2", "RD0", "RD1", "RD2"]
    assert all(order[d].count("OPT") == 1 for d in ("cpu2", "cpu3"))


# -- the distributed executor ------------------------------------------------------------------------


def train(cases: list[str]) -> list[dict[str, Any]]:
    """What a rank runs: three steps of each case under each optimizer; its losses, parameters, and the
    order of its last step."""
    init_from_env()
    x, y = batch()
    results = []
    for case in cases:
        for name in OPTIMIZERS:
            parts, schedule = program(case)  # fresh weights for each optimizer
            executor = DistributedExecutor(parts, loss_fn=F.cross_entropy, optimizer=optimizer(name), schedule=schedule, timeout_s=30)
            steps = [executor.step(x, y) for _ in range(3)]
            results.append(
                {
                    "case": case,
                    "optimizer": name,
                    "losses": [s.loss for s in steps],
                    "params": {n: p.detach().clone() for n, p in executor.named_parameters()},
                    "order": steps[-1].order[executor.device],
                    "server": executor.part is None,
                }
            )
            executor.close()
    return results


def by_world() -> dict[int, list[str]]:
    worlds: dict[int, list[str]] = {}
    for case in DISTRIBUTED:
        parts, _ = program(case)
        worlds.setdefault(len(parts.ranks), []).append(case)
    return worlds


@pytest.fixture(scope="module")
def distributed() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every case under both optimizers on its ranks (2, 3 or 4): every rank's results."""
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for world, cases in sorted(by_world().items()):
        outcomes = spawn(train, world, (cases,), timeout_s=240)
        for o in outcomes:
            assert o.ok, f"{world} ranks: rank {o.rank} failed: {o.error}\n{o.traceback}"
        for i, r in enumerate(outcomes[0].result):
            results[(r["case"], r["optimizer"])] = [o.result[i] for o in outcomes]
    return results


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("case", DISTRIBUTED)
def test_distributed_training_equals_eager(case, name, distributed):
    ranks = distributed[(case, name)]
    losses = [r["losses"] for r in ranks if r["losses"][0] is not None]
    assert losses, "no rank computed the loss"
    for r in ranks:
        if r["server"]:
            continue  # a server's copies are checked through its workers, which received them
        reference = eager(name).params
        for n, p in r["params"].items():
            torch.testing.assert_close(p, reference[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    merged = {n: p for r in ranks for n, p in r["params"].items()}
    check_like_eager(name, losses[0], merged)


@pytest.mark.distributed
@pytest.mark.slow
def test_all_reduces_are_launched_while_the_last_backward_runs(distributed):
    """Each replica's three buckets are launched before its backward ends (hooks), in bucket order; a
    parameter server's worker launches its reduces the same way."""
    for case in ("2 replicas, ring", "3 replicas, hierarchical 2+1", "2 replicas, 1 server"):
        for r in distributed[(case, "adam")]:
            if r["server"]:
                assert r["order"] == ["RD0", "RD1", "RD2", "OPT", "BC0", "BC1", "BC2"], (case, r["order"])
                continue
            order = r["order"]
            backward = next(w for w in order if w.startswith("B"))
            reduces = [w for w in order if w.startswith(("AR", "RD"))]
            assert len(reduces) == 3 and reduces == sorted(reduces), (case, order)
            assert all(order.index(w) < order.index(backward) for w in reduces), (case, order)
    hybrid = distributed[("2 replicas x 2 stages", "sgd")][0]["order"]  # cpu0: microbatches 0 and 2
    assert hybrid.index("AR") < hybrid.index("B2") and hybrid.index("B0") < hybrid.index("AR"), hybrid


# -- faults ------------------------------------------------------------------------------------------


def die_in_a_collective(case: str, victim: int) -> dict[str, Any]:
    """One SGD step of ``case`` in which rank ``victim`` dies as it launches its first collective; what
    the other ranks saw."""
    init_from_env()
    parts, schedule = program(case)
    executor = DistributedExecutor(parts, loss_fn=F.cross_entropy, optimizer=optimizer("sgd"), schedule=schedule, timeout_s=5)
    if executor.rank == victim:
        BucketCollectives.launch = lambda self, work: os.kill(os.getpid(), signal.SIGKILL)
    start = time.monotonic()
    x, y = batch()
    try:
        executor.step(x, y)
    except RankFailure as failure:
        return {"rank": failure.rank, "device": failure.device, "op": failure.op, "seconds": time.monotonic() - start}
    return {"finished": True}


@pytest.mark.distributed
@pytest.mark.slow
def test_a_server_that_dies_is_named_by_its_workers():
    """(A replica that dies in a bucket's all-reduce: test_runtime_replicas.)"""
    case, victim, op = "2 replicas, 1 server", 2, "reduce of stage 0 bucket"
    outcomes = spawn(die_in_a_collective, len(program(case)[0].ranks), (case, victim), timeout_s=60)
    assert outcomes[victim].exitcode == -signal.SIGKILL
    for o in outcomes:
        if o.rank == victim:
            continue
        seen = o.result
        assert seen is not None and seen.get("rank") == victim, (o.rank, seen, o.error)
        assert seen["device"] == f"cpu{victim}" and seen["op"].startswith(op), seen
        assert seen["seconds"] < 5, seen


# -- schedules the executors refuse ------------------------------------------------------------------


def edited(schedule: Schedule, **actions: list) -> Schedule:
    return dataclasses.replace(schedule, actions={**schedule.actions, **actions})


def test_buckets_must_carry_every_parameter_once():
    parts, schedule = program("2 replicas, ring")
    cpu0, cpu1 = schedule.actions["cpu0"], schedule.actions["cpu1"]
    dropped = [a for a in cpu0 if a.code() != "AR1"]
    with pytest.raises(ScheduleError, match=r"cpu0: parameter\(s\) \['2.weight', '2.bias'\] of the stage of cpu0 are in none of its buckets"):
        device_work(edited(schedule, cpu0=dropped, cpu1=[a for a in cpu1 if a.code() != "AR1"]), parts)
    first = next(a for a in cpu0 if a.code() == "AR0")
    twice = [dataclasses.replace(a, nodes=a.nodes + first.nodes) if a.code() == "AR1" else a for a in cpu0]
    with pytest.raises(ScheduleError, match=r"parameter '4.weight' is carried by both AR0 \(stage 0 bucket 0\) and AR1"):
        device_work(edited(schedule, cpu0=twice), parts)
    foreign = [dataclasses.replace(a, nodes=("no_such_node",)) if a.code() == "AR0" else a for a in cpu0]
    with pytest.raises(ScheduleError, match="names node 'no_such_node', which the plan's graph lacks"):
        device_work(edited(schedule, cpu0=foreign), parts)


def test_replicas_must_all_reduce_their_buckets_in_one_order():
    parts, schedule = program("2 replicas, ring")
    cpu1 = schedule.actions["cpu1"]
    swapped = [*cpu1[:2], cpu1[3], cpu1[2], *cpu1[4:]]  # AR1 before AR0
    with pytest.raises(ScheduleError, match=r"deadlocks: cpu0 at AR0 waits for the all-reduce of stage 0 bucket 0 with the other replicas"):
        device_work(edited(schedule, cpu1=swapped), parts)


def test_a_parameter_servers_work_and_its_workers_are_checked():
    parts, schedule = program("2 replicas, 1 server")
    server = schedule.actions["cpu2"]
    early = [server[3], *server[:3], *server[4:]]  # OPT before the reduces
    with pytest.raises(ScheduleError, match=r"parameter server cpu2 must run its reduces, one OPT, then a broadcast .*; it runs OPT RD0"):
        device_work(edited(schedule, cpu2=early), parts)
    worker = [a for a in schedule.actions["cpu0"] if a.code() != "BC2"]
    with pytest.raises(ScheduleError, match=r"cpu0 must receive the weights of each bucket it reduces"):
        device_work(edited(schedule, cpu0=worker), parts)
    rooted = [dataclasses.replace(a, root="cpu1") if a.code() == "RD0" else a for a in schedule.actions["cpu0"]]
    with pytest.raises(ScheduleError, match=r"cpu0 runs RD0 \(stage 0 bucket 0\) .* with root 'cpu1', but in the program"):
        device_work(edited(schedule, cpu0=rooted), parts)


class Tied(nn.Module):
    """An embedding whose weight the output layer reuses: one parameter with two names."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)))


def test_a_tied_parameter_is_found_by_either_name_and_summed_once():
    tokens = torch.randint(0, 10, (4, 3))
    full = graphc.trace(Tied(), (tokens,), name="tied", granularity="op")
    micro = graphc.trace(Tied(), (tokens[:2],), name="tied", granularity="op")
    plan = contiguous_plan(full.graph, [["cpu0", "cpu1"]], microbatches=2)
    plan.sync = sync_from_dict(RING)
    parts = partition(micro.graph_module, plan, full.graph)
    named = {p for n in full.graph.nodes() for p in n.params}
    assert named == {"head.weight"} and set(parts.programs["cpu0"].parameters) == {"embed.weight"}  # two names
    assert parts.aliases == {"head.weight": "embed.weight"}
    assert [w.params for w in device_work(make_schedule(parts.plan), parts).work["cpu0"] if w.kind == "AR"] == [("embed.weight",)]
    executor = LocalExecutor(parts, loss_fn=lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten()), optimizer=optimizer("adam"))
    targets = torch.randint(0, 10, (4, 3))
    losses = [executor.step(tokens, targets).loss for _ in range(3)]
    ref = Tied()
    reference = eager_run(ref, ref.named_parameters(), tokens, targets, lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten()), optimizer("adam"), steps=3)
    torch.testing.assert_close(losses, reference.losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts.programs["cpu1"].parameters["embed.weight"], reference.params["embed.weight"], rtol=1e-5, atol=1e-6)


def test_the_copy_bandwidth_is_measured_on_the_buckets_copies_and_leaves_the_tensors_alone():
    torch.manual_seed(0)
    tensors = [torch.randn(256, 256), torch.randn(1000)]
    before = [t.clone() for t in tensors]
    bandwidth = copy_bandwidth(tensors, repeats=3)
    assert 1e8 < bandwidth < 1e13  # bytes read and written per second: from a slow CPU to a fast one
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))
    with pytest.raises(ConfigurationError, match="copy_bandwidth: need tensors with bytes"):
        copy_bandwidth([torch.empty(0)])
