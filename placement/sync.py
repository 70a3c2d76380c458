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

Torch-free: the schedule generator turns a plan's sync into actions, the simulator prices them, the
executors run them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
        staleness: 0 for synchronous training; ``s > 0`` lets a worker run up to ``s`` steps ahead of
            the weights it last received (asynchronous with bounded staleness).
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


Sync = AllReduceSync | ParameterServerSync


def sync_to_dict(sync: Sync) -> dict[str, Any]:
    """The JSON form of ``sync`` (:func:`sync_from_dict` reads it back)."""
    if isinstance(sync, AllReduceSync):
        return {"kind": sync.KIND, "algorithm": sync.algorithm, "bucket_bytes": sync.bucket_bytes}
    return {
        "kind": sync.KIND,
        "servers": list(sync.servers),
        "staleness": sync.staleness,
        "bucket_bytes": sync.bucket_bytes,
    }


def sync_from_dict(doc: Any, source: str = "<dict>") -> Sync:
    """Validate and build a sync record; a bad one raises :class:`PlanFormatError` naming ``source``."""
    if not isinstance(doc, dict) or doc.get("kind") not in (AllReduceSync.KIND, ParameterServerSync.KIND):
        raise PlanFormatError(
            f"{source}: sync: expected an object with kind {AllReduceSync.KIND!r} or {ParameterServerSync.KIND!r}"
        )
    fields = {k: v for k, v in doc.items() if k != "kind"}
    cls = AllReduceSync if doc["kind"] == AllReduceSync.KIND else ParameterServerSync
    allowed = set(cls.__dataclass_fields__)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise PlanFormatError(f"{source}: sync.{unknown[0]}: unknown field for kind {doc['kind']!r}")
    if cls is ParameterServerSync:
        servers = fields.get("servers")
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise PlanFormatError(f"{source}: sync.servers: expected a list of device names")
        fields["servers"] = tuple(servers)
    try:
        return cls(**fields)
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
