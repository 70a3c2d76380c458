"""``Plan``: the result of placement, the contract between the solvers and the runtime.

A plan says, for one cost graph on one cluster, which device runs every node and in which order, how a
pipelined plan splits the graph into stages and microbatches, and what the solver predicts and proves
about it (simulated step time, peak memory per device, lower bound, proven gap). Plans are saved as
JSON with a schema name and version and validated on load; nothing is ever unpickled.

A plan remembers the fingerprint of the graph it was made for (:meth:`graphc.graph.Graph.fingerprint`),
so that running it on another model (other node names, other shapes) is refused before anything runs
(:meth:`Plan.check_matches`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graphc.graph import Graph
from placement.errors import PlacementError

SCHEMA = "graphc.plan"
SCHEMA_VERSION = 1
OBJECTIVES = ("latency", "throughput")
MODES = ("training", "inference")


class PlanFormatError(PlacementError):
    """A plan file is malformed; the message names the file and the field."""


class PlanMismatchError(PlacementError):
    """A plan was made for another graph than the one it is asked to run."""


@dataclass
class Stage:
    """One stage of a pipelined plan: a set of nodes, replicated data-parallel on ``devices``."""

    index: int
    nodes: list[str]
    devices: list[str]


@dataclass
class Plan:
    """A placement of a cost graph on a cluster, with what the solver predicts and proves about it.

    Attributes:
        graph_name: the cost graph's name.
        graph_fingerprint: :meth:`Graph.fingerprint` of the graph the plan was made for.
        cluster_name: the cluster's name.
        objective: ``"latency"`` (one step as fast as possible) or ``"throughput"`` (pipelined).
        mode: ``"training"`` (forward and backward) or ``"inference"`` (forward only).
        assignment: node name -> device name, for every node of the graph.
        order: device name -> the node names it runs, in execution order (forward pass).
        stages: the pipeline stages of a throughput plan (empty for a latency plan).
        microbatches: how many microbatches one step is split into (1: no pipelining).
        predicted_step_ms: the simulated time of one step (all microbatches).
        peak_memory_bytes: device name -> simulated peak memory.
        lower_bound_ms: a proven lower bound on the step time for this graph and cluster.
        gap: the solver's proven relative optimality gap (``(found - bound) / found``), None if unknown.
        solver: the solver's name (``"m-etf"``, ``"cp-sat"``, ``"auto"``, ...).
        solve_seconds: wall time the solver took.
        settings: the solver's settings (time limit, seed, ...), JSON values only.
    """

    graph_name: str
    graph_fingerprint: str
    cluster_name: str
    objective: str
    mode: str
    assignment: dict[str, str]
    order: dict[str, list[str]] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)
    microbatches: int = 1
    predicted_step_ms: float = 0.0
    peak_memory_bytes: dict[str, float] = field(default_factory=dict)
    lower_bound_ms: float = 0.0
    gap: float | None = None
    solver: str = ""
    solve_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def devices_used(self) -> list[str]:
        """The devices that run at least one node, in first-use order."""
        return list(dict.fromkeys(self.assignment.values()))

    def nodes_on(self, device: str) -> list[str]:
        """The nodes placed on ``device``, in execution order when the plan has one."""
        if device in self.order:
            return list(self.order[device])
        return [n for n, d in self.assignment.items() if d == device]

    def ratio_to_bound(self) -> float:
        """Predicted step time over the lower bound (1.0 is provably optimal)."""
        return self.predicted_step_ms / self.lower_bound_ms if self.lower_bound_ms > 0 else math.inf

    def check_matches(self, graph: Graph) -> None:
        """Refuse a graph other than the one the plan was made for, saying what differs."""
        if graph.fingerprint() == self.graph_fingerprint:
            return
        missing = sorted(set(graph.node_names()) - set(self.assignment))
        extra = sorted(set(self.assignment) - set(graph.node_names()))
        detail = []
        if missing:
            detail.append(f"nodes without a device: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            detail.append(f"plan nodes not in the graph: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        if not detail:
            detail.append("same node names, but other ops, shapes or edges (traced with other inputs?)")
        raise PlanMismatchError(
            f"the plan was made for graph {self.graph_name!r}, not for {graph.name!r} as traced now: "
            + "; ".join(detail)
            + ". Re-plan for this model and these input shapes."
        )

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, **asdict(self)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<dict>") -> "Plan":
        """Validate and build a plan; an error names the source and the bad field."""
        _require(isinstance(doc, dict), source, "top level", "expected a JSON object")
        _require(doc.get("schema") == SCHEMA, source, "schema", f"expected {SCHEMA!r}, got {doc.get('schema')!r}")
        _require(
            doc.get("version") == SCHEMA_VERSION,
            source,
            "version",
            f"this graphc reads version {SCHEMA_VERSION}, the file has {doc.get('version')!r}",
        )
        for key in ("graph_name", "graph_fingerprint", "cluster_name", "solver"):
            _require(isinstance(doc.get(key, ""), str), source, key, "expected a string")
        _require(doc.get("objective") in OBJECTIVES, source, "objective", f"expected one of {OBJECTIVES}")
        _require(doc.get("mode") in MODES, source, "mode", f"expected one of {MODES}")
        assignment = doc.get("assignment")
        _require(
            isinstance(assignment, dict) and all(isinstance(v, str) for v in assignment.values()),
            source,
            "assignment",
            "expected an object of node name -> device name",
        )
        order = doc.get("order", {})
        _require(
            isinstance(order, dict)
            and all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in order.values()),
            source,
            "order",
            "expected an object of device name -> list of node names",
        )
        for device, names in order.items():
            for i, name in enumerate(names):
                _require(assignment.get(name) == device, source, f"order.{device}[{i}]", f"{name!r} is not assigned to {device!r}")
        stages = []
        for i, raw in enumerate(doc.get("stages", [])):
            _require(
                isinstance(raw, dict) and set(raw) == {"index", "nodes", "devices"},
                source,
                f"stages[{i}]",
                "expected an object with index, nodes, devices",
            )
            stages.append(Stage(**raw))
        microbatches = doc.get("microbatches", 1)
        _require(isinstance(microbatches, int) and microbatches >= 1, source, "microbatches", "expected an integer >= 1")
        numbers = ("predicted_step_ms", "lower_bound_ms", "solve_seconds")
        for key in numbers:
            value = doc.get(key, 0.0)
            _require(_is_number(value) and value >= 0, source, key, f"expected a number >= 0, got {value!r}")
        gap = doc.get("gap")
        _require(gap is None or _is_number(gap), source, "gap", f"expected a number or null, got {gap!r}")
        peak = doc.get("peak_memory_bytes", {})
        _require(
            isinstance(peak, dict) and all(_is_number(v) for v in peak.values()),
            source,
            "peak_memory_bytes",
            "expected an object of device name -> bytes",
        )
        settings = doc.get("settings", {})
        _require(isinstance(settings, dict), source, "settings", "expected an object")
        known = set(cls.__dataclass_fields__) | {"schema", "version"}
        unknown = sorted(set(doc) - known)
        _require(not unknown, source, unknown[0] if unknown else "", "unknown field")
        fields = {k: v for k, v in doc.items() if k not in ("schema", "version")}
        fields["stages"] = stages
        return cls(**fields)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanFormatError(f"{path}: cannot read the plan ({exc})") from None
        except json.JSONDecodeError as exc:
            raise PlanFormatError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        return cls.from_dict(doc, str(path))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, source: str, where: str, why: str) -> None:
    if not ok:
        raise PlanFormatError(f"{source}: {where}: {why}")
