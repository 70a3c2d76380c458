"""Faults: a rank that dies or hangs mid-step makes the others fail fast, naming it and the op."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any

import pytest

import graphc
from graphc import zoo
from runtime import (
    DistributedExecutor,
    RankFailure,
    contiguous_plan,
    init_from_env,
    partition,
    zoo_loss,
)
from runtime.launch import spawn
from runtime.step import ZooLoss

TIMEOUT_S = 2.0


@functools.cache
def chain():
    """GPT-2 in three contiguous stages: cpu0 -> cpu1 -> cpu2 (the loss is on cpu2)."""
    zm = zoo.build("gpt2", batch_size=2, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, name="gpt2")
    return zm, partition(program, contiguous_plan(program.graph, ["cpu0", "cpu1", "cpu2"]))


class HangingLoss:
    """The loss on the output rank never returns."""

    def __init__(self, loss_fn: ZooLoss) -> None:
        self.loss_fn = loss_fn

    def __call__(self, outputs: Any, targets: Any) -> Any:
        time.sleep(3600)


class Observed(Exception):
    """What a surviving rank saw (as JSON); raised so that the rank fails, as it would under torchrun,
    and :func:`spawn` kills the hung rank after the grace period."""


def faulty_step(program, inputs, targets, loss_fn, fault: str, culprit: int) -> None:
    """One step in which rank ``culprit`` is killed as its forward starts, or hangs in the loss."""
    init_from_env()
    if fault == "hang" and program.devices[culprit] == program.output_device:
        loss_fn = HangingLoss(loss_fn)
    executor = DistributedExecutor(program, loss_fn=loss_fn, timeout_s=TIMEOUT_S)
    if fault == "kill" and executor.rank == culprit:
        executor.part.module.forward = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    start = time.monotonic()
    try:
        executor.step(inputs, targets)
    except RankFailure as failure:
        seen = {"rank": failure.rank, "device": failure.device, "op": failure.op, "message": str(failure)}
        raise Observed(json.dumps({**seen, "seconds": time.monotonic() - start})) from None


@pytest.mark.parametrize(("fault", "culprit"), [("kill", 1), ("hang", 2)])
def test_the_other_ranks_fail_within_the_timeout_naming_the_rank(fault, culprit):
    zm, program = chain()
    started = time.monotonic()
    outcomes = spawn(faulty_step, 3, (program, zm.example_inputs, zm.targets, zoo_loss(zm), fault, culprit), timeout_s=60, grace_s=2)
    elapsed = time.monotonic() - started
    survivors = [o for o in outcomes if o.rank != culprit]
    for o in survivors:
        assert isinstance(o.error, Observed), f"rank {o.rank}: {o.error!r}"
        failure = json.loads(str(o.error))
        assert failure["rank"] == culprit and failure["device"] == f"cpu{culprit}"
        assert f"rank {culprit} (cpu{culprit})" in failure["message"]
        assert failure["op"].startswith(("receive of", "send of")) and failure["op"] in failure["message"]
        assert failure["seconds"] < (1.0 if fault == "kill" else TIMEOUT_S + 1.5)
    victim = outcomes[culprit]
    assert victim.exitcode == -signal.SIGKILL if fault == "kill" else victim.exitcode is None  # hung: killed by spawn
    assert elapsed < 45
