"""``@graphc.compile``: trace, place and run a model across devices, behind the model's own call.

The facade ties the three packages together (the one place that does, see DESIGN.md)::

    @graphc.compile(cluster="local", solver="auto")
    def loss_fn(model, x, y):
        return F.cross_entropy(model(x), y)

    loss = loss_fn(model, x, y)      # first call: trace, plan, partition, run
    loss.backward()                  # gradients flow back across devices into model's parameters
    loss_fn.plan.summary()           # the Plan of the last call

The first call with a given *shape signature* (shapes, dtypes and devices of the tensor arguments)
traces the model with those arguments, places the cost graph on the cluster with the chosen solver,
partitions the traced program by the plan and runs it with the local executor; later calls with the
same signature reuse all of it (no re-trace, no re-plan); a new signature (another batch size) plans
again and caches that too. Outputs are differentiable: the model's parameters, which the executor
keeps on their assigned devices, receive their gradients as in eager PyTorch.

With ``objective="throughput"`` the plan is a pipeline (stages, microbatches; no replicated stages:
the differentiable call cannot sum a replica's gradients after the caller's ``backward``) and the model
is traced a second time on one microbatch, which the executor runs microbatch after microbatch; the
outputs must have a batch dimension to be put back together (a scalar loss is refused with what to do).

Progress of the slow steps (trace, solve, partition) is shown with a live display; pass
``progress=False`` or set ``GRAPHC_PROGRESS=0`` to silence it.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.utils._pytree as pytree
from rich.console import Console

from graphc.errors import GraphcError
from graphc.tracing import TracedProgram, trace
from placement.cluster import Cluster
from placement.constraints import Constraints
from placement.plan import Plan

ShapeSignature = tuple[tuple[Any, ...], ...]


def resolve_cluster(cluster: str | Path | Cluster) -> Cluster:
    """A cluster from a preset name, a JSON file, or a Cluster."""
    if isinstance(cluster, Cluster):
        return cluster
    text = str(cluster)
    if text.endswith(".json") or Path(text).is_file():
        return Cluster.load(text)
    return Cluster.preset(text)


def shape_signature(args: tuple) -> ShapeSignature:
    """What decides whether a cached plan fits a call: per argument, its shape, dtype and device
    (a module argument counts by identity)."""
    return tuple(
        (tuple(a.shape), str(a.dtype), str(a.device)) if isinstance(a, torch.Tensor) else ("module", id(a))
        for a in args
    )


@dataclass
class CompiledEntry:
    """Everything made for one shape signature."""

    program: TracedProgram
    plan: Plan
    executor: Any  # runtime.LocalExecutor
    seconds: dict[str, float]


class CompiledModel:
    """A model or function whose calls run placed across the devices of a cluster (module docstring)."""

    def __init__(
        self,
        fn: nn.Module | Callable,
        *,
        cluster: str | Path | Cluster = "local",
        solver: str = "auto",
        objective: str = "latency",
        constraints: Constraints | None = None,
        time_limit: float = 30.0,
        granularity: str = "module",
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        self.fn = fn
        self.cluster = resolve_cluster(cluster)
        self.solver = solver
        self.objective = objective
        self.constraints = constraints
        self.time_limit = time_limit
        self.granularity = granularity
        self.seed = seed
        show = progress if progress is not None else os.environ.get("GRAPHC_PROGRESS", "1") != "0"
        self.console = Console(stderr=True, quiet=not show)
        self.cache: dict[ShapeSignature, CompiledEntry] = {}
        self.last: CompiledEntry | None = None
        self.traces = 0
        functools.update_wrapper(self, fn, updated=())

    @property
    def plan(self) -> Plan:
        """The plan of the most recent call."""
        if self.last is None:
            raise GraphcError("no plan yet: call the compiled model once (it plans on its first call)")
        return self.last.plan

    def __call__(self, *args: Any) -> Any:
        key = shape_signature(args)
        entry = self.cache.get(key)
        if entry is None:
            entry = self.cache[key] = self._build(args)
        self.last = entry
        tensors = [a for i, a in enumerate(args) if i not in entry.program.module_positions]
        return entry.executor(*tensors)

    def _build(self, args: tuple) -> CompiledEntry:
        from runtime import LocalExecutor, partition

        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        seconds: dict[str, float] = {}
        with self.console.status(f"graphc: tracing {name} ...") as status:
            start = time.perf_counter()
            program = trace(self.fn, args, granularity=self.granularity, name=name)
            self.traces += 1
            seconds["trace"] = time.perf_counter() - start
            self.console.log(f"traced {name}: {len(program.graph)} nodes in {seconds['trace']:.1f} s")
            status.update(f"graphc: placing on {self.cluster.name} with {self.solver} (at most {self.time_limit:g} s) ...")
            start = time.perf_counter()
            plan = self._solve(program)
            seconds["solve"] = time.perf_counter() - start
            self.console.log(
                f"placed on {len(plan.devices_used())} device(s) by {plan.solver}: predicted step "
                f"{plan.predicted_step_ms:.2f} ms, {seconds['solve']:.1f} s"
            )
            status.update("graphc: partitioning ...")
            start = time.perf_counter()
            runs = self._microbatch_program(args, program, plan) if plan.microbatches > 1 else program
            executor = LocalExecutor(partition(runs, plan, program.graph))
            seconds["partition"] = time.perf_counter() - start
        return CompiledEntry(program, plan, executor, seconds)


    def _solve(self, program: TracedProgram) -> Plan:
        """The plan for ``program``. A pipelined plan gets no replicated stages: the executor's
        differentiable call cannot sum a replica's gradients, which the caller's ``backward`` makes later."""
        from placement.pipeline import solve_throughput
        from placement.solvers import make_problem, solve

        options = {"objective": self.objective, "constraints": self.constraints, "time_limit": self.time_limit, "seed": self.seed}
        if self.objective == "throughput" and self.solver == "auto":
            return solve_throughput(make_problem(program.graph, self.cluster, **options), replication=False)
        return solve(program.graph, self.cluster, solver=self.solver, **options)

    def _microbatch_program(self, args: tuple, program: TracedProgram, plan: Plan) -> TracedProgram:
        """``fn`` traced on one of the plan's microbatches (what a pipelined plan runs, microbatch after
        microbatch); refused when an output has no batch dimension to put the microbatches back along."""
        scalars = [n for n in output_shapes(program) if len(n) == 0]
        if scalars:
            raise GraphcError(
                f"the pipelined plan splits the batch into {plan.microbatches} microbatches, but {program.graph.name!r} "
                "returns a scalar (a loss?) whose whole-batch value cannot be put together from microbatches: "
                "compile the model (outputs per sample) and compute the loss on its outputs, or use objective='latency'"
            )
        from runtime.step import split_batch

        first = split_batch(args, plan.microbatches)[0]
        return trace(self.fn, first, granularity=self.granularity, name=program.graph.name)


def output_shapes(program: TracedProgram) -> list[tuple[int, ...]]:
    """The shapes of the traced program's tensor outputs, from the fx graph's recorded values."""
    out = next(n for n in program.graph_module.graph.nodes if n.op == "output")
    leaves = [a for a in pytree.tree_leaves(out.args) if isinstance(a, torch.fx.Node) and "val" in a.meta]
    return [tuple(a.meta["val"].shape) for a in leaves if isinstance(a.meta["val"], torch.Tensor)]


def compile(  # noqa: A001 - the name users expect, as torch.compile
    fn: nn.Module | Callable | None = None, **options: Any
) -> CompiledModel | Callable[[nn.Module | Callable], CompiledModel]:
    """Compile a module or a function of modules and tensors; usable as ``@compile``, ``@compile(...)``
    or ``compile(module, ...)``. Options: see :class:`CompiledModel`."""
    if fn is None:
        return lambda f: CompiledModel(f, **options)
    return CompiledModel(fn, **options)
