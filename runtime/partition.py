"""Split a traced program into one program per device, with explicit communication at every cut edge.

Policy and mechanism are apart, as in ``torch.fx.passes.split_module``:

* :func:`fx_devices` is the policy of a plan: every fx node gets the device of the cost node that lists
  it in ``NodeData.fx_nodes``. Any other policy is a callback ``fx.Node -> device name``.
* :func:`split_by_device` is the mechanism. It walks the program once in a global run order and
  appends every node to its device's ``fx.Graph`` (``node.meta`` carried along). Where a value is
  needed on another device it appends a ``send`` on the producer's device right after the value is
  made, a ``recv`` on the consumer's device, and a ``wait`` there before the first op that reads it
  (:mod:`runtime.comm`). The ``recv`` ops, which only post receives, are then moved to the start of
  their program, so every receive is posted before its message is sent. A tensor goes to a device
  once, however many nodes there use it.

The rules the mechanism applies whatever the policy says:

* Parameters and buffers (``get_attr``) live on one device: the device of their first user in run
  order. A parameter used on several devices (tied weights) is owned by that device and sent to the
  others; in training its gradient comes back over the same edges and autograd sums it into the one
  ``.grad``. All ``get_attr`` nodes of one tensor count as one value.
* ``getitem`` of a multi-output op runs with the op (a tuple is never sent).
* The program's outputs are gathered on the device of the first output (the *output device*, where
  the loss is computed).
* Export's input-guard call ``_guards_fn`` is dropped: executors check their inputs themselves.

Replicated stages. A pipeline stage of a throughput plan may run data-parallel on several devices
(``Stage.devices``; the plan assigns its nodes to the first, the *stage device*). The program is split
by stage device as above; every other replica gets a copy of the stage device's program with its own
copy of the parameters and buffers (:meth:`DeviceProgram.replica`). Microbatch ``k`` of a stage on
``r`` replicas runs on replica ``k mod r`` (:meth:`PartitionedProgram.runner`; the round robin of
PipeDream's replicated stages, Narayanan et al., SOSP 2019), so a transfer of microbatch ``k`` goes
from the replica holding ``k`` in the producing stage to the one holding it in the consuming stage.
After the stage's last backward the replicas sum their parameter gradients (an all-reduce, an action
of the schedule: :mod:`runtime.schedule`), so every replica ends the step with the gradients, and after
the update the parameters, of the unreplicated plan. Batch-norm running statistics are each replica's
own (a replica sees only its microbatches). Under parameter servers (:func:`plan_servers`) the
replicas' gradients go to server devices instead, which run no program but are ranks of their own
(:attr:`PartitionedProgram.ranks`).

Deadlock freedom. Every device runs its nodes in the order of one global topological order, sends
never block, and a device waits only for a value whose producer comes earlier in that order; so the
device waiting on the earliest unfinished value always finds it sent. Waits on the values coming from
one device are kept in the order those values were sent (a wait also waits for the earlier ones), so
that each pair of devices exchanges messages first in, first out: the same in the backward pass, and
what NCCL, whose point-to-point messages carry no tags, needs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import operator
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import fx, nn
from torch.utils._pytree import TreeSpec, tree_flatten

from graphc.frontend.interpreter import is_input_guard
from graphc.frontend.tracing import TracedProgram
from graphc.ir.graph import Graph
from placement.inspect import describe_sync
from placement.plan import Plan
from placement.sync import ParameterServerSync
from runtime import comm
from runtime.errors import MismatchError
from runtime.values import InputSpec, ValueInfo, input_specs, propagate


@dataclass(frozen=True)
class Transfer:
    """One tensor moving from the device that makes it to one device that uses it.

    Attributes:
        tag: the transfer's number, unique in the partitioned program.
        value: the fx node (of the traced program) whose value moves.
        src, dst: the sending and the receiving device.
        shape, dtype: the tensor's, per microbatch.
        grad: in training, its gradient flows back from ``dst`` to ``src``.
    """

    tag: int
    value: str
    src: str
    dst: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    grad: bool

    @property
    def nbytes(self) -> int:
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * self.dtype.itemsize


@dataclass
class DeviceProgram:
    """The program one device runs.

    Attributes:
        device: the plan's device name.
        module: the ``fx.GraphModule``: the device's ops in run order with its communication ops; it
            holds the parameters and buffers the device owns. Its inputs are :attr:`inputs`; it returns
            the program's outputs on the output device and an empty tuple elsewhere.
        inputs: names of the traced program's inputs this device takes, in the module's order.
        parameters: parameters the device owns, by their name in the traced model.
        buffers: buffers the device owns, by their name in the traced model.
    """

    device: str
    module: fx.GraphModule
    inputs: list[str]
    parameters: dict[str, nn.Parameter] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def comm_nodes(self) -> list[fx.Node]:
        """The module's communication ops, in run order."""
        return [n for n in self.module.graph.nodes if n.op == "call_function" and n.target in comm.COMM_OPS]

    def _records(self) -> tuple:
        """The program as :func:`_rebuild_device_program`'s arguments: the graph as node records, the
        state as a plain module (``fx.GraphModule``'s own copying re-traces the code, which would run the
        communication ops); ``node.meta`` is not kept."""
        root = nn.Module()
        for name, child in self.module.named_children():
            root.add_module(name, child)
        for name, p in self.module._parameters.items():
            root.register_parameter(name, p)
        for name, b in self.module._buffers.items():
            root.register_buffer(name, b)
        path_of = {id(t): name for name, t in self.module.named_parameters(remove_duplicate=False)}
        path_of.update({id(t): name for name, t in self.module.named_buffers(remove_duplicate=False)})
        records = [
            (n.op, n.name, n.target, *fx.node.map_arg((n.args, n.kwargs), lambda a: _NodeRef(a.name)))
            for n in self.module.graph.nodes
        ]
        state = (
            {name: path_of[id(p)] for name, p in self.parameters.items()},
            {name: path_of[id(b)] for name, b in self.buffers.items()},
        )
        return (self.device, root, records, self.inputs, type(self.module).__name__, state)

    def replica(self, device: str) -> DeviceProgram:
        """The same program for ``device``, with its own copy of the parameters and buffers (a replica of
        a data-parallel stage)."""
        _, root, records, inputs, _, state = self._records()
        return _rebuild_device_program(device, copy.deepcopy(root), records, inputs, _class_name(device), state)


@dataclass
class PartitionedProgram:
    """A traced program split across devices (see the module docstring).

    Attributes:
        name: the program's name (the cost graph's, when partitioned from a plan).
        devices: the devices used, replicas included, in rank order (rank ``r`` of a distributed run runs
            ``devices[r]``).
        programs: device -> its :class:`DeviceProgram` (a replica's is a copy of its stage device's).
        transfers: every transfer, by tag order, between stage devices (:meth:`runner` says which replicas
            exchange it in a microbatch).
        schedule: the global run order of one microbatch as ``(stage device, node name in that device's
            module)``: running the nodes in this order in one process is a valid execution of all stages.
        output_device: the stage device that gathers the outputs and computes the loss (with its replicas,
            each for its microbatches).
        input_names: names of the traced program's inputs, in call order.
        input_specs: the shape and dtype of each input for one microbatch.
        out_spec: how the flat outputs nest into what the traced program returns.
        node_order: device -> the cost nodes it runs, in run order (``order`` for the simulator); empty
            when partitioned without a cost graph.
        cost_nodes: fx node name -> the cost node it belongs to (the names are the same in the device
            programs); empty when partitioned without a cost graph.
        microbatches: how many microbatches a step is split into.
        replicas: stage device -> every device of its data-parallel stage, the stage device first; only
            replicated stages are listed (see the module docstring).
        plan: the plan it was partitioned from, carrying the cost graph (without its cost model, and
            without its cluster unless its synchronisation needs it: a hierarchical all-reduce's islands,
            the parameter servers' shards); the executors make its schedules. None when partitioned
            without a plan (:func:`split_by_device`).
        aliases: another name of a parameter (a tied weight is reachable by several) -> the name it goes by
            in :attr:`DeviceProgram.parameters` (a cost graph may name it by either).
        servers: the plan's parameter servers (:class:`placement.sync.ParameterServerSync`): devices that
            run no program but hold parameters of replicated stages; each is a rank of its own
            (:attr:`ranks`).
    """

    name: str
    devices: list[str]
    programs: dict[str, DeviceProgram]
    transfers: list[Transfer]
    schedule: list[tuple[str, str]]
    output_device: str
    input_names: list[str]
    input_specs: list[InputSpec]
    out_spec: TreeSpec
    node_order: dict[str, list[str]] = field(default_factory=dict)
    cost_nodes: dict[str, str] = field(default_factory=dict)
    microbatches: int = 1
    replicas: dict[str, list[str]] = field(default_factory=dict)
    plan: Plan | None = None
    servers: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)

    def transfer(self, tag: int) -> Transfer:
        return self.transfers[tag]

    @property
    def ranks(self) -> list[str]:
        """The devices of a distributed run, rank ``r`` running ``ranks[r]``: :attr:`devices` and the
        :attr:`servers`, in natural order of names (as ``graphc run`` numbers a plan's devices)."""
        return sorted([*self.devices, *self.servers], key=device_sort_key)

    @property
    def stage_devices(self) -> list[str]:
        """The devices that are not a copy of another (one per stage, when pipelined), in rank order."""
        copies = {d for replicas in self.replicas.values() for d in replicas[1:]}
        return [d for d in self.devices if d not in copies]

    def stage_device(self, device: str) -> str:
        """The stage device whose program ``device`` runs (itself, unless it is a replica)."""
        return next((stage for stage, replicas in self.replicas.items() if device in replicas), device)

    def runner(self, device: str, microbatch: int) -> str:
        """The device that runs stage device ``device``'s program on ``microbatch``: replica ``k mod r``."""
        replicas = self.replicas.get(device)
        return replicas[microbatch % len(replicas)] if replicas else device

    def microbatches_of(self, device: str) -> list[int]:
        """The microbatches ``device`` runs, in order (all of them, unless it is one of ``r`` replicas)."""
        replicas = self.replicas.get(self.stage_device(device), [device])
        return list(range(replicas.index(device), self.microbatches, len(replicas)))

    def only(self, device: str) -> PartitionedProgram:
        """The same program holding only ``device``'s part (what one rank needs once its schedule is
        validated): the other devices' parameters are not kept alive by it (a server keeps none)."""
        return dataclasses.replace(self, programs={d: p for d, p in self.programs.items() if d == device})

    def bytes_moved(self) -> int:
        """Bytes of activations sent per microbatch (gradients of ``grad`` transfers come back on top)."""
        return sum(t.nbytes for t in self.transfers)

    def __str__(self) -> str:
        return self.describe()

    def describe(self, max_lines: int | None = None) -> str:
        """Every device's program as Python code, after a line of what it holds and exchanges; with
        ``max_lines``, each program is cut after that many lines."""
        lines = [
            (
                f"partitioned program {self.name!r}: {len(self.devices)} device(s), {len(self.transfers)} transfer(s) "
                f"({_human_bytes(self.bytes_moved())} per microbatch), {self.microbatches} microbatch(es), "
                f"outputs and loss on {self.output_device}"
            )
        ]
        for stage, replicas in self.replicas.items():
            runs = "; ".join(f"{d}: microbatches {', '.join(map(str, self.microbatches_of(d)))}" for d in replicas)
            lines.append(
                f"stage of {stage} replicated on {len(replicas)} devices ({runs}); {self._gradient_sync()}; "
                f"transfers name {stage}, and each microbatch's go to or from the replica that runs it"
            )
        for device in self.devices:
            if self.stage_device(device) != device:
                lines += ["", f"── {device}: a replica of {self.stage_device(device)}, running the same program"]
                continue
            p = self.programs[device]
            sends = sum(1 for t in self.transfers if t.src == device)
            recvs = sum(1 for t in self.transfers if t.dst == device)
            ops = sum(1 for n in p.module.graph.nodes if n.op in ("call_function", "call_method", "call_module"))
            param_bytes = sum(q.numel() * q.element_size() for q in p.parameters.values())
            lines.append("")
            lines.append(
                f"── {device}: {ops - sends - 2 * recvs} op(s), {sends} send(s), {recvs} receive(s), "
                f"{len(p.parameters)} parameter(s) ({_human_bytes(param_bytes)}), inputs: {', '.join(p.inputs) or '-'}"
            )
            code = p.module.code.strip("\n").splitlines()
            if max_lines is not None and len(code) > max_lines:
                code = code[:max_lines] + [f"    ... {len(code) - max_lines} more line(s)"]
            lines.extend(code)
        return "\n".join(lines)

    def _gradient_sync(self) -> str:
        """How the replicas combine their gradients, in words (the plan's sync)."""
        return "gradients all-reduced" if self.plan is None else f"gradients by {describe_sync(self.plan.sync)}"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# -- policy: the plan ---------------------------------------------------------------------------------


def partition(program: TracedProgram | fx.GraphModule, plan: Plan, graph: Graph | None = None) -> PartitionedProgram:
    """Split a traced program across the devices of ``plan``.

    ``graph`` is the cost graph the plan was made for (default: the traced program's own). A pipelined
    plan (``plan.microbatches = m > 1``) runs a program traced at the microbatch size: trace the model
    on one microbatch and pass the full-batch cost graph the plan was made for.

    Refused before anything runs with :class:`~graphc.ir.errors.MismatchError`, saying why: a plan
    made for another graph, a cost graph naming fx nodes the program lacks or with other ops, inputs
    of other shapes, an execution order that contradicts the dependencies, a replicated stage the
    runtime cannot run (:func:`stage_replicas`).
    """
    gm = program.graph_module if isinstance(program, TracedProgram) else program
    if graph is None:
        if not isinstance(program, TracedProgram):
            raise MismatchError("partition(graph_module, plan) needs the cost graph the plan was made for: pass graph=")
        graph = program.graph
    plan.check_matches(graph)
    replicas = stage_replicas(plan)
    devices = fx_devices(gm, plan, graph)
    specs = _microbatch_input_specs(gm, graph, plan.microbatches)
    values = propagate(gm, specs)
    cost_of = {f: node.name for node in graph.nodes() for f in node.fx_nodes}
    parts = split_by_device(
        gm,
        lambda node: devices[node.name],
        values=values,
        input_specs=specs,
        order=_run_order(gm, graph, plan),
        cost_of=cost_of,
        name=graph.name,
        microbatches=plan.microbatches,
    )
    needs_cluster = isinstance(plan.sync, ParameterServerSync) or plan.sync.algorithm == "hierarchical"
    parts.plan = dataclasses.replace(plan, graph=graph, cluster=plan.cluster if needs_cluster else None, cost_model=None)
    parts.servers = plan_servers(plan)
    return replicate_stages(parts, replicas)


def plan_servers(plan: Plan) -> list[str]:
    """The parameter servers a run of ``plan`` starts: those of its :class:`ParameterServerSync` when it
    replicates a stage (else none), checked to run no node."""
    if not isinstance(plan.sync, ParameterServerSync) or not any(len(st.devices) > 1 for st in plan.stages):
        return []
    computing = sorted(set(plan.devices_used()).intersection(plan.sync.servers))
    if computing:
        raise MismatchError(
            f"parameter server(s) {computing} also run nodes of the plan: a server only holds parameters; re-plan "
            "with servers that run no node"
        )
    return list(plan.sync.servers)


def plan_ranks(plan: Plan) -> list[str]:
    """The devices a distributed run of ``plan`` gives a rank each, in rank order: the devices that run
    nodes and the parameter servers, in natural order of names (:attr:`PartitionedProgram.ranks`)."""
    return sorted([*plan.devices_used(), *plan_servers(plan)], key=device_sort_key)


def stage_replicas(plan: Plan) -> dict[str, list[str]]:
    """Stage device -> the devices of its replicated stage (the stage device first), for the stages of
    ``plan`` on more than one device, checked to be what the runtime runs: the plan assigns the stage's
    nodes to its first device, a replica runs nothing else, and every replica gets a microbatch."""
    replicas: dict[str, list[str]] = {}
    owner: dict[str, int] = {}
    used = set(plan.assignment.values())
    for stage in plan.stages:
        if len(stage.devices) < 2:
            continue  # the assignment says where an unreplicated stage runs
        if plan.microbatches < len(stage.devices):
            raise MismatchError(
                f"stage {stage.index} is replicated on {len(stage.devices)} devices but a step has only "
                f"{plan.microbatches} microbatch(es); replica k runs microbatches k, k + r, ...: use at least "
                f"{len(stage.devices)} microbatches, or fewer replicas"
            )
        elsewhere = sorted({plan.assignment[n] for n in stage.nodes if n in plan.assignment} - {stage.devices[0]})
        if elsewhere:
            raise MismatchError(
                f"stage {stage.index} runs on {stage.devices}, but the plan assigns some of its nodes to {elsewhere}; "
                "a replicated stage's nodes go on its first device (placement.pipeline makes such plans)"
            )
        for device in stage.devices:
            if owner.setdefault(device, stage.index) != stage.index:
                raise MismatchError(
                    f"device {device} serves stages {owner[device]} and {stage.index}; a device runs one stage: re-plan"
                )
        taken = sorted(used.intersection(stage.devices[1:]))
        if taken:
            raise MismatchError(
                f"{taken} replicate stage {stage.index} (on {stage.devices[0]}) but also run nodes of another; re-plan"
            )
        replicas[stage.devices[0]] = list(stage.devices)
    return replicas


def replicate_stages(program: PartitionedProgram, replicas: dict[str, list[str]]) -> PartitionedProgram:
    """``program`` with each stage device of ``replicas`` copied to its other devices (module docstring)."""
    if not replicas:
        return program
    unknown = sorted(set(replicas) - set(program.devices))
    if unknown:
        raise MismatchError(f"replicated stage device(s) {unknown} run nothing in the program; re-plan")
    programs = dict(program.programs)
    for stage, devices in replicas.items():
        for device in devices[1:]:
            programs[device] = program.programs[stage].replica(device)
    return dataclasses.replace(
        program,
        devices=sorted(programs, key=device_sort_key),
        programs=programs,
        replicas={stage: list(devices) for stage, devices in replicas.items()},
    )


def fx_devices(gm: fx.GraphModule, plan: Plan, graph: Graph) -> dict[str, str]:
    """The plan's policy: fx node name -> device, for every placeholder and op of ``gm``.

    Raises :class:`MismatchError` when the cost graph names fx nodes ``gm`` lacks, gives them other
    ops, or leaves an op of ``gm`` without a device.
    """
    nodes = {n.name: n for n in gm.graph.nodes}
    op_level = graph.meta.get("granularity") == "op"  # a cost node is then one op, named as the fx node's
    where: dict[str, str] = {}
    for cost_node in graph.nodes():
        for name in cost_node.fx_nodes:
            fx_node = nodes.get(name)
            if fx_node is None:
                raise MismatchError(
                    f"cost node {cost_node.name!r} stands for fx node {name!r}, which the traced program lacks: "
                    "the plan's graph was traced from another model; re-trace and re-plan"
                )
            if op_level and name == cost_node.name and cost_node.op not in ("input", _op_label(fx_node)):
                raise MismatchError(
                    f"cost node {cost_node.name!r} is op {cost_node.op!r}, but fx node {name!r} of the program is "
                    f"{_op_label(fx_node)!r}: the plan's graph was traced from another model; re-trace and re-plan"
                )
            where[name] = plan.assignment[cost_node.name]
    uncovered = [n.name for n in gm.graph.nodes if _is_computation(n) and n.name not in where]
    if uncovered:
        raise MismatchError(
            f"the cost graph {graph.name!r} gives no device to fx node(s) {uncovered[:5]} of the program: "
            "it was not traced from this program (an imported graph has no fx nodes); trace the model with graphc.trace"
        )
    return where


def _op_label(node: fx.Node) -> str:
    if node.op == "call_function":
        return str(node.target) if isinstance(node.target, torch._ops.OpOverload) else getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_module":
        return type(node.graph.owning_module.get_submodule(node.target)).__name__
    return node.op


def _is_computation(node: fx.Node) -> bool:
    """Placeholders and ops: the nodes a policy places (get_attr, output and the guard follow rules)."""
    return node.op in ("placeholder", "call_function", "call_method", "call_module") and not is_input_guard(node)


def _microbatch_input_specs(gm: fx.GraphModule, graph: Graph, microbatches: int) -> list[InputSpec]:
    """The program's input shapes, checked against the plan's graph: equal, or the graph's batch split
    into ``microbatches``."""
    graph_inputs = {n.fx_nodes[0]: n for n in graph.nodes() if n.op == "input" and n.fx_nodes}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    traced = input_specs(gm)
    specs = []
    for i, node in enumerate(placeholders):
        cost_node = graph_inputs.get(node.name)
        if cost_node is None or not cost_node.output_shapes:
            raise MismatchError(f"the cost graph {graph.name!r} has no input node for the program's input {node.name!r}")
        full = tuple(cost_node.output_shapes[0])
        dtype = getattr(torch, cost_node.output_dtypes[0]) if cost_node.output_dtypes else torch.float32
        if not full or full[0] % microbatches:
            raise MismatchError(
                f"input {node.name!r} of shape {list(full)} cannot be split into {microbatches} equal microbatches"
            )
        expected = (full[0] // microbatches, *full[1:])
        spec = traced[i] if traced is not None else InputSpec(expected, dtype)
        if spec.shape != expected:
            hint = (
                f"a plan with {microbatches} microbatches runs a program traced on one microbatch, of shape {list(expected)}"
                if microbatches > 1
                else "re-trace the model with the inputs the plan was made for"
            )
            raise MismatchError(
                f"input {node.name!r}: the plan's graph was traced with shape {list(full)}, the program with "
                f"{list(spec.shape)}; {hint}"
            )
        specs.append(spec)
    return specs


def _run_order(gm: fx.GraphModule, graph: Graph, plan: Plan) -> list[str]:
    """fx node names in run order: the program's own order, or one that keeps the plan's per-device
    orders (a topological order of the data edges plus each device's sequence)."""
    nodes = [n for n in gm.graph.nodes if _is_computation(n)]
    if not plan.order:
        return [n.name for n in nodes]
    position = {n.name: i for i, n in enumerate(nodes)}
    dag = nx.DiGraph()
    for cost_node in graph.nodes():
        dag.add_node(cost_node.name)
    dag.add_edges_from((u, v) for u, v, _ in graph.edges())
    for seq in plan.order.values():
        dag.add_edges_from(itertools.pairwise(seq))
    first = {c.name: min((position[f] for f in c.fx_nodes if f in position), default=-1) for c in graph.nodes()}
    try:
        cost_order = list(nx.lexicographical_topological_sort(dag, key=first.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = [u for u, _ in nx.find_cycle(dag)]
        raise MismatchError(
            f"the plan's execution order contradicts the data dependencies (cycle through {cycle[:6]}): running "
            "it would deadlock; re-plan, or drop the plan's order"
        ) from None
    fx_of = {c.name: sorted((f for f in c.fx_nodes if f in position), key=position.__getitem__) for c in graph.nodes()}
    return [f for c in cost_order for f in fx_of[c]]


def device_sort_key(name: str) -> list[Any]:
    """``cpu2`` before ``cpu10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# -- mechanism ------------------------------------------------------------------------------------------


def split_by_device(
    gm: fx.GraphModule,
    device_of: Callable[[fx.Node], str],
    *,
    values: dict[str, ValueInfo] | None = None,
    input_specs: Sequence[InputSpec] | None = None,
    order: Sequence[str] | None = None,
    cost_of: dict[str, str] | None = None,
    name: str = "program",
    microbatches: int = 1,
) -> PartitionedProgram:
    """Split ``gm`` by ``device_of`` (a device name for every placeholder and op); see the module docstring.

    ``values`` are the facts of :func:`runtime.values.propagate` (computed from ``input_specs``, or the
    shapes the program was traced with, when not given). ``order`` is the run order of placeholders and
    ops (default: the program's). ``cost_of`` maps fx node names to cost nodes, to report each device's
    order of cost nodes. Devices are ranked in the natural order of their names (``cpu2`` before ``cpu10``).
    """
    specs = list(input_specs) if input_specs is not None else input_specs_or_fail(gm)
    values = values if values is not None else propagate(gm, specs)
    return _Splitter(gm, device_of, values, specs, order, cost_of or {}, name, microbatches).run()


def input_specs_or_fail(gm: fx.GraphModule) -> list[InputSpec]:
    specs = input_specs(gm)
    if specs is None:
        raise MismatchError("the program records no input shapes (traced with torch.fx): pass input_specs=")
    return specs


class _Splitter:
    """One pass over the program in run order, appending to per-device graphs (see module docstring)."""

    def __init__(
        self,
        gm: fx.GraphModule,
        device_of: Callable[[fx.Node], str],
        values: dict[str, ValueInfo],
        specs: list[InputSpec],
        order: Sequence[str] | None,
        cost_of: dict[str, str],
        name: str,
        microbatches: int,
    ) -> None:
        self.gm, self.values, self.specs, self.cost_of = gm, values, specs, cost_of
        self.name, self.microbatches = name, microbatches
        by_name = {n.name: n for n in gm.graph.nodes}
        computations = [n for n in gm.graph.nodes if _is_computation(n)]
        if order is None:
            self.order = computations
        else:
            missing = sorted({n.name for n in computations} - set(order))
            if missing or len(order) != len(computations):
                raise MismatchError(f"the run order must list every placeholder and op once; missing {missing[:5]}")
            self.order = [by_name[n] for n in order]
        self.output = next(n for n in gm.graph.nodes if n.op == "output")
        self.device: dict[fx.Node, str] = {}
        for node in self.order:
            producer = node.args[0] if node.target is operator.getitem else None
            if isinstance(producer, fx.Node) and not values[producer.name].is_tensor and producer in self.device:
                self.device[node] = self.device[producer]  # a getitem runs with its multi-output op
            else:
                self.device[node] = device_of(node)
        self._canonical_attrs()
        leaves, out_tree = tree_flatten(self.output.args[0])
        user_spec = getattr(gm, "_out_spec", None)  # export programs return tree_unflatten(flat, _out_spec)
        self.out_spec = user_spec if user_spec is not None else out_tree
        used = set(self.device.values())
        first = next((self._value(leaf) for leaf in leaves if isinstance(leaf, fx.Node)), None)
        self.output_device = self.device.get(first) or min(used, key=device_sort_key)
        for attr, users in self.attr_users.items():  # owned by the device of the first user
            self.device.setdefault(attr, self.output_device if users[0] is self.output else self.device[users[0]])
        self.devices = sorted(used | {self.output_device}, key=device_sort_key)
        self.out_leaves = leaves
        self.graphs = {d: fx.Graph() for d in self.devices}
        self.env: dict[str, dict[fx.Node, fx.Node]] = {d: {} for d in self.devices}
        self.attrs: dict[str, dict[str, Any]] = {d: {} for d in self.devices}
        self.inputs: dict[str, list[str]] = {d: [] for d in self.devices}
        self.transfers: list[Transfer] = []
        self.incoming: dict[tuple[fx.Node, str], fx.Node] = {}  # (value, dst) -> its recv on dst
        self.unwaited: dict[tuple[str, str], list[fx.Node]] = defaultdict(list)  # (src, dst) -> values, FIFO
        self.schedule: list[tuple[str, str]] = []

    # -- where things live ----------------------------------------------------------------------
    def _canonical_attrs(self) -> None:
        """One value per parameter or buffer however many get_attr nodes name it; owned by the device
        of its first user in run order."""
        self.canonical: dict[fx.Node, fx.Node] = {}
        first_of_object: dict[int, fx.Node] = {}
        for node in self.gm.graph.nodes:
            if node.op == "get_attr" and node.users:
                obj = operator.attrgetter(node.target)(self.gm)
                self.canonical[node] = first_of_object.setdefault(id(obj), node)
        self.attr_users: dict[fx.Node, list[fx.Node]] = defaultdict(list)
        for node in [*self.order, self.output]:
            for arg in node.all_input_nodes:
                if arg.op == "get_attr":
                    self.attr_users[self.canonical[arg]].append(node)

    def _value(self, node: fx.Node) -> fx.Node:
        return self.canonical.get(node, node)

    def _consumer_devices(self, value: fx.Node) -> list[str]:
        users = self.attr_users[value] if value.op == "get_attr" else list(value.users)
        found = set()
        for user in users:
            if user.op == "output":
                found.add(self.output_device)
            elif not is_input_guard(user):
                found.add(self.device[user])
        found.discard(self.device[value])
        return [d for d in self.devices if d in found]

    # -- the pass -------------------------------------------------------------------------------
    def run(self) -> PartitionedProgram:
        for node in self.order:
            self._emit(node)
        self._emit_output()
        return self._finish()

    def _emit(self, node: fx.Node) -> None:
        device = self.device[node]
        graph = self.graphs[device]
        if node.op == "placeholder":
            new = graph.placeholder(node.name)
            self.inputs[device].append(node.name)
        elif node.op == "get_attr":
            new = graph.create_node("get_attr", node.target, name=node.name)
            self.attrs[device][node.target] = operator.attrgetter(node.target)(self.gm)
        else:
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda a: self._local(a, device, node))
            if node.op == "call_module":
                self.attrs[device][node.target] = self.gm.get_submodule(node.target)
            new = graph.create_node(node.op, node.target, args, kwargs, name=node.name)
        new.meta = dict(node.meta)
        new.meta["graphc_device"] = device
        self.env[device][node] = new
        self.schedule.append((device, new.name))
        for dst in self._consumer_devices(node):
            self._emit_transfer(node, device, dst)

    def _emit_transfer(self, value: fx.Node, src: str, dst: str) -> None:
        info = self.values.get(value.name) if value.op != "get_attr" else self._attr_info(value)
        if info is None or not info.is_tensor:
            raise MismatchError(
                f"fx node {value.name!r} on {src} gives a {'non-tensor' if info else 'unknown'} value that {dst} "
                "uses; only tensors can cross devices: place its users on the same device"
            )
        tag = len(self.transfers)
        transfer = Transfer(tag, value.name, src, dst, info.shape, info.dtype, info.requires_grad)
        self.transfers.append(transfer)
        send = self.graphs[src].create_node(
            "call_function",
            comm.send,
            (self.env[src][value],),
            {"to": dst, "tag": tag, "grad": transfer.grad},
            name=f"send_{value.name}",
        )
        self.schedule.append((src, send.name))
        recv = self.graphs[dst].create_node(
            "call_function",
            comm.recv,
            (),
            {"src": src, "tag": tag, "shape": info.shape, "dtype": info.dtype, "grad": transfer.grad},
            name=f"recv_{value.name}",
        )
        self.schedule.append((dst, recv.name))
        self.incoming[(value, dst)] = recv
        self.unwaited[(src, dst)].append(value)

    def _attr_info(self, node: fx.Node) -> ValueInfo:
        obj = operator.attrgetter(node.target)(self.gm)
        if not isinstance(obj, torch.Tensor):
            return ValueInfo(False)
        return ValueInfo(True, tuple(obj.shape), obj.dtype, bool(obj.requires_grad))

    def _local(self, arg: fx.Node, device: str, user: fx.Node) -> fx.Node:
        """``arg``'s value as a node of ``device``'s graph, waiting for its transfer if it comes from elsewhere."""
        value = self._value(arg)
        owner = self.device[value]
        if value.op == "get_attr" and value not in self.env[owner]:
            self._emit(value)  # a parameter or buffer appears where it is first used
        env = self.env[device]
        if value in env:
            return env[value]
        if (value, device) not in self.incoming:
            raise MismatchError(
                f"the run order runs {user.name!r} on {device} before its input {value.name!r} is made: "
                "pass an order that is topological"
            )
        queue = self.unwaited[(owner, device)]
        while value not in env:  # first in, first out per pair of devices
            earlier = queue.pop(0)
            recv = self.incoming[(earlier, device)]
            wait = self.graphs[device].create_node("call_function", comm.wait, (recv,), {}, name=earlier.name)
            wait.meta = dict(earlier.meta)
            wait.meta["graphc_device"] = device
            env[earlier] = wait
            self.schedule.append((device, wait.name))
        return env[value]

    def _emit_output(self) -> None:
        device = self.output_device
        flat = [self._local(leaf, device, self.output) if isinstance(leaf, fx.Node) else leaf for leaf in self.out_leaves]
        for d in self.devices:
            new = self.graphs[d].output(tuple(flat) if d == device else ())
            self.schedule.append((d, new.name))

    # -- the result -----------------------------------------------------------------------------
    def _finish(self) -> PartitionedProgram:
        param_names = {id(p): n for n, p in self.gm.named_parameters()}
        buffer_names = {id(b): n for n, b in self.gm.named_buffers()}
        programs = {}
        for d in self.devices:
            _post_receives_first(self.graphs[d])
            root = nn.Module()
            owned_params: dict[str, nn.Parameter] = {}
            owned_buffers: dict[str, torch.Tensor] = {}
            for target, obj in self.attrs[d].items():
                _install(root, target, obj)
                tensors = obj.named_parameters() if isinstance(obj, nn.Module) else [("", obj)]
                for _, t in tensors:
                    if id(t) in param_names:
                        owned_params[param_names[id(t)]] = t
                if isinstance(obj, nn.Module):
                    for _, b in obj.named_buffers():
                        owned_buffers[buffer_names[id(b)]] = b
                elif id(obj) in buffer_names:
                    owned_buffers[buffer_names[id(obj)]] = obj
            for target in self.attrs[d]:
                _check_unshared_module(self.attrs, d, target)
            module = fx.GraphModule(root, self.graphs[d], class_name=_class_name(d))
            programs[d] = DeviceProgram(d, module, self.inputs[d], owned_params, owned_buffers)
        node_order: dict[str, list[str]] = {}
        if self.cost_of:
            for d in self.devices:
                seen = dict.fromkeys(
                    self.cost_of[n.name] for n in self.order if self.device[n] == d and n.name in self.cost_of
                )
                node_order[d] = list(seen)
        return PartitionedProgram(
            name=self.name,
            devices=self.devices,
            programs=programs,
            transfers=self.transfers,
            schedule=self.schedule,
            output_device=self.output_device,
            input_names=[n.name for n in self.gm.graph.nodes if n.op == "placeholder"],
            input_specs=self.specs,
            out_spec=self.out_spec,
            node_order=node_order,
            cost_nodes=dict(self.cost_of),
            microbatches=self.microbatches,
            aliases={
                alias: param_names[id(p)]
                for alias, p in self.gm.named_parameters(remove_duplicate=False)
                if param_names[id(p)] != alias
            },
        )


@dataclass(frozen=True)
class _NodeRef:
    name: str


def _rebuild_device_program(
    device: str, root: nn.Module, records: list[tuple], inputs: list[str], class_name: str, state: tuple[dict, dict]
) -> DeviceProgram:
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for op, name, target, args, kwargs in records:
        args, kwargs = fx.node.map_aggregate((args, kwargs), lambda a: env[a.name] if isinstance(a, _NodeRef) else a)
        env[name] = graph.create_node(op, target, args, kwargs, name=name)
    module = fx.GraphModule(root, graph, class_name=class_name)
    params, buffers = state
    return DeviceProgram(
        device,
        module,
        inputs,
        {name: module.get_parameter(path) for name, path in params.items()},
        {name: module.get_buffer(path) for name, path in buffers.items()},
    )


def _class_name(device: str) -> str:
    return f"Program_{re.sub(r'[^0-9a-zA-Z_]', '_', device)}"


def _post_receives_first(graph: fx.Graph) -> None:
    """Move every ``recv`` to the start of the program, after the inputs, keeping their order: a device
    posts all its receives when it starts a microbatch, so a sender never waits for the receiver to get
    there (gloo hands a message over only once its receive is posted)."""
    nodes = list(graph.nodes)
    receives = [n for n in nodes if n.op == "call_function" and n.target is comm.recv]
    posted = set(receives)
    anchor = next(n for n in nodes if n.op != "placeholder" and n not in posted)  # the output, at least
    for node in receives:
        anchor.prepend(node)


def _install(root: nn.Module, target: str, obj: Any) -> None:
    """Put ``obj`` at the dotted path ``target`` of ``root``, creating empty modules on the way; tensors
    keep their kind (parameter or buffer) so that ``Module.to`` moves them."""
    *path, leaf = target.split(".")
    module = root
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    if isinstance(obj, nn.Module):
        module.add_module(leaf, obj)
    elif isinstance(obj, nn.Parameter):
        module.register_parameter(leaf, obj)
    elif isinstance(obj, torch.Tensor):
        module.register_buffer(leaf, obj)
    else:
        setattr(module, leaf, obj)


def _check_unshared_module(attrs: dict[str, dict[str, Any]], device: str, target: str) -> None:
    obj = attrs[device][target]
    if not isinstance(obj, nn.Module):
        return
    for other, objs in attrs.items():
        if other != device and any(o is obj for o in objs.values()):
            raise MismatchError(
                f"module {target!r} is called on {device} and on {other}; a called module cannot be split across "
                "devices: place its calls on one device, or trace with torch.export so its ops are separate"
            )
