"""Profiled op times: the table that the profiler (:mod:`graphc.frontend.profile`) fills on a real device
and the cost model (:class:`placement.cost_model.CostModel`) reads, with its JSON cache (schema
``graphc.profiled_times``). Like the cost graph, it is data that the frontend and placement share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphc.ir.errors import ProfileFormatError
from graphc.ir.graph import NodeData
from graphc.ir.jsonfile import check_header, read_json, write_json

PROFILE_SCHEMA = "graphc.profiled_times"
PROFILE_SCHEMA_VERSION = 1


@dataclass
class ProfiledTimes:
    """Profiled times keyed by (node key, device kind) -> (forward ms, backward ms).

    The node key is :meth:`graphc.ir.graph.NodeData.profile_key`: the op, its output shapes and dtypes,
    FLOPs and bytes read, so nodes computing the same thing on tensors of the same sizes share one
    measurement. The profiler (:mod:`graphc.frontend.profile`) fills the table by running each op on a real
    device; :meth:`save` and :meth:`load` keep it in a JSON cache so a later run does not measure again.
    """

    times: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def add_key(self, key: str, device_kind: str, fwd_ms: float, bwd_ms: float) -> None:
        self.times[(key, device_kind)] = (float(fwd_ms), float(bwd_ms))

    def get_key(self, key: str, device_kind: str) -> tuple[float, float] | None:
        return self.times.get((key, device_kind))

    def add(self, node: NodeData, device_kind: str, fwd_ms: float, bwd_ms: float) -> None:
        """Record the times of ``node`` (by its profile key) on devices of ``device_kind``."""
        self.add_key(node.profile_key(), device_kind, fwd_ms, bwd_ms)

    def lookup(self, node: NodeData, device: Any) -> tuple[float, float] | None:
        """The times of ``node`` on ``device`` (anything with a ``kind``, as a placement Device has)."""
        return self.times.get((node.profile_key(), device.kind))

    def scaled(self, factor: float) -> ProfiledTimes:
        """Every time times ``factor`` (a calibration: ops timed in isolation miss what runs between them
        in a real step, so a table is scaled until the simulated step of one device equals a measured one)."""
        result = ProfiledTimes()
        for (key, kind), (fwd_ms, bwd_ms) in self.times.items():
            result.add_key(key, kind, fwd_ms * factor, bwd_ms * factor)
        return result

    def __len__(self) -> int:
        return len(self.times)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PROFILE_SCHEMA,
            "version": PROFILE_SCHEMA_VERSION,
            "entries": [
                {"key": key, "device_kind": kind, "fwd_ms": f, "bwd_ms": b}
                for (key, kind), (f, b) in self.times.items()
            ],
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<dict>") -> ProfiledTimes:
        def check(ok: bool, where: str, why: str) -> None:
            if not ok:
                raise ProfileFormatError(f"{source}: {where}: {why}")

        check_header(doc, PROFILE_SCHEMA, PROFILE_SCHEMA_VERSION, source, ProfileFormatError)
        check(isinstance(doc.get("entries"), list), "entries", "expected a list")
        table = cls()
        for i, e in enumerate(doc["entries"]):
            where = f"entries[{i}]"
            check(isinstance(e, dict), where, "expected an object")
            for key in e:
                check(key in ("key", "device_kind", "fwd_ms", "bwd_ms"), f"{where}.{key}", "unknown field")
            for key in ("key", "device_kind"):
                check(isinstance(e.get(key), str), f"{where}.{key}", f"expected a string, got {e.get(key)!r}")
            for key in ("fwd_ms", "bwd_ms"):
                v = e.get(key)
                check(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                    f"{where}.{key}",
                    f"expected a number >= 0, got {v!r}",
                )
            table.add_key(e["key"], e["device_kind"], e["fwd_ms"], e["bwd_ms"])
        return table

    @classmethod
    def load(cls, path: str | Path) -> ProfiledTimes:
        return cls.from_dict(read_json(path, ProfileFormatError, "profiled times"), str(path))
