"""runtime.partition: per-device programs with explicit communication, and refusing what does not match."""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc
from graphc import zoo
from graphc.ir.graph import Graph
from graphc.zoo import zoo_loss
from placement.plan import PlanMismatchError
from runtime import (
    LocalExecutor,
    comm,
    contiguous_plan,
    partition,
    plan_from_assignment,
    single_device_plan,
)
from runtime.errors import ProgramMismatch
from runtime.partition import split_by_device
from runtime.rebuild import partition_model
from runtime.testing import eager_run, relative_difference

DEVICES = ["cpu0", "cpu1", "cpu2"]


def build(name: str, batch: int = 2, **knobs) -> zoo.ZooModel:
    if name != "resnet50":
        knobs.setdefault("dropout", 0.0)
    return zoo.build(name, batch_size=batch, size="small", **knobs)


@functools.cache
def traced(name: str, batch: int = 2) -> tuple[zoo.ZooModel, graphc.TracedProgram]:
    zm = build(name, batch)
    return zm, graphc.trace(zm.model, zm.example_inputs, name=name, granularity="op")


def place(graph: Graph, device_of) -> dict[str, str]:
    return {n: device_of(n) for n in graph.node_names()}


def test_programs_print_with_their_communication_ops():
    _, program = traced("gpt2")
    parts = partition(program, contiguous_plan(program.graph, ["cpu0", "cpu1"]))
    text = str(parts)
    assert "── cpu0" in text and "── cpu1" in text
    assert "runtime_comm_send(" in text and "to = 'cpu1'" in text
    assert "runtime_comm_recv(src = 'cpu0'" in text and "runtime_comm_wait(recv_" in text
    assert f"{len(parts.transfers)} transfer(s)" in text.splitlines()[0]


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_cut_edge_has_one_transfer_per_consuming_device(data):
    """ResNet's blocks feed a value to a branch and to the residual sum, often on the same device."""
    _, program = traced("resnet50")
    names = program.graph.node_names()
    choice = data.draw(st.lists(st.sampled_from(DEVICES), min_size=len(names), max_size=len(names)))
    plan = plan_from_assignment(program.graph, dict(zip(names, choice)))
    parts = partition(program, plan)
    device_of_fx = {f: plan.assignment[c.name] for c in program.graph.nodes() for f in c.fx_nodes}
    pairs = Counter((t.value, t.dst) for t in parts.transfers)
    assert max(pairs.values(), default=1) == 1
    for node in program.graph_module.graph.nodes:
        if node.name not in device_of_fx:
            continue
        for user in node.users:
            dst = parts.output_device if user.op == "output" else device_of_fx.get(user.name)
            if dst is not None and dst != device_of_fx[node.name]:
                assert (node.name, dst) in pairs
    for t in parts.transfers:  # the send is on the producer, receive and wait on the consumer
        sends = [n for n in parts.programs[t.src].comm_nodes() if n.target is comm.send and n.kwargs["tag"] == t.tag]
        recvs = [n for n in parts.programs[t.dst].comm_nodes() if n.target is comm.recv and n.kwargs["tag"] == t.tag]
        assert len(sends) == 1 and len(recvs) == 1 and len(recvs[0].users) == 1


def test_tied_weight_is_owned_by_one_device_and_its_gradient_summed():
    zm, program = traced("gpt2")
    head = next(n.name for n in program.graph.nodes() if n.op == "aten.linear.default" and not n.params)
    plan = plan_from_assignment(program.graph, place(program.graph, lambda n: "cpu1" if n == head else "cpu0"))
    parts = partition(program, plan)
    owners = [d for d, p in parts.programs.items() if "wte.weight" in p.parameters]
    assert owners == ["cpu0"]
    tied = [t for t in parts.transfers if t.value == "lm_head_weight"]
    assert len(tied) == 1 and tied[0].grad and (tied[0].src, tied[0].dst) == ("cpu0", "cpu1")
    result = LocalExecutor(parts, loss_fn=zoo_loss(zm)).step(zm.example_inputs, zm.targets)
    ref = build("gpt2")
    eager = eager_run(ref.model, ref.model.named_parameters(), ref.example_inputs, ref.targets, zoo_loss(ref))
    grads = {n: p.grad for n, p in parts.programs["cpu0"].parameters.items()}
    grads.update({n: p.grad for n, p in parts.programs["cpu1"].parameters.items()})
    assert relative_difference(grads, eager.grads)[0] < 1e-5
    assert result.loss == pytest.approx(eager.losses[0], rel=1e-6)


def test_batch_norm_state_lives_with_its_op():
    _, program = traced("resnet50")
    names = program.graph.node_names()
    plan = plan_from_assignment(program.graph, {n: DEVICES[i % 3] for i, n in enumerate(names)})
    parts = partition(program, plan)
    for node in program.graph.nodes():
        for param in node.params:
            owner = [d for d, p in parts.programs.items() if param in p.parameters]
            assert owner == [plan.assignment[node.name]]
    buffers = [b for p in parts.programs.values() for b in p.buffers]
    assert len(buffers) == len(set(buffers)) == len(dict(program.graph_module.named_buffers()))


def test_a_callback_policy_splits_any_program():
    """The mechanism does not need a plan: any fx node -> device callback works."""
    zm, program = traced("alexnet")
    parts = split_by_device(program.graph_module, lambda node: "cpu1" if "linear" in node.name else "cpu0")
    assert parts.devices == ["cpu0", "cpu1"] and parts.output_device == "cpu1"
    out = LocalExecutor(parts).forward(zm.example_inputs)
    torch.testing.assert_close(out, program(*zm.example_inputs))


def test_a_model_rebuilt_from_its_plan_partitions_the_same_way():
    """Every rank builds its partition from the zoo name and the plan (runtime.rebuild.partition_model):
    two builds must agree on the schedule, the transfers and the numbers, pipelined or not."""
    zm, program = traced("gpt2")
    names = program.graph.node_names()
    spread = plan_from_assignment(program.graph, {n: DEVICES[i % 3] for i, n in enumerate(names)})
    for plan in (spread, contiguous_plan(program.graph, DEVICES, microbatches=2)):
        first, second = (build("gpt2") for _ in range(2))
        parts = [partition_model(b.model, b.example_inputs, plan, granularity="op", name="gpt2") for b in (first, second)]
        assert parts[0].schedule == parts[1].schedule and parts[0].transfers == parts[1].transfers
        assert parts[0].microbatches == plan.microbatches
        outputs = [LocalExecutor(p).forward(zm.example_inputs) for p in parts]
        torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


# -- refusals, before anything runs ----------------------------------------------------------------


def test_a_plan_for_another_model_is_refused():
    _, gpt2 = traced("gpt2")
    _, alexnet = traced("alexnet")
    with pytest.raises(PlanMismatchError, match="plan nodes not in the graph"):
        partition(alexnet, single_device_plan(gpt2.graph))


def test_a_plan_for_other_shapes_is_refused():
    _, small_batch = traced("gpt2", 2)
    _, large_batch = traced("gpt2", 4)
    with pytest.raises(PlanMismatchError, match="other ops, shapes or edges"):
        partition(large_batch, single_device_plan(small_batch.graph))


def test_a_cost_graph_naming_unknown_fx_nodes_is_refused():
    _, program = traced("alexnet")
    doc = program.graph.to_dict()
    doc["nodes"][3]["fx_nodes"] = ["no_such_node"]
    wrong = Graph.from_dict(doc)
    with pytest.raises(ProgramMismatch, match="no_such_node"):
        partition(program.graph_module, single_device_plan(wrong), wrong)


def test_inputs_of_other_shapes_are_refused_with_the_reason():
    zm, program = traced("alexnet")
    executor = LocalExecutor(partition(program, single_device_plan(program.graph)), loss_fn=zoo_loss(zm))
    images = torch.zeros(3, 3, 64, 64)
    with pytest.raises(ProgramMismatch, match=r"input 'images'.*\[2, 3, 64, 64\].*got \[3, 3, 64, 64\]"):
        executor.step(images, zm.targets)


def test_a_pipelined_plan_needs_a_program_traced_on_one_microbatch():
    _, program = traced("gpt2", 4)
    plan = contiguous_plan(program.graph, ["cpu0", "cpu1"], microbatches=2)
    with pytest.raises(ProgramMismatch, match="traced on one microbatch, of shape \\[2, 16\\]"):
        partition(program, plan)
    zm = build("gpt2", 4)
    micro = graphc.trace(zm.model, (zm.example_inputs[0][:2],), name="gpt2", granularity="op")
    assert partition(micro.graph_module, plan, program.graph).microbatches == 2


def test_an_order_that_contradicts_the_dependencies_is_refused():
    _, program = traced("alexnet")
    plan = contiguous_plan(program.graph, ["cpu0", "cpu1"])
    plan.order = {d: list(reversed(plan.nodes_on(d))) for d in ("cpu0", "cpu1")}
    with pytest.raises(ProgramMismatch, match="deadlock"):
        partition(program, plan)
