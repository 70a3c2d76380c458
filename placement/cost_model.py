"""The cost model: how long a node takes on a device, and a tensor between two devices.

A node's time on a device comes from the first of these sources that has it:

1. **Measured, same label.** ``NodeData.measured_ms`` (forward, or the node's own pass for an explicit
   backward node) and ``NodeData.measured_bwd_ms`` (backward) keyed by the device's ``kind``
   (``"V100"`` for PipeDream profiles) are used as given; failing that, keyed by its ``category`` (a GPU
   also matches ``"accelerator"``)
   (``"cpu"``, ``"accelerator"``, ``"gpu"``: the labels of the dnn-partitioning files).
2. **Profiled.** A table of times measured on a real device of this kind, keyed by the node's profile
   key (op, shapes, dtypes, FLOPs, bytes) and the device kind: a :class:`ProfiledTimes` filled by
   :mod:`graphc.frontend.profile` and loaded from its JSON cache, or any object with a ``lookup(node, device)``
   method (:class:`TimeSource`).
3. **Measured on another GPU kind, scaled.** When the node was measured on a GPU kind this device is not
   (a V100 profile placed on an H100; or on a CPU when the node has no FLOP counts for the roofline, as
   in imported profiles, where a time of 0 would be silently wrong), the measured time is multiplied by ``peak(measured kind) /
   peak(device kind)`` for the node's dtype (default ``float32``). The peaks come from
   :data:`placement.specs.DEVICE_SPECS` or from a device of that kind in the cluster. This assumes the
   op is compute-bound and runs at the same fraction of peak on both; it is the crudest source
   short of the roofline, which is why an exact-kind profile (2) is preferred to it.
4. **Analytic roofline.** ``max(flops / (peak * compute_efficiency), bytes / (memory bandwidth *
   memory_efficiency), op_overhead)`` with the device's peak for the node's dtype. Forward: ``fwd_flops``
   and ``bytes_read + bytes_written``. Backward: ``bwd_flops`` and twice the forward bytes (it reads the
   output gradient and the saved tensors, writes input and parameter gradients); a node with
   ``bwd_flops == 0`` needs no gradient and its backward takes 0.

A node whose ``op`` is ``"input"`` costs nothing (graph inputs are data loading, not compute). So does a
node named in ``graph.meta["input_nodes"]`` (PipeDream's Input layers, whose profiled "forward time" is
the data loader): :func:`graph_inputs` names both, and the simulator and the bounds apply it (``node_ms``
sees a node without its graph).

A microbatch (a slice ``1/m`` of the batch) of a pass that takes ``t`` on the whole batch takes
(:meth:`CostModel.microbatch_ms`), when the time came from a profiled table that measured the node on
slices of the batch (split times, :func:`graphc.ir.profiled.with_split_times`), the time measured on
``1/m`` of it, or between two measured slices (the whole batch is one) the straight line through them
in the batch fraction, below the smallest measured slice the line through the two smallest (at least
0). Else, when the table fitted the node's fixed
part (:func:`graphc.ir.profiled.with_fixed_costs`: the node profiled at two batch sizes), ``fixed + (t -
fixed) / m``: the work that grows with the batch divides, the fixed part (dispatch, what a small slice
runs less efficiently) is paid by every microbatch. Otherwise (roofline, measured times, a table without
fixed parts) ``max(t / m, min(t, floor))`` with ``floor`` the device's per-op overhead times the ops the
node stands for: the work divides, but never below the launch overhead, which every microbatch pays.

A transfer between two devices takes ``EdgeData.transfer_ms`` when the edge carries a time for the pair
(see :meth:`CostModel.measured_transfer_ms` for the labels matched), else ``route latency + bytes /
bottleneck bandwidth`` on the cluster's route. On one device it is free. A transfer to or from a CPU
(which moves its tensors itself, and is busy meanwhile: :mod:`placement.simulate`) lasts at least the CPU
time a message costs each end, ``endpoint_cpu_s + bytes * endpoint_cpu_per_byte_s``
(:meth:`CostModel.endpoint_cpu_ms`; measured by :func:`runtime.link.measure_link` for the calibrated
``local`` cluster, 0 otherwise).

Co-running CPU devices. The CPU devices of one host (the ``local`` cluster's worker processes) share its
memory bandwidth, caches and turbo budget: ``k`` of them computing at once each run slower than one
alone. ``corun_slowdown`` holds the measured ratio ``s(k) = t_k / t_1 >= 1`` of a step's time with
``k`` processes computing at once to its time alone (:func:`runtime.corun.measure_corun`, through
:func:`graphc.app.calibrate.calibrate`), per ``k >= 2``; :meth:`CostModel.corun_factor` reads it, ``s(1) =
1``, and a ``k`` above the largest measured takes the largest measured ``k``'s figure (an underestimate,
as contention grows with ``k``). Empty (the default) means ``s = 1`` everywhere: nothing changes. The
simulator applies it (:mod:`placement.simulate`, "Co-running CPU devices"); a node's own time here is
always its time alone. GPUs and other accelerators are not slowed.

All times are milliseconds, as in :mod:`graphc.ir.graph`.
"""

# node_times compares with `if` rather than calling max(): it prices 100,000 nodes in a loop.
# ruff: noqa: PLR1730, FURB136
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from graphc.ir.graph import EdgeData, Graph, NodeData
from graphc.ir.profiled import ProfiledTimes as ProfiledTimes
from placement.cluster import Cluster, ClusterLike, Device
from placement.errors import ConfigurationError
from placement.specs import DEVICE_SPECS

# Where a node time came from (the second item of :meth:`CostModel.explain`).
SOURCE_INPUT = "input"
SOURCE_MEASURED = "measured"
SOURCE_PROFILED = "profiled"
SOURCE_SCALED = "measured-scaled"
SOURCE_ANALYTIC = "analytic"

def _category_labels(dev: Device) -> tuple[str, ...]:
    """The generic labels a measurement may use for this device: its category, and for a GPU also
    ``"accelerator"`` (the dnn-partitioning files call every non-CPU device an accelerator)."""
    return (dev.category, "accelerator") if dev.category == "gpu" else (dev.category,)

def graph_inputs(graph: Graph) -> set[str]:
    """Names of the graph's inputs: nodes with op ``"input"`` and names in ``meta["input_nodes"]``."""
    names = {n.name for n in graph.nodes() if n.op == "input"}
    names.update(n for n in graph.meta.get("input_nodes", []) if n in graph)
    return names

class TimeSource(Protocol):
    """Anything that may know a node's profiled times on a device. One that also has a
    ``lookup_fixed(node, device)`` method (as :class:`ProfiledTimes` does) gives the fixed part of those
    times per microbatch (:meth:`CostModel.microbatch_ms`)."""

    def lookup(self, node: NodeData, device: Device) -> tuple[float, float] | None:
        """``(forward_ms, backward_ms)`` of ``node`` on ``device``, or None when unknown."""
        ...

class CostModel:
    """Node times per device and transfer times per device pair, in milliseconds (module docstring).

    Args:
        cluster: the cluster whose devices and routes are priced; devices may be passed by name.
        profiled: a table of profiled times (source 2), or None.
        compute_efficiency: fraction of peak FLOP/s the roofline assumes an op achieves.
        memory_efficiency: fraction of peak memory bandwidth the roofline assumes.
        default_dtype: dtype of a node that states none (imported profiles).
        use_measured: False ignores ``measured_ms`` (sources 1 and 3), to compare the roofline with them.
        endpoint_cpu_s, endpoint_cpu_per_byte_s: the CPU time one message costs each of its ends when it
            is a CPU, per message and per byte (module docstring).
        corun_slowdown: ``{k: s(k)}``, how much slower each of ``k`` CPU devices of one host computes when
            all ``k`` compute at once than one alone (module docstring); keys are integers >= 2 (or their
            decimal strings, as JSON writes them), values finite and >= 1. Empty: no slowdown.
    """

    def __init__(
        self,
        cluster: ClusterLike,
        *,
        profiled: TimeSource | None = None,
        compute_efficiency: float = 0.7,
        memory_efficiency: float = 0.8,
        default_dtype: str = "float32",
        use_measured: bool = True,
        endpoint_cpu_s: float = 0.0,
        endpoint_cpu_per_byte_s: float = 0.0,
        corun_slowdown: Mapping[int | str, float] | None = None,
    ) -> None:
        if not (0 < compute_efficiency <= 1 and 0 < memory_efficiency <= 1):
            raise ConfigurationError("CostModel: efficiencies must be in (0, 1]")
        if not (endpoint_cpu_s >= 0 and endpoint_cpu_per_byte_s >= 0):
            raise ConfigurationError("CostModel: endpoint_cpu_s and endpoint_cpu_per_byte_s must be >= 0")
        self.endpoint_cpu_s = float(endpoint_cpu_s)
        self.endpoint_cpu_per_byte_s = float(endpoint_cpu_per_byte_s)
        self.corun_slowdown = checked_corun_slowdown(corun_slowdown or {})
        self.cluster = Cluster.resolve(cluster)
        self.profiled = profiled
        self.compute_efficiency = compute_efficiency
        self.memory_efficiency = memory_efficiency
        self.default_dtype = default_dtype
        self.use_measured = use_measured
        # Peak FLOP/s per (kind, dtype) of GPU kinds a measurement may be scaled from.
        self._gpu_kinds: dict[str, Device] = {}
        for kind, s in DEVICE_SPECS.items():
            if s.category == "gpu":
                self._gpu_kinds[kind] = Device(kind, kind, "gpu", "-", dict(s.peak_flops), s.memory_bandwidth, s.memory_bytes)
        for d in self.cluster.devices:
            if d.category == "gpu":
                self._gpu_kinds.setdefault(d.kind, d)

    # -- co-running CPU devices ------------------------------------------------------------------
    def corun_factor(self, k: int) -> float:
        """``s(k)``: how much slower each of ``k`` CPU devices of one host computes when all ``k`` compute
        at once (module docstring): 1 for ``k <= 1`` or when nothing is measured at or below ``k``, else
        the figure of the largest measured count ``<= k``."""
        measured = [c for c in self.corun_slowdown if c <= k]
        return self.corun_slowdown[max(measured)] if measured else 1.0

    # -- nodes --------------------------------------------------------------------------------
    def node_ms(self, node: NodeData, device: Device | str, backward: bool = False) -> float:
        """Time of ``node``'s forward (or backward) pass on ``device``, ms."""
        return self._resolve(node, self._device(device), backward)[0]

    def node_times(
        self, nodes: Sequence[NodeData], devices: Sequence[Device], backward: bool = True, microbatches: int = 1
    ) -> tuple[list[float], list[float]]:
        """Forward and backward times of ``nodes[i]`` on ``devices[i]`` for every ``i``, ms: the values of
        :meth:`node_ms`, computed in one pass (the simulator prices 100,000 nodes with it).
        ``backward=False`` leaves the backward list at zeros. ``microbatches=m`` gives the time of one
        microbatch instead (:meth:`microbatch_ms` of each)."""
        fwd, bwd = self._full_batch_times(nodes, devices, backward)
        if microbatches != 1:
            split = self.microbatch_ms
            fwd = [split(t, nd, dev, microbatches) for t, nd, dev in zip(fwd, nodes, devices)]
            bwd = [split(t, nd, dev, microbatches, True) for t, nd, dev in zip(bwd, nodes, devices)]
        return fwd, bwd

    @staticmethod
    def task_floor_ms(node: NodeData, device: Device) -> float:
        """The least time of one pass of ``node`` on ``device``, however little data it gets, ms: the
        device's per-op overhead (:attr:`Device.op_overhead_s`: kernel launch, framework dispatch) once
        per op the node stands for (its ``fx_nodes``; one when it names none)."""
        return 1e3 * device.op_overhead_s * max(1, len(node.fx_nodes))

    def microbatch_ms(
        self, full_ms: float, node: NodeData, device: Device, microbatches: int, backward: bool = False
    ) -> float:
        """Time of one of ``microbatches`` slices of a pass (the backward when ``backward``) that takes
        ``full_ms`` on the whole batch, ms (module docstring): ``fixed + (full_ms - fixed) / m`` with the
        profiled table's fixed part (:meth:`profiled_fixed_ms`) where there is one, else ``max(full_ms /
        m, min(full_ms, floor))`` with ``floor`` = :meth:`task_floor_ms` (the roofline's floor carried to
        a split batch). Either way every microbatch pays a fixed cost again, which gives the choice of the
        microbatch count (:mod:`placement.pipeline.microbatches`) an optimum below the largest candidate.
        A pass that takes 0 (an input, a node with no backward) stays 0.
        """
        if microbatches == 1 or full_ms == 0:
            return full_ms
        split = self.profiled_split_ms(full_ms, node, device, microbatches, backward)
        if split is not None:
            return split
        fixed = self.profiled_fixed_ms(full_ms, node, device, backward)
        if fixed is not None:
            return fixed + (full_ms - fixed) / microbatches
        floor = self.task_floor_ms(node, device)
        share = full_ms / microbatches
        least = full_ms if full_ms < floor else floor
        return share if share > least else least

    def profiled_split_ms(
        self, full_ms: float, node: NodeData, device: Device, microbatches: int, backward: bool = False
    ) -> float | None:
        """One of ``microbatches`` slices of a pass taking ``full_ms`` on the whole batch, from the
        profiled table's split times (:meth:`ProfiledTimes.lookup_split`; module docstring), at most
        ``full_ms``; None when the node's time does not come from the table or it measured no slice."""
        lookup_split = getattr(self.profiled, "lookup_split", None)
        if lookup_split is None or self._resolve(node, device, backward)[1] != SOURCE_PROFILED:
            return None
        measured = lookup_split(node, device)
        if not measured:
            return None
        side = 1 if backward else 0
        if microbatches in measured:
            return min(measured[microbatches][side], full_ms)
        # (batch fraction, ms) from the smallest slice to the whole batch
        points = sorted([(1.0 / m, times[side]) for m, times in measured.items()] + [(1.0, full_ms)])
        x = 1.0 / microbatches
        above = next((i for i, (fraction, _) in enumerate(points) if fraction > x), len(points) - 1)
        (x0, y0), (x1, y1) = points[max(above - 1, 0)], points[max(above, 1)]
        return min(max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), 0.0), full_ms)

    def profiled_fixed_ms(self, full_ms: float, node: NodeData, device: Device, backward: bool = False) -> float | None:
        """The part of a pass taking ``full_ms`` on the whole batch that every microbatch pays, ms, as the
        profiled table fitted it (:meth:`ProfiledTimes.lookup_fixed`, at most ``full_ms``); None when the
        node's time does not come from the table or the table fitted no fixed part for it."""
        lookup_fixed = getattr(self.profiled, "lookup_fixed", None)
        if lookup_fixed is None or self._resolve(node, device, backward)[1] != SOURCE_PROFILED:
            return None
        fixed = lookup_fixed(node, device)
        if fixed is None:
            return None
        part = fixed[1] if backward else fixed[0]
        return part if part < full_ms else full_ms

    def _full_batch_times(
        self, nodes: Sequence[NodeData], devices: Sequence[Device], backward: bool
    ) -> tuple[list[float], list[float]]:
        """:meth:`node_times` of the whole batch."""
        fwd: list[float] = []
        bwd: list[float] = []
        resolve = self._resolve
        use_measured, profiled = self.use_measured, self.profiled
        ce, me, default_dtype = self.compute_efficiency, self.memory_efficiency, self.default_dtype
        per_device: dict[str, tuple[dict[str, float], float, float]] = {}
        for nd, dev in zip(nodes, devices):
            if (use_measured and (nd.measured_ms or nd.measured_bwd_ms)) or profiled is not None or nd.op == "input":
                fwd.append(resolve(nd, dev, False)[0])
                bwd.append(resolve(nd, dev, True)[0] if backward else 0.0)
                continue
            # _roofline (the same operations, so the same floats), the device's figures looked up once.
            consts = per_device.get(dev.name)
            if consts is None:
                consts = per_device[dev.name] = ({}, dev.memory_bandwidth * me, dev.op_overhead_s)
            peaks, bw, floor = consts
            dtype = nd.output_dtypes[0] if nd.output_dtypes else default_dtype
            peak = peaks.get(dtype)
            if peak is None:
                peak = peaks[dtype] = dev.peak(dtype) * ce
            nbytes = nd.bytes_read + nd.bytes_written
            t = nd.fwd_flops / peak
            if nbytes / bw > t:
                t = nbytes / bw
            fwd.append(1e3 * (t if t > floor else floor))
            flops = nd.bwd_flops
            if not backward or flops == 0:
                bwd.append(0.0)
                continue
            t = flops / peak
            if 2.0 * nbytes / bw > t:
                t = 2.0 * nbytes / bw
            bwd.append(1e3 * (t if t > floor else floor))
        return fwd, bwd

    def explain(self, node: NodeData, device: Device | str, backward: bool = False) -> tuple[float, str]:
        """``(ms, source)``: the time and where it came from (``measured:V100``, ``measured-scaled:V100``,
        ``profiled``, ``analytic``, ``input``)."""
        ms, source, label = self._resolve(node, self._device(device), backward)
        return ms, f"{source}:{label}" if label else source

    def _resolve(self, node: NodeData, dev: Device, backward: bool) -> tuple[float, str, str]:
        if node.op == "input":
            return 0.0, SOURCE_INPUT, ""
        if self.use_measured:
            table = node.measured_bwd_ms if backward else node.measured_ms
            if table:
                ms = table.get(dev.kind)
                if ms is not None:
                    return ms, SOURCE_MEASURED, dev.kind
                for label in _category_labels(dev):
                    ms = table.get(label)
                    if ms is not None:
                        return ms, SOURCE_MEASURED, label
        if self.profiled is not None:
            hit = self.profiled.lookup(node, dev)
            if hit is not None:
                return hit[1] if backward else hit[0], SOURCE_PROFILED, ""
        if self.use_measured and (dev.category == "gpu" or (node.fwd_flops == 0 and node.bwd_flops == 0)):
            table = node.measured_bwd_ms if backward else node.measured_ms
            for label, ms in table.items():
                other = self._gpu_kinds.get(label)
                if other is not None:
                    dtype = self._dtype(node)
                    return ms * other.peak(dtype) / dev.peak(dtype), SOURCE_SCALED, label
        return self._roofline(node, dev, backward), SOURCE_ANALYTIC, ""

    def _roofline(self, node: NodeData, dev: Device, backward: bool) -> float:
        if backward:
            flops = node.bwd_flops
            if flops == 0:
                return 0.0
            nbytes = 2.0 * (node.bytes_read + node.bytes_written)
        else:
            flops = node.fwd_flops
            nbytes = node.bytes_read + node.bytes_written
        compute = flops / (dev.peak(self._dtype(node)) * self.compute_efficiency)
        memory = nbytes / (dev.memory_bandwidth * self.memory_efficiency)
        return 1e3 * max(compute, memory, dev.op_overhead_s)

    def _dtype(self, node: NodeData) -> str:
        return node.output_dtypes[0] if node.output_dtypes else self.default_dtype

    def _device(self, device: Device | str) -> Device:
        return device if isinstance(device, Device) else self.cluster.device(device)

    # -- transfers ----------------------------------------------------------------------------
    def transfer_ms(
        self,
        nbytes: float,
        src: Device | str,
        dst: Device | str,
        measured: Mapping[str, float] | None = None,
    ) -> float:
        """Time to move ``nbytes`` from ``src`` to ``dst`` with the links to itself, ms.

        ``measured`` (an edge's ``transfer_ms``) wins when it has a label for the pair; else route latency
        + bytes / bottleneck bandwidth. Zero on one device.
        """
        s, d = self._device(src), self._device(dst)
        if s.name == d.name:
            return 0.0
        if measured:
            ms = self.measured_transfer_ms(measured, s, d)
            if ms is not None:
                return ms
        route = self.cluster.route(s.name, d.name)
        wire = 1e3 * (route.latency_s + nbytes / route.bandwidth)
        if s.category == "cpu" or d.category == "cpu":
            return max(wire, self.endpoint_cpu_ms(nbytes))
        return wire

    def endpoint_cpu_ms(self, nbytes: Any) -> Any:
        """The CPU time a message of ``nbytes`` (a number or a numpy array) costs each of its ends, ms."""
        return 1e3 * (self.endpoint_cpu_s + nbytes * self.endpoint_cpu_per_byte_s)

    def edge_ms(self, edge: EdgeData, src: Device | str, dst: Device | str) -> float:
        """Time of one edge's tensor from ``src`` to ``dst``, ms."""
        return self.transfer_ms(edge.bytes, src, dst, edge.transfer_ms)

    @staticmethod
    def measured_transfer_ms(measured: Mapping[str, float], src: Device, dst: Device) -> float | None:
        """The measured time for a transfer from ``src`` to ``dst`` in an edge's ``transfer_ms``, or None.

        Labels tried, first match wins: ``"{src kind}->{dst kind}"`` (this direction only), then
        ``"{a}<->{b}"`` and ``"{a}-{b}"`` with the two kinds in either order (both directions), the same
        with the categories (the dnn-partitioning importer writes ``"accelerator-cpu"``), then ``"*"``
        (any pair of distinct devices). A pair no label matches (two accelerators, for an edge priced
        only between accelerator and CPU) is priced on the route instead.
        """
        for a, b in ((src.kind, dst.kind), (src.category, dst.category)):
            for label in (f"{a}->{b}", f"{a}<->{b}", f"{b}<->{a}", f"{a}-{b}", f"{b}-{a}"):
                ms = measured.get(label)
                if ms is not None:
                    return ms
        return measured.get("*")


def checked_corun_slowdown(slowdown: Mapping[int | str, float]) -> dict[int, float]:
    """``slowdown`` (``{k: s(k)}``, module docstring) with integer keys; :class:`ConfigurationError`, saying
    what is wrong, unless every key is a count of at least 2 devices (or its decimal string, as JSON
    writes it) and every value a finite factor >= 1."""
    if not isinstance(slowdown, Mapping):
        raise ConfigurationError(f"CostModel: corun_slowdown must map device counts to factors, got {type(slowdown).__name__}")
    checked: dict[int, float] = {}
    for key, value in slowdown.items():
        try:
            k = int(key)
        except (TypeError, ValueError):
            k = 0
        if isinstance(key, bool) or k < 2 or str(k) != str(key).strip():
            raise ConfigurationError(f"CostModel: corun_slowdown key {key!r} is not a count of at least 2 devices")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
            raise ConfigurationError(
                f"CostModel: corun_slowdown[{k}] = {value!r}; a slowdown is a finite factor >= 1 (1: none)"
            )
        checked[k] = float(value)
    return checked
