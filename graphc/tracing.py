"""``graphc.trace``: an imperative PyTorch model to an executable fx graph plus its cost graph.

Tracing tries ``torch.export`` (non-strict) first: it captures ATen ops, records for every op the stack
of modules it ran in (``nn_module_stack``, one entry per call, so an unrolled loop calling the same
cell twice gives two nodes), and works on models whose parameters live on the ``meta`` device. If
export fails, ``torch.fx.symbolic_trace`` is tried; if both fail, a :class:`~graphc.errors.TraceError`
names the line of the model that could not be traced, the reason, and what to do.

Granularity:

* ``"op"`` — one cost node per ATen op (``getitem`` nodes that unpack a multi-output op stay with it).
  Under the fx fallback the unit is an fx node, where ``torch.nn`` modules are already single nodes.
* ``"module"`` — one cost node per call of a leaf module (:mod:`graphc.leaf`: the ``torch.nn``
  modules, and blocks marked with ``@graphc.leaf_module`` or passed as ``leaf_modules``), as placement
  papers count layers; ops outside any leaf module stay op nodes.

The executable ``GraphModule`` is always the op-level program; each cost node lists the fx nodes it
stands for (``NodeData.fx_nodes``), which is how a placement of cost nodes becomes a placement of ops.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import operator
import os
import sys
import sysconfig
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn

from graphc.annotate import build_cost_graph, measure_fx_nodes
from graphc.errors import TraceError
from graphc.graph import Graph
from graphc.leaf import is_marked_leaf, is_torch_nn_leaf

Granularity = Literal["op", "module"]
GRANULARITIES = ("op", "module")


@dataclass
class TracedProgram:
    """A traced model: the executable fx program and its cost graph.

    Attributes:
        graph_module: the op-level ``torch.fx.GraphModule``; it holds the model's parameters.
        graph: the cost graph at the requested granularity.
        method: ``"export"`` or ``"fx"``: which tracer succeeded.
        granularity: ``"op"`` or ``"module"``.
        module_positions: for a traced plain function, the positions of its module arguments (they
            are part of the program, so calls pass only the tensors).
    """

    graph_module: fx.GraphModule
    graph: Graph
    method: str
    granularity: str
    module_positions: tuple[int, ...] = ()

    def __call__(self, *args: Any) -> Any:
        """Run the traced program with the same arguments the model or function takes."""
        tensors = [a for i, a in enumerate(args) if i not in self.module_positions]
        return self.graph_module(*tensors)


class _FunctionAsModule(nn.Module):
    """Wraps ``fn(module..., tensor...)`` so the modules become submodules and the tensors inputs."""

    def __init__(self, fn: Callable, args: tuple, module_positions: tuple[int, ...]) -> None:
        super().__init__()
        self.fn = fn
        self.arity = len(args)
        self.module_positions = module_positions
        names = _argument_names(fn, len(args))
        self.module_names = [names[i] for i in module_positions]
        for i, name in zip(module_positions, self.module_names):
            self.add_module(name, args[i])

    def forward(self, *tensors: Any) -> Any:
        tensor_iter = iter(tensors)
        modules = iter(self.module_names)
        args = [
            getattr(self, next(modules)) if i in self.module_positions else next(tensor_iter)
            for i in range(self.arity)
        ]
        return self.fn(*args)


def _argument_names(fn: Callable, count: int) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) and params[i].isidentifier() else f"arg{i}" for i in range(count)]


def trace(
    model_or_fn: nn.Module | Callable,
    example_inputs: Any,
    granularity: Granularity = "op",
    leaf_modules: Iterable[type[nn.Module]] = (),
    name: str | None = None,
) -> TracedProgram:
    """Trace a model (or a function of modules and tensors) into an fx program and a cost graph.

    Args:
        model_or_fn: an ``nn.Module``, or a plain function whose arguments are modules and tensors.
        example_inputs: a tensor or a tuple of the positional arguments (fake, meta or real tensors;
            only their shapes and dtypes are used for the costs).
        granularity: ``"op"`` (ATen ops) or ``"module"`` (leaf modules as single nodes).
        leaf_modules: extra module classes to treat as leaves at module granularity.
        name: the cost graph's name (default: the class or function name).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    for i, a in enumerate(args):
        if not isinstance(a, (torch.Tensor, nn.Module)):
            raise TypeError(
                f"example input {i} is a {type(a).__name__}; graphc traces tensors (and, for a function, "
                "modules): pass tensors, and make other values constants of the model"
            )
    module, module_positions = _as_module(model_or_fn, args)
    tensors = tuple(a for i, a in enumerate(args) if i not in module_positions)
    name = name or getattr(model_or_fn, "__name__", type(model_or_fn).__name__)
    extra_leaves = tuple(leaf_modules)

    def is_leaf(cls: type) -> bool:
        return is_torch_nn_leaf(cls) or is_marked_leaf(cls) or issubclass(cls, extra_leaves)

    gm, method = _capture(module, tensors, name, is_leaf if granularity == "module" else None)
    costs, _ = measure_fx_nodes(gm, tensors)
    if method == "export":
        group_of, group_info = _group_export(gm, module, granularity, is_leaf)
    else:
        group_of, group_info = _group_fx(gm)
    meta = {
        "source": "trace",
        "method": method,
        "granularity": granularity,
        "batch_size": int(tensors[0].shape[0]) if tensors and tensors[0].dim() > 0 else 1,
        "input_shapes": [list(t.shape) for t in tensors],
        "num_params": sum(p.numel() for p in module.parameters()),
    }
    graph = build_cost_graph(gm, costs, group_of, group_info, name, meta)
    _require_acyclic(graph, name)
    return TracedProgram(gm, graph, method, granularity, module_positions)


def _as_module(model_or_fn: Any, args: tuple) -> tuple[nn.Module, tuple[int, ...]]:
    if isinstance(model_or_fn, nn.Module):
        if any(isinstance(a, nn.Module) for a in args):
            raise TypeError("example inputs of an nn.Module are tensors; pass the module only as the model")
        return model_or_fn, ()
    if not callable(model_or_fn):
        raise TypeError(f"trace takes an nn.Module or a function, got {type(model_or_fn).__name__}")
    positions = tuple(i for i, a in enumerate(args) if isinstance(a, nn.Module))
    return _FunctionAsModule(model_or_fn, args, positions), positions


# -- capture ------------------------------------------------------------------------------------


def _capture(
    module: nn.Module, tensors: tuple, name: str, fx_leaf: Callable[[type], bool] | None
) -> tuple[fx.GraphModule, str]:
    """torch.export (non-strict) first, torch.fx as the fallback; a TraceError if both fail."""
    try:
        with _quiet_torch():
            exported = torch.export.export(module, tensors, strict=False)
            return exported.module(), "export"
    except Exception as export_error:
        try:
            return _fx_trace(module, fx_leaf), "fx"
        except Exception as fx_error:
            raise _trace_error(name, export_error, fx_error) from export_error


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch's log lines, warnings and prints while exporting: failures reach the user as a TraceError."""
    names = ["torch"] + [n for n in logging.root.manager.loggerDict if n.startswith("torch.")]
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        # export prints the partial graph of a failed trace to stderr; the TraceError says what matters
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _LeafTracer(fx.Tracer):
    def __init__(self, is_leaf: Callable[[type], bool] | None) -> None:
        super().__init__()
        self.is_leaf = is_leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.is_leaf is not None and self.is_leaf(type(m)):
            return True
        return super().is_leaf_module(m, qualname)


def _fx_trace(module: nn.Module, is_leaf: Callable[[type], bool] | None) -> fx.GraphModule:
    tracer = _LeafTracer(is_leaf)
    graph = tracer.trace(module)
    return fx.GraphModule(tracer.root, graph, type(module).__name__)


_DATA_DEPENDENT_MARKERS = (
    "data-dependent",
    "data dependent",
    "GuardOnDataDependentSymNode",
    "cannot be used as inputs to control flow",
    "DataDependentOutputException",
)


def _trace_error(name: str, export_error: BaseException, fx_error: BaseException) -> TraceError:
    """A TraceError naming the model's source line, the reason, and what to do."""
    frame = _user_frame(export_error) or _user_frame(fx_error)
    messages = f"{type(export_error).__name__}: {export_error}\n{type(fx_error).__name__}: {fx_error}"
    if any(marker in messages for marker in _DATA_DEPENDENT_MARKERS):
        reason = "data-dependent control flow: Python decides on the value of a tensor, which tracing cannot see"
        hint = (
            "compute both branches and select with torch.where, use torch.cond, or move the decision "
            "outside the traced model"
        )
    else:
        reason = f"an operation tracing does not support ({_first_line(export_error)})"
        hint = "express the line with torch operations on tensors (no .item(), .tolist(), numpy or I/O)"
    where = f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}" if frame else "(no source line found)"
    return TraceError(
        f"cannot trace {name!r}: {reason}\n"
        f"  at {where}\n"
        f"  what to do: {hint}\n"
        f"  torch.export said: {_first_line(export_error)}\n"
        f"  torch.fx said: {_first_line(fx_error)}"
    )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


_LIBRARY_DIRS = tuple(
    os.path.dirname(p) + os.sep
    for p in (torch.__file__, sys.modules["graphc"].__file__)
) + (sysconfig.get_paths()["stdlib"] + os.sep,)


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the exception chain that lies in the user's code (not torch, graphc, stdlib)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for error in chain:
        frames = [
            f
            for f in traceback.extract_tb(error.__traceback__)
            if not f.filename.startswith(_LIBRARY_DIRS) and not f.filename.startswith("<")
        ]
        if frames:
            return frames[-1]
    return None


# -- grouping fx nodes into cost nodes ------------------------------------------------------------


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return str(node.target) if isinstance(node.target, torch._ops.OpOverload) else getattr(
        node.target, "__name__", str(node.target)
    )


def _is_skipped(node: fx.Node) -> bool:
    """fx nodes that are not computation: parameters, the output, export's input-guard call."""
    return node.op in ("get_attr", "output") or (node.op == "call_module" and node.target == "_guards_fn")


def _group_export(
    gm: fx.GraphModule, model: nn.Module, granularity: str, is_leaf: Callable[[type], bool]
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    group_of: dict[str, str] = {}
    group_info: dict[str, tuple[str, str]] = {}
    module_groups: dict[str, str] = {}  # nn_module_stack key of a leaf call -> cost node name
    state_updates: dict[str, list[str]] = {}  # module path -> state updates waiting for its next op
    for node in gm.graph.nodes:
        if _is_skipped(node):
            continue
        if node.op == "placeholder":
            group_of[node.name] = _new_group(group_info, node.name, "input", "")
            continue
        if node.target is operator.getitem and node.args[0].name in group_of:
            group_of[node.name] = group_of[node.args[0].name]
            continue
        stack = list(node.meta.get("nn_module_stack", {}).items())
        innermost = stack[-1][1][0] if stack else ""
        if _is_state_update(node):
            state_updates.setdefault(innermost, []).append(node.name)
            continue
        leaf = _outermost_leaf(stack, model, is_leaf) if granularity == "module" else None
        if leaf is None:
            group_of[node.name] = _new_group(group_info, node.name, _op_name(node, gm), innermost)
            _attach(state_updates.pop(innermost, []), group_of[node.name], group_of)
            continue
        key, path, cls_name = leaf
        if key not in module_groups:
            call_suffix = key[key.rfind("@"):] if "@" in key else ""
            module_groups[key] = _new_group(group_info, (path or "root") + call_suffix, cls_name, path)
        group_of[node.name] = module_groups[key]
        _attach(state_updates.pop(innermost, []), group_of[node.name], group_of)
    for module_path, names in state_updates.items():  # updates no later op of their module follows
        for name in names:
            group_of[name] = _new_group(group_info, name, _op_name(_node_named(gm, name), gm), module_path)
    return group_of, group_info


def _is_state_update(node: fx.Node) -> bool:
    """An in-place update of module state (batch norm's ``num_batches_tracked += 1``): it reads only
    parameters or buffers and nothing reads its result. It joins the next op of its module, the op
    whose device holds that state."""
    return (
        node.op == "call_function"
        and not node.users
        and all(arg.op == "get_attr" for arg in node.all_input_nodes)
    )


def _attach(names: list[str], group: str, group_of: dict[str, str]) -> None:
    for name in names:
        group_of[name] = group


def _node_named(gm: fx.GraphModule, name: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)


def _outermost_leaf(
    stack: list[tuple[str, tuple[str, Any]]], model: nn.Module, is_leaf: Callable[[type], bool]
) -> tuple[str, str, str] | None:
    for key, (path, _) in stack:
        try:
            cls = type(model.get_submodule(path))  # path "" is the model itself
        except AttributeError:
            continue
        if is_leaf(cls):
            return key, path, cls.__name__
    return None


def _group_fx(gm: fx.GraphModule) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    group_of: dict[str, str] = {}
    group_info: dict[str, tuple[str, str]] = {}
    for node in gm.graph.nodes:
        if _is_skipped(node):
            continue
        if node.op == "call_function" and node.target is operator.getitem and node.args[0].name in group_of:
            group_of[node.name] = group_of[node.args[0].name]
            continue
        op = "input" if node.op == "placeholder" else _op_name(node, gm)
        module = node.target if node.op == "call_module" else ""
        group_of[node.name] = _new_group(group_info, node.name, op, module)
    return group_of, group_info


def _new_group(group_info: dict[str, tuple[str, str]], wanted: str, op: str, module: str) -> str:
    name, n = wanted, 1
    while name in group_info:
        n += 1
        name = f"{wanted}#{n}"
    group_info[name] = (op, module)
    return name


def _require_acyclic(graph: Graph, name: str) -> None:
    g = graph.to_networkx()
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        raise TraceError(
            f"cannot build the module-level graph of {name!r}: grouping ops by leaf module made a cycle "
            f"through {[u for u, _ in cycle]} (a leaf module's output feeds back into it); trace with "
            "granularity='op' or do not mark that module as a leaf"
        )
