"""``graphc run --sync``: a data-parallel plan's two replicas trained with each averaging strategy through
torchrun, their traffic equal to the strategies' byte counts computed by hand, checkpoints that resume
the same run, and the combinations refused before any rank starts."""

from __future__ import annotations

import json

import pytest

import graphc
import graphc.app.run
from graphc import zoo
from graphc.app import cli
from placement import presets
from placement.plan import Plan
from placement.sync import (
    AllReduceSync,
    ElasticAveragingSync,
    LocalSGDSync,
    sync_to_dict,
)
from runtime import contiguous_plan

MODEL = ["gpt2", "--size", "small", "--knob", "dropout=0.0"]
HEADER_BYTES = 8  # async EASGD's message header, one int64


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, str]:
    """GPT-2 (small, batch 4) replicated on cpu0 and cpu1 ("data"), on cpu0..cpu3 ("four"), and cut into a 2-stage
    pipeline ("pipeline")."""
    zm = zoo.build("gpt2", batch_size=4, size="small", dropout=0.0)
    graph = graphc.trace(zm.model, zm.example_inputs, name="gpt2", granularity="op").graph
    folder = tmp_path_factory.mktemp("plans")
    paths = {}
    for kind, devices in (("data", [["cpu0", "cpu1"]]), ("pipeline", ["cpu0", "cpu1"]), ("four", [["cpu0", "cpu1", "cpu2", "cpu3"]])):
        plan = contiguous_plan(graph, devices, microbatches=len(devices[0]) if kind == "four" else 2)
        plan.cluster = presets.local(workers=4)
        paths[kind] = str(folder / f"{kind}.json")
        plan.save(paths[kind])
    return paths


@pytest.fixture(scope="module")
def parameter_bytes() -> int:
    """P: the bytes of the small GPT-2's parameters (float32), what every exchange moves."""
    return 4 * sum(p.numel() for p in zoo.build("gpt2", batch_size=4, size="small", dropout=0.0).model.parameters())


@pytest.fixture
def no_rank_starts(monkeypatch):
    def supervise(command):
        raise AssertionError(f"a rank was started: {command}")

    monkeypatch.setattr(graphc.app.run, "supervise", supervise)


def _run(plan: str, out, *options: str) -> dict:
    argv = ["run", *MODEL, "--plan", plan, "--lr", "0.1", "--warmup", "0", "--json", str(out), *options]
    assert cli.main(argv) == 0
    return json.loads(out.read_text())


# -- refused before any rank starts ---------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (["--sync", "easgd", "--prefetch", "1"], "--prefetch is an option of --sync async-easgd, not of --sync easgd"),
        (["--sync", "local-sgd", "--tau", "4"], "--tau is an option of --sync easgd or eamsgd or async-easgd"),
        (["--sync", "easgd", "--period", "4"], "--period is an option of --sync local-sgd or diloco"),
        (["--sync", "async-easgd", "--tau", "4", "--prefetch", "4"], "prefetch=4: expected an integer 0 <= prefetch < tau = 4"),
        (["--sync", "easgd", "--alpha", "0.8"], "alpha=0.8 with N=2 workers: the elastic exchange is stable for"),
        (["--sync", "async-easgd", "--alpha", "1.5"], "alpha=1.5: expected 0 < alpha <= 1"),
        (["--sync", "eamsgd", "--optimizer", "adam"], "EAMSGD's workers take Nesterov SGD steps, not --optimizer adam"),
        (["--tau", "4"], "--tau: options of an averaging strategy; choose one with --sync"),
        (["--sync", "diloco", "--resume"], "--resume loads the state saved in --checkpoint DIR"),
        (["--sync", "easgd", "--schedule", "1f1b"], "--schedule 1f1b: --sync easgd trains in a loop of its own, with no schedule"),
    ],
)
def test_a_bad_combination_is_refused_before_any_rank_starts(plans, no_rank_starts, capsys, options, message):
    assert cli.main(["run", *MODEL, "--plan", plans["data"], *options]) == 2
    assert message in capsys.readouterr().err


def test_a_pipeline_plan_is_refused_with_how_to_make_a_data_parallel_one(plans, no_rank_starts, capsys):
    assert cli.main(["run", *MODEL, "--plan", plans["pipeline"], "--sync", "easgd"]) == 2
    err = capsys.readouterr().err
    assert "--sync easgd trains replicas of the whole model, so it needs a pure data-parallel plan" in err
    assert "this plan has 2 stages" in err and "--parallel data" in err


def test_a_resume_without_the_ranks_files_is_refused(plans, no_rank_starts, tmp_path, capsys):
    argv = ["run", *MODEL, "--plan", plans["data"], "--sync", "local-sgd", "--checkpoint", str(tmp_path), "--resume"]
    assert cli.main(argv) == 2
    assert f"{tmp_path} has no checkpoint of rank(s) [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--tau", "0"], ["--period", "0"], ["--servers", "0"], ["--prefetch", "-1"], ["--alpha", "0"]])
def test_a_zero_period_ends_graphc_run_with_status_2(bad, capsys):
    with pytest.raises(SystemExit) as exited:  # argparse: the plan is not even read
        cli.main(["run", "gpt2", "--plan", "no-such-plan.json", "--sync", "easgd", *bad])
    assert exited.value.code == 2
    assert f"argument {bad[0]}" in capsys.readouterr().err


def test_a_dry_run_names_every_ranks_role(plans, no_rank_starts, capsys):
    argv = ["run", *MODEL, "--plan", plans["data"], "--sync", "async-easgd", "--tau", "4", "--servers", "2", "--dry-run"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "--nproc-per-node=4" in out and "--sync async-easgd --tau 4 --servers 2" in out
    assert "rank 1: async-easgd worker on cpu1" in out and "rank 3: center server" in out


def test_fewer_steps_than_the_period_warn_that_the_replicas_never_meet(plans, no_rank_starts, capsys):
    argv = ["run", *MODEL, "--plan", plans["data"], "--sync", "diloco", "--steps", "5", "--dry-run"]
    assert cli.main(argv) == 0
    assert "7 local steps (--warmup + --steps) take no exchange every 500" in capsys.readouterr().err


def _with_choice(plans, tmp_path, sync) -> str:
    """The data-parallel plan with ``sync`` recorded as its choice by time to accuracy (as graphc plan --convergence records it)."""
    plan = Plan.load(plans["data"])
    plan.settings.setdefault("parallel", {})["sync_choice"] = {
        "chosen": "the choice", "sync": sync_to_dict(sync), "reason": "it reaches 95% soonest", "tier": "inside a host",
        "target": 0.95, "seconds": {},
    }  # fmt: skip
    path = tmp_path / "chosen.json"
    plan.save(path)
    return str(path)


@pytest.mark.parametrize(
    "sync, expected",
    [
        (LocalSGDSync(period=3, outer="nesterov"), "--sync diloco --period 3"),
        (ElasticAveragingSync(tau=5, asynchronous=True, prefetch=2), "--sync async-easgd --tau 5 --prefetch 2"),
        (ElasticAveragingSync(tau=4, momentum=0.9), "--sync eamsgd --tau 4"),
    ],
)
def test_sync_chosen_runs_the_strategy_the_plan_chose(plans, no_rank_starts, tmp_path, capsys, sync, expected):
    argv = ["run", *MODEL, "--plan", _with_choice(plans, tmp_path, sync), "--sync", "chosen", "--dry-run"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].endswith(expected)
    assert "the plan chose the choice: it reaches 95% soonest" in err


def test_sync_chosen_with_synchronous_sgd_chosen_runs_the_plans_schedule(plans, no_rank_starts, tmp_path, capsys):
    argv = ["run", *MODEL, "--plan", _with_choice(plans, tmp_path, AllReduceSync()), "--sync", "chosen", "--dry-run"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "--sync" not in out.splitlines()[0] and "cpu1: a replica of cpu0" in out  # the partitioned programs


def test_sync_chosen_without_a_choice_or_with_settings_is_refused(plans, no_rank_starts, tmp_path, capsys):
    assert cli.main(["run", *MODEL, "--plan", plans["data"], "--sync", "chosen"]) == 2
    assert "this plan records no choice: make it with graphc plan" in capsys.readouterr().err
    chosen = _with_choice(plans, tmp_path, LocalSGDSync(period=3))
    assert cli.main(["run", *MODEL, "--plan", chosen, "--sync", "chosen", "--period", "5"]) == 2
    assert "--period: --sync chosen runs the plan's settings" in capsys.readouterr().err


# -- two CPU ranks train with each strategy ---------------------------------------------------------


def _falls(run: dict) -> None:
    losses = run["mean_losses"]
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["easgd", "eamsgd", "local-sgd"])
def test_synchronous_strategies_train_through_graphc_run(plans, parameter_bytes, tmp_path, strategy):
    period = ["--period", "2"] if strategy == "local-sgd" else ["--tau", "2"]
    run = _run(plans["data"], tmp_path / "run.json", "--sync", strategy, *period, "--steps", "6")
    _falls(run)
    assert run["workers"] == {"0": "cpu0", "1": "cpu1"} and run["servers"] == []
    assert len(run["losses"]["0"]) == len(run["losses"]["1"]) == len(run["steps_ms"]) == 6
    assert run["losses"]["0"] != run["losses"]["1"]  # each worker trains on its own half of the batch
    ring = 2 * (2 - 1) / 2 * parameter_bytes  # a ring all-reduce of P over N = 2, per worker
    for rank in ("0", "1"):
        assert run["traffic"][rank] == {"sent": 3 * ring, "received": 3 * ring, "exchanges": 3}
    if strategy != "local-sgd":
        assert run["sync"]["tau"] == 2 and run["sync"]["alpha"] == pytest.approx(0.45) and run["sync"]["beta"] == pytest.approx(0.9)
        assert run["sync"]["momentum"] == (0.9 if strategy == "eamsgd" else 0.0)


@pytest.mark.distributed
@pytest.mark.slow
def test_asynchronous_easgd_trains_against_server_ranks(plans, parameter_bytes, tmp_path):
    run = _run(plans["data"], tmp_path / "run.json", "--sync", "async-easgd", "--tau", "2", "--prefetch", "1", "--servers", "2", "--steps", "6")
    _falls(run)
    assert run["servers"] == [2, 3] and run["sync"]["asynchronous"] and run["sync"]["prefetch"] == 1
    assert run["server_arrivals"] == {"2": {"0": 3, "1": 3}, "3": {"0": 3, "1": 3}}  # 6 steps / tau 2, from each worker
    for rank in ("0", "1"):  # per exchange: a FETCH and a PUSH header to each server, P out, P back
        assert run["traffic"][rank] == {"sent": 3 * (parameter_bytes + 2 * 2 * HEADER_BYTES), "received": 3 * parameter_bytes, "exchanges": 3}
    half = parameter_bytes / 2  # each server's shard, sent to 2 workers 3 times
    assert run["traffic"]["2"]["sent"] + run["traffic"]["3"]["sent"] == 2 * 3 * parameter_bytes
    assert run["traffic"]["2"]["sent"] == pytest.approx(6 * half, rel=1e-3)


@pytest.mark.distributed
@pytest.mark.slow
def test_diloco_resumed_from_a_checkpoint_continues_the_same_run(plans, tmp_path):
    whole = _run(plans["data"], tmp_path / "whole.json", "--sync", "diloco", "--period", "2", "--steps", "8")
    _falls(whole)
    assert whole["sync"] == {"kind": "local-sgd", "period": 2, "outer": "nesterov", "outer_lr": 0.7}
    saved = tmp_path / "checkpoint"
    first = _run(plans["data"], tmp_path / "first.json", "--sync", "diloco", "--period", "2", "--steps", "4", "--checkpoint", str(saved))
    second = _run(plans["data"], tmp_path / "second.json", "--sync", "diloco", "--period", "2", "--steps", "4", "--checkpoint", str(saved), "--resume")
    assert second["first_step"] == 4 and first["first_step"] == 0
    for rank in ("0", "1"):
        assert first["losses"][rank] + second["losses"][rank] == pytest.approx(whole["losses"][rank], rel=1e-5)
    assert second["traffic"] == whole["traffic"]  # counted from the first step of the run


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["easgd", "eamsgd", "async-easgd", "local-sgd", "diloco"])
def test_four_workers_train_with_each_strategy(plans, parameter_bytes, tmp_path, strategy):
    period = ["--period", "2"] if strategy in ("local-sgd", "diloco") else ["--tau", "2"]
    run = _run(plans["four"], tmp_path / "run.json", "--sync", strategy, *period, "--steps", "4")
    _falls(run)
    assert sorted(run["losses"]) == ["0", "1", "2", "3"] and run["servers"] == ([4] if strategy == "async-easgd" else [])
    exchanged = {rank: moved["exchanges"] for rank, moved in run["traffic"].items()}
    assert exchanged == ({"0": 2, "1": 2, "2": 2, "3": 2, "4": 8} if strategy == "async-easgd" else dict.fromkeys("0123", 2))
    if strategy != "async-easgd":  # a ring all-reduce of P over N = 4: 2 (N - 1) / N P per worker and exchange
        assert run["traffic"]["0"]["sent"] == pytest.approx(2 * 2 * 3 / 4 * parameter_bytes)
