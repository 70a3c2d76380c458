"""Profiled op times: the table that the profiler (:mod:`graphc.frontend.profile`) fills on a real device
and the cost model (:class:`placement.cost_model.CostModel`) reads, with its JSON cache (schema
``graphc.profiled_times``). Like the cost graph, it is data that the frontend and placement share.

Fixed costs. A pass does not get ``m`` times faster on ``1/m`` of the batch: every op pays a dispatch
cost and small slices run less efficiently. A table may therefore also hold, per entry, the part of the
forward and backward time that does not shrink with the batch (``time(b) = fixed + per_sample * b``),
fitted by :func:`with_fixed_costs` from the same nodes profiled at the full batch and at a smaller one;
the cost model prices a microbatch as ``fixed + (full - fixed) / m``. Version 1 files (no fixed costs)
still load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphc.ir.errors import ConfigurationError, ProfileFormatError
from graphc.ir.graph import Graph, NodeData
from graphc.ir.jsonfile import check_header, read_json, write_json

PROFILE_SCHEMA = "graphc.profiled_times"
PROFILE_SCHEMA_VERSION = 2
#: Versions :meth:`ProfiledTimes.from_dict` reads (1: no fixed costs).
READABLE_VERSIONS = (1, 2)


@dataclass
class ProfiledTimes:
    """Profiled times keyed by (node key, device kind) -> (forward ms, backward ms) at the full batch,
    and, where fitted, (node key, device kind) -> (forward, backward) fixed ms (module docstring).

    The node key is :meth:`graphc.ir.graph.NodeData.profile_key`: the op, its output shapes and dtypes,
    FLOPs and bytes read, so nodes computing the same thing on tensors of the same sizes share one
    measurement. The profiler (:mod:`graphc.frontend.profile`) fills the table by running each op on a real
    device; :meth:`save` and :meth:`load` keep it in a JSON cache so a later run does not measure again.
    """

    times: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    fixed: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def add_key(self, key: str, device_kind: str, fwd_ms: float, bwd_ms: float) -> None:
        self.times[(key, device_kind)] = (float(fwd_ms), float(bwd_ms))

    def get_key(self, key: str, device_kind: str) -> tuple[float, float] | None:
        return self.times.get((key, device_kind))

    def add_fixed_key(self, key: str, device_kind: str, fwd_ms: float, bwd_ms: float) -> None:
        """Record the fixed part (paid by every microbatch) of an entry's forward and backward."""
        self.fixed[(key, device_kind)] = (float(fwd_ms), float(bwd_ms))

    def add(self, node: NodeData, device_kind: str, fwd_ms: float, bwd_ms: float) -> None:
        """Record the times of ``node`` (by its profile key) on devices of ``device_kind``."""
        self.add_key(node.profile_key(), device_kind, fwd_ms, bwd_ms)

    def lookup(self, node: NodeData, device: Any) -> tuple[float, float] | None:
        """The times of ``node`` on ``device`` (anything with a ``kind``, as a placement Device has)."""
        return self.times.get((node.profile_key(), device.kind))

    def lookup_fixed(self, node: NodeData, device: Any) -> tuple[float, float] | None:
        """The fixed part of ``node``'s times on ``device``, or None when none was fitted."""
        return self.fixed.get((node.profile_key(), device.kind))

    def scaled(self, factor: float) -> ProfiledTimes:
        """Every time times ``factor`` (a calibration: ops timed in isolation miss what runs between them
        in a real step, so a table is scaled until the simulated step of one device equals a measured one)."""
        return ProfiledTimes(
            {k: (f * factor, b * factor) for k, (f, b) in self.times.items()},
            {k: (f * factor, b * factor) for k, (f, b) in self.fixed.items()},
        )

    def restricted(self, keys: set[str]) -> ProfiledTimes:
        """The entries (times and fixed parts) of these node keys only."""
        return ProfiledTimes(
            {k: v for k, v in self.times.items() if k[0] in keys}, {k: v for k, v in self.fixed.items() if k[0] in keys}
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
        table = cls()
        for i, e in enumerate(doc["entries"]):
            where = f"entries[{i}]"
            check(isinstance(e, dict), where, "expected an object")
            for key in e:
                check(key in ("key", "device_kind", *numbers), f"{where}.{key}", "unknown field")
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
    result = ProfiledTimes(dict(full.times), dict(full.fixed))
    for node in graph.nodes():
        if node.name not in small_graph:
            continue
        key = node.profile_key()
        big, little = full.get_key(key, device_kind), small.get_key(small_graph.node(node.name).profile_key(), device_kind)
        if big is None or little is None:
            continue
        fixed = [min(max((s - fraction * t) / (1 - fraction), 0.0), t) for t, s in zip(big, little)]
        result.add_fixed_key(key, device_kind, fixed[0], fixed[1])
    return result
