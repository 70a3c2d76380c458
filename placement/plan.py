"""``Plan``: the result of placement, the contract between the solvers and the runtime.

A plan says, for one cost graph on one cluster, which device runs every node and in which order, how a
pipelined plan splits the graph into stages and microbatches, and what the solver predicts and proves
about it (simulated step time, peak memory per device, lower bound, proven gap). Plans are saved as
JSON with a schema name and version and validated on load; nothing is ever unpickled.

A plan remembers the fingerprint of the graph it was made for (:meth:`graphc.ir.graph.Graph.fingerprint`),
so that running it on another model (other node names, other shapes) is refused before anything runs
(:meth:`Plan.check_matches`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphc.ir.graph import SCHEMA as GRAPH_SCHEMA
from graphc.ir.graph import Graph
from graphc.ir.jsonfile import check_header, read_json, write_json
from graphc.ir.profiled import ProfiledTimes
from placement.cluster import Cluster, ClusterLike
from placement.cost_model import CostModel
from placement.errors import ConfigurationError, MismatchError, PlacementError, PlanFormatError, ScheduleError
from placement.inspect import chrome_trace, gantt_png, summary_table, to_dot
from placement.lowering import MODES, Lowered
from placement.schedules import SCHEDULES, make_schedule
from placement.simulate import simulate
from placement.sync import AllReduceSync, ParameterServerSync, Sync, sync_from_dict, sync_to_dict

if TYPE_CHECKING:
    from rich.console import Group

    from placement.schedules import Schedule
    from placement.timeline import SimResult

SCHEMA = "graphc.plan"
SCHEMA_VERSION = 1
OBJECTIVES = ("latency", "throughput")


PlanMismatchError = MismatchError  # the old name of the one class for a plan made for another model


@dataclass
class Stage:
    """One stage of a pipelined plan: a set of nodes, replicated data-parallel on ``devices``.

    The plan assigns the stage's nodes to ``devices[0]``. With ``r`` devices and ``m`` microbatches,
    microbatch ``k`` runs on ``devices[k % r]`` (round robin), and its devices combine their parameter
    gradients as the plan's :attr:`Plan.sync` says: all-reduced (a ring in this order, or hierarchical)
    in buckets as the backward makes them, or through parameter servers; :func:`placement.simulate`
    models exactly that when given :func:`stage_replicas` and the sync.
    """

    index: int
    nodes: list[str]
    devices: list[str]


def stage_replicas(stages: list[Stage]) -> dict[str, list[str]]:
    """The ``replicas`` argument of :func:`placement.simulate` for these stages: first device -> all the
    stage's devices, for each stage with more than one."""
    return {st.devices[0]: list(st.devices) for st in stages if len(st.devices) > 1}


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
        order: device name -> the node names it runs, in execution order (forward pass); the solvers'
            latency plans always record it (:func:`placement.problem.finish_plan`), a plan without one
            runs the topological order.
        stages: the pipeline stages of a throughput plan (empty for a latency plan).
        microbatches: how many microbatches one step is split into (1: no pipelining).
        schedule: the name of the schedule its devices run (:func:`placement.schedules.make_schedule`:
            ``"node-order"``, ``"gpipe"``, ``"1f1b"``); ``""`` for the default, ``gpipe`` for a plan
            with stages, else ``node-order`` (:meth:`schedule_name`). The solvers' staged plans record
            the faster of gpipe and 1f1b that fits (:func:`placement.problem.finish_plan`).
        sync: how the replicas of replicated stages combine their gradients (:mod:`placement.sync`):
            bucketed all-reduce (the default, ring, 25 MiB buckets) or parameter servers. Only a plan
            with replicated stages, or with parameter servers, uses it.
        predicted_step_ms: the simulated time of one step (all microbatches) of its schedule: what
            :meth:`simulate` gives.
        peak_memory_bytes: device name -> simulated peak memory (of the same simulation).
        lower_bound_ms: a proven lower bound on the step time for this graph and cluster.
        gap: the solver's proven relative optimality gap (``(found - bound) / found``), None if unknown.
        solver: the solver's name (``"m-etf"``, ``"cp-sat"``, ``"auto"``, ...).
        solve_seconds: wall time the solver took.
        settings: the solver's settings (time limit, seed, ...), JSON values only.
        graph, cluster, cost_model: what the plan was made from, when known (set by the solvers and by
            :meth:`load` for a file that embeds them); the inspection methods need them.
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
    schedule: str = ""
    sync: Sync = field(default_factory=AllReduceSync)
    predicted_step_ms: float = 0.0
    peak_memory_bytes: dict[str, float] = field(default_factory=dict)
    lower_bound_ms: float = 0.0
    gap: float | None = None
    solver: str = ""
    solve_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    graph: Graph | None = field(default=None, compare=False, repr=False)
    cluster: Cluster | None = field(default=None, compare=False, repr=False)
    cost_model: CostModel | None = field(default=None, compare=False, repr=False)

    def devices_used(self) -> list[str]:
        """The devices that run at least one node, in first-use order, each replica of a replicated stage
        after its first device (the replicas run the stage's nodes on their microbatches)."""
        replicas = stage_replicas(self.stages)
        return list(dict.fromkeys(r for d in self.assignment.values() for r in replicas.get(d, [d])))

    def nodes_on(self, device: str) -> list[str]:
        """The nodes placed on ``device``, in execution order when the plan has one."""
        if device in self.order:
            return list(self.order[device])
        return [n for n, d in self.assignment.items() if d == device]

    def schedule_name(self) -> str:
        """The schedule its devices run: :attr:`schedule`, or the default for the plan."""
        return self.schedule or ("gpipe" if self.stages else "node-order")

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
        raise MismatchError(
            f"the plan was made for graph {self.graph_name!r}, not for {graph.name!r} as traced now: "
            + "; ".join(detail)
            + ". Re-plan for this model and these input shapes."
        )

    # -- inspection (placement.inspect) --------------------------------------------------------
    def simulate(
        self, cluster: ClusterLike | None = None, cost_model: CostModel | None = None, **options: Any
    ) -> SimResult:
        """Simulate the plan again for its timeline and figures: its graph, cluster and cost model, its
        schedule (:meth:`schedule_name`, generated by :func:`placement.schedules.make_schedule`: what its
        devices run), its stages as replicas, its microbatches, mode and synchronisation (:attr:`sync`)
        (what :func:`placement.simulate` does with a plan).

        ``cluster`` (a Cluster, a preset name or a JSON file with the plan's device names) and
        ``cost_model`` replace the plan's, for a plan that does not carry them or to see the placement on
        other hardware; ``options`` (the keyword arguments of :func:`placement.simulate`; ``None`` keeps
        the plan's) replace its mode, microbatches or schedule (a :class:`~placement.schedules.Schedule`
        or a schedule name, generated for the mode and microbatches), or set the simulator's
        optimizer state or kind check. An ``order`` or ``replicas`` given simulates without a schedule:
        the plan's order and stages, or those given, on the simulator's ready queues (``priority``). So
        does a plan whose default schedule cannot be made (:class:`ScheduleError`: a pipeline whose data
        flows back to an earlier stage, stages of a graph with explicit backward nodes), which no
        executor runs; a schedule named by the plan or the caller is made or refused.
        """
        if cluster is None:
            graph, cluster = self._made_from()
            cost_model = cost_model or self.cost_model
        else:
            graph, cluster = self._graph(), Cluster.resolve(cluster)
        settings: dict[str, Any] = {"mode": self.mode, "microbatches": self.microbatches}
        settings.update({k: v for k, v in options.items() if v is not None})
        settings.setdefault("sync", self.sync)
        if "order" not in settings and "replicas" not in settings:
            schedule = settings.pop("schedule", self.schedule)
            if isinstance(schedule, str):
                schedule = self._schedule_for(graph, schedule, settings["mode"], settings["microbatches"], settings.get("lowered"))
            if schedule is not None:
                return simulate(graph, cluster, self.assignment, cost_model, schedule=schedule,
                                replicas=stage_replicas(self.stages), **settings)  # fmt: skip
        settings.setdefault("order", self.order or None)
        settings.setdefault("replicas", stage_replicas(self.stages))
        return simulate(graph, cluster, self.assignment, cost_model, **settings)

    def _schedule_for(
        self, graph: Graph, name: str, mode: str, microbatches: int, lowered: Lowered | None = None
    ) -> Schedule | None:
        """The schedule ``name`` (``""``: :meth:`schedule_name`) of this plan run in ``mode`` on
        ``microbatches`` (reading ``lowered`` when given); None when the default schedule cannot be made
        (see :meth:`simulate`)."""
        runs = replace(self, mode=mode, microbatches=microbatches)
        try:
            return make_schedule(runs, name or self.schedule_name(), graph, lowered=lowered)
        except ScheduleError:
            if name:
                raise
            return None

    def summary(self) -> Group:
        """Tables per device and per link and the headline figures (a rich renderable: print it)."""
        graph, cluster = self._made_from()
        return summary_table(self, graph, cluster, self.simulate())

    def to_chrome_trace(self, path: str | Path) -> None:
        """Write the simulated timeline for Perfetto / chrome://tracing: a track per device and per link."""
        Path(path).write_text(json.dumps(chrome_trace(self.simulate())))

    def gantt(self, path: str | Path) -> None:
        """Draw the simulated timeline as a PNG."""
        gantt_png(self.simulate(), path, title=f"{self.graph_name} on {self.cluster_name}: {self.solver}")

    def to_dot(self, path: str | Path) -> None:
        """Write Graphviz source of the graph coloured by device, cut edges marked."""
        graph, cluster = self._made_from()
        Path(path).write_text(to_dot(self, graph, cluster))

    def _graph(self) -> Graph:
        if self.graph is None:
            raise PlacementError(
                "this plan does not carry its graph (it was built by hand or loaded from a file without it): "
                "set plan.graph first"
            )
        return self.graph

    def _made_from(self) -> tuple[Graph, Cluster]:
        if self.graph is None or self.cluster is None:
            raise PlacementError(
                "this plan does not carry its graph and cluster (it was built by hand or loaded from a file "
                "without them): set plan.graph and plan.cluster first"
            )
        if self.cost_model is None:
            self.cost_model = CostModel(self.cluster)
        return self.graph, self.cluster

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON values; the graph, cluster and cost-model settings are embedded when known,
        so a saved plan can be inspected and run elsewhere."""
        embedded = ("graph", "cluster", "cost_model")
        doc: dict[str, Any] = {"schema": SCHEMA, "version": SCHEMA_VERSION}
        for name in self.__dataclass_fields__:
            if name not in embedded:
                value = getattr(self, name)
                if name == "stages":
                    value = [asdict(st) for st in value]
                elif name == "sync":
                    value = sync_to_dict(value)
                doc[name] = value
        if self.graph is not None:
            doc["graph"] = self.graph.to_dict()
        if self.cluster is not None:
            doc["cluster"] = self.cluster.to_dict()
        if self.cost_model is not None:
            doc["cost_model"] = _cost_model_to_dict(self.cost_model, self.graph)
        return doc

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<dict>") -> Plan:
        """Validate and build a plan; an error names the source and the bad field (and says what to do
        with a cost graph given where a plan belongs)."""
        if isinstance(doc, dict) and doc.get("schema") == GRAPH_SCHEMA:
            raise PlanFormatError(f"{source}: this is a cost graph, not a plan: place it first (graphc plan {source} -o plan.json)")
        check_header(doc, SCHEMA, SCHEMA_VERSION, source, PlanFormatError)
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
        schedule = doc.get("schedule", "")
        _require(schedule in ("", *SCHEDULES), source, "schedule", f"expected one of {SCHEDULES} (or \"\" for the default), got {schedule!r}")
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
        fields = {k: v for k, v in doc.items() if k not in ("schema", "version", "graph", "cluster", "cost_model")}
        fields["stages"] = stages
        if "sync" in doc:
            fields["sync"] = sync_from_dict(doc["sync"], source)
        plan = cls(**fields)
        if "graph" in doc:
            plan.graph = Graph.from_dict(doc["graph"], f"{source}: graph")
        if "cluster" in doc:
            plan.cluster = Cluster.from_dict(doc["cluster"], f"{source}: cluster")
            servers = plan.sync.servers if isinstance(plan.sync, ParameterServerSync) else ()
            unknown = [s for s in servers if s not in plan.cluster]
            _require(not unknown, source, "sync.servers", f"{unknown[:1]} is not a device of the embedded cluster")
        if "cost_model" in doc:
            _require(plan.cluster is not None, source, "cost_model", "needs the embedded cluster")
            plan.cost_model = _cost_model_from_dict(doc["cost_model"], plan.cluster, source)
        return plan

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(read_json(path, PlanFormatError, "plan"), str(path))


_COST_SETTINGS = ("compute_efficiency", "memory_efficiency", "default_dtype", "use_measured", "endpoint_cpu_s", "endpoint_cpu_per_byte_s", "corun_slowdown")


def _cost_model_to_dict(cost_model: CostModel, graph: Graph | None) -> dict[str, Any]:
    """The cost model's settings, and the profiled times of the graph's nodes when it has a table."""
    doc: dict[str, Any] = {key: getattr(cost_model, key) for key in _COST_SETTINGS}
    if doc["corun_slowdown"]:  # written only when measured, so plans without it read in older releases
        doc["corun_slowdown"] = dict(doc["corun_slowdown"])
    else:
        del doc["corun_slowdown"]
    table = cost_model.profiled
    if isinstance(table, ProfiledTimes):
        keys = {n.profile_key() for n in graph.nodes()} if graph is not None else None
        used = table if keys is None else table.restricted(keys)
        doc["profiled"] = used.to_dict()
    return doc


def _cost_model_from_dict(doc: Any, cluster: Cluster, source: str) -> CostModel:
    _require(isinstance(doc, dict), source, "cost_model", "expected an object")
    unknown = sorted(set(doc) - set(_COST_SETTINGS) - {"profiled"})
    _require(not unknown, source, f"cost_model.{unknown[0]}" if unknown else "", "unknown field")
    profiled = ProfiledTimes.from_dict(doc["profiled"], f"{source}: cost_model.profiled") if "profiled" in doc else None
    settings = {k: doc[k] for k in _COST_SETTINGS if k in doc}
    try:
        return CostModel(cluster, profiled=profiled, **settings)
    except (TypeError, ConfigurationError) as exc:
        raise PlanFormatError(f"{source}: cost_model: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, source: str, where: str, why: str) -> None:
    if not ok:
        raise PlanFormatError(f"{source}: {where}: {why}")
