"""runtime.schedule: pipeline schedules as data, validated before they run, and printable."""

from __future__ import annotations

import functools

import pytest

import graphc
from graphc import zoo
from runtime import (
    Action,
    Schedule,
    ScheduleError,
    contiguous_plan,
    make_schedule,
    partition,
    plan_from_assignment,
)
from runtime.schedule import gpipe, one_f_one_b, pipeline_stages, validate


@functools.cache
def program(kind: str, microbatches: int = 4):
    """GPT-2 traced on one microbatch of 2: ``chain`` in three stages, ``zigzag`` alternating two devices."""
    zm = zoo.build("gpt2", batch_size=2 * microbatches, size="small", dropout=0.0)
    full = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op")
    micro = graphc.trace(zm.model, (zm.example_inputs[0][:2],), name="gpt2", granularity="op")
    if kind == "chain":
        plan = contiguous_plan(full.graph, ["cpu0", "cpu1", "cpu2"], microbatches=microbatches)
    else:
        order = full.graph.topological_order()
        plan = plan_from_assignment(full.graph, {n: f"cpu{(i // 8) % 2}" for i, n in enumerate(order)}, microbatches=microbatches)
    return partition(micro.graph_module, plan, full.graph)


def test_schedules_print_as_actions_per_device():
    assert str(one_f_one_b(["cpu0", "cpu1", "cpu2"], 4)) == "\n".join(
        [
            "1f1b schedule: 4 microbatch(es) on 3 device(s)",
            "  cpu0 | F0 F1 F2 B0 F3 B1 B2 B3",
            "  cpu1 | F0 F1 B0 F2 B1 F3 B2 B3",
            "  cpu2 | F0 B0 F1 B1 F2 B2 F3 B3",
        ]
    )
    assert str(gpipe(["a", "b"], 2)).splitlines()[1:] == ["  a | F0 F1 B0 B1", "  b | F0 F1 B0 B1"]


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_a_pipeline_validates_under_both_schedules_and_in_order(name):
    parts = program("chain")
    assert pipeline_stages(parts) == ["cpu0", "cpu1", "cpu2"]
    validate(make_schedule(parts, name), parts, in_order=True)


def test_gpipe_runs_a_partition_whose_data_flows_both_ways():
    parts = program("zigzag")
    validate(make_schedule(parts, "gpipe"), parts, in_order=True)
    with pytest.raises(ScheduleError, match=r"do not form a pipeline: data flows cpu\d -> cpu\d -> cpu\d"):
        make_schedule(parts, "1f1b")


def test_a_deadlocking_schedule_is_refused_naming_who_waits_for_what():
    parts = program("zigzag")
    with pytest.raises(ScheduleError, match=r"deadlocks: cpu0 at F\d waits for .* from cpu1; cpu1 at B\d waits for the gradient of"):
        validate(one_f_one_b(["cpu0", "cpu1"], 4), parts)


def test_every_microbatch_runs_forward_then_backward_once_on_every_device():
    parts = program("chain")
    schedule = gpipe(parts.devices, 4)
    schedule.actions["cpu1"] = schedule.actions["cpu1"][1:]
    with pytest.raises(ScheduleError, match=r"cpu1 runs F for microbatches \[1, 2, 3\]"):
        validate(schedule, parts)
    early = [Action("B", 0)] + [Action("F", k) for k in range(4)] + [Action("B", k) for k in (1, 2, 3)]
    with pytest.raises(ScheduleError, match="cpu0 runs B0 before F0"):
        validate(Schedule("mine", 4, {d: early for d in parts.devices}), parts)


def test_messages_received_out_of_order_are_refused_only_without_tags():
    """cpu1 takes microbatch 1 before 0: gloo matches messages by tag, NCCL by order."""
    parts = program("chain")
    schedule = gpipe(parts.devices, 4)
    schedule.actions["cpu1"] = [Action("F", k) for k in (1, 0, 2, 3)] + [Action("B", k) for k in (1, 0, 2, 3)]
    validate(schedule, parts)
    with pytest.raises(ScheduleError, match="cpu0 -> cpu1: message .* would mix them up"):
        validate(schedule, parts, in_order=True)
