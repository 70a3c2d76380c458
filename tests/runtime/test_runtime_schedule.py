"""runtime.schedule: a placement schedule assigned to each device's work, checked against the partition."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from torch import nn

import graphc
from graphc import zoo
from placement.schedules import Backward, Forward, Recv, Schedule, Send, make_schedule
from runtime import ScheduleError, contiguous_plan, partition, plan_from_assignment
from runtime.schedule import device_work, resolve


@functools.cache
def program(kind: str, microbatches: int = 4):
    """GPT-2 traced on one microbatch of 2: ``chain`` in three stages, ``zigzag`` alternating two devices
    (a latency plan: no stages)."""
    zm = zoo.build("gpt2", batch_size=2 * microbatches, size="small", dropout=0.0)
    full = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op")
    micro = graphc.trace(zm.model, (zm.example_inputs[0][:2],), name="gpt2", granularity="op")
    if kind == "chain":
        plan = contiguous_plan(full.graph, ["cpu0", "cpu1", "cpu2"], microbatches=microbatches)
    else:
        order = full.graph.topological_order()
        plan = plan_from_assignment(full.graph, {n: f"cpu{(i // 8) % 2}" for i, n in enumerate(order)}, microbatches=microbatches)
    return partition(micro.graph_module, plan, full.graph)


def codes(assigned) -> dict[str, str]:
    return {d: " ".join(map(str, work)) for d, work in assigned.work.items()}


def test_pipeline_schedules_give_each_device_its_stage_order():
    parts = program("chain")
    assert codes(device_work(resolve(parts, "1f1b"), parts, in_order=True)) == {
        "cpu0": "F0 F1 F2 B0 F3 B1 B2 B3 OPT",
        "cpu1": "F0 F1 B0 F2 B1 F3 B2 B3 OPT",
        "cpu2": "F0 B0 F1 B1 F2 B2 F3 B3 OPT",
    }
    gpipe = device_work(resolve(parts, None), parts, in_order=True)  # the default of a plan with stages
    assert gpipe.schedule.name == "gpipe" and gpipe.training
    assert set(codes(gpipe).values()) == {"F0 F1 F2 F3 B0 B1 B2 B3 OPT"}


def test_node_order_collapses_each_devices_nodes_per_microbatch():
    parts = program("zigzag")
    schedule = resolve(parts, None)
    assert schedule.name == "node-order"
    forwards = [a.node for a in schedule.actions["cpu1"] if isinstance(a, Forward) and a.microbatch == 2]
    assert forwards == parts.node_order["cpu1"]  # the device program's nodes, in its order
    assert set(codes(device_work(schedule, parts, in_order=True)).values()) == {"F0 F1 F2 F3 B0 B1 B2 B3 OPT"}


def test_a_schedule_of_a_forward_only_plan_gives_forwards():
    full = program("chain")
    inference = dataclasses.replace(full.plan, mode="inference")
    assigned = device_work(make_schedule(inference, "1f1b"), full)
    assert not assigned.training
    assert set(codes(assigned).values()) == {"F0 F1 F2 F3"}


def test_a_schedule_of_another_plan_is_refused():
    chain, zigzag = program("chain"), program("zigzag")
    with pytest.raises(ScheduleError, match=r"runs on devices \['cpu0', 'cpu1'\], the program on \['cpu0', 'cpu1', 'cpu2'\]"):
        device_work(resolve(zigzag, None), chain)
    with pytest.raises(ScheduleError, match="has 2 microbatch\\(es\\), the program 4: it was made for another plan"):
        device_work(make_schedule(program("chain", 2).plan, "gpipe"), chain)
    # the same devices and microbatches, other nodes on them
    other = plan_from_assignment(zigzag.plan.graph, {n: f"cpu{(i // 5) % 2}" for i, n in enumerate(zigzag.plan.graph.topological_order())}, microbatches=4)
    with pytest.raises(ScheduleError, match=r"cpu0: F0 of the schedule runs .* as its node \d+, where cpu0's program runs"):
        device_work(make_schedule(other), zigzag)
    gpipe = resolve(chain, "gpipe").actions
    merged = [dataclasses.replace(a, stage=0) if isinstance(a, Forward | Backward) else a for a in gpipe["cpu1"]]
    with pytest.raises(ScheduleError, match="runs stage 0 on cpu1, but the program runs cpu1 as a stage of its own, not with cpu0"):
        device_work(Schedule("mine", "throughput", 4, {**gpipe, "cpu1": merged}), chain)


def test_every_microbatch_runs_forward_then_backward_once_on_every_device():
    parts = program("chain")
    schedule = resolve(parts, "gpipe")
    missing = Schedule("mine", "throughput", 4, {**schedule.actions, "cpu1": [a for a in schedule.actions["cpu1"] if a.code() != "F0"]})
    with pytest.raises(ScheduleError, match=r"cpu1 runs F for microbatches \[1, 2, 3\]; it must run each of 0..3 once"):
        device_work(missing, parts)
    early = [Backward("cpu0", 0, stage=0)] + [a for a in schedule.actions["cpu0"] if a.code() != "B0"]
    with pytest.raises(ScheduleError, match="cpu0 runs B0 before F0"):
        device_work(Schedule("mine", "throughput", 4, {**schedule.actions, "cpu0": early}), parts)


def test_node_level_work_must_follow_the_device_program_one_microbatch_at_a_time():
    parts = program("zigzag", 2)
    schedule = resolve(parts, None)
    acts = schedule.actions["cpu0"]
    forwards = [i for i, a in enumerate(acts) if isinstance(a, Forward)]
    swapped = list(acts)
    swapped[forwards[0]], swapped[forwards[1]] = acts[forwards[1]], acts[forwards[0]]
    with pytest.raises(ScheduleError, match=r"cpu0: F0 of the schedule runs 'arange' as its node 0, where cpu0's program runs 'tokens'"):
        device_work(Schedule("mine", "latency", 2, {**schedule.actions, "cpu0": swapped}), parts)
    second = next(i for i in forwards if acts[i].microbatch == 1)
    interleaved = [*acts[: forwards[0] + 1], acts[second], *[a for a in acts[forwards[0] + 1 :] if a is not acts[second]]]
    with pytest.raises(ScheduleError, match="F0 of the schedule runs nothing as its node 1.* for one microbatch at a time"):
        device_work(Schedule("mine", "latency", 2, {**schedule.actions, "cpu0": interleaved}), parts)


def test_messages_received_out_of_order_are_refused_only_without_tags():
    """cpu1 takes microbatch 1 before 0: gloo matches messages by tag, NCCL by order."""
    parts = program("chain")
    schedule = resolve(parts, "gpipe")
    compute = {(type(a), a.microbatch): a for a in schedule.actions["cpu1"] if isinstance(a, Forward | Backward)}
    order = [(kind, k) for kind in (Forward, Backward) for k in (1, 0, 2, 3)]
    schedule.actions["cpu1"] = [compute[key] for key in order] + schedule.actions["cpu1"][-1:]
    device_work(schedule, parts)
    with pytest.raises(ScheduleError, match="cpu0 -> cpu1: message .* would mix them up"):
        device_work(schedule, parts, in_order=True)


def test_a_device_in_a_cycle_of_waits_deadlocks():
    """Two devices that each receive from the other in one microbatch: if one runs F1 first while the
    other is at F0, the first waits for a value of microbatch 1 the second sends only later."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    x = torch.randn(4, 4)
    full = graphc.trace(model, (x,), name="mlp", granularity="op")
    micro = graphc.trace(model, (x[:2],), name="mlp", granularity="op")
    order = full.graph.topological_order()
    plan = plan_from_assignment(full.graph, {n: f"cpu{(i // 2) % 2}" for i, n in enumerate(order)}, microbatches=2)
    parts = partition(micro.graph_module, plan, full.graph)
    schedule = resolve(parts, None)
    cpu0 = schedule.actions["cpu0"]
    by_microbatch = [[a for a in cpu0 if isinstance(a, Forward) and a.microbatch == k] for k in (0, 1)]
    rest = [a for a in cpu0 if not isinstance(a, Forward | Send | Recv)]
    schedule.actions["cpu0"] = by_microbatch[1] + by_microbatch[0] + rest
    with pytest.raises(ScheduleError, match=r"the schedule deadlocks: cpu0 at F1 waits for .* from cpu1; cpu1 at F0 waits for"):
        device_work(schedule, parts)


def test_a_program_partitioned_without_a_plan_needs_a_schedule_object():
    parts = dataclasses.replace(program("chain"), plan=None)
    with pytest.raises(ScheduleError, match="partitioned without a plan .* pass schedule= a Schedule"):
        resolve(parts, "gpipe")
