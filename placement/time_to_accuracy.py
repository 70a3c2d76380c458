r"""Time to accuracy of each way replicas synchronise, on a cluster, and the choice it makes (``sync="auto"``).

A synchronisation strategy trades traffic against steps: averaging every ``tau`` steps sends ``tau``
times fewer bytes than all-reducing the gradients every step, but may need more steps to reach an
accuracy. Which wins depends on the links. So the time to a target held-out accuracy is

.. math::

    T = S \times t

with :math:`S` the **measured** number of steps the strategy took to reach the target with :math:`N`
workers (a convergence run, :class:`Run`: ``examples/elastic_convergence.py`` writes them) and
:math:`t` its **predicted** mean time per step on the cluster (:func:`step_times`, :func:`estimates`).

**Step times.** :math:`N` replicas on devices :math:`D = (d_1 .. d_N)` (in ring order), each holding the
model's :math:`P` bytes of parameters, the graph at the global batch (every replica takes
:math:`1/N` of it, as a data-parallel plan does). One simulation (:func:`placement.problem.predict`)
of the data-parallel plan (one stage of every node replicated on :math:`D`, :math:`N` microbatches)
per gradient sync given gives

* :math:`T_{SGD}`: its step with the gradients all-reduced in buckets overlapped with the backward, the
  fastest of the syncs given (the planner's :func:`placement.hybrid.sync_options`);
* :math:`c = \max_{d \in D} \text{busy}_d`: one replica's compute step (its forward, backward and
  optimizer step on its share, no synchronisation), the same figure as a one-device plan of that share.

Collectives are priced by :mod:`placement.collectives` on the cluster's routes, a phase lasting at least
the CPU time its messages cost a device without a copy engine (as the simulator books them):

* :math:`A = \min(\text{ring}(D, P), \text{hierarchical}(\text{islands}(D), P))`, a parameter
  all-reduce (:func:`~placement.collectives.ring_allreduce`, :func:`~placement.collectives.hierarchical_allreduce`);
* :math:`E = \text{push} + \text{pull}`, one exchange of asynchronous EASGD with the center sharded over
  servers :math:`V` (:math:`|V| = K`): every worker sends its :math:`P / K` bytes to every server at
  once (:func:`~placement.collectives.reduce` onto each server, all in one phase: the servers' links are
  shared by the :math:`N` workers; by default the servers are the CPU devices of the replicas' hosts),
  then every server sends its shard of the center back
  (:func:`~placement.collectives.broadcast`). All workers exchanging at once is the worst case of the
  asynchronous exchanges; the servers' arithmetic is left out (a few operations per byte on a CPU).

Mean time per step and bytes one worker sends per step (:meth:`StepTimes.per_step`):

======================================  ===================================================  =================================
strategy                                :math:`t`                                            bytes per step
======================================  ===================================================  =================================
sync SGD (gradient all-reduce)          :math:`T_{SGD}`                                      :math:`2 (N-1)/N \; P`
EASGD, EAMSGD every :math:`\tau`        :math:`c + A / \tau` (the exchange blocks)           :math:`2 (N-1)/N \; P / \tau`
local SGD, DiLoCo every :math:`H`       :math:`c + A / H`                                    :math:`2 (N-1)/N \; P / H`
async EASGD, :math:`\tau`, prefetch p   :math:`c + \max(0, E - p\,c) / \tau`                 :math:`P / \tau`
======================================  ===================================================  =================================

(prefetch: the center is fetched :math:`p` local steps ahead, so :math:`p\,c` of the exchange hides
behind them; bytes count the ring's :math:`2 (N-1)/N` parameter vectors per all-reduce and the
asynchronous worker's :math:`P` out per exchange, as :mod:`runtime.averaging` counts its traffic, less
its two 8-byte headers per server; DiLoCo's outer step is a few operations per parameter,
left out). Time to target :math:`T = S\,t`, bytes to target :math:`S \times` bytes per step.

**The choice** (:func:`fastest`, :func:`choose_sync`): among the strategies whose run reached the target,
the one with the shortest :math:`T` (the first in the runs' order on a tie), with a reason in words
naming the tier of links its exchanges cross (inside a host or across hosts, the link that paces a ring
over :math:`D`, :func:`~placement.collectives.busiest_link`) and the bytes and seconds against sync SGD.
The tier is where the replicas are: a planner choosing per tier calls it once with the replicas of a
host and once with replicas spread across hosts.

Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from placement.cluster import Cluster
from placement.collectives import (
    Flow,
    Phase,
    booked_ms,
    busiest_link,
    hierarchical_allreduce,
    ring_allreduce,
    server_exchange,
)
from placement.errors import ConfigurationError
from placement.plan import Stage
from placement.problem import Problem, predict
from placement.sync import (
    AllReduceSync,
    AnySync,
    ElasticAveragingSync,
    LocalSGDSync,
    Sync,
    islands,
    sync_to_dict,
)


@dataclass(frozen=True)
class Run:
    """A measured convergence run of one strategy with ``workers`` workers.

    Attributes:
        name: the strategy as the run names it (``"DiLoCo H=10"``).
        sync: the strategy as a sync record (:func:`sync_of_run`).
        workers: N.
        accuracy: (step, held-out accuracy) at each evaluation, steps increasing.
    """

    name: str
    sync: AnySync
    workers: int
    accuracy: tuple[tuple[int, float], ...]

    def steps_to(self, target: float) -> int | None:
        """The first evaluated step whose held-out accuracy reaches ``target``; None when none did."""
        return next((step for step, acc in self.accuracy if acc >= target), None)


def sync_of_run(kind: str, period: int, prefetch: int = 0) -> AnySync:
    """The sync record of a strategy of ``examples/elastic_convergence.py``: ``kind`` ``"local"`` (period
    1: synchronous SGD, the gradient all-reduce; else local SGD), ``"diloco"``, ``"easgd"``,
    ``"eamsgd"`` (Nesterov momentum 0.9, :class:`runtime.averaging.EAMSGD`'s) or ``"async"``."""
    if kind == "local":
        return AllReduceSync() if period == 1 else LocalSGDSync(period)
    if kind == "diloco":
        return LocalSGDSync(period, "nesterov")
    if kind in ("easgd", "eamsgd", "async"):
        return ElasticAveragingSync(
            tau=period, momentum=0.9 if kind == "eamsgd" else 0.0, asynchronous=kind == "async", prefetch=prefetch
        )
    raise ConfigurationError(f"convergence run of kind {kind!r}: expected local, diloco, easgd, eamsgd or async")


def runs_from_convergence(doc: Mapping[str, Any], source: str = "convergence.json") -> list[Run]:
    """The runs of a convergence file (``examples/elastic_convergence.py``: ``{"curves": [{"name", "kind",
    "period", "prefetch"?, "workers", "history": [{"step", "accuracy"}, ...]}, ...]}``)."""
    curves = doc.get("curves") if isinstance(doc, Mapping) else None
    if not isinstance(curves, list) or not curves:
        raise ConfigurationError(f"{source}: expected an object with a non-empty list 'curves' (run examples/elastic_convergence.py)")
    runs = []
    for i, c in enumerate(curves):
        try:
            history = tuple((int(h["step"]), float(h["accuracy"])) for h in c["history"])
            sync = sync_of_run(c["kind"], int(c["period"]), int(c.get("prefetch", 0)))
            runs.append(Run(str(c["name"]), sync, int(c["workers"]), history))
        except (KeyError, TypeError, ValueError) as why:
            raise ConfigurationError(f"{source}: curves[{i}]: expected name, kind, period, workers and history of step and accuracy ({why!r})") from None
    return runs


@dataclass(frozen=True)
class StepTimes:
    """The figures of :math:`N` replicas on a cluster that every strategy's step time is made of (module
    docstring).

    Attributes:
        devices: the replicas' devices, in ring order.
        param_bytes: :math:`P`.
        compute_ms: :math:`c`, one replica's step without synchronisation.
        sync_sgd_ms: :math:`T_{SGD}`, the data-parallel step with its gradient all-reduce.
        gradient_sync: the gradient sync that gave :math:`T_{SGD}`.
        allreduce_ms: :math:`A`, one all-reduce of the parameters.
        exchange_ms: :math:`E`, one asynchronous exchange with the servers; None without servers.
        servers: the devices holding the center's shards (none: asynchronous EASGD is not priced).
        tier: ``"inside a host"`` or ``"across hosts"``.
        link: the kind of the link that paces a ring over the devices, and its bandwidth in bytes/s.
    """

    devices: tuple[str, ...]
    param_bytes: float
    compute_ms: float
    sync_sgd_ms: float
    gradient_sync: Sync
    allreduce_ms: float
    exchange_ms: float | None
    servers: tuple[str, ...]
    tier: str
    link: tuple[str, float]

    def per_step(self, sync: AnySync) -> tuple[float, float] | None:
        """``sync``'s predicted mean ms per step and bytes one worker sends per step (module docstring's
        table); None for asynchronous EASGD without servers."""
        n, p = len(self.devices), self.param_bytes
        ring = 2 * (n - 1) / n * p
        if isinstance(sync, LocalSGDSync):
            return self.compute_ms + self.allreduce_ms / sync.period, ring / sync.period
        if isinstance(sync, ElasticAveragingSync):
            if not sync.asynchronous:
                return self.compute_ms + self.allreduce_ms / sync.tau, ring / sync.tau
            if self.exchange_ms is None:
                return None
            exposed = max(0.0, self.exchange_ms - sync.prefetch * self.compute_ms)
            return self.compute_ms + exposed / sync.tau, p / sync.tau
        return self.sync_sgd_ms, ring

    def link_words(self) -> str:
        kind, bandwidth = self.link
        return f"{self.tier} (paced by {kind} at {bandwidth / 1e9:.3g} GB/s)"


def step_times(
    problem: Problem,
    devices: Sequence[str],
    gradient_syncs: Sequence[Sync] = (AllReduceSync(),),
    servers: Sequence[str] | None = None,
) -> StepTimes:
    """The step figures of ``len(devices)`` replicas of ``problem``'s graph (at the global batch) on its
    cluster (module docstring). ``devices`` in ring order (:func:`placement.hybrid.ring_order`);
    ``gradient_syncs``: the syncs sync SGD may use, the fastest kept; ``servers``: the asynchronous
    center's devices (default: the CPU devices of the replicas' hosts, as the talk's servers sit beside
    its clients; none: asynchronous EASGD is not priced)."""
    cluster, graph = problem.cluster, problem.graph
    n = len(devices)
    if n < 2 or len(set(devices)) != n:
        raise ConfigurationError(f"time to accuracy needs two or more distinct replica devices, got {list(devices)}")
    if not gradient_syncs:
        raise ConfigurationError("time to accuracy: give at least one gradient sync for synchronous SGD")
    assignment = {name: devices[0] for name in graph.node_names()}
    stages = [Stage(index=0, nodes=list(graph.node_names()), devices=list(devices))]
    best: tuple[float, float, Sync] | None = None
    for sync in gradient_syncs:
        result = predict(problem, assignment, stages=stages, microbatches=n, sync=sync).result
        if best is None or result.step_ms < best[0]:
            best = (result.step_ms, max(result.busy_ms[d] for d in devices), sync)
    assert best is not None
    p = graph.total_param_bytes()
    cpus = {d.name for d in cluster.devices if d.category == "cpu"}
    message_ms = problem.cost_model.endpoint_cpu_ms
    allreduce = min(
        collective_ms(ring_allreduce(cluster, devices, p), cpus, message_ms),
        collective_ms(hierarchical_allreduce(cluster, islands(cluster, devices), p), cpus, message_ms),
    )
    hosts = {cluster.device(d).host for d in devices}
    beside = (d.name for d in cluster.devices if d.name in cpus and d.host in hosts and d.name not in devices)
    chosen = tuple(servers if servers is not None else beside)
    exchange = server_exchange_ms(cluster, devices, chosen, p, cpus, message_ms) if chosen else None
    link, _ = busiest_link(cluster, [Flow(a, b, p) for a, b in zip(devices, [*devices[1:], devices[0]])])
    return StepTimes(
        devices=tuple(devices), param_bytes=p, compute_ms=best[1], sync_sgd_ms=best[0], gradient_sync=best[2],
        allreduce_ms=allreduce, exchange_ms=exchange, servers=chosen,
        tier="across hosts" if len(hosts) > 1 else "inside a host", link=(link.kind, link.bandwidth),
    )  # fmt: skip


def collective_ms(phases: Sequence[Phase], cpus: Collection[str], message_ms: Callable[[float], float]) -> float:
    """The phases one after another, each as the simulator books it (:func:`placement.collectives.booked_ms`),
    without the copies of a bucket into one buffer and back that the simulator adds on CPU devices
    (:func:`placement.collectives.bucket_copy_ms`): an averaging exchange moves the parameters in place."""
    return sum(booked_ms(ph, cpus, message_ms) for ph in phases)


def server_exchange_ms(
    cluster: Cluster,
    workers: Sequence[str],
    servers: Sequence[str],
    nbytes: float,
    cpus: Collection[str] = (),
    message_ms: Callable[[float], float] = lambda _: 0.0,
) -> float:
    """:math:`E`: every worker pushes its shard of ``nbytes / K`` to each of the ``K`` servers at once,
    then every server sends its shard back to every worker (:func:`placement.collectives.server_exchange`)."""
    push, pull = server_exchange(cluster, workers, servers, nbytes)
    return collective_ms([*push, *pull], cpus, message_ms)


@dataclass(frozen=True)
class Estimate:
    """One strategy's predicted time to a target accuracy (module docstring).

    Attributes:
        name: the strategy (its run's name).
        sync: its record.
        step_ms: :math:`t`, predicted mean ms per step.
        bytes_per_step: bytes one worker sends per step.
        target: the held-out accuracy aimed at.
        steps: :math:`S`, measured steps to reach it; None: the run never did.
    """

    name: str
    sync: AnySync
    step_ms: float
    bytes_per_step: float
    target: float
    steps: int | None

    @property
    def seconds(self) -> float | None:
        """:math:`T = S t` in seconds; None when the target was not reached."""
        return None if self.steps is None else self.steps * self.step_ms / 1e3

    @property
    def bytes(self) -> float | None:
        """Bytes one worker sends to reach the target; None when it was not reached."""
        return None if self.steps is None else self.steps * self.bytes_per_step

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "sync": sync_to_dict(self.sync), "step_ms": self.step_ms,
            "bytes_per_step": self.bytes_per_step, "target": self.target, "steps": self.steps,
            "seconds": self.seconds, "bytes": self.bytes,
        }  # fmt: skip


def estimates(times: StepTimes, runs: Sequence[Run], target: float) -> list[Estimate]:
    """The estimate of every run with as many workers as ``times`` has replicas, in the runs' order;
    asynchronous EASGD is left out where there are no servers. Raises :class:`ConfigurationError` when
    no run has that many workers."""
    n = len(times.devices)
    mine = [r for r in runs if r.workers == n]
    if not mine:
        measured = sorted({r.workers for r in runs})
        raise ConfigurationError(f"no convergence run with {n} workers (runs have {measured}): run examples/elastic_convergence.py --workers {n}")
    out = []
    for run in mine:
        priced = times.per_step(run.sync)
        if priced is not None:
            out.append(Estimate(run.name, run.sync, priced[0], priced[1], target, run.steps_to(target)))
    return out


@dataclass(frozen=True)
class Choice:
    """The strategy with the shortest predicted time to the target, and why (:func:`fastest`)."""

    chosen: Estimate
    reason: str
    tier: str
    candidates: tuple[Estimate, ...]

    def to_dict(self) -> dict[str, Any]:
        """For ``plan.settings``: the choice, its sync record, the reason and each strategy's seconds."""
        return {
            "chosen": self.chosen.name,
            "sync": sync_to_dict(self.chosen.sync),
            "reason": self.reason,
            "tier": self.tier,
            "target": self.chosen.target,
            "seconds": {e.name: e.seconds for e in self.candidates},
        }


def fastest(candidates: Sequence[Estimate], times: StepTimes) -> Choice:
    """The estimate with the shortest time to the target (the first on a tie) and a reason in words
    against synchronous SGD (or, when it wins, against the fastest averaging strategy). Raises
    :class:`ConfigurationError` when no strategy reached the target."""
    reached = [e for e in candidates if e.seconds is not None]
    if not reached:
        target = candidates[0].target if candidates else float("nan")
        raise ConfigurationError(f"no strategy reached {target:.0%} in its convergence run: choose a lower target")
    best = min(reached, key=lambda e: e.seconds)  # type: ignore[arg-type,return-value]
    sgd = next((e for e in candidates if isinstance(e.sync, AllReduceSync)), None)
    where = times.link_words()
    goal = f"{best.target:.0%}"
    if best is sgd:
        rivals = [e for e in reached if e is not best]
        reason = f"{where}, {best.name} reaches {goal} in {_at(best)}"
        if rivals:
            runner = min(rivals, key=lambda e: e.seconds)  # type: ignore[arg-type,return-value]
            reason += f"; the fastest other, {runner.name}, {_fewer_bytes(runner, best)} but takes {_at(runner)}"
    else:
        reason = f"{where}, {best.name}"
        if sgd is not None:
            reason += f" {_fewer_bytes(best, sgd)} and"
        reason += f" reaches {goal} in {_at(best)}"
        if sgd is not None:
            reason += f" against {sgd.name}'s {_at(sgd)}" if sgd.seconds is not None else f"; {sgd.name} did not reach {goal}"
    return Choice(best, reason, times.tier, tuple(candidates))


def _fewer_bytes(e: Estimate, other: Estimate) -> str:
    """How many times fewer bytes per step ``e`` sends than ``other``, in words (a model without
    parameters sends none: no ratio)."""
    if e.bytes_per_step <= 0 or other.bytes_per_step <= 0:
        return f"sends {e.bytes_per_step:.3g} bytes per step against {other.name}'s {other.bytes_per_step:.3g}"
    return f"sends {other.bytes_per_step / e.bytes_per_step:.3g}x fewer bytes per step than {other.name}"


def _at(e: Estimate) -> str:
    assert e.steps is not None and e.seconds is not None
    return f"{_seconds(e.seconds)} ({e.steps} steps x {e.step_ms:.3g} ms)"


def _seconds(s: float) -> str:
    return f"{s:.3g} s" if s >= 0.1 else f"{1e3 * s:.3g} ms"


def choose_sync(
    problem: Problem,
    devices: Sequence[str],
    runs: Sequence[Run],
    target: float,
    gradient_syncs: Sequence[Sync] = (AllReduceSync(),),
    servers: Sequence[str] | None = None,
) -> Choice:
    """``sync="auto"`` by time to accuracy: the strategy with the shortest predicted time to ``target``
    for the replicas on ``devices`` (:func:`step_times`, :func:`estimates`, :func:`fastest`). For a
    planner: ``devices`` the replicated stage's devices, ``gradient_syncs`` the syncs it tries, and
    ``Choice.to_dict()`` for ``plan.settings``."""
    times = step_times(problem, devices, gradient_syncs, servers)
    return fastest(estimates(times, runs, target), times)


def tier_devices(cluster: Cluster, workers: Sequence[str], n: int) -> dict[str, list[str]]:
    """Where ``n`` replicas go in each tier of links, from ``workers`` (cluster order):
    ``"inside a host"``, the first ``n`` workers of the first host with that many; ``"across hosts"``
    (two hosts or more with workers), the replicas dealt round robin over the hosts (replica ``k`` on
    host ``k mod H``, its ``k div H``-th worker), as long as each host has enough. A tier that cannot
    hold ``n`` replicas is left out."""
    by_host: dict[str, list[str]] = {}
    for w in workers:
        by_host.setdefault(cluster.device(w).host, []).append(w)
    out: dict[str, list[str]] = {}
    inside = next((ws[:n] for ws in by_host.values() if len(ws) >= n), None)
    if inside is not None:
        out["inside a host"] = inside
    hosts = list(by_host.values())[:n]
    if len(hosts) > 1 and all(len(ws) >= -(-n // len(hosts)) for ws in hosts):
        out["across hosts"] = [hosts[k % len(hosts)][k // len(hosts)] for k in range(n)]
    return out
