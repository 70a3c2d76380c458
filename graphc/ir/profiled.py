"""Profiled op times: the table that the profiler (:mod:`graphc.frontend.profile`) fills on a real device
and the cost model (:class:`placement.cost_model.CostModel`) reads, with its JSON cache (schema
``graphc.profiled_times``). Like the cost graph, it is data that the frontend and placement share.

Fixed costs. A pass does not get ``m`` times faster on ``1/m`` of the batch: every op pays a dispatch
cost and small slices run less efficiently. A table may therefore also hold, per entry, the part of the
forward and backward time that does not shrink with the batch (``time(b) = fixed + per_sample * b``),
fitted by :func:`with_fixed_costs` from the same nodes profiled at the full batch and at a smaller one;
the cost model prices a microbatch as ``fixed + (full - fixed) / m``.

Split times. That line is not the whole curve: on one sample a convolution is much faster than a line
through a quarter and the whole batch says (Inception-v3's ops take 30% less at an eighth of its batch
of eight than the line fitted at a quarter predicts). A table may therefore also hold, per entry, the
times measured at ``1/m`` of the batch for a few ``m`` (:func:`with_split_times`); the cost model then
reads a measured ``m`` as is and interpolates between the measured batch sizes (version 3). Version 1
(no fixed costs) and 2 (no split times) files still load.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphc.ir.errors import ConfigurationError, ProfileFormatError
from graphc.ir.graph import Graph, NodeData
from graphc.ir.jsonfile import check_header, read_json, write_json

PROFILE_SCHEMA = "graphc.profiled_times"
PROFILE_SCHEMA_VERSION = 3
#: Versions :meth:`ProfiledTimes.from_dict` reads (1: no fixed costs; 2: no split times).
READABLE_VERSIONS = (1, 2, 3)


@dataclass
class ProfiledTimes:
    """Profiled times keyed by (node key, device kind) -> (forward ms, backward ms) at the full batch;
    where fitted, (node key, device kind) -> (forward, backward) fixed ms; and where measured, (node key,
    device kind) -> {m: (forward, backward) ms on 1/m of the batch} (module docstring).

    The node key is :meth:`graphc.ir.graph.NodeData.profile_key`: the op, its output shapes and dtypes,
    FLOPs and bytes read, so nodes computing the same thing on tensors of the same sizes share one
    measurement. The profiler (:mod:`graphc.frontend.profile`) fills the table by running each op on a real
    device; :meth:`save` and :meth:`load` keep it in a JSON cache so a later run does not measure again.
    """

    times: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    fixed: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    split: dict[tuple[str, str], dict[int, tuple[float, float]]] = field(default_factory=dict)

    def add_key(self, key: str, device_kind: str, fwd_ms: float, bwd_ms: float) -> None:
        self.times[(key, device_kind)] = (float(fwd_ms), float(bwd_ms))

    def get_key(self, key: str, device_kind: str) -> tuple[float, float] | None:
        return self.times.get((key, device_kind))

    def add_fixed_key(self, key: str, device_kind: str, fwd_ms: float, bwd_ms: float) -> None:
        """Record the fixed part (paid by every microbatch) of an entry's forward and backward."""
        self.fixed[(key, device_kind)] = (float(fwd_ms), float(bwd_ms))

    def add_split_key(self, key: str, device_kind: str, parts: int, fwd_ms: float, bwd_ms: float) -> None:
        """Record an entry's forward and backward times measured on ``1/parts`` of the batch."""
        self.split.setdefault((key, device_kind), {})[int(parts)] = (float(fwd_ms), float(bwd_ms))

    def add(self, node: NodeData, device_kind: str, fwd_ms: float, bwd_ms: float) -> None:
        """Record the times of ``node`` (by its profile key) on devices of ``device_kind``."""
        self.add_key(node.profile_key(), device_kind, fwd_ms, bwd_ms)

    def lookup(self, node: NodeData, device: Any) -> tuple[float, float] | None:
        """The times of ``node`` on ``device`` (anything with a ``kind``, as a placement Device has)."""
        return self.times.get((node.profile_key(), device.kind))

    def lookup_fixed(self, node: NodeData, device: Any) -> tuple[float, float] | None:
        """The fixed part of ``node``'s times on ``device``, or None when none was fitted."""
        return self.fixed.get((node.profile_key(), device.kind))

    def lookup_split(self, node: NodeData, device: Any) -> dict[int, tuple[float, float]] | None:
        """``node``'s times on ``device`` measured on ``1/m`` of the batch, by ``m``; None when none were."""
        return self.split.get((node.profile_key(), device.kind))

    def scaled(self, factor: float) -> ProfiledTimes:
        """Every time times ``factor`` (a calibration: ops timed in isolation miss what runs between them
        in a real step, so a table is scaled until the simulated step of one device equals a measured one)."""
        return ProfiledTimes(
            {k: (f * factor, b * factor) for k, (f, b) in self.times.items()},
            {k: (f * factor, b * factor) for k, (f, b) in self.fixed.items()},
            {k: {m: (f * factor, b * factor) for m, (f, b) in at.items()} for k, at in self.split.items()},
        )

    def copy(self) -> ProfiledTimes:
        """A copy whose entries can be added to without changing this table."""
        return ProfiledTimes(dict(self.times), dict(self.fixed), {k: dict(v) for k, v in self.split.items()})

    def restricted(self, keys: set[str]) -> ProfiledTimes:
        """The entries (times and fixed parts) of these node keys only."""
        return ProfiledTimes(
            {k: v for k, v in self.times.items() if k[0] in keys}, {k: v for k, v in self.fixed.items() if k[0] in keys},
            {k: dict(v) for k, v in self.split.items() if k[0] in keys},
        )

    def __len__(self) -> int:
        return len(self.times)

    def to_dict(self) -> dict[str, Any]:
        entries = []
        for (key, kind), (f, b) in self.times.items():
            entry: dict[str, Any] = {"key": key, "device_kind": kind, "fwd_ms": f, "bwd_ms": b}
            fixed = self.fixed.get((key, kind))
            if fixed is not None:
                entry["fwd_fixed_ms"], entry["bwd_fixed_ms"] = fixed
            split = self.split.get((key, kind))
            if split:
                entry["split"] = {str(m): [f, b] for m, (f, b) in sorted(split.items())}
            entries.append(entry)
        return {"schema": PROFILE_SCHEMA, "version": PROFILE_SCHEMA_VERSION, "entries": entries}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<dict>") -> ProfiledTimes:
        def check(ok: bool, where: str, why: str) -> None:
            if not ok:
                raise ProfileFormatError(f"{source}: {where}: {why}")

        version = doc.get("version") if isinstance(doc, dict) and doc.get("version") in READABLE_VERSIONS else PROFILE_SCHEMA_VERSION
        check_header(doc, PROFILE_SCHEMA, version, source, ProfileFormatError)
        check(isinstance(doc.get("entries"), list), "entries", "expected a list")
        numbers = ("fwd_ms", "bwd_ms") if version == 1 else ("fwd_ms", "bwd_ms", "fwd_fixed_ms", "bwd_fixed_ms")
        fields = ("key", "device_kind", *numbers, *(("split",) if version >= 3 else ()))
        table = cls()
        for i, e in enumerate(doc["entries"]):
            where = f"entries[{i}]"
            check(isinstance(e, dict), where, "expected an object")
            for key in e:
                check(key in fields, f"{where}.{key}", "unknown field")
            for key in ("key", "device_kind"):
                check(isinstance(e.get(key), str), f"{where}.{key}", f"expected a string, got {e.get(key)!r}")
            check(("fwd_fixed_ms" in e) == ("bwd_fixed_ms" in e), where, "fwd_fixed_ms and bwd_fixed_ms go together")
            for key in numbers:
                v = e.get(key)
                if v is None and key.endswith("fixed_ms"):
                    continue
                check(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                    f"{where}.{key}",
                    f"expected a number >= 0, got {v!r}",
                )
            table.add_key(e["key"], e["device_kind"], e["fwd_ms"], e["bwd_ms"])
            if "fwd_fixed_ms" in e:
                table.add_fixed_key(e["key"], e["device_kind"], e["fwd_fixed_ms"], e["bwd_fixed_ms"])
            split = e.get("split", {})
            check(isinstance(split, dict), f"{where}.split", "expected an object of parts -> [fwd_ms, bwd_ms]")
            for parts, times in split.items():
                check(parts.isdigit() and int(parts) >= 2, f"{where}.split.{parts}", "expected a whole number of parts >= 2")
                check(
                    isinstance(times, list) and len(times) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in times),
                    f"{where}.split.{parts}", f"expected [fwd_ms, bwd_ms], numbers >= 0, got {times!r}",
                )  # fmt: skip
                table.add_split_key(e["key"], e["device_kind"], int(parts), *times)
        return table

    @classmethod
    def load(cls, path: str | Path) -> ProfiledTimes:
        return cls.from_dict(read_json(path, ProfileFormatError, "profiled times"), str(path))


def with_fixed_costs(
    full: ProfiledTimes, graph: Graph, small: ProfiledTimes, small_graph: Graph, fraction: float, device_kind: str
) -> ProfiledTimes:
    """``full`` (``graph``'s nodes profiled at the full batch) with the fixed part of every node's times
    fitted from ``small`` (the same program traced and profiled at ``fraction`` of the batch,
    ``small_graph``; its nodes matched by name). With ``t`` the full-batch time and ``s`` the smaller
    batch's, ``time(b) = fixed + per_sample * b`` through both gives ``fixed = (s - fraction * t) / (1 -
    fraction)``, kept within ``[0, t]`` (a measurement's noise may put it outside). Nodes missing from
    either table get no fixed part (the cost model then falls back to its per-op floor)."""
    if not 0 < fraction < 1:
        raise ConfigurationError(f"with_fixed_costs: fraction must be in (0, 1), got {fraction}")
    result = full.copy()
    for key, big, little in _matched(full, graph, small, small_graph, device_kind):
        fixed = [min(max((s - fraction * t) / (1 - fraction), 0.0), t) for t, s in zip(big, little)]
        result.add_fixed_key(key, device_kind, fixed[0], fixed[1])
    return result


def with_split_times(
    full: ProfiledTimes, graph: Graph, small: ProfiledTimes, small_graph: Graph, parts: int, device_kind: str
) -> ProfiledTimes:
    """``full`` (``graph``'s nodes profiled at the full batch) with every node's times on ``1/parts`` of
    the batch from ``small`` (the same program traced and profiled there, ``small_graph``; its nodes
    matched by name), as split times (module docstring). Nodes missing from either table get none."""
    if parts < 2:
        raise ConfigurationError(f"with_split_times: parts must be at least 2, got {parts}")
    result = full.copy()
    for key, _, little in _matched(full, graph, small, small_graph, device_kind):
        result.add_split_key(key, device_kind, parts, *little)
    return result


def _matched(
    full: ProfiledTimes, graph: Graph, small: ProfiledTimes, small_graph: Graph, device_kind: str
) -> Iterator[tuple[str, tuple[float, float], tuple[float, float]]]:
    """``(key, full times, small times)`` of each node of ``graph`` that ``small_graph`` has by name
    and both tables timed on ``device_kind``."""
    for node in graph.nodes():
        if node.name not in small_graph:
            continue
        key = node.profile_key()
        big, little = full.get_key(key, device_kind), small.get_key(small_graph.node(node.name).profile_key(), device_kind)
        if big is not None and little is not None:
            yield key, big, little
