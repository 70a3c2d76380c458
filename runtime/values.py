"""What every value of a traced program is: tensor or not, shape, dtype, and whether it needs a gradient.

The partitioner needs these facts before anything runs: a receiving device allocates its buffer from
the shape and dtype, and both ends of a cut edge must agree, without talking, on whether a gradient
will flow back over it (a gradient that one side sends and the other never receives would hang the
step). :func:`propagate` runs the program once on fake tensors (no storage, no compute) with the
parameters as fake leaves that require gradients, so ``requires_grad`` comes out exactly as autograd
will have it at run time.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map

from runtime.errors import ProgramMismatch


@dataclass(frozen=True)
class ValueInfo:
    """One fx node's value.

    Attributes:
        is_tensor: the value is a single tensor (else a tuple of them, None, or a Python value).
        shape: the tensor's shape.
        dtype: the tensor's dtype.
        requires_grad: autograd will track the tensor in training (so a gradient flows back to it).
    """

    is_tensor: bool
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    requires_grad: bool = False


@dataclass(frozen=True)
class InputSpec:
    """Shape and dtype of one input of a program."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def input_specs(gm: fx.GraphModule) -> list[InputSpec] | None:
    """The inputs a traced program was traced with (from its placeholders' fake values), or None
    when the tracer recorded none (``torch.fx`` fallback)."""
    specs = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return None
        specs.append(InputSpec(tuple(val.shape), val.dtype))
    return specs


def propagate(gm: fx.GraphModule, inputs: Sequence[InputSpec]) -> dict[str, ValueInfo]:
    """Run ``gm`` on fake inputs of ``inputs``' shapes; return every node's :class:`ValueInfo`.

    Export's input-guard call (``_guards_fn``) is skipped. An op that fails is re-raised as a
    :class:`ProgramMismatch` naming the node, as :mod:`torch.fx.passes.shape_prop` does.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise ProgramMismatch(f"the program takes {len(placeholders)} inputs, {len(inputs)} input shapes were given")
    info: dict[str, ValueInfo] = {}
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.enable_grad():
        attrs: dict[str, Any] = {}
        for name, p in gm.named_parameters(remove_duplicate=False):
            attrs[name] = mode.from_tensor(p.detach(), static_shapes=True).requires_grad_(p.requires_grad)
        for name, b in gm.named_buffers(remove_duplicate=False):
            attrs[name] = mode.from_tensor(b.detach(), static_shapes=True)
        env: dict[str, Any] = {}
        feeds = iter(inputs)
        for node in gm.graph.nodes:
            if node.op == "output" or (node.op == "call_module" and node.target == "_guards_fn"):
                continue
            args, kwargs = tree_map(lambda a: env[a.name] if isinstance(a, fx.Node) else a, (node.args, node.kwargs))
            try:
                value = _run(gm, node, args, kwargs, attrs, feeds)
            except Exception as exc:
                where = node.meta.get("stack_trace", "").strip().splitlines()[-1:] or ["(no source line)"]
                raise ProgramMismatch(
                    f"cannot run fx node {node.name!r} ({node.target}) on inputs of the traced shapes: "
                    f"{type(exc).__name__}: {exc}\n  at {where[0].strip()}"
                ) from exc
            env[node.name] = value
            info[node.name] = _info(value)
    return info


def _run(gm: fx.GraphModule, node: fx.Node, args: Any, kwargs: Any, attrs: dict[str, Any], feeds: Any) -> Any:
    if node.op == "placeholder":
        spec = next(feeds)
        return torch.zeros(spec.shape, dtype=spec.dtype)
    if node.op == "get_attr":
        if node.target in attrs:
            return attrs[node.target]
        value = operator.attrgetter(node.target)(gm)
        return value.detach().clone() if isinstance(value, torch.Tensor) else value
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    module = gm.get_submodule(node.target)
    prefix = f"{node.target}."
    state = {k[len(prefix):]: v for k, v in attrs.items() if k.startswith(prefix)}
    return torch.func.functional_call(module, state, args, kwargs)


def _info(value: Any) -> ValueInfo:
    if isinstance(value, torch.Tensor):
        return ValueInfo(True, tuple(int(d) for d in value.shape), value.dtype, bool(value.requires_grad))
    return ValueInfo(False)
