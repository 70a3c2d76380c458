"""``graphc run``: start one rank per device of a plan with torchrun, supervise it, and the worker it starts.

``graphc run`` (:func:`cmd_run`) builds a ``torchrun`` command line (``python -m torch.distributed.run``)
that starts one worker per device of the plan, on this host or, with ``--nnodes``/``--node-rank``/
``--master-addr``, on each of several hosts (run the same command on every host with its own
``--node-rank``); a plan with parameter servers (:class:`placement.sync.ParameterServerSync`) gets
one more rank per server. Host ``h`` runs ranks ``h * nproc .. (h + 1) * nproc - 1``, and rank ``r`` runs the
plan's ``r``-th device in natural order of names, so name a multi-host plan's devices host by host
(``h0/gpu0``, ``h0/gpu1``, ..., ``h1/gpu0``, as the cluster presets do). On hosts with several network
interfaces (or in network namespaces) tell gloo which one joins the hosts, e.g. ``GLOO_SOCKET_IFNAME=eth0``
in every host's environment: gloo otherwise binds the address the host name resolves to. Every worker runs
:func:`worker_main` (``python -m graphc.app.run``): it builds the zoo model, traces it, checks and
partitions the plan, trains with a :class:`~runtime.distributed.DistributedExecutor`, and the output
rank prints the measured step and memory next to the plan's prediction (``--json`` also keeps every
step's loss). Ranks build the same partition
independently: tracing and partitioning are deterministic. The batch size and granularity default to
the plan's, and a plan made for other hardware than this machine's is run with a warning that its
prediction does not apply.

Two kinds of run have no schedule: ``--sync easgd|eamsgd|async-easgd|local-sgd|diloco`` trains a pure
data-parallel plan's replicas with an averaging strategy (:mod:`graphc.app.run_averaging`, async EASGD's
center servers as extra ranks after the workers), and a plan with asynchronous parameter servers
(``ParameterServerSync`` with ``staleness > 0``) runs :func:`runtime.servers.train_async`
(:mod:`graphc.app.run_async_servers`). Their ranks are numbered as above and report failures the same way.

Faults. ``graphc run`` supervises torchrun (:func:`supervise`): a rank that fails writes a
:class:`~runtime.faults.FaultReport` (JSON), and on the first one ``graphc run`` ends torchrun and its
ranks at once (rather than after torchrun's 30 s grace) and reports the failed rank, its device and
what it was doing, instead of torchrun's traceback. A hung rank is reported ``--timeout`` seconds after
it stopped answering, and the command ends a few seconds later.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console

from graphc.app.argtypes import (
    non_negative_int,
    output_file,
    port_number,
    positive_int,
    positive_number,
)
from graphc.app.run_async_servers import (
    async_server_roles,
    is_async_server_plan,
    train_async_servers,
)
from graphc.app.run_averaging import (
    AVERAGING_OPTIONS,
    STRATEGIES,
    add_averaging_arguments,
    averaging_worker_args,
    averaging_workers,
    check_averaging_run,
    no_exchange_warning,
    resolve_chosen,
    train_averaging,
)
from graphc.app.run_timeline import predicted_units, write_gantt, write_trace
from graphc.frontend import zoo
from graphc.frontend.tracing import trace
from graphc.ir.errors import ConfigurationError, GraphcError, MismatchError
from placement.cluster import Cluster
from placement.plan import Plan
from placement.presets import cluster_presets
from placement.schedules import SCHEDULES
from runtime.distributed import DistributedExecutor, init_from_env
from runtime.errors import RunFailed
from runtime.faults import REPORTS_ENV, FaultReport
from runtime.launch import end_rank
from runtime.measure import Measurement, measure
from runtime.partition import PartitionedProgram, plan_ranks
from runtime.rebuild import partition_model

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
# torchrun's --shutdown-timeout: once graphc run stops it, ranks get SIGTERM, then SIGKILL this much later.
SHUTDOWN_S = 2
# How often graphc run looks for fault reports.
POLL_S = 0.05
# For graphc's own tests only: ``kill:R`` or ``hang:R`` makes rank R die or hang as its first forward
# starts (see _inject_test_fault).
TEST_FAULT_ENV = "GRAPHC_TEST_FAULT"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``graphc run`` (and of the worker it starts); bad values end the command with
    exit status 2 before anything starts."""
    parser.usage = "%(prog)s MODEL --plan PLAN [options]"
    parser.add_argument("model", help=f"a zoo network: {', '.join(zoo.NAMES)}")
    parser.add_argument("--plan", required=True, help="the plan to run (JSON, made for this model, size and batch); required")
    parser.add_argument("-b", "--batch-size", type=positive_int, help="default: the batch size the plan was made for")
    parser.add_argument("--size", choices=zoo.SIZES, default="full", help="zoo configuration (default: %(default)s)")
    parser.add_argument("--knob", action="append", metavar="NAME=VALUE", help="override a zoo knob (repeatable; default: none)")
    parser.add_argument("--granularity", choices=("op", "module"), help="default: as the plan's graph was traced")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed training steps (default: %(default)s)")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd", help="default: %(default)s")
    parser.add_argument("--lr", type=positive_number, default=0.01, help="learning rate (default: %(default)s)")
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="the schedule the ranks run (default: gpipe for a plan with pipeline stages, else node-order)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_number,
        default=60.0,
        help="seconds a rank waits for another before reporting it dead or hung (default: %(default)s)",
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="intra-op threads per rank (default: %(default)s)")
    parser.add_argument("--json", dest="json_out", help="write the measurement as JSON (default: not written)")
    parser.add_argument("--trace", type=output_file,
                        help="write the median step's measured timeline beside the predicted one, for Perfetto / chrome://tracing (default: not written)")  # fmt: skip
    parser.add_argument("--gantt", type=output_file, help="draw the two timelines as a PNG (default: not drawn)")
    hosts = parser.add_argument_group("hosts (torchrun)")
    hosts.add_argument("--nnodes", type=positive_int, default=1, help="hosts taking part (default: %(default)s)")
    hosts.add_argument("--node-rank", type=non_negative_int, default=0, help="this host's index (default: %(default)s)")
    hosts.add_argument("--master-addr", help="the address of host 0, which every host reaches (default: none; needed with --nnodes > 1)")
    hosts.add_argument("--master-port", type=port_number, default=29500, help="a free port on host 0 (default: %(default)s)")
    hosts.add_argument("--nproc-per-node", type=positive_int, help="ranks on this host (default: the plan's devices / nnodes)")
    parser.add_argument("--dry-run", action="store_true", help="print the command and the partitioned programs; start nothing (default: off)")
    add_averaging_arguments(parser)


def cmd_run(args: argparse.Namespace) -> int:
    """``graphc run``: start one rank per device of the plan with torchrun and supervise it.

    Returns 0 when every rank finished. When a rank fails, raises :class:`~runtime.errors.RunFailed`
    naming the failed rank, its device and what it was doing, once torchrun and its ranks are gone
    (within the ``--timeout`` plus a few seconds of the failure).
    """
    plan = Plan.load(args.plan)
    if plan.mode != "training":
        raise ConfigurationError(
            f"graphc run trains, and {Path(args.plan).name} is a plan for {plan.mode} (its schedule runs forwards "
            "only): make it for training (mode='training', the default of graphc plan)"
        )
    args.granularity = plan_granularity(args.granularity, plan)
    args.batch_size = plan_batch_size(args.batch_size, plan)
    chosen = resolve_chosen(args, plan)
    if chosen:
        print(f"graphc run: {chosen}", file=sys.stderr)
    devices = _ranks(args, plan)
    nproc = args.nproc_per_node or -(-devices // args.nnodes)
    if nproc * args.nnodes != devices:
        raise ConfigurationError(
            f"the plan uses {devices} devices; {args.nnodes} host(s) x {nproc} rank(s) start {nproc * args.nnodes}: "
            "pass --nproc-per-node so that every device gets a rank"
        )
    warning = hardware_warning(plan)
    if warning:
        print(f"graphc run: warning: {warning}", file=sys.stderr)
    command = torchrun_command(args, nproc)
    if args.dry_run:
        print(shlex.join(command))
        if args.sync:
            print(_averaging_ranks(args, plan))
        else:
            print(async_server_roles(plan) if is_async_server_plan(plan) else _partition(args, plan)[1])
        return 0
    # Refuse a plan made for another model or other shapes here, once, before any rank starts (traced
    # on the meta device: nothing is allocated).
    zm = _build(args, "meta")
    plan.check_matches(trace(zm.model, zm.example_inputs, granularity=args.granularity, name=args.model).graph)
    return supervise(command)


def _ranks(args: argparse.Namespace, plan: Plan) -> int:
    """How many ranks the run starts: the plan's devices and servers, or with ``--sync`` the workers and
    async EASGD's servers (:mod:`graphc.app.run_averaging`); averaging options without ``--sync`` are refused."""
    unscheduled = f"--sync {args.sync}" if args.sync else "a plan with asynchronous parameter servers" if is_async_server_plan(plan) else None
    if unscheduled and args.schedule:
        raise ConfigurationError(f"--schedule {args.schedule}: {unscheduled} trains in a loop of its own, with no schedule; leave --schedule out")
    if unscheduled and (args.trace or args.gantt):
        raise ConfigurationError(f"--trace and --gantt draw a scheduled step; {unscheduled} trains in a loop of its own: leave them out")
    if args.sync:
        warning = no_exchange_warning(args)
        if warning:
            print(f"graphc run: warning: {warning}", file=sys.stderr)
        return check_averaging_run(args, plan)
    given = [f"--{name.replace('_', '-')}" for name in AVERAGING_OPTIONS if getattr(args, name) not in (None, False)]
    if given:
        raise ConfigurationError(f"{', '.join(given)}: options of an averaging strategy; choose one with --sync ({', '.join(STRATEGIES)})")
    if is_async_server_plan(plan):
        async_server_roles(plan)  # refuses a plan that is not pure data parallel
    return len(plan_ranks(plan))


def _averaging_ranks(args: argparse.Namespace, plan: Plan) -> str:
    """What each rank of a ``--sync`` run does, one line per rank (for ``--dry-run``)."""
    workers = averaging_workers(plan, args.sync)
    lines = [f"rank {r}: {args.sync} worker on {device}, share {r + 1} of {len(workers)} of each batch" for r, device in enumerate(workers)]
    lines += [f"rank {r}: center server" for r in range(len(workers), check_averaging_run(args, plan))]
    return "\n".join(lines)


def plan_granularity(given: str | None, plan: Plan) -> str:
    """The granularity to trace the model at: the one given, else the one the plan's graph was traced at
    (plans embed their graph), else ``module`` (the default of ``graphc plan``)."""
    if given:
        return given
    traced_at = plan.graph.meta.get("granularity") if plan.graph is not None else None
    return traced_at if traced_at in ("op", "module") else "module"


def plan_batch_size(given: int | None, plan: Plan) -> int:
    """The batch size to run: the one the plan was made for (its embedded graph records it); a batch
    size given must be that one, since the plan's shapes, times and memory are those of its batch."""
    planned = plan.graph.batch_size() if plan.graph is not None else None
    if planned is None:
        if given is None:
            raise ConfigurationError("the plan does not record the batch size it was made for: pass -b/--batch-size")
        return given
    if given is not None and given != planned:
        raise MismatchError(
            f"the plan was made for batch size {planned}, not -b {given}: leave -b out (or pass -b {planned}), "
            f"or make a plan for batch size {given} (graphc plan ... -b {given})"
        )
    return planned


def hardware_warning(plan: Plan) -> str | None:
    """Why the plan's predictions (step time, memory) do not apply to this machine, or None.

    The plan's cluster (embedded, else the preset of its name) says what its devices are; ranks run on
    CUDA GPUs where there are some, else on CPU worker processes."""
    cluster = plan.cluster or (Cluster.preset(plan.cluster_name) if plan.cluster_name in cluster_presets() else None)
    if cluster is None:
        return None
    used = [cluster.device(name) for name in plan.devices_used() if name in cluster]
    kinds = dict.fromkeys(d.kind for d in used)
    planned = ", ".join(f"{sum(d.kind == k for d in used)} x {k}" for k in kinds)
    if torch.cuda.is_available():
        here = torch.cuda.get_device_name()
        fits = all(d.category == "gpu" and d.kind.split("-")[0].lower() in here.lower() for d in used)
    else:
        here = "CPU worker processes"
        fits = all(d.category == "cpu" for d in used)
    if fits:
        return None
    return (
        f"the plan was made for cluster {plan.cluster_name!r} ({planned}), but this machine runs its ranks on {here}: "
        "its predicted step time and memory do not apply here (the run measures them; for a prediction of this "
        "machine, plan with -c local)"
    )


def torchrun_command(args: argparse.Namespace, nproc: int) -> list[str]:
    """The ``torchrun`` command line for ``graphc run`` arguments, with ``nproc`` ranks on this host."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={args.nnodes}", f"--nproc-per-node={nproc}"]
    command.append(f"--shutdown-timeout={SHUTDOWN_S}")
    if args.nnodes == 1:
        command.append("--standalone")
    elif not args.master_addr:
        raise ConfigurationError("--nnodes > 1 needs --master-addr, the address of host 0, the same on every host")
    else:  # static rendezvous: host h gets ranks h * nproc .. (h + 1) * nproc - 1, so devices map to hosts
        command += [f"--node-rank={args.node_rank}", f"--master-addr={args.master_addr}", f"--master-port={args.master_port}"]
    worker = [args.model, "--plan", str(Path(args.plan).resolve()), "--size", args.size]
    if args.batch_size is not None:
        worker += ["--batch-size", str(args.batch_size)]
    for knob in args.knob or ():
        worker += ["--knob", knob]
    if args.granularity:
        worker += ["--granularity", args.granularity]
    worker += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    worker += ["--optimizer", args.optimizer, "--lr", str(args.lr)]
    if args.schedule:
        worker += ["--schedule", args.schedule]
    worker += ["--timeout", str(args.timeout), "--threads", str(args.threads)]
    for option, path in (("--json", args.json_out), ("--trace", args.trace), ("--gantt", args.gantt)):
        if path:
            worker += [option, str(Path(path).resolve())]
    if args.sync:
        worker += averaging_worker_args(args)
    return command + ["-m", "graphc.app.run", *worker]


def supervise(command: list[str]) -> int:
    """Run the torchrun ``command`` and end it as soon as a rank reports a failure.

    torchrun runs in its own process group, its ranks write :class:`~runtime.faults.FaultReport` files
    into a fresh directory (:data:`~runtime.faults.REPORTS_ENV`), and its stderr (which its ranks share)
    is copied to ours until the first report: what follows is torchrun's account of the shutdown, which
    the report replaces. On a report, torchrun gets SIGTERM and passes it on to its ranks (SIGKILL
    :data:`SHUTDOWN_S` later), rather than waiting its 30 s grace. Returns 0, 130 on Ctrl-C; raises
    :class:`~runtime.errors.RunFailed` on a failure.
    """
    with tempfile.TemporaryDirectory(prefix="graphc-run-") as reports:
        torchrun = _Torchrun(command, Path(reports))
        try:
            report = torchrun.wait_for_failure()
        except KeyboardInterrupt:
            return 130
        finally:
            torchrun.stop()
    if report is not None:
        raise RunFailed(f"{report.headline()}.\n{report.message}")
    if torchrun.process.returncode:
        raise RunFailed(f"torchrun ended with status {torchrun.process.returncode} before any rank reported a failure; see its messages above")
    return 0


class _Torchrun:
    """A torchrun process of :func:`supervise`, its fault-report directory and its stderr relay (which
    stops copying once a rank has reported or torchrun is being stopped)."""

    def __init__(self, command: list[str], reports: Path) -> None:
        self.reports = reports
        self.stopping = threading.Event()
        env = {**os.environ, REPORTS_ENV: str(reports)}
        env.setdefault("TORCH_LOGS", "-distributed")  # torchrun's warnings as it ends ranks: the report says it
        env.setdefault("OMP_NUM_THREADS", "1")  # else torchrun warns that it sets it; ranks set their own threads
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, start_new_session=True)
        self.relay = threading.Thread(target=self._relay, name="graphc-run-stderr", daemon=True)
        self.relay.start()

    def wait_for_failure(self) -> FaultReport | None:
        """The first fault report, as soon as there is one; None if torchrun ends without one."""
        while self.process.poll() is None:
            report = FaultReport.first(self.reports)
            if report is not None:
                return report
            time.sleep(POLL_S)
        return FaultReport.first(self.reports)

    def stop(self) -> None:
        """End torchrun and its ranks (SIGTERM; SIGKILL to its process group if it outlives its own
        shutdown), and finish relaying its stderr."""
        if self.process.poll() is None:
            self.stopping.set()  # what it says from now on is its account of being stopped
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(SHUTDOWN_S + 1)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.relay.join(timeout=1)

    def _relay(self) -> None:
        assert self.process.stderr is not None
        for line in iter(self.process.stderr.readline, b""):
            if not (self.stopping.is_set() or FaultReport.files(self.reports)):
                sys.stderr.write(line.decode(errors="replace"))
                sys.stderr.flush()
        self.process.stderr.close()


def _knobs(pairs: list[str] | None) -> dict[str, Any]:
    knobs = {}
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        if not sep:
            raise ConfigurationError(f"--knob {pair!r}: expected NAME=VALUE, e.g. --knob dropout=0.0")
        try:
            knobs[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            knobs[name] = text
    return knobs


def _build(args: argparse.Namespace, device: str = "cpu") -> zoo.ZooModel:
    """The zoo model of ``args``; an unknown model or a bad ``--knob`` is a one-line error."""
    if args.model not in zoo.NAMES:
        raise ConfigurationError(f"graphc run takes a zoo network ({', '.join(zoo.NAMES)}), got {args.model!r}")
    try:
        return zoo.build(args.model, batch_size=args.batch_size, size=args.size, device=device, **_knobs(args.knob))
    except ValueError as exc:  # the zoo's own checks of its knobs
        raise ConfigurationError(f"--knob: {exc}") from None


def _partition(args: argparse.Namespace, plan: Plan) -> tuple[zoo.ZooModel, PartitionedProgram]:
    """Build and trace the model as the plan expects, and partition it (on one microbatch when pipelined)."""
    zm = _build(args)
    return zm, partition_model(zm.model, zm.example_inputs, plan, granularity=args.granularity, name=args.model)


def worker_main(argv: list[str] | None = None) -> int:
    """One rank of ``graphc run`` (what torchrun starts); returns 0, 2 on a graphc error, 1 on another.

    A failure is written as a :class:`~runtime.faults.FaultReport` into the directory ``graphc run``
    names (:data:`~runtime.faults.REPORTS_ENV`), which prints it; without one (a torchrun of the
    user's own) a graphc error is printed here and any other error raised."""
    parser = argparse.ArgumentParser(prog="python -m graphc.app.run", description="one rank of graphc run")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rank, device = int(os.environ.get("RANK", "0")), ""
    try:
        plan = Plan.load(args.plan)
        args.granularity = plan_granularity(args.granularity, plan)
        args.batch_size = plan_batch_size(args.batch_size, plan)
        if args.sync:  # every rank gloo: async EASGD's servers are CPU ranks on the one process group
            init_from_env("gloo", timeout_s=args.timeout)
            workers = averaging_workers(plan, args.sync)
            device = workers[rank] if rank < len(workers) else f"center server rank {rank}"
            _train_unscheduled(args, plan, train_averaging)
            return 0
        if is_async_server_plan(plan):  # no schedule: runtime.servers' loop, on gloo (the servers are CPU ranks)
            init_from_env("gloo", timeout_s=args.timeout)
            device = plan_ranks(plan)[rank]
            _train_unscheduled(args, plan, train_async_servers)
            return 0
        init_from_env()
        zm, parts = _partition(args, plan)
        device = parts.ranks[rank] if rank < len(parts.ranks) else ""
        _train(args, plan, zm, parts)
    except GraphcError as exc:
        return _report(exc, rank, device, 2)
    except Exception as exc:
        if not os.environ.get(REPORTS_ENV):
            raise
        return _report(exc, rank, device, 1, "".join(traceback.format_exception(exc)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _train(args: argparse.Namespace, plan: Plan, zm: zoo.ZooModel, parts: PartitionedProgram) -> None:
    """Train this rank's part of ``parts``; the output rank prints (and saves) the measurement."""
    optimizer = OPTIMIZERS[args.optimizer]
    executor = DistributedExecutor(
        parts,
        loss_fn=zoo.zoo_loss(zm),
        optimizer=lambda params: optimizer(params, lr=args.lr),
        schedule=args.schedule,
        timeout_s=args.timeout,
    )
    _inject_test_fault(executor, os.environ.get(TEST_FAULT_ENV, ""))
    inputs, targets = zm.example_inputs, zm.targets
    del zm, parts  # this rank keeps only its own parameters
    result = measure(executor, inputs, targets, steps=args.steps, warmup=args.warmup, plan=plan)
    if executor.is_output_rank:
        devices = len(executor.schedule.actions)
        Console().print(result.table(f"{args.model} on {devices} rank(s), plan {Path(args.plan).name}"))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result.to_dict(), indent=1))
        if args.trace or args.gantt:
            _write_timelines(args, plan, executor, result)
    executor.close()


def _write_timelines(args: argparse.Namespace, plan: Plan, executor: DistributedExecutor, result: Measurement) -> None:
    """``--trace`` and ``--gantt``: the median step's measured timeline beside the plan's simulation of
    the schedule the ranks ran (:mod:`graphc.app.run_timeline`), or alone when the plan cannot be
    simulated here (it carries no graph or cluster)."""
    try:
        predicted = plan.simulate(schedule=executor.schedule)
    except GraphcError as exc:
        print(f"graphc run: the timelines show the measurement alone: {exc}", file=sys.stderr)
        predicted = None
    if args.trace:
        write_trace(args.trace, result.timeline, predicted)
    if args.gantt:
        title = f"{args.model}, plan {Path(args.plan).name}: the median step, predicted (pale) and measured"
        write_gantt(args.gantt, result.timeline, predicted_units(predicted) if predicted is not None else {}, title)


def _train_unscheduled(args: argparse.Namespace, plan: Plan, train: Callable[..., Any]) -> None:
    """This rank's part of a run without a schedule: ``train(args, plan, zoo_model, make_optimizer)``
    (:func:`~graphc.app.run_averaging.train_averaging` or
    :func:`~graphc.app.run_async_servers.train_async_servers`), whose record rank 0 prints (and saves)."""
    optimizer = OPTIMIZERS[args.optimizer]
    run = train(args, plan, _build(args), lambda params: optimizer(params, lr=args.lr))
    if run is not None:
        Console().print(run.table(f"{args.model}, plan {Path(args.plan).name}"))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(run.to_dict(), indent=1))


def _report(error: BaseException, rank: int, device: str, status: int, message: str | None = None) -> int:
    """Hand ``error`` to ``graphc run`` as a fault report, or print it where no one collects reports;
    returns ``status``."""
    report = FaultReport.of(error, rank, device, message)
    directory = os.environ.get(REPORTS_ENV)
    if directory:
        report.save(directory)
    else:
        print(f"graphc run: rank {rank}: error: {report.message}", file=sys.stderr)
    return status


def _inject_test_fault(executor: DistributedExecutor, spec: str) -> None:
    """For graphc's own tests only (:data:`TEST_FAULT_ENV`): ``kill:R`` kills rank R with SIGKILL as its
    first forward starts, ``hang:R`` makes it hang there; a line on stderr marks the moment."""
    if not spec:
        return
    kind, _, target = spec.partition(":")
    if kind not in ("kill", "hang") or not target.isdigit():
        raise ConfigurationError(f"{TEST_FAULT_ENV}={spec!r}: expected kill:RANK or hang:RANK")
    if int(target) != executor.rank:
        return
    if executor.part is None:
        raise ConfigurationError(f"{TEST_FAULT_ENV}={spec!r}: rank {target} is a parameter server, which runs no forward")

    def fault(*args: Any) -> None:
        print(f"graphc test fault: rank {executor.rank} {'is killed' if kind == 'kill' else 'hangs'} now", file=sys.stderr, flush=True)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(3600)

    executor.part.module.forward = fault


if __name__ == "__main__":
    end_rank(worker_main())
