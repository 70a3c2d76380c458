r"""Data parallel, pipeline or both: the joint choice of the throughput objective, and how replicas sync.

The throughput objective minimises the time of one global batch: the simulated step of all microbatches
of all replicas (:func:`placement.problem.finish_plan`). A plan's stages say which devices run what
(:class:`placement.plan.Stage`: microbatch :math:`k` of a stage on ``devices[k mod r]``), so every layout
below is a list of stages and one simulator prices them all. :func:`solve_parallel` builds one complete
plan per candidate through :func:`~placement.problem.finish_plan` and keeps the fastest that fits:

* **pipeline** (``pipeline(S)``): the pipeline solver's split (:func:`placement.pipeline.solve_throughput`)
  without replicated stages;
* **PipeDream** (``pipeline(S: r1+r2+...)``; ``data xR (pipeline solver)`` when its one stage is
  replicated): the same solver letting the contiguous DP replicate stages (the pipeline solver's default);
* **one device** (``single``): :func:`placement.solvers.auto.single_device_pipeline`'s plan, passed in by
  the caller (``extra``);
* **data parallel** (``data xR``): one stage of every node on :math:`R` devices of the most numerous kind
  (the first :math:`R` in cluster order, listed in the ring order of the fastest all-reduce,
  :func:`ring_order`), :math:`R` over :func:`replica_counts` (powers of two, whole
  hosts, all devices), :math:`m = R j` microbatches for :math:`j \in` :data:`DATA_MULTIPLES` (the
  fastest that fits, :func:`~placement.pipeline.choose_microbatches`), so every replica runs :math:`j`;
* **hybrid** (``hybrid R x pipeline(G)``): the devices split into :math:`R` equal replica groups of
  :math:`G` (:func:`replica_groups`: per host, per PCIe switch, consecutive runs); the pipeline solved on
  the first group alone (a problem on the sub-cluster of its devices, :func:`group_problem`) and copied
  onto the others: a stage on devices :math:`d_1..d_r` of group 0 runs on
  :math:`(g_j(d_q))_{q \le r, j \le R}` listed ``q``-major, where :math:`g_j` maps a device of group 0 to
  the one at the same position in group :math:`j`. Microbatch :math:`k` then runs on replica
  :math:`k \bmod rR`, in group :math:`(k \bmod rR) \bmod R = k \bmod R` at every stage: pipeline traffic
  stays inside a group, and only each stage's gradient all-reduce crosses groups. :math:`m = R j`
  microbatches, :math:`j \in` :data:`HYBRID_MULTIPLES`, the fastest that fits.

**Synchronisation.** A candidate with replicated stages is first built with the first of the requested
syncs (:func:`sync_options`; for ``"auto"`` DDP's default, a ring with 25 MiB buckets); the
:data:`SYNC_FINALISTS` fastest candidates of each family (pipelines, data parallel, hybrids: so that
``"auto"`` tries every sync a single mode tries) then try every other sync (ring and hierarchical
all-reduce, buckets of :data:`BUCKET_CHOICES`; parameter servers only when asked) by simulation
(:func:`~placement.problem.predict`), and keep the fastest that fits (the first on a tie).

**Memory.** :func:`~placement.problem.finish_plan` refuses a candidate whose simulated peak exceeds a
device's capacity; it is dropped with the reason. When none fits, :class:`InfeasibleError` lists each
candidate's overflowing device and bytes.

**Work.** Bounded and deterministic: at most :data:`MAX_REPLICA_COUNTS` data-parallel counts and
:data:`MAX_HYBRIDS` groupings of at most :data:`MAX_GROUP_DEVICES` devices; the hybrids' pipeline solves
share :data:`HYBRID_SHARE` of the time limit (each a fixed share, deterministic like the pipeline
solver's); the choice reads simulated times only, never the clock. The whole-cluster pipeline solves
get the full time limit each, as ``parallel="pipeline"`` gives them, so the ``"auto"`` choice is never
slower than what any single mode returns.

The plan records ``settings["parallel"]``: ``mode`` (``parallel``), ``candidates`` (label -> predicted
ms), ``dropped`` (label -> why), ``chosen`` (label), ``reason`` (in words), ``sync`` (the chosen sync's
JSON) and ``sync_ms`` (each sync tried on the chosen layout -> predicted ms).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from placement.cluster import Cluster
from placement.collectives import duration_ms, ring_allreduce
from placement.constraints import InfeasibleError, Resolved
from placement.errors import ConfigurationError, PlacementError
from placement.pipeline import choose_microbatches, solve_throughput
from placement.plan import Plan, Stage
from placement.problem import Problem, finish_plan, predict
from placement.sync import (
    AllReduceSync,
    ParameterServerSync,
    Sync,
    islands,
    sync_to_dict,
)
from placement.time_to_accuracy import Run, choose_sync

PARALLEL = ("auto", "data", "pipeline", "hybrid")
SYNCS = ("auto", "ring", "hierarchical", "parameter-server")
MiB = 2**20
#: Bucket sizes tried (None: one bucket per stage, all-reduced after its last backward).
BUCKET_CHOICES: tuple[float | None, ...] = (25 * MiB, 1 * MiB, 4 * MiB, None)
#: Microbatches per replica tried for pure data parallelism, and for a hybrid's pipelines.
DATA_MULTIPLES = (1, 2, 4)
HYBRID_MULTIPLES = (1, 2, 4, 8, 16, 32)
MAX_REPLICA_COUNTS = 8
MAX_HYBRIDS = 4
MAX_GROUP_DEVICES = 16
#: The fraction of the time limit the hybrids' pipeline solves share.
HYBRID_SHARE = 0.5
#: How many of the fastest candidates try every sync.
SYNC_FINALISTS = 2
#: The held-out accuracy a time-to-accuracy choice aims at by default.
DEFAULT_TARGET = 0.95
#: A candidate must be faster by this fraction to displace an earlier one (float noise).
TIE = 1e-9


@dataclass
class Candidate:
    """One layout: its label, its finished plan (None when dropped) and why it was dropped, and for a
    hybrid the word for its groups (``"host"``, ``"PCIe switch"``, ``"run of G devices"``)."""

    label: str
    plan: Plan | None
    dropped: str = ""
    groups: str = ""


def solve_parallel(
    problem: Problem,
    *,
    parallel: str = "auto",
    sync: str = "auto",
    servers: Sequence[str] | None = None,
    extra: Sequence[tuple[str, Plan | None]] = (),
    convergence: Sequence[Run] | None = None,
    target: float = DEFAULT_TARGET,
    **pipeline_options: object,
) -> Plan:
    """The fastest plan of the layouts ``parallel`` allows, with its sync (module docstring).

    Args:
        problem: a throughput problem (:func:`placement.problem.make_problem`).
        parallel: ``"auto"`` (every layout), ``"data"``, ``"pipeline"`` (pipeline and PipeDream) or
            ``"hybrid"``.
        sync: ``"auto"`` (ring or hierarchical all-reduce), ``"ring"``, ``"hierarchical"`` or
            ``"parameter-server"`` (with ``servers``, default the cluster's CPU devices).
        extra: more finished candidates, (label, plan or None), tried first (the one-device plan).
        convergence: measured convergence runs (:func:`placement.time_to_accuracy.runs_from_convergence`);
            with them, a data-parallel plan also records which synchronisation strategy (all-reduce every
            step, elastic averaging, local SGD, DiLoCo) reaches ``target`` held-out accuracy soonest on
            its replicas' links (``settings["parallel"]["sync_choice"]``, :func:`record_sync_choice`).
        pipeline_options: ``method`` and ``replication`` for the pipeline solver.

    Raises:
        ConfigurationError: an unknown ``parallel`` or ``sync``, bad ``servers``.
        InfeasibleError: no layout fits in memory (each candidate's overflow named).
    """
    if problem.objective != "throughput":
        raise ConfigurationError(f"parallel layouts are for objective='throughput', not {problem.objective!r}")
    if parallel not in PARALLEL:
        raise ConfigurationError(f"parallel={parallel!r}: expected one of {', '.join(PARALLEL)}")
    syncs = sync_options(problem.cluster, sync, servers)
    server_names = set(syncs[0].servers) if isinstance(syncs[0], ParameterServerSync) else set()
    workers = worker_devices(problem.cluster, server_names)
    families = {"given": [Candidate(label, plan, "" if plan else "no one-device plan fits") for label, plan in extra]}
    if parallel in ("auto", "pipeline"):
        families["pipeline"] = _pipelines(problem, syncs[0], pipeline_options)
    if parallel in ("auto", "data"):
        families["data"] = [_data_parallel(problem, workers[:r], syncs[0]) for r in replica_counts(problem, workers)]
    if parallel in ("auto", "hybrid"):
        families["hybrid"] = _hybrids(problem, workers, syncs[0], pipeline_options)
    if server_names:
        families = {k: [_refuse_servers(c, server_names) for c in cs] for k, cs in families.items()}
    plan = _choose(problem, families, syncs, parallel)
    if convergence is not None:
        record_sync_choice(problem, plan, convergence, target, syncs)
    return plan


def record_sync_choice(problem: Problem, plan: Plan, runs: Sequence[Run], target: float, syncs: Sequence[Sync]) -> None:
    """Record in ``plan.settings["parallel"]["sync_choice"]`` the strategy with the shortest predicted time
    to ``target`` for the replicas of a pure data-parallel plan (:func:`placement.time_to_accuracy.choose_sync`:
    measured steps to the target x predicted time per step on the replicas' links), or why there is none
    (another layout, no run with that many workers, no run reaching the target). ``plan.sync`` stays the
    gradient sync its schedule runs: the averaging strategies train through ``graphc run --sync``."""
    replicated = [st for st in plan.stages if len(st.devices) > 1]
    if len(plan.stages) != 1 or not replicated:
        choice: dict[str, object] = {"none": "the chosen layout is not pure data parallel"}
    else:
        gradient = [s for s in syncs if not isinstance(s, ParameterServerSync)] or [AllReduceSync()]
        try:
            choice = choose_sync(problem, plan.stages[0].devices, runs, target, gradient_syncs=gradient).to_dict()
        except ConfigurationError as exc:
            choice = {"none": str(exc)}
    plan.settings.setdefault("parallel", {})["sync_choice"] = choice


def sync_options(cluster: Cluster, sync: str, servers: Sequence[str] | None = None) -> list[Sync]:
    """The syncs tried, the default first: ``"auto"`` all-reduce by ring then hierarchical, each over
    :data:`BUCKET_CHOICES`; ``"ring"`` or ``"hierarchical"`` alone; ``"parameter-server"`` on
    ``servers`` (default: the cluster's CPU devices) with 25 MiB shards or one per stage."""
    if sync not in SYNCS:
        raise ConfigurationError(f"sync={sync!r}: expected one of {', '.join(SYNCS)}")
    if servers and sync != "parameter-server":
        raise ConfigurationError(f"servers={list(servers)} are for sync='parameter-server', not sync={sync!r}")
    if sync == "parameter-server":
        chosen = tuple(servers or (d.name for d in cluster.devices if d.category == "cpu"))
        if not chosen:
            raise ConfigurationError(
                f"sync='parameter-server' needs server devices, and cluster {cluster.name!r} has no CPU device: "
                "name some with servers=[...] (--servers cpu0,cpu1)"
            )
        unknown = [s for s in chosen if s not in cluster]
        if unknown:
            raise ConfigurationError(
                f"parameter servers {unknown} are not devices of cluster {cluster.name!r}: {cluster.device_names[:8]}"
            )
        return [ParameterServerSync(chosen, bucket_bytes=b) for b in (BUCKET_CHOICES[0], None)]
    algorithms = ("ring", "hierarchical") if sync == "auto" else (sync,)
    return [AllReduceSync(a, b) for a in algorithms for b in BUCKET_CHOICES]


def worker_devices(cluster: Cluster, servers: Collection[str] = ()) -> list[str]:
    """The devices replicas run on: those of the most numerous kind (the first such kind in cluster order
    on a tie), servers excluded, in cluster order."""
    devices = [d for d in cluster.devices if d.name not in servers]
    counts: dict[str, int] = {}
    for d in devices:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    kind = max(counts, key=lambda k: counts[k]) if counts else ""
    return [d.name for d in devices if d.kind == kind]


def replica_counts(problem: Problem, workers: Sequence[str]) -> list[int]:
    """Data-parallel replica counts :math:`R \\ge 2`: powers of two, every worker, and whole hosts (a
    power of two of them, or all), at most the batch size and dividing it when it is known; the
    :data:`MAX_REPLICA_COUNTS` largest."""
    n = len(workers)
    per_host: dict[str, int] = {}
    for w in workers:
        host = problem.cluster.device(w).host
        per_host[host] = per_host.get(host, 0) + 1
    counts = {2**k for k in range(1, n.bit_length())} | {n}
    if len(per_host) > 1 and len(set(per_host.values())) == 1:
        size, hosts = next(iter(per_host.values())), len(per_host)
        counts |= {size * 2**k for k in range(hosts.bit_length())} | {size * hosts}
    batch = problem.graph.batch_size()
    counts = {r for r in counts if 2 <= r <= n and (batch is None or batch % r == 0)}
    return sorted(counts)[-MAX_REPLICA_COUNTS:]


def replica_groups(cluster: Cluster, workers: Sequence[str]) -> list[tuple[str, list[tuple[str, ...]]]]:
    """Ways to split ``workers`` into equal replica groups of 2 to :data:`MAX_GROUP_DEVICES` devices, each
    with the word for one group: per host, per PCIe switch (or host when several), then consecutive runs
    of 2, 4, 8... devices (``"group of 2 hosts"`` for a run of whole hosts); duplicates removed, at most
    :data:`MAX_HYBRIDS`."""
    hosts: dict[str, list[str]] = {}
    for w in workers:
        hosts.setdefault(cluster.device(w).host, []).append(w)
    ways: list[tuple[str, list[tuple[str, ...]]]] = []
    if len(hosts) > 1:
        ways.append(("host", [tuple(h) for h in hosts.values()]))
    ways.append(("PCIe switch", [g for h in hosts.values() for g in islands(cluster, h)]))
    size = 2
    while size <= len(workers) // 2:
        runs = [tuple(workers[i : i + size]) for i in range(0, len(workers), size)]
        spans = [{cluster.device(d).host for d in run} for run in runs]
        whole = all(len(hs) > 1 and set(run) == {d for h in hs for d in hosts[h]} for run, hs in zip(runs, spans))
        ways.append((f"group of {len(spans[0])} hosts" if whole else f"run of {size} devices", runs))
        size *= 2
    seen: set[tuple[tuple[str, ...], ...]] = set()
    kept = []
    for word, groups in ways:
        key = tuple(groups)
        sizes = {len(g) for g in groups}
        if key in seen or len(sizes) != 1 or len(groups) < 2 or not 2 <= len(groups[0]) <= MAX_GROUP_DEVICES:
            continue
        seen.add(key)
        kept.append((word, groups))
    return kept[:MAX_HYBRIDS]


def group_problem(problem: Problem, group: Sequence[str], time_limit: float) -> Problem | None:
    """The problem restricted to the devices of ``group``: the sub-cluster of those devices with every
    switch and the links among them (routes between them are the cluster's), the same cost model, each
    node's allowed devices and each device's capacity kept; None when a node may run on none of them."""
    cluster = problem.cluster
    members = set(group)
    points = members | {s.name for s in cluster.switches}
    sub = Cluster(
        f"{cluster.name}[{','.join(group)}]",
        [cluster.device(d) for d in group],
        [lk for lk in cluster.links if lk.a in points and lk.b in points],
        cluster.switches,
        cluster.hosts,
    )
    index = {cluster.device_index(d): i for i, d in enumerate(group)}
    allowed = {n: [index[d] for d in ds if d in index] for n, ds in problem.resolved.allowed.items()}
    if not all(allowed.values()):
        return None
    resolved = Resolved(
        allowed=allowed,
        group_of=problem.resolved.group_of,
        groups=problem.resolved.groups,
        capacity=[problem.resolved.capacity[cluster.device_index(d)] for d in group],
    )
    return Problem(
        graph=problem.graph,
        cluster=sub,
        cost_model=problem.cost_model,
        resolved=resolved,
        objective="throughput",
        mode=problem.mode,
        time_limit=time_limit,
        seed=problem.seed,
    )


def _finished(
    problem: Problem, label: str, stages: list[Stage], counts: Sequence[int], sync: Sync, solver: str, groups: str = ""
) -> Candidate:
    """The candidate of ``stages`` (each stage's nodes assigned to its first device) with the fastest
    microbatch count of ``counts`` that fits; dropped with the reason when it is refused."""
    if not counts:
        replicas = len(stages[0].devices)
        if problem.microbatches is not None:
            why = f"microbatches={problem.microbatches} is not a multiple of its {replicas} replicas"
        else:
            why = f"batch {problem.graph.batch_size()} does not split over its {replicas} replicas"
        return Candidate(label, None, why)
    assignment = {n: st.devices[0] for st in stages for n in st.nodes}
    try:
        m = choose_microbatches(problem, assignment, candidates=counts, stages=stages).microbatches
        plan = finish_plan(problem, assignment, solver=solver, stages=stages, microbatches=m, sync=sync)
    except PlacementError as why:
        return Candidate(label, None, str(why), groups)
    return Candidate(label, plan, "", groups)


def _microbatch_counts(problem: Problem, replicas: int, multiples: Sequence[int]) -> list[int]:
    """``replicas x j`` for ``j`` in ``multiples``, dividing the batch when it is known; the problem's
    fixed count alone when it has one (if ``replicas`` divides it)."""
    if problem.microbatches is not None:
        return [problem.microbatches] if problem.microbatches % replicas == 0 else []
    batch = problem.graph.batch_size()
    return [replicas * j for j in multiples if batch is None or batch % (replicas * j) == 0]


def _data_parallel(problem: Problem, devices: Sequence[str], sync: Sync) -> Candidate:
    """Every node in one stage replicated on ``devices``, in their best ring order (:func:`ring_order`)."""
    ring = ring_order(problem.cluster, devices, problem.graph.total_param_bytes())
    stages = [Stage(index=0, nodes=list(problem.graph.node_names()), devices=ring)]
    counts = _microbatch_counts(problem, len(devices), DATA_MULTIPLES)
    return _finished(problem, f"data x{len(devices)}", stages, counts, sync, "data-parallel")


def ring_order(cluster: Cluster, devices: Sequence[str], nbytes: float) -> list[str]:
    """``devices`` in the order whose ring all-reduce of ``nbytes`` is fastest
    (:func:`placement.collectives.ring_allreduce`, links shared between ring edges counted) of two: the
    given order, and the greedy ring from the first device that always moves to the not yet visited
    device of the widest route (the lowest latency, then the given order, on a tie). The given order on
    a tie. On the ``dgx1-v100`` preset the greedy ring (GPUs 0-3-2-1-5-6-7-4) stays on NVLink, where the
    cluster order crosses PCIe and QPI from GPU 3 to GPU 4 and from 7 back to 0."""
    order = list(devices)
    if len(order) < 3:
        return order
    rank = {d: i for i, d in enumerate(order)}
    greedy, left = [order[0]], set(order[1:])
    while left:
        here = greedy[-1]
        nxt = min(left, key=lambda d: (-cluster.route(here, d).bandwidth, cluster.route(here, d).latency_s, rank[d]))
        greedy.append(nxt)
        left.remove(nxt)
    given_ms = duration_ms(ring_allreduce(cluster, order, nbytes))
    return greedy if duration_ms(ring_allreduce(cluster, greedy, nbytes)) < given_ms * (1 - TIE) else order


def _pipelines(problem: Problem, sync: Sync, options: dict[str, object]) -> list[Candidate]:
    """The pipeline solver's plan as asked (PipeDream's replicated stages unless ``replication=False``),
    and, when that one replicates a stage (or fails), the split without replicas."""
    asked = options.get("replication")
    first = _pipeline(problem, asked, sync, options)
    if asked is False or (first.plan is not None and not _replicated(first.plan)):
        return [first]
    return [first, _pipeline(problem, False, sync, options)]


def _pipeline(problem: Problem, replication: object, sync: Sync, options: dict[str, object]) -> Candidate:
    rest = {k: v for k, v in options.items() if k != "replication"}
    try:
        plan = solve_throughput(replace(problem, started=time.perf_counter()), replication=replication, **rest)  # type: ignore[arg-type]
    except PlacementError as why:
        return Candidate("pipeline" if replication is False else "PipeDream pipeline", None, str(why))
    return Candidate(_pipeline_label(plan.stages), _with_sync(problem, plan, sync))


def _replicated(plan: Plan) -> bool:
    return any(len(st.devices) > 1 for st in plan.stages)


def _pipeline_label(stages: Sequence[Stage]) -> str:
    """``pipeline(S)``, ``pipeline(S: r1+r2+...)`` with replicated stages, ``data xR (pipeline solver)``
    for one replicated stage."""
    if len(stages) == 1 and len(stages[0].devices) > 1:
        return f"data x{len(stages[0].devices)} (pipeline solver)"
    if all(len(st.devices) == 1 for st in stages):
        return f"pipeline({len(stages)})"
    return f"pipeline({len(stages)}: {'+'.join(str(len(st.devices)) for st in stages)})"


def _with_sync(problem: Problem, plan: Plan, sync: Sync) -> Plan:
    """``plan`` recording ``sync``, finished again when it has replicated stages and another sync."""
    if plan.sync == sync or not _replicated(plan):
        return plan
    return finish_plan(problem, plan.assignment, solver=plan.solver, settings=plan.settings, stages=plan.stages,
                       microbatches=plan.microbatches, sync=sync)  # fmt: skip


def _hybrids(problem: Problem, workers: Sequence[str], sync: Sync, options: dict[str, object]) -> list[Candidate]:
    """One candidate per grouping of :func:`replica_groups`: the first group's pipeline copied onto the
    others (module docstring). A grouping whose pipeline is one stage is data parallelism, skipped."""
    ways = replica_groups(problem.cluster, workers)
    out = []
    for word, groups in ways:
        R, G = len(groups), len(groups[0])
        label = f"hybrid {R} x pipeline({G})"
        sub = group_problem(problem, groups[0], HYBRID_SHARE * problem.time_limit / len(ways))
        if sub is None:
            out.append(Candidate(label, None, f"the constraints keep some node off every device of {groups[0]}"))
            continue
        try:
            inner = solve_throughput(sub, **options)  # type: ignore[arg-type]
        except PlacementError as why:
            out.append(Candidate(label, None, f"no pipeline fits on {G} devices: {why}", word))
            continue
        if len(inner.stages) == 1:  # one stage, replicated or not: data parallelism, a candidate already
            continue
        position = {d: i for i, d in enumerate(groups[0])}
        stages = [
            Stage(index=st.index, nodes=list(st.nodes), devices=[groups[j][position[d]] for d in st.devices for j in range(R)])
            for st in inner.stages
        ]
        label = f"hybrid {R} x {_pipeline_label(inner.stages)}"
        counts = _microbatch_counts(problem, R, HYBRID_MULTIPLES)
        out.append(_finished(problem, label, stages, counts, sync, "hybrid", word))
    return out


def _refuse_servers(candidate: Candidate, servers: set[str]) -> Candidate:
    """A candidate that runs a node on a parameter server, or has no replicas to sync, is dropped."""
    plan = candidate.plan
    if plan is None:
        return candidate
    busy = sorted(servers & set(plan.devices_used()))
    if busy:
        return Candidate(candidate.label, None, f"runs nodes on parameter servers {busy}")
    if not _replicated(plan):
        return Candidate(candidate.label, None, "has no replicas to synchronise through parameter servers")
    return candidate


def _sync_label(sync: Sync) -> str:
    bucket = "one bucket" if sync.bucket_bytes is None else f"{sync.bucket_bytes / MiB:g} MiB buckets"
    if isinstance(sync, ParameterServerSync):
        return f"parameter servers {','.join(sync.servers)}, {bucket}"
    return f"{sync.algorithm}, {bucket}"


def _best_sync(problem: Problem, plan: Plan, syncs: Sequence[Sync]) -> tuple[Plan, dict[str, float]]:
    """``plan`` with the fastest of ``syncs`` that fits (its own first on a tie), and each sync's ms."""
    capacity = dict(zip(problem.cluster.device_names, problem.resolved.capacity))
    times = {_sync_label(plan.sync): plan.predicted_step_ms}
    best, best_ms = plan.sync, plan.predicted_step_ms
    for sync in syncs:
        if sync == plan.sync:
            continue
        result = predict(problem, plan.assignment, stages=plan.stages, microbatches=plan.microbatches, sync=sync).result
        times[_sync_label(sync)] = result.step_ms
        fits = all(peak <= capacity[d] for d, peak in result.peak_memory_bytes.items())
        if fits and result.step_ms < best_ms * (1 - TIE):
            best, best_ms = sync, result.step_ms
    if best == plan.sync:
        return plan, times
    return _with_sync(problem, plan, best), times


def _choose(problem: Problem, families: dict[str, list[Candidate]], syncs: Sequence[Sync], parallel: str) -> Plan:
    """The fastest fitting candidate (the first on a tie) once the :data:`SYNC_FINALISTS` fastest of each
    family (pipelines, data parallel, hybrids) chose their sync: so ``"auto"`` tries every sync that a
    single mode would, and is never slower than it."""
    candidates = [c for cs in families.values() for c in cs]
    fitting = [c for c in candidates if c.plan is not None]
    if not fitting:
        reasons = "; ".join(f"{c.label}: {c.dropped}" for c in candidates) or "no layout applies to this cluster"
        raise InfeasibleError(f"no {parallel} layout of {problem.graph.name!r} fits on {problem.cluster.name}: {reasons}")
    sync_ms: dict[str, dict[str, float]] = {}
    for family in families.values():
        ranked = sorted((c for c in family if c.plan is not None), key=lambda c: c.plan.predicted_step_ms)  # type: ignore[union-attr]
        for c in ranked[:SYNC_FINALISTS]:  # sorted is stable: ties keep their order
            assert c.plan is not None
            if _replicated(c.plan) and len(syncs) > 1:
                c.plan, sync_ms[c.label] = _best_sync(problem, c.plan, syncs)
    chosen = fitting[0]
    for c in fitting[1:]:
        if c.plan.predicted_step_ms < chosen.plan.predicted_step_ms * (1 - TIE):  # type: ignore[union-attr]
            chosen = c
    plan = chosen.plan
    assert plan is not None
    plan.settings = {
        **plan.settings,
        "parallel": {
            "mode": parallel,
            "candidates": {c.label: c.plan.predicted_step_ms for c in fitting},  # type: ignore[union-attr]
            "dropped": {c.label: c.dropped for c in candidates if c.plan is None},
            "chosen": chosen.label,
            "reason": reason(problem, chosen, fitting),
            "sync": sync_to_dict(plan.sync),
            "sync_ms": sync_ms.get(chosen.label, {}),
        },
    }
    return plan


def reason(problem: Problem, chosen: Candidate, fitting: Sequence[Candidate]) -> str:
    """Why ``chosen`` won, in words: its time against the best of each other kind of layout, and for
    replicated layouts the links their gradients cross."""
    assert chosen.plan is not None
    plan = chosen.plan
    others = sorted((c for c in fitting if c is not chosen), key=lambda c: c.plan.predicted_step_ms)  # type: ignore[union-attr]
    parts = [f"{chosen.label}: {plan.predicted_step_ms:.3g} ms per global batch"]
    if others:
        runner = others[0]
        parts.append(f"next {runner.label} {runner.plan.predicted_step_ms:.3g} ms")  # type: ignore[union-attr]
    replicated = [st for st in plan.stages if len(st.devices) > 1]
    if replicated:
        crossing = _crossed_links(problem.cluster, replicated[0].devices) or "no link"
        where = f"the gradient all-reduce crosses {crossing}"
        if chosen.groups:
            where = f"pipeline traffic stays inside each {chosen.groups}, only {where} between them"
        parts.append(f"{where}; sync {_sync_label(plan.sync)}")
    return "; ".join(parts)


def _crossed_links(cluster: Cluster, devices: Sequence[str]) -> str:
    """The slowest kind of link on the routes between consecutive ``devices`` (a ring over them)."""
    slowest: tuple[float, str] | None = None
    links = {lk.name: lk for lk in cluster.links}
    for a, b in zip(devices, [*devices[1:], devices[0]]):
        for name in cluster.route(a, b).links:
            lk = links[name]
            if slowest is None or lk.bandwidth < slowest[0]:
                slowest = (lk.bandwidth, lk.kind)
    if slowest is None:
        return ""
    kinds = {"infiniband": "InfiniBand", "nvlink": "NVLink", "pcie": "PCIe", "qpi": "QPI", "upi": "UPI"}
    return f"{kinds.get(slowest[1], slowest[1])} ({slowest[0] / 1e9:.3g} GB/s)"


__all__ = [
    "BUCKET_CHOICES",
    "PARALLEL",
    "SYNCS",
    "Candidate",
    "group_problem",
    "reason",
    "record_sync_choice",
    "replica_counts",
    "replica_groups",
    "solve_parallel",
    "sync_options",
    "worker_devices",
]
