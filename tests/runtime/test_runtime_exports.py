"""runtime exports what a user calls; the names it exported before this release still resolve, with a
DeprecationWarning that says where they live now."""

from __future__ import annotations

import importlib

import pytest

import placement.schedules
import runtime


def test_runtime_exports_executors_partition_schedules_launch_measurement_and_errors() -> None:
    assert sorted(runtime.__all__) == sorted([
        "DistributedExecutor", "LocalExecutor", "StepResult", "init_from_env", "spawn",
        "DeviceProgram", "PartitionedProgram", "contiguous_plan", "partition", "plan_from_assignment",
        "single_device_plan", "Action", "Schedule", "make_schedule", "Measurement", "measure",
        "MismatchError", "RankFailure", "RunFailed", "RuntimeFault", "ScheduleError",
    ])  # fmt: skip
    for name in runtime.__all__:
        assert getattr(runtime, name) is not None
    # one kind of schedule: the executors run placement's (runtime.schedule only lowers them)
    assert runtime.Schedule is placement.schedules.Schedule and runtime.make_schedule is placement.schedules.make_schedule
    for gone in ("gpipe", "one_f_one_b", "pipeline_stages"):
        assert not hasattr(runtime, gone)


@pytest.mark.parametrize(
    ("name", "home"),
    [("eager_run", "runtime.testing"), ("EagerRun", "runtime.testing"), ("relative_difference", "runtime.testing"),
     ("MemoryTracker", "runtime.measure"), ("ProgramMismatch", "runtime.errors"), ("split_by_device", "runtime.partition"),
     ("Transfer", "runtime.partition"), ("fx_devices", "runtime.partition"), ("zoo_loss", "graphc.zoo")],
)  # fmt: skip
def test_names_no_longer_exported_still_resolve_with_a_warning(name: str, home: str) -> None:
    # import_module: runtime.partition and runtime.measure, as attributes, are the functions of those names
    with pytest.warns(DeprecationWarning, match=rf"runtime\.{name} is deprecated .*; import it from {home}"):
        assert getattr(runtime, name) is getattr(importlib.import_module(home), name)
    assert name not in runtime.__all__
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        runtime.no_such_name  # noqa: B018
