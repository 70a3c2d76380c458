"""What every value of a traced program is: tensor or not, shape, dtype, and whether it needs a gradient.

The partitioner needs these facts before anything runs: a receiving device allocates its buffer from
the shape and dtype, and both ends of a cut edge must agree, without talking, on whether a gradient
will flow back over it (a gradient that one side sends and the other never receives would hang the
step). :func:`propagate` reads them from ``node.meta``, where the frontend's interpreter recorded them
when it annotated the program, or runs the program once on fake tensors (no storage, no compute) with
the parameters as fake leaves that require gradients, so ``requires_grad`` comes out exactly as
autograd will have it at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from graphc.frontend.interpreter import NodeInterpreter, is_input_guard
from graphc.ir.errors import TraceError
from runtime.errors import MismatchError


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
    """Every node's :class:`ValueInfo` for inputs of ``inputs``' shapes.

    Read from ``node.meta`` when one run of the interpreter (:mod:`graphc.frontend.interpreter`; the
    annotation of :func:`graphc.trace` is one) recorded every node on inputs of these shapes; otherwise
    ``gm`` runs once on fake inputs of those shapes, which records them. Export's input guard is
    skipped. An op that fails is re-raised as a :class:`~graphc.ir.errors.MismatchError` naming the
    node and its source line.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise MismatchError(f"the program takes {len(placeholders)} inputs, {len(inputs)} input shapes were given")
    if not _recorded_on(gm, inputs):
        interpreter = NodeInterpreter(gm, fake=True)
        with interpreter.mode():
            feeds = [torch.zeros(spec.shape, dtype=spec.dtype) for spec in inputs]
            try:
                interpreter.run(*feeds)
            except TraceError as exc:
                raise MismatchError(f"cannot run the program on inputs of the traced shapes: {exc}") from exc
    return {n.name: _info(n) for n in gm.graph.nodes if n.op != "output" and not is_input_guard(n)}


def _recorded_on(gm: fx.GraphModule, inputs: Sequence[InputSpec]) -> bool:
    """Whether one run recorded every node's facts, on inputs of ``inputs``' shapes and dtypes that
    need no gradient (as the runtime's inputs)."""
    runs = {n.meta.get("graphc_run") for n in gm.graph.nodes if n.op != "output" and not is_input_guard(n)}
    if len(runs) != 1 or None in runs:
        return False
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, spec in zip(placeholders, inputs):
        meta = node.meta.get("tensor_meta")
        if not isinstance(meta, TensorMetadata) or meta.requires_grad:
            return False
        if (tuple(meta.shape), meta.dtype) != (tuple(spec.shape), spec.dtype):
            return False
    return True


def _info(node: fx.Node) -> ValueInfo:
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, TensorMetadata):
        return ValueInfo(True, tuple(int(d) for d in meta.shape), meta.dtype, bool(meta.requires_grad))
    return ValueInfo(False)
