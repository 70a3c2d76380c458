"""Cost annotation of a traced ``torch.fx.GraphModule``, computed on fake tensors.

:func:`measure_fx_nodes` runs the graph node by node on fake tensors, with the frontend's interpreter
(:mod:`graphc.frontend.interpreter`): every tensor has a shape, dtype and device but no storage, so a
model far larger than this machine's memory (a 1.5 B parameter GPT-2, built on the ``meta`` device) is
annotated without allocating its weights. For each node it runs the forward, and then the node's own
backward, on fresh leaf copies of its inputs, and records, in an :class:`FxNodeCost` that it also
leaves in ``node.meta["graphc_cost"]``:

* FLOPs of the forward and of the backward (:mod:`graphc.frontend.flops`); the backward computes exactly the
  gradients autograd needs (a gradient w.r.t. the input image is never needed, so the first
  convolution's backward only computes the weight gradient);
* bytes read (tensor inputs and parameters) and written (outputs);
* the tensors the node's backward saves (``saved_tensors_hooks``), by storage (a saved view keeps its
  whole storage alive; a storage saved twice counts once): a saved input is charged to the node that
  produced it (its output is kept alive for backward), a saved tensor created inside the op is
  charged to the node itself, a saved parameter to nobody (parameters are always alive); a workspace
  that the fake kernel makes empty (oneDNN's LSTM on the CPU) is measured on the real kernel
  (:mod:`graphc.frontend.workspaces`);
* parameters and buffers the node reads.

:func:`build_cost_graph` then groups fx nodes into cost-graph nodes (one per op, or one per call of a
leaf module) and sums their measurements; edges carry the bytes of the tensors crossing groups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx
from torch.utils._pytree import tree_map

from graphc.frontend.flops import FlopCounter
from graphc.frontend.interpreter import CALLS, NodeInterpreter, leaf_copy, tensors_in
from graphc.frontend.workspaces import WorkspaceCounter
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


def _nbytes(t: torch.Tensor) -> float:
    return float(t.numel() * t.element_size())


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class _Annotator(NodeInterpreter):
    """Runs the program on fake values, measuring each op (module docstring) into :attr:`costs` and
    ``node.meta["graphc_cost"]``.

    Overrides the interpreter's two hooks: ``fetch_args_kwargs_from_env`` gives an op fresh leaf copies
    of its tensor inputs (noting which fx node each stands for), :meth:`call` counts the op's FLOPs
    and saved tensors and takes its own backward.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, fake=True, isolate=True)
        self.costs: dict[str, FxNodeCost] = {}
        self.producer_of_storage: dict[int, str] = {}
        self.leaves: list[torch.Tensor] = []
        self.origin: dict[int, str | None] = {}  # storage of a leaf copy -> fx node it stands for
        self.kept: dict[str, dict[int, float]] = {}  # fx node -> its output storages a backward saves -> bytes

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n.op == "placeholder":
            self.costs[n.name] = _output_record(n.name, value)
        if n.op == "placeholder" or n.op in CALLS:
            for t in tensors_in(value):
                self.producer_of_storage.setdefault(_storage_key(t), n.name)
        if n.name in self.costs:
            n.meta["graphc_cost"] = self.costs[n.name]
        return value

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple, dict]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        if n.op not in CALLS:
            return args, kwargs
        inputs = {id(self.env[a]) for a in n.all_input_nodes}
        self.leaves, self.origin = [], {}

        def as_leaf(value: Any) -> Any:
            if not isinstance(value, torch.Tensor) or id(value) not in inputs:
                return value
            leaf = leaf_copy(value)
            self.leaves.append(leaf)
            key = _storage_key(leaf)
            self.origin[key] = self.producer_of_storage.get(key)  # a view's memory belongs to its base
            return leaf

        return tree_map(as_leaf, args), tree_map(as_leaf, kwargs)

    def call(self, n: fx.Node, args: tuple, kwargs: dict) -> Any:
        if n.op not in CALLS:
            return super().call(n, args, kwargs)
        record = FxNodeCost(name=n.name)
        for arg in n.all_input_nodes:
            value = self.env[arg]
            if not isinstance(value, torch.Tensor):
                continue
            if arg.op == "get_attr":
                (record.params if value.requires_grad else record.buffers)[arg.target] = _nbytes(value)
            else:
                record.input_bytes[arg.name] = record.input_bytes.get(arg.name, 0.0) + _nbytes(value)
        state = self.module_state(n.target) if n.op == "call_module" else {}
        for name, p in state.items():
            (record.params if p.requires_grad else record.buffers)[name] = _nbytes(p)

        saved: list[torch.Tensor] = []
        counter, workspaces = FlopCounter(), WorkspaceCounter()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), counter, workspaces:
            out = super().call(n, args, kwargs)
        record.fwd_flops = counter.flops
        record.internal_saved_bytes += workspaces.saved_bytes()
        outputs = tensors_in(out)
        out_record = _output_record(n.name, out)
        record.output_shapes, record.output_dtypes = out_record.output_shapes, out_record.output_dtypes
        record.output_bytes = out_record.output_bytes
        record.bytes_read = sum(record.input_bytes.values()) + sum(record.params.values()) + sum(
            record.buffers.values()
        )
        self._charge_saved_tensors(saved, outputs, record)

        grad_outputs = [o for o in outputs if o.requires_grad and o.grad_fn is not None]
        wrt = [leaf for leaf in self.leaves if leaf.requires_grad] + [p for p in state.values() if p.requires_grad]
        if grad_outputs and wrt:
            backward = FlopCounter()
            with backward:
                torch.autograd.grad(grad_outputs, wrt, [torch.empty_like(o) for o in grad_outputs], allow_unused=True)
            record.bwd_flops = backward.flops
        self.costs[n.name] = record
        return out

    def _charge_saved_tensors(self, saved: list[torch.Tensor], outputs: list[torch.Tensor], record: FxNodeCost) -> None:
        """Charge every distinct saved storage, whole (a saved view keeps all of it alive), to the node
        whose output it is (see the module docstring)."""
        output_storages = {_storage_key(o) for o in outputs}
        state_storages = {_storage_key(p) for p in self.state.values()}
        seen: set[int] = set()
        for t in saved:
            key = _storage_key(t)
            if key in seen or key in state_storages:
                continue
            seen.add(key)
            nbytes = float(t.untyped_storage().nbytes())
            if key in output_storages:
                self._keep_output_alive(record, key, nbytes)
            elif key in self.origin and self.origin[key] in self.costs:
                self._keep_output_alive(self.costs[self.origin[key]], key, nbytes)
            elif key not in self.origin:
                record.internal_saved_bytes += nbytes

    def _keep_output_alive(self, producer: FxNodeCost, key: int, nbytes: float) -> None:
        """A backward saves the storage ``key`` of ``producer``'s output: it stays alive until then. Each
        storage counts once however many backwards save it (or views of it), at most the output's bytes."""
        kept = self.kept.setdefault(producer.name, {})
        kept[key] = nbytes
        producer.output_saved_bytes = min(producer.output_bytes, sum(kept.values()))


def measure_fx_nodes(gm: fx.GraphModule, inputs: tuple) -> tuple[dict[str, FxNodeCost], dict[str, Any]]:
    """Run ``gm`` node by node on fake copies of ``inputs``; returns per-node costs and fake values.

    Each node's costs are also left in ``node.meta["graphc_cost"]``, its value's facts in
    ``node.meta["tensor_meta"]`` (:mod:`graphc.frontend.interpreter`). Errors inside an op are re-raised
    as :class:`TraceError` naming the fx node and its source line.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise TraceError(f"the traced graph takes {len(placeholders)} tensor inputs, got {len(inputs)}")
    annotator = _Annotator(gm)
    annotator.run(*inputs)
    return annotator.costs, {n.name: v for n, v in annotator.env.items()}


def _output_record(name: str, value: Any) -> FxNodeCost:
    outputs = tensors_in(value)
    return FxNodeCost(
        name=name,
        output_shapes=[list(t.shape) for t in outputs],
        output_dtypes=[str(t.dtype).removeprefix("torch.") for t in outputs],
        output_bytes=sum(_nbytes(t) for t in outputs),
    )


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
    """One edge per pair of groups a tensor crosses; a shared parameter flows from its owner (its bytes
    also in the edge's ``param_bytes``)."""
    crossing: dict[tuple[str, str], float] = {}
    params: dict[tuple[str, str], float] = {}
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
                params[owner, group] = params.get((owner, group), 0.0) + nbytes
    for (src, dst), nbytes in crossing.items():
        graph.add_edge(src, dst, EdgeData(bytes=nbytes, param_bytes=params.get((src, dst), 0.0)))
    for node in gm.graph.nodes:
        if node.op == "output":
            for arg in node.all_input_nodes:
                if arg.name in group_of:
                    graph.node(group_of[arg.name]).is_output = True
