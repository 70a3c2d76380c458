"""``@graphc.compile``: trace, place and run a model across devices, behind the model's own call.

The facade ties the three packages together (the one place that does, see DESIGN.md)::

    @graphc.compile(cluster="local", solver="auto")
    def loss_fn(model, x, y):
        return F.cross_entropy(model(x), y)

    loss = loss_fn(model, x, y)      # first call: trace, plan, partition, run
    loss.backward()                  # gradients flow back across devices into model's parameters
    loss_fn.plan.summary()           # the Plan of the last call

The first call with a given *call signature* (shapes, dtypes and devices of the tensor arguments,
positional and keyword, the values of other keyword arguments, and whether each module is in training
or evaluation mode) traces the model with those arguments, places the cost graph on the cluster with
the chosen solver, partitions the traced program by the plan and runs it with the local executor;
later calls with the same signature reuse all of it (no re-trace, no re-plan). Outputs are
differentiable: the model's parameters, which the executor keeps on their assigned devices, receive
their gradients as in eager PyTorch.

A new signature traces again, but searches again only when it must: another batch size keeps the
placement of the plan already made for the same program (:func:`placement.solvers.reuse.reuse_placement`:
same nodes, still fits in memory), so only a simulation is paid; a different program (``model.eval()``
turns dropout off and batch norm to its running statistics, which torch.export bakes into the traced
program) is planned within ``reshape_time_limit_s`` seconds. The progress display says which it did.
``model.train()`` / ``model.eval()`` are followed on every call: an eval-mode call never runs the
training program, and leaves batch norm's running statistics alone, as eager PyTorch does.

With ``objective="throughput"`` the plan splits the batch into microbatches and the model is traced a
second time on one microbatch, which the executor runs microbatch after microbatch; the outputs must
have a batch dimension to be put back together (a scalar loss is refused with what to do). ``parallel``
chooses the layouts the planner may take (:func:`placement.solve`): ``"pipeline"`` (stages, possibly
replicated), ``"data"`` (replicas of the whole model), ``"hybrid"`` (replicas of a pipeline) or
``"auto"`` (the fastest that fits); ``sync`` how replicas combine their gradients (ring or
hierarchical all-reduce, or ``"parameter-server"`` on ``servers``). A replica runs microbatches
``k, k + r, ...`` on its stage's parameters (:class:`runtime.LocalExecutor`), so the caller's
``backward`` sums every replica's gradient into the model's parameters: gradients are eager's on the
full batch. In this one process that sum is autograd's; the plan's all-reduce or parameter-server
traffic is what ``graphc run`` and the distributed executor perform, and what the plan's prediction
prices. A replicated plan is searched again at a new batch size (its reuse would lose its sync).

``sync`` may also name an averaging strategy (``"easgd"``, ``"eamsgd"``, ``"local-sgd"``, ``"diloco"``, or
a :mod:`placement.sync` record such as ``ElasticAveragingSync(tau=4)``) with ``parallel="data"``: the
script then runs on one rank per replica under ``torchrun``, each call runs this rank's replica on its
share of the batch, and ``compiled.optimizer(opt)`` returns the :mod:`runtime.averaging` strategy whose
``step()`` the loop calls instead of ``opt.step()`` (:mod:`graphc.app.compile_averaging`).

On the ``local`` cluster of CPU workers, ``calibrate=True`` measures this machine before planning
(:func:`graphc.app.calibrate.calibrate`, through its disk cache): each new program's ops profiled on one
thread and scaled to its eager step, and the link between two ranks; the plan is made and predicted
with those figures. Without it, the first plan on that cluster logs a warning that its prediction uses
the preset's assumed CPU figures.

Progress of the slow steps (trace, calibrate, solve, partition) is shown with a live display; pass
``progress=False`` or set ``GRAPHC_PROGRESS=0`` to silence it.
"""

from __future__ import annotations

import functools
import inspect
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from rich.console import Console
from torch import nn

from graphc.app.calibrate import calibrate
from graphc.app.compile_averaging import (
    COMPILE_STRATEGIES,
    AveragingWorker,
    averaging_sync_of,
    check_averaging_layout,
)
from graphc.frontend.tracing import TracedProgram, trace
from graphc.ir.deprecation import renamed_keywords
from graphc.ir.errors import ConfigurationError
from placement.cluster import Cluster, ClusterLike
from placement.constraints import Constraints
from placement.cost_model import CostModel
from placement.hybrid import PARALLEL, SYNCS
from placement.inspect import describe_sync
from placement.plan import Plan
from placement.solvers import make_problem, solve
from placement.solvers.reuse import PlacementNotReusable, reuse_placement
from placement.sync import AveragingSync
from runtime import LocalExecutor, partition
from runtime.averaging import Strategy
from runtime.step import split_batch

CallSignature = tuple[Any, ...]


def call_signature(fn: nn.Module | Callable, args: tuple, kwargs: dict[str, Any]) -> CallSignature:
    """What decides whether a cached program and plan fit a call: per argument, by the name it binds to,
    a tensor's shape, dtype and device, a module's identity, or another value's repr (it is baked into
    the traced program); and the training flag of every module involved."""

    def describe(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return (tuple(value.shape), str(value.dtype), str(value.device))
        if isinstance(value, nn.Module):
            return ("module", id(value))
        return ("value", repr(value))

    def describe_nest(value: Any) -> Any:  # *args binds a tuple of tensors, **kwargs a dict
        leaves, spec = pytree.tree_flatten(value)
        return str(spec), tuple(describe(leaf) for leaf in leaves)

    named = bound_arguments(fn, args, kwargs)
    return (
        tuple((k, describe_nest(v)) for k, v in sorted(named.items())),
        training_flags(fn, args),
    )


def bound_arguments(fn: nn.Module | Callable, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by parameter name, as the model's signature binds them, so that passing
    an argument by position or by keyword is the same call; by position (``"0"``, ``"1"``, ...) and
    keyword where the signature cannot say (the traced program then reports the mismatch)."""
    try:
        return dict(inspect.signature(fn.forward if isinstance(fn, nn.Module) else fn).bind(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        return {**{str(i): a for i, a in enumerate(args)}, **kwargs}


def training_flags(fn: nn.Module | Callable, args: tuple) -> tuple[bool, ...]:
    """``module.training`` of every module the call runs: the compiled module's, or a function's module
    arguments' (each submodule counts: a user may keep one block in eval mode while training)."""
    roots = [fn] if isinstance(fn, nn.Module) else [a for a in args if isinstance(a, nn.Module)]
    return tuple(m.training for root in roots for m in root.modules())


@dataclass
class CompiledEntry:
    """Everything made for one call signature; ``how`` says how its plan was found
    (``"searched"`` by the solver, or ``"reused"`` from the plan of another batch size)."""

    program: TracedProgram
    plan: Plan
    executor: Any  # runtime.LocalExecutor; None for an averaging run (this rank's replica runs eagerly)
    seconds: dict[str, float]
    how: str


class CompiledModel:
    """A model or function whose calls run placed across the devices of a cluster (module docstring).

    ``time_limit_s``: the seconds the first search may take; ``reshape_time_limit_s``: the seconds a new
    call signature may spend searching when the placement of an earlier plan does not apply to it.
    ``calibrate``: measure the ``local`` cluster of CPU workers on this machine before planning each new
    program (module docstring; refused for another cluster).
    ``parallel``, ``sync`` and ``servers``: the throughput layout, the replicas' synchronisation and the
    parameter-server devices (:func:`placement.solve`; module docstring); only with
    ``objective="throughput"``. An averaging ``sync`` (a name of
    :data:`graphc.app.compile_averaging.COMPILE_STRATEGIES` or a record) trains one replica per rank
    (:mod:`graphc.app.compile_averaging`; :attr:`averaging` is this rank's worker).
    (``time_limit`` and ``reshape_time_limit``, their old names, still work this release, with a
    ``DeprecationWarning``.)
    """

    @renamed_keywords(time_limit="time_limit_s", reshape_time_limit="reshape_time_limit_s")
    def __init__(
        self,
        fn: nn.Module | Callable,
        *,
        cluster: ClusterLike = "local",
        solver: str = "auto",
        objective: str = "latency",
        constraints: Constraints | None = None,
        time_limit_s: float = 30.0,
        reshape_time_limit_s: float = 1.0,
        granularity: str = "module",
        seed: int = 0,
        progress: bool | None = None,
        calibrate: bool = False,
        parallel: str = "pipeline",
        sync: str | AveragingSync | None = None,
        servers: Sequence[str] | None = None,
    ) -> None:
        check_layout(objective, parallel, sync, servers)
        averaging = averaging_sync_of(sync)
        if averaging is not None:
            check_averaging_layout(averaging, parallel, servers, calibrate)
        self.fn = fn
        self.cluster = Cluster.resolve(cluster)
        self.calibrate = calibrate
        if calibrate and not _cpu_workers(self.cluster):
            raise ConfigurationError(
                f"calibrate=True measures this machine's CPU workers: use it with cluster='local' on a machine "
                f"without GPUs, not {self.cluster.name!r}"
            )
        self.solver = solver
        self.objective = objective
        self.constraints = constraints
        self.time_limit_s = time_limit_s
        self.reshape_time_limit_s = reshape_time_limit_s
        self.granularity = granularity
        self.seed = seed
        self.parallel = parallel
        self.sync = sync
        self.servers = list(servers) if servers is not None else None
        self.averaging = AveragingWorker.join(averaging) if averaging is not None else None
        show = progress if progress is not None else os.environ.get("GRAPHC_PROGRESS", "1") != "0"
        self.console = Console(stderr=True, quiet=not show)
        self.cache: dict[CallSignature, CompiledEntry] = {}
        self.last: CompiledEntry | None = None
        self.traces = 0
        self.searches = 0
        functools.update_wrapper(self, fn, updated=())

    @property
    def plan(self) -> Plan:
        """The plan of the most recent call."""
        if self.last is None:
            raise ConfigurationError("no plan yet: call the compiled model once (it plans on its first call)")
        return self.last.plan

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = call_signature(self.fn, args, kwargs)
        entry = self.cache.get(key)
        if entry is None:
            entry = self.cache[key] = self._build(args, kwargs)
        self.last = entry
        if self.averaging is not None:
            return self.averaging.run(self.fn, args, kwargs)
        return entry.executor(*entry.program.flat_inputs(args, kwargs))

    def optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module | None = None, *, outer_lr: float | None = None
    ) -> Strategy:
        """With an averaging ``sync``: the :mod:`runtime.averaging` strategy of the plan's record around
        ``model`` (default: the compiled module) and ``optimizer`` over its parameters; the loop calls its
        ``step()`` instead of ``optimizer.step()``, and ``finish()`` at the end. ``outer_lr``: DiLoCo's
        outer rate (default 0.7). Refused for any other sync (the one-process replicas share ``model``'s
        parameters: step ``optimizer`` itself)."""
        if self.averaging is None:
            raise ConfigurationError(
                f"compiled.optimizer(...) wraps the optimizer in an averaging strategy (sync one of "
                f"{', '.join(COMPILE_STRATEGIES)}), and this model was compiled with sync={self.sync!r}: call optimizer.step() itself"
            )
        if model is None:
            if not isinstance(self.fn, nn.Module):
                raise ConfigurationError(
                    "compiled.optimizer(optimizer, model): a compiled function does not say which module it trains; pass it"
                )
            model = self.fn
        return self.averaging.optimizer(optimizer, model, outer_lr)

    def share(self, value: Any) -> Any:
        """With an averaging ``sync``: this rank's rows of ``value`` (a tensor or nest of them), the share
        of the batch its replica runs; e.g. the targets of a compiled module's outputs."""
        if self.averaging is None:
            raise ConfigurationError(f"compiled.share(...) is this rank's share of a batch under an averaging sync, not sync={self.sync!r}")
        return self.averaging.share(value)

    def _build(self, args: tuple, kwargs: dict[str, Any]) -> CompiledEntry:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        seconds: dict[str, float] = {}
        with self.console.status(f"graphc: tracing {name} ...") as status:
            start = time.perf_counter()
            program = trace(self.fn, args, granularity=self.granularity, name=name, example_kwargs=kwargs)
            self.traces += 1
            seconds["trace"] = time.perf_counter() - start
            self.console.log(f"traced {name}: {len(program.graph)} nodes in {seconds['trace']:.1f} s")
            cost_model = self._cost_model(program, args, kwargs, status)
            start = time.perf_counter()
            mode = "training" if any(training_flags(self.fn, args)) else "inference"
            plan, how = self._plan(program, mode, status, cost_model)
            seconds["solve"] = time.perf_counter() - start
            replicated = [", ".join(st.devices) for st in plan.stages if len(st.devices) > 1]
            synchronised = describe_sync(plan.sync)
            if self.averaging is not None:
                self.averaging.check_plan(plan)
                synchronised = f"{self.averaging.name} (this rank: replica on {self.averaging.device})"
            replicas = f", replicas [{'; '.join(replicated)}] synchronised by {synchronised}" if replicated else ""
            self.console.log(
                f"{self._describe(plan, how)}: {len(plan.devices_used())} device(s){replicas}, predicted step "
                f"{plan.predicted_step_ms:.2f} ms, {seconds['solve']:.1f} s"
            )
            if self.averaging is not None:
                return CompiledEntry(program, plan, None, seconds, how)
            status.update("graphc: partitioning ...")
            start = time.perf_counter()
            runs = self._microbatch_program(args, kwargs, program, plan) if plan.microbatches > 1 else program
            executor = LocalExecutor(partition(runs, plan, program.graph))
            seconds["partition"] = time.perf_counter() - start
        return CompiledEntry(program, plan, executor, seconds, how)

    def _cost_model(self, program: TracedProgram, args: tuple, kwargs: dict[str, Any], status: Any) -> CostModel | None:
        """With ``calibrate``: the cost model of ``program`` calibrated on this machine (through the
        cache), whose measured cluster becomes :attr:`cluster`. Else None (the cluster's own figures),
        and on the ``local`` cluster of CPU workers a warning, once, that they are assumptions."""
        if not self.calibrate:
            if not self.cache and _cpu_workers(self.cluster):
                self.console.log(
                    "[yellow]warning: the prediction uses the `local` preset's uncalibrated CPU figures and may be far "
                    "off; pass calibrate=True to graphc.compile to measure this machine first[/yellow]"
                )
            return None
        status.update("graphc: calibrating the local cluster on this machine ...")
        found = calibrate(self.fn, args, example_kwargs=kwargs, program=program, workers=len(self.cluster.devices),
                          console=self.console)  # fmt: skip
        self.cluster = found.cluster
        return found.cost_model

    def _plan(self, program: TracedProgram, mode: str, status: Any, cost_model: CostModel | None) -> tuple[Plan, str]:
        """The plan for ``program`` in ``mode`` (``"inference"`` when every module is in eval mode: the
        prediction is then of the forward alone) with ``cost_model`` (None: the cluster's figures): an
        earlier plan's placement when it applies (another batch size of the same program), else a search,
        with ``time_limit_s`` the first time and ``reshape_time_limit_s`` after."""
        earlier = self._earlier_plan(program, mode)
        if earlier is not None:
            status.update(f"graphc: re-simulating the placement of {earlier.solver}'s plan at the new shape ...")
            try:
                return self._reuse(earlier, program, mode, cost_model), "reused"
            except PlacementNotReusable as exc:
                self.console.log(f"the earlier placement does not apply ({exc}); searching again")
        limit = self.time_limit_s if not self.cache else min(self.time_limit_s, self.reshape_time_limit_s)
        status.update(f"graphc: placing on {self.cluster.name} with {self.solver} (at most {limit:g} s) ...")
        self.searches += 1
        return self._solve(program, mode, limit, cost_model), "searched"

    def _earlier_plan(self, program: TracedProgram, mode: str) -> Plan | None:
        """The most recent plan in ``mode`` made for a program with the same nodes as ``program``."""
        nodes = set(program.graph.node_names())
        earlier = (e.plan for e in reversed(self.cache.values()) if e.plan.mode == mode and set(e.plan.assignment) == nodes)
        return next(earlier, None)

    def _describe(self, plan: Plan, how: str) -> str:
        if how == "searched":
            return f"placed on {self.cluster.name} by {plan.solver}"
        source = plan.settings["reused_from"]
        return f"reused the placement {plan.solver} found for batch {source['batch_size']} (no search)"

    def _reuse(self, earlier: Plan, program: TracedProgram, mode: str, cost_model: CostModel | None) -> Plan:
        """``earlier``'s placement at ``program``'s shape; a plan with replicated stages is not reused
        (:func:`reuse_placement` keeps neither its sync nor a microbatch per replica)."""
        replicated = [s.devices for s in earlier.stages if len(s.devices) > 1]
        if replicated:
            raise PlacementNotReusable(f"it replicates stages on {replicated}, which a reused placement does not keep")
        problem = make_problem(program.graph, self.cluster, objective=self.objective, constraints=self.constraints,
                               cost_model=cost_model, mode=mode, time_limit_s=self.reshape_time_limit_s, seed=self.seed)  # fmt: skip
        return reuse_placement(earlier, problem)

    def _solve(self, program: TracedProgram, mode: str, time_limit_s: float, cost_model: CostModel | None) -> Plan:
        """A searched plan for ``program``, in the layouts ``parallel`` allows for the throughput objective."""
        gradient_sync = None if self.averaging is not None else self.sync  # its plan prices an all-reduce
        layout = {"parallel": self.parallel, "sync": gradient_sync, "servers": self.servers} if self.objective == "throughput" else {}
        return solve(program.graph, self.cluster, objective=self.objective, constraints=self.constraints, mode=mode,
                     time_limit_s=time_limit_s, seed=self.seed, solver=self.solver, cost_model=cost_model, **layout)  # fmt: skip

    def _microbatch_program(
        self, args: tuple, kwargs: dict[str, Any], program: TracedProgram, plan: Plan
    ) -> TracedProgram:
        """``fn`` traced on one of the plan's microbatches (what a pipelined plan runs, microbatch after
        microbatch); refused when an output has no batch dimension to put the microbatches back along."""
        scalars = [n for n in output_shapes(program) if len(n) == 0]
        if scalars:
            raise ConfigurationError(
                f"the pipelined plan splits the batch into {plan.microbatches} microbatches, but {program.graph.name!r} "
                "returns a scalar (a loss?) whose whole-batch value cannot be put together from microbatches: "
                "compile the model (outputs per sample) and compute the loss on its outputs, or use objective='latency'"
            )
        first_args, first_kwargs = split_batch((args, kwargs), plan.microbatches)[0]
        return trace(self.fn, first_args, granularity=self.granularity, name=program.graph.name,
                     example_kwargs=first_kwargs)  # fmt: skip


def check_layout(objective: str, parallel: str, sync: str | AveragingSync | None, servers: Sequence[str] | None) -> None:
    """Refuse, before anything is traced, a ``parallel``/``sync`` that :func:`placement.solve` does not
    know (nor an averaging strategy), and any layout option with an objective other than throughput."""
    if parallel not in PARALLEL:
        raise ConfigurationError(f"compile(parallel={parallel!r}): expected one of {', '.join(PARALLEL)}")
    if sync is not None and sync not in SYNCS and averaging_sync_of(sync) is None:
        raise ConfigurationError(
            f"compile(sync={sync!r}): expected one of {', '.join((*SYNCS, *COMPILE_STRATEGIES))}, an averaging record "
            "(placement.sync.ElasticAveragingSync, LocalSGDSync), or None"
        )
    given = [f"{k}={v!r}" for k, v, default in (("parallel", parallel, "pipeline"), ("sync", sync, None),
                                                ("servers", servers, None)) if v != default]  # fmt: skip
    if given and objective != "throughput":
        raise ConfigurationError(
            f"compile({', '.join(given)}) plans replicas for objective='throughput', not objective={objective!r}: "
            "pass objective='throughput'"
        )


def _cpu_workers(cluster: Cluster) -> bool:
    """``cluster`` is the ``local`` preset of CPU worker processes (no GPU here): its figures are
    assumptions that :func:`graphc.app.calibrate.calibrate` can measure."""
    return cluster.name == "local" and all(d.kind == "cpu" for d in cluster.devices)


def output_shapes(program: TracedProgram) -> list[tuple[int, ...]]:
    """The shapes of the traced program's tensor outputs, from the fx graph's recorded values."""
    out = next(n for n in program.graph_module.graph.nodes if n.op == "output")
    leaves = [a for a in pytree.tree_leaves(out.args) if isinstance(a, torch.fx.Node) and "val" in a.meta]
    return [tuple(a.meta["val"].shape) for a in leaves if isinstance(a.meta["val"], torch.Tensor)]


@renamed_keywords(time_limit="time_limit_s", reshape_time_limit="reshape_time_limit_s")
def compile(
    fn: nn.Module | Callable | None = None, **options: Any
) -> CompiledModel | Callable[[nn.Module | Callable], CompiledModel]:
    """Compile a module or a function of modules and tensors; usable as ``@compile``, ``@compile(...)``
    or ``compile(module, ...)``. Options: see :class:`CompiledModel`."""
    if fn is None:
        return lambda f: CompiledModel(f, **options)
    return CompiledModel(fn, **options)
