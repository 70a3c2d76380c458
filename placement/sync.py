"""How the data-parallel replicas of a plan keep their parameters equal: the synchronisation a plan records.

A plan whose stages are replicated (:class:`placement.plan.Stage` with several devices; one stage holding
every node is pure data parallelism) trains each replica on its share of the microbatches, so after the
backward the replicas' gradients must be combined. The talk names the two ways multi-machine SGD does it:

* **sending gradients** (:class:`AllReduceSync`): the replicas of a stage all-reduce its gradients, as
  PyTorch's ``DistributedDataParallel`` does: in *buckets* of about ``bucket_bytes``, filled in the
  order backward makes the gradients, each all-reduced as soon as the last replica has made it, so the
  communication overlaps the rest of the backward. ``algorithm`` is ``"ring"`` (reduce-scatter then
  all-gather around all replicas) or ``"hierarchical"`` (reduce inside each island of close devices,
  :func:`islands`, all-reduce among the islands' leaders, broadcast back inside each island);
* **sending weights** (:class:`ParameterServerSync`): the parameters are sharded over server devices
  (CPU processes, as the talk's 64 CPU servers); workers push their gradients to the shard's server,
  which sums them, applies the optimizer, and sends the fresh weights back.

Buckets (:func:`gradient_buckets`) are the unit of both: a bucket is a run of nodes, in the order their
backwards run, whose parameter bytes reach ``bucket_bytes`` (the last bucket holds the rest). DDP's
default cap is 25 MiB (``bucket_cap_mb=25``); ``bucket_bytes=None`` makes one bucket of the whole stage,
all-reduced after its last backward.

The averaging strategies of issue 16 are records of the same kind, for planning (their time to accuracy,
:mod:`placement.time_to_accuracy`) and for the JSON that carries that choice; the schedule generator,
the simulator and the executors run the two gradient syncs above (:data:`Sync`), and
:mod:`runtime.averaging` runs these:

* **elastic averaging** (:class:`ElasticAveragingSync`; Zhang, Choromanska, LeCun 2015): every replica
  trains alone and, every ``tau`` steps, it and a center variable move toward each other by ``alpha``
  (``beta = N alpha``, the paper's ``beta = 0.9``): synchronously over one all-reduce of the parameters
  (EASGD; EAMSGD with Nesterov momentum on the workers), or asynchronously against the center sharded
  over parameter servers, fetched ``prefetch`` local steps ahead of the exchange;
* **local SGD** (:class:`LocalSGDSync`): every ``period`` (``H``) steps the replicas average their
  parameters (one all-reduce; ``outer="average"``), or take DiLoCo's outer Nesterov step on the averaged
  change (``outer="nesterov"``).

Torch-free: the schedule generator turns a plan's sync into actions, the simulator prices them, the
executors run them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from placement.errors import ConfigurationError, PlanFormatError

if TYPE_CHECKING:
    from graphc.ir.graph import Graph
    from placement.cluster import Cluster

ALGORITHMS = ("ring", "hierarchical")
DEFAULT_BUCKET_BYTES = 25 * 2**20  # torch DistributedDataParallel's bucket_cap_mb=25


@dataclass(frozen=True)
class AllReduceSync:
    """Replicas send gradients: each replicated stage all-reduces its gradients in buckets (module docstring).

    Attributes:
        algorithm: ``"ring"`` or ``"hierarchical"``.
        bucket_bytes: the bytes of parameters a bucket collects before it closes; None: one bucket per
            stage, all-reduced after the stage's last backward.
    """

    KIND: ClassVar[str] = "allreduce"
    algorithm: str = "ring"
    bucket_bytes: float | None = DEFAULT_BUCKET_BYTES

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigurationError(f"all-reduce algorithm {self.algorithm!r}: expected one of {ALGORITHMS}")
        if self.bucket_bytes is not None and not self.bucket_bytes > 0:
            raise ConfigurationError(
                f"bucket_bytes={self.bucket_bytes!r}: expected a number of bytes > 0, or None for one bucket per stage"
            )


@dataclass(frozen=True)
class ParameterServerSync:
    """Replicas send gradients to parameter servers and receive weights (module docstring).

    Attributes:
        servers: the devices (of the plan's cluster, running no node) that hold the parameter shards.
        staleness: 0 for synchronous training (the replicas' gradients summed, one update per step:
            the schedule's Reduce, OptimizerStep, Broadcast); ``s > 0``: asynchronous with bounded
            staleness, each worker on its own clock: it pushes its step-``t`` gradient and, before step
            ``t + 1``, waits only for the weights that answer its push of step ``t - s``, so it computes
            step ``t`` on weights holding at least its first ``t - s`` gradients; each server applies
            every gradient as it arrives and answers the pusher with its weights then. Run by
            :func:`runtime.servers.train_async` (a pure data-parallel plan), priced by
            :func:`placement.simulate.async_server_step`; no schedule is generated for it.
        bucket_bytes: the bytes of parameters one shard-message collects (as :class:`AllReduceSync`).
    """

    KIND: ClassVar[str] = "parameter-server"
    servers: tuple[str, ...]
    staleness: int = 0
    bucket_bytes: float | None = DEFAULT_BUCKET_BYTES

    def __post_init__(self) -> None:
        if not self.servers or len(set(self.servers)) != len(self.servers):
            raise ConfigurationError(f"parameter servers {list(self.servers)}: expected one or more distinct devices")
        if not isinstance(self.staleness, int) or self.staleness < 0:
            raise ConfigurationError(f"staleness={self.staleness!r}: expected an integer >= 0 (0: synchronous)")
        if self.bucket_bytes is not None and not self.bucket_bytes > 0:
            raise ConfigurationError(f"bucket_bytes={self.bucket_bytes!r}: expected a number of bytes > 0, or None")


OUTER_STEPS = ("average", "nesterov")


@dataclass(frozen=True)
class ElasticAveragingSync:
    """Replicas train alone and exchange with a center variable every ``tau`` steps (module docstring).

    Attributes:
        tau: local steps between exchanges (the paper's and the talk's 10).
        alpha: the moving rate; None: ``beta / N`` with the paper's ``beta = N alpha = 0.9``.
        momentum: the workers' Nesterov momentum (EAMSGD, ``delta``); 0: plain SGD on the workers (EASGD).
        asynchronous: the center sharded over parameter servers, each worker exchanging without waiting
            for the others; False: every worker at once over one all-reduce.
        prefetch: asynchronous only, ``0 <= prefetch < tau``: the center is fetched this many local steps
            before the exchange, so the fetch overlaps them (the talk's 5).
    """

    KIND: ClassVar[str] = "elastic-averaging"
    tau: int = 10
    alpha: float | None = None
    momentum: float = 0.0
    asynchronous: bool = False
    prefetch: int = 0

    def __post_init__(self) -> None:
        _check_period("tau", self.tau)
        if self.alpha is not None and (not _is_real(self.alpha) or not 0 < self.alpha <= 1):
            raise ConfigurationError(f"alpha={self.alpha!r}: expected 0 < alpha <= 1, or None for beta / N with beta = 0.9")
        if not _is_real(self.momentum) or not 0 <= self.momentum < 1:
            raise ConfigurationError(f"momentum={self.momentum!r}: expected 0 <= momentum < 1 (0: EASGD, > 0: EAMSGD)")
        if not isinstance(self.asynchronous, bool):
            raise ConfigurationError(f"asynchronous={self.asynchronous!r}: expected true or false")
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or not 0 <= self.prefetch < self.tau:
            raise ConfigurationError(f"prefetch={self.prefetch!r}: expected an integer 0 <= prefetch < tau = {self.tau}")
        if self.prefetch and not self.asynchronous:
            raise ConfigurationError(f"prefetch={self.prefetch}: only asynchronous EASGD fetches the center ahead; set asynchronous=True or prefetch=0")


@dataclass(frozen=True)
class LocalSGDSync:
    """Replicas train alone and average every ``period`` steps (module docstring).

    Attributes:
        period: local steps between averagings, ``H``.
        outer: ``"average"`` (local SGD: every replica takes the mean) or ``"nesterov"`` (DiLoCo: an outer
            SGD step with Nesterov momentum on the mean change of the round).
    """

    KIND: ClassVar[str] = "local-sgd"
    period: int = 10
    outer: str = "average"

    def __post_init__(self) -> None:
        _check_period("period", self.period)
        if self.outer not in OUTER_STEPS:
            raise ConfigurationError(f"outer={self.outer!r}: expected one of {OUTER_STEPS} (local SGD, DiLoCo)")


def _check_period(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name}={value!r}: expected an integer >= 1 (local steps between exchanges)")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: The gradient syncs a plan's schedule runs (the simulator and the executors take these).
Sync = AllReduceSync | ParameterServerSync
#: The averaging strategies (planned by time to accuracy, run by :mod:`runtime.averaging`).
AveragingSync = ElasticAveragingSync | LocalSGDSync
AnySync = Sync | AveragingSync
GRADIENT_SYNCS: tuple[type, ...] = (AllReduceSync, ParameterServerSync)
ALL_SYNCS: tuple[type, ...] = (*GRADIENT_SYNCS, ElasticAveragingSync, LocalSGDSync)


def sync_to_dict(sync: AnySync) -> dict[str, Any]:
    """The JSON form of ``sync``: its kind and fields (:func:`sync_from_dict` reads it back)."""
    doc: dict[str, Any] = {"kind": sync.KIND}
    for f in fields(sync):
        value = getattr(sync, f.name)
        doc[f.name] = list(value) if isinstance(value, tuple) else value
    return doc


def sync_from_dict(doc: Any, source: str = "<dict>") -> Sync:
    """Validate and build a plan's sync record (a gradient sync, :data:`Sync`); a bad one raises
    :class:`PlanFormatError` naming ``source``."""
    sync = _record(doc, source, GRADIENT_SYNCS)
    assert isinstance(sync, (AllReduceSync, ParameterServerSync))
    return sync


def any_sync_from_dict(doc: Any, source: str = "<dict>") -> AnySync:
    """Validate and build any sync record, the averaging strategies included (:func:`sync_from_dict`)."""
    return _record(doc, source, ALL_SYNCS)


def _record(doc: Any, source: str, kinds: Sequence[type]) -> AnySync:
    """The record of ``doc``, whose kind must be one of ``kinds``' (error messages name ``source``)."""
    by_kind = {cls.KIND: cls for cls in kinds}  # type: ignore[attr-defined]
    if not isinstance(doc, dict) or doc.get("kind") not in by_kind:
        expected = " or ".join(repr(k) for k in by_kind)
        raise PlanFormatError(f"{source}: sync: expected an object with kind {expected}")
    given = {k: v for k, v in doc.items() if k != "kind"}
    cls = by_kind[doc["kind"]]
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise PlanFormatError(f"{source}: sync.{unknown[0]}: unknown field for kind {doc['kind']!r}")
    if cls is ParameterServerSync:
        servers = given.get("servers")
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise PlanFormatError(f"{source}: sync.servers: expected a list of device names")
        given["servers"] = tuple(servers)
    try:
        return cls(**given)
    except (TypeError, ConfigurationError) as exc:
        raise PlanFormatError(f"{source}: sync: {exc}") from None


@dataclass(frozen=True)
class Bucket:
    """Parameters whose gradients travel together (module docstring).

    Attributes:
        index: position in the order the buckets become ready (0 first).
        nodes: the nodes whose parameters it holds, in the order their backwards run.
        nbytes: the bytes of those parameters (of their gradients).
    """

    index: int
    nodes: tuple[str, ...]
    nbytes: float


def gradient_buckets(graph: Graph, backward_order: Sequence[str], bucket_bytes: float | None) -> list[Bucket]:
    """The buckets of the nodes in ``backward_order`` (the order their backwards run on one replica):
    nodes without parameters are skipped; a bucket closes once its bytes reach ``bucket_bytes`` (None:
    one bucket of every node with parameters). Empty when no node has parameters."""
    buckets: list[Bucket] = []
    nodes: list[str] = []
    nbytes = 0.0
    for name in backward_order:
        size = graph.node(name).param_bytes
        if size <= 0:
            continue
        nodes.append(name)
        nbytes += size
        if bucket_bytes is not None and nbytes >= bucket_bytes:
            buckets.append(Bucket(len(buckets), tuple(nodes), nbytes))
            nodes, nbytes = [], 0.0
    if nodes:
        buckets.append(Bucket(len(buckets), tuple(nodes), nbytes))
    return buckets


def islands(cluster: Cluster, devices: Sequence[str]) -> list[tuple[str, ...]]:
    """The islands of a hierarchical all-reduce over ``devices``: by host when they span several hosts,
    else by the PCIe switch each device hangs from (a device with none is an island of its own). Islands
    and their members keep the order of ``devices``; the first member of each is its leader."""
    hosts = {cluster.device(d).host for d in devices}
    topology = cluster.topology
    kinds = {s.name: s.kind for s in cluster.switches}

    def key(device: str) -> str:
        if len(hosts) > 1:
            return cluster.device(device).host
        switches = sorted(n for n in topology.neighbors(device) if kinds.get(n) == "pcie_switch")
        return switches[0] if switches else device

    groups: dict[str, list[str]] = {}
    for d in devices:
        groups.setdefault(key(d), []).append(d)
    return [tuple(g) for g in groups.values()]
