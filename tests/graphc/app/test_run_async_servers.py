"""``graphc run`` of a data-parallel plan with asynchronous parameter servers (staleness > 0): the ranks run
runtime.servers' loop (no schedule) through torchrun; a plan they cannot run is refused before any rank starts."""

from __future__ import annotations

import json

import pytest

import graphc
import graphc.app.run
from graphc import zoo
from graphc.app import cli
from placement import presets
from placement.sync import ParameterServerSync
from runtime import contiguous_plan

MODEL = ["gpt2", "--size", "small", "--knob", "dropout=0.0"]


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, str]:
    """GPT-2 (small, batch 4) on replicas cpu0 and cpu1 with servers cpu2 and cpu3 at staleness 2 ("data"),
    and the same servers behind a 2-stage pipeline ("pipeline")."""
    zm = zoo.build("gpt2", batch_size=4, size="small", dropout=0.0)
    graph = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op").graph
    folder = tmp_path_factory.mktemp("plans")
    paths = {}
    for kind, devices in (("data", [["cpu0", "cpu1"]]), ("pipeline", [["cpu0", "cpu1"], "cpu4"])):
        plan = contiguous_plan(graph, devices, microbatches=2)
        plan.sync = ParameterServerSync(servers=("cpu2", "cpu3"), staleness=2)
        plan.cluster = presets.local(workers=5)
        paths[kind] = str(folder / f"{kind}.json")
        plan.save(paths[kind])
    return paths


def test_a_dry_run_names_workers_and_servers(plans, capsys):
    assert cli.main(["run", *MODEL, "--plan", plans["data"], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--nproc-per-node=4" in out
    assert "rank 1: worker on cpu1" in out and "rank 2: parameter server on cpu2" in out


def test_asynchronous_servers_behind_a_pipeline_are_refused_before_any_rank_starts(plans, monkeypatch, capsys):
    monkeypatch.setattr(graphc.app.run, "supervise", lambda command: pytest.fail(f"a rank was started: {command}"))
    assert cli.main(["run", *MODEL, "--plan", plans["pipeline"]]) == 2
    err = capsys.readouterr().err
    assert "asynchronous parameter servers run a pure data-parallel plan" in err and "this plan has 2 stage(s)" in err


@pytest.mark.distributed
@pytest.mark.slow
def test_graphc_run_trains_with_asynchronous_parameter_servers(plans, tmp_path):
    out = tmp_path / "run.json"
    argv = ["run", *MODEL, "--plan", plans["data"], "--lr", "0.1", "--steps", "5", "--warmup", "1", "--json", str(out)]
    assert cli.main(argv) == 0
    run = json.loads(out.read_text())
    assert run["staleness"] == 2 and run["workers"] == {"0": "cpu0", "1": "cpu1"} and run["servers"] == {"2": "cpu2", "3": "cpu3"}
    assert run["mean_losses"][-1] < run["mean_losses"][0] - 0.1, run["mean_losses"]
    assert len(run["steps_ms"]) == 5 and all(len(losses) == 6 for losses in run["losses"].values())
    for lag in run["lag"].values():  # step t computes on the answer to push t - 2: t - version = min(t, s)
        assert lag == [0, 1, 2, 2, 2, 2]
    for waits in run["wait_ms"].values():  # no answer is waited for before step s = 2
        assert waits[:2] == [0.0, 0.0] and all(w >= 0.0 for w in waits)
    assert run["arrivals"] == {"2": {"0": 6, "1": 6}, "3": {"0": 6, "1": 6}}  # every push reaches both shards
    assert run["lost"] == {}
