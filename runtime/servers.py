"""Parameter servers: the parameters a server holds, and those its workers leave to it.

Under :class:`placement.sync.ParameterServerSync` a replicated stage's buckets are sharded over server
devices, each a CPU process of its own that runs no program. A server holds a copy of the parameters
of the buckets reduced onto it (every rank builds the model the same way, so the copies start equal to
the workers') and its own optimizer over them, from the executor's optimizer factory. In a step, for
each parameter ``p`` of a bucket on the server, with replicas ``r = 1..R`` of its stage:

* ``RD``: the server's gradient becomes ``g_p = sum_r g_p^(r)``. A replica's gradient is that of its
  microbatches' losses, each scaled by ``1/m`` (:mod:`runtime.step`), so ``g_p`` is the full batch's
  gradient, eager's; a replica without a gradient for ``p`` contributes zeros, the server none;
* ``OPT``: the server's optimizer updates its copy from ``g``, exactly as eager's optimizer would;
* ``BC``: every replica's ``p`` becomes the server's copy.

The workers' own optimizers skip the parameters a server holds (:func:`served_parameters`), so the
weights stay equal everywhere. Used by both executors; the collectives themselves are theirs.

Asynchronous servers. ``staleness > 0`` (and ``staleness = 0`` per worker) is no schedule: each worker
pushes and pulls on its own clock, so they run here as a training loop of their own (:func:`train_async`,
:class:`AsyncServerWorker`, :class:`AsyncShardServer`; ``graphc run`` calls :func:`train_async` for such a
plan); :func:`placement.simulate.async_server_step` prices their step.

Semantics (ParameterServerSync(servers, staleness=s), s >= 0; issue 15 item 3). Workers w = 1..N each
train the whole model on their own share of the batch; the parameters, as one flat vector x (every
parameter in model.parameters() order), are cut into contiguous shards, one per server
(:class:`~runtime.averaging.center.AsyncLayout`: sized to the servers' links,
:func:`placement.sharding.shard_fractions`, so equal bytes on equal links). Worker w's step t:

    g_t^w = grad L_w(x^w_t)                       on the weights x^w_t it holds
    push g_t^w to every server, and go on         (no waiting for the other workers)
    x^w_{t+1} = the answer to its push t - s      (waiting for it only; none for t < s: x^w_{t+1} = x^w_t)

A server applies each gradient as it arrives, whoever sent it, with the optimizer's step on that one
gradient (plain SGD: x <- x - lr g), and answers the pusher with its shard as it is just after:

    x_k = opt(x_{k-1}, g_{a_k}),   a_1, a_2, ...  the arrival order (AsyncShardServer.arrivals)

Bound. Let v^w_t be the number of worker w's own pushes whose answers the weights x^w_t include (its
*version*). Then v^w_t = max(0, t - s) and every step satisfies t - v^w_t <= s: a worker never
computes more than s steps ahead of the weights it has (StepRecord.version, asserted in the tests).
The weights include every other worker's gradients that reached the servers before that answer.

s = 0 is synchronous *per worker*: each worker waits for the answer to its own push before its next
step, but the servers still apply the N workers' gradients one at a time, N updates per round
(x <- x - lr g^1, then x - lr g^2, ...), each worker's gradient computed on weights that miss the
others' latest pushes. That is not the synchronous data-parallel step (x <- x - lr sum_w g^w over the
same weights, the schedule's Reduce/OPT/Broadcast); with one worker the two coincide with eager SGD.

Messages (point to point over torch.distributed's default group, CPU tensors, so gloo): a worker posts
the receive of each server's answer (tag ANSWER_TAG + t mod ANSWER_SLOTS), then sends a header
[PUSH, t] (tag PS_HEADER_TAG) and its gradient shard (tag GRADIENT_TAG); [DONE, steps] ends it. The
first worker sends the others its parameters and every server its shard (tag PS_INIT_TAG) at start.
A server serves each worker on a thread of its own, as :class:`~runtime.averaging.center.CenterServer` does, so
a worker that dies is noticed on that worker's receive, named in AsyncShardServer.lost, and the
others are served on (its pushes not yet answered, up to s + 1 of them, may be lost with it); a server that dies is a RankFailure naming its rank on every worker that next
waits for it, within the process group's timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from graphc.ir.errors import ConfigurationError, MismatchError, RankFailure
from placement.plan import Plan
from placement.sharding import shard_fractions
from placement.sync import ParameterServerSync
from runtime.averaging.center import AsyncLayout
from runtime.averaging.strategy import flat_parameters, set_flat_parameters
from runtime.partition import PartitionedProgram, plan_ranks
from runtime.schedule import REDUCE, Work
from runtime.step import split_batch


def served_parameters(work: Iterable[Work]) -> set[str]:
    """The names of the parameters whose weights come from a server: those of the device's reduces."""
    return {name for w in work if w.kind == REDUCE for name in w.params}


def server_copies(program: PartitionedProgram, server: str, work: Iterable[Work]) -> dict[str, nn.Parameter]:
    """Name -> the server's own copy (on the CPU) of each parameter its reduces carry, taken from the
    stage device that holds it; ``program`` must still hold every device's part (not :meth:`only`)."""
    copies: dict[str, nn.Parameter] = {}
    for w in work:
        if w.kind != REDUCE or w.action is None:
            continue
        stage = program.stage_device(next(d for d in w.action.group if d != server))
        held = program.programs[stage].parameters
        for name in w.params:
            copies[name] = nn.Parameter(held[name].detach().to("cpu", copy=True), requires_grad=held[name].requires_grad)
    return copies


def worker_parameters(parameters: dict[str, nn.Parameter], work: Iterable[Work]) -> list[nn.Parameter]:
    """The parameters a device's own optimizer updates: all of ``parameters`` but those a server holds."""
    served = served_parameters(work)
    return [p for name, p in parameters.items() if name not in served]


@torch.no_grad()
def zero_filled(parameters: Iterable[nn.Parameter]) -> list[torch.Tensor]:
    """Each parameter's gradient, zeros where it has none (what a replica contributes to a reduce)."""
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]


# -- asynchronous parameter servers (module docstring, "Asynchronous servers") ---------------------

PS_HEADER_TAG, GRADIENT_TAG, PS_INIT_TAG, ANSWER_TAG = 21, 22, 23, 1000
ANSWER_SLOTS = 1000  # answers in flight get distinct tags: staleness must stay below this
PUSH, DONE = 1, 3

_log = logging.getLogger(__name__)

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def _answer_tag(step: int) -> int:
    return ANSWER_TAG + step % ANSWER_SLOTS


@dataclass(frozen=True)
class Arrival:
    """One gradient a server applied: from worker rank ``worker``, of its step ``step``."""

    worker: int
    step: int


class AsyncShardServer:
    """One shard of the parameters on a server rank, updated by every gradient as it arrives (the
    asynchronous semantics above): ``serve()`` until every worker is done or gone.

    Args:
        layout: the ranks' roles; this rank must be one of ``layout.servers``.
        numel: the elements of the workers' flat parameter vector.
        optimizer: makes the server's optimizer over its one shard parameter (e.g.
            ``lambda ps: torch.optim.SGD(ps, lr=0.1)``).
        dtype: the parameters' dtype.

    Attributes:
        weights: this server's shard of ``x``.
        arrivals: the gradients applied, in the order applied.
        lost: worker rank -> what the server was doing when it found the worker gone, and gloo's error.
    """

    def __init__(self, layout: AsyncLayout, numel: int, optimizer: OptimizerFactory, *, dtype: torch.dtype = torch.float32) -> None:
        self.layout = layout
        self.rank = dist.get_rank()
        if self.rank not in layout.servers:
            raise ConfigurationError(f"AsyncShardServer on rank {self.rank}, which is not a server of {layout}")
        self.shard = layout.shard(numel, self.rank)
        self.weights = nn.Parameter(torch.empty(self.shard.stop - self.shard.start, dtype=dtype))
        with torch.no_grad():
            dist.recv(self.weights.data, layout.workers[0], tag=PS_INIT_TAG)
        self.optimizer = optimizer([self.weights])
        self.arrivals: list[Arrival] = []
        self.lost: dict[int, str] = {}
        self._lock = threading.Lock()

    def serve(self) -> torch.Tensor:
        """Apply the workers' gradients, one thread per worker, until each has sent DONE or is gone; the
        final shard. A worker that dies or stays silent past the process group's timeout is named in
        :attr:`lost` (and logged) while the others are served on."""
        workers = self.layout.workers
        with ThreadPoolExecutor(len(workers), thread_name_prefix=f"shard-server-{self.rank}") as pool:
            list(pool.map(self._serve_worker, workers))  # raises what a thread raised, once all have ended
        return self.weights.detach()

    def _serve_worker(self, worker: int) -> None:
        header = torch.empty(2, dtype=torch.int64)
        gradient = torch.empty_like(self.weights.data)
        doing = "waiting for its next push"
        try:
            while True:
                dist.recv(header, worker, tag=PS_HEADER_TAG)
                kind, step = (int(v) for v in header.tolist())
                if kind == DONE:
                    return
                if kind != PUSH:
                    raise MismatchError(f"server rank {self.rank}: header {kind} from rank {worker} is no message of the asynchronous parameter servers")
                doing = f"receiving its gradient of step {step}"
                dist.recv(gradient, worker, tag=GRADIENT_TAG)
                with self._lock:
                    self.weights.grad = gradient
                    self.optimizer.step()
                    self.weights.grad = None
                    self.arrivals.append(Arrival(worker, step))
                    answer = self.weights.detach().clone()
                doing = f"answering its push of step {step}"
                dist.send(answer, worker, tag=_answer_tag(step))
                doing = "waiting for its next push"
        except RuntimeError as exc:  # gloo: the worker's connection closed, or the wait timed out
            with self._lock:
                self.lost[worker] = f"{doing}: {str(exc).splitlines()[0]}"
            _log.warning("server rank %d: worker rank %d is gone (%s); serving the other workers", self.rank, worker, self.lost[worker])


@dataclass(frozen=True)
class StepRecord:
    """One step of an asynchronous worker: the step ``t``, the version of the weights it computed on
    (its own pushes whose answers they include; ``t - version <= staleness``), and the milliseconds it
    waited for an answer after its push (the exposed part of the round trip)."""

    step: int
    version: int
    wait_ms: float


class AsyncServerWorker:
    """A worker of asynchronous parameter servers with staleness ``s`` (semantics above)::

        worker = AsyncServerWorker(model, layout, staleness=2)
        for x, y in batches:
            model.zero_grad()
            loss_fn(model(x), y).backward()
            worker.step()    # push this step's gradients; take the answer to the push s steps back
        worker.finish()      # take the last answers; tell the servers this worker is done

    Args:
        model: the worker's model (every parameter is served; the worker has no optimizer of its own).
        layout: the ranks' roles; this rank must be one of ``layout.workers``.
        staleness: ``s >= 0``.

    Attributes:
        log: a :class:`StepRecord` per step taken.
    """

    def __init__(self, model: nn.Module, layout: AsyncLayout, *, staleness: int) -> None:
        self.rank = dist.get_rank()
        if self.rank not in layout.workers:
            raise ConfigurationError(f"AsyncServerWorker on rank {self.rank}, which is not a worker of {layout}")
        if isinstance(staleness, bool) or not isinstance(staleness, int) or not 0 <= staleness < ANSWER_SLOTS:
            raise ConfigurationError(f"staleness={staleness!r}: expected an integer 0 <= staleness < {ANSWER_SLOTS}")
        self.layout = layout
        self.staleness = staleness
        self.parameters = list(model.parameters())
        if not self.parameters:
            raise ConfigurationError("AsyncServerWorker: the model has no parameters to serve")
        self.shards = layout.shards(sum(p.numel() for p in self.parameters))
        self.log: list[StepRecord] = []
        self.version = 0
        self._pending: dict[int, list[tuple[int, Any, torch.Tensor, list[Any]]]] = {}
        self._start()

    def _start(self) -> None:
        """The first worker sends its parameters to the other workers and each server its shard."""
        flat = flat_parameters(self.parameters).cpu()
        first = self.layout.workers[0]
        if self.rank != first:
            dist.recv(flat, first, tag=PS_INIT_TAG)
            set_flat_parameters(self.parameters, flat)
            return
        works = [dist.isend(flat, w, tag=PS_INIT_TAG) for w in self.layout.workers[1:]]
        works += [dist.isend(flat[sh].clone(), s, tag=PS_INIT_TAG) for s, sh in zip(self.layout.servers, self.shards)]
        for work in works:
            work.wait()

    @property
    def steps(self) -> int:
        """The steps taken (pushes made)."""
        return len(self.log)

    def step(self) -> None:
        """Push this step's gradients (zeros for a parameter without one) to every server, then wait
        for the answers to the push ``staleness`` steps back and take them as the weights."""
        t = self.steps
        self.log.append(StepRecord(t, self.version, 0.0))
        gradient = torch.cat([g.reshape(-1) for g in zero_filled(self.parameters)]).cpu()
        posted = []
        for server, shard in zip(self.layout.servers, self.shards):
            answer = torch.empty(shard.stop - shard.start, dtype=gradient.dtype)
            header = torch.tensor([PUSH, t], dtype=torch.int64)
            piece = gradient[shard]  # a contiguous view, kept alive with the push until it is answered
            with self._failing(server, t, "pushing its gradient"):
                receive = dist.irecv(answer, server, tag=_answer_tag(t))
                sends = [dist.isend(header, server, tag=PS_HEADER_TAG), dist.isend(piece, server, tag=GRADIENT_TAG)]
            posted.append((server, receive, answer, [*sends, header, piece]))
        self._pending[t] = posted
        if t - self.staleness >= 0:
            began = time.perf_counter()
            self._take(t - self.staleness)
            self.log[-1] = StepRecord(t, self.log[-1].version, 1e3 * (time.perf_counter() - began))

    def _take(self, step: int) -> None:
        """Wait for every server's answer to the push of ``step`` and make them the weights."""
        posted = self._pending.pop(step)
        for server, receive, _, kept in posted:
            with self._failing(server, step, "waiting for its answer"):
                for work in (receive, *kept[:2]):
                    work.wait()
        set_flat_parameters(self.parameters, torch.cat([answer for _, _, answer, _ in posted]))
        self.version = step + 1

    @contextmanager
    def _failing(self, server: int, step: int, op: str) -> Iterator[None]:
        """Gloo's error inside, when ``server`` died or hung, becomes a RankFailure naming it."""
        try:
            yield
        except RuntimeError as exc:
            raise RankFailure(
                f"asynchronous parameter-server worker rank {self.rank}: server rank {server} failed while {op} "
                f"(step {step}): {str(exc).splitlines()[0]}",
                rank=server, device=f"server rank {server}", op=op,
            ) from exc  # fmt: skip

    def finish(self) -> None:
        """Take the answers still in flight (the weights become the servers' answers to the last push)
        and tell every server this worker is done."""
        for step in sorted(self._pending):
            self._take(step)
        for server in self.layout.servers:
            done = torch.tensor([DONE, self.steps], dtype=torch.int64)
            with self._failing(server, self.steps, "saying it is done"):
                dist.send(done, server, tag=PS_HEADER_TAG)


def async_layout(plan: Plan) -> AsyncLayout:
    """The ranks of an asynchronous run of ``plan``: a pure data-parallel plan (one stage holding every
    node, on its replicas) under :class:`ParameterServerSync`; ranks numbered as ``graphc run`` numbers
    a plan's devices (:func:`runtime.partition.plan_ranks`), the replicas working, the servers serving,
    each server's shard sized to its link in the plan's cluster (:func:`placement.sharding.shard_fractions`;
    equal without a cluster)."""
    if not isinstance(plan.sync, ParameterServerSync) or len(plan.stages) != 1 or len(plan.stages[0].devices) < 2:
        raise ConfigurationError(
            f"asynchronous parameter servers run a pure data-parallel plan (one stage on two or more replicas) with a "
            f"parameter-server sync; this plan has {len(plan.stages)} stage(s) and sync {type(plan.sync).__name__}: "
            "re-plan with parallel='data' and ParameterServerSync(servers, staleness=s)"
        )
    ranks, workers, servers = plan_ranks(plan), plan.stages[0].devices, plan.sync.servers
    shares = tuple(shard_fractions(servers, plan.cluster, workers)) if plan.cluster is not None else ()
    return AsyncLayout(tuple(ranks.index(d) for d in workers), tuple(ranks.index(s) for s in servers), shares)


@dataclass
class AsyncRun:
    """What one rank of :func:`train_async` did. A worker: its losses and step times (ms) and its log
    (:class:`StepRecord`); a server: its arrivals and the workers it lost."""

    role: str
    rank: int
    losses: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    log: list[StepRecord] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)
    lost: dict[int, str] = field(default_factory=dict)


def train_async(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    inputs: tuple[Any, ...],
    targets: Any,
    layout: AsyncLayout,
    *,
    optimizer: OptimizerFactory,
    staleness: int,
    steps: int,
) -> AsyncRun:
    """This rank's part of ``steps`` asynchronous steps (semantics above), on a joined gloo process
    group: a server serves until every worker is done or gone; worker ``i`` of ``N`` trains on part
    ``i`` of the batch (``inputs`` and ``targets`` split along dimension 0, :func:`runtime.step.split_batch`).
    Every rank builds ``model`` the same way; the first worker's parameters start the run."""
    rank = dist.get_rank()
    numel = sum(p.numel() for p in model.parameters())
    if rank in layout.servers:
        server = AsyncShardServer(layout, numel, optimizer, dtype=next(model.parameters()).dtype)
        server.serve()
        return AsyncRun("server", rank, arrivals=list(server.arrivals), lost=dict(server.lost))
    n, i = len(layout.workers), layout.workers.index(rank)
    mine = [split_batch(x, n)[i] for x in inputs]
    target = split_batch(targets, n)[i]
    worker = AsyncServerWorker(model, layout, staleness=staleness)
    run = AsyncRun("worker", rank)
    for _ in range(steps):
        began = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(*mine), target)
        loss.backward()
        worker.step()
        run.losses.append(float(loss.detach()))
        run.step_ms.append(1e3 * (time.perf_counter() - began))
    worker.finish()
    run.log = list(worker.log)
    return run
