"""``graphc run --sync easgd|eamsgd|async-easgd|local-sgd|diloco``: a data-parallel plan trained with an
averaging strategy of :mod:`runtime.averaging` instead of a gradient all-reduce every step.

The plan must be pure data parallel: one stage, the whole model, replicated over ``N >= 2`` devices
(``graphc plan ... --objective throughput --parallel data``). Rank ``r < N`` is a worker on the plan's
``r``-th device (natural order of names); it trains its own replica of the whole model on its share of
every batch (rows ``r B / N .. (r + 1) B / N - 1`` of the ``B`` samples) with the user's optimizer
wrapped by the strategy, which every ``tau`` (EASGD) or ``H`` (local SGD, DiLoCo) local steps exchanges
with the others. Asynchronous EASGD adds ``S`` (``--servers``) server ranks after the workers, CPU
processes holding the center's shards (:class:`~runtime.averaging.CenterServer`), as the talk's CPU
parameter servers. The plan's own gradient sync is not used: the strategy replaces it.

Settings (``graphc run`` options, recorded as a :mod:`placement.sync` averaging record):

* ``easgd``, ``eamsgd``, ``async-easgd``: ``--tau`` (default 10), ``--alpha`` (default ``0.9 / N``, the
  paper's ``beta = N alpha = 0.9``); EAMSGD's workers take Nesterov SGD steps of momentum 0.9 at ``--lr``;
  async EASGD's ``--prefetch p`` (``0 <= p < tau``, default 0) and ``--servers S`` (default 1);
* ``local-sgd``, ``diloco``: ``--period H`` (default 10 for local SGD, DiLoCo's paper's 500), and
  DiLoCo's outer Nesterov step ``--outer-lr`` (default 0.7, momentum 0.9).

All ranks use gloo (the servers are CPU ranks, and one process group carries both kinds of message),
with ``--timeout`` as the process group's timeout: a rank that waits longer for another reports it dead
or hung, so it must exceed the time between two exchanges (``tau`` local steps), or a server counts a
slow worker as lost.
A run takes ``--warmup + --steps`` local steps per worker; ``--checkpoint DIR`` saves every rank's state
(:func:`runtime.averaging.save_checkpoint`) at the end, and ``--resume`` first loads it, so the run goes
on from the saved step count. ``--json`` writes :class:`AveragingRun`: every worker's loss per step, the
step times, each rank's traffic (bytes sent and received, exchanges) and the strategy's settings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from rich.table import Table

from graphc.app.argtypes import non_negative_int, positive_int, positive_number
from graphc.app.averaging_strategy import (
    ELASTIC,
    LOCAL,
    STRATEGIES,
    MakeOptimizer,
    averaging_record,
    build_strategy,
    strategy_name,
)
from graphc.frontend import zoo
from graphc.ir.errors import ConfigurationError
from placement.plan import Plan
from placement.sync import (
    AveragingSync,
    ElasticAveragingSync,
    LocalSGDSync,
    any_sync_from_dict,
    sync_to_dict,
)
from runtime.averaging import (
    AsyncLayout,
    CenterServer,
    DiLoCo,
    checkpoint_path,
    elastic_rates,
    load_checkpoint,
    save_checkpoint,
)
from runtime.averaging.easgd import DEFAULT_MOMENTUM, DEFAULT_TAU
from runtime.averaging.local_sgd import DEFAULT_H, DILOCO_H, DILOCO_OUTER_LR
from runtime.gather import all_gather_json
from runtime.partition import device_sort_key
from runtime.step import split_batch

#: ``--sync chosen``: the strategy the plan chose by time to accuracy (:func:`resolve_chosen`).
CHOSEN = "chosen"


def add_averaging_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``graphc run`` that train a data-parallel plan with an averaging strategy."""
    group = parser.add_argument_group(
        "averaging strategies (a data-parallel plan's replicas train alone and exchange now and then)"
    )
    group.add_argument(
        "--sync",
        choices=(*STRATEGIES, CHOSEN),
        help="train with this strategy instead of the plan's gradient sync; chosen: the one the plan chose by "
        "time to accuracy (graphc plan --convergence) (default: the plan's gradient sync)",
    )
    group.add_argument(
        "--tau",
        type=positive_int,
        help=f"EASGD family: local steps between exchanges (default: {DEFAULT_TAU})",
    )
    group.add_argument(
        "--alpha",
        type=positive_number,
        help="EASGD family: the moving rate, 0 < alpha <= 1 (default: 0.9 / workers)",
    )
    group.add_argument(
        "--prefetch",
        type=non_negative_int,
        help="async-easgd: fetch the center this many steps before the exchange (default: 0)",
    )
    group.add_argument(
        "--servers",
        type=positive_int,
        help="async-easgd: server ranks holding the center's shards (default: 1)",
    )
    group.add_argument(
        "--period",
        type=positive_int,
        help=f"local-sgd, diloco: local steps between averagings H (default: {DEFAULT_H}, diloco {DILOCO_H})",
    )
    group.add_argument(
        "--outer-lr",
        type=positive_number,
        help=f"diloco: the outer Nesterov step's rate (default: {DILOCO_OUTER_LR})",
    )
    group.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="save every rank's state here at the end (default: not saved)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="first load the state saved in --checkpoint DIR and go on from it (default: off)",
    )


# Which strategies take each option (the others refuse it).
_TAKEN_BY = {
    "tau": ELASTIC,
    "alpha": ELASTIC,
    "prefetch": ("async-easgd",),
    "servers": ("async-easgd",),
    "period": LOCAL,
    "outer_lr": ("diloco",),
}


#: The options above besides --sync (graphc run refuses them without it).
AVERAGING_OPTIONS = (*_TAKEN_BY, "checkpoint", "resume")


def resolve_chosen(args: argparse.Namespace, plan: Plan) -> str | None:
    """Replace ``--sync chosen`` in ``args`` by the strategy and settings ``plan`` chose by time to accuracy
    (``plan.settings["parallel"]["sync_choice"]``, :func:`placement.hybrid.record_sync_choice`); a gradient
    sync chosen (synchronous SGD) sets ``args.sync`` to None: the plan's schedule runs. Returns the
    choice's reason (None without ``--sync chosen``); a plan without a choice is refused, saying why."""
    if args.sync != CHOSEN:
        return None
    choice = plan.settings.get("parallel", {}).get("sync_choice")
    if choice is None:
        raise ConfigurationError(
            "--sync chosen runs the strategy the plan chose by time to accuracy, and this plan records no choice: "
            "make it with graphc plan ... --objective throughput --parallel data --convergence convergence.json, "
            f"or name a strategy ({', '.join(STRATEGIES)})"
        )
    if "none" in choice:
        raise ConfigurationError(f"--sync chosen: the plan chose no strategy ({choice['none']}); name one ({', '.join(STRATEGIES)})")
    given = [f"--{name.replace('_', '-')}" for name in _TAKEN_BY if getattr(args, name) is not None]
    if given:
        raise ConfigurationError(f"{', '.join(given)}: --sync chosen runs the plan's settings; name the strategy with --sync to change them")
    sync = any_sync_from_dict(choice["sync"], "the plan's sync_choice")
    if isinstance(sync, ElasticAveragingSync):
        if sync.momentum not in (0.0, DEFAULT_MOMENTUM):
            raise ConfigurationError(f"--sync chosen: the plan chose EAMSGD with momentum {sync.momentum}; graphc run's EAMSGD takes {DEFAULT_MOMENTUM}")
        args.sync = strategy_name(sync)
        args.tau, args.alpha, args.prefetch = sync.tau, sync.alpha, (sync.prefetch if sync.asynchronous else None)
    elif isinstance(sync, LocalSGDSync):
        args.sync, args.period = strategy_name(sync), sync.period
    else:
        args.sync = None
    return f"the plan chose {choice['chosen']}: {choice['reason']}"


def averaging_sync(args: argparse.Namespace) -> AveragingSync:
    """The averaging record of ``args.sync`` and its options; an option the strategy does not take, or
    a bad value (``prefetch >= tau``, ``alpha > 1``), is a ConfigurationError saying so."""
    for option, takers in _TAKEN_BY.items():
        if getattr(args, option) is not None and args.sync not in takers:
            flag = "--" + option.replace("_", "-")
            raise ConfigurationError(
                f"{flag} is an option of --sync {' or '.join(takers)}, not of --sync {args.sync}"
            )
    if args.sync == "eamsgd" and args.optimizer != "sgd":
        raise ConfigurationError(
            f"--sync eamsgd: EAMSGD's workers take Nesterov SGD steps, not --optimizer {args.optimizer}; leave --optimizer out"
        )
    return averaging_record(args.sync, tau=args.tau, alpha=args.alpha, prefetch=args.prefetch, period=args.period)


def averaging_workers(plan: Plan, sync: str) -> list[str]:
    """The worker devices of a pure data-parallel ``plan`` in rank order; any other plan is refused."""
    how = "make one with graphc plan MODEL --objective throughput --parallel data"
    if len(plan.stages) != 1 or len(plan.stages[0].devices) < 2:
        shape = (
            f"{len(plan.stages)} stages"
            if len(plan.stages) != 1
            else f"one stage on {len(plan.stages[0].devices)} device"
        )
        if not plan.stages:
            shape = f"no stages (a {plan.objective} plan on {len(plan.devices_used())} device(s))"
        raise ConfigurationError(
            f"--sync {sync} trains replicas of the whole model, so it needs a pure data-parallel plan (one stage "
            f"replicated over two or more devices); this plan has {shape}: {how}"
        )
    stage = plan.stages[0]
    outside = sorted(set(plan.assignment) - set(stage.nodes))
    if outside:
        raise ConfigurationError(
            f"--sync {sync}: the plan's stage leaves {len(outside)} node(s) (e.g. {outside[0]!r}) out of the replicas: {how}"
        )
    return sorted(stage.devices, key=device_sort_key)


def check_averaging_run(args: argparse.Namespace, plan: Plan) -> int:
    """Everything ``graphc run --sync`` can check before a rank starts; the number of ranks (workers,
    then async EASGD's servers)."""
    sync = averaging_sync(args)
    workers = len(averaging_workers(plan, args.sync))
    if isinstance(sync, ElasticAveragingSync) and not sync.asynchronous:
        elastic_rates(workers, sync.alpha, None)  # refuses an unstable alpha for this N
    if args.batch_size % workers:
        raise ConfigurationError(
            f"--sync {args.sync}: the batch of {args.batch_size} samples does not split evenly over {workers} workers; "
            f"make the plan for a batch size that is a multiple of {workers}"
        )
    ranks = workers + ((args.servers or 1) if args.sync == "async-easgd" else 0)
    if args.resume:
        if not args.checkpoint:
            raise ConfigurationError(
                "--resume loads the state saved in --checkpoint DIR: pass --checkpoint too"
            )
        missing = [
            r for r in range(ranks) if not checkpoint_path(args.checkpoint, r).exists()
        ]
        if missing:
            raise ConfigurationError(
                f"--resume: {args.checkpoint} has no checkpoint of rank(s) {missing} ({checkpoint_path(args.checkpoint, missing[0])}); "
                f"a run with the same plan and --sync options and --checkpoint {args.checkpoint} writes one file per rank"
            )
    return ranks


def no_exchange_warning(args: argparse.Namespace) -> str | None:
    """Why the run will take no exchange at all (fewer local steps than the period), or None."""
    sync = averaging_sync(args)
    period = sync.tau if isinstance(sync, ElasticAveragingSync) else sync.period
    steps = args.warmup + args.steps
    if steps >= period:
        return None
    return f"--sync {args.sync}: {steps} local steps (--warmup + --steps) take no exchange every {period}; the replicas never meet"


def averaging_worker_args(args: argparse.Namespace) -> list[str]:
    """The options of ``args`` above, as the worker's command line repeats them."""
    argv: list[str] = ["--sync", args.sync]
    for option in _TAKEN_BY:
        value = getattr(args, option)
        if value is not None:
            argv += ["--" + option.replace("_", "-"), str(value)]
    if args.checkpoint:
        argv += ["--checkpoint", os.path.abspath(args.checkpoint)]
    if args.resume:
        argv.append("--resume")
    return argv


@dataclass
class AveragingRun:
    """What a ``graphc run --sync`` recorded (``--json``).

    Attributes:
        strategy: the ``--sync`` name.
        sync: the averaging record (:func:`placement.sync.sync_to_dict`) with the rates in use.
        workers: worker rank -> its plan device.
        servers: async EASGD's server ranks.
        first_step: the local steps taken before this run (non-zero when resumed).
        losses: worker rank -> the loss of each of its local steps in this run (on its share of the batch).
        mean_losses: the workers' mean loss per step.
        steps_ms: the first worker's time per timed step (after --warmup), exchanges included.
        step_ms: their median.
        traffic: rank -> bytes sent and received and exchanges taken part in, over the whole run
            (:class:`runtime.averaging.Traffic`; resumed runs count from the first).
        server_arrivals: server rank -> worker rank -> the pushes it applied (async EASGD).
    """

    strategy: str
    sync: dict[str, Any]
    workers: dict[int, str]
    servers: list[int]
    first_step: int
    losses: dict[int, list[float]]
    mean_losses: list[float]
    steps_ms: list[float]
    step_ms: float
    traffic: dict[int, dict[str, float]]
    server_arrivals: dict[int, dict[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self, title: str) -> Table:
        """Per rank: its role, first and last loss, bytes sent and exchanges."""
        table = Table(title=title)
        for column in (
            "rank",
            "role",
            "first loss",
            "last loss",
            "KB sent",
            "exchanges",
        ):
            table.add_column(column, justify="left" if column == "role" else "right")
        for rank, moved in sorted(self.traffic.items()):
            losses = self.losses.get(rank, [])
            role = (
                f"worker on {self.workers[rank]}"
                if rank in self.workers
                else "center server"
            )
            first, last = (
                (f"{losses[0]:.4f}", f"{losses[-1]:.4f}") if losses else ("", "")
            )
            table.add_row(
                str(rank),
                role,
                first,
                last,
                f"{moved['sent'] / 1e3:.1f}",
                str(int(moved["exchanges"])),
            )
        table.caption = (
            f"{self.strategy}: {self.sync}; median step {self.step_ms:.1f} ms"
        )
        return table


def train_averaging(
    args: argparse.Namespace, plan: Plan, zm: zoo.ZooModel, optimizer: MakeOptimizer
) -> AveragingRun | None:
    """This rank's part of ``graphc run --sync``: a worker's training loop (its local optimizer made by
    ``optimizer(parameters)``) or a center server; on rank 0 the :class:`AveragingRun` of every rank,
    elsewhere None. torch.distributed must be initialised."""
    rank, world = dist.get_rank(), dist.get_world_size()
    sync = averaging_sync(args)
    devices = averaging_workers(plan, args.sync)
    layout = (
        AsyncLayout.servers_last(world, world - len(devices))
        if args.sync == "async-easgd"
        else None
    )
    if layout is not None and rank in layout.servers:
        server = CenterServer(
            layout, sum(p.numel() for p in zm.model.parameters()), alpha=sync.alpha
        )
        if args.resume:
            load_checkpoint(server, args.checkpoint, rank)
        server.serve()
        if args.checkpoint:
            save_checkpoint(server, args.checkpoint, rank)
        mine = {"traffic": asdict(server.traffic), "arrivals": dict(server.arrivals)}
    else:
        mine = _work(args, sync, layout, zm, len(devices), optimizer)
    gathered = all_gather_json(mine)
    if rank != 0:
        return None
    losses = {r: gathered[r]["losses"] for r in range(len(devices))}
    record = sync_to_dict(sync) | gathered[0]["rates"]
    return AveragingRun(
        strategy=args.sync,
        sync=record,
        workers=dict(enumerate(devices)),
        servers=list(range(len(devices), world)),
        first_step=gathered[0]["first_step"],
        losses=losses,
        mean_losses=[statistics.fmean(step) for step in zip(*losses.values())],
        steps_ms=gathered[0]["steps_ms"],
        step_ms=statistics.median(gathered[0]["steps_ms"])
        if gathered[0]["steps_ms"]
        else 0.0,
        traffic={r: gathered[r]["traffic"] for r in range(world)},
        server_arrivals={  # JSON made the worker ranks strings
            r: {int(w): n for w, n in gathered[r]["arrivals"].items()}
            for r in range(len(devices), world)
        },
    )


def _work(
    args: argparse.Namespace,
    sync: AveragingSync,
    layout: AsyncLayout | None,
    zm: zoo.ZooModel,
    workers: int,
    optimizer: MakeOptimizer,
) -> dict[str, Any]:
    """A worker's loop (:mod:`runtime.averaging.strategy`) on its share of the batch; what it recorded."""
    rank = dist.get_rank()
    device = torch.device(
        f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
        if torch.cuda.is_available()
        else "cpu"
    )
    model = zm.model.to(device)
    inputs = [
        x.to(device) for x in split_batch(tuple(zm.example_inputs), workers)[rank]
    ]
    targets = split_batch(zm.targets, workers)[rank].to(device)
    loss_fn = zoo.zoo_loss(zm)
    strategy = build_strategy(sync, model, optimizer, lr=args.lr, outer_lr=args.outer_lr, layout=layout)
    if args.resume:
        load_checkpoint(strategy, args.checkpoint, rank)
    first_step, losses, steps_ms = strategy.steps, [], []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        strategy.optimizer.zero_grad()
        loss = loss_fn(model(*inputs), targets)
        loss.backward()
        strategy.step()
        losses.append(loss.item())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            steps_ms.append((time.perf_counter() - start) * 1e3)
    strategy.finish()
    if args.checkpoint:
        save_checkpoint(strategy, args.checkpoint, rank)
    rates = {
        name: getattr(strategy, name)
        for name in ("alpha", "beta")
        if hasattr(strategy, name)
    }
    if isinstance(strategy, DiLoCo):
        rates["outer_lr"] = strategy.outer.param_groups[0]["lr"]
    return {
        "losses": losses,
        "steps_ms": steps_ms,
        "traffic": asdict(strategy.traffic),
        "first_step": first_step,
        "rates": rates,
    }
