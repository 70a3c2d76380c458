"""Faults: a rank that dies or hangs mid-step makes the others fail fast, naming it and the op; and
``graphc run`` says so itself and ends within the timeout plus a few seconds."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

import graphc
from graphc import zoo
from graphc.app.run import TEST_FAULT_ENV
from graphc.frontend.zoo import ZooLoss
from graphc.zoo import zoo_loss
from runtime import (
    DistributedExecutor,
    RankFailure,
    RunFailed,
    contiguous_plan,
    init_from_env,
    partition,
)
from runtime.faults import REPORTS_ENV
from runtime.launch import spawn

pytestmark = pytest.mark.distributed

TIMEOUT_S = 2.0


@functools.cache
def chain():
    """GPT-2 in three contiguous stages: cpu0 -> cpu1 -> cpu2 (the loss is on cpu2): the model, the plan
    and its partition."""
    zm = zoo.build("gpt2", batch_size=2, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op")
    plan = contiguous_plan(program.graph, ["cpu0", "cpu1", "cpu2"])
    return zm, plan, partition(program, plan)


class HangingLoss:
    """The loss on the output rank never returns."""

    def __init__(self, loss_fn: ZooLoss) -> None:
        self.loss_fn = loss_fn

    def __call__(self, outputs: Any, targets: Any) -> Any:
        time.sleep(3600)


class Observed(Exception):
    """What a surviving rank saw (as JSON); raised so that the rank fails, as it would under torchrun,
    and :func:`spawn` kills the hung rank after the grace period. It comes back as a
    :class:`~graphc.ir.errors.RunFailed` (not graphc's own class) whose ``detail`` is the JSON."""


def faulty_step(fault: str, culprit: int) -> None:
    """One step of :func:`chain` in which rank ``culprit`` is killed as its forward starts, or hangs in
    the loss."""
    init_from_env()
    zm, _, program = chain()
    inputs, targets, loss_fn = zm.example_inputs, zm.targets, zoo_loss(zm)
    if fault == "hang" and program.devices[culprit] == program.output_device:
        loss_fn = HangingLoss(loss_fn)
    executor = DistributedExecutor(program, loss_fn=loss_fn, timeout_s=TIMEOUT_S)
    if fault == "kill" and executor.rank == culprit:
        executor.part.module.forward = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    start = time.monotonic()
    try:
        executor.step(inputs, targets)
    except RankFailure as failure:
        seen = {"rank": failure.rank, "device": failure.device, "op": failure.op, "activity": failure.activity, "message": str(failure)}
        raise Observed(json.dumps({**seen, "seconds": time.monotonic() - start})) from None


@pytest.mark.parametrize(("fault", "culprit"), [("kill", 1), ("hang", 2)])
def test_the_other_ranks_fail_within_the_timeout_naming_the_rank(fault, culprit):
    started = time.monotonic()
    outcomes = spawn(faulty_step, 3, (fault, culprit), timeout_s=60, grace_s=2)
    elapsed = time.monotonic() - started
    survivors = [o for o in outcomes if o.rank != culprit]
    for o in survivors:
        assert isinstance(o.error, RunFailed) and o.error.type_name == f"{__name__}.Observed", f"rank {o.rank}: {o.error!r}"
        failure = json.loads(o.error.detail)
        assert failure["rank"] == culprit and failure["device"] == f"cpu{culprit}"
        assert f"rank {culprit} (cpu{culprit})" in failure["message"]
        assert failure["op"].startswith(("receive of", "send of")) and failure["op"] in failure["message"]
        assert failure["seconds"] < (1.0 if fault == "kill" else TIMEOUT_S + 1.5)
        if fault == "hang":  # it hangs in computation: the others say in which
            assert failure["activity"] == "loss of microbatch 0" and "last seen in the loss of microbatch 0" in failure["message"]
    victim = outcomes[culprit]
    assert victim.exitcode == -signal.SIGKILL if fault == "kill" else victim.exitcode is None  # hung: killed by spawn
    assert elapsed < 45


# -- graphc run, and torchrun of one's own -----------------------------------------------------------


@pytest.fixture(scope="module")
def chain_plan(tmp_path_factory) -> str:
    """The three-stage GPT-2 plan as a file, for graphc run."""
    path = tmp_path_factory.mktemp("plans") / "gpt2-3.json"
    chain()[1].save(path)
    return str(path)


@dataclass
class Ended:
    """A command run with a fault injected: its exit status, its stderr, and the seconds from the moment
    the fault struck (the injected rank's line on stderr) to the command's exit."""

    status: int
    stderr: str
    after_fault_s: float


def run_with_fault(command: list[str], fault: str, environ: dict[str, str]) -> Ended:
    """Run ``command`` with ``GRAPHC_TEST_FAULT=fault``, timing its exit from the fault's line."""
    env = {**environ, TEST_FAULT_ENV: fault}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(180, process.kill)  # a test never hangs, whatever graphc run does
    watchdog.start()
    lines, struck = [], None
    try:
        for line in process.stderr:
            lines.append(line)
            if struck is None and line.startswith("graphc test fault:"):
                struck = time.monotonic()
        status = process.wait()
    finally:
        watchdog.cancel()
    assert struck is not None, "".join(lines)
    return Ended(status, "".join(lines), time.monotonic() - struck)


def worker_argv(plan: str) -> list[str]:
    return ["gpt2", "--plan", plan, "--size", "small", "--knob", "dropout=0.0", "--timeout", str(TIMEOUT_S), "--steps", "1", "--warmup", "0"]


@pytest.mark.parametrize(("fault", "culprit"), [("kill", 1), ("hang", 1)])
def test_graphc_run_names_the_failed_rank_and_ends_within_the_timeout(chain_plan, fault, culprit):
    ended = run_with_fault([sys.executable, "-m", "graphc.app.cli", "run", *worker_argv(chain_plan)], f"{fault}:{culprit}", dict(os.environ))
    assert ended.status != 0
    message = ended.stderr.split("graphc: error: ", 1)[1]
    headline = message.splitlines()[0]
    assert headline.startswith(f"rank {culprit} (cpu{culprit}) failed") and "lost it in the receive of" in headline
    if fault == "hang":
        assert "in the forward of microbatch 0" in headline and f"rank {culprit} (cpu{culprit}) hangs" in message
    else:
        assert f"rank {culprit} (cpu{culprit}) died" in message
    assert "Traceback" not in ended.stderr and "ChildFailedError" not in ended.stderr
    assert ended.after_fault_s < TIMEOUT_S + 5.0  # measured: about 1 s after a kill, 3 to 5 s after a hang


def test_under_a_torchrun_of_ones_own_the_ranks_name_the_dead_one(chain_plan):
    """torchrun ends the other ranks at once when one dies; they still say which, and in what."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3", "-m", "graphc.app.run"]
    environ = {k: v for k, v in os.environ.items() if k != REPORTS_ENV}
    ended = run_with_fault([*command, *worker_argv(chain_plan)], "kill:1", environ)
    assert ended.status != 0
    errors = [line for line in ended.stderr.splitlines() if line.startswith("graphc run: rank ")]
    assert errors and all("rank 1 (cpu1) died" in line and "receive of" in line for line in errors)
