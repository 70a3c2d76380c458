"""The profiler: measure each cost node's forward and backward time on a real torch device.

This fills the profiled source of :class:`placement.cost_model.CostModel`: for every node of a traced
program, the node's fx ops are run in isolation on real tensors of the traced shapes, on the device
asked for (``"cpu"``, ``"cuda:0"``), with the number of threads a device of the cluster has (one for the
CPU worker processes of the ``local`` preset), by the frontend's interpreter
(:mod:`graphc.frontend.interpreter`). The forward is timed (the calls of its ops, then the device
finishing their work; not the interpreter's bookkeeping between ops), then the node's own backward
(gradients of its inputs and parameters that training needs, as the annotation counts them). Each is
the median of ``repeats`` runs after ``warmup`` runs; CUDA work is synchronised before the clock is read.

Results are keyed by :meth:`graphc.ir.graph.NodeData.profile_key` (op, shapes, FLOPs and bytes: nodes that
compute the same thing on the same shapes share one measurement) and by device kind, in a
:class:`graphc.ir.profiled.ProfiledTimes` table that can be saved as a JSON cache: a node already in
the table is not measured again.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from graphc.frontend.interpreter import CALLS, NodeInterpreter, leaf_copy, tensors_in
from graphc.frontend.tracing import TracedProgram
from graphc.ir.graph import NodeData
from graphc.ir.profiled import ProfiledTimes


@dataclass
class ProfileSettings:
    """How ops are timed: on which torch device, with how many threads, how many runs."""

    device: str = "cpu"
    device_kind: str = "cpu"
    threads: int = 1
    repeats: int = 5
    warmup: int = 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(
    measure: Callable[[Any], float], repeats: int, warmup: int, setup: Callable[[], Any] | None = None
) -> float:
    """Median of ``measure(state)`` (a time in ms) over ``repeats`` runs after ``warmup`` runs; ``setup()``,
    when given, runs before each run and its result is the ``state`` (else None)."""
    samples = [measure(setup() if setup else None) for _ in range(warmup + repeats)]
    return statistics.median(samples[warmup:])


def _wall_ms(run: Callable[[Any], Any], device: torch.device) -> Callable[[Any], float]:
    """A measure of ``run(state)``'s wall time in ms, with the device's work finished on both ends."""

    def measure(state: Any) -> float:
        _synchronize(device)
        start = time.perf_counter()
        run(state)
        _synchronize(device)
        return 1e3 * (time.perf_counter() - start)

    return measure


class _Timer(NodeInterpreter):
    """Runs a program on real values and times each op's own call (:meth:`call`) into
    :attr:`elapsed_ms`, by fx node: what the op costs, not the interpreter's bookkeeping between ops."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.elapsed_ms: dict[fx.Node, float] = {}

    def call(self, n: fx.Node, args: tuple, kwargs: dict) -> Any:
        start = time.perf_counter()
        value = super().call(n, args, kwargs)
        self.elapsed_ms[n] = self.elapsed_ms.get(n, 0.0) + 1e3 * (time.perf_counter() - start)
        return value


class _GroupRunner:
    """Runs the fx nodes of one cost node on leaf copies of its inputs, as a unit, through ``timer``."""

    def __init__(self, timer: _Timer, fx_nodes: list[fx.Node], env: dict[fx.Node, Any]) -> None:
        self.timer = timer
        self.nodes = fx_nodes
        members = set(fx_nodes)
        self.external = [a for a in dict.fromkeys(x for n in fx_nodes for x in n.all_input_nodes) if a not in members]
        self.env = env
        self.outputs = [n for n in fx_nodes if any(u not in members for u in n.users)] or fx_nodes[-1:]

    def leaves(self) -> dict[fx.Node, Any]:
        """Fresh leaf copies of the external inputs (parameters stay themselves)."""
        return {a: self.env[a] if a.op == "get_attr" else leaf_copy(self.env[a]) for a in self.external}

    def forward(self, inputs: dict[fx.Node, Any]) -> list[torch.Tensor]:
        """The group's output tensors, computed from ``inputs`` (values of its external inputs)."""
        self.timer.env = dict(inputs)
        for node in self.nodes:
            self.timer.env[node] = self.timer.run_node(node)
        return [t for n in self.outputs for t in tensors_in(self.timer.env[n])]

    def forward_ms(self, inputs: dict[fx.Node, Any], device: torch.device) -> float:
        """Time of one forward in ms: the group's op calls, then the device finishing their work."""
        self.timer.elapsed_ms = {}
        _synchronize(device)
        self.forward(inputs)
        start = time.perf_counter()
        _synchronize(device)
        return sum(self.timer.elapsed_ms.values()) + 1e3 * (time.perf_counter() - start)


def _private_copy(gm: fx.GraphModule, device: torch.device) -> fx.GraphModule:
    """The same program over copies of its parameters and buffers on ``device``, so that running it
    (batch-norm statistics are updated in place) leaves the user's model as it was. (``deepcopy`` of an
    exported program fails on the fake tensors kept in its node metadata.)"""
    attrs: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = _attr(gm, node.target)
            if isinstance(value, torch.Tensor):
                clone = value.detach().to(device, copy=True)
                value = nn.Parameter(clone, value.requires_grad) if isinstance(value, nn.Parameter) else clone
            attrs[node.target] = value
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            attrs[node.target] = copy.deepcopy(module).to(device) if any(True for _ in module.parameters()) else module
    return fx.GraphModule(attrs, gm.graph)


def _attr(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


@dataclass
class NodeTiming:
    """The measured times of one cost node."""

    node: str
    key: str
    fwd_ms: float
    bwd_ms: float


def time_nodes(
    program: TracedProgram, inputs: tuple, settings: ProfileSettings, nodes: list[NodeData] | None = None
) -> Iterator[NodeTiming]:
    """Measure cost nodes of ``program`` (default: all but inputs) in isolation (module docstring).

    ``inputs`` are real tensors of the traced shapes (they are moved to ``settings.device``). The
    program is copied first, so batch-norm statistics and parameters of the user's model stay as they were.
    """
    device = torch.device(settings.device)
    gm = _private_copy(program.graph_module, device)
    inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        values = NodeInterpreter(gm, isolate=True)
        values.run(*inputs)
        timer = _Timer(gm)
        engine_ms = _autograd_call_overhead_ms(device, settings)
        by_name = {n.name: n for n in gm.graph.nodes}
        for node in nodes if nodes is not None else program.graph.nodes():
            if node.op == "input" or not node.fx_nodes:
                continue
            runner = _GroupRunner(timer, [by_name[f] for f in node.fx_nodes], values.env)
            yield _time_group(node, runner, device, settings, engine_ms)
    finally:
        torch.set_num_threads(threads)


def _time_group(
    node: NodeData, runner: _GroupRunner, device: torch.device, settings: ProfileSettings, engine_ms: float
) -> NodeTiming:
    fwd_ms = _median_ms(
        lambda leaves: runner.forward_ms(leaves, device), settings.repeats, settings.warmup, setup=runner.leaves
    )

    def setup() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        leaves = runner.leaves()
        outputs = [o for o in runner.forward(leaves) if o.requires_grad]
        wrt = [v for v in leaves.values() if isinstance(v, torch.Tensor) and v.requires_grad]
        return outputs, wrt, [torch.ones_like(o) for o in outputs]

    def backward(state: tuple) -> None:
        outputs, wrt, grads = state
        torch.autograd.grad(outputs, wrt, grads, allow_unused=True)

    outputs, wrt, _ = setup()
    bwd_ms = 0.0
    if outputs and wrt:  # training runs this node's backward
        measured = _median_ms(_wall_ms(backward, device), settings.repeats, settings.warmup, setup=setup)
        bwd_ms = max(measured - engine_ms, 0.0)
    return NodeTiming(node.name, node.profile_key(), fwd_ms, bwd_ms)


def _autograd_call_overhead_ms(device: torch.device, settings: ProfileSettings) -> float:
    """The fixed cost of one ``torch.autograd.grad`` call (starting the engine), which a node's isolated
    backward pays but a whole model's backward pays once: measured on a one-element graph, subtracted."""

    def setup() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.ones(1, device=device, requires_grad=True)
        return x, x * 1.0

    return _median_ms(
        _wall_ms(lambda state: torch.autograd.grad(state[1], state[0]), device),
        4 * settings.repeats,
        settings.warmup,
        setup=setup,
    )


def time_in_place(program: TracedProgram, inputs: tuple, repeats: int = 5) -> dict[str, float]:
    """Forward time of every cost node measured inside whole forward passes of the program (median over
    ``repeats`` passes after one warm-up), on the current device and threads: the reference the isolated
    measurements of :func:`time_nodes` are checked against."""
    owner = {f: n.name for n in program.graph.nodes() for f in n.fx_nodes}
    timer = _Timer(program.graph_module)
    samples: dict[str, list[float]] = {}
    for run in range(repeats + 1):
        timer.elapsed_ms = {}
        timer.run(*inputs)
        per_node: dict[str, float] = {}
        for node, ms in timer.elapsed_ms.items():
            if node.name in owner and node.op in CALLS:
                per_node[owner[node.name]] = per_node.get(owner[node.name], 0.0) + ms
        if run:
            for cost_node, ms in per_node.items():
                samples.setdefault(cost_node, []).append(ms)
    return {name: statistics.median(ms) for name, ms in samples.items()}


def profile_program(
    program: TracedProgram,
    inputs: tuple,
    settings: ProfileSettings | None = None,
    table: ProfiledTimes | None = None,
) -> ProfiledTimes:
    """Profile every node of ``program`` not yet in ``table`` (a new table if None); returns the table."""
    settings = settings or ProfileSettings()
    table = table if table is not None else ProfiledTimes()
    todo = [n for n in program.graph.nodes() if table.get_key(n.profile_key(), settings.device_kind) is None]
    if not todo:
        return table
    for timing in time_nodes(program, inputs, settings, todo):
        table.add_key(timing.key, settings.device_kind, timing.fwd_ms, timing.bwd_ms)
    return table
