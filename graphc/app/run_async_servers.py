"""``graphc run`` of a plan with asynchronous parameter servers (:class:`placement.sync.ParameterServerSync`
with ``staleness > 0``): no schedule, but :func:`runtime.servers.train_async`'s training loop.

The plan must be pure data parallel (one stage, the whole model, on ``N >= 2`` replicas) with servers
(:func:`runtime.servers.async_layout`). Ranks are numbered as for any plan (:func:`runtime.partition.plan_ranks`:
devices and servers in natural order of names); a replica's rank is a worker that trains the whole
model on its share of every batch, pushes its gradients and goes on, taking the servers' answer to its
push ``s`` steps back (``s`` the staleness); a server's rank applies each gradient as it arrives with the
``--optimizer`` at ``--lr``. ``--json`` writes :class:`AsyncServerRun`: every worker's losses and step
times, the version of the weights each step computed on (``step - version <= s``), and each server's
arrivals per worker.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch.distributed as dist
from rich.table import Table

from graphc.frontend import zoo
from placement.plan import Plan
from placement.sync import ParameterServerSync
from runtime.gather import all_gather_json
from runtime.partition import plan_ranks
from runtime.servers import AsyncRun, OptimizerFactory, async_layout, train_async


def is_async_server_plan(plan: Plan) -> bool:
    """Whether ``plan`` synchronises through asynchronous parameter servers (staleness > 0)."""
    return isinstance(plan.sync, ParameterServerSync) and plan.sync.staleness > 0


@dataclass
class AsyncServerRun:
    """What a ``graphc run`` of asynchronous parameter servers recorded (``--json``).

    Attributes:
        staleness: the plan's ``s``.
        workers, servers: rank -> its plan device.
        losses: worker rank -> the loss of each of its steps (on its share of the batch).
        mean_losses: the workers' mean loss per step.
        steps_ms: the first worker's time per timed step (after --warmup).
        step_ms: their median.
        lag: worker rank -> per step, ``step - version``: how many of its own pushes the weights it
            computed on missed (at most the staleness).
        wait_ms: worker rank -> per step, the milliseconds it waited for the servers' answer after its
            push (the exposed part of the round trip; 0 for the first ``s`` steps).
        arrivals: server rank -> worker rank -> the gradients it applied from that worker.
        lost: server rank -> worker rank -> what the server was doing when it found the worker gone.
    """

    staleness: int
    workers: dict[int, str]
    servers: dict[int, str]
    losses: dict[int, list[float]]
    mean_losses: list[float]
    steps_ms: list[float]
    step_ms: float
    lag: dict[int, list[int]]
    wait_ms: dict[int, list[float]]
    arrivals: dict[int, dict[int, int]]
    lost: dict[int, dict[int, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self, title: str) -> Table:
        """Per rank: its role and device, first and last loss (workers), gradients applied (servers)."""
        table = Table(title=title)
        for column in ("rank", "role", "first loss", "last loss", "largest lag", "ms waited", "gradients applied"):
            table.add_column(column, justify="left" if column == "role" else "right")
        for rank, device in sorted({**self.workers, **self.servers}.items()):
            if rank in self.workers:
                losses = self.losses[rank]
                waited = f"{sum(self.wait_ms[rank]):.1f}"
                table.add_row(str(rank), f"worker on {device}", f"{losses[0]:.4f}", f"{losses[-1]:.4f}", str(max(self.lag[rank])), waited, "")
            else:
                table.add_row(str(rank), f"server on {device}", "", "", "", "", str(sum(self.arrivals[rank].values())))
        table.caption = f"staleness {self.staleness}; median step {self.step_ms:.1f} ms"
        return table


def async_server_roles(plan: Plan) -> str:
    """What each rank does, one line per rank (``--dry-run``); refuses a plan that is not pure data parallel."""
    layout, ranks = async_layout(plan), plan_ranks(plan)
    return "\n".join(f"rank {r}: {'worker' if r in layout.workers else 'parameter server'} on {device}" for r, device in enumerate(ranks))


def train_async_servers(args: argparse.Namespace, plan: Plan, zm: zoo.ZooModel, optimizer: OptimizerFactory) -> AsyncServerRun | None:
    """This rank's part of the run (``--warmup + --steps`` steps per worker) on a joined gloo process
    group; on rank 0 the :class:`AsyncServerRun` of every rank, elsewhere None."""
    assert isinstance(plan.sync, ParameterServerSync)
    layout, ranks = async_layout(plan), plan_ranks(plan)
    mine = train_async(
        zm.model, zoo.zoo_loss(zm), tuple(zm.example_inputs), zm.targets, layout,
        optimizer=optimizer, staleness=plan.sync.staleness, steps=args.warmup + args.steps,
    )  # fmt: skip
    gathered = all_gather_json(_plain_run(mine))
    if dist.get_rank() != 0:
        return None
    losses = {w: gathered[w]["losses"] for w in layout.workers}
    first = gathered[layout.workers[0]]
    return AsyncServerRun(
        staleness=plan.sync.staleness,
        workers={w: ranks[w] for w in layout.workers},
        servers={s: ranks[s] for s in layout.servers},
        losses=losses,
        mean_losses=[statistics.fmean(step) for step in zip(*losses.values())],
        steps_ms=first["step_ms"][args.warmup :],
        step_ms=statistics.median(first["step_ms"][args.warmup :]),
        lag={w: gathered[w]["lag"] for w in layout.workers},
        wait_ms={w: gathered[w]["wait_ms"] for w in layout.workers},
        arrivals={s: dict(Counter(gathered[s]["arrivals"])) for s in layout.servers},
        lost={s: {int(w): why for w, why in gathered[s]["lost"].items()} for s in layout.servers if gathered[s]["lost"]},
    )


def _plain_run(run: AsyncRun) -> dict[str, Any]:
    """What rank 0 needs of a rank's :class:`~runtime.servers.AsyncRun`, as JSON (for
    :func:`runtime.gather.all_gather_json`)."""
    return {
        "losses": run.losses,
        "step_ms": run.step_ms,
        "lag": [r.step - r.version for r in run.log],
        "wait_ms": [r.wait_ms for r in run.log],
        "arrivals": [a.worker for a in run.arrivals],
        "lost": {str(w): why for w, why in run.lost.items()},
    }
