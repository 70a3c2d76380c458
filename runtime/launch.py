"""Starting ranks: torchrun for real runs (``graphc run``), and :func:`spawn` for one machine in-process.

``graphc run`` (:func:`cmd_run`) builds a ``torchrun`` command line (``python -m torch.distributed.run``)
that starts one worker per device of the plan, on this host or, with ``--nnodes``/``--node-rank``/
``--master-addr``, on each of several hosts (run the same command on every host with its own
``--node-rank``). Host ``h`` runs ranks ``h * nproc .. (h + 1) * nproc - 1``, and rank ``r`` runs the
plan's ``r``-th device in natural order of names, so name a multi-host plan's devices host by host
(``h0/gpu0``, ``h0/gpu1``, ..., ``h1/gpu0``, as the cluster presets do). Every worker runs
:func:`worker_main` (``python -m runtime.launch``): it builds the zoo model, traces it, checks and
partitions the plan, trains with a :class:`~runtime.distributed.DistributedExecutor`, and the output
rank prints the measured step and memory next to the plan's prediction. Ranks build the same partition
independently: tracing and partitioning are deterministic.

:func:`spawn` runs a function on ``n`` local ranks with ``torch.multiprocessing`` and the environment
torchrun would give them (the rendezvous store lives in the calling process, as torchrun's agent holds
it), and returns what every rank returned or raised. As torchrun does, once a rank fails the others get
a grace period and are then killed. Tests, benchmarks and notebooks use it.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import io
import json
import os
import pickle
import queue as queue_module
import shlex
import subprocess
import sys
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
from rich.console import Console

from graphc import zoo
from graphc.errors import GraphcError
from graphc.tracing import trace
from placement.plan import Plan
from runtime.distributed import DistributedExecutor, init_from_env
from runtime.measure import measure
from runtime.partition import PartitionedProgram, partition
from runtime.schedule import SCHEDULES
from runtime.step import split_batch, zoo_loss


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


# -- graphc run ---------------------------------------------------------------------------------------

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``graphc run`` (and of the worker it starts)."""
    parser.add_argument("model", help=f"a zoo network: {', '.join(zoo.NAMES)}")
    parser.add_argument("--plan", required=True, help="the plan to run (JSON, made for this model, size and batch)")
    parser.add_argument("-b", "--batch-size", type=int, default=1, help="the batch the plan was made for")
    parser.add_argument("--size", choices=zoo.SIZES, default="full", help="zoo configuration")
    parser.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE", help="override a zoo knob (repeatable)")
    parser.add_argument("--granularity", choices=("op", "module"), help="as the plan's graph was traced (default: read from the plan)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--schedule", choices=SCHEDULES, default="gpipe", help="pipeline schedule of a pipelined plan")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a rank waits for another before failing")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    parser.add_argument("--json", dest="json_out", help="write the measurement as JSON")
    hosts = parser.add_argument_group("hosts (torchrun)")
    hosts.add_argument("--nnodes", type=int, default=1, help="hosts taking part")
    hosts.add_argument("--node-rank", type=int, default=0, help="this host's index")
    hosts.add_argument("--master-addr", help="the address of host 0, which every host reaches (needed with --nnodes > 1)")
    hosts.add_argument("--master-port", type=int, default=29500, help="a free port on host 0")
    hosts.add_argument("--nproc-per-node", type=int, help="ranks on this host (default: the plan's devices / nnodes)")
    parser.add_argument("--dry-run", action="store_true", help="print the command and the partitioned programs; start nothing")


def cmd_run(args: argparse.Namespace) -> int:
    """``graphc run``: start one rank per device of the plan with torchrun; returns torchrun's status."""
    plan = Plan.load(args.plan)
    args.granularity = plan_granularity(args.granularity, plan)
    devices = len(plan.devices_used())
    nproc = args.nproc_per_node or -(-devices // args.nnodes)
    if nproc * args.nnodes != devices:
        raise GraphcError(
            f"the plan uses {devices} devices; {args.nnodes} host(s) x {nproc} rank(s) start {nproc * args.nnodes}: "
            "pass --nproc-per-node so that every device gets a rank"
        )
    command = torchrun_command(args, nproc)
    if args.dry_run:
        print(shlex.join(command))
        print(_partition(args, plan)[1])
        return 0
    # Refuse a plan made for another model or other shapes here, once, before any rank starts (traced
    # on the meta device: nothing is allocated).
    zm = _build(args, "meta")
    plan.check_matches(trace(zm.model, zm.example_inputs, granularity=args.granularity, name=args.model).graph)
    return subprocess.call(command)


def plan_granularity(given: str | None, plan: Plan) -> str:
    """The granularity to trace the model at: the one given, else the one the plan's graph was traced at
    (plans embed their graph), else ``module`` (the default of ``graphc plan``)."""
    if given:
        return given
    traced_at = plan.graph.meta.get("granularity") if plan.graph is not None else None
    return traced_at if traced_at in ("op", "module") else "module"


def torchrun_command(args: argparse.Namespace, nproc: int) -> list[str]:
    """The ``torchrun`` command line for ``graphc run`` arguments, with ``nproc`` ranks on this host."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={args.nnodes}", f"--nproc-per-node={nproc}"]
    if args.nnodes == 1:
        command.append("--standalone")
    elif not args.master_addr:
        raise GraphcError("--nnodes > 1 needs --master-addr, the address of host 0, the same on every host")
    else:  # static rendezvous: host h gets ranks h * nproc .. (h + 1) * nproc - 1, so devices map to hosts
        command += [f"--node-rank={args.node_rank}", f"--master-addr={args.master_addr}", f"--master-port={args.master_port}"]
    worker = [args.model, "--plan", str(Path(args.plan).resolve()), "--batch-size", str(args.batch_size), "--size", args.size]
    for knob in args.knob:
        worker += ["--knob", knob]
    if args.granularity:
        worker += ["--granularity", args.granularity]
    worker += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    worker += ["--optimizer", args.optimizer, "--lr", str(args.lr), "--schedule", args.schedule]
    worker += ["--timeout", str(args.timeout), "--threads", str(args.threads)]
    if args.json_out:
        worker += ["--json", str(Path(args.json_out).resolve())]
    return command + ["-m", "runtime.launch", *worker]


def _knobs(pairs: list[str]) -> dict[str, Any]:
    knobs = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise GraphcError(f"--knob {pair!r}: expected NAME=VALUE, e.g. --knob dropout=0.0")
        try:
            knobs[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            knobs[name] = text
    return knobs


def _build(args: argparse.Namespace, device: str = "cpu") -> zoo.ZooModel:
    if args.model not in zoo.NAMES:
        raise GraphcError(f"graphc run takes a zoo network ({', '.join(zoo.NAMES)}), got {args.model!r}")
    return zoo.build(args.model, batch_size=args.batch_size, size=args.size, device=device, **_knobs(args.knob))


def _partition(args: argparse.Namespace, plan: Plan) -> tuple[zoo.ZooModel, PartitionedProgram]:
    """Build and trace the model as the plan expects, and partition it (on one microbatch when pipelined)."""
    zm = _build(args)
    program = trace(zm.model, zm.example_inputs, granularity=args.granularity, name=args.model)
    m = plan.microbatches
    if m == 1:
        return zm, partition(program, plan)
    micro = trace(zm.model, split_batch(zm.example_inputs, m)[0], granularity=args.granularity, name=args.model)
    return zm, partition(micro.graph_module, plan, program.graph)


def worker_main(argv: list[str] | None = None) -> int:
    """One rank of ``graphc run`` (what torchrun starts)."""
    parser = argparse.ArgumentParser(prog="python -m runtime.launch", description="one rank of graphc run")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    try:
        init_from_env()
        plan = Plan.load(args.plan)
        args.granularity = plan_granularity(args.granularity, plan)
        zm, parts = _partition(args, plan)
        inputs, targets, loss_fn = zm.example_inputs, zm.targets, zoo_loss(zm)
        optimizer = OPTIMIZERS[args.optimizer]
        executor = DistributedExecutor(
            parts,
            loss_fn=loss_fn,
            optimizer=lambda params: optimizer(params, lr=args.lr),
            schedule=args.schedule,
            timeout_s=args.timeout,
        )
        del zm, parts  # this rank keeps only its own parameters
        result = measure(executor, inputs, targets, steps=args.steps, warmup=args.warmup, plan=plan)
        if executor.is_output_rank:
            devices = len(executor.schedule.actions)
            console.print(result.table(f"{args.model} on {devices} rank(s), plan {Path(args.plan).name}"))
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(result.to_dict(), indent=1))
        executor.close()
    except GraphcError as exc:
        print(f"graphc run: rank {os.environ.get('RANK', '?')}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
