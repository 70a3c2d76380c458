"""runtime.launch.spawn: functions by name, plain values both ways, errors by class, a grace period after
a failure, and ranks that end with the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from graphc.ir.errors import ConfigurationError, RankFailure, RunFailed
from runtime import init_from_env
from runtime.launch import function_name, spawn


def summed(scale: float, tensor: torch.Tensor) -> dict:
    """Every rank's ``(rank + 1) * scale * tensor``, all-reduced: a plain value with tensors and tuples."""
    init_from_env()
    rank = dist.get_rank()
    out = (rank + 1) * scale * tensor
    dist.all_reduce(out)
    return {"rank": rank, "sum": out, "pair": (rank, str(rank)), "threads": torch.get_num_threads()}


@pytest.mark.distributed
def test_ranks_run_a_function_by_name_and_return_plain_values():
    x = torch.arange(4, dtype=torch.float32)
    outcomes = spawn(summed, 2, (0.5, x), threads=2, timeout_s=120)
    assert [o.exitcode for o in outcomes] == [0, 0] and all(o.ok for o in outcomes), [o.traceback for o in outcomes]
    for rank, o in enumerate(outcomes):
        assert o.result["rank"] == rank and o.result["pair"] == (rank, str(rank)) and o.result["threads"] == 2
        torch.testing.assert_close(o.result["sum"], 1.5 * x)


def fails(kind: str) -> None:
    """Rank 0 raises ``kind`` of error; the other ranks sleep until killed."""
    if int(os.environ["RANK"]) != 0:
        time.sleep(600)
    if kind == "graphc":
        raise RankFailure("rank 1 (cpu1) died", rank=1, device="cpu1", op="receive of x", activity="forward")
    raise KeyError("no such thing")


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["graphc", "other"])
def test_errors_come_back_by_class_and_the_others_are_killed_after_the_grace_period(kind):
    started = time.monotonic()
    outcomes = spawn(fails, 2, (kind,), timeout_s=120, grace_s=1)
    assert time.monotonic() - started < 60  # not the timeout
    first, sleeper = outcomes
    assert first.exitcode == 1 and "fails" in first.traceback
    if kind == "graphc":
        assert type(first.error) is RankFailure and str(first.error) == "rank 1 (cpu1) died"
        assert (first.error.rank, first.error.device, first.error.op, first.error.activity) == (1, "cpu1", "receive of x", "forward")
    else:
        assert type(first.error) is RunFailed and first.error.type_name == "builtins.KeyError"
        assert first.error.detail == "'no such thing'" and "KeyError: 'no such thing'" in str(first.error)
    assert sleeper.exitcode is None and isinstance(sleeper.error, RunFailed) and not sleeper.ok


def returns_a_module() -> torch.nn.Module:
    return torch.nn.Linear(1, 1)


@pytest.mark.distributed
def test_a_result_that_is_not_a_plain_value_is_an_error():
    (outcome,) = spawn(returns_a_module, 1, timeout_s=120)
    assert isinstance(outcome.error, ConfigurationError) and "torch.nn.modules.linear.Linear" in str(outcome.error)
    assert outcome.exitcode == 1


def test_functions_that_cannot_be_imported_by_name_are_refused_before_any_rank_starts():
    def nested() -> None: ...

    with pytest.raises(ConfigurationError, match="lambda or a nested function.*define it at the top level"):
        spawn(lambda: None, 1)
    with pytest.raises(ConfigurationError, match="lambda or a nested function"):
        spawn(nested, 1)
    with pytest.raises(ConfigurationError, match="cannot import 'no_such_module:f'"):
        spawn("no_such_module:f", 1)
    assert function_name(summed) == f"{__name__}:summed"
    assert function_name("runtime.launch:spawn") == "runtime.launch:spawn"


def echo(value: object) -> object:
    return value


@pytest.mark.distributed
def test_numpy_scalars_and_subclasses_travel_as_their_plain_types_as_in_json():
    given = {"f": np.float64(1.5), "i": np.int64(3), "b": np.bool_(True), "t": (np.float32(0.5),), "size": torch.Size([2, 3])}
    (outcome,) = spawn(echo, 1, (OrderedDict(given),), timeout_s=120)
    assert outcome.ok, outcome.traceback
    assert outcome.result == {"f": 1.5, "i": 3, "b": True, "t": (0.5,), "size": (2, 3)} and type(outcome.result) is dict
    assert [type(outcome.result[k]) for k in ("f", "i", "b", "size")] == [float, int, bool, tuple]


def test_arguments_that_are_not_plain_values_are_refused_naming_where():
    with pytest.raises(ConfigurationError, match=r"args\[1\]\['b'\]\[0\] is a torch.nn.modules.linear.Linear.*build the object on the rank"):
        spawn(summed, 1, (1.0, {"b": [torch.nn.Linear(1, 1)]}))


def sleeps() -> None:
    """Sleep until killed, having written this rank's process id next to the parent's script."""
    Path(os.environ["GRAPHC_TEST_PIDS"], os.environ["RANK"]).write_text(str(os.getpid()))
    time.sleep(600)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie (dead, not yet reaped) is gone for our purpose
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.distributed
def test_ranks_end_when_the_process_that_spawned_them_is_killed(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from runtime.launch import spawn
        spawn("test_runtime_launch:sleeps", 2, timeout_s=600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "GRAPHC_TEST_PIDS": str(tmp_path)})
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.1)
            pids = [int(p.read_text()) for p in tmp_path.iterdir() if p.read_text()]
        assert len(pids) == 2, f"the ranks did not start (parent status {parent.poll()})"
        parent.kill()
        parent.wait()
        gone_by = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < gone_by:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
