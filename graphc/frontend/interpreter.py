"""The one interpreter of traced programs: run a ``GraphModule`` node by node on fake or real values.

Annotation (:mod:`graphc.frontend.annotate`), profiling (:mod:`graphc.frontend.profile`) and the
runtime's value propagation (:mod:`runtime.values`) all run a traced program one node at a time.
:class:`NodeInterpreter` is the ``torch.fx.Interpreter`` they share; it adds to fx's dispatch only what
all three need:

* **Fake values** (``fake=True``): the program runs under its own ``FakeTensorMode``, so tensors have
  shapes, dtypes and devices but no storage and no compute, and a model larger than this machine's
  memory (built on the ``meta`` device) runs. Its parameters and buffers are replaced by fake leaves
  (:attr:`NodeInterpreter.state`; parameters require gradients as they do in training), a tensor
  constant read by ``get_attr`` by a fake copy, a real input by a fake one; ``call_module`` runs the
  submodule on those fake tensors (``torch.func.functional_call``). With ``fake=False`` the program
  runs on real values and the module's own state.
* **Isolated nodes** (``isolate=True``): every node's value is kept detached (with its
  ``requires_grad``), so a backward taken through one node stops at that node's inputs: annotation and
  profiling each take the backward of one node at a time.
* **What it learns goes into** ``node.meta``. Every node a full :meth:`~NodeInterpreter.run` runs gets
  ``node.meta["tensor_meta"]``, the :class:`~torch.fx.passes.shape_prop.TensorMetadata` that
  ``shape_prop`` records (shape, dtype, ``requires_grad``, strides; a tree of them for a tuple; absent
  for a value that holds no tensor), and ``node.meta["graphc_run"]``, the number of the run that
  recorded it, so that a reader can tell facts of one run from a mix of runs (and from what
  ``torch.export`` recorded itself). Single nodes that a caller runs through :meth:`run_node`
  outside a full run (the profiler's timed groups) record nothing.
* **Failures** inside a node are re-raised as :class:`~graphc.ir.errors.TraceError` naming the node and
  the model's source line (from ``node.meta["stack_trace"]``), as ``shape_prop`` re-raises with the
  node's context; a data-dependent op (``.item()``, ``x[mask]``) also gets what to do about it.
* Export's input guard (``_guards_fn``) is skipped: it checks the traced input shapes, and graphc
  checks its inputs itself.

Users override fx's own hooks: ``fetch_args_kwargs_from_env`` (annotation gives an op fresh leaf copies
of its inputs) and :meth:`NodeInterpreter.call`, the op itself on its argument values (annotation
counts its FLOPs and saved tensors around it and takes its backward; profiling times it).
"""

from __future__ import annotations

import contextlib
import itertools
import re
from typing import Any

import torch
from torch import fx
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
)
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata
from torch.utils._pytree import tree_leaves, tree_map

from graphc.ir.errors import TraceError

#: fx ops that compute (as opposed to placeholders, get_attr and the output).
CALLS = ("call_function", "call_method", "call_module")

_RUNS = itertools.count(1)


def is_input_guard(node: fx.Node) -> bool:
    """Whether ``node`` is the input-guard call (``_guards_fn``) that ``torch.export`` adds."""
    return node.op == "call_module" and node.target == "_guards_fn"


class NodeInterpreter(fx.Interpreter):
    """Runs a traced program node by node, on fake or real values (see the module docstring).

    Args:
        module: the traced program.
        fake: run on fake tensors, with fake leaves for the parameters and buffers.
        isolate: keep every node's value detached, so that a backward stops at the node's inputs.

    Every node's value stays in :attr:`env` after a run (values are not freed after their last use):
    the users read them.
    """

    def __init__(self, module: fx.GraphModule, *, fake: bool = False, isolate: bool = False) -> None:
        super().__init__(module, garbage_collect_values=False)
        self.extra_traceback = False  # failures are re-raised as TraceError by run_node
        self.isolate = isolate
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        self.state: dict[str, Any] = {}  # qualified name -> fake parameter, buffer or constant
        self._run: int | None = None
        if self.fake_mode is not None:
            for name, p in module.named_parameters(remove_duplicate=False):
                self.state[name] = self.fake_leaf(p, requires_grad=p.requires_grad)
            for name, b in module.named_buffers(remove_duplicate=False):
                self.state[name] = self.fake_leaf(b, requires_grad=False)

    def fake_leaf(self, t: torch.Tensor, requires_grad: bool) -> torch.Tensor:
        """A fake leaf of ``t``'s shape and dtype; it requires a gradient if asked and floating point."""
        assert self.fake_mode is not None
        fake = self.fake_mode.from_tensor(t.detach(), static_shapes=True)
        return fake.requires_grad_(requires_grad and fake.is_floating_point())

    def mode(self) -> contextlib.AbstractContextManager:
        """The fake mode to run (and take backwards) under; a no-op context on real values."""
        return self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()

    def run(self, *args: Any) -> Any:
        """Run the whole program on the flat inputs ``args`` (real ones are faked when ``fake``), with
        gradients enabled (``requires_grad`` comes out as in training), recording every node's facts in
        ``node.meta``; returns the output node's value (not unflattened by an output spec)."""
        self._run = next(_RUNS)
        try:
            with self.mode(), torch.enable_grad():
                return super().run(*args, enable_io_processing=False)
        finally:
            self._run = None

    def run_node(self, n: fx.Node) -> Any:
        """Run one node: fx's dispatch through :meth:`call`, failures re-raised with the node's context,
        the value detached when ``isolate``, its facts recorded during a full :meth:`run`."""
        if is_input_guard(n):
            return None
        try:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            value = self.call(n, args, kwargs)
        except TraceError:
            raise
        except Exception as exc:
            raise node_error(n, exc) from exc
        if self.isolate:
            value = tree_map(leaf_copy, value)
        if self._run is not None:
            _record(n, value, self._run)
        return value

    def call(self, n: fx.Node, args: tuple, kwargs: dict) -> Any:
        """``n`` on its argument values: fx's dispatch to ``placeholder``, ``get_attr``, ``call_*`` or
        ``output``. The hook users wrap (FLOP counting, timing)."""
        return getattr(self, n.op)(n.target, args, kwargs)

    def placeholder(self, target: Any, args: tuple, kwargs: dict) -> Any:
        value = super().placeholder(target, args, kwargs)
        if self.fake_mode is not None and isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
            value = self.fake_mode.from_tensor(value, static_shapes=True)
        return value

    def get_attr(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if target in self.state:
            return self.state[target]
        value = super().get_attr(target, args, kwargs)
        if self.fake_mode is not None and isinstance(value, torch.Tensor):  # a constant the trace attached
            value = self.state[target] = self.fake_leaf(value, requires_grad=False)
        return value

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if self.fake_mode is None:
            return super().call_module(target, args, kwargs)
        state = {k[len(target) + 1:]: v for k, v in self.module_state(target).items()}
        return torch.func.functional_call(self.fetch_attr(target), state, args, kwargs)

    def module_state(self, target: str) -> dict[str, Any]:
        """The fake parameters and buffers of submodule ``target``, by qualified name (empty on real values)."""
        prefix = f"{target}."
        return {k: v for k, v in self.state.items() if k.startswith(prefix)}


def leaf_copy(value: Any) -> Any:
    """A tensor as a fresh autograd leaf (same storage, same ``requires_grad``), so that a backward
    taken from it stops there; any other value as it is."""
    return value.detach().requires_grad_(value.requires_grad) if isinstance(value, torch.Tensor) else value


def tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) value, in pytree order."""
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def _record(n: fx.Node, value: Any, run: int) -> None:
    """``tensor_meta`` as ``shape_prop`` records it (dropped for a value without tensors), and the run."""
    if any(isinstance(t, torch.Tensor) for t in tree_leaves(value)):
        n.meta["tensor_meta"] = map_aggregate(
            value, lambda v: _extract_tensor_metadata(v) if isinstance(v, torch.Tensor) else v
        )
    else:
        n.meta.pop("tensor_meta", None)
    n.meta["graphc_run"] = run


_DATA_DEPENDENT_ADVICE = {
    DynamicOutputShapeException: (
        "an op whose output shape depends on the values in a tensor (torch.nonzero, x[mask], torch.unique)",
        (
            "keep shapes static: multiply by the mask (x * mask) or select with torch.where(mask, x, 0) and "
            "reduce over the mask, or move the op out of the traced model (into the data pipeline or the loss)"
        ),
    ),
    DataDependentOutputException: (
        "a Python number read from a tensor's values (.item(), .tolist(), int(t), float(t))",
        (
            "keep the value a tensor (x / t.max() rather than x / t.max().item()), or pass it to the model as "
            "a constant"
        ),
    ),
}


def node_error(node: fx.Node, exc: Exception) -> TraceError:
    """A :class:`TraceError` for an op that failed: the node, the model's source line, and what to do
    when the cause is a data-dependent value."""
    where = source_line(node)
    advice = next((a for kind, a in _DATA_DEPENDENT_ADVICE.items() if isinstance(exc, kind)), None)
    if advice is None:
        return TraceError(
            f"while running node {node.name!r} ({node.format_node()}): {type(exc).__name__}: {exc}\n  at {where}"
        )
    reason, hint = advice
    return TraceError(
        f"cannot trace the model: data-dependent value: {reason}; tracing sees shapes, not values\n"
        f"  at {where}\n  what to do: {hint}"
    )


def source_line(node: fx.Node) -> str:
    """``file:line: code`` of the model line that made ``node`` (from its recorded stack trace)."""
    lines = (node.meta.get("stack_trace") or "").rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if _FRAME.match(line)]
    if not frames:
        return "(no source line recorded)"
    file, lineno = _FRAME.match(lines[frames[-1]]).groups()
    code = lines[frames[-1] + 1].strip() if frames[-1] + 1 < len(lines) else ""
    return f"{file}:{lineno}: {code}"


_FRAME = re.compile(r'\s*File "(.+)", line (\d+), in ')
