"""Replicated pipeline stages: microbatch k on replica k mod r, gradients all-reduced after the last backward.

A stage replicated data-parallel must give what the unreplicated pipeline gives, which is what eager
PyTorch gives for the full batch: the same loss and gradients, and after optimizer steps the same
parameters on every replica. GPT-2 (small, no dropout) has a tied embedding, whose gradient comes back
from the last stage to the replica that holds each microbatch before the replicas sum it.
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
from graphc import zoo
from graphc.zoo import zoo_loss
from placement.schedules import (
    AllReduce,
    Backward,
    Forward,
    OptimizerStep,
    Schedule,
    make_schedule,
)
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
from runtime.collectives import BucketCollectives
from runtime.errors import ProgramMismatch
from runtime.launch import spawn
from runtime.schedule import device_work, resolve
from runtime.testing import eager_run, relative_difference

RTOL = 1e-4
BATCH, M = 8, 4
STAGES = {
    "first replicated": [["cpu0", "cpu1"], "cpu2"],
    "last replicated": ["cpu0", ["cpu1", "cpu2"]],
}


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))


@functools.cache
def mlp_program(m: int = M) -> PartitionedProgram:
    """The MLP in two stages, the first on cpu0 and cpu1, the second on cpu2; traced on one microbatch."""
    x = torch.randn(BATCH, 8)
    full = graphc.trace(mlp(), (x,), name="mlp", granularity="op")
    micro = graphc.trace(mlp(), (x[: BATCH // m],), name="mlp", granularity="op")
    return partition(micro.graph_module, contiguous_plan(full.graph, [["cpu0", "cpu1"], "cpu2"], microbatches=m), full.graph)


def gpt2(batch: int = BATCH) -> zoo.ZooModel:
    return zoo.build("gpt2", batch_size=batch, size="small", dropout=0.0)


def gpt2_program(stages: list) -> PartitionedProgram:
    zm = gpt2()
    full = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op")
    micro = graphc.trace(zm.model, tuple(x[: BATCH // M] for x in zm.example_inputs), name="gpt2", granularity="op")
    return partition(micro.graph_module, contiguous_plan(full.graph, stages, microbatches=M), full.graph)


def adam(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-2)


def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """GPT-2's key biases get a gradient that is zero but for float32 rounding, which any microbatched
    sum (replicated or not) rounds differently from eager's; Adam scales that noise up to full steps,
    SGD with momentum keeps it at rounding level."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


# -- partition and schedule --------------------------------------------------------------------------------


def test_replicas_get_their_own_copy_of_the_stage_and_every_other_microbatch():
    parts = mlp_program()
    assert parts.devices == ["cpu0", "cpu1", "cpu2"] and parts.stage_devices == ["cpu0", "cpu2"]
    assert parts.replicas == {"cpu0": ["cpu0", "cpu1"]}
    assert [parts.runner("cpu0", k) for k in range(4)] == ["cpu0", "cpu1", "cpu0", "cpu1"]
    assert parts.microbatches_of("cpu1") == [1, 3] and parts.microbatches_of("cpu2") == [0, 1, 2, 3]
    first, copy = parts.programs["cpu0"], parts.programs["cpu1"]
    assert first.parameters.keys() == copy.parameters.keys()
    for name, p in first.parameters.items():
        assert p is not copy.parameters[name] and torch.equal(p, copy.parameters[name])
    assert "stage of cpu0 replicated on 2 devices (cpu0: microbatches 0, 2; cpu1: microbatches 1, 3)" in str(parts)
    assert "── cpu1: a replica of cpu0" in str(parts)


def work(schedule: Schedule, parts: PartitionedProgram) -> list[str]:
    return [f"{d} | {' '.join(map(str, w))}" for d, w in device_work(schedule, parts, in_order=True).work.items()]


def test_schedules_give_each_replica_its_microbatches_then_the_all_reduce():
    parts = mlp_program()
    assert work(resolve(parts, "gpipe"), parts) == [
        "cpu0 | F0 F2 B0 B2 AR OPT",
        "cpu1 | F1 F3 B1 B3 AR OPT",
        "cpu2 | F0 F1 F2 F3 B0 B1 B2 B3 OPT",
    ]
    assert work(resolve(parts, "1f1b"), parts) == [
        "cpu0 | F0 B0 F2 B2 AR OPT",
        "cpu1 | F1 B1 F3 B3 AR OPT",
        "cpu2 | F0 B0 F1 B1 F2 B2 F3 B3 OPT",
    ]
    inference = dataclasses.replace(parts.plan, mode="inference")
    assert work(make_schedule(inference, "gpipe"), parts) == ["cpu0 | F0 F2", "cpu1 | F1 F3", "cpu2 | F0 F1 F2 F3"]


def stage_actions(device: str, stage: int, codes: str, group: tuple[str, ...] = ()) -> list:
    """``device``'s actions running ``stage`` in the order of ``codes`` ("F0 B0 ..."), then the
    all-reduce over ``group`` when given, then the optimizer step."""
    kinds = {"F": Forward, "B": Backward}
    actions = [kinds[c[0]](device, int(c[1:]), stage=stage) for c in codes.split()]
    reduce = [AllReduce(device, group, f"stage {stage} gradients")] if group else []
    return actions + reduce + [OptimizerStep(device)]


def test_a_schedule_must_all_reduce_after_the_last_backward_and_keep_each_microbatch_on_its_replica():
    parts = mlp_program()
    good = resolve(parts, "gpipe").actions
    replicas = ("cpu0", "cpu1")
    without = Schedule("mine", "throughput", M, {**good, "cpu1": stage_actions("cpu1", 0, "F1 F3 B1 B3")})
    with pytest.raises(ScheduleError, match="cpu1 replicates the stage of cpu0: it must run one AR .*, after its last backward"):
        device_work(without, parts)
    early = stage_actions("cpu1", 0, "F1 F3 B1", replicas)
    early[-1:-1] = [Backward("cpu1", 3, stage=0)]
    with pytest.raises(ScheduleError, match=r"after its last backward; it runs F1 F3 B1 AR B3 OPT"):
        device_work(Schedule("mine", "throughput", M, {**good, "cpu1": early}), parts)
    swapped = Schedule("mine", "throughput", M, {**good, "cpu0": stage_actions("cpu0", 0, "F1 F2 B1 B2", replicas)})
    with pytest.raises(
        ScheduleError,
        match=r"cpu0 runs F for microbatches \[1, 2\]; it must run its microbatches as replica of cpu0, \[0, 2\], once",
    ):
        device_work(swapped, parts)
    stray = Schedule("mine", "throughput", M, {**good, "cpu2": stage_actions("cpu2", 1, "F0 F1 F2 F3 B0 B1 B2 B3", ("cpu2",))})
    with pytest.raises(ScheduleError, match=r"cpu2 all-reduces over \['cpu2'\], but in the program it all-reduces nothing"):
        device_work(stray, parts)
    other = Schedule("mine", "throughput", M, {**good, "cpu1": stage_actions("cpu1", 0, "F1 F3 B1 B3", ("cpu1", "cpu2"))})
    with pytest.raises(ScheduleError, match=r"cpu1 all-reduces over \['cpu1', 'cpu2'\], but in the program it all-reduces its stage's replicas"):
        device_work(other, parts)


def test_a_replica_stuck_in_the_pipeline_leaves_the_other_waiting_in_the_all_reduce():
    parts = mlp_program()
    schedule = resolve(parts, "gpipe")
    schedule.actions["cpu2"] = stage_actions("cpu2", 1, "F0 F2 B0 B2 F1 F3 B1 B3")
    schedule.actions["cpu1"] = stage_actions("cpu1", 0, "F3 B3 F1 B1", ("cpu0", "cpu1"))
    with pytest.raises(ScheduleError) as error:
        device_work(schedule, parts)
    message = str(error.value)
    assert "cpu0 at AR waits for the all-reduce with the other replicas of cpu0 (cpu0, cpu1)" in message
    assert "cpu1 at B3 waits for the gradient of 'tanh' (transfer 0, microbatch 3) from cpu2" in message
    assert "cpu2 at F1 waits for 'tanh' (transfer 0, microbatch 1) from cpu1" in message


def test_unsupported_replication_is_refused_before_anything_runs():
    x = torch.randn(BATCH, 8)
    full = graphc.trace(mlp(), (x,), name="mlp", granularity="op")
    micro = graphc.trace(mlp(), (x[:4],), name="mlp", granularity="op")
    few = contiguous_plan(full.graph, [["cpu0", "cpu1", "cpu3"], "cpu2"], microbatches=2)
    with pytest.raises(ProgramMismatch, match="replicated on 3 devices but a step has only 2 microbatch"):
        partition(micro.graph_module, few, full.graph)
    shared = contiguous_plan(full.graph, [["cpu0", "cpu1"], "cpu2"], microbatches=2)
    shared.stages[1].devices = ["cpu2", "cpu1"]
    with pytest.raises(ProgramMismatch, match="device cpu1 serves stages 0 and 1"):
        partition(micro.graph_module, shared, full.graph)
    moved = contiguous_plan(full.graph, [["cpu0", "cpu1"], "cpu2"], microbatches=2)
    moved.assignment[moved.stages[0].nodes[-1]] = "cpu1"
    with pytest.raises(
        ProgramMismatch, match=r"stage 0 runs on \['cpu0', 'cpu1'\], but the plan assigns some of its nodes to \['cpu1'\]"
    ):
        partition(micro.graph_module, moved, full.graph)


# -- local executor ----------------------------------------------------------------------------------------


def test_local_replicas_train_like_eager_and_stay_equal():
    parts = mlp_program()
    x, y = torch.randn(BATCH, 8), torch.randint(0, 4, (BATCH,))
    executor = LocalExecutor(parts, loss_fn=F.cross_entropy, optimizer=adam)
    losses = [executor.step(x, y).loss for _ in range(3)]
    ref = mlp()
    reference = eager_run(ref, ref.named_parameters(), x, y, F.cross_entropy, adam, steps=3)
    assert losses == pytest.approx(reference.losses, rel=1e-5)
    assert relative_difference(dict(executor.named_parameters()), reference.params) < (RTOL, "")
    for name, p in parts.programs["cpu1"].parameters.items():
        assert torch.equal(p, parts.programs["cpu0"].parameters[name])
        assert torch.equal(p.grad, parts.programs["cpu0"].parameters[name].grad)
    torch.testing.assert_close(executor.forward(x), ref(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(executor(x), ref(x), rtol=1e-5, atol=1e-6)  # the differentiable call too


# -- distributed executor on three gloo ranks ----------------------------------------------------------------


def run_cases(cases: list[tuple[str, str, bool]]) -> list[dict[str, Any]]:
    """What a rank runs: each case ``(stages label, schedule, optimize)`` on GPT-2 partitioned by
    :data:`STAGES` (one partition per label, built on this rank), one step, or three SGD steps when
    ``optimize``."""
    init_from_env()
    zm = gpt2()
    programs: dict[str, PartitionedProgram] = {}
    results = []
    for label, schedule, optimize in cases:
        program = programs.setdefault(label, gpt2_program(STAGES[label]))
        executor = DistributedExecutor(
            program, loss_fn=zoo_loss(zm), optimizer=sgd if optimize else None, schedule=schedule, timeout_s=60
        )
        steps = [executor.step(zm.example_inputs, zm.targets) for _ in range(3 if optimize else 1)]
        results.append(
            {
                "losses": [s.loss for s in steps],
                "outputs": steps[-1].outputs,
                "grads": {n: p.grad for n, p in executor.named_parameters()},
                "params": {n: p.detach() for n, p in executor.named_parameters()},
                "inference": executor.forward(zm.example_inputs) if not optimize else None,
            }
        )
        executor.close()
    return results


@pytest.fixture(scope="module")
def three_ranks() -> dict[str, list[dict[str, Any]]]:
    """GPT-2 with its first or its last stage on two ranks and the other on one: one step under GPipe and
    1F1B, and three SGD steps under 1F1B; every rank's results, by case."""
    cases: dict[str, tuple[str, str, bool]] = {}
    for label in STAGES:
        for schedule in ("gpipe", "1f1b"):
            cases[f"{label} {schedule}"] = (label, schedule, False)
        cases[f"{label} sgd"] = (label, "1f1b", True)
    outcomes = spawn(run_cases, 3, (list(cases.values()),), timeout_s=240)
    for o in outcomes:
        assert o.ok, f"rank {o.rank} failed: {o.error}"
    return {label: [o.result[i] for o in outcomes] for i, label in enumerate(cases)}


@functools.cache
def eager_gpt2(steps: int) -> Any:
    ref = gpt2()
    return eager_run(
        ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref), sgd if steps > 1 else None, steps
    )


@pytest.mark.distributed
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("label", list(STAGES))
def test_replicated_stages_give_the_full_batch_loss_and_gradients(label, schedule, three_ranks):
    ranks = three_ranks[f"{label} {schedule}"]
    reference = eager_gpt2(1)
    output_ranks = [r for r in ranks if r["losses"][0] is not None]
    assert len(output_ranks) == (2 if label == "last replicated" else 1)  # each replica of the output stage
    for r in output_ranks:
        assert r["losses"][0] == pytest.approx(reference.losses[0], rel=1e-5)
        assert relative_difference({"out": r["outputs"]}, {"out": reference.outputs.detach()})[0] < RTOL
        assert relative_difference({"out": r["inference"]}, {"out": reference.outputs.detach()})[0] < RTOL
    merged = {n: g for r in ranks for n, g in r["grads"].items()}
    assert relative_difference(merged, reference.grads) < (RTOL, "")
    for r in ranks:  # every replica holds the whole batch's gradients
        assert relative_difference(r["grads"], {n: reference.grads[n] for n in r["grads"]}) < (RTOL, "")


@pytest.mark.distributed
@pytest.mark.parametrize("label", list(STAGES))
def test_replicas_end_optimizer_steps_with_eager_parameters(label, three_ranks):
    ranks = three_ranks[f"{label} sgd"]
    reference = eager_gpt2(3)
    losses = next(r["losses"] for r in ranks if r["losses"][0] is not None)
    assert losses == pytest.approx(reference.losses, rel=1e-5)
    for r in ranks:
        assert relative_difference(r["params"], {n: reference.params[n] for n in r["params"]}) < (RTOL, "")
    assert set().union(*(r["params"] for r in ranks)) == set(reference.params)


def killed_in_the_all_reduce(inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """One step of :func:`mlp_program` in which rank 1 (cpu1, the second replica of cpu0's stage) dies as
    its all-reduce is launched; what the other ranks saw."""
    init_from_env()
    executor = DistributedExecutor(mlp_program(), loss_fn=F.cross_entropy, timeout_s=5)
    if executor.rank == 1:
        BucketCollectives.launch = lambda self, work: os.kill(os.getpid(), signal.SIGKILL)
    start = time.monotonic()
    try:
        executor.step(inputs, targets)
    except RankFailure as failure:
        return {"rank": failure.rank, "op": failure.op, "seconds": time.monotonic() - start}
    return {"finished": True}


@pytest.mark.distributed
def test_a_replica_that_dies_in_the_all_reduce_is_named_by_the_other():
    outcomes = spawn(
        killed_in_the_all_reduce, 3, (torch.randn(BATCH, 8), torch.randint(0, 4, (BATCH,))), timeout_s=60
    )
    assert outcomes[1].exitcode == -signal.SIGKILL
    seen = outcomes[0].result
    assert seen["rank"] == 1 and seen["op"].startswith("all-reduce of stage 0 bucket 0"), seen
    assert seen["seconds"] < 5
    assert outcomes[2].result == {"finished": True}  # the other stage does not take part
