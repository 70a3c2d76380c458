"""Starting ranks on one machine in-process: :func:`spawn`.

:func:`spawn` runs a function on ``n`` local ranks with ``torch.multiprocessing`` and the environment
torchrun would give them (the rendezvous store lives in the calling process, as torchrun's agent holds
it), and returns what every rank returned or raised. As torchrun does, once a rank fails the others get
a grace period and are then killed. Tests, benchmarks and notebooks use it; ``graphc run``
(:mod:`graphc.app.run`) starts ranks through torchrun instead.
"""

from __future__ import annotations

import datetime
import io
import os
import pickle
import queue as queue_module
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass
class RankOutcome:
    """How one rank of :func:`spawn` ended.

    Attributes:
        rank: the rank.
        result: what the function returned (None if it raised or was killed); tensors, numbers, strings
            and lists, tuples and dicts of them.
        error: the exception it raised (its traceback text when it could not be pickled), or None.
        exitcode: the process's exit status; None when :func:`spawn` killed it after the grace period.
    """

    rank: int
    result: Any = None
    error: BaseException | None = None
    exitcode: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.exitcode == 0


def spawn(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    *,
    timeout_s: float = 300.0,
    grace_s: float = 10.0,
    threads: int = 1,
) -> list[RankOutcome]:
    """Run ``fn(*args)`` on ranks ``0 .. world_size - 1`` of this machine; return every rank's outcome.

    ``fn`` must be importable (a module-level function); it calls
    :func:`runtime.distributed.init_from_env` itself, exactly as under torchrun. ``args`` are pickled by
    value (a :class:`~runtime.partition.PartitionedProgram` travels whole, so ranks need not trace the
    model again; tensors are copies, never shared). Each rank runs with ``threads`` intra-op threads.
    A rank still running ``timeout_s`` after the start, or ``grace_s`` after another rank failed, is
    killed.
    """
    with tempfile.TemporaryDirectory(prefix="graphc-spawn-") as scratch:
        # The payload goes through a file: multiprocessing writes a process's arguments into a pipe before
        # it lets go of the pipe's other end, so a large payload to a rank that dies while starting up
        # would block this process for ever.
        payload = Path(scratch) / "payload.pickle"
        payload.write_bytes(pickle.dumps((fn, args)))
        return _run_ranks(str(payload), world_size, timeout_s, grace_s, threads)


def _run_ranks(payload: str, world_size: int, timeout_s: float, grace_s: float, threads: int) -> list[RankOutcome]:
    """:func:`spawn` with the pickled function and arguments in the file ``payload``."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=timeout_s))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_rank_main, args=(payload, rank, world_size, store.port, threads, results), daemon=True)
        for rank in range(world_size)
    ]
    for p in processes:
        p.start()
    outcomes = {rank: RankOutcome(rank) for rank in range(world_size)}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(p.is_alive() for p in processes):
        try:
            rank, result, error = results.get(timeout=0.05)
        except queue_module.Empty:
            failed = any(p.exitcode not in (None, 0) for p in processes)
        else:
            outcomes[rank].result, outcomes[rank].error = _load(result), error
            failed = error is not None
        if failed:
            deadline = min(deadline, time.monotonic() + grace_s)
    while True:  # results that arrived as the last processes exited
        try:
            rank, result, error = results.get(timeout=0.2)
        except queue_module.Empty:
            break
        outcomes[rank].result, outcomes[rank].error = _load(result), error
    for rank, p in enumerate(processes):
        if p.is_alive():
            p.kill()
            p.join()
            outcomes[rank].exitcode = None
        else:
            p.join()
            outcomes[rank].exitcode = p.exitcode
            if p.exitcode != 0 and outcomes[rank].error is None:
                outcomes[rank].error = RuntimeError(f"rank {rank} exited with status {p.exitcode} before reporting (see its stderr)")
    return [outcomes[r] for r in range(world_size)]


def _rank_main(payload: str, rank: int, world_size: int, port: int, threads: int, results: Any) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    torch.set_num_threads(threads)
    try:
        fn, args = pickle.loads(Path(payload).read_bytes())
        result = fn(*args)
    except BaseException as exc:  # reported to the caller, whatever it is
        results.put((rank, None, _picklable(exc)))
        raise SystemExit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    buffer = io.BytesIO()
    torch.save(result, buffer)  # by value: shared-memory tensors would die with this process
    results.put((rank, buffer.getvalue(), None))


def _load(data: bytes | None) -> Any:
    return None if data is None else torch.load(io.BytesIO(data), weights_only=True)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError("".join(traceback.format_exception(exc)))
