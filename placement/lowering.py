"""One lowering of a placement problem: graph + cluster + cost model as integer-indexed arrays.

The solver instances (:mod:`placement.solvers.instance`), the pipeline instances
(:mod:`placement.pipeline.build`) and the lower bounds (:mod:`placement.bounds`) all read the
:class:`Lowered` record :func:`lower` builds, so that each fact below is derived here once and every
consumer sees the same figures as the simulator (:mod:`placement.simulate`, whose model it follows):

* **Nodes.** Every node of the graph, except that in inference a graph holding explicit backward nodes
  (``NodeData.is_backward``, the dnn-partitioning training files) leaves them out: they do not run
  (``dropped``). ``has_bwd``: the step derives a backward task per node (training a graph of forward
  nodes; a graph with explicit backward nodes is simulated as given).
* **Order.** Nodes are numbered in the simulator's topological order (:func:`topological_indices`):
  the graph's insertion order when it is topological, else Kahn's algorithm taking the smallest
  insertion index first among the ready nodes. Edges keep the graph's edge order, renumbered.
* **Graph inputs** (:func:`placement.cost_model.graph_inputs`) cost no compute and receive no gradient
  (``is_input``; ``needs_grad`` is its negation).
* **Times.** Devices with equal :meth:`Device.speed_key` form a class (classes in order of their first
  device); the cost model prices each node once per class, on the whole batch: ``class_fwd[v, c]``,
  ``class_bwd[v, c]`` in ms (zero for inputs, and the backward zero unless ``has_bwd``); ``fwd`` and
  ``bwd`` spread them to every device. ``kinds_ok[v, c]``: the node's ``allowed_kinds`` admit the
  class's kind or category. With microbatches, each one's parameter gradients are added into
  ``.grad`` on the device that ran it (:meth:`Lowered.accumulation_ms`): a memory-bound add, priced at
  the device's ``memory_bandwidth``, which the split pass times leave out.
* **Memory** (bytes per node, whole batch): ``static`` = ``memory_bytes`` when the node gives one, else
  ``(2 + optimizer_state_factor) x param_bytes + buffer_bytes`` in training (parameters, gradients,
  optimizer state; the gradients, ``grad_bytes``, are made by the node's backward, which the simulator
  counts from the node's first backward when ``has_bwd``) and ``param_bytes + buffer_bytes`` in
  inference; ``held`` = what the node keeps
  alive during the step: its ``activation_bytes`` when ``has_bwd``, else its ``output_bytes`` (0 for a
  node with ``memory_bytes``, whose figure is its whole footprint, and for a graph input, which the
  step is given). What else the simulator counts
  for a node when ``has_bwd`` (0 otherwise, and for inputs and nodes with ``memory_bytes``):
  ``backward_temp``, its backward's temporary, at most ``output_bytes + bytes of its in-edges from
  non-inputs`` (the gradient it is given and those it makes, alive together), ``shared_sum``, what
  more its backward makes where a parameter is shared (``EdgeData.param_bytes``) with a use on the same
  device: the new sum of its gradients (a user: its shared in-edges' bytes) or the owner's new gradient
  and that sum (twice its largest shared out-edge), and ``loss_bytes``,
  three output-sized tensors of a graph output (``is_output``: the
  output returned, the loss's kept tensor and its gradient).
* **Memory bounds.** ``static + held`` is what a lower bound may count (:mod:`placement.bounds`) and
  what the solvers' instances count per node (:mod:`placement.solvers.instance`): an estimate that
  leaves out the backward temporaries and the loss tensors (the list schedulers' memory ledger adds the
  graph outputs' loss tensors and largest temporary, :func:`placement.solvers.listsched.loss_and_temp`),
  which :func:`placement.problem.finish_plan` checks by simulation. The simulated peak of a device (:mod:`placement.simulate`, "Memory") is at most
  the sum over its nodes of ``static + held + loss_bytes``, plus the largest ``backward_temp + shared_sum`` among
  them, plus, for each edge cut by the placement, its bytes on the consumer's device (the received
  tensor) and in training, when the producer takes a gradient, twice on the producer's device (the
  received gradient and the sent tensor, kept until its backward) and once more on the consumer's
  (the gradient it sends back, kept to the step's end), and each microbatch's loss and its
  gradient (two scalars, ``LOSS_SCALAR_BYTES``, per graph output), and on an owner's device, for each
  microbatch after the first, the buffer that sums its shared parameter's gradients before the owner
  adds it into ``.grad`` (:meth:`Lowered.memory_upper_bound`):
  for any schedule and microbatch count
  without replicated stages and without shared parameters on cut edges (``EdgeData.param_bytes``,
  which every microbatch receives whole), since each microbatch holds ``1/m`` of a tensor, a device runs one
  backward at a time, and a group's send is no larger than the sum of its edges. The largest
  temporary is not a per-node sum: adding every node's would double the estimate of a chain.
* **Edges**: ``src``, ``dst``, ``nbytes``, ``edge_data``; ``send_bytes[u]`` = :func:`send_bytes` of all
  of ``u``'s out-edges (what one send of its output to another device carries at most).
* **Routes** between every ordered pair of devices: ``lat`` (ms), ``inv_bw`` (ms per byte), their raw
  ``latency_s`` and ``bandwidth``, and the link ``resources`` a transfer holds (zero, inf and ``()`` on
  the diagonal); built on first use, as are ``preds``/``succs`` and the per-device ``fwd``/``bwd``: the
  simulator, which lowers the graph itself when given no lowering, reads only the routes it uses.

Public API (``placement.lower``, ``placement.Lowered``): :func:`placement.simulate` takes a lowering
(``lowered=``) so that many simulations of one problem lower it once; without one it lowers itself.

A lowering is built once per problem: :meth:`placement.problem.Problem.lowered` builds it on first use
and keeps it. The problem owns its graph: a graph is a mutable networkx wrapper with no version to key
a cache on honestly, so one edited after its problem was made needs a new problem (or a fresh
:func:`lower`). :func:`lower` itself never caches.

Cost: linear in nodes and edges, one cost-model pass per device class; ``D^2`` route lookups when the
routes are first read.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from graphc.ir.graph import EdgeData, Graph, NodeData
from placement.cluster import Cluster, Device
from placement.cost_model import CostModel, graph_inputs
from placement.errors import ConfigurationError, PlacementError

MODES = ("training", "inference")


class IndexedSizes:
    """The sizes of an integer-indexed problem, read from its ``names``, ``devices`` and ``src`` (edge
    sources): shared by :class:`Lowered` and the solvers' :class:`~placement.solvers.instance.Instance`."""

    names: Sequence[str]
    devices: Sequence[Device]
    src: np.ndarray

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def num_edges(self) -> int:
        return len(self.src)


@dataclass(frozen=True, eq=False)
class Lowered(IndexedSizes):
    """Graph + cluster + cost model of one problem as arrays (module docstring). Arrays are read-only:
    every consumer shares them.

    Attributes:
        graph, cluster, cost_model: what it was lowered from.
        mode, optimizer_state_factor: the step lowered (``"training"`` or ``"inference"``).
        explicit_backward: the graph holds explicit backward nodes.
        has_bwd: the step derives a backward task per node.
        names: kept node names in topological order; ``index`` maps them back; ``data`` their NodeData.
        dropped: graph nodes left out (explicit backward nodes in inference), in graph order.
        is_input: (n,) the node is a graph input.
        devices: the cluster's devices (index = device id).
        device_class: (D,) class id of each device; ``classes[c]`` lists the class's device ids.
        class_fwd, class_bwd: (n, C) whole-batch ms of each node on a device of each class.
        kinds_ok: (n, C) the node's ``allowed_kinds`` admit the class.
        src, dst: (E,) edge endpoints (node ids) in the graph's edge order; ``edge_data`` their EdgeData.
        nbytes: (E,) edge bytes.
        static, held, param_bytes, send_bytes: (n,) bytes (module docstring).
        modules: per node, the module it belongs to ("" if none).

    Built on first use (the simulator, which lowers for every call made without a lowering, needs none
    of them): ``grad_bytes``, ``backward_temp`` and ``loss_bytes`` ((n,) bytes, module docstring);
    ``shared_bytes`` ((E,) bytes); ``shared_owner_bytes``, ``shared_sum`` and ``counts_temporaries`` ((n,),
    module docstring); ``fwd``/``bwd`` per device; ``preds``/``succs``, per node its (other node, edge id) pairs
    in edge order; the routes: ``latency_s``, ``bandwidth`` ((D, D) raw figures), ``lat``, ``inv_bw``
    (the same in ms and ms/byte) and ``resources`` (``resources[a][b]``, the link resources of the route
    from ``a`` to ``b``).
    """

    graph: Graph
    cluster: Cluster
    cost_model: CostModel
    mode: str
    optimizer_state_factor: float
    explicit_backward: bool
    has_bwd: bool
    names: list[str]
    index: dict[str, int]
    data: list[NodeData]
    dropped: list[str]
    is_input: np.ndarray
    devices: list[Device]
    device_class: np.ndarray
    classes: list[list[int]]
    class_fwd: np.ndarray
    class_bwd: np.ndarray
    kinds_ok: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    edge_data: list[EdgeData]
    nbytes: np.ndarray
    static: np.ndarray
    held: np.ndarray
    param_bytes: np.ndarray
    send_bytes: np.ndarray
    modules: list[str]

    @property
    def training(self) -> bool:
        return self.mode == "training"

    @property
    def needs_grad(self) -> np.ndarray:
        """(n,) the node receives a gradient: every node but the graph inputs."""
        return ~self.is_input

    @cached_property
    def fwd(self) -> np.ndarray:
        """(n, D) whole-batch forward ms of each node on each device (built on first use)."""
        return _frozen(self.class_fwd[:, self.device_class])

    @cached_property
    def bwd(self) -> np.ndarray:
        """(n, D) whole-batch backward ms of each node on each device (built on first use)."""
        return _frozen(self.class_bwd[:, self.device_class])

    def memory_upper_bound(self, dev: Sequence[int] | np.ndarray, microbatches: int = 1) -> np.ndarray:
        """(D,) an upper bound of each device's simulated peak memory when node ``v`` is placed on device
        ``dev[v]``, for any schedule and up to ``microbatches`` microbatches without replicated stages
        (module docstring, "Memory bounds")."""
        dev = np.asarray(dev, dtype=np.int64)
        D = self.num_devices
        scalars = 2 * LOSS_SCALAR_BYTES * microbatches * (self.loss_bytes > 0)  # each microbatch's loss
        bound = np.bincount(dev, weights=self.static + self.held + self.loss_bytes + scalars, minlength=D)
        largest_temp = np.zeros(D)
        np.maximum.at(largest_temp, dev, self.backward_temp + self.shared_sum)
        bound += largest_temp
        bound += (microbatches - 1) * np.bincount(dev, weights=self.shared_owner_bytes, minlength=D)
        cut = dev[self.src] != dev[self.dst]
        bound += np.bincount(dev[self.dst[cut]], weights=self.nbytes[cut], minlength=D)
        if self.has_bwd:  # the gradient received, the sent tensor kept until then, the gradient sent
            grad = cut & self.needs_grad[self.src]
            bound += 2 * np.bincount(dev[self.src[grad]], weights=self.nbytes[grad], minlength=D)
            bound += np.bincount(dev[self.dst[grad]], weights=self.nbytes[grad], minlength=D)
        return bound

    def accumulation_ms(self, dev: Sequence[int] | np.ndarray, runs: Sequence[int]) -> np.ndarray:
        """(n,) what adding each microbatch's parameter gradients into ``.grad`` adds to one backward of
        node ``v`` on device ``dev[v]``, which runs ``runs[dev[v]]`` of the step's microbatches (module
        docstring, "Times"): the device adds ``k - 1`` times (the first backward sets ``.grad``), each
        reading two and writing one tensor of the node's gradient bytes at its memory bandwidth, spread
        evenly over its ``k`` backwards. Zero for a node that takes no gradient."""
        dev = np.asarray(dev, dtype=np.int64)
        k = np.maximum(np.asarray(runs, dtype=np.float64)[dev], 1.0)
        bandwidth = np.array([d.memory_bandwidth for d in self.devices])[dev]
        return (k - 1) / k * 3e3 * self.grad_bytes * self.needs_grad / bandwidth

    @cached_property
    def shared_bytes(self) -> np.ndarray:
        """(E,) the bytes of each edge that are a shared parameter (``EdgeData.param_bytes``, at most the
        edge's bytes): sent whole by every microbatch (built on first use)."""
        return _frozen(np.minimum(self.nbytes, [e.param_bytes for e in self.edge_data]))

    @cached_property
    def shared_owner_bytes(self) -> np.ndarray:
        """(n,) the bytes of the largest parameter a node shares with others (its out-edges'
        ``shared_bytes``), 0 for the rest; the size of the buffer that sums the uses' gradients in a
        backward (built on first use)."""
        largest = np.zeros(self.n)
        np.maximum.at(largest, self.src, self.shared_bytes)
        return _frozen(largest * self.has_bwd)

    @cached_property
    def shared_sum(self) -> np.ndarray:
        """(n,) what a node's backward makes beyond ``backward_temp`` where it shares a parameter with a
        use on its device (module docstring, "Memory"); counted by the bound only (built on first use)."""
        users = np.bincount(self.dst, weights=self.shared_bytes * ~self.is_input[self.src], minlength=self.n)
        return _frozen((users + 2 * self.shared_owner_bytes) * self.counts_temporaries * self.has_bwd)

    @cached_property
    def counts_temporaries(self) -> np.ndarray:
        """(n,) the nodes whose backward temporaries count: not graph inputs, no ``memory_bytes``."""
        return ~self.is_input & np.fromiter((d.memory_bytes is None for d in self.data), dtype=bool, count=self.n)

    @cached_property
    def grad_bytes(self) -> np.ndarray:
        """(n,) bytes of the parameter gradients a node's backward makes, the part of ``static`` the
        simulator allocates at the node's first backward instead of before the step (module docstring,
        "Memory"); 0 unless the step derives backwards (built on first use)."""
        if not self.has_bwd:
            return _frozen(np.zeros(self.n))
        own = np.fromiter((d.memory_bytes is None for d in self.data), dtype=bool, count=self.n)
        return _frozen(self.param_bytes * own)

    @cached_property
    def backward_temp(self) -> np.ndarray:
        """(n,) bytes of a node's backward temporary at its largest (module docstring, "Memory")."""
        return self._backward_memory[0]

    @cached_property
    def loss_bytes(self) -> np.ndarray:
        """(n,) bytes of a graph output's three loss tensors (module docstring, "Memory")."""
        return self._backward_memory[1]

    @cached_property
    def _backward_memory(self) -> tuple[np.ndarray, np.ndarray]:
        temp, loss = _backward_memory(
            self.data, self.has_bwd, self.counts_temporaries, self.is_input, self.src, self.dst, self.nbytes
        )
        return _frozen(temp), _frozen(loss)

    @cached_property
    def preds(self) -> list[list[tuple[int, int]]]:
        """Per node, its (predecessor, edge id) pairs in edge order (built on first use)."""
        return self._adjacency[0]

    @cached_property
    def succs(self) -> list[list[tuple[int, int]]]:
        """Per node, its (successor, edge id) pairs in edge order (built on first use)."""
        return self._adjacency[1]

    @cached_property
    def _adjacency(self) -> tuple[list[list[tuple[int, int]]], list[list[tuple[int, int]]]]:
        preds: list[list[tuple[int, int]]] = [[] for _ in range(self.n)]
        succs: list[list[tuple[int, int]]] = [[] for _ in range(self.n)]
        for e, (u, v) in enumerate(zip(self.src.tolist(), self.dst.tolist())):
            preds[v].append((u, e))
            succs[u].append((v, e))
        return preds, succs

    @cached_property
    def latency_s(self) -> np.ndarray:
        """(D, D) route latency, s (0 on the diagonal; the routes are built on first use)."""
        return self._routes[0]

    @cached_property
    def bandwidth(self) -> np.ndarray:
        """(D, D) route bottleneck bandwidth, bytes/s (inf on the diagonal)."""
        return self._routes[1]

    @cached_property
    def resources(self) -> list[list[tuple[int, ...]]]:
        """``resources[a][b]``: the link resources of the route from ``a`` to ``b`` (``()`` on the diagonal)."""
        return self._routes[2]

    @cached_property
    def lat(self) -> np.ndarray:
        """(D, D) route latency, ms."""
        return _frozen(1e3 * self.latency_s)

    @cached_property
    def inv_bw(self) -> np.ndarray:
        """(D, D) ms per byte of each route (0 on the diagonal, where the bandwidth is inf)."""
        return _frozen(1e3 / self.bandwidth)

    @cached_property
    def _routes(self) -> tuple[np.ndarray, np.ndarray, list[list[tuple[int, ...]]]]:
        latency_s, bandwidth, resources = _routes(self.cluster, self.devices)
        return _frozen(latency_s), _frozen(bandwidth), resources


def lower(
    graph: Graph,
    cluster: Cluster,
    cost_model: CostModel,
    mode: str = "training",
    optimizer_state_factor: float = 2.0,
) -> Lowered:
    """Lower ``graph`` on ``cluster`` priced by ``cost_model`` for one step of ``mode`` (module docstring).

    ``optimizer_state_factor``: bytes of optimizer state per parameter byte in training (2: Adam's two
    moments). Raises :class:`ConfigurationError` for a bad mode or factor and :class:`PlacementError`
    when the graph has a cycle."""
    if mode not in MODES:
        raise ConfigurationError(f"lower: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if (
        isinstance(optimizer_state_factor, bool)
        or not isinstance(optimizer_state_factor, (int, float))
        or not optimizer_state_factor >= 0
    ):
        raise ConfigurationError(f"lower: optimizer_state_factor must be a number >= 0, got {optimizer_state_factor!r}")
    with gc_paused():
        return _lower(graph, cluster, cost_model, mode, float(optimizer_state_factor))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a build that allocates many small containers and no
    cycles: the collector would rescan the graph's objects again and again for nothing (it halves the
    time to lower 100,000 nodes)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def running_nodes(graph: Graph, mode: str = "training") -> list[str]:
    """The nodes one step of ``mode`` runs, in the simulator's topological order: the ``names`` of the
    graph's :class:`Lowered` (module docstring), for what needs no cluster (the schedules)."""
    if mode not in MODES:
        raise ConfigurationError(f"running_nodes: mode must be one of {', '.join(MODES)}, got {mode!r}")
    _, kept, dropped = _kept(graph, mode == "training")
    return _ordered(graph, [name for name, _ in kept], [d for _, d in kept], bool(dropped))[0]


def _kept(graph: Graph, training: bool) -> tuple[bool, list[tuple[str, NodeData]], list[str]]:
    """Whether the graph holds explicit backward nodes, the nodes kept (with their data) and those
    dropped (explicit backward nodes in inference), in graph order."""
    nodes = graph.to_networkx().nodes(data="data")
    explicit = any(d.is_backward for _, d in nodes)
    keep_all = training or not explicit
    kept = [(name, d) for name, d in nodes if keep_all or not d.is_backward]
    dropped = [] if keep_all else [name for name, d in nodes if d.is_backward]
    return explicit, kept, dropped


def _lower(graph: Graph, cluster: Cluster, cost_model: CostModel, mode: str, optimizer_state_factor: float) -> Lowered:
    training = mode == "training"
    explicit, kept, dropped = _kept(graph, training)
    has_bwd = training and not explicit
    names, data, src, dst, edge_data = _ordered(graph, [name for name, _ in kept], [d for _, d in kept], bool(dropped))
    n, E = len(names), len(src)
    index = {name: i for i, name in enumerate(names)}
    inputs = graph_inputs(graph)
    is_input = np.fromiter((name in inputs for name in names), dtype=bool, count=n)

    devices = list(cluster.devices)
    device_class, classes = _device_classes(devices)
    class_fwd, class_bwd, kinds_ok = _class_times(cost_model, data, [devices[c[0]] for c in classes], has_bwd, is_input)

    src_np = np.asarray(src, dtype=np.int64)
    dst_np = np.asarray(dst, dtype=np.int64)
    nbytes = np.fromiter(map(operator.attrgetter("bytes"), edge_data), dtype=float, count=E)
    # send_bytes of each producer's out-edges: their largest, unless some edge names an output index.
    out_bytes = np.zeros(n)
    np.maximum.at(out_bytes, src_np, nbytes)
    indexed = {src[e] for e, ed in enumerate(edge_data) if ed.output_index is not None}
    if indexed:
        out_edges: dict[int, list[EdgeData]] = {u: [] for u in indexed}
        for u, ed in zip(src, edge_data):
            if u in out_edges:
                out_edges[u].append(ed)
        for u, eds in out_edges.items():
            out_bytes[u] = send_bytes(eds)

    static, held = _memory(data, training, has_bwd, optimizer_state_factor)
    held[is_input] = 0.0  # the step is given its inputs: they exist before it, as parameters do

    return Lowered(
        graph=graph,
        cluster=cluster,
        cost_model=cost_model,
        mode=mode,
        optimizer_state_factor=optimizer_state_factor,
        explicit_backward=explicit,
        has_bwd=has_bwd,
        names=names,
        index=index,
        data=data,
        dropped=dropped,
        is_input=_frozen(is_input),
        devices=devices,
        device_class=_frozen(device_class),
        classes=classes,
        class_fwd=_frozen(class_fwd),
        class_bwd=_frozen(class_bwd),
        kinds_ok=_frozen(kinds_ok),
        src=_frozen(src_np),
        dst=_frozen(dst_np),
        edge_data=edge_data,
        nbytes=_frozen(nbytes),
        static=_frozen(static),
        held=_frozen(held),
        param_bytes=_frozen(np.fromiter((d.param_bytes for d in data), dtype=float, count=n)),
        send_bytes=_frozen(out_bytes),
        modules=[d.module for d in data],
    )


LOSS_SCALAR_BYTES = 4.0  # a microbatch's loss, and its gradient (float32 scalars)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _ordered(
    graph: Graph, names: list[str], data: list[NodeData], some_left_out: bool
) -> tuple[list[str], list[NodeData], list[int], list[int], list[EdgeData]]:
    """The kept nodes in topological order (module docstring) and the edges between them, renumbered."""
    pos = {name: i for i, name in enumerate(names)}
    edges = list(graph.to_networkx().edges(data="data"))
    if some_left_out:
        edges = [e for e in edges if e[0] in pos and e[1] in pos]
    src = [pos[e[0]] for e in edges]  # comprehensions: zip(*edges) is ten times slower on 100k edges
    dst = [pos[e[1]] for e in edges]
    edge_data = [e[2] for e in edges]
    if any(map(operator.ge, src, dst)):  # insertion order is not topological
        topo = topological_indices(len(names), src, dst)
        if topo is None:
            raise PlacementError(f"graph {graph.name!r} has a cycle; placing and simulating a step need a DAG")
        rank = [0] * len(names)
        for r, i in enumerate(topo):
            rank[i] = r
        names = [names[i] for i in topo]
        data = [data[i] for i in topo]
        src = [rank[i] for i in src]
        dst = [rank[j] for j in dst]
    return names, data, src, dst, edge_data


def _device_classes(devices: Sequence[Device]) -> tuple[np.ndarray, list[list[int]]]:
    """Devices grouped by :meth:`Device.speed_key`, classes in order of their first device."""
    keyed: dict[tuple, int] = {}
    classes: list[list[int]] = []
    device_class = np.zeros(len(devices), dtype=np.int64)
    for d, dev in enumerate(devices):
        c = keyed.setdefault(dev.speed_key(), len(classes))
        if c == len(classes):
            classes.append([])
        classes[c].append(d)
        device_class[d] = c
    return device_class, classes


def _class_times(
    cm: CostModel,
    data: list[NodeData],
    reps: list[Device],
    has_bwd: bool,
    is_input: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole-batch forward and backward ms of every node on each class's first device (inputs 0), and
    whether the node's ``allowed_kinds`` admit the class."""
    n, C = len(data), len(reps)
    fwd = np.zeros((n, C))
    bwd = np.zeros((n, C))
    kinds_ok = np.ones((n, C), dtype=bool)
    for c, rep in enumerate(reps):
        f, b = cm.node_times(data, [rep] * n, has_bwd)
        fwd[:, c] = f
        bwd[:, c] = b
    fwd[is_input] = 0.0
    bwd[is_input] = 0.0
    for v, nd in enumerate(data):
        kinds = nd.allowed_kinds
        if kinds is not None:
            kinds_ok[v] = [rep.kind in kinds or rep.category in kinds for rep in reps]
    return fwd, bwd, kinds_ok


def _memory(data: list[NodeData], training: bool, has_bwd: bool, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``static`` and ``held`` bytes of every node (module docstring)."""
    mult = (2.0 + factor) if training else 1.0
    n = len(data)
    static = np.zeros(n)
    held = np.zeros(n)
    for i, nd in enumerate(data):
        if nd.memory_bytes is not None:
            static[i] = nd.memory_bytes
        else:
            static[i] = mult * nd.param_bytes + nd.buffer_bytes
            held[i] = nd.activation_bytes if has_bwd else nd.output_bytes
    return static, held


def _backward_memory(
    data: list[NodeData], has_bwd: bool, counted: np.ndarray, is_input: np.ndarray, src: np.ndarray, dst: np.ndarray,
    nbytes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``backward_temp`` and ``loss_bytes`` of every node (module docstring): the simulator's backward
    temporary at its largest, and three output-sized tensors for a graph output, for the ``counted``
    nodes (0 for the rest)."""
    n = len(data)
    if not has_bwd:
        return np.zeros(n), np.zeros(n)
    output = np.fromiter((d.output_bytes for d in data), dtype=float, count=n)
    is_output = np.fromiter((d.is_output for d in data), dtype=bool, count=n)
    in_grad = np.bincount(dst, weights=nbytes * ~is_input[src], minlength=n)
    return (output + in_grad) * counted, 3.0 * output * (is_output & counted)


def _routes(cluster: Cluster, devices: list[Device]) -> tuple[np.ndarray, np.ndarray, list[list[tuple[int, ...]]]]:
    """Latency (s), bottleneck bandwidth (bytes/s) and link resources of every route."""
    D = len(devices)
    latency = np.zeros((D, D))
    bandwidth = np.full((D, D), np.inf)
    resources: list[list[tuple[int, ...]]] = [[() for _ in range(D)] for _ in range(D)]
    for a, da in enumerate(devices):
        for b, db in enumerate(devices):
            if a != b:
                r = cluster.route(da.name, db.name)
                latency[a, b] = r.latency_s
                bandwidth[a, b] = r.bandwidth
                resources[a][b] = r.resources
    return latency, bandwidth, resources


def topological_indices(n: int, src: Sequence[int], dst: Sequence[int]) -> list[int] | None:
    """Nodes ``0 .. n-1`` (edges ``src[e] -> dst[e]``) in the simulator's order: among the ready nodes,
    the smallest index first (Kahn's algorithm with a heap). None when the edges make a cycle."""
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for i, j in zip(src, dst):
        succ[i].append(j)
        indeg[j] += 1
    heap = [i for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        i = heapq.heappop(heap)
        order.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(heap, j)
    return order if len(order) == n else None


def send_bytes(edges: Sequence[EdgeData]) -> float:
    """Bytes of one send carrying every edge of a group: the largest edge per ``output_index``, summed;
    an edge with no index stands for all outputs, so the send is at least that large."""
    per_index: dict[int, float] = {}
    whole = 0.0
    for e in edges:
        if e.output_index is None:
            whole = max(whole, e.bytes)
        else:
            per_index[e.output_index] = max(per_index.get(e.output_index, 0.0), e.bytes)
    return max(whole, sum(per_index.values()))


__all__ = ["MODES", "Lowered", "gc_paused", "lower", "running_nodes", "send_bytes", "topological_indices"]
