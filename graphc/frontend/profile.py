"""The profiler: measure each cost node's forward and backward time on a real torch device.

This fills the profiled source of :class:`placement.cost_model.CostModel`: for every node of a traced
program, the node's fx ops are run in isolation on real tensors of the traced shapes, on the device
asked for (``"cpu"``, ``"cuda:0"``), with the number of threads a device of the cluster has (one for the
CPU worker processes of the ``local`` preset). The forward is timed, then the node's own backward
(gradients of its inputs and parameters that training needs, as the annotation counts them). Each is
the median of ``repeats`` runs after ``warmup`` runs; CUDA work is synchronised before the clock is read.

Results are keyed by :meth:`graphc.ir.graph.NodeData.profile_key` (op, shapes, FLOPs and bytes: nodes that
compute the same thing on the same shapes share one measurement) and by device kind, in a
:class:`placement.cost_model.ProfiledTimes` table that can be saved as a JSON cache: a node already in
the table is not measured again.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_leaves, tree_map

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


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(run: Callable[[], Any], device: torch.device, repeats: int, warmup: int, setup: Callable[[], Any] | None = None) -> float:
    """Median wall time of ``run()`` in ms; ``setup()``, when given, runs untimed before each run and
    its result is passed to ``run``."""
    samples = []
    for i in range(warmup + repeats):
        state = setup() if setup else None
        _synchronize(device)
        start = time.perf_counter()
        run(state) if setup else run()
        _synchronize(device)
        if i >= warmup:
            samples.append(1e3 * (time.perf_counter() - start))
    return statistics.median(samples)


class _GroupRunner:
    """Runs the fx nodes of one cost node on leaf copies of its inputs, as a unit."""

    def __init__(self, gm: fx.GraphModule, fx_nodes: list[fx.Node], env: dict[str, Any]) -> None:
        self.gm = gm
        self.nodes = fx_nodes
        members = {n.name for n in fx_nodes}
        self.external = [
            a for a in dict.fromkeys(x for n in fx_nodes for x in n.all_input_nodes) if a.name not in members
        ]
        self.env = env
        self.outputs = [n for n in fx_nodes if any(u.name not in members for u in n.users)] or fx_nodes[-1:]
        self.steps = [_compile_step(gm, n) for n in fx_nodes]

    def leaves(self) -> dict[str, Any]:
        """Fresh leaf copies of the external inputs (parameters stay themselves)."""
        fresh = {}
        for a in self.external:
            value = self.env[a.name]
            if isinstance(value, torch.Tensor) and a.op != "get_attr":
                value = value.detach().requires_grad_(value.requires_grad)
            fresh[a.name] = value
        return fresh

    def forward(self, inputs: dict[str, Any]) -> list[torch.Tensor]:
        local = dict(inputs)
        for node, call, args, kwargs in self.steps:
            local[node] = call(*[local[a] if type(a) is _Ref else a for a in args], **{k: local[v] if type(v) is _Ref else v for k, v in kwargs.items()})
        return [t for n in self.outputs for t in _tensors(local[n.name])]


class _Ref(str):
    """The name of an fx node whose value an argument takes (top-level arguments only)."""


def _compile_step(gm: fx.GraphModule, node: fx.Node) -> tuple[str, Callable, tuple, dict]:
    """(name, callable, args, kwargs) with fx nodes replaced by :class:`_Ref`; nested containers of
    nodes (a list of tensors) are resolved through a small closure."""

    def ref(a: Any) -> Any:
        return _Ref(a.name) if isinstance(a, fx.Node) else a

    flat = all(not isinstance(a, (list, tuple, dict)) for a in list(node.args) + list(node.kwargs.values()))
    if node.op == "call_function":
        fn = node.target
    elif node.op == "call_method":
        fn = lambda self_, *a, _m=node.target, **k: getattr(self_, _m)(*a, **k)  # noqa: E731
    else:
        fn = gm.get_submodule(node.target)
    if flat:
        return node.name, fn, tuple(ref(a) for a in node.args), {k: ref(v) for k, v in node.kwargs.items()}
    names = [n.name for n in node.all_input_nodes]

    def nested(*values: Any, _node: fx.Node = node, _fn: Callable = fn) -> Any:
        env = dict(zip(names, values))
        args = tree_map(lambda a: env[a.name] if isinstance(a, fx.Node) else a, _node.args)
        kwargs = tree_map(lambda a: env[a.name] if isinstance(a, fx.Node) else a, _node.kwargs)
        return _fn(*args, **kwargs)

    return node.name, nested, tuple(_Ref(n) for n in names), {}


def _call(gm: fx.GraphModule, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return gm.get_submodule(node.target)(*args, **kwargs)


def _real_env(gm: fx.GraphModule, inputs: tuple) -> dict[str, Any]:
    """Run the program once on real inputs, keeping every fx node's value, detached; a value keeps
    ``requires_grad`` when training needs its gradient (it depends on a parameter)."""
    env: dict[str, Any] = {}
    placeholders = iter(inputs)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node.name] = next(placeholders)
        elif node.op == "get_attr":
            env[node.name] = _attr(gm, node.target)
        elif node.op in ("call_function", "call_method", "call_module"):
            args = tree_map(lambda a: env[a.name] if isinstance(a, fx.Node) else a, node.args)
            kwargs = tree_map(lambda a: env[a.name] if isinstance(a, fx.Node) else a, node.kwargs)
            value = _call(gm, node, args, kwargs)
            env[node.name] = tree_map(
                lambda v: v.detach().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v, value
            )
    return env


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
        env = _real_env(gm, inputs)
        engine_ms = _autograd_call_overhead_ms(device, settings)
        by_name = {n.name: n for n in gm.graph.nodes}
        for node in nodes if nodes is not None else program.graph.nodes():
            if node.op == "input" or not node.fx_nodes:
                continue
            runner = _GroupRunner(gm, [by_name[f] for f in node.fx_nodes], env)
            yield _time_group(node, runner, device, settings, engine_ms)
    finally:
        torch.set_num_threads(threads)


def _time_group(
    node: NodeData, runner: _GroupRunner, device: torch.device, settings: ProfileSettings, engine_ms: float
) -> NodeTiming:
    fwd_ms = _median_ms(runner.forward, device, settings.repeats, settings.warmup, setup=runner.leaves)

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
        measured = _median_ms(backward, device, settings.repeats, settings.warmup, setup=setup)
        bwd_ms = max(measured - engine_ms, 0.0)
    return NodeTiming(node.name, node.profile_key(), fwd_ms, bwd_ms)


def _autograd_call_overhead_ms(device: torch.device, settings: ProfileSettings) -> float:
    """The fixed cost of one ``torch.autograd.grad`` call (starting the engine), which a node's isolated
    backward pays but a whole model's backward pays once: measured on a one-element graph, subtracted."""

    def setup() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.ones(1, device=device, requires_grad=True)
        return x, x * 1.0

    return _median_ms(
        lambda state: torch.autograd.grad(state[1], state[0]), device, 4 * settings.repeats, settings.warmup, setup=setup
    )


def time_in_place(program: TracedProgram, inputs: tuple, repeats: int = 5) -> dict[str, float]:
    """Forward time of every cost node measured inside whole forward passes of the program (median over
    ``repeats`` passes after one warm-up), on the current device and threads: the reference the isolated
    measurements of :func:`time_nodes` are checked against."""
    gm = program.graph_module
    owner = {f: n.name for n in program.graph.nodes() for f in n.fx_nodes}
    steps = [(node, _compile_step(gm, node)) for node in gm.graph.nodes if node.name in owner and node.op.startswith("call")]
    start_env: dict[str, Any] = {n.name: _attr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    samples: dict[str, list[float]] = {}
    for run in range(repeats + 1):
        env = dict(start_env, **dict(zip(placeholders, inputs)))
        per_node: dict[str, float] = {}
        for node, (name, call, args, kwargs) in steps:
            resolved = [env[a] if type(a) is _Ref else a for a in args]
            named = {k: env[v] if type(v) is _Ref else v for k, v in kwargs.items()}
            start = time.perf_counter()
            env[name] = call(*resolved, **named)
            elapsed = 1e3 * (time.perf_counter() - start)
            per_node[owner[name]] = per_node.get(owner[name], 0.0) + elapsed
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
