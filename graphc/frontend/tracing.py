"""``graphc.trace``: an imperative PyTorch model to an executable fx graph plus its cost graph.

Tracing tries ``torch.export`` (non-strict) first: it captures ATen ops, records for every op the stack
of modules it ran in (``nn_module_stack``, one entry per call, so an unrolled loop calling the same
cell twice gives two nodes), and works on models whose parameters live on the ``meta`` device. If
export fails, ``torch.fx.symbolic_trace`` is tried; if both fail, a :class:`~graphc.ir.errors.TraceError`
names the line of the model that could not be traced, the reason, and what to do.

Granularity:

* ``"op"`` — one cost node per ATen op (``getitem`` nodes that unpack a multi-output op stay with it).
  Under the fx fallback the unit is an fx node, where ``torch.nn`` modules are already single nodes.
* ``"module"`` — one cost node per call of a leaf module (:mod:`graphc.frontend.leaf`: the ``torch.nn``
  modules, and blocks marked with ``@graphc.leaf_module`` or passed as ``leaf_modules``), as placement
  papers count layers; ops outside any leaf module stay op nodes.

The executable ``GraphModule`` is always the op-level program; each cost node lists the fx nodes it
stands for (``NodeData.fx_nodes``), which is how a placement of cost nodes becomes a placement of ops.
It has no in-place op on an activation (:mod:`graphc.frontend.functionalize`: ``nn.ReLU(inplace=True)`` and
``x += y`` become out-of-place ops), and it takes the call's tensors positionally: a model called with
keywords (``model(input_ids=ids, attention_mask=mask, return_dict=False)``) is traced with
``example_kwargs``; its tensors become inputs, other values constants of the program, and
:meth:`TracedProgram.flat_inputs` maps a call of the model onto the program's inputs
(:class:`CallConvention`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import itertools
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
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.utils._pytree import tree_leaves, tree_structure

from graphc.frontend.annotate import build_cost_graph, measure_fx_nodes
from graphc.frontend.functionalize import assign_state, functionalize
from graphc.frontend.interpreter import is_input_guard
from graphc.frontend.leaf import is_marked_leaf, is_torch_nn_leaf
from graphc.ir.errors import ArgumentTypeError, ConfigurationError, TraceError
from graphc.ir.graph import Graph

Granularity = Literal["op", "module"]
GRANULARITIES = ("op", "module")


@dataclass(frozen=True)
class CallConvention:
    """How a call of the traced model or function maps onto the program's tensor inputs.

    Attributes:
        input_names: the tensor arguments, positional and keyword, in the order of the program's inputs.
        constants: keyword arguments that were not tensors (``return_dict=False``): their values are
            baked into the program.
        positional: the name each positional argument binds to, by position.
        modules: a traced function's module arguments: part of the program, a call passes them for form.
    """

    input_names: tuple[str, ...]
    constants: dict[str, Any]
    positional: tuple[str, ...]
    modules: tuple[str, ...] = ()

    def flat_inputs(self, args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The tensors of the call ``(*args, **kwargs)`` in the program's input order; a
        :class:`TraceError` when the call does not bind as the traced one did."""
        bound = self._bind(args, kwargs)
        known = {*self.input_names, *self.constants, *self.modules}
        missing = [n for n in self.input_names if n not in bound]
        unknown = [n for n in bound if n not in known]
        if missing or unknown:
            traced = [*self.input_names, *(f"{k}={v!r}" for k, v in self.constants.items())]
            wrong = ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"adds {', '.join(unknown)}"] if unknown else [])
            raise TraceError(
                f"the program was traced with argument(s) {', '.join(traced)}; this call {' and '.join(wrong)}: "
                "call it with the traced keywords, or trace it again"
            )
        for name, value in self.constants.items():
            if name in bound and not _same_constant(bound[name], value):
                raise TraceError(
                    f"argument {name!r} was traced as {value!r}, which the program bakes in; this call passes "
                    f"{bound[name]!r}: trace again with that value"
                )
        for name in self.input_names:
            if not isinstance(bound[name], torch.Tensor):
                raise TraceError(
                    f"argument {name!r} was traced as a tensor; this call passes a {type(bound[name]).__name__}"
                )
        return tuple(bound[n] for n in self.input_names)

    def _bind(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(args) > len(self.positional):
            raise TraceError(
                f"the program takes at most {len(self.positional)} positional argument(s) "
                f"({', '.join(self.positional)}), this call passes {len(args)}"
            )
        bound = dict(zip(self.positional, args))
        twice = sorted(set(bound) & set(kwargs))
        if twice:
            raise TraceError(f"argument(s) {', '.join(twice)} given both by position and by keyword")
        return {**bound, **kwargs}


def _same_constant(a: Any, b: Any) -> bool:
    """``a`` is the baked-in constant ``b`` (same type and equal, so ``1`` does not pass for ``True``)."""
    try:
        return a is b or (type(a) is type(b) and bool(a == b))
    except Exception:  # a value whose == is not a truth value: only identity counts
        return False


@dataclass
class TracedProgram:
    """A traced model: the executable fx program and its cost graph.

    Attributes:
        graph_module: the op-level ``torch.fx.GraphModule``; it holds the model's parameters and takes
            the tensor arguments positionally, in the order of :meth:`flat_inputs`.
        graph: the cost graph at the requested granularity.
        method: ``"export"`` or ``"fx"``: which tracer succeeded.
        granularity: ``"op"`` or ``"module"``.
        convention: how a call of the model maps onto the program's inputs.
    """

    graph_module: fx.GraphModule
    graph: Graph
    method: str
    granularity: str
    convention: CallConvention

    @property
    def module_positions(self) -> tuple[int, ...]:
        """For a traced plain function, the positions of its module arguments (part of the program)."""
        return tuple(i for i, name in enumerate(self.convention.positional) if name in self.convention.modules)

    def flat_inputs(self, args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The tensors of a call ``model(*args, **kwargs)`` in the order the program (and the programs
        partitioned from it) take them; a :class:`TraceError` if the call's arguments are not the
        traced ones."""
        return self.convention.flat_inputs(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the traced program with the same arguments the model or function takes."""
        return self.graph_module(*self.flat_inputs(args, kwargs))


class _FunctionAsModule(nn.Module):
    """Wraps ``fn(module..., tensor..., **kwargs)`` so the modules become submodules and the tensors inputs."""

    def __init__(self, fn: Callable, args: tuple, module_positions: tuple[int, ...]) -> None:
        super().__init__()
        self.fn = fn
        self.arity = len(args)
        self.module_positions = module_positions
        names = _argument_names(fn, len(args))
        self.module_names = [names[i] for i in module_positions]
        for i, name in zip(module_positions, self.module_names):
            self.add_module(name, args[i])

    def forward(self, *tensors: Any, **kwargs: Any) -> Any:
        tensor_iter = iter(tensors)
        modules = iter(self.module_names)
        args = [
            getattr(self, next(modules)) if i in self.module_positions else next(tensor_iter)
            for i in range(self.arity)
        ]
        return self.fn(*args, **kwargs)


def _argument_names(fn: Callable, count: int) -> list[str]:
    """The names positional arguments bind to: ``fn``'s positional parameters, then ``arg{i}`` up to
    ``count`` (for ``*args``, or a callable without a signature)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        params = []
    positional = [
        p.name for p in itertools.takewhile(lambda p: p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD), params)
    ]
    return positional + [f"arg{i}" for i in range(len(positional), count)]


def trace(
    model_or_fn: nn.Module | Callable,
    example_inputs: Any,
    granularity: Granularity = "module",
    leaf_modules: Iterable[type[nn.Module]] = (),
    name: str | None = None,
    example_kwargs: dict[str, Any] | None = None,
) -> TracedProgram:
    """Trace a model (or a function of modules and tensors) into an fx program and a cost graph.

    Args:
        model_or_fn: an ``nn.Module``, or a plain function whose arguments are modules and tensors.
        example_inputs: a tensor or a tuple of the positional arguments (fake, meta or real tensors;
            only their shapes and dtypes are used for the costs).
        granularity: ``"module"`` (leaf modules as single nodes: the default, as in ``graphc.compile``
            and the command line, and the unit placement papers count) or ``"op"`` (ATen ops).
        leaf_modules: extra module classes to treat as leaves at module granularity.
        name: the cost graph's name (default: the class or function name).
        example_kwargs: keyword arguments of the call, as HuggingFace models take them
            (``input_ids=..., attention_mask=...``): tensors become inputs of the program, other values
            (``return_dict=False``, ``None``) are baked into it as constants.
    """
    if granularity not in GRANULARITIES:
        raise ConfigurationError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    kwargs = dict(example_kwargs or {})
    _check_example_arguments(args, kwargs)
    module, module_positions = _as_module(model_or_fn, args)
    convention = _convention(model_or_fn, args, kwargs, module_positions)
    positional = tuple(a for i, a in enumerate(args) if i not in module_positions)
    name = name or getattr(model_or_fn, "__name__", type(model_or_fn).__name__)
    extra_leaves = tuple(leaf_modules)

    def is_leaf(cls: type) -> bool:
        return is_torch_nn_leaf(cls) or is_marked_leaf(cls) or issubclass(cls, extra_leaves)

    gm, method = _capture(module, positional, kwargs, name, is_leaf if granularity == "module" else None)
    if method == "fx" and set(_placeholder_targets(gm)) == set(convention.input_names):
        # symbolic_trace orders the inputs as the signature does
        convention = dataclasses.replace(convention, input_names=_placeholder_targets(gm))
    tensors = convention.flat_inputs(args, kwargs)
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
        "input_names": list(convention.input_names),
        "input_shapes": [list(t.shape) for t in tensors],
        "num_params": sum(p.numel() for p in module.parameters()),
    }
    graph = build_cost_graph(gm, costs, group_of, group_info, name, meta)
    _require_acyclic(graph, name)
    return TracedProgram(gm, graph, method, granularity, convention)


def _check_example_arguments(args: tuple, kwargs: dict[str, Any]) -> None:
    """Positional arguments are tensors (or a function's modules); keyword arguments are tensors or
    constants, never containers of tensors, which would be neither inputs nor constants."""
    for i, a in enumerate(args):
        if not isinstance(a, (torch.Tensor, nn.Module)):
            raise ArgumentTypeError(
                f"example input {i} is a {type(a).__name__}; graphc traces tensors (and, for a function, "
                "modules): pass tensors, and make other values constants of the model"
            )
    for key, value in kwargs.items():
        if isinstance(value, nn.Module) or (
            not isinstance(value, torch.Tensor) and any(isinstance(t, torch.Tensor) for t in tree_leaves(value))
        ):
            raise ArgumentTypeError(
                f"example keyword {key!r} is a {type(value).__name__}; keyword arguments are tensors (inputs) or "
                "constants such as return_dict=False: pass modules and tensors positionally, one tensor per argument"
            )


def _convention(
    model_or_fn: Any, args: tuple, kwargs: dict[str, Any], module_positions: tuple[int, ...]
) -> CallConvention:
    """The traced call's convention; inputs in export's order: positional tensors, then keyword tensors."""
    fn = model_or_fn.forward if isinstance(model_or_fn, nn.Module) else model_or_fn
    positional = _argument_names(fn, len(args))
    names = [positional[i] for i, a in enumerate(args) if i not in module_positions]
    names += [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    constants = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
    modules = tuple(positional[i] for i in module_positions)
    return CallConvention(tuple(names), constants, tuple(positional), modules)


def _placeholder_targets(gm: fx.GraphModule) -> tuple[str, ...]:
    return tuple(str(n.target) for n in gm.graph.nodes if n.op == "placeholder")


def _as_module(model_or_fn: Any, args: tuple) -> tuple[nn.Module, tuple[int, ...]]:
    if isinstance(model_or_fn, nn.Module):
        if any(isinstance(a, nn.Module) for a in args):
            raise ArgumentTypeError("example inputs of an nn.Module are tensors; pass the module only as the model")
        return model_or_fn, ()
    if not callable(model_or_fn):
        raise ArgumentTypeError(f"trace takes an nn.Module or a function, got {type(model_or_fn).__name__}")
    positions = tuple(i for i, a in enumerate(args) if isinstance(a, nn.Module))
    return _FunctionAsModule(model_or_fn, args, positions), positions


# -- capture ------------------------------------------------------------------------------------


def _capture(
    module: nn.Module, args: tuple, kwargs: dict[str, Any], name: str, fx_leaf: Callable[[type], bool] | None
) -> tuple[fx.GraphModule, str]:
    """torch.export (non-strict) first, torch.fx as the fallback; a TraceError if both fail. The program
    takes the call's tensors positionally; in-place ops on activations are made out-of-place
    (:mod:`graphc.frontend.functionalize`) and keyword constants baked in."""
    try:
        with _quiet_torch():
            exported = torch.export.export(module, args, kwargs, strict=False)
            gm = functionalize(exported)
        _bake_constant_inputs(gm, tree_leaves((args, kwargs)))
        return gm, "export"
    except Exception as export_error:
        try:
            gm = _fx_trace(module, fx_leaf, _fx_constants(module, args, kwargs))
            _drop_specialised_inputs(gm, _tensor_argument_names(module, args, kwargs))
            return gm, "fx"
        except Exception as fx_error:
            raise _trace_error(name, export_error, fx_error) from export_error


def _bake_constant_inputs(gm: fx.GraphModule, leaves: list[Any]) -> None:
    """Replace the placeholders of non-tensor arguments (export keeps them, for its input guard) by
    their values, and make the program take the remaining tensors positionally."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(leaves):
        raise TraceError(f"torch.export made {len(placeholders)} inputs of {len(leaves)} argument values")
    for node, value in zip(placeholders, leaves):
        if not isinstance(value, torch.Tensor):
            _replace_by_constant(node, value)
    targets = _placeholder_targets(gm)
    old = gm.graph._codegen.pytree_info
    in_spec = tree_structure((targets, {}))
    gm.graph._codegen = _PyTreeCodeGen(_PyTreeInfo(list(targets), in_spec, old.out_spec))
    gm.recompile()


def _replace_by_constant(node: fx.Node, value: Any) -> None:
    """Put ``value`` wherever ``node`` is an argument, and drop ``node``."""
    for user in list(node.users):
        user.args, user.kwargs = fx.node.map_arg((user.args, user.kwargs), lambda arg: value if arg is node else arg)
    node.graph.erase_node(node)


def _fx_constants(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``concrete_args`` for symbolic tracing: the keyword constants, and the defaults of the parameters
    the call leaves out (so that the program's inputs are the call's tensors)."""
    given = set(_argument_names(module.forward, len(args))[: len(args)]) | set(kwargs)
    params = inspect.signature(module.forward).parameters.values()
    defaults = {p.name: p.default for p in params if p.name not in given and p.default is not p.empty}
    return defaults | {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}


def _tensor_argument_names(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> set[str]:
    """The parameter names of the tensor arguments of the call ``module(*args, **kwargs)`` (``args`` are
    tensors)."""
    names = _argument_names(module.forward, len(args))
    return set(names[: len(args)]) | {k for k, v in kwargs.items() if isinstance(v, torch.Tensor)}


def _drop_specialised_inputs(gm: fx.GraphModule, tensor_names: set[str]) -> None:
    """symbolic_trace keeps a placeholder for every concrete argument, read only by checks that the
    argument keeps its traced value; the program takes the call's tensors only, so those placeholders
    go, with their checks (a placeholder that feeds the output, like ``*args``, stays)."""
    for node in [n for n in gm.graph.nodes if n.op == "placeholder" and n.target not in tensor_names]:
        checks = _transitive_users(node)
        if any(user.op == "output" for user in checks):
            continue
        for user in reversed(checks):
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
    gm.recompile()


def _transitive_users(node: fx.Node) -> list[fx.Node]:
    """Every node computed from ``node``, in graph order."""
    found: set[fx.Node] = set()
    stack = list(node.users)
    while stack:
        user = stack.pop()
        if user not in found:
            found.add(user)
            stack.extend(user.users)
    return [n for n in node.graph.nodes if n in found]


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


def _fx_trace(
    module: nn.Module, is_leaf: Callable[[type], bool] | None, constants: dict[str, Any]
) -> fx.GraphModule:
    tracer = _LeafTracer(is_leaf)
    graph = tracer.trace(module, concrete_args=constants or None)
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
    return node.op in ("get_attr", "output") or is_input_guard(node)


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
        reader = _first_reader_of_written_state(node)
        if reader is not None and reader.name in group_of:
            group_of[node.name] = group_of[reader.name]
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


def _first_reader_of_written_state(node: fx.Node) -> fx.Node | None:
    """For a write-back into module state (:func:`graphc.frontend.functionalize.assign_state`), the first other op
    reading that state: the write joins its cost node, on the device that owns the state."""
    if node.target is not assign_state:
        return None
    return next((user for user in node.args[0].users if user is not node), None)


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
