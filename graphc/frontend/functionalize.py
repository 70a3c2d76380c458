"""Rid an exported program of in-place ops on activations, keeping eager's outputs and gradients.

``torch.export`` keeps in-place ATen ops: ``relu_`` of ``nn.ReLU(inplace=True)``, ``add_`` of
``x += y``, ``mul_``, ``dropout_``. graphc needs programs without them: annotation runs every op on
fresh leaf copies of its inputs (autograd refuses an in-place op on a leaf that requires a gradient),
and a partitioned program may run a reader of the old value after the write, or write into a copy that
another device received. :func:`functionalize` rewrites the program:

* An in-place op whose written tensor is read by nobody after the write under another name (no view of
  it, and no tensor it is a view of, is used later) becomes its out-of-place overload (``relu_`` ->
  ``relu``). Export routes every later use of a written tensor through the op's result, so the program
  computes the same values, and every other op keeps its name and cost.
* Anything else (a write into a view, ``x[:, 0] = 0``, whose base is read later; an in-place op without
  an out-of-place twin of the same result) is left to torch's own functionalisation
  (``ExportedProgram.run_decompositions({})``), which replays writes through views. Its batch norm is the
  functional variant; the new running statistics are copied into the buffers at the end of the program
  by :func:`assign_state`, which the cost graph puts with the state's first reader (so that the write
  runs on the device that owns the buffer).

Writes into module state (batch norm's ``num_batches_tracked += 1``) stay in place: they update the
model's buffers as eager does.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch.export import ExportedProgram


def functionalize(exported: ExportedProgram) -> fx.GraphModule:
    """The executable program of ``exported`` with no in-place op on an activation (module docstring)."""
    gm = exported.module()
    if _rewrite_inplace_ops(gm):
        return gm
    gm = exported.run_decompositions({}).module()
    _assign_state_outside_autograd(gm)
    return gm


def assign_state(state: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``state.copy_(value)`` for a buffer, as an eager kernel updates it: outside autograd's version
    counting, which would otherwise see batch norm's saved running statistics modified and refuse the
    backward (training-mode batch norm saves them but its backward does not read them)."""
    state.data.copy_(value.detach())
    return state


def _assign_state_outside_autograd(gm: fx.GraphModule) -> None:
    """Write-backs into buffers (``copy_(buffer, new value)`` at the end of a functionalised program)
    become :func:`assign_state`."""
    for node in gm.graph.nodes:
        if node.target is torch.ops.aten.copy_.default and node.args[0].op == "get_attr" and not node.users:
            node.target = assign_state
    gm.recompile()


def _rewrite_inplace_ops(gm: fx.GraphModule) -> bool:
    """Turn every in-place op on an activation into its out-of-place overload; False (``gm`` then
    half-rewritten) when one of them cannot be, for the reasons of the module docstring."""
    position = {node: i for i, node in enumerate(gm.graph.nodes)}
    for node in gm.graph.nodes:
        written = _written_arguments(node)
        if not written or all(_aliases_state(value, node) for value in written):
            continue
        counterpart = _out_of_place(node.target)
        if counterpart is None or written != [node.args[0]] or not _same_result(node, counterpart):
            return False
        if _read_after(written[0], node, position):
            return False
        node.target = counterpart
    gm.recompile()
    return True


def _out_of_place(op: object) -> torch._ops.OpOverload | None:
    """The out-of-place twin of an in-place ATen overload that writes its first argument
    (``aten.add_.Tensor`` -> ``aten.add.Tensor``), or None."""
    if not isinstance(op, torch._ops.OpOverload):
        return None
    namespace, _, name = op._schema.name.partition("::")
    if not name.endswith("_"):
        return None
    packet = getattr(getattr(torch.ops, namespace), name[:-1], None)
    twin = getattr(packet, op._overloadname, None) if packet is not None else None
    return twin if isinstance(twin, torch._ops.OpOverload) and not twin._schema.is_mutable else None


def _written_arguments(node: fx.Node) -> list[fx.Node]:
    """The fx nodes whose tensors ``node`` writes in place (its schema's ``Tensor(a!)`` arguments)."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return []
    written = []
    for i, arg in enumerate(node.target._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            if isinstance(value, fx.Node):
                written.append(value)
    return written


def _is_view(node: fx.Node) -> bool:
    """``node``'s value shares memory with its first argument: a view op, an unrewritten in-place op, or
    an element of a multi-output view op (``split``)."""
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.target is operator.getitem:
        return _is_view(node.args[0])
    return isinstance(node.target, torch._ops.OpOverload) and any(
        r.alias_info is not None for r in node.target._schema.returns
    )


def _alias_class(value: fx.Node, writer: fx.Node) -> set[fx.Node]:
    """Every node sharing memory with ``value`` (its bases and their views), not looking past ``writer``."""
    found, stack = {value}, [value]
    while stack:
        node = stack.pop()
        linked = [u for u in node.users if u is not writer and _is_view(u) and u.args[0] is node]
        if _is_view(node):
            linked.append(node.args[0])
        for other in linked:
            if other not in found:
                found.add(other)
                stack.append(other)
    return found


def _read_after(value: fx.Node, writer: fx.Node, position: dict[fx.Node, int]) -> bool:
    """Some node after ``writer`` reads ``value``'s memory under another name than ``writer``'s result."""
    return any(
        position[user] > position[writer]
        for alias in _alias_class(value, writer)
        for user in alias.users
        if user is not writer
    )


def _aliases_state(value: fx.Node, writer: fx.Node) -> bool:
    return any(node.op == "get_attr" for node in _alias_class(value, writer))


def _same_result(node: fx.Node, twin: torch._ops.OpOverload) -> bool:
    """The out-of-place twin gives the in-place op's shape and dtype (``int_tensor += 0.5`` would not)."""
    expected = node.meta.get("val")
    if not isinstance(expected, torch.Tensor):
        return False

    def on_meta(arg: fx.Node) -> object:
        value = arg.meta.get("val")
        return torch.empty(value.shape, dtype=value.dtype, device="meta") if isinstance(value, torch.Tensor) else value

    try:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), on_meta)
        result = twin(*args, **kwargs)
    except Exception:  # an argument the meta device cannot stand for: leave it to torch's functionalisation
        return False
    return isinstance(result, torch.Tensor) and result.shape == expected.shape and result.dtype == expected.dtype
