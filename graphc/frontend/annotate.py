"""Cost annotation of a traced ``torch.fx.GraphModule``, computed on fake tensors.

:func:`measure_fx_nodes` runs the graph node by node under a ``FakeTensorMode``: every tensor has a
shape, dtype and device but no storage, so a model far larger than this machine's memory (a 1.5 B
parameter GPT-2, built on the ``meta`` device) is annotated without allocating its weights. For each
node it runs the forward, and then the node's own backward, on fresh leaf copies of its inputs, and
records:

* FLOPs of the forward and of the backward (:mod:`graphc.frontend.flops`); the backward computes exactly the
  gradients autograd needs (a gradient w.r.t. the input image is never needed, so the first
  convolution's backward only computes the weight gradient);
* bytes read (tensor inputs and parameters) and written (outputs);
* the tensors the node's backward saves (``saved_tensors_hooks``): a saved input is charged to the node
  that produced it (its output is kept alive for backward), a saved tensor created inside the op is
  charged to the node itself, a saved parameter to nobody (parameters are always alive);
* parameters and buffers the node reads.

:func:`build_cost_graph` then groups fx nodes into cost-graph nodes (one per op, or one per call of a
leaf module) and sums their measurements; edges carry the bytes of the tensors crossing groups.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)
from torch.utils._pytree import tree_leaves, tree_map

from graphc.frontend.flops import FlopCounter
from graphc.ir.errors import TraceError
from graphc.ir.graph import EdgeData, Graph, NodeData


@dataclass
class FxNodeCost:
    """What :func:`measure_fx_nodes` learned about one fx node."""

    name: str
    output_shapes: list[list[int]] = field(default_factory=list)
    output_dtypes: list[str] = field(default_factory=list)
    output_bytes: float = 0.0
    fwd_flops: float = 0.0
    bwd_flops: float = 0.0
    bytes_read: float = 0.0
    params: dict[str, float] = field(default_factory=dict)  # parameter name -> bytes
    buffers: dict[str, float] = field(default_factory=dict)  # buffer name -> bytes
    internal_saved_bytes: float = 0.0
    output_saved_bytes: float = 0.0  # bytes of this node's outputs some backward keeps alive
    input_bytes: dict[str, float] = field(default_factory=dict)  # producer fx node -> bytes read from it


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> float:
    return float(t.numel() * t.element_size())


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class _NodeRunner:
    """Runs single fx nodes on fake values, with gradients, counting FLOPs and saved tensors."""

    def __init__(self, gm: fx.GraphModule, fake_mode: FakeTensorMode) -> None:
        self.gm = gm
        self.fake_mode = fake_mode
        self.param_names = {id(p): name for name, p in gm.named_parameters(remove_duplicate=False)}
        self.buffer_names = {id(b): name for name, b in gm.named_buffers(remove_duplicate=False)}
        self.fake_params: dict[str, torch.Tensor] = {}
        for name, p in gm.named_parameters(remove_duplicate=False):
            self.fake_params[name] = self._fake_leaf(p, requires_grad=p.requires_grad)
        for name, b in gm.named_buffers(remove_duplicate=False):
            self.fake_params[name] = self._fake_leaf(b, requires_grad=False)

    def _fake_leaf(self, t: torch.Tensor, requires_grad: bool) -> torch.Tensor:
        fake = self.fake_mode.from_tensor(t.detach(), static_shapes=True)
        return fake.requires_grad_(requires_grad and fake.is_floating_point())

    def attr_value(self, node: fx.Node) -> Any:
        value = operator.attrgetter(node.target)(self.gm)
        if not isinstance(value, torch.Tensor):
            return value
        if node.target not in self.fake_params:  # a constant tensor the trace attached to the module
            self.fake_params[node.target] = self._fake_leaf(value, requires_grad=False)
        return self.fake_params[node.target]

    def call(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        module = self.gm.get_submodule(node.target)
        prefix = f"{node.target}."
        state = {k[len(prefix):]: v for k, v in self.fake_params.items() if k.startswith(prefix)}
        return torch.func.functional_call(module, state, args, kwargs)


def measure_fx_nodes(gm: fx.GraphModule, inputs: tuple) -> tuple[dict[str, FxNodeCost], dict[str, Any]]:
    """Run ``gm`` node by node on fake copies of ``inputs``; returns per-node costs and fake values.

    Errors inside an op are re-raised as :class:`TraceError` naming the fx node and its source line.
    """
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        runner = _NodeRunner(gm, fake_mode)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(inputs):
            raise TraceError(f"the traced graph takes {len(placeholders)} tensor inputs, got {len(inputs)}")
        env: dict[str, Any] = {}
        costs: dict[str, FxNodeCost] = {}
        producer_of_storage: dict[int, str] = {}
        for node, value in zip(placeholders, inputs):
            fake = fake_mode.from_tensor(value, static_shapes=True) if isinstance(value, torch.Tensor) else value
            env[node.name] = fake
            costs[node.name] = _output_record(node.name, fake)
            _remember_storages(fake, node.name, producer_of_storage)
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                env[node.name] = runner.attr_value(node)
            elif node.op in ("call_function", "call_method", "call_module"):
                try:
                    env[node.name], costs[node.name] = _measure_node(
                        runner, node, env, costs, producer_of_storage
                    )
                except TraceError:
                    raise
                except Exception as exc:  # re-raised with the node's context, as shape_prop does
                    raise _annotation_error(node, exc) from exc
                _remember_storages(env[node.name], node.name, producer_of_storage)
        return costs, env


_DATA_DEPENDENT_ADVICE = {
    DynamicOutputShapeException: (
        "an op whose output shape depends on the values in a tensor (torch.nonzero, x[mask], torch.unique)",
        "keep shapes static: multiply by the mask (x * mask) or select with torch.where(mask, x, 0) and "
        "reduce over the mask, or move the op out of the traced model (into the data pipeline or the loss)",
    ),
    DataDependentOutputException: (
        "a Python number read from a tensor's values (.item(), .tolist(), int(t), float(t))",
        "keep the value a tensor (x / t.max() rather than x / t.max().item()), or pass it to the model as "
        "a constant",
    ),
}


def _annotation_error(node: fx.Node, exc: Exception) -> TraceError:
    """A TraceError for an op that failed on fake tensors: the model's source line, and what to do when
    the cause is a data-dependent value."""
    where = _source_line(node)
    advice = next((a for kind, a in _DATA_DEPENDENT_ADVICE.items() if isinstance(exc, kind)), None)
    if advice is None:
        return TraceError(
            f"while annotating node {node.name!r} ({node.format_node()}): {type(exc).__name__}: {exc}\n  at {where}"
        )
    reason, hint = advice
    return TraceError(
        f"cannot trace the model: data-dependent value: {reason}; tracing sees shapes, not values\n"
        f"  at {where}\n  what to do: {hint}"
    )


def _source_line(node: fx.Node) -> str:
    """``file:line: code`` of the model line that made ``node`` (from its recorded stack trace)."""
    lines = (node.meta.get("stack_trace") or "").rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if _FRAME.match(line)]
    if not frames:
        return "(no source line recorded)"
    file, lineno = _FRAME.match(lines[frames[-1]]).groups()
    code = lines[frames[-1] + 1].strip() if frames[-1] + 1 < len(lines) else ""
    return f"{file}:{lineno}: {code}"


_FRAME = re.compile(r'\s*File "(.+)", line (\d+), in ')


def _remember_storages(value: Any, name: str, producer_of_storage: dict[int, str]) -> None:
    for t in _tensors(value):
        producer_of_storage.setdefault(_storage_key(t), name)


def _output_record(name: str, value: Any) -> FxNodeCost:
    outputs = _tensors(value)
    return FxNodeCost(
        name=name,
        output_shapes=[list(t.shape) for t in outputs],
        output_dtypes=[str(t.dtype).removeprefix("torch.") for t in outputs],
        output_bytes=sum(_nbytes(t) for t in outputs),
    )


def _measure_node(
    runner: _NodeRunner,
    node: fx.Node,
    env: dict[str, Any],
    costs: dict[str, FxNodeCost],
    producer_of_storage: dict[int, str],
) -> tuple[Any, FxNodeCost]:
    leaves: list[torch.Tensor] = []
    origin: dict[int, str] = {}  # storage of a leaf copy -> fx node (or parameter) it stands for

    def as_leaf(arg: Any) -> Any:
        if not isinstance(arg, fx.Node):
            return arg
        value = env[arg.name]
        if not isinstance(value, torch.Tensor):
            return value
        leaf = value.detach().requires_grad_(value.requires_grad)
        leaves.append(leaf)
        key = _storage_key(leaf)
        origin[key] = producer_of_storage.get(key, arg.name)  # a view's memory belongs to its base
        return leaf

    args = tree_map(as_leaf, node.args)
    kwargs = tree_map(as_leaf, node.kwargs)
    record = FxNodeCost(name=node.name)
    for arg in node.all_input_nodes:
        value = env[arg.name]
        if not isinstance(value, torch.Tensor):
            continue
        if arg.op == "get_attr":
            _charge_state(runner, arg, value, record)
        else:
            record.input_bytes[arg.name] = record.input_bytes.get(arg.name, 0.0) + _nbytes(value)
    if node.op == "call_module":
        prefix = f"{node.target}."
        for name, p in runner.fake_params.items():
            if name.startswith(prefix):
                (record.params if p.requires_grad else record.buffers)[name] = _nbytes(p)

    saved: list[torch.Tensor] = []
    counter = FlopCounter()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), counter:
        out = runner.call(node, args, kwargs)
    record.fwd_flops = counter.flops
    outputs = _tensors(out)
    out_record = _output_record(node.name, out)
    record.output_shapes, record.output_dtypes = out_record.output_shapes, out_record.output_dtypes
    record.output_bytes = out_record.output_bytes
    record.bytes_read = sum(record.input_bytes.values()) + sum(record.params.values()) + sum(
        record.buffers.values()
    )

    _charge_saved_tensors(saved, origin, outputs, runner, record, costs)

    grad_outputs = [o for o in outputs if o.requires_grad and o.grad_fn is not None]
    wrt = [leaf for leaf in leaves if leaf.requires_grad]
    if node.op == "call_module":
        wrt += [p for name, p in runner.fake_params.items() if name.startswith(f"{node.target}.") and p.requires_grad]
    if grad_outputs and wrt:
        backward = FlopCounter()
        with backward:
            torch.autograd.grad(
                grad_outputs, wrt, [torch.empty_like(o) for o in grad_outputs], allow_unused=True
            )
        record.bwd_flops = backward.flops
    detached = tree_map(
        lambda v: v.detach().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v, out
    )
    return detached, record


def _charge_state(runner: _NodeRunner, arg: fx.Node, value: torch.Tensor, record: FxNodeCost) -> None:
    """Record a parameter or buffer read through a ``get_attr`` node."""
    if value.requires_grad:
        record.params[arg.target] = _nbytes(value)
    else:
        record.buffers[arg.target] = _nbytes(value)


def _charge_saved_tensors(
    saved: list[torch.Tensor],
    origin: dict[int, str],
    outputs: list[torch.Tensor],
    runner: _NodeRunner,
    record: FxNodeCost,
    costs: dict[str, FxNodeCost],
) -> None:
    """Charge every distinct saved tensor to the node whose output it is (see the module docstring)."""
    output_storages = {_storage_key(o) for o in outputs}
    state_storages = {_storage_key(p) for p in runner.fake_params.values()}
    seen: set[int] = set()
    for t in saved:
        key = _storage_key(t)
        if key in seen or key in state_storages:
            continue
        seen.add(key)
        if key in output_storages:
            record.output_saved_bytes += _nbytes(t)
        elif key in origin and origin[key] in costs:
            _keep_output_alive(costs[origin[key]], _nbytes(t))
        elif key not in origin:
            record.internal_saved_bytes += _nbytes(t)


def _keep_output_alive(producer: FxNodeCost, nbytes: float) -> None:
    """A consumer's backward saves (part of) ``producer``'s output: it stays alive until then."""
    producer.output_saved_bytes = min(producer.output_bytes, max(producer.output_saved_bytes, nbytes))


GroupKey = Callable[[fx.Node], str]


def build_cost_graph(
    gm: fx.GraphModule,
    costs: dict[str, FxNodeCost],
    group_of: dict[str, str],
    group_info: dict[str, tuple[str, str]],
    name: str,
    meta: dict[str, Any],
) -> Graph:
    """Group fx nodes into cost-graph nodes and sum their costs.

    Args:
        gm: the traced program.
        costs: per-fx-node measurements from :func:`measure_fx_nodes`.
        group_of: fx node name -> cost node name, for every fx node that becomes part of a cost node
            (placeholders, ops and modules; never ``get_attr`` or ``output``).
        group_info: cost node name -> (op description, module path), in the order nodes are added.
        name, meta: the graph's name and meta facts.
    """
    graph = Graph(name, meta)
    members: dict[str, list[str]] = {g: [] for g in group_info}
    for fx_name, group in group_of.items():
        members[group].append(fx_name)
    owner_of_param: dict[str, str] = {}
    for group, (op, module) in group_info.items():
        records = [costs[m] for m in members[group] if m in costs]
        own_params = {}
        for r in records:
            for p, nbytes in r.params.items():
                if owner_of_param.setdefault(p, group) == group:
                    own_params[p] = nbytes
        buffers = {b: nbytes for r in records for b, nbytes in r.buffers.items()}
        outputs = [r for r in records if _leaves_group(r.name, gm, group_of)]
        graph.add_node(
            NodeData(
                name=group,
                op=op,
                module=module,
                fx_nodes=members[group],
                output_shapes=[s for r in outputs for s in r.output_shapes],
                output_dtypes=[d for r in outputs for d in r.output_dtypes],
                fwd_flops=sum(r.fwd_flops for r in records),
                bwd_flops=sum(r.bwd_flops for r in records),
                bytes_read=sum(r.bytes_read for r in records),
                bytes_written=sum(r.output_bytes for r in records),
                output_bytes=sum(r.output_bytes for r in outputs),
                param_bytes=sum(own_params.values()),
                params=list(own_params),
                buffer_bytes=sum(buffers.values()),
                activation_bytes=sum(r.internal_saved_bytes + r.output_saved_bytes for r in records),
            )
        )
    _add_edges(graph, gm, costs, group_of, owner_of_param)
    return graph


def _leaves_group(fx_name: str, gm: fx.GraphModule, group_of: dict[str, str]) -> bool:
    node = _fx_node(gm, fx_name)
    return any(u.op == "output" or group_of.get(u.name) != group_of[fx_name] for u in node.users)


def _fx_node(gm: fx.GraphModule, name: str) -> fx.Node:
    cache = gm.__dict__.setdefault("_graphc_nodes", {n.name: n for n in gm.graph.nodes})
    return cache[name]


def _add_edges(
    graph: Graph,
    gm: fx.GraphModule,
    costs: dict[str, FxNodeCost],
    group_of: dict[str, str],
    owner_of_param: dict[str, str],
) -> None:
    """One edge per pair of groups a tensor crosses; a shared parameter flows from its owner."""
    crossing: dict[tuple[str, str], float] = {}
    for fx_name, group in group_of.items():
        record = costs.get(fx_name)
        if record is None:
            continue
        for producer, nbytes in record.input_bytes.items():
            src = group_of.get(producer)
            if src is not None and src != group:
                crossing[src, group] = crossing.get((src, group), 0.0) + nbytes
        for param, nbytes in record.params.items():
            owner = owner_of_param.get(param)
            if owner is not None and owner != group:
                crossing[owner, group] = crossing.get((owner, group), 0.0) + nbytes
    for (src, dst), nbytes in crossing.items():
        graph.add_edge(src, dst, EdgeData(bytes=nbytes))
    for node in gm.graph.nodes:
        if node.op == "output":
            for arg in node.all_input_nodes:
                if arg.name in group_of:
                    graph.node(group_of[arg.name]).is_output = True
