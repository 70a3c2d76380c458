"""``graphc run`` of data-parallel plans: a rank per device and per parameter server, trained through torchrun."""

from __future__ import annotations

import json

import pytest

import graphc
from graphc import zoo
from graphc.app import cli
from placement import presets
from placement.plan import Plan
from placement.sync import ParameterServerSync
from runtime import contiguous_plan
from runtime.partition import plan_ranks


@pytest.fixture(scope="module")
def server_plan(tmp_path_factory) -> str:
    """GPT-2 (small, batch 2) replicated on cpu0 and cpu1, its parameters on servers cpu2 and cpu3."""
    zm = zoo.build("gpt2", batch_size=2, size="small", dropout=0.0)
    program = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op")
    plan = contiguous_plan(program.graph, [["cpu0", "cpu1"]], microbatches=2)
    plan.sync = ParameterServerSync(servers=("cpu2", "cpu3"), bucket_bytes=2**16)
    plan.cluster = presets.local(workers=4)
    path = tmp_path_factory.mktemp("plans") / "gpt2-ps.json"
    plan.save(path)
    return str(path)


def test_parameter_servers_get_ranks_of_their_own(server_plan):
    assert plan_ranks(Plan.load(server_plan)) == ["cpu0", "cpu1", "cpu2", "cpu3"]


@pytest.mark.distributed
@pytest.mark.slow
def test_graphc_run_trains_with_parameter_servers(server_plan, tmp_path):
    out = tmp_path / "measured.json"
    argv = ["run", "gpt2", "--plan", server_plan, "--size", "small", "--knob", "dropout=0.0", "--optimizer", "adam"]
    assert cli.main([*argv, "--steps", "2", "--warmup", "1", "--json", str(out)]) == 0
    measured = json.loads(out.read_text())
    assert len(measured["steps_ms"]) == 2
    assert len(measured["losses"]) == 4 and all(isinstance(loss, float) for loss in measured["losses"])  # 1 + 2 + memory step
    assert set(measured["peak_memory_bytes"]) == {"cpu0", "cpu1", "cpu2", "cpu3"}
